// lifewatch dashboard: reads the REST API once, then follows /v1/stream.
// On a lost connection it reconnects with the last cursor (a daemon restarted on the same
// boot resumes it); on `reset` (cursor too old, another boot) it re-reads state. Rendering is throttled: at thousands of events per
// second the page applies every event but redraws a few times a second.
"use strict";

const $ = (id) => document.getElementById(id);
const SIGNALS = { 1: "HUP", 2: "INT", 3: "QUIT", 4: "ILL", 6: "ABRT", 7: "BUS", 8: "FPE", 9: "KILL",
  11: "SEGV", 13: "PIPE", 14: "ALRM", 15: "TERM", 24: "XCPU", 25: "XFSZ", 31: "SYS" };
const LIFE_TYPES = new Set(["born", "exec", "died"]);
const RATE_TYPES = ["born", "exec", "died", "gap"];
const WINDOW = 120; // seconds of event rate shown
const FEED_MAX = 400;
const TREE_MAX = 3000;

const state = {
  cursor: null,        // last cursor seen: resume point
  lives: new Map(),    // pid -> life (alive)
  marks: new Map(),    // pid -> {cls, until}: recently born / died, highlighted a moment
  watches: new Map(),  // name -> watch
  node: null,
  rates: new Map(),    // epoch second -> {born, exec, died, gap}
  canary: [],          // [{t, p50, p99}]
  lastBuckets: null,   // previous scrape's canary histogram, for per-interval quantiles
  paused: false,
  pending: [],         // feed rows not yet drawn
  dirty: { tree: true, watches: true },
  ws: null,
  backoff: 500,
  staleSince: null,   // when the stream stopped being live
};

