// Fleet load generator for the 10,000-client scenarios of scripts/bench (see
// docs/benchmarks.md, "Fleet scenarios"): the official socket.io-client,
// websocket transport only, 127.0.0.1 only, bounded in count and time.
//
// One process cannot hold 10,000 socket.io-client sockets and still read
// 10,000 deliveries a second without becoming the bottleneck, so the
// subscribers are split over --procs worker processes (child_process.fork,
// each its own event loop and its own open-file budget); this coordinator
// process holds the one publisher connection and steers the workers over IPC.
// Latency is arrival time minus the publish time `data.metadata.t`, both on
// CLOCK_MONOTONIC (process.hrtime), which every process of the machine shares.
//
// Modes:
//   connect  all N clients connect and subscribe at once; failures are counted,
//            not fatal; the time until every client is subscribed
//   idle     N clients connect (--connect-concurrency per worker) and stay idle
//            for --idle-hold s; the driver samples the server's RSS at `idle`
//   fanout   N subscribers; publish --rate events/s for --warmup + --duration s;
//            lost, duplicates, order and latency per delivery
//   recover  N subscribers; one primer event (n = 0) that all receive; all drop
//            their connection; --missed events (n = 1..missed) are published; all
//            reconnect at once and must receive exactly those: lockerbus with
//            auth {token, last_seq, epoch} on a new connection (contract §6, then
//            `subscribe` again), Node socket.io through connection-state recovery
//            (--csr: the transport is dropped, the same Socket reconnects with its
//            pid and offset, rooms are restored by the server), plain
//            python-socketio only reconnects and subscribes (it has no replay)
//
// stdout: one JSON object per line: {"event": "workers", pids} first, then the
// phase marks the driver samples the server at ("connect_start", "ready",
// "idle", "publish_start", "drained", "disconnected", "storm_start",
// "caught_up"), then "result" or "error".

import { fork } from "node:child_process";
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { parseArgs } from "node:util";
import { io } from "socket.io-client";

const nowMs = () => Number(process.hrtime.bigint()) / 1e6;
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const round = (v, digits = 3) => Math.round(v * 10 ** digits) / 10 ** digits;

function summary(values) {
  if (values.length === 0) return null;
  const sorted = Float64Array.from(values).sort();
  const at = (q) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
  let total = 0;
  for (const v of sorted) total += v;
  return {
    count: sorted.length,
    mean: round(total / sorted.length),
    p50: round(at(0.5)),
    p95: round(at(0.95)),
    p99: round(at(0.99)),
    max: round(sorted[sorted.length - 1]),
  };
}

// ----------------------------------------------------------------------------
// worker process: a share of the subscribers

