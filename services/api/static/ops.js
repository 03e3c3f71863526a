// The ops page: GET /api/v1/ops/status with the operator token, once a second.
// The token comes from the page's form, or from the address's fragment (#token=...,
// never sent to any server), and is kept for this browser tab only (sessionStorage).

const REFRESH_MS = 1000;
const TOKEN = "exchange.ops-token";

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
let token = "";
let timer = 0;

function setConn(state, title = "") {
  const el = $("conn-state");
  el.dataset.state = state; el.textContent = state; el.title = title;
}

const ms = (v) => (v == null ? "—" : v < 1000 ? `${v} ms` : `${(v / 1000).toFixed(1)} s`);
const cell = (field, text, cls = "") => `<td data-field="${field}"${cls ? ` class="${cls}"` : ""}>${esc(text)}</td>`;

function renderPairs(pairs) {
  $("ops-pairs").querySelector("tbody").innerHTML = pairs.map((p) => {
    const leader = p.leader;
    return `<tr data-symbol="${esc(p.symbol)}">` +
      cell("symbol", p.symbol) +
      cell("status", p.status, p.status === "trading" ? "ok" : "warn") +
      cell("leader", leader ? `${leader.holder} (lease ${ms(leader.lease_left_ms)})` : "none", leader ? "ok" : "bad") +
      cell("token", leader ? leader.token : "—") +
      cell("standbys", p.standbys.length ? p.standbys.join(", ") : "none reported", p.standbys.length ? "ok" : "") +
      cell("seq", p.seq) +
      cell("engine_backlog", p.engine_backlog, p.engine_backlog > 1000 ? "warn" : "") +
      cell("commands_per_s", p.commands_per_s ?? "…") +
      cell("commit_latency", ms(p.commit_latency_ms)) +
      cell("last_commit", p.last_commit_age_ms == null ? "never" : `${ms(p.last_commit_age_ms)} ago`) +
      cell("settlement_backlog", p.settlement_backlog, p.settlement_backlog > 100 ? "warn" : "") +
      cell("settlement_lag", ms(p.settlement_lag_ms), p.settlement_lag_ms > 5000 ? "bad" : "") +
      cell("md_subscribers", p.md_subscribers) +
      cell("redis_node", `${p.redis_node || "?"} (${p.slot})`) +
      "</tr>";
  }).join("");
}

function renderGateways(gateways) {
  $("ops-gateways").querySelector("tbody").innerHTML = gateways.map((g) =>
    `<tr data-gateway="${esc(g.gateway)}"${g.silent ? ' class="bad"' : ""}>` +
    cell("gateway", g.gateway) + cell("connections", g.connections) + cell("subscriptions", g.subscriptions) +
    cell("pairs", g.pairs) + cell("accounts", g.accounts) +
    cell("slow_consumer_closes", g.slow_consumer_closes, g.slow_consumer_closes ? "warn" : "") +
    cell("age", g.silent ? `silent for ${ms(g.age_ms)}` : `${ms(g.age_ms)} ago`) + "</tr>").join("") ||
    `<tr class="none"><td colspan="7">No gateway reports (gateways report their figures in Redis; "Gateways watching" above counts them per pair)</td></tr>`;
}

function renderRedis(mode, nodes) {
  $("ops-redis-mode").textContent = mode === "cluster" ? "cluster: which master serves each pair's slot" : "single node";
  $("ops-redis").querySelector("tbody").innerHTML = nodes.map((n) =>
    `<tr data-node="${esc(n.node)}" data-role="${esc(n.role)}">` +
    cell("node", n.node) + cell("role", n.role) + cell("master", n.master ?? "—") +
    cell("health", n.healthy ? "ok" : n.flags.join(","), n.healthy ? "ok" : "bad") +
    cell("slots", n.slots.map(([a, b]) => (a === b ? a : `${a}-${b}`)).join(" ") || "—") +
    cell("pairs", n.pairs.join(", ") || "—") + "</tr>").join("");
}

async function refresh() {
  clearTimeout(timer);
  try {
    const r = await fetch("/api/v1/ops/status", { headers: { Authorization: `Bearer ${token}` } });
    if (r.status === 401 || r.status === 403) {
      sessionStorage.removeItem(TOKEN);
      setConn("signed out", "the operator token was refused");
      $("ops-token-form").hidden = false;
      return; // no polling until a token is given
    }
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const s = await r.json();
    renderPairs(s.pairs);
    renderGateways(s.gateways);
    renderRedis(s.mode, s.redis_nodes);
    $("ops-updated").textContent = `as of ${new Date(s.ts).toTimeString().slice(0, 8)}`;
    $("ops-updated").dataset.ts = String(s.ts);
    setConn("live");
  } catch (e) {
    setConn("reconnecting", e.message); // the figures on screen are the last ones read
  }
  timer = setTimeout(refresh, REFRESH_MS);
}

function start() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  if (fragment.get("token")) {
    sessionStorage.setItem(TOKEN, fragment.get("token"));
    history.replaceState(null, "", location.pathname); // keep it out of the address bar
  }
  token = sessionStorage.getItem(TOKEN) || "";
  $("ops-token-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("ops-token").value.trim();
    $("ops-token").value = "";
    sessionStorage.setItem(TOKEN, token);
    $("ops-token-form").hidden = true;
    refresh();
  });
  if (token) refresh();
  else { $("ops-token-form").hidden = false; setConn("signed out"); }
}

start();