// ---------- helpers ----------
// What a process chooses (comm, argv, exe) may hold control characters and bidi overrides
// (U+202E turns "txt.exe" around): shown as \uXXXX, never applied (issue 10).
const UNSAFE = /[\u0000-\u001f\u007f-\u009f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u2064\u2066-\u2069\ufeff]/g;
function esc(s) {
  return String(s ?? "")
    .replace(UNSAFE, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)
    .replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
// The token comes in the login URL's fragment (#token=..., printed by the daemon at start):
// a fragment is never sent to a server. It is moved to this tab's session storage at once
// and taken out of the address bar and history (docs/security.md, "Tokens").
const TOKEN = (() => {
  const m = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (m) {
    sessionStorage.setItem("lifewatch-token", decodeURIComponent(m[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem("lifewatch-token");
})();
function authed(opts = {}) {
  return TOKEN ? { ...opts, headers: { ...(opts.headers || {}), Authorization: `Bearer ${TOKEN}` } } : opts;
}
async function getJSON(url) {
  const r = await fetch(url, authed({ cache: "no-store" }));
  if (r.status === 401 || r.status === 403) {
    $("stale").textContent = "Not logged in: open the dashboard URL the daemon printed at start (it carries the token).";
    document.body.classList.add("stale");
  }
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}
function hms(iso) {
  const d = iso ? new Date(iso) : new Date();
  return d.toLocaleTimeString([], { hour12: false }) + "." + String(d.getMilliseconds()).padStart(3, "0");
}
function dur(sec) {
  if (sec == null || !isFinite(sec)) return "";
  sec = Math.max(0, sec);
  if (sec < 60) return `${Math.floor(sec)}s`;
  if (sec < 3600) return `${Math.floor(sec / 60)}m`;
  if (sec < 86400) return `${Math.floor(sec / 3600)}h${String(Math.floor((sec % 3600) / 60)).padStart(2, "0")}`;
  return `${Math.floor(sec / 86400)}d${Math.floor((sec % 86400) / 3600)}h`;
}
function since(iso) { return iso ? (Date.now() - Date.parse(iso)) / 1000 : null; }
function exitText(life) {
  const ex = life.exit;
  if (!ex) return { text: `exit unknown${life.cause ? " (" + life.cause + ")" : ""}`, bad: true };
  if (ex.signal) {
    return { text: `killed by SIG${SIGNALS[ex.signal] || ex.signal}${ex.core_dumped ? " (core)" : ""}`, bad: true };
  }
  return { text: `exit ${ex.code}`, bad: ex.code !== 0 };
}
function isKthread(l) { return l.pid === 2 || l.ppid === 2; }
function cmdline(l) { return (l.argv && l.argv.length ? l.argv.join(" ") : l.exe || ""); }

// ---------- state loading ----------
async function loadAll() {
  const node = await getJSON("/v1/node");
  const lives = new Map();
  let after = null;
  do {
    const page = await getJSON(`/v1/lives?state=alive&limit=10000${after ? "&after=" + after : ""}`);
    for (const l of page.lives) lives.set(l.pid, l);
    after = page.next;
  } while (after);
  state.node = node;
  state.lives = lives;
  state.marks.clear();
  await loadWatches();
  // Events after the node's cursor are replayed by the stream; applying them is idempotent.
  state.cursor = node.cursor;
  state.dirty.tree = true;
}
async function loadWatches() {
  try {
    const w = await getJSON("/v1/watches");
    state.watches = new Map(w.watches.map((x) => [x.name, x]));
  } catch (e) { /* a daemon without watches: keep the empty list */ }
  state.dirty.watches = true;
}
let watchTimer = null;
function reloadWatchesSoon() {
  if (watchTimer) return;
  watchTimer = setTimeout(async () => { watchTimer = null; await loadWatches(); }, 300);
}

// ---------- the stream ----------
function setConn(cls, text) {
  const el = $("conn");
  el.className = "pill " + cls;
  el.textContent = text;
  // What the page shows is only as good as its stream: say so when it is not live.
  const live = cls === "conn-live";
  if (!live && !state.staleSince) state.staleSince = new Date();
  if (live) state.staleSince = null;
  document.body.classList.toggle("stale", !live);
  $("stale").textContent = live ? "" : `Not live since ${hms(state.staleSince.toISOString())}: `
    + "showing the last state received. The page reconnects by itself.";
}
function connect() {
  const proto = location.protocol === "https:" ? "wss" : "ws";
  const q = state.cursor != null ? `?after=${state.cursor}` : "";
  // A browser cannot set headers on a WebSocket: the token goes as a subprotocol, next to
  // "lifewatch", which the daemon selects.
  const protocols = TOKEN ? ["lifewatch", `bearer.${TOKEN}`] : ["lifewatch"];
  const ws = new WebSocket(`${proto}://${location.host}/v1/stream${q}`, protocols);
  state.ws = ws;
  ws.onopen = () => { setConn("conn-live", "live"); state.backoff = 500; };
  ws.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    if (ev.type === "reset") { onReset(ev); return; }
    if (ev.cursor != null && (state.cursor == null || ev.cursor > state.cursor)) state.cursor = ev.cursor;
    apply(ev);
  };
  ws.onclose = () => {
    if (state.ws !== ws) return;
    setConn("conn-down", "reconnecting…");
    setTimeout(reconnect, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 5000);
  };
}
async function reconnect() {
  try {
    // A daemon restarted on the same boot resumes our cursor (its restart's gap, deaths and
    // births follow); otherwise the stream answers `reset`. Reading the node first also
    // tells us it is up again.
    await getJSON("/v1/node");
    connect();
  } catch (e) {
    setConn("conn-down", "daemon unreachable, retrying…");
    setTimeout(reconnect, state.backoff);
    state.backoff = Math.min(state.backoff * 2, 5000);
  }
}
async function onReset(ev) {
  setConn("conn-wait", "re-reading state…");
  pushFeed({ type: "reset", at: ev.at, reason: ev.reason }, true);
  const old = state.ws;
  state.ws = null;
  if (old) old.close();
  try { await loadAll(); } catch (e) { /* the reconnect loop retries */ }
  connect();
}

function apply(ev) {
  const l = ev.life;
  partnerEvent(ev);
  if (l && LIFE_TYPES.has(ev.type)) {
    if (ev.type === "died") {
      const cur = state.lives.get(l.pid);
      if (cur && cur.start_ticks === l.start_ticks) {
        state.lives.set(l.pid, l);
        state.marks.set(l.pid, { cls: "gone", until: Date.now() + 2500, start: l.start_ticks });
      }
    } else {
      const was = state.lives.get(l.pid);
      state.lives.set(l.pid, l);
      if (ev.type === "born" && (!was || was.start_ticks !== l.start_ticks)) {
        state.marks.set(l.pid, { cls: "new", until: Date.now() + 2500, start: l.start_ticks });
      }
    }
    state.dirty.tree = true;
  } else if (ev.type === "watch") {
    reloadWatchesSoon();
  } else if (ev.type === "source" || ev.type === "gap" || ev.type === "resync" || ev.type === "clock") {
    pollNodeSoon(); // health and counters changed: show them now, not at the next poll
  }
  countRate(ev);
  pushFeed(ev, false);
}
function countRate(ev) {
  if (!RATE_TYPES.includes(ev.type)) return;
  const t = Math.floor(Date.parse(ev.at) / 1000);
  if (!(t > Date.now() / 1000 - WINDOW - 2)) return;
  let b = state.rates.get(t);
  if (!b) { b = { born: 0, exec: 0, died: 0, gap: 0 }; state.rates.set(t, b); }
  b[ev.type] += 1;
}

// ---------- the feed ----------
function feedKind(type) { return LIFE_TYPES.has(type) || type === "watch" ? type : "node"; }
function feedWanted(ev) {
  const boxes = document.querySelectorAll(".ftype");
  const on = new Set([...boxes].filter((b) => b.checked).map((b) => b.value));
  if (!on.has(feedKind(ev.type))) return false;
  if (ev.life && ev.life.canary && !$("feed-canary").checked) return false;
  if (ev.life && isKthread(ev.life) && !$("show-kthreads").checked) return false;
  return true;
}
function pushFeed(ev, force) {
  if (!force && !feedWanted(ev)) return;
  state.pending.push(ev);
  if (state.pending.length > FEED_MAX) state.pending.splice(0, state.pending.length - FEED_MAX);
}
function feedRow(ev) {
  const l = ev.life;
  let cls = `e ty-${ev.type}`;
  let d = "";
  if (l && LIFE_TYPES.has(ev.type)) {
    if (l.canary) cls += " canary";
    d = `<span class="comm">${esc(l.comm || "?")}</span>`;
    if (ev.type === "exec") d += ` <span class="x">${esc(cmdline(l))}</span>`;
    if (ev.type === "born") {
      const parent = state.lives.get(l.ppid);
      const from = parent && parent.comm ? `${parent.comm} (${l.ppid})` : l.ppid;
      d += ` <span class="x">from ${esc(from)}${ev.late ? " · found late" : ""}</span>`;
    }
    if (ev.type === "died") {
      const x = exitText(l);
      if (x.bad) cls += " bad";
      const age = l.born_at && l.died_at ? ` after ${fmtLifetime((Date.parse(l.died_at) - Date.parse(l.born_at)) / 1000)}` : "";
      d += ` <span class="code">${esc(x.text)}</span><span class="x">${esc(age)}</span>`;
    }
  } else if (ev.type === "watch") {
    d = `<span class="comm">${esc(ev.watch)}</span> ${esc(ev.state)} · ${esc(ev.count)} ${ev.count === 1 ? "life" : "lives"}`
      + ` <span class="x">(${esc(ev.change)}${l ? " pid " + esc(l.pid) : ""}${ev.ok ? "" : ", outside bounds"})</span>`;
  } else if (ev.type === "gap") {
    d = `<span class="comm">${esc(ev.source || "")}</span> ${esc(ev.reason || "")} <span class="x">${esc(ev.detail || "")}</span>`;
  } else if (ev.type === "resync") {
    d = `${esc(ev.reason || "")} <span class="x">dead ${esc(ev.dead)} · added ${esc(ev.added)} · alive ${esc(ev.alive)}</span>`;
  } else if (ev.type === "source") {
    d = `<span class="comm">${esc(ev.source)}</span> ${esc(ev.state)} <span class="x">${esc(ev.reason || "")}</span>`;
  } else if (ev.type === "reset") {
    d = `stream reset (${esc(ev.reason || "")}): state re-read`;
  } else {
    const rest = Object.fromEntries(Object.entries(ev).filter(([k]) => !["cursor", "type", "at", "life", "sources"].includes(k)));
    d = `<span class="x">${esc(JSON.stringify(rest))}</span>`;
  }
  const pid = l ? l.pid : "";
  return `<div class="${cls}" data-type="${esc(ev.type)}" data-pid="${esc(pid)}"><span class="t">${hms(ev.at)}</span>`
    + `<span class="ty">${esc(ev.type)}</span><span class="pid">${esc(pid)}</span><span class="d">${d}</span></div>`;
}
function fmtLifetime(s) {
  if (!(s >= 0)) return "";
  if (s < 1) return `${Math.round(s * 1000)} ms`;
  return s < 120 ? `${s.toFixed(1)} s` : dur(s);
}
function drawFeed() {
  if (state.paused || !state.pending.length) return;
  const feed = $("feed");
  const html = state.pending.reverse().map(feedRow).join("");
  state.pending = [];
  feed.insertAdjacentHTML("afterbegin", html);
  while (feed.childElementCount > FEED_MAX) feed.lastElementChild.remove();
}

// ---------- the process tree ----------
function drawTree() {
  const now = Date.now();
  for (const [pid, m] of state.marks) {
    if (m.until < now) {
      state.marks.delete(pid);
      const l = state.lives.get(pid);
      if (m.cls === "gone" && l && l.state === "dead") state.lives.delete(pid);
      state.dirty.tree = true;
    }
  }
  if (!state.dirty.tree) return;
  state.dirty.tree = false;
  const showK = $("show-kthreads").checked;
  const showC = $("show-canary").checked;
  const f = $("tree-filter").value.trim().toLowerCase();
  const kids = new Map();
  const visible = [];
  for (const l of state.lives.values()) {
    if (!showK && isKthread(l)) continue;
    if (!showC && l.canary) continue;
    visible.push(l);
  }
  const byPid = new Map(visible.map((l) => [l.pid, l]));
  const roots = [];
  for (const l of visible) {
    if (byPid.has(l.ppid) && l.ppid !== l.pid) {
      if (!kids.has(l.ppid)) kids.set(l.ppid, []);
      kids.get(l.ppid).push(l);
    } else roots.push(l);
  }
  // With a filter, show matches and the ancestors that lead to them.
  let keep = null;
  if (f) {
    keep = new Set();
    for (const l of visible) {
      const hay = `${l.pid} ${l.comm || ""} ${l.exe || ""} ${cmdline(l)}`.toLowerCase();
      if (hay.includes(f)) {
        let p = l;
        let guard = 0;
        while (p && !keep.has(p.pid) && guard++ < 256) { keep.add(p.pid); p = byPid.get(p.ppid); }
      }
    }
  }
  const rows = [];
  const walk = (l, depth, last, prefix) => {
    if (keep && !keep.has(l.pid)) return;
    if (rows.length >= TREE_MAX) return;
    const m = state.marks.get(l.pid);
    const cls = "p" + (m ? " " + m.cls : "") + (l.canary ? " canary" : "");
    const guide = depth === 0 ? "" : prefix + (last ? "└─ " : "├─ ");
    const age = l.state === "dead" ? "dead" : dur(since(l.start));
    const args = l.argv && l.argv.length > 1 ? l.argv.slice(1).join(" ") : "";
    rows.push(`<div class="${cls}" data-pid="${l.pid}" title="${esc(l.id)}${l.exe ? "\n" + esc(l.exe) : ""}">`
      + `<span class="pid">${l.pid}</span><span class="cmd"><span class="g">${esc(guide)}</span>`
      + `<span class="comm">${esc(l.comm || "?")}</span> <span class="args">${esc(args)}</span></span>`
      + `<span class="age">${age}</span></div>`);
    const ch = (kids.get(l.pid) || []).filter((c) => !keep || keep.has(c.pid)).sort((a, b) => a.pid - b.pid);
    const next = depth === 0 ? "" : prefix + (last ? "   " : "│  ");
    ch.forEach((c, i) => walk(c, depth + 1, i === ch.length - 1, next));
  };
  roots.sort((a, b) => a.pid - b.pid).forEach((r) => walk(r, 0, true, ""));
  if (rows.length >= TREE_MAX) rows.push(`<div class="more">… more processes; narrow the filter</div>`);
  const tree = $("tree");
  const top = tree.scrollTop;
  tree.innerHTML = rows.join("") || `<div class="more">no process matches</div>`;
  tree.scrollTop = top;
  const alive = [...state.lives.values()].filter((l) => l.state !== "dead").length;
  $("tree-count").textContent = `${alive} alive${f ? " · " + (keep ? keep.size : 0) + " shown" : ""}`;
  $("alive").textContent = alive;
}

// ---------- node, sources, watches ----------
function drawNode() {
  const n = state.node;
  if (!n) return;
  $("host").textContent = n.host;
  $("boot").textContent = String(n.boot_id).slice(0, 8);
  $("boot").title = n.boot_id;
  $("version").textContent = `v${n.version} · HZ ${n.hz}`;
  $("uptime").textContent = dur(n.uptime);
  $("cursor").textContent = state.cursor ?? n.cursor;
  const gaps = (n.events && n.events.gap) || 0;
  $("gaps").textContent = gaps;
  $("gaps-kv").classList.toggle("alarm", gaps > 0);
  const srcs = Object.entries(n.sources || {});
  $("sources").innerHTML = srcs.length ? srcs.map(([name, h]) => {
    const ctr = Object.entries(h.counters || {}).map(([k, v]) => `${k} ${v}`).join(" · ");
    const info = Object.entries(h.info || {}).map(([k, v]) => `${k}: ${v}`).join("\n");
    return `<div class="src st-${esc(h.state)}" data-source="${esc(name)}" title="${esc(info)}"><span class="name">${esc(name)}</span>`
      + `<span class="state">${esc(h.state)}</span><span class="why" title="${esc(h.reason)}">${esc(h.reason)}`
      + `${h.since ? " · since " + hms(h.since) : ""}</span>${ctr ? `<span class="ctr">${esc(ctr)}</span>` : ""}</div>`;
  }).join("") : `<div class="empty">no kernel sources configured</div>`;
  $("clock").textContent = n.clock_stepped
    ? `wall clock stepped: kernel btime ${n.btime_kernel} ≠ pinned ${n.btime}; dates stay on the pinned btime` : "";
}
function drawWatches() {
  if (!state.dirty.watches) return;
  state.dirty.watches = false;
  const ws = [...state.watches.values()];
  $("watches").innerHTML = ws.length ? ws.map((w) => {
    const cls = w.state !== "running" ? "st-notrunning" : (w.ok ? "st-running" : "st-bounds");
    const bounds = `${w.min}..${w.max ?? "∞"}`;
    const lives = (w.lives || []).slice(0, 6).map((l) => `${l.pid} ${l.comm || ""}`).join(", ");
    return `<div class="watch ${cls}" data-watch="${esc(w.name)}"><span class="name">${esc(w.name)}</span>`
      + `<span class="state">${esc(w.state)}${w.ok ? "" : " ⚠"}</span>`
      + `<span class="count" title="count (min..max)">${w.count} <span class="muted">(${bounds})</span></span>`
      + `<span class="lives" title="${esc(JSON.stringify(w.spec))}">since ${hms(w.since)} (${dur(since(w.since))})`
      + `${lives ? " · " + esc(lives) : ""}</span></div>`;
  }).join("") : `<div class="empty">no watches — define one with PUT /v1/watches/{name}</div>`;
}

// ---------- cluster (GET /v1/nodes; hidden on a single node) ----------
const PEER_CLASS = { up: "st-ok", unreachable: "st-degraded", gone: "st-failed" };
async function pollNodes() {
  let n;
  try { n = await getJSON("/v1/nodes"); } catch (e) { return; }
  $("cluster-box").hidden = !n.cluster;
  if (!n.cluster) return;
  $("cluster-link").textContent = `NATS ${n.connection} · stored path ${n.stored_path} · outbox ${n.outbox}`;
  $("cluster").innerHTML = n.peers.length ? n.peers.map((p) =>
    `<div class="src ${PEER_CLASS[p.state] || ""}" data-peer="${esc(p.name)}"><span class="name">${esc(p.name)}</span>`
    + `<span class="state">${esc(p.state)}</span><span class="why" title="boot ${esc(p.boot_id)}">since ${hms(p.since)}`
    + ` · boot ${esc(String(p.boot_id).slice(0, 8))} · last heartbeat ${p.last_heartbeat ? hms(p.last_heartbeat) : "never"}</span></div>`
  ).join("") : `<div class="empty">no other node heard yet</div>`;
}

// ---------- charts ----------
function canvasCtx(id) {
  const c = $(id);
  const dpr = window.devicePixelRatio || 1;
  const w = c.clientWidth, h = c.clientHeight || 150;
  if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
    c.width = Math.round(w * dpr); c.height = Math.round(h * dpr);
  }
  const ctx = c.getContext("2d");
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.clearRect(0, 0, w, h);
  return { ctx, w, h };
}
function css(name) { return getComputedStyle(document.documentElement).getPropertyValue(name).trim(); }
function niceMax(v) {
  if (v <= 0) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}
function axes(ctx, w, h, max, unit, left) {
  ctx.strokeStyle = css("--line"); ctx.fillStyle = css("--muted");
  ctx.font = "11px system-ui, sans-serif"; ctx.lineWidth = 1;
  for (let i = 0; i <= 2; i++) {
    const y = 8 + (h - 26) * (1 - i / 2);
    ctx.beginPath(); ctx.moveTo(left, y); ctx.lineTo(w - 4, y); ctx.stroke();
    ctx.fillText(`${+(max * i / 2).toPrecision(3)}${unit}`, 2, y + 4);
  }
}
function line(ctx, pts, color, width, dots) {
  if (!pts.length) return;
  if (dots || pts.length === 1) {
    ctx.fillStyle = color;
    for (const [x, y] of pts) { ctx.beginPath(); ctx.arc(x, y, 2, 0, 2 * Math.PI); ctx.fill(); }
  }
  ctx.strokeStyle = color; ctx.lineWidth = width; ctx.lineJoin = "round";
  ctx.beginPath();
  pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
  ctx.stroke();
}
function drawRates() {
  const { ctx, w, h } = canvasCtx("rate");
  const now = Math.floor(Date.now() / 1000) - 1; // the current second is still filling
  for (const t of state.rates.keys()) if (t < now - WINDOW - 5) state.rates.delete(t);
  let max = 0;
  for (let t = now - WINDOW; t <= now; t++) {
    const b = state.rates.get(t);
    if (b) max = Math.max(max, b.born, b.exec, b.died, b.gap);
  }
  max = niceMax(Math.max(max, 5));
  const left = 34;
  axes(ctx, w, h, max, "", left);
  const x = (t) => left + (w - left - 6) * (t - (now - WINDOW)) / WINDOW;
  const y = (v) => 8 + (h - 26) * (1 - v / max);
  for (const [type, color] of [["died", "--died"], ["exec", "--exec"], ["born", "--born"]]) {
    const pts = [];
    for (let t = now - WINDOW; t <= now; t++) pts.push([x(t), y((state.rates.get(t) || {})[type] || 0)]);
    line(ctx, pts, css(color), 1.5);
  }
  // A gap is an alarm, not a rate: a red mark over the second it happened.
  ctx.fillStyle = css("--bad");
  for (let t = now - WINDOW; t <= now; t++) {
    if ((state.rates.get(t) || {}).gap) ctx.fillRect(x(t) - 1.5, 8, 3, h - 26);
  }
  ctx.fillStyle = css("--muted");
  ctx.fillText(`-${WINDOW}s`, left, h - 4);
  ctx.fillText("now", w - 26, h - 4);
  const last = state.rates.get(now) || {};
  $("feed-rate").textContent = `${last.born || 0} born/s · ${last.died || 0} died/s`;
}
function drawCanary() {
  const { ctx, w, h } = canvasCtx("canary");
  const pts = state.canary.filter((p) => p.t > Date.now() / 1000 - 600);
  const left = 44;
  if (!pts.length) {
    axes(ctx, w, h, 1, " ms", left);
    ctx.fillStyle = css("--muted");
    ctx.fillText("no canary latencies reported yet", left + 10, h / 2);
    return;
  }
  const max = niceMax(Math.max(...pts.map((p) => p.p99)) * 1000 * 1.1);
  axes(ctx, w, h, max, " ms", left);
  const t0 = Date.now() / 1000 - 600;
  const x = (t) => left + (w - left - 6) * (t - t0) / 600;
  const y = (v) => 8 + (h - 26) * (1 - Math.min(v * 1000, max) / max);
  line(ctx, pts.map((p) => [x(p.t), y(p.p99)]), css("--watch"), 1.5, true);
  line(ctx, pts.map((p) => [x(p.t), y(p.p50)]), css("--exec"), 1.5, true);
  ctx.fillStyle = css("--muted");
  ctx.fillText("-10 min", left, h - 4);
  ctx.fillText("now", w - 26, h - 4);
}

// Canary latencies come from /metrics: each scrape's histogram minus the previous one gives
// this interval's quantiles.
function parseMetrics(text) {
  const out = [];
  for (const ln of text.split("\n")) {
    if (!ln || ln[0] === "#") continue;
    const m = ln.match(/^([a-zA-Z_:][\w:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const lm of (m[3] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[lm[1]] = lm[2];
    out.push({ name: m[1], labels, value: parseFloat(m[4]) });
  }
  return out;
}
function quantile(buckets, q) {
  const total = buckets.length ? buckets[buckets.length - 1][1] : 0;
  if (!total) return null;
  const want = q * total;
  let prevLe = 0, prevN = 0;
  for (const [le, n] of buckets) {
    if (n >= want) {
      if (!isFinite(le)) return prevLe;
      return prevLe + (le - prevLe) * ((want - prevN) / Math.max(n - prevN, 1e-9));
    }
    prevLe = le; prevN = n;
  }
  return prevLe;
}
async function pollMetrics() {
  try {
    const r = await fetch("/metrics", authed({ cache: "no-store" }));
    if (!r.ok) return;
    const byLe = new Map();
    for (const s of parseMetrics(await r.text())) {
      if (s.name !== "lifewatch_canary_latency_seconds_bucket") continue;
      const le = s.labels.le === "+Inf" ? Infinity : parseFloat(s.labels.le);
      byLe.set(le, (byLe.get(le) || 0) + s.value); // all paths together
    }
    const now = [...byLe.entries()].sort((a, b) => a[0] - b[0]);
    const prev = state.lastBuckets;
    state.lastBuckets = now;
    if (!prev || prev.length !== now.length) return;
    const delta = now.map(([le, n], i) => [le, n - prev[i][1]]);
    const p50 = quantile(delta, 0.5), p99 = quantile(delta, 0.99);
    if (p50 == null) return;
    state.canary.push({ t: Date.now() / 1000, p50, p99 });
    if (state.canary.length > 400) state.canary.shift();
    $("canary-now").textContent = `now p50 ${(p50 * 1000).toFixed(2)} ms · p99 ${(p99 * 1000).toFixed(2)} ms`;
  } catch (e) { /* the stream's reconnect loop reports a dead daemon */ }
}
let nodeTimer = null;
function pollNodeSoon() {
  if (nodeTimer) return;
  nodeTimer = setTimeout(async () => { nodeTimer = null; await pollNode(); }, 300);
}
async function pollNode() {
  try { state.node = await getJSON("/v1/node"); } catch (e) { /* shown by the connection pill */ }
}

// ---------- main loop ----------
function frame() {
  drawFeed();
  drawTree();
  drawWatches();
  drawNode();
}
function init() {
  $("pause").onclick = () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "resume" : "pause";
    $("pause").classList.toggle("on", state.paused);
  };
  for (const id of ["tree-filter", "show-kthreads", "show-canary"]) {
    $(id).addEventListener("input", () => { state.dirty.tree = true; drawTree(); });
  }
  setInterval(frame, 250);
  setInterval(drawRates, 1000);
  setInterval(drawCanary, 5000);
  setInterval(pollNode, 5000);
  setInterval(pollMetrics, 5000);
  setInterval(pollNodes, 2000);
  pollNodes();
  window.addEventListener("resize", () => { drawRates(); drawCanary(); });
  (async function start() {
    try {
      await loadAll();
      frame(); drawRates(); drawCanary(); pollMetrics();
      connect();
    } catch (e) {
      setConn("conn-down", "daemon unreachable, retrying…");
      setTimeout(start, 2000);
    }
  })();
}
init();

// ---------- process detail and partners ----------
// A click on a process shows its facts and its partners: the lives at the other end of its
// connections (GET /v1/connections), each marked dead as soon as its death comes by.
const detail = { id: null, peers: new Map() }; // peer life id -> its state cell

async function showDetail(pid) {
  const l = state.lives.get(pid);
  if (!l) return;
  detail.id = l.id;
  detail.peers.clear();
  $("detail").hidden = false;
  $("detail-title").textContent = `${l.pid} ${l.comm || "?"}`;
  const facts = [["life", l.id], ["exe", l.exe], ["argv", (l.argv || []).join(" ")], ["uid", l.uid],
    ["parent", l.parent], ["born", l.start]];
  $("detail-life").innerHTML = facts.map(([k, v]) => `<dt>${esc(k)}</dt><dd>${esc(v ?? "—")}</dd>`).join("");
  const body = $("partners").querySelector("tbody");
  body.innerHTML = "";
  $("partners-note").textContent = "resolving…";
  let got;
  try {
    got = await getJSON(`/v1/connections?life=${encodeURIComponent(l.id)}`);
  } catch (e) {
    if (detail.id === l.id) $("partners-note").textContent = String(e.message || e);
    return;
  }
  if (detail.id !== l.id) return; // another process was clicked meanwhile
  const rows = [];
  for (const c of got.connections) {
    const conn = `${c.proto} ${c.local} → ${c.remote ?? "?"}`;
    if (!c.peers.length) {
      rows.push(`<tr><td>${esc(conn)}</td><td class="unknown" title="${esc(c.reason || "")}">unknown</td><td class="unknown">${esc(c.reason || "")}</td></tr>`);
      continue;
    }
    for (const p of c.peers) {
      rows.push(`<tr><td>${esc(conn)}</td><td>${esc(p.id)} ${esc(p.comm || "")}</td><td class="peer-state" data-life="${esc(p.id)}">alive</td></tr>`);
    }
  }
  body.innerHTML = rows.join("") || `<tr><td colspan="3" class="unknown">no connections</td></tr>`;
  for (const cell of body.querySelectorAll(".peer-state")) detail.peers.set(cell.dataset.life, cell);
  $("partners-note").textContent = `${got.connections.length} connections · scan ${got.scan.fds} fds in ${(got.scan.seconds * 1000).toFixed(1)} ms`;
}

function partnerEvent(ev) {
  if (ev.type !== "died" || !ev.life) return;
  const cell = detail.peers.get(ev.life.id);
  if (cell) { cell.textContent = "dead"; cell.classList.add("dead"); }
}

$("tree").addEventListener("click", (e) => {
  const row = e.target.closest("[data-pid]");
  if (row) showDetail(Number(row.dataset.pid));
});
$("detail-close").addEventListener("click", () => { $("detail").hidden = true; detail.id = null; detail.peers.clear(); });
