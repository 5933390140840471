// Load generator for scripts/bench: the official socket.io-client, websocket
// transport, 127.0.0.1 only, bounded in count and time.
//
// Opens N subscriber connections (auth {token, replay: false}), each emits
// `subscribe {room}` and waits for its ack; then ONE publisher connection emits
// `publish {type, data}` with data.metadata = {t, n}: t is the publish time on
// the monotonic clock (process.hrtime, in ms), which every thread of this
// process shares, so a subscriber's latency is simply now - t. Subscribers are
// spread over --workers worker threads (one thread of socket.io-client tops out
// near 20k deliveries/s); the publisher runs on the main thread. Events are
// counted by n per subscriber: lost (acked {ok: true} but never received),
// duplicates, out of order.
//
// With --kiosks=K the first K subscribers are kiosks (the driver gives them kiosk
// tokens, each scoped to its own kiosk-<i>) and event n is about kiosk-<n % K>:
// a kiosk expects only its own kiosk's events, a panel every event. With
// --unscoped (a server without scopes) every subscriber expects every event.
// A delivery a subscriber did not expect counts as leaked.
//
// Modes:
//   fanout      publish at --rate events/s for --duration s (at most --window unacked)
//   throughput  keep --window publishes in flight for --duration s (closed loop)
//   storm       open all N connections at once; report the time to connect them all,
//               then publish a few events to check that every client gets them
//   http        like throughput, but each publish is one `POST /api/events` (keep-alive,
//               --window requests in flight, the publisher token as a Bearer token)
//   batch       like http, but each request is `POST /api/events/batch` with --batch items
//
// stdout: one JSON object per line, {"event": "ready" | "publish_start" | "drained" |
// "result" | "error", ...}. scripts/bench samples the server when it reads them.

import { readFileSync } from "node:fs";
import { Agent, request } from "node:http";
import { monitorEventLoopDelay } from "node:perf_hooks";
import { parseArgs } from "node:util";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { io } from "socket.io-client";

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

class Bits {
  constructor(bytes = new Uint8Array(1024)) {
    this.bytes = bytes;
  }
  has(n) {
    return n < this.bytes.length && this.bytes[n] === 1;
  }
  set(n) {
    if (n >= this.bytes.length) {
      let size = this.bytes.length;
      while (size <= n) size *= 2;
      const grown = new Uint8Array(size);
      grown.set(this.bytes);
      this.bytes = grown;
    }
    this.bytes[n] = 1;
  }
}

