// Drive a lockerbus server with the official socket.io-client and print what happened as JSON.
// Usage: node contract.mjs <url> <json-config>; the Python test asserts on the output.
import { io } from "socket.io-client";

const [url, configText] = process.argv.slice(2);
const config = JSON.parse(configText);
const out = {};
const timer = setTimeout(() => {
  console.log(JSON.stringify({ ...out, timeout: true }));
  process.exit(2);
}, 15000);

function open(namespace, auth) {
  return io(url + namespace, { auth, transports: ["websocket"], reconnection: false, forceNew: true });
}

function connectError(namespace, auth) {
  return new Promise((resolve) => {
    const socket = open(namespace, auth);
    socket.on("connect", () => resolve({ connected: true }));
    socket.on("connect_error", (err) => {
      socket.close();
      resolve({ message: err.message, data: err.data });
    });
  });
}

// 1. refusals: no token, forged token
out.noToken = await connectError("/ws/lockers", {});
out.forged = await connectError("/ws/lockers", { token: config.forged });

// 2. a subscriber that replays from last_seq and then receives live events
const received = [];
let complete = null;
const sub = open("/ws/lockers", { token: config.panel, last_seq: config.lastSeq });
sub.onAny((name, payload) => {
  if (name === "replay_complete") complete = { ...payload, index: received.length };
  else received.push({ name, seq: payload.seq, replayed: payload.replayed === true });
});
await new Promise((resolve) => sub.on("connect", resolve));
await new Promise((resolve) => {
  const check = () => (complete ? resolve() : setTimeout(check, 5));
  check();
});
out.subscribeAck = await sub.emitWithAck("subscribe", { room: "locker_updates" });

// 3. publish with ack, a good one and a bad one
const pub = open("/ws/lockers", { token: config.gateway, replay: false });
await new Promise((resolve) => pub.on("connect", resolve));
out.publishOk = await pub.emitWithAck("publish", config.event);
out.publishBad = await pub.emitWithAck("publish", { type: "locker_state_changed", data: { lockerId: "" } });
await new Promise((resolve) => {
  const check = () => (received.some((e) => e.seq === out.publishOk.event.seq) ? resolve() : setTimeout(check, 5));
  check();
});
out.received = received;
out.complete = complete;
sub.close();
pub.close();
clearTimeout(timer);
console.log(JSON.stringify(out));
process.exit(0);
