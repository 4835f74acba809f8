// The recheck station (docs/station.md): the queue arrives over server-sent events (/api/events); marks go to
// POST /api/rejects/<id>/mark, which the daemon answers with the same Marker as `inspectd mark` and register 21.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { rejects: [], selected: null, follow: true, unlocked: false, marking: true, busy: false };

function text(id, value) { $(id).textContent = value === null || value === undefined ? "–" : String(value); }

function localTime(iso) {
  const d = new Date(iso);
  if (isNaN(d)) return iso;
  const today = new Date().toDateString() === d.toDateString();
  const t = d.toLocaleTimeString([], { hour12: false });
  return today ? t : `${d.toLocaleDateString()} ${t}`;
}

function markText(m) {
  if (!m) return "not marked";
  return `${m.mark} (${m.mark === "good" ? "a false reject" : "a confirmed defect"}), by ${m.by} at ${localTime(m.at)}`;
}

function apply(update) {
  state.rejects = update.rejects;
  if ("unlocked" in update) state.unlocked = update.unlocked;
  state.marking = update.marking;
  const ids = state.rejects.map((r) => r.id);
  if (state.follow || !ids.includes(state.selected)) {
    state.selected = ids.length ? ids[0] : null;
  }
  render();
}

function render() {
  const op = $("operator");
  op.textContent = state.unlocked ? "unlocked" : "locked: marking needs the PIN";
  op.className = "operator " + (state.unlocked ? "unlocked" : "locked");
  $("unlock").hidden = state.unlocked;
  $("lock").hidden = !state.unlocked;
  renderQueue();
  renderItem();
}

function renderQueue() {
  const list = $("queue");
  const items = state.rejects.map((r) => {
    const li = document.createElement("li");
    li.dataset.id = r.id;
    li.dataset.seq = r.seq;
    if (r.id === state.selected) li.className = "selected";
    const img = document.createElement("img");
    img.src = r.overlay || r.image;
    img.alt = "";
    img.loading = "lazy";
    const info = document.createElement("div");
    const what = document.createElement("div");
    what.className = "what";
    what.textContent = `seq ${r.seq} · item ${r.item_id} · score ${Number(r.score).toFixed(3)} `;
    const badge = document.createElement("span");
    badge.className = "badge" + (r.mark ? " " + r.mark.mark : "");
    badge.textContent = r.mark ? r.mark.mark : "open";
    what.appendChild(badge);
    const when = document.createElement("div");
    when.className = "when";
    when.textContent = localTime(r.time);
    info.append(what, when);
    li.append(img, info);
    li.addEventListener("click", () => choose(r.id));
    return li;
  });
  list.replaceChildren(...items);
}

function current() { return state.rejects.find((r) => r.id === state.selected) || null; }

let shown = null;
function renderItem() {
  const r = current();
  $("empty").hidden = r !== null;
  $("item").hidden = r === null;
  if (r === null) return;
  text("f-item", r.item_id);
  text("f-seq", r.seq);
  text("f-plc", r.plc_seq);
  text("f-score", Number(r.score).toFixed(3));
  text("f-area", r.defect_area);
  text("f-time", localTime(r.time));
  $("f-time").title = r.time;
  text("f-mark", markText(r.mark));
  $("item").dataset.id = r.id;
  $("item").dataset.mark = r.mark ? r.mark.mark : "";
  if (shown !== r.id) {
    shown = r.id;
    $("img-frame").src = r.image;
    $("img-overlay").src = r.overlay || r.image;
    const svg = $("boxes");
    svg.setAttribute("viewBox", `0 0 ${r.width} ${r.height}`);
    svg.replaceChildren(...(r.regions || []).map((g) => {
      const rect = document.createElementNS("http://www.w3.org/2000/svg", "rect");
      for (const [k, v] of [["x", g.x], ["y", g.y], ["width", g.w], ["height", g.h]]) rect.setAttribute(k, v);
      return rect;
    }));
    say("", "");
  }
}

function say(message, kind) {
  const m = $("message");
  m.textContent = message;
  m.className = "message " + (kind || "");
}

