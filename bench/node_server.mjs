// Optional third column for scripts/bench: the same baseline as plain_server.py
// on Node's socket.io server (no validation, no store), permessage-deflate off.
// --recovery turns on socket.io's connection-state recovery (the fleet storm
// scenario compares lockerbus's last_seq replay with it).
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { parseArgs } from "node:util";
import { Server } from "socket.io";

const { values: opt } = parseArgs({
  options: {
    host: { type: "string", default: "127.0.0.1" },
    port: { type: "string", default: "8091" },
    recovery: { type: "boolean", default: false },
  },
});
if (!["127.0.0.1", "localhost", "::1"].includes(opt.host)) {
  console.error("the benchmark server listens on the loopback interface only");
  process.exit(2);
}

const NAMESPACE_ROOMS = {
  "/ws/lockers": "locker_updates",
  "/ws/help": "help_requests",
  "/ws/events": "system_events",
};
const ROUTES = {
  locker_state_changed: "/ws/lockers",
  help_requested: "/ws/help",
  help_status_updated: "/ws/help",
  command_applied: "/ws/events",
  system_status: "/ws/events",
};
const EPOCH = randomUUID().replaceAll("-", "");
const seqs = Object.fromEntries(Object.keys(NAMESPACE_ROOMS).map((ns) => [ns, 0]));

function publish(message) {
  const target = message && ROUTES[message.type];
  if (!target) return { ok: false, error: { code: "bad_request", message: "type required" } };
  const room = message.room || NAMESPACE_ROOMS[target];
  const envelope = {
    id: randomUUID(),
    type: message.type,
    version: "1.0",
    seq: ++seqs[target],
    epoch: EPOCH,
    namespace: target,
    room,
    timestamp: new Date().toISOString(),
    data: message.data,
  };
  io.of(target).to(room).emit(message.type, envelope);
  return { ok: true, event: envelope };
}

// POST /api/events (201 + envelope) and /api/events/batch (200 {results}), as plain_server.py.
function handleHttp(req, res) {
  // engine.io handles /socket.io/ itself and hands every other request here
  if (req.method !== "POST" || !["/api/events", "/api/events/batch"].includes(req.url)) {
    res.writeHead(404).end();
    return;
  }
  const chunks = [];
  req.on("data", (chunk) => chunks.push(chunk));
  req.on("end", () => {
    let body;
    try {
      body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
    } catch {
      res.writeHead(400, { "content-type": "application/json" }).end('{"error":{"code":"bad_request"}}');
      return;
    }
    let status = 200;
    let answer;
    if (req.url === "/api/events") {
      const result = publish(body);
      status = result.ok ? 201 : 400;
      answer = result.ok ? result.event : { error: result.error };
    } else {
      answer = { results: (body.events ?? []).map(publish) };
    }
    res.writeHead(status, { "content-type": "application/json" }).end(JSON.stringify(answer));
  });
}

const httpServer = createServer(handleHttp);
const io = new Server(httpServer, {
  perMessageDeflate: false,
  httpCompression: false,
  // a dropped client gets its rooms and every missed packet back on reconnect
  ...(opt.recovery ? { connectionStateRecovery: { maxDisconnectionDuration: 2 * 60 * 1000 } } : {}),
});

for (const namespace of Object.keys(NAMESPACE_ROOMS)) {
  io.of(namespace).on("connection", (socket) => {
    socket.on("subscribe", (message, ack) => {
      const room = message && typeof message.room === "string" ? message.room : "";
      if (!room) return ack?.({ ok: false, error: { code: "bad_request", message: "room required" } });
      socket.join(room);
      ack?.({ ok: true });
    });
    socket.on("unsubscribe", (message, ack) => {
      if (message && typeof message.room === "string") socket.leave(message.room);
      ack?.({ ok: true });
    });
    socket.on("publish", (message, ack) => ack?.(publish(message)));
  });
}

httpServer.listen(Number(opt.port), opt.host, () => {
  console.log(`node socket.io serving on ${opt.port}`);
});
for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    io.close();
    process.exit(0);
  });
}