function workerMain() {
  let cfg = null;
  let clients = [];
  let measureFrom = Number.POSITIVE_INFINITY;
  let latencies = [];
  let unique = 0;
  let progressTimer = null;
  const send = (msg) => process.send(msg);
  // the coordinator is gone (killed at its time limit): do not linger with open sockets
  process.on("disconnect", () => process.exit(0));

  const onEvent = (client, envelope) => {
    const meta = envelope?.data?.metadata;
    if (!meta || typeof meta.n !== "number" || typeof meta.t !== "number") {
      client.unknown++;
      return;
    }
    const n = meta.n;
    if (client.seen.has(n)) {
      client.duplicates++;
      return;
    }
    client.seen.add(n);
    unique++;
    if (n < client.lastN) client.reordered++;
    client.lastN = n;
    if (typeof envelope.seq === "number") {
      if (envelope.seq <= client.lastSeq) client.reordered++;
      client.lastSeq = Math.max(client.lastSeq, envelope.seq);
      client.epoch = envelope.epoch ?? client.epoch;
    }
    if (envelope.replayed === true) client.replayed++;
    if (meta.t >= measureFrom) latencies.push(nowMs() - meta.t);
    client.onProgress?.();
  };

  // Open (or, for connection-state recovery, reopen) one client; resolves
  // with null when it is connected, subscribed and (lockerbus) replayed,
  // with an error string otherwise. Never rejects.
  function open(client, { auth, reuse = false, subscribe = true, until = null }) {
    return new Promise((resolve) => {
      const t0 = nowMs();
      let connected = false;
      let subscribed = !subscribe;
      let replayed = !cfg.replayComplete;
      let settled = false;
      const timer = setTimeout(() => done("timed out"), cfg.connectTimeout);
      const done = (err) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        client.onProgress = null;
        client.socket.off("connect", onConnect);
        client.socket.off("connect_error", onError);
        client.ms = nowMs() - t0;
        resolve(err ?? null);
      };
      const check = () => {
        if (connected && subscribed && replayed && (!until || until(client))) done();
      };
      const onError = (err) => done(`connect_error: ${err.message}${err.data ? ` ${JSON.stringify(err.data)}` : ""}`);
      const onConnect = () => {
        connected = true;
        if (client.socket.recovered) client.recovered++;
        if (!subscribe) return check();
        client.socket.timeout(cfg.ackTimeout).emit("subscribe", { room: cfg.room }, (err, ack) => {
          if (err) return done("subscribe ack timed out");
          if (!ack || ack.ok !== true) return done(`subscribe refused: ${JSON.stringify(ack)}`);
          subscribed = true;
          check();
        });
      };
      if (!reuse) {
        client.socket = io(`${cfg.origin}${cfg.namespace}`, {
          transports: ["websocket"],
          forceNew: true,
          reconnection: false,
          timeout: cfg.connectTimeout,
          auth,
        });
        client.socket.on(cfg.type, (envelope) => onEvent(client, envelope));
        client.socket.on("replay_complete", (info) => {
          client.replayCompletes++;
          if (info?.recovered === true) client.recovered++;
          if (typeof info?.last_seq === "number") client.lastSeq = Math.max(client.lastSeq, info.last_seq);
          if (info?.epoch) client.epoch = info.epoch;
          client.onReplayComplete?.();
        });
        client.socket.on("disconnect", (reason) => {
          if (!client.leaving) client.disconnects++;
        });
      }
      client.onReplayComplete = () => {
        replayed = true;
        check();
      };
      client.onProgress = check;
      client.socket.on("connect", onConnect);
      client.socket.on("connect_error", onError);
      if (reuse) client.socket.connect();
    });
  }

  // Run `fn` over every client with at most `limit` in flight; the failures.
  async function each(fn, limit) {
    const errors = [];
    let next = 0;
    const take = async () => {
      while (next < clients.length) {
        const client = clients[next++];
        const err = await fn(client);
        if (err) errors.push(err);
      }
    };
    await Promise.all(Array.from({ length: Math.min(limit, clients.length) }, take));
    return errors;
  }

  const stats = () => {
    const sum = (key) => clients.reduce((a, c) => a + c[key], 0);
    return {
      duplicates: sum("duplicates"),
      reordered: sum("reordered"),
      unknown: sum("unknown"),
      replayed: sum("replayed"),
      replayCompletes: sum("replayCompletes"),
      recovered: sum("recovered"),
      disconnects: sum("disconnects"),
    };
  };

  process.on("message", async (msg) => {
    if (msg.kind === "init") {
      cfg = msg.cfg;
      clients = msg.tokens.map((token) => ({
        token,
        socket: null,
        seen: new Set(),
        lastN: -1,
        lastSeq: -1,
        epoch: null,
        ms: 0,
        duplicates: 0,
        reordered: 0,
        unknown: 0,
        replayed: 0,
        replayCompletes: 0,
        recovered: 0,
        disconnects: 0,
        leaving: false,
        onProgress: null,
        onReplayComplete: null,
      }));
      send({ kind: "init" });
    } else if (msg.kind === "connect") {
      const errors = await each(
        (c) => open(c, { auth: { token: c.token, replay: false } }),
        msg.concurrency === 0 ? clients.length : msg.concurrency,
      );
      send({ kind: "connected", errors: errors.length, firstError: errors[0] ?? null, ms: clients.map((c) => c.ms) });
    } else if (msg.kind === "measure") {
      measureFrom = msg.from;
      progressTimer = setInterval(() => send({ kind: "progress", unique }), 50);
    } else if (msg.kind === "disconnect") {
      clearInterval(progressTimer);
      for (const c of clients) {
        c.leaving = true;
        // Node socket.io recovers a session only after a transport-level loss
        if (cfg.csr) c.socket.io.engine.close();
        else c.socket.disconnect();
      }
      send({ kind: "disconnected" });
    } else if (msg.kind === "reconnect") {
      // the missed events are n = 1..missed; every client must have them all
      const want = (c) => {
        for (let n = 1; n <= cfg.missed; n++) if (!c.seen.has(n)) return false;
        return true;
      };
      const expectEvents = cfg.csr || cfg.replayComplete;
      const errors = await each((c) => {
        c.leaving = false;
        if (cfg.csr) return open(c, { reuse: true, subscribe: false, until: want });
        const auth = cfg.replayComplete
          ? { token: c.token, last_seq: c.lastSeq, ...(c.epoch ? { epoch: c.epoch } : {}) }
          : { token: c.token, replay: false };
        c.socket.removeAllListeners();
        return open(c, { auth, until: expectEvents ? want : null });
      }, clients.length);
      let lost = 0;
      for (const c of clients) for (let n = 1; n <= cfg.missed; n++) if (!c.seen.has(n)) lost++;
      send({ kind: "reconnected", errors: errors.length, firstError: errors[0] ?? null, lost, ms: clients.map((c) => c.ms), ...stats() });
    } else if (msg.kind === "finish") {
      clearInterval(progressTimer);
      const acked = new Set(msg.acked);
      let lost = 0;
      for (const c of clients) for (const n of acked) if (!c.seen.has(n)) lost++;
      send({ kind: "result", lost, unique, latencies, cpu: process.cpuUsage(), ...stats() });
    } else if (msg.kind === "close") {
      for (const c of clients) {
        c.leaving = true;
        c.socket?.close();
      }
      setImmediate(() => process.exit(0));
    }
  });
}

