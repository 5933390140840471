// lockerbus fleet console: snapshots over HTTP, then live over Socket.IO from
// each snapshot's last_seq (contract §6, §8, §11); commands (§5), help
// workflow (§11), server-side filters (§10, with follow.js). No build step; `io` is
// socket.io-client.
(() => {
  "use strict";

  const LOCKERS = "/ws/lockers", HELP = "/ws/help", EVENTS = "/ws/events";
  const ROOMS = { [LOCKERS]: "locker_updates", [HELP]: "help_requests", [EVENTS]: "system_events" };
  const SNAPSHOT = { [LOCKERS]: "/api/lockers", [HELP]: "/api/help" };
  const FEED_MAX = 50;
  const PRIORITY = { urgent: 0, high: 1, medium: 2, low: 3 };
  const OPERATORS = new Set(["panel", "gateway", "admin"]); // may command, read /api/kiosks, update help
  const TOKEN_KEY = "lockerbus.token";
  const FOLLOW = "#follow"; // socket key suffix of a namespace's follow connection (follow.js)
  const RETRY_FIRST_MS = 1000, RETRY_MAX_MS = 15000;

  const st = {
    token: null, claims: {},
    // items keep the seq and epoch of the last event folded into them, so events of
    // two connections fold in seq order; items that left the view stay (hidden) for that
    lockers: new Map(),   // "kiosk/locker" -> {lockerId, kioskId, state, seq, epoch, timestamp}
    help: new Map(),      // id -> request (resolved ones hidden)
    kiosks: new Map(),    // kioskId -> /api/kiosks entry
    floor: {},            // namespace -> {seq, epoch} of its snapshot: older events are in it
    pos: {},              // socket key -> {seq, epoch}: where it resumes on reconnect
    buffered: {},         // namespace -> [event, source] held while a snapshot reloads
    sockets: {},          // socket key (namespace, or namespace + FOLLOW) -> socket
    status: {},           // socket key -> connected | reconnecting | disconnected
    replaying: {},        // socket key -> true until replay_complete
    reconnects: 0,
    filter: { kiosk: [], state: [], priority: [] },
    feed: [],             // events shown, newest first by timestamp
  };

  const $ = (id) => document.getElementById(id);
  const el = (tag, props = {}, ...children) => {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props)) {
      if (key === "class") node.className = value;
      else if (key.startsWith("data-") || key.startsWith("aria-") || key === "role") node.setAttribute(key, String(value));
      else if (key === "onclick") node.addEventListener("click", value);
      else node[key] = value;
    }
    node.append(...children.filter((c) => c != null));
    return node;
  };
  const canOperate = () => OPERATORS.has(st.claims.role);
  const followKey = (ns) => ns + FOLLOW;
  const nsOf = (key) => key.replace(FOLLOW, "");
  const newer = (a, b) => !b || a.epoch !== b.epoch || a.seq > b.seq; // position a past b?
  const localTime = (iso) => { const t = new Date(iso); return isNaN(t) ? "" : t.toLocaleTimeString(); };

  // -- token ------------------------------------------------------------------

  function tokenFromFragment() {
    const match = /(?:^#|&)token=([^&]+)/.exec(location.hash);
    if (!match) return null;
    history.replaceState(null, "", location.pathname + location.search); // keep it out of sight
    return decodeURIComponent(match[1]);
  }

  // The claims only decide what the page offers; the server checks every action.
  function readClaims(token) {
    try {
      const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(part + "=".repeat((4 - part.length % 4) % 4)));
    } catch { return {}; }
  }

  function askForToken(message) {
    sessionStorage.removeItem(TOKEN_KEY);
    for (const socket of Object.values(st.sockets)) socket.disconnect();
    st.sockets = {};
    st.status = {};
    st.replaying = {};
    $("board").hidden = true;
    $("logout").hidden = true;
    $("login").hidden = false;
    $("login-error").textContent = message || "";
    $("token-input").focus();
  }

  class TokenRefused extends Error {}

  async function api(path) {
    const resp = await fetch(path, { headers: { Authorization: "Bearer " + st.token } });
    const body = await resp.json().catch(() => ({}));
    if (resp.status === 401) throw new TokenRefused(body.error ? body.error.message : "token refused");
    if (!resp.ok) throw new Error(path + ": " + (body.error ? body.error.message : resp.status));
    return body;
  }

  // -- filters (§10): kept in the URL, applied by the server (docs/console.md) ---

  function readFilter() {
    const params = new URLSearchParams(location.search);
    for (const key of Object.keys(st.filter)) {
      st.filter[key] = (params.get(key) || "").split(",").map((v) => v.trim()).filter(Boolean);
    }
    $("filter-kiosk").value = st.filter.kiosk.join(", ");
    $("filter-state").value = st.filter.state[0] || "";
    $("filter-priority").value = st.filter.priority[0] || "";
    const parts = Object.entries(st.filter).filter(([, v]) => v.length).map(([k, v]) => k + " = " + v.join(" | "));
    $("filter-summary").textContent = parts.length ? "Showing " + parts.join(", ") : "Showing everything";
  }

  // The server filter of a socket: the main connection of a namespace gets the
  // filter as chosen; a follow connection, the items shown (follow.js).
  function serverFilter(key) {
    if (key !== nsOf(key)) return follow.filter(nsOf(key));
    const filter = st.filter.kiosk.length ? { kiosk: st.filter.kiosk } : {};
    if (key === LOCKERS && st.filter.state.length) filter.state = st.filter.state;
    if (key === HELP && st.filter.priority.length) filter.priority = st.filter.priority;
    return Object.keys(filter).length ? filter : null;
  }

  function shown(kind, item) {
    const f = st.filter;
    const kiosk = item.kioskId ?? item.kiosk_id;
    if (kiosk == null || (f.kiosk.length && !f.kiosk.includes(kiosk))) return false;
    if (kind === "locker" && f.state.length && !f.state.includes(item.state)) return false;
    if (kind === "help" && (item.status === "resolved" || (f.priority.length && !f.priority.includes(item.priority)))) return false;
    return true;
  }

  function applyFilter(event) {
    event.preventDefault();
    const params = new URLSearchParams();
    const kiosk = $("filter-kiosk").value.split(",").map((v) => v.trim()).filter(Boolean).join(",");
    if (kiosk) params.set("kiosk", kiosk);
    if ($("filter-state").value) params.set("state", $("filter-state").value);
    if ($("filter-priority").value) params.set("priority", $("filter-priority").value);
    const query = params.toString();
    location.assign(location.pathname + (query ? "?" + query : "")); // bookmarkable; reconnects filtered
  }

  // -- state ------------------------------------------------------------------

  // The routes take no filter but the token's scope: the rest is filtered here, once.
  async function loadSnapshot(ns) {
    const snap = await api(SNAPSHOT[ns]);
    const epoch = snap.epoch;
    if (ns === LOCKERS) {
      st.lockers.clear();
      for (const l of snap.lockers) if (shown("locker", l)) st.lockers.set(l.kioskId + "/" + l.lockerId, { ...l, epoch });
      renderLockers();
    } else {
      st.help.clear();
      for (const r of snap.help_requests) if (shown("help", r)) st.help.set(r.id, { ...r, epoch });
      renderHelp();
    }
    st.floor[ns] = { seq: snap.last_seq, epoch };
    if (newer(st.floor[ns], st.pos[ns])) st.pos[ns] = { ...st.floor[ns] };
  }

  async function loadKiosks() {
    if (!canOperate()) return;
    const body = await api("/api/kiosks");
    st.kiosks = new Map(body.kiosks.map((k) => [k.kioskId, k]));
    ops.renderRoster();
  }

  let kioskTimer = null;
  function reloadKiosksSoon() {
    clearTimeout(kioskTimer);
    kioskTimer = setTimeout(() => loadKiosks().catch(() => {}), 250);
  }

  // Reload a namespace's snapshot while its live events are held back, then
  // let through only those the snapshot does not already reflect; a follow
  // connection starts again from the snapshot.
  async function resync(ns) {
    if (st.buffered[ns]) return;
    st.buffered[ns] = [];
    setMode();
    try {
      await loadSnapshot(ns);
      follow.reset(ns);
    } finally {
      const held = st.buffered[ns];
      delete st.buffered[ns];
      // a socket replaced meanwhile (follow.reset) no longer moves its key's position
      for (const [event, source, socket] of held) onEvent(ns, event, st.sockets[source] === socket ? source : "old");
      setMode();
    }
  }

  // `source`: the socket key it came on, "check" (follow.js read it over HTTP) or
  // nothing (the ack of this page's own publish).
  function onEvent(ns, event, source) {
    if (st.buffered[ns]) { st.buffered[ns].push([event, source, st.sockets[source]]); return; }
    const at = { seq: event.seq, epoch: event.epoch };
    if (st.sockets[source]) {
      if (!newer(at, st.pos[source])) return; // already had it (a replay after a resync)
      st.pos[source] = at;
    }
    if (SNAPSHOT[ns] && !newer(at, st.floor[ns])) return; // the snapshot has it
    if (fold(event, source === ns || source === undefined)) addToFeed(event);
  }

  // The item an event is about, unless that is stale: an event of another connection
  // with a greater seq came first. Only the main connection (and this page's own
  // publishes) bring items not seen yet; the follow superset's others are dropped.
  function item(map, key, event, creates) {
    const old = map.get(key);
    if (!old && !creates) return null;
    if (old && !newer(event, old)) return undefined;
    return old || {};
  }

  // Fold one event; false when it is about nothing shown (not even for the feed).
  function fold(event, creates) {
    const d = event.data, at = { seq: event.seq, epoch: event.epoch };
    if (event.type === "locker_state_changed") {
      const key = d.kioskId + "/" + d.lockerId;
      const old = item(st.lockers, key, event, creates);
      if (!old) return old === undefined;
      const now = { lockerId: d.lockerId, kioskId: d.kioskId, state: d.newState, timestamp: event.timestamp, ...at };
      st.lockers.set(key, now);
      follow.moved(LOCKERS, now, old.state != null && shown("locker", old), shown("locker", now), event);
      renderLockers(key);
    } else if (event.type === "help_requested" || event.type === "help_status_updated") {
      const old = item(st.help, d.id, event, creates);
      if (!old) return old === undefined;
      const now = event.type === "help_requested" ? { ...d, timestamp: event.timestamp, ...at }
        : { ...old, id: d.id, status: d.new_status, agent_id: d.agent_id, ...at };
      st.help.set(d.id, now);
      follow.moved(HELP, now, old.id != null && shown("help", old), shown("help", now), event);
      renderHelp();
    } else if (event.type === "system_status" && d.component === "kiosk") {
      const id = (event.tags && event.tags.kiosk) || (d.details && d.details.kioskId);
      if (!id || !canOperate()) return;
      const kiosk = st.kiosks.get(id) || { kioskId: id, connections: 0 };
      const online = d.status !== "offline";
      st.kiosks.set(id, {
        ...kiosk, online, status: d.status, health_score: d.health_score,
        connections: online ? kiosk.connections : 0, last_seen: event.timestamp,
      });
      ops.renderRoster();
      reloadKiosksSoon(); // connection counts are not in the event
    } else if (event.type === "command_applied") {
      ops.settleCommand(d.command.id, d);
    }
    return true;
  }

  // -- rendering ------------------------------------------------------------------

  function renderLockers(changedKey) {
    const byKiosk = new Map();
    for (const [key, l] of [...st.lockers].sort(([a], [b]) => a.localeCompare(b, undefined, { numeric: true }))) {
      if (!shown("locker", l)) continue;
      if (!byKiosk.has(l.kioskId)) byKiosk.set(l.kioskId, []);
      byKiosk.get(l.kioskId).push([key, l]);
    }
    const sections = [...byKiosk].map(([kiosk, lockers]) => el("div", { class: "kiosk" },
      el("h3", {}, kiosk),
      el("ul", { class: "grid", "aria-label": "Lockers of " + kiosk }, ...lockers.map(([key, l]) => el("li", {
        class: "locker state-" + l.state + (key === changedKey ? " changed" : ""),
        "data-locker": key, "data-state": l.state, "data-seq": l.seq,
        title: key + " · " + l.state + " · seq " + l.seq + " · " + l.timestamp,
      }, el("b", {}, l.lockerId), el("small", {}, l.state))))));
    $("kiosks").replaceChildren(...(sections.length ? sections
      : [el("p", { class: "muted empty" }, "No locker has reported yet.")]));
    $("locker-count").textContent = "(" + [...byKiosk.values()].reduce((n, ls) => n + ls.length, 0) + ")";
  }

  function renderHelp() {
    const requests = [...st.help.values()].filter((r) => shown("help", r)).sort((a, b) =>
      (PRIORITY[a.priority] ?? 9) - (PRIORITY[b.priority] ?? 9) || a.id - b.id);
    ops.keepingInputs($("help"), () => $("help").replaceChildren(...requests.map((r) => el("li", {
      "data-help": r.id, "data-priority": r.priority, "data-status": r.status, "aria-label": "Help request " + r.id,
    },
      el("span", { class: "priority priority-" + r.priority }, r.priority),
      el("span", { class: "help-text" }, "#" + r.id + " " + r.kiosk_id + (r.locker_no != null ? " · locker " + r.locker_no : "")
        + " · " + r.category.replace("_", " ") + " · " + r.status + (r.agent_id ? " (" + r.agent_id + ")" : "")
        + (r.note ? " — " + r.note : "")),
      canOperate() ? ops.helpActions(r) : null))));
    $("help-count").textContent = "(" + requests.length + ")";
  }

  // -- feed: one time order across namespaces ----------------------------------

  function summary(event) {
    const d = event.data || {};
    switch (event.type) {
      case "locker_state_changed": return d.kioskId + "/" + d.lockerId + ": " + d.oldState + " → " + d.newState;
      case "help_requested": return "#" + d.id + " " + d.kiosk_id + " " + d.category + " (" + d.priority + ")";
      case "help_status_updated": return "#" + d.id + ": " + d.old_status + " → " + d.new_status;
      case "command_applied": return d.command.type + " " + (d.command.kioskId || "") + ": "
        + (d.result.success ? "ok" : "failed " + (d.result.error || ""));
      case "system_status": return d.component + " " + ((event.tags && event.tags.kiosk) || "") + " " + d.status + " (" + d.health_score + ")";
      default: return (d.userId || "") + " " + (d.namespace || "");
    }
  }

  const order = (a, b) => (b.timestamp > a.timestamp) - (b.timestamp < a.timestamp)
    || a.namespace.localeCompare(b.namespace) || b.seq - a.seq;

  function addToFeed(event) {
    // the same event can come on two connections (and a follow.js read)
    if (st.feed.some((o) => o.namespace === event.namespace && o.seq === event.seq && o.epoch === event.epoch)) return;
    const item = el("li", {
      "data-ns": event.namespace, "data-seq": event.seq, "data-type": event.type,
      "data-replayed": event.replayed === true, "data-timestamp": event.timestamp,
    },
      el("time", { dateTime: event.timestamp }, localTime(event.timestamp)),
      el("span", { class: "type" }, event.type),
      el("span", {}, summary(event)));
    let at = st.feed.findIndex((other) => order(event, other) < 0);
    if (at < 0) at = st.feed.length;
    if (at >= FEED_MAX) return; // older than everything kept
    st.feed.splice(at, 0, event);
    const feed = $("feed");
    feed.insertBefore(item, feed.children[at] || null);
    while (st.feed.length > FEED_MAX) { st.feed.pop(); feed.lastElementChild.remove(); }
  }

  // A namespace shows the worse of its connections (main, follow).
  function setStatus(key, status) {
    st.status[key] = status;
    const ns = nsOf(key);
    const mine = Object.keys(st.status).filter((k) => nsOf(k) === ns).map((k) => st.status[k]);
    document.querySelector('.ns[data-ns="' + ns + '"]').dataset.status = mine.every((s) => s === "connected")
      ? "connected" : mine.includes("reconnecting") ? "reconnecting" : "disconnected";
    const all = Object.values(st.status);
    const overall = all.every((s) => s === "connected") ? "connected"
      : all.some((s) => s === "reconnecting") ? "reconnecting" : "disconnected";
    const node = $("status");
    node.dataset.status = overall;
    node.dataset.reconnects = String(st.reconnects);
    node.textContent = overall + (st.reconnects ? " · " + st.reconnects + " reconnect(s)" : "");
    setMode();
  }

  function setMode() {
    const busy = Object.values(st.replaying).some(Boolean);
    const down = Object.values(st.status).some((s) => s !== "connected");
    const mode = Object.keys(st.buffered).length ? "resyncing" : busy ? "replaying" : down ? "reconnecting" : "live";
    const node = $("mode");
    node.dataset.mode = mode;
    node.textContent = mode;
  }

  // -- sockets ------------------------------------------------------------------

  // Sent on every (re)connect: resume from the last event folded in, so the
  // server replays exactly what was missed (none twice, none skipped).
  function authFor(key) {
    const auth = { token: st.token };
    const filter = serverFilter(key);
    if (filter) auth.filter = filter;
    const pos = st.pos[key];
    if (pos) Object.assign(auth, { last_seq: pos.seq, epoch: pos.epoch });
    return auth; // /ws/events on first connect: the recent window
  }

  // `key` is a namespace (its main connection, all three share one WebSocket) or a
  // namespace + FOLLOW: a follow connection, on a WebSocket of its own (forceNew) since
  // socket.io-client keeps one socket per namespace and manager.
  function connect(key) {
    const ns = nsOf(key), follower = key !== ns;
    const socket = io(ns, {
      auth: (cb) => cb(authFor(key)),
      transports: ["websocket"],
      reconnectionDelay: RETRY_FIRST_MS,
      reconnectionDelayMax: RETRY_MAX_MS,
      randomizationFactor: 0.5,
      forceNew: follower,
    });
    st.sockets[key] = socket;
    st.status[key] = "disconnected";
    st.replaying[key] = true;
    const current = () => st.sockets[key] === socket; // a replaced follow socket falls silent
    let retry = 0, timer = null;
    socket.on("connect", () => {
      if (!current()) return;
      retry = 0;
      st.replaying[key] = true;
      setStatus(key, "connected");
      if (follower) {
        follow.connected(ns);
      } else {
        const filter = serverFilter(key);
        socket.emit("subscribe", filter ? { room: ROOMS[ns], filter } : { room: ROOMS[ns] });
      }
      if (ns === EVENTS) reloadKiosksSoon(); // presence may have moved while away
    });
    socket.on("replay_complete", (info) => {
      if (!current()) return;
      st.replaying[key] = false;
      if (info.recovered === false && SNAPSHOT[ns]) {
        resync(ns); // events were lost meanwhile: the snapshot is the truth again
      } else {
        const at = { seq: info.last_seq, epoch: info.epoch };
        if (newer(at, st.pos[key])) st.pos[key] = at;
      }
      setMode();
    });
    socket.on("disconnect", (reason) => {
      if (!current()) return;
      st.replaying[key] = false;
      st.reconnects += 1;
      // socket.io-client retries by itself except after a server-side disconnect
      // (a slow consumer dropped, an instance shutting down): retry that here too
      if (reason === "io server disconnect") {
        const base = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** retry++);
        timer = setTimeout(() => socket.connect(), base / 2 + Math.random() * base / 2);
      }
      setStatus(key, "reconnecting");
    });
    socket.on("connect_error", (err) => {
      if (!current()) return;
      if (err.message === "unauthorized") { clearTimeout(timer); askForToken("Token refused: " + (err.data ? err.data.message : "")); return; }
      if (!socket.active) {
        const base = Math.min(RETRY_MAX_MS, RETRY_FIRST_MS * 2 ** retry++);
        timer = setTimeout(() => socket.connect(), base / 2 + Math.random() * base / 2);
      }
      setStatus(key, "reconnecting");
    });
    const handler = (event) => { if (current()) onEvent(ns, event, key); };
    for (const type of ["locker_state_changed", "help_requested", "help_status_updated",
      "command_applied", "system_status", "connection", "disconnection"]) socket.on(type, handler);
  }

  async function boot() {
    $("login").hidden = true;
    $("board").hidden = false;
    $("logout").hidden = false;
    st.claims = readClaims(st.token);
    $("whoami").textContent = (st.claims.sub || "?") + " · " + (st.claims.role || "?") + (st.claims.scope ? " · scoped" : "");
    $("roster-section").hidden = !canOperate();
    $("commands-section").hidden = !canOperate();
    for (const ns of [LOCKERS, HELP, EVENTS]) { st.status[ns] = "disconnected"; st.replaying[ns] = true; }
    try {
      await Promise.all([loadSnapshot(LOCKERS), loadSnapshot(HELP), loadKiosks()]);
    } catch (err) {
      askForToken(err instanceof TokenRefused ? "Token refused: " + err.message : String(err.message || err));
      return;
    }
    for (const ns of [LOCKERS, HELP, EVENTS]) connect(ns);
    for (const ns of [LOCKERS, HELP]) follow.reset(ns); // a follow connection where needed
  }

  function start() {
    $("login").addEventListener("submit", (e) => {
      e.preventDefault();
      st.token = $("token-input").value.trim();
      $("token-input").value = "";
      if (!st.token) return;
      sessionStorage.setItem(TOKEN_KEY, st.token);
      boot();
    });
    $("logout").addEventListener("click", () => askForToken(""));
    $("filters").addEventListener("submit", applyFilter);
    $("filter-clear").addEventListener("click", () => {
      for (const id of ["filter-kiosk", "filter-state", "filter-priority"]) $(id).value = "";
      $("filters").requestSubmit();
    });
    readFilter();
    st.token = tokenFromFragment() || sessionStorage.getItem(TOKEN_KEY);
    if (!st.token) { askForToken(""); return; }
    sessionStorage.setItem(TOKEN_KEY, st.token);
    boot();
  }

  const ops = window.lockerbusOperator({ st, $, el, localTime, shown, onEvent, resync, canOperate });
  const follow = window.lockerbusFollow({ st, api, shown, followKey, onEvent, resync, connect });
  start();
})();