class Samples {
  constructor() {
    this.values = new Float64Array(4096);
    this.length = 0;
  }
  push(v) {
    if (this.length === this.values.length) {
      const grown = new Float64Array(this.values.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.length++] = v;
  }
  pushAll(array) {
    for (const v of array) this.push(v);
  }
  toArray() {
    return this.values.slice(0, this.length);
  }
  summary() {
    if (this.length === 0) return null;
    const sorted = this.toArray().sort();
    const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
    let total = 0;
    for (const v of sorted) total += v;
    const r = (v) => Math.round(v * 1000) / 1000;
    return {
      count: sorted.length,
      mean: r(total / sorted.length),
      p50: r(at(0.5)),
      p95: r(at(0.95)),
      p99: r(at(0.99)),
      max: r(sorted[sorted.length - 1]),
    };
  }
}

// Open one connection; resolves once connected, subscribed (when asked) and,
// for lockerbus, once `replay_complete` arrived.
function connect(cfg, token, { subscribe, onEvent, counters }) {
  return new Promise((resolve, reject) => {
    const t0 = nowMs();
    const state = { seen: new Bits(), last: -1, socket: null, connectMs: 0, kiosk: -1 };
    const socket = io(`${cfg.origin}${cfg.namespace}`, {
      transports: ["websocket"],
      forceNew: true,
      reconnection: false,
      timeout: cfg.connectTimeout,
      auth: { token, replay: false },
    });
    state.socket = socket;
    let settled = false;
    let connected = false;
    let subscribed = !subscribe;
    let replayed = !cfg.replayComplete;
    const timer = setTimeout(() => done(new Error("connect timed out")), cfg.connectTimeout);
    function done(err) {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      if (err) {
        socket.close();
        reject(err);
      } else {
        state.connectMs = nowMs() - t0;
        resolve(state);
      }
    }
    const check = () => {
      if (connected && subscribed && replayed) done();
    };
    if (onEvent) socket.on(cfg.type, (envelope) => onEvent(state, envelope));
    socket.on("replay_complete", () => {
      counters.replayCompletes++;
      replayed = true;
      check();
    });
    socket.on("connect_error", (err) => {
      counters.connectErrors++;
      counters.firstConnectError ??= { message: err.message, data: err.data ?? null };
      done(new Error(`connect_error: ${err.message}`));
    });
    socket.on("disconnect", (reason) => {
      if (reason !== "io client disconnect") counters.disconnects++;
    });
    socket.on("connect", () => {
      connected = true;
      if (!subscribe) return check();
      socket.timeout(cfg.ackTimeout).emit("subscribe", { room: cfg.room }, (err, ack) => {
        if (err) return done(new Error("subscribe ack timed out"));
        if (!ack || ack.ok !== true) {
          return done(new Error(`subscribe refused: ${JSON.stringify(ack)}`));
        }
        subscribed = true;
        check();
      });
    });
  });
}

// ----------------------------------------------------------------------------
// worker thread: a share of the subscribers

async function workerMain() {
  const cfg = workerData;
  const counters = { replayCompletes: 0, connectErrors: 0, firstConnectError: null, disconnects: 0 };
  const subscribers = [];
  const latency = new Samples();
  const connectLatency = new Samples();
  let measureFrom = Number.POSITIVE_INFINITY;
  let unique = 0;
  let measured = 0;
  let duplicates = 0;
  let reordered = 0;
  let unknownPayloads = 0;
  let leaked = 0;
  let eventBytes = null;
  const loop = monitorEventLoopDelay({ resolution: 5 });

  const onEvent = (sub, envelope) => {
    const meta = envelope?.data?.metadata;
    if (!meta || typeof meta.n !== "number" || typeof meta.t !== "number") {
      unknownPayloads++;
      return;
    }
    const now = nowMs();
    eventBytes ??= JSON.stringify(envelope).length;
    const n = meta.n;
    if (!expects(cfg, sub, n)) {
      leaked++;
      return;
    }
    if (sub.seen.has(n)) {
      duplicates++;
      return;
    }
    sub.seen.set(n);
    unique++;
    if (n < sub.last) reordered++;
    sub.last = n;
    if (meta.t >= measureFrom) {
      measured++;
      latency.push(now - meta.t);
    }
  };

  let progress = null;
  parentPort.on("message", (msg) => {
    if (msg.kind === "measure") {
      measureFrom = msg.from;
      loop.enable();
      progress = setInterval(() => parentPort.postMessage({ kind: "progress", unique }), 10);
    } else if (msg.kind === "finish") {
      clearInterval(progress);
      loop.disable();
      const acked = new Bits(msg.acked);
      let lost = 0;
      for (const sub of subscribers) {
        for (let n = 0; n < msg.published; n++) {
          if (acked.has(n) && expects(cfg, sub, n) && !sub.seen.has(n)) lost++;
        }
      }
      for (const sub of subscribers) sub.socket.close();
      const latencies = latency.toArray();
      parentPort.postMessage(
        {
          kind: "result",
          unique,
          measured,
          lost,
          duplicates,
          reordered,
          unknownPayloads,
          leaked,
          eventBytes,
          latencies,
          replayCompletes: counters.replayCompletes,
          disconnects: counters.disconnects,
          loopDelayP99: loop.count ? loop.percentile(99) / 1e6 : 0,
        },
        [latencies.buffer],
      );
      setImmediate(() => process.exit(0));
    }
  });

  let next = 0;
  const take = async () => {
    while (next < cfg.tokens.length) {
      const i = next++;
      const sub = await connect(cfg, cfg.tokens[i], { subscribe: true, onEvent, counters });
      if (cfg.offset + i < cfg.kiosks && !cfg.unscoped) sub.kiosk = cfg.offset + i;
      subscribers.push(sub);
      connectLatency.push(sub.connectMs);
    }
  };
  try {
    await Promise.all(Array.from({ length: Math.min(cfg.concurrency, cfg.tokens.length) }, take));
  } catch (err) {
    parentPort.postMessage({
      kind: "error",
      message: `connecting: ${err.message}`,
      connectError: counters.firstConnectError,
      connected: subscribers.length,
    });
    return;
  }
  const connectLatencies = connectLatency.toArray();
  parentPort.postMessage({ kind: "ready", connectLatencies }, [connectLatencies.buffer]);
}

// ----------------------------------------------------------------------------
// main thread: options, workers, the publisher, the report

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function fail(message, extra = {}) {
  // stdout to a pipe is synchronous on Linux: the line is out before exit
  emit({ event: "error", message, ...extra });
  process.exit(1);
}

function parseOptions() {
  const { values: opt } = parseArgs({
    options: {
      url: { type: "string" },
      namespace: { type: "string", default: "/ws/lockers" },
      room: { type: "string", default: "locker_updates" },
      type: { type: "string", default: "locker_state_changed" },
      mode: { type: "string", default: "fanout" },
      clients: { type: "string", default: "100" },
      workers: { type: "string", default: "2" },
      rate: { type: "string", default: "200" },
      duration: { type: "string", default: "10" },
      warmup: { type: "string", default: "1" },
      window: { type: "string", default: "16" },
      "idle-hold": { type: "string", default: "0" },
      "connect-concurrency": { type: "string", default: "100" },
      "connect-timeout": { type: "string", default: "60" },
      "drain-timeout": { type: "string", default: "10" },
      "ack-timeout": { type: "string", default: "10" },
      "storm-events": { type: "string", default: "10" },
      batch: { type: "string", default: "100" },
      tokens: { type: "string" },
      kiosks: { type: "string", default: "0" },
      unscoped: { type: "boolean", default: false },
      "replay-complete": { type: "boolean", default: false },
    },
  });
  const num = (name, min, max) => {
    const value = Number(opt[name]);
    if (!Number.isFinite(value) || value < min || value > max) {
      fail(`--${name} must be a number in [${min}, ${max}], got ${opt[name]}`);
    }
    return value;
  };
  if (!opt.url) fail("--url is required");
  const url = new URL(opt.url);
  if (!["127.0.0.1", "localhost", "[::1]"].includes(url.hostname)) {
    fail(`refusing ${url.hostname}: the load generator only targets the loopback interface`);
  }
  const modes = ["fanout", "throughput", "storm", "http", "batch"];
  if (!modes.includes(opt.mode)) fail(`--mode must be one of ${modes.join(", ")}`);
  // Bounds: a 2-core machine, one process.
  const clients = num("clients", 1, 5000);
  return {
    origin: url.origin,
    namespace: opt.namespace,
    room: opt.room,
    type: opt.type,
    mode: opt.mode,
    clients,
    workers: Math.min(clients, num("workers", 1, 8)),
    rate: num("rate", 0, 50000),
    duration: num("duration", 0.1, 300),
    warmup: num("warmup", 0, 60),
    window: num("window", 1, 10000),
    idleHold: num("idle-hold", 0, 120),
    concurrency: opt.mode === "storm" ? clients : num("connect-concurrency", 1, 5000),
    connectTimeout: num("connect-timeout", 1, 300) * 1000,
    drainTimeout: num("drain-timeout", 0, 120) * 1000,
    ackTimeout: num("ack-timeout", 0.1, 120) * 1000,
    stormEvents: num("storm-events", 1, 1000),
    batch: num("batch", 1, 1000),
    tokens: opt.tokens ? JSON.parse(readFileSync(opt.tokens, "utf8")) : {},
    replayComplete: opt["replay-complete"],
    kiosks: num("kiosks", 0, clients),
    unscoped: opt.unscoped,
  };
}

// Whether subscriber `sub` should receive event n (see --kiosks above).
function expects(cfg, sub, n) {
  return sub.kiosk < 0 || n % cfg.kiosks === sub.kiosk;
}

// Deliveries each event should make.
function perEvent(cfg) {
  return cfg.kiosks > 0 && !cfg.unscoped ? cfg.clients - cfg.kiosks + 1 : cfg.clients;
}

const STATES = ["closed", "open"];
function makeData(n, t, kiosks = 0) {
  // ~380 bytes as a lockerbus envelope; oldState always differs from newState
  return {
    lockerId: `locker-${String(n % 48).padStart(3, "0")}`,
    oldState: STATES[n % 2],
    newState: STATES[(n + 1) % 2],
    kioskId: kiosks > 0 ? `kiosk-${n % kiosks}` : "kiosk-0017",
    userId: "user-0042",
    metadata: { t, n },
  };
}

async function main() {
  const cfg = parseOptions();
  const publishSeconds = cfg.mode === "storm" ? cfg.stormEvents / 10 + 1 : cfg.warmup + cfg.duration;
  const hardLimitMs =
    cfg.connectTimeout + (cfg.idleHold + publishSeconds) * 1000 + cfg.drainTimeout + cfg.ackTimeout + 30000;
  const hardStop = setTimeout(() => fail(`hard time limit of ${hardLimitMs} ms reached`), hardLimitMs);
  const subTokens = cfg.tokens.subscribers?.length ? cfg.tokens.subscribers : ["bench"];
  const pubToken = cfg.tokens.publisher ?? "bench";

  // --- connect: workers take contiguous shares of the subscribers
  const t0 = nowMs();
  const workers = [];
  const progress = [];
  const ready = [];
  const results = [];
  for (let w = 0; w < cfg.workers; w++) {
    const lo = Math.floor((cfg.clients * w) / cfg.workers);
    const hi = Math.floor((cfg.clients * (w + 1)) / cfg.workers);
    const tokens = Array.from({ length: hi - lo }, (_, i) => subTokens[(lo + i) % subTokens.length]);
    const worker = new Worker(new URL(import.meta.url), {
      workerData: { ...cfg, tokens: tokens, offset: lo, concurrency: Math.max(1, Math.ceil(cfg.concurrency / cfg.workers)) },
    });
    progress.push(0);
    ready.push(
      new Promise((resolve, reject) => {
        worker.on("message", (msg) => {
          if (msg.kind === "ready") resolve(msg);
          else if (msg.kind === "error") reject(msg);
          else if (msg.kind === "progress") progress[w] = msg.unique;
          else if (msg.kind === "result") results[w] = msg;
        });
        worker.on("error", (err) => reject({ message: `worker: ${err.stack ?? err}` }));
      }),
    );
    workers.push(worker);
  }
  const counters = { replayCompletes: 0, connectErrors: 0, firstConnectError: null, disconnects: 0 };
  let readies;
  let publisher;
  try {
    readies = await Promise.all(ready);
    publisher = (await connect(cfg, pubToken, { subscribe: false, counters })).socket;
  } catch (err) {
    fail(err.message ?? String(err), { connect_error: err.connectError ?? counters.firstConnectError ?? null });
  }
  const connectMs = nowMs() - t0;
  const connectLatency = new Samples();
  for (const r of readies) connectLatency.pushAll(r.connectLatencies);
  emit({ event: "ready", clients: cfg.clients, connect_ms: Math.round(connectMs) });
  if (cfg.idleHold > 0) await sleep(cfg.idleHold * 1000);

  // --- publish
  const acked = new Bits();
  const ackLatency = new Samples();
  let published = 0;
  let outstanding = 0;
  let ackedOk = 0;
  let rejected = 0;
  let firstRejection = null;
  let ackTimeouts = 0;
  let measuredPublished = 0;
  let measuredAcked = 0;
  let windowFullTicks = 0;
  let measureFrom = Number.POSITIVE_INFINITY;
  let running = false;

  const publishOne = () => {
    const n = published++;
    const t = nowMs();
    if (t >= measureFrom) measuredPublished++;
    outstanding++;
    publisher
      .timeout(cfg.ackTimeout)
      .emit("publish", { type: cfg.type, data: makeData(n, t, cfg.kiosks) }, (err, ack) => {
        outstanding--;
        if (err) {
          ackTimeouts++;
        } else if (!ack || ack.ok !== true) {
          rejected++;
          firstRejection ??= ack ?? null;
        } else {
          ackedOk++;
          if (t >= measureFrom) measuredAcked++;
          acked.set(n);
          ackLatency.push(nowMs() - t);
        }
        if (running && cfg.mode === "throughput") refill();
      });
  };
  // One HTTP request carrying `items` publishes; an item counts as acked when
  // its own answer is ok (201 for one event, {ok: true} in a batch's results).
  const settle = (n, t, ok, answer) => {
    if (ok) {
      ackedOk++;
      if (t >= measureFrom) measuredAcked++;
      acked.set(n);
      ackLatency.push(nowMs() - t);
    } else {
      rejected++;
      firstRejection ??= answer ?? null;
    }
  };
  const publishHttp = () => {
    const items = cfg.mode === "batch" ? cfg.batch : 1;
    const first = published;
    published += items;
    const t = nowMs();
    if (t >= measureFrom) measuredPublished += items;
    outstanding += items;
    const events = Array.from({ length: items }, (_, i) => ({ type: cfg.type, data: makeData(first + i, t, cfg.kiosks) }));
    const path = cfg.mode === "batch" ? "/api/events/batch" : "/api/events";
    const body = JSON.stringify(cfg.mode === "batch" ? { events } : events[0]);
    // node:http with a keep-alive Agent, one socket per request in flight:
    // fetch (undici) costs several times the CPU per request and saturated
    // the generator before a fast server.
    let done = false;
    const finish = (fn) => {
      if (done) return;
      done = true;
      fn();
      outstanding -= items;
      if (running) refill();
    };
    const req = request(
      {
        agent: httpAgent,
        host: httpUrl.hostname,
        port: httpUrl.port,
        path,
        method: "POST",
        headers: {
          authorization: `Bearer ${pubToken}`,
          "content-type": "application/json",
          "content-length": Buffer.byteLength(body),
        },
        timeout: cfg.ackTimeout,
      },
      (res) => {
        const chunks = [];
        res.on("data", (chunk) => chunks.push(chunk));
        res.on("end", () =>
          finish(() => {
            let answer = null;
            try {
              answer = JSON.parse(Buffer.concat(chunks).toString());
            } catch {}
            if (cfg.mode === "batch") {
              const results = res.statusCode === 200 && Array.isArray(answer?.results) ? answer.results : [];
              for (let i = 0; i < items; i++) settle(first + i, t, results[i]?.ok === true, answer);
            } else {
              settle(first, t, res.statusCode === 201, { status: res.statusCode, ...answer });
            }
          }),
        );
        res.on("error", () => finish(() => (ackTimeouts += items)));
      },
    );
    req.on("timeout", () => req.destroy(new Error("timeout")));
    req.on("error", () => finish(() => (ackTimeouts += items)));
    req.end(body);
  };
  const http = cfg.mode === "http" || cfg.mode === "batch";
  const httpUrl = new URL(cfg.origin);
  const httpAgent = new Agent({ keepAlive: true, maxSockets: cfg.window });
  const perRequest = cfg.mode === "batch" ? cfg.batch : 1;
  const refill = () => {
    if (http) {
      while (running && outstanding < cfg.window * perRequest) publishHttp();
      return;
    }
    while (running && outstanding < cfg.window) publishOne();
  };
  // Open loop at `rate`, never more than `window` unacked: a server that cannot
  // keep up shows as a lower events/s, not as an unbounded queue.
  const publishPaced = async (rate, seconds) => {
    const start = nowMs();
    const end = start + seconds * 1000;
    const tick = Math.max(1, Math.min(10, 1000 / rate / 2));
    running = true;
    while (nowMs() < end) {
      let due = Math.floor(((nowMs() - start) / 1000) * rate) - published;
      while (due > 0 && outstanding < cfg.window) {
        publishOne();
        due--;
      }
      if (due > 0) windowFullTicks++;
      await sleep(tick);
    }
    running = false;
    return nowMs() - start;
  };
  const publishClosedLoop = async (seconds) => {
    const start = nowMs();
    running = true;
    refill();
    await sleep(seconds * 1000);
    running = false;
    return nowMs() - start;
  };
  const startMeasuring = (from) => {
    measureFrom = from;
    for (const worker of workers) worker.postMessage({ kind: "measure", from });
  };

  emit({ event: "publish_start" });
  const loop = monitorEventLoopDelay({ resolution: 5 });
  loop.enable();
  const cpu0 = process.cpuUsage();
  let windowMs;
  if (cfg.mode === "storm") {
    startMeasuring(nowMs());
    windowMs = await publishPaced(10, cfg.stormEvents / 10);
  } else if (cfg.mode === "throughput" || http) {
    startMeasuring(nowMs() + cfg.warmup * 1000);
    if (cfg.warmup > 0) await publishClosedLoop(cfg.warmup);
    windowMs = await publishClosedLoop(cfg.duration);
  } else {
    startMeasuring(nowMs() + cfg.warmup * 1000);
    windowMs = (await publishPaced(cfg.rate, cfg.warmup + cfg.duration)) - cfg.warmup * 1000;
  }

  // --- drain: every acked event at every subscriber, or the drain timeout
  const drainStart = nowMs();
  const delivered = () => progress.reduce((a, b) => a + b, 0);
  while (nowMs() - drainStart < cfg.drainTimeout) {
    if (outstanding === 0 && delivered() >= ackedOk * perEvent(cfg)) break;
    await sleep(10);
  }
  const drainMs = nowMs() - drainStart;
  const cpu = process.cpuUsage(cpu0);
  loop.disable();
  emit({ event: "drained" });

  // --- collect
  const finished = new Promise((resolve) => {
    const check = setInterval(() => {
      if (results.filter(Boolean).length === workers.length) {
        clearInterval(check);
        resolve();
      }
    }, 5);
  });
  for (const worker of workers) worker.postMessage({ kind: "finish", acked: acked.bytes, published });
  await finished;
  publisher.close();
  httpAgent.destroy();

  const latency = new Samples();
  const sum = (key) => results.reduce((a, r) => a + r[key], 0);
  for (const r of results) latency.pushAll(r.latencies);
  const seconds = windowMs / 1000;
  const result = {
    event: "result",
    mode: cfg.mode,
    clients: cfg.clients,
    workers: cfg.workers,
    rate_target: cfg.mode === "fanout" ? cfg.rate : null,
    window: cfg.window,
    duration_s: Math.round(seconds * 1000) / 1000,
    connect_ms: Math.round(connectMs),
    connect_per_client_ms: connectLatency.summary(),
    event_bytes: results.find((r) => r.eventBytes)?.eventBytes ?? null,
    published,
    acked: ackedOk,
    rejected,
    first_rejection: firstRejection,
    ack_timeouts: ackTimeouts,
    events_per_s: Math.round((measuredPublished / seconds) * 10) / 10,
    accepted_per_s: Math.round((measuredAcked / seconds) * 10) / 10,
    deliveries: sum("unique"),
    deliveries_per_s: Math.round(sum("measured") / seconds),
    expected_deliveries: ackedOk * perEvent(cfg),
    kiosks: cfg.kiosks,
    leaked: sum("leaked"),
    lost: sum("lost"),
    duplicates: sum("duplicates"),
    reordered: sum("reordered"),
    unknown_payloads: sum("unknownPayloads"),
    replay_complete: sum("replayCompletes") + counters.replayCompletes,
    unexpected_disconnects: sum("disconnects") + counters.disconnects,
    window_full_ticks: windowFullTicks,
    drain_ms: Math.round(drainMs),
    latency_ms: latency.summary(),
    ack_ms: ackLatency.summary(),
    loadgen_cpu_pct: Math.round(((cpu.user + cpu.system) / 1000 / (windowMs + drainMs)) * 1000) / 10,
    loadgen_loop_delay_p99_ms: {
      publisher: Math.round(loop.percentile(99) / 1e4) / 100,
      subscribers: Math.round(Math.max(...results.map((r) => r.loopDelayP99)) * 100) / 100,
    },
  };
  clearTimeout(hardStop);
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

if (isMainThread) {
  main().catch((err) => fail(`unexpected: ${err.stack ?? err}`));
} else {
  workerMain().catch((err) => parentPort.postMessage({ kind: "error", message: String(err.stack ?? err) }));
}
