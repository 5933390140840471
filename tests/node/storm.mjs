// Reconnect-storm clients for tests/reliability/test_storm_node.py: N official
// socket.io-client connections to /ws/lockers, spread over worker threads, each
// resuming with auth {token, last_seq, epoch} from the last event it received.
//
//   node storm.mjs <url> <config.json>   config: {tokens: [jwt...], workers}
//
// stdin, one JSON command a line:
//   {"cmd": "wait", "seq": S, "timeout_ms": T}  -> {"event": "reached", "seq", "ms"} once every
//                                                  client received seq S (or "error")
//   {"cmd": "check", "ids": "<path of {seq: id}>"} -> {"event": "result", ...}: per-client
//                                                  lost / duplicated / reordered against the store
//   {"cmd": "close"}                             -> closes everything and exits
// stdout: {"event": "connected", "ms"} once all clients are connected (and replayed).

import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { Worker, isMainThread, parentPort, workerData } from "node:worker_threads";
import { io } from "socket.io-client";

const NS = "/ws/lockers";
const EVENT = "locker_state_changed";
const nowMs = () => Number(process.hrtime.bigint()) / 1e6;

// ----------------------------------------------------------------------------
// worker: a share of the clients

// timeBased: the first connect sends no last_seq (the default, time-based replay) and
// takes its position from replay_complete, as tests/reliability/clients.py's Tracker does.
function client(url, token, timeBased) {
  const c = {
    seqs: [],
    ids: [],
    lastSeq: null,
    epoch: null,
    completes: [], // {count, last_seq, recovered, got}: got = replayed events seen before it
    got: 0,
    connects: 0,
    disconnects: [],
    errors: [],
    socket: null,
  };
  c.socket = io(`${url}${NS}`, {
    transports: ["websocket"],
    forceNew: true,
    reconnection: true,
    reconnectionDelay: 200,
    reconnectionDelayMax: 1000,
    randomizationFactor: 0.5,
    timeout: 20000,
    // evaluated on every (re)connect: resume from the last event received
    auth: (cb) => {
      if (timeBased && c.lastSeq === null) return cb({ token });
      const auth = { token, last_seq: c.lastSeq ?? 0 };
      if (c.epoch !== null) auth.epoch = c.epoch;
      cb(auth);
    },
  });
  c.socket.on("connect", () => {
    c.connects++;
    c.got = 0;
  });
  c.socket.on("disconnect", (reason) => c.disconnects.push(reason));
  c.socket.on("connect_error", (err) => c.errors.push(err.message));
  c.socket.on(EVENT, (ev) => {
    if (ev.replayed) c.got++;
    c.seqs.push(ev.seq);
    c.ids.push(ev.id);
    if (c.lastSeq === null || ev.seq > c.lastSeq) c.lastSeq = ev.seq;
    c.epoch = ev.epoch;
    c.onProgress?.();
  });
  c.socket.on("replay_complete", (p) => {
    c.completes.push({ count: p.count, last_seq: p.last_seq, recovered: p.recovered, got: c.got });
    c.epoch = p.epoch;
    if (c.lastSeq === null && timeBased) c.lastSeq = p.last_seq;
    c.onProgress?.();
  });
  return c;
}

function check(c, ids) {
  const last = ids.length - 1; // ids[seq] for seq 1..last
  const seen = new Uint8Array(last + 2);
  let duplicated = 0;
  let reordered = 0;
  let wrongId = 0;
  let prev = 0;
  c.seqs.forEach((seq, i) => {
    if (seq <= last && seen[seq]) duplicated++;
    else if (seq <= prev) reordered++;
    if (seq <= last) seen[seq] = 1;
    if (ids[seq] !== c.ids[i]) wrongId++;
    prev = Math.max(prev, seq);
  });
  const missing = [];
  for (let s = 1; s <= last; s++) if (!seen[s]) missing.push(s);
  return { lost: missing.length, missing, duplicated, reordered, wrongId };
}