// ----------------------------------------------------------------------------
// coordinator: options, workers, the publisher, the phases, the report

function emit(obj) {
  process.stdout.write(`${JSON.stringify(obj)}\n`);
}

function fail(message, extra = {}) {
  emit({ event: "error", message, ...extra });
  process.exit(1);
}

function parseOptions() {
  const { values: opt } = parseArgs({
    options: {
      url: { type: "string" },
      tokens: { type: "string" },
      namespace: { type: "string", default: "/ws/lockers" },
      room: { type: "string", default: "locker_updates" },
      type: { type: "string", default: "locker_state_changed" },
      mode: { type: "string", default: "connect" },
      clients: { type: "string", default: "1000" },
      procs: { type: "string", default: "4" },
      rate: { type: "string", default: "1" },
      duration: { type: "string", default: "20" },
      warmup: { type: "string", default: "2" },
      "idle-hold": { type: "string", default: "10" },
      missed: { type: "string", default: "100" },
      "connect-concurrency": { type: "string", default: "100" },
      "connect-timeout": { type: "string", default: "120" },
      "ack-timeout": { type: "string", default: "60" },
      "drain-timeout": { type: "string", default: "20" },
      "replay-complete": { type: "boolean", default: false },
      csr: { type: "boolean", default: false },
      worker: { type: "boolean", default: false },
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
  const modes = ["connect", "idle", "fanout", "recover"];
  if (!modes.includes(opt.mode)) fail(`--mode must be one of ${modes.join(", ")}`);
  const clients = num("clients", 1, 20000);
  return {
    origin: url.origin,
    namespace: opt.namespace,
    room: opt.room,
    type: opt.type,
    mode: opt.mode,
    clients,
    procs: Math.min(clients, num("procs", 1, 16)),
    rate: num("rate", 0.1, 1000),
    duration: num("duration", 0.5, 300),
    warmup: num("warmup", 0, 60),
    idleHold: num("idle-hold", 0, 120),
    missed: num("missed", 1, 1000),
    concurrency: num("connect-concurrency", 1, 20000),
    connectTimeout: num("connect-timeout", 1, 600) * 1000,
    ackTimeout: num("ack-timeout", 0.1, 120) * 1000,
    drainTimeout: num("drain-timeout", 0, 120) * 1000,
    replayComplete: opt["replay-complete"],
    csr: opt.csr,
    tokens: opt.tokens ? JSON.parse(readFileSync(opt.tokens, "utf8")) : {},
  };
}

const STATES = ["closed", "open"];
function makeData(n, t) {
  // ~380 bytes as a lockerbus envelope, as bench/loadgen.mjs
  return {
    lockerId: `locker-${String(((n % 48) + 48) % 48).padStart(3, "0")}`,
    oldState: STATES[n % 2],
    newState: STATES[(n + 1) % 2],
    kioskId: "kiosk-0017",
    userId: "user-0042",
    metadata: { t, n },
  };
}

class Worker {
  constructor(index, cfg, tokens) {
    this.child = fork(fileURLToPath(import.meta.url), ["--worker"], { stdio: ["ignore", "ignore", "inherit", "ipc"] });
    this.waiters = new Map();
    this.progress = 0;
    this.child.on("message", (msg) => {
      if (msg.kind === "progress") {
        this.progress = msg.unique;
        return;
      }
      const waiter = this.waiters.get(msg.kind);
      if (waiter) {
        this.waiters.delete(msg.kind);
        waiter(msg);
      }
    });
    this.child.on("exit", (code) => {
      if (code && !this.closing) fail(`worker ${index} exited with ${code}`);
    });
    const { tokens: _all, ...shared } = cfg;
    this.ready = this.ask("init", { cfg: shared, tokens });
  }
  // Send a command; resolves with the worker's answer of kind `answer`.
  ask(kind, payload = {}, answer = kind) {
    return new Promise((resolve) => {
      this.waiters.set(answer, resolve);
      this.child.send({ kind, ...payload });
    });
  }
  tell(kind, payload = {}) {
    this.child.send({ kind, ...payload });
  }
}

async function main() {
  const cfg = parseOptions();
  const budgetMs =
    3 * cfg.connectTimeout + (cfg.idleHold + cfg.warmup + cfg.duration) * 1000 + 2 * cfg.drainTimeout + 60000;
  const hardStop = setTimeout(() => fail(`hard time limit of ${budgetMs} ms reached`), budgetMs);
  const subTokens = cfg.tokens.subscribers?.length ? cfg.tokens.subscribers : ["bench"];
  const pubToken = cfg.tokens.publisher ?? "bench";
  const workers = [];
  for (let w = 0; w < cfg.procs; w++) {
    const lo = Math.floor((cfg.clients * w) / cfg.procs);
    const hi = Math.floor((cfg.clients * (w + 1)) / cfg.procs);
    const tokens = Array.from({ length: hi - lo }, (_, i) => subTokens[(lo + i) % subTokens.length]);
    workers.push(new Worker(w, cfg, tokens));
  }
  await Promise.all(workers.map((w) => w.ready));
  emit({ event: "workers", pids: workers.map((w) => w.child.pid) });
  const all = (kind, payload, answer) => Promise.all(workers.map((w) => w.ask(kind, payload, answer)));
  const cpu0 = process.cpuUsage();

  // --- connect
  emit({ event: "connect_start" });
  const t0 = nowMs();
  const concurrency = cfg.mode === "connect" ? 0 : Math.max(1, Math.ceil(cfg.concurrency / cfg.procs));
  const connected = await all("connect", { concurrency }, "connected");
  const connectMs = nowMs() - t0;
  emit({ event: "ready" });
  const failures = connected.reduce((a, r) => a + r.errors, 0);
  const firstError = connected.find((r) => r.firstError)?.firstError ?? null;
  const connectSummary = summary(connected.flatMap((r) => r.ms));
  const result = {
    event: "result",
    mode: cfg.mode,
    clients: cfg.clients,
    procs: cfg.procs,
    connect_ms: Math.round(connectMs),
    connect_failures: failures,
    first_connect_error: firstError,
    connect_per_client_ms: connectSummary,
  };
  if (failures > 0 && cfg.mode !== "connect") {
    fail(`${failures} of ${cfg.clients} clients failed to connect: ${firstError}`);
  }

  let publisher = null;
  const publish = (n, timeout = cfg.ackTimeout) =>
    new Promise((resolve) => {
      const t = nowMs();
      publisher
        .timeout(timeout)
        .emit("publish", { type: cfg.type, data: makeData(n, t) }, (err, ack) =>
          resolve(err ? "ack timed out" : ack?.ok === true ? null : JSON.stringify(ack)),
        );
    });
  const connectPublisher = () =>
    new Promise((resolve) => {
      publisher = io(`${cfg.origin}${cfg.namespace}`, {
        transports: ["websocket"],
        forceNew: true,
        reconnection: false,
        auth: { token: pubToken, replay: false },
      });
      publisher.on("connect", resolve);
      publisher.on("connect_error", (err) => fail(`publisher: connect_error ${err.message}`));
    });
  const delivered = () => workers.reduce((a, w) => a + w.progress, 0);
  const drain = async (expected) => {
    const start = nowMs();
    while (nowMs() - start < cfg.drainTimeout && delivered() < expected) await sleep(10);
    return nowMs() - start;
  };

  if (cfg.mode === "idle") {
    await sleep(cfg.idleHold * 1000);
    emit({ event: "idle" });
  } else if (cfg.mode === "fanout") {
    await connectPublisher();
    await sleep(1000);
    const measureFrom = nowMs() + cfg.warmup * 1000;
    for (const w of workers) w.tell("measure", { from: measureFrom });
    emit({ event: "publish_start" });
    const start = nowMs();
    const end = start + (cfg.warmup + cfg.duration) * 1000;
    const pending = [];
    const acked = [];
    let rejected = 0;
    let firstRejection = null;
    let n = 0;
    let measured = 0;
    // Open loop on schedule: event n goes at start + n / rate, whatever the acks do.
    while (true) {
      const due = start + (n * 1000) / cfg.rate;
      if (due >= end) break;
      if (due > nowMs()) await sleep(due - nowMs());
      const k = n++;
      if (nowMs() >= measureFrom) measured++;
      pending.push(
        publish(k).then((err) => {
          if (err) {
            rejected++;
            firstRejection ??= err;
          } else acked.push(k);
        }),
      );
    }
    await Promise.all(pending);
    const windowMs = cfg.duration * 1000; // the measured part of the schedule
    const drainMs = await drain(acked.length * cfg.clients);
    emit({ event: "drained" });
    const results = await all("finish", { acked }, "result");
    const latencies = results.flatMap((r) => r.latencies);
    const sum = (key) => results.reduce((a, r) => a + r[key], 0);
    Object.assign(result, {
      published: n,
      acked: acked.length,
      rejected,
      first_rejection: firstRejection,
      events_per_s: round((measured * 1000) / windowMs, 2),
      deliveries: sum("unique"),
      expected_deliveries: acked.length * cfg.clients,
      deliveries_per_s: Math.round((latencies.length * 1000) / windowMs),
      lost: sum("lost"),
      duplicates: sum("duplicates"),
      reordered: sum("reordered"),
      unknown_payloads: sum("unknown"),
      unexpected_disconnects: sum("disconnects"),
      drain_ms: Math.round(drainMs),
      latency_ms: summary(latencies),
    });
  } else if (cfg.mode === "recover") {
    await connectPublisher();
    // the primer (n = 0): every client has a last seq (lockerbus) or offset (Node)
    for (const w of workers) w.tell("measure", { from: Number.POSITIVE_INFINITY });
    const primerErr = await publish(0);
    if (primerErr) fail(`primer publish: ${primerErr}`);
    await drain(cfg.clients);
    if (delivered() < cfg.clients) fail(`primer reached ${delivered()} of ${cfg.clients} clients`);
    await all("disconnect", {}, "disconnected");
    emit({ event: "disconnected" });
    // the first publish waits behind the server's handling of N disconnects
    const d0 = nowMs();
    for (let n = 1; n <= cfg.missed; n++) {
      const err = await publish(n, cfg.connectTimeout);
      if (err) fail(`publishing missed event ${n}: ${err} (${Math.round(nowMs() - d0)} ms after the disconnects)`);
      if (n === 1) result.first_publish_after_disconnect_ms = Math.round(nowMs() - d0);
    }
    result.missed_published_ms = Math.round(nowMs() - d0);
    await sleep(2000); // the server finishes closing the old connections
    emit({ event: "storm_start" });
    const s0 = nowMs();
    const back = await all("reconnect", {}, "reconnected");
    const stormMs = nowMs() - s0;
    emit({ event: "caught_up" });
    const sum = (key) => back.reduce((a, r) => a + r[key], 0);
    const expectEvents = cfg.csr || cfg.replayComplete;
    Object.assign(result, {
      missed: cfg.missed,
      replay: cfg.csr ? "connection-state recovery" : cfg.replayComplete ? "last_seq" : "none",
      storm_ms: Math.round(stormMs),
      storm_failures: sum("errors"),
      first_storm_error: back.find((r) => r.firstError)?.firstError ?? null,
      storm_per_client_ms: summary(back.flatMap((r) => r.ms)),
      // without replay every missed event is missing by design: not counted as lost
      lost: expectEvents ? sum("lost") : 0,
      not_replayed: expectEvents ? 0 : sum("lost"),
      duplicates: sum("duplicates"),
      reordered: sum("reordered"),
      replayed_flagged: sum("replayed"),
      recovered: sum("recovered"),
      replay_complete: sum("replayCompletes"),
      unexpected_disconnects: sum("disconnects"),
    });
  }
  if (result.lost === undefined) {
    result.lost = 0;
    result.duplicates = 0;
  }
  const cpu = process.cpuUsage(cpu0);
  result.coordinator_cpu_s = round((cpu.user + cpu.system) / 1e6);
  for (const w of workers) {
    w.closing = true;
    w.tell("close");
  }
  publisher?.close();
  clearTimeout(hardStop);
  process.stdout.write(`${JSON.stringify(result)}\n`, () => process.exit(0));
}

if (process.argv.includes("--worker")) {
  workerMain();
} else {
  main().catch((err) => fail(`unexpected: ${err.stack ?? err}`));
}
