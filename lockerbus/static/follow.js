// lockerbus fleet console, the "follow set": server-side locker-state and help-priority
// filters (contract §10) without a stale view. Loaded before board.js, which calls it once.
//
// A §10 filter {state: [...]} delivers the event that puts a locker INTO a state (its
// `state` tag is the new state) but not the one that takes it out, and help_status_updated
// has no `priority` tag. So a namespace filtered that way gets a second connection, the
// follow connection, subscribed with {kiosk, locker} (or {help}) of what is shown: it
// brings the events that change or remove a shown item (a small superset; board.js drops
// events about items it does not know). When the shown set changes, the follow
// connection is re-subscribed with the new filter.
//
// Gap-free: an item can enter at seq s (main connection) and change again before the
// follow connection's new filter is in force, and nothing tells the page where the server
// was when it swapped the filter. So once the swap is acked, the page reads
// GET /api/events?after_seq=s-1&filter={those items} (its last_seq is at or past the swap,
// the follow connection has everything after it). The answer must start with the entry
// event itself at seq s; if it does not (no longer held), the snapshot is reloaded and the
// follow connection reconnects from the snapshot's last_seq (§11), which is exact.
window.lockerbusFollow = (ctx) => {
  "use strict";

  const LOCKERS = "/ws/lockers", HELP = "/ws/help";
  const ROOMS = { [LOCKERS]: "locker_updates", [HELP]: "help_requests" };
  const MAX_VALUES = 100, MAX_BYTES = 4096; // §10 filter limits
  const PAGE = 1000, ACK_WAIT_MS = 10000, RETRY_MS = 1000;
  const NOTHING = { nothing: "-" }; // no event has a tag "nothing": matches no event (§10)
  const { st, api, shown, followKey } = ctx;

  const fresh = () => ({ pending: [], sent: null, busy: false, dirty: false, timer: null });
  const state = { [LOCKERS]: fresh(), [HELP]: fresh() };
  /** for tests and the curious: checks run, events they caught, snapshot reloads they caused */
  const stats = (window.lockerbusFollowStats = { checks: 0, caught: 0, reloads: 0 });

  function narrowing(ns) {
    return (ns === LOCKERS && st.filter.state.length > 0) || (ns === HELP && st.filter.priority.length > 0);
  }

  function shownItems(ns) {
    return ns === LOCKERS ? [...st.lockers.values()].filter((l) => shown("locker", l))
      : [...st.help.values()].filter((r) => shown("help", r));
  }

  const uniq = (values) => [...new Set(values)].sort();
  const fits = (filter) => Object.values(filter).every((v) => typeof v === "string" || (v.length >= 1 && v.length <= MAX_VALUES))
    && new TextEncoder().encode(JSON.stringify(filter)).length <= MAX_BYTES;

  // The narrowest filter within the §10 limits that lets every event of `items` through.
  function filterFor(ns, items) {
    if (!items.length) return NOTHING;
    const kiosk = st.filter.kiosk.length ? { kiosk: st.filter.kiosk } : {};
    const kiosks = uniq(items.map((i) => i.kioskId ?? i.kiosk_id));
    const candidates = ns === LOCKERS
      ? [{ kiosk: kiosks, locker: uniq(items.map((l) => l.lockerId)) },
        { ...kiosk, locker: uniq(items.map((l) => l.lockerId)) }, { kiosk: kiosks }, kiosk]
      : [{ help: uniq(items.map((r) => String(r.id))) }, { kiosk: kiosks }, kiosk];
    return candidates.find(fits) || {};
  }

  /** The follow connection's filter now: what is shown. */
  const filter = (ns) => filterFor(ns, shownItems(ns));

  /** board.js folded an event: an item entered or left the view. */
  function moved(ns, item, was, is, event) {
    if (!narrowing(ns) || was === is) return;
    if (is) state[ns].pending.push({ item, seq: event.seq, epoch: event.epoch });
    sync(ns);
  }

  /** The follow connection (re)connected: it is subscribed afresh. */
  function connected(ns) {
    state[ns].sent = null;
    sync(ns);
  }

  // One round at a time per namespace: re-subscribe with what is shown, then check the
  // items that entered since the last round. Entries meanwhile make another round.
  async function sync(ns) {
    const f = state[ns];
    if (f.busy) { f.dirty = true; return; }
    f.busy = true;
    try {
      do {
        f.dirty = false;
        const socket = st.sockets[followKey(ns)];
        if (!socket || !socket.connected) return; // connected() syncs again
        const batch = f.pending;
        f.pending = [];
        const ok = (await subscribe(ns, f, socket)) && (!batch.length || (await check(ns, f, batch)));
        if (state[ns] !== f) return; // reset meanwhile: the new follow connection is exact
        if (!ok) {
          f.pending = batch.concat(f.pending);
          clearTimeout(f.timer);
          f.timer = setTimeout(() => sync(ns), RETRY_MS);
          return;
        }
      } while (f.dirty || f.pending.length);
    } finally {
      f.busy = false;
    }
  }

  async function subscribe(ns, f, socket) {
    const wanted = filter(ns), text = JSON.stringify(wanted);
    if (text === f.sent) return true;
    const ack = await new Promise((resolve) => socket.timeout(ACK_WAIT_MS)
      .emit("subscribe", { room: ROOMS[ns], filter: wanted }, (err, answer) => resolve(err ? null : answer)));
    if (!ack || !ack.ok) return false;
    f.sent = text;
    return true;
  }

  // What the items of `batch` did between entering the view and the acked swap.
  async function check(ns, f, batch) {
    stats.checks += 1;
    const first = batch.reduce((a, b) => (b.seq < a.seq ? b : a));
    const query = { namespace: ns, limit: String(PAGE), filter: JSON.stringify(filterFor(ns, batch.map((b) => b.item))) };
    let after = first.seq - 1;
    for (let page = 0; ; page += 1) {
      let body;
      try {
        body = await api("/api/events?" + new URLSearchParams({ ...query, after_seq: String(after) }));
      } catch {
        return false; // tried again shortly
      }
      if (state[ns] !== f) return true;
      const held = body.events.length && body.events[0].seq === first.seq && body.epoch === first.epoch;
      if (page === 0 && (!held || batch.some((b) => b.epoch !== body.epoch))) {
        stats.reloads += 1;
        ctx.resync(ns); // the entry is no longer held: the snapshot is the truth again
        return true;
      }
      for (const event of body.events) ctx.onEvent(ns, { ...event, replayed: true }, "check");
      stats.caught += body.events.length;
      if (!body.has_more) return true;
      after = body.last_seq;
    }
  }

  /** A snapshot was (re)loaded at its last_seq: a new follow connection replays from there. */
  function reset(ns) {
    clearTimeout(state[ns].timer);
    state[ns] = fresh();
    if (!narrowing(ns)) return;
    const key = followKey(ns), old = st.sockets[key];
    st.pos[key] = { ...st.floor[ns] };
    ctx.connect(key);
    if (old) old.disconnect();
  }

  return { narrowing, filter, moved, connected, reset };
};
