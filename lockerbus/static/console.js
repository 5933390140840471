// lockerbus fleet console, the operator's part: kiosk roster with remote
// commands (contract §5, §11) and the help workflow (§11). Loaded before
// board.js, which calls it once with the page's shared state and helpers.
window.lockerbusOperator = (ctx) => {
  "use strict";

  const HELP = "/ws/help", EVENTS = "/ws/events";
  const COMMANDS = ["open", "close", "reset", "buzzer", "status_check"];
  const COMMANDS_MAX = 20, COMMAND_WAIT_MS = 30000;
  const { st, $, el, localTime, shown, onEvent, resync, canOperate } = ctx;

  // Redraw `container` without losing what the operator is typing or where the
  // keyboard focus is: controls are matched by their accessible label.
  function keepingInputs(container, draw) {
    const values = new Map();
    for (const c of container.querySelectorAll("input, select")) values.set(c.getAttribute("aria-label"), c.value);
    const active = container.contains(document.activeElement) ? document.activeElement.getAttribute("aria-label")
      || document.activeElement.textContent : null;
    draw();
    for (const c of container.querySelectorAll("input, select")) {
      const value = values.get(c.getAttribute("aria-label"));
      if (value == null) continue;
      if (c.tagName === "SELECT" && ![...c.options].some((o) => o.value === value)) {
        c.append(el("option", { value }, value)); // a locker option drawn later than chosen
      }
      c.value = value;
    }
    if (active) {
      const again = [...container.querySelectorAll("input, select, button")]
        .find((c) => (c.getAttribute("aria-label") || c.textContent) === active);
      if (again) again.focus();
    }
  }

  function kioskIds() {
    const ids = new Set([...st.kiosks.keys()].filter((id) => shown("kiosk", { kioskId: id })));
    return [...ids].sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
  }

  function renderRoster() {
    if (!canOperate()) return;
    const ids = kioskIds();
    keepingInputs($("roster"), () => $("roster").replaceChildren(...ids.map((id) => {
      const k = st.kiosks.get(id);
      const state = k.online ? "online" : "offline";
      return el("li", { class: "kiosk-card " + state, "data-kiosk": id, "data-online": k.online, "aria-label": "Kiosk " + id },
        el("h3", {}, id, " ", el("span", { class: "badge badge-" + state }, state)),
        el("dl", {},
          el("dt", {}, "connections"), el("dd", { "data-field": "connections" }, String(k.connections)),
          el("dt", {}, "last seen"), el("dd", { "data-field": "last_seen" }, k.online && k.connections ? "now" : localTime(k.last_seen)),
          el("dt", {}, "health"), el("dd", { "data-field": "health" }, k.health_score == null ? "—" : String(k.health_score)),
          el("dt", {}, "status"), el("dd", {}, k.status || "—")),
        commandForm(id));
    })));
    $("kiosk-count").textContent = "(" + ids.length + ", " + ids.filter((id) => !st.kiosks.get(id).online).length + " offline)";
  }

  function commandForm(kioskId) {
    if (!canOperate()) return null;
    const lockers = () => [...st.lockers.values()].filter((l) => l.kioskId === kioskId).map((l) => l.lockerId)
      .sort((a, b) => a.localeCompare(b, undefined, { numeric: true }));
    const type = el("select", { "aria-label": "Command for " + kioskId, name: "type" },
      ...COMMANDS.map((c) => el("option", { value: c }, c.replace("_", " "))));
    const locker = el("select", { "aria-label": "Locker for " + kioskId, name: "locker" },
      el("option", { value: "" }, "whole kiosk"), ...lockers().map((l) => el("option", { value: l }, l)));
    locker.addEventListener("focus", () => { // lockers reported since the roster was drawn
      const value = locker.value;
      locker.replaceChildren(el("option", { value: "" }, "whole kiosk"), ...lockers().map((l) => el("option", { value: l }, l)));
      locker.value = value;
    });
    const form = el("form", { class: "command-form", "aria-label": "Command " + kioskId },
      type, locker, el("button", { type: "submit" }, "Send to " + kioskId));
    form.addEventListener("submit", (e) => {
      e.preventDefault();
      sendCommand({ type: type.value, kioskId, ...(locker.value ? { lockerId: locker.value } : {}) });
    });
    return form;
  }

  function helpActions(r) {
    const box = el("div", { class: "help-actions" });
    if (r.status === "open") {
      box.append(el("button", { type: "button", "aria-label": "Assign help request " + r.id + " to me",
        onclick: () => updateHelp(r, "assigned") }, "Assign to me"));
    }
    const notes = el("input", { type: "text", name: "notes", "aria-label": "Resolution notes for help request " + r.id,
      placeholder: "resolution notes" });
    const form = el("form", { class: "resolve-form" }, notes,
      el("button", { type: "submit", "aria-label": "Resolve help request " + r.id }, "Resolve"));
    form.addEventListener("submit", (e) => { e.preventDefault(); updateHelp(r, "resolved", notes.value.trim()); });
    box.append(form);
    return box;
  }

  // -- actions ----------------------------------------------------------------

  function emit(ns, name, payload) {
    return new Promise((resolve) => {
      const socket = st.sockets[ns];
      if (!socket || !socket.connected) { resolve({ ok: false, error: { code: "disconnected", message: "not connected" } }); return; }
      socket.timeout(COMMAND_WAIT_MS).emit(name, payload, (err, ack) =>
        resolve(err ? { ok: false, error: { code: "no_answer", message: "no answer from the server" } } : ack));
    });
  }

  async function updateHelp(r, status, notes) {
    const message = $("help-message");
    message.textContent = "";
    const data = { id: r.id, old_status: r.status, new_status: status, agent_id: st.claims.sub,
      updated_at: new Date().toISOString() };
    if (notes) data.resolution_notes = notes;
    const ack = await emit(HELP, "publish", { type: "help_status_updated", data });
    if (ack && ack.ok) { onEvent(HELP, ack.event); return; }
    const err = (ack && ack.error) || {};
    if (err.code === "conflict") {
      message.textContent = "Help request #" + r.id + " was changed by someone else; its current state is reloaded.";
      message.dataset.code = "conflict";
      await resync(HELP);
    } else {
      message.textContent = "Help request #" + r.id + ": " + (err.message || err.code || "failed");
      message.dataset.code = err.code || "error";
    }
  }

  async function sendCommand(command) {
    const target = command.kioskId + (command.lockerId ? "/" + command.lockerId : "");
    const item = el("li", { "data-command-state": "pending", "data-target": target, "data-command": command.type },
      el("b", {}, command.type + " " + target), " ", el("span", { class: "result" }, "pending…"));
    const list = $("commands");
    list.prepend(item);
    while (list.children.length > COMMANDS_MAX) list.lastElementChild.remove();
    const ack = await emit(EVENTS, "command", command);
    if (ack && ack.ok) settleCommand(ack.event.data.command.id, ack.event.data, item);
    else showResult(item, "failure", "not issued: " + ((ack && ack.error && (ack.error.message || ack.error.code)) || "failed"));
  }

  // The issuer's ack settles its own entry; the broadcast of the same event
  // (possibly first) finds the entry by command id once the ack has named it.
  function settleCommand(id, data, item) {
    const node = item || document.querySelector('#commands li[data-command-id="' + CSS.escape(id) + '"]');
    if (!node) return;
    node.dataset.commandId = id;
    const r = data.result;
    const outcome = r.success ? "success" : r.error === "kiosk_offline" || r.error === "timeout" ? r.error : "failure";
    const label = { success: "success", failure: "failure", kiosk_offline: "kiosk offline", timeout: "timed out" }[outcome];
    const time = r.execution_time_ms != null ? " in " + Math.round(r.execution_time_ms) + " ms" : "";
    showResult(node, outcome, label + (r.message ? ": " + r.message : "")
      + (!r.success && r.error && outcome === "failure" ? " (" + r.error + ")" : "") + time);
  }

  function showResult(node, outcome, text) {
    node.dataset.commandState = outcome;
    node.querySelector(".result").textContent = text;
  }

  return { keepingInputs, renderRoster, helpActions, settleCommand };
};