async function workerMain() {
  const { url, tokens } = workerData;
  const clients = [];
  const t0 = nowMs();
  for (let i = 0; i < tokens.length; i += 50) {
    const batch = tokens.slice(i, i + 50).map((t, j) => client(url, t, (i + j) % 2 === 1));
    clients.push(...batch);
    await Promise.all(
      batch.map(
        (c) => new Promise((resolve) => (c.completes.length ? resolve() : (c.onProgress = resolve))),
      ),
    );
    for (const c of batch) c.onProgress = null;
  }
  parentPort.postMessage({ kind: "connected", ms: nowMs() - t0 });

  parentPort.on("message", (msg) => {
    if (msg.cmd === "wait") {
      let behind = clients.filter((c) => (c.lastSeq ?? 0) < msg.seq).length;
      if (behind === 0) return parentPort.postMessage({ kind: "reached", seq: msg.seq });
      for (const c of clients) {
        if ((c.lastSeq ?? 0) >= msg.seq) continue;
        c.onProgress = () => {
          if ((c.lastSeq ?? 0) < msg.seq) return;
          c.onProgress = null;
          if (--behind === 0) parentPort.postMessage({ kind: "reached", seq: msg.seq });
        };
      }
    } else if (msg.cmd === "check") {
      const ids = JSON.parse(readFileSync(msg.ids, "utf8"));
      const bad = [];
      const sums = { lost: 0, duplicated: 0, reordered: 0, wrongId: 0, unrecovered: 0 };
      let replayed = 0;
      let maxConnects = 0;
      for (const [i, c] of clients.entries()) {
        const r = check(c, ids);
        // the first replay: recovered true (from seq 0) or null (time-based); then always true
        const first = c.completes[0]?.recovered;
        const unrecovered =
          c.completes.slice(1).filter((x) => x.recovered !== true).length +
          (first === true || first === null ? 0 : 1);
        for (const k of ["lost", "duplicated", "reordered", "wrongId"]) sums[k] += r[k];
        sums.unrecovered += unrecovered;
        replayed += c.completes.slice(1).reduce((n, x) => n + x.count, 0);
        maxConnects = Math.max(maxConnects, c.connects);
        if (r.lost || r.duplicated || r.reordered || r.wrongId || unrecovered) {
          const missing = r.missing.length > 20 ? [r.missing[0], "...", r.missing.at(-1)] : r.missing;
          bad.push({ worker_index: i, ...r, missing, completes: c.completes, connects: c.connects,
            disconnects: c.disconnects, errors: c.errors.slice(0, 5), first_seqs: c.seqs.slice(0, 5) });
        }
      }
      parentPort.postMessage({ kind: "checked", clients: clients.length, sums, replayed, maxConnects,
        bad: bad.slice(0, 5), badCount: bad.length });
    } else if (msg.cmd === "close") {
      for (const c of clients) c.socket.close();
      parentPort.postMessage({ kind: "closed" });
    }
  });
}

// ----------------------------------------------------------------------------
// main thread: starts the workers, relays commands, merges answers

async function main() {
  const [url, configPath] = process.argv.slice(2);
  const { tokens, workers: count } = JSON.parse(readFileSync(configPath, "utf8"));
  const out = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
  const t0 = nowMs();
  const share = Math.ceil(tokens.length / count);
  const workers = [];
  for (let w = 0; w < count; w++) {
    const worker = new Worker(new URL(import.meta.url), {
      workerData: { url, tokens: tokens.slice(w * share, (w + 1) * share) },
    });
    worker.on("error", (err) => out({ event: "error", message: String(err?.stack ?? err) }));
    workers.push(worker);
  }
  // every worker answers each command once: collect one message of `kind` from each
  const gather = (kind) =>
    Promise.all(workers.map((w) => new Promise((resolve) => {
      const on = (m) => {
        if (m.kind !== kind) return;
        w.off("message", on);
        resolve(m);
      };
      w.on("message", on);
    })));
  await gather("connected");
  out({ event: "connected", clients: tokens.length, ms: Math.round(nowMs() - t0) });

  for await (const line of createInterface({ input: process.stdin })) {
    const msg = JSON.parse(line);
    if (msg.cmd === "wait") {
      const started = nowMs();
      const answers = gather("reached");
      for (const w of workers) w.postMessage(msg);
      const timer = new Promise((resolve) => setTimeout(resolve, msg.timeout_ms ?? 60000, null));
      const done = await Promise.race([answers, timer]);
      if (done === null) out({ event: "error", message: `not every client reached seq ${msg.seq}` });
      else out({ event: "reached", seq: msg.seq, ms: Math.round(nowMs() - started) });
    } else if (msg.cmd === "check") {
      const answers = gather("checked");
      for (const w of workers) w.postMessage(msg);
      const parts = await answers;
      const sums = { lost: 0, duplicated: 0, reordered: 0, wrongId: 0, unrecovered: 0 };
      for (const p of parts) for (const k of Object.keys(sums)) sums[k] += p.sums[k];
      out({
        event: "result",
        clients: parts.reduce((n, p) => n + p.clients, 0),
        ...sums,
        replayed: parts.reduce((n, p) => n + p.replayed, 0),
        max_connects: Math.max(...parts.map((p) => p.maxConnects)),
        bad_clients: parts.reduce((n, p) => n + p.badCount, 0),
        bad: parts.flatMap((p) => p.bad).slice(0, 5),
        rss_mib: Math.round(process.memoryUsage().rss / 1048576),
      });
    } else if (msg.cmd === "close") {
      const closed = gather("closed");
      for (const w of workers) w.postMessage(msg);
      await closed;
      await Promise.all(workers.map((w) => w.terminate()));
      out({ event: "closed" });
      process.exit(0); // stdin stays open: nothing else would end the process
    }
  }
}

if (isMainThread) await main();
else await workerMain();