function choose(id) {
  state.selected = id;
  state.follow = id === (state.rejects[0] || {}).id;
  render();
  const li = document.querySelector(`#queue li[data-id="${CSS.escape(id)}"]`);
  if (li) li.scrollIntoView({ block: "nearest" });
}

function step(delta) {
  const i = state.rejects.findIndex((r) => r.id === state.selected);
  const j = Math.min(state.rejects.length - 1, Math.max(0, (i < 0 ? 0 : i) + delta));
  if (state.rejects[j]) choose(state.rejects[j].id);
}

async function post(url, body) {
  const res = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
  });
  let answer = {};
  try { answer = await res.json(); } catch (e) { answer = { ok: false, error: `HTTP ${res.status}` }; }
  return { status: res.status, answer };
}

async function mark(kind) {
  const r = current();
  if (r === null || state.busy) return;
  if (!state.marking) { say("Marking is not configured on this line PC (no feedback: section).", "error"); return; }
  if (!state.unlocked) { say("Locked: enter the operator PIN to mark.", "error"); openPin(); return; }
  state.busy = true;
  try {
    const { status, answer } = await post(`/api/rejects/${encodeURIComponent(r.id)}/mark`, { mark: kind });
    if (answer.ok) {
      r.mark = r.mark || { mark: kind, at: new Date().toISOString(), by: "station" };
      const done = answer.already ? `seq ${answer.seq} was already marked ${answer.mark}` : `seq ${answer.seq} marked ${answer.mark}`;
      say(`${done}; ${answer.spool_depth} record(s) waiting for the collector.`, "ok");
      renderItem();
      renderQueue();
    } else {
      if (status === 401) { state.unlocked = false; render(); openPin(); }
      say(answer.error || `refused (HTTP ${status})`, "error");
    }
  } catch (e) {
    say(`The daemon did not answer: ${e}`, "error");
  } finally {
    state.busy = false;
  }
}

function openPin() {
  const d = $("pin-dialog");
  if (d.open) return;
  $("pin").value = "";
  $("pin-error").textContent = "";
  d.showModal();
  $("pin").focus();
}

async function unlock() {
  const { status, answer } = await post("/api/login", { secret: $("pin").value });
  if (answer.ok) {
    state.unlocked = true;
    $("pin-dialog").close();
    render();
    say("Unlocked.", "ok");
  } else {
    $("pin-error").textContent = answer.error || `refused (HTTP ${status})`;
    $("pin").value = "";
  }
}

async function lock() {
  await post("/api/logout", {});
  state.unlocked = false;
  render();
}

function keypad(key) {
  const pin = $("pin");
  if (key === "OK") unlock();
  else if (key === "⌫") pin.value = pin.value.slice(0, -1);
  else pin.value += key;
  pin.focus();
}

function onKey(e) {
  if ($("pin-dialog").open || e.ctrlKey || e.altKey || e.metaKey) return;
  const k = e.key.toLowerCase();
  const actions = {
    g: () => mark("good"), b: () => mark("bad"), u: openPin,
    arrowdown: () => step(1), j: () => step(1), arrowup: () => step(-1), k: () => step(-1),
    home: () => { state.follow = true; if (state.rejects[0]) choose(state.rejects[0].id); },
  };
  if (actions[k]) { e.preventDefault(); actions[k](); }
}

function connect() {
  const live = $("live");
  const source = new EventSource("/api/events");
  source.addEventListener("queue", (ev) => apply(JSON.parse(ev.data)));
  source.onopen = () => { live.textContent = "live"; live.className = "live on"; };
  source.onerror = () => { live.textContent = "reconnecting…"; live.className = "live off"; };
}

document.addEventListener("DOMContentLoaded", () => {
  apply(JSON.parse($("initial").textContent));
  $("good").addEventListener("click", () => mark("good"));
  $("bad").addEventListener("click", () => mark("bad"));
  $("unlock").addEventListener("click", openPin);
  $("lock").addEventListener("click", lock);
  $("pin-cancel").addEventListener("click", () => $("pin-dialog").close());
  $("pin-form").addEventListener("submit", (e) => { e.preventDefault(); unlock(); });
  document.querySelectorAll(".keypad button").forEach((b) => b.addEventListener("click", () => keypad(b.dataset.key)));
  document.addEventListener("keydown", onKey);
  connect();
});
