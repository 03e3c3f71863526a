// Exchange web page: pair selector, live order book, trade tape.
// Plain ES module, no dependencies. Wire contract: the project's public API doc
// (REST under /api/v1, WebSocket at the URL given by /config.json).

const DEPTH = 50;                      // book depth we subscribe to
const CHECK_LEVELS = Math.min(25, DEPTH); // K levels per side covered by the checksum
const MAX_TRADES = 50;
const BACKOFF_MIN = 500, BACKOFF_MAX = 5000;
const SILENCE_MS = 5000;  // the server heartbeats after 1 s of silence, so 5 s of nothing = dead link
const SNAPSHOT_MS = 5000; // re-ask for a snapshot if none arrives this long after (re)subscribing

// ---------- exact helpers (pure; exported so tests can import them) ----------

const CRC_TABLE = (() => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xEDB88320 ^ (c >>> 1) : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32 as zlib.crc32 computes it, of an ASCII string; unsigned. */
export function crc32(s) {
  let c = 0xFFFFFFFF;
  for (let i = 0; i < s.length; i++) c = CRC_TABLE[(c ^ s.charCodeAt(i)) & 0xFF] ^ (c >>> 8);
  return (c ^ 0xFFFFFFFF) >>> 0;
}

/** bids (best first, descending) and asks (best first, ascending) as [px, qty] wire strings. */
export function bookChecksum(bids, asks, k = CHECK_LEVELS) {
  const tokens = [];
  for (let i = 0; i < k; i++) {
    if (i < bids.length) tokens.push(bids[i][0], bids[i][1]);
    if (i < asks.length) tokens.push(asks[i][0], asks[i][1]);
  }
  return crc32(tokens.join(":"));
}

// Decimal strings are compared and summed exactly: floats would misorder or misround them.
function splitDec(s) {
  const [i, f = ""] = String(s).split(".");
  return [i.replace(/^0+(?=\d)/, ""), f.replace(/0+$/, "")];
}
/** Canonical form of a price ("67001.50" and "67001.5" are the same level). */
export const canon = (s) => splitDec(s).join(".");
/** Compare two non-negative decimal strings: <0, 0 or >0. */
export function cmpDec(a, b) {
  const [ai, af] = splitDec(a), [bi, bf] = splitDec(b);
  if (ai.length !== bi.length) return ai.length - bi.length;
  if (ai !== bi) return ai < bi ? -1 : 1;
  return af === bf ? 0 : af < bf ? -1 : 1; // trailing zeros stripped, so lexical order is numeric
}
const isZero = (s) => /^0*(\.0*)?$/.test(s);
const decimalsOf = (s) => (String(s).split(".")[1] || "").length;
/** "1.25" at 4 decimals -> 12500n */
export function toUnits(s, dec) {
  const [i, f = ""] = String(s).split(".");
  return BigInt((i || "0") + f.padEnd(dec, "0").slice(0, dec));
}
/** 12500n at 4 decimals -> "1.2500" */
export function fmtUnits(u, dec) {
  const neg = u < 0n, s = (neg ? -u : u).toString().padStart(dec + 1, "0");
  return (neg ? "-" : "") + (dec ? `${s.slice(0, -dec)}.${s.slice(-dec)}` : s);
}

/** Local order book: canonical price -> [px, qty] wire strings, per side. */
export class Book {
  constructor() { this.clear(); }
  clear() { this.bids = new Map(); this.asks = new Map(); this.seq = null; this.epoch = null; this._sorted = null; }
  load(m) { this.clear(); this.apply(m); }
  apply(m) {
    for (const [side, levels] of [[this.bids, m.bids || []], [this.asks, m.asks || []]]) {
      for (const [px, qty] of levels) isZero(qty) ? side.delete(canon(px)) : side.set(canon(px), [px, qty]);
    }
    this.seq = m.seq; this.epoch = m.epoch ?? this.epoch; this._sorted = null;
  }
  sorted() {
    return this._sorted ??= {
      bids: [...this.bids.values()].sort((a, b) => cmpDec(b[0], a[0])),
      asks: [...this.asks.values()].sort((a, b) => cmpDec(a[0], b[0])),
    };
  }
  checksum() { const { bids, asks } = this.sorted(); return bookChecksum(bids, asks); }
}

// ---------- page state ----------

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
const S = {
  markets: [], market: null, symbol: null,
  ws: null, wsUrl: null, backoff: BACKOFF_MIN, reqId: 0, pending: new Map(), lastMsg: 0,
  retrying: false, book: new Book(), bookState: "loading", snapTimer: 0, lastResync: 0, renderQueued: false,
  trades: [], shownTrades: new Set(),
};

function toast(msg) {
  const el = $("toast");
  el.textContent = msg; el.hidden = false;
  clearTimeout(toast.t); toast.t = setTimeout(() => { el.hidden = true; }, 4000);
}

function setConn(state, title = "") {
  const el = $("conn-state");
  el.dataset.state = state; el.textContent = state; el.title = title;
}

function setBookState(state, why = "") {
  S.bookState = state;
  $("book").dataset.state = state;
  $("book-state").textContent = state === "live" ? "" : `${state}…`;
  $("book-state").title = why;
}

// ---------- WebSocket ----------

function send(op, args) {
  const ws = S.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return; // on reconnect everything is resubscribed
  const id = ++S.reqId;
  S.pending.set(id, { op, args });
  ws.send(JSON.stringify({ op, id, args }));
}

const bookArg = (sym) => ({ ch: "book", symbol: sym, depth: DEPTH });
const channels = (sym) => [bookArg(sym), { ch: "trades", symbol: sym }];

function connect() {
  setConn(S.retrying ? "reconnecting" : "connecting");
  const ws = new WebSocket(S.wsUrl);
  S.ws = ws;
  ws.onopen = () => {
    if (ws !== S.ws) return;
    S.lastMsg = Date.now();
    setConn("live");
    // History was just fetched on the first connect; after a drop, refetch it to fill the gap.
    if (S.symbol) subscribePair(S.symbol, S.retrying);
  };
  ws.onmessage = (ev) => {
    if (ws !== S.ws) return;
    S.lastMsg = Date.now();
    S.backoff = BACKOFF_MIN; // reset only once data flows, so accept-then-close can't spin fast
    let m;
    try { m = JSON.parse(ev.data); } catch { return; }
    dispatch(m);
  };
  ws.onclose = (ev) => {
    if (ev.code >= 4000) toast(`connection closed ${ev.code} ${ev.reason || ""}`);
    lost(ws, `closed ${ev.code}`);
  };
}

/** Drop a socket (closed, silent or told to reconnect) and schedule a new one. */
function lost(ws, why) {
  if (ws !== S.ws) return;
  S.ws = null;
  S.pending.clear();
  S.retrying = true;
  clearTimeout(S.snapTimer);
  try { ws.close(); } catch { /* already closed */ }
  if (S.bookState !== "loading") setBookState("stale", why); // the book stops being current now
  setConn("reconnecting", why);
  setTimeout(connect, S.backoff);
  S.backoff = Math.min(S.backoff * 2, BACKOFF_MAX);
}

function dispatch(m) {
  if (m.op !== undefined && m.id !== undefined && "ok" in m) { // reply to one of our ops
    const req = S.pending.get(m.id);
    S.pending.delete(m.id);
    if (!m.ok) {
      const what = req ? `${req.op} ${(req.args || []).map((a) => `${a.ch}:${a.symbol ?? ""}`).join(", ")}` : m.op;
      toast(`${what} failed: ${m.error?.code ?? "ERROR"} ${m.error?.message ?? ""}`);
    }
    return;
  }
  switch (m.ch) {
    case "book": return onBook(m);
    case "trades": if (m.symbol === S.symbol) addTrades(m.data || []); return;
    case "heartbeat": return; // it only proves the link is alive (lastMsg already updated)
    case "system": if (m.type === "reconnect") lost(S.ws, m.reason || "server asked to reconnect"); return;
  }
}

// ---------- order book ----------

function onBook(m) {
  if (m.symbol !== S.symbol) return; // late message for a pair we left
  const book = S.book;
  if (m.type === "snapshot") {
    book.load(m);
  } else if (m.type === "delta") {
    if (S.bookState !== "live") return; // waiting for a snapshot; deltas until then are useless
    if (m.prev_seq !== book.seq) return resync(`gap: have seq ${book.seq}, delta prev_seq ${m.prev_seq}`);
    if (m.epoch != null && book.epoch != null && m.epoch !== book.epoch) return resync(`epoch ${book.epoch} -> ${m.epoch}`);
    book.apply(m);
  } else return;
  $("book").dataset.seq = book.seq;
  if (m.checksum !== undefined && book.checksum() !== m.checksum) {
    return resync(`checksum mismatch at seq ${book.seq}: ${book.checksum()} != ${m.checksum}`);
  }
  clearTimeout(S.snapTimer);
  setBookState("live");
  queueRender();
}

/** Book can no longer be trusted: say so, and ask the server for a fresh snapshot. */
function resync(why) {
  console.warn("book resync:", why);
  setBookState("resyncing", why);
  clearTimeout(S.snapTimer);
  // At most one resync a second: a persistent mismatch must not trip the frame rate limit.
  const wait = Math.max(0, S.lastResync + 1000 - Date.now());
  S.snapTimer = setTimeout(() => {
    S.lastResync = Date.now();
    send("unsubscribe", [bookArg(S.symbol)]);
    send("subscribe", [bookArg(S.symbol)]);
    armSnapshotTimer();
  }, wait);
}

function armSnapshotTimer() {
  clearTimeout(S.snapTimer);
  S.snapTimer = setTimeout(() => { if (S.ws && S.bookState !== "live") resync("no snapshot received"); }, SNAPSHOT_MS);
}

function queueRender() {
  if (S.renderQueued) return;
  S.renderQueued = true;
  requestAnimationFrame(() => { S.renderQueued = false; renderBook(); });
}

function renderBook() {
  const { bids, asks } = S.book.sorted();
  // Sums use the pair's decimals, widened if a wire string has more (never silently truncate).
  const all = bids.slice(0, DEPTH).concat(asks.slice(0, DEPTH));
  const qd = Math.max(S.market?.qty_decimals ?? 0, ...all.map((l) => decimalsOf(l[1])));
  const pd = Math.max(S.market?.price_decimals ?? 0, ...all.map((l) => decimalsOf(l[0])));
  const withCum = (levels) => {
    let cum = 0n;
    return levels.slice(0, DEPTH).map(([px, qty]) => ({ px, qty, cum: (cum += toUnits(qty, qd)) }));
  };
  const b = withCum(bids), a = withCum(asks);
  const max = Number([b.at(-1)?.cum ?? 0n, a.at(-1)?.cum ?? 0n].reduce((x, y) => (x > y ? x : y))) || 1;
  const rows = (levels) => levels.map((l) =>
    `<div class="lvl" data-px="${esc(l.px)}"><i class="bar" style="width:${(Number(l.cum) / max * 100).toFixed(1)}%"></i>` +
    `<span>${esc(l.px)}</span><span>${esc(l.qty)}</span><span>${fmtUnits(l.cum, qd)}</span></div>`).join("");

  const asksEl = $("book-asks");
  // Asks are drawn highest first so the best ask sits next to the spread; keep that end in view.
  const pinned = asksEl.scrollHeight - asksEl.scrollTop - asksEl.clientHeight < 4;
  asksEl.innerHTML = rows(a.slice().reverse());
  if (pinned) asksEl.scrollTop = asksEl.scrollHeight;
  $("book-bids").innerHTML = rows(b);

  let spread = "—";
  if (b.length && a.length) {
    const bid = toUnits(b[0].px, pd), ask = toUnits(a[0].px, pd);
    const bps = Number(ask - bid) / (Number(ask + bid) / 2) * 1e4;
    spread = `Spread ${fmtUnits(ask - bid, pd)} (${bps.toFixed(1)} bps)`;
  }
  $("spread").textContent = spread;
}

// ---------- trades ----------

// Ids are consecutive per pair, so numeric id order is time order (ts as a fallback).
const newestFirst = (x, y) =>
  /^\d+$/.test(x.id) && /^\d+$/.test(y.id) ? cmpDec(y.id, x.id) : (y.ts ?? 0) - (x.ts ?? 0);

/** Merge trades (any order, duplicates allowed: history and live feed overlap). */
function addTrades(list) {
  const seen = new Set(S.trades.map((t) => t.id));
  const fresh = list.filter((t) => !seen.has(t.id) && (seen.add(t.id), true));
  if (!fresh.length) return;
  S.trades = S.trades.concat(fresh).sort(newestFirst).slice(0, MAX_TRADES);
  renderTrades();
}

function renderTrades() {
  const hhmmss = (ts) => new Date(ts).toTimeString().slice(0, 8);
  const first = S.shownTrades.size === 0; // don't flash the initial history
  $("trades").innerHTML = S.trades.map((t) =>
    `<div class="trade ${t.side === "buy" ? "buy" : "sell"}${!first && !S.shownTrades.has(t.id) ? " new" : ""}" data-id="${esc(t.id)}">` +
    `<span>${esc(t.px)}</span><span>${esc(t.qty)}</span><span>${hhmmss(t.ts)}</span></div>`).join("");
  S.shownTrades = new Set(S.trades.map((t) => t.id));
}

async function loadTradeHistory(sym) {
  try {
    const r = await fetch(`/api/v1/markets/${encodeURIComponent(sym)}/trades?limit=${MAX_TRADES}`);
    if (!r.ok) throw new Error(`HTTP ${r.status} ${(await r.text()).slice(0, 200)}`);
    const list = await r.json();
    if (sym === S.symbol) addTrades(list);
  } catch (e) {
    toast(`trade history for ${sym}: ${e.message}`);
  }
}

// ---------- pair selection ----------

/** Subscribe the pair's channels; also used after every reconnect. */
function subscribePair(sym, history = true) {
  if (S.ws?.readyState === WebSocket.OPEN) { // else the socket's onopen will do it
    if (S.bookState !== "loading") setBookState("resyncing", "subscribing");
    send("subscribe", channels(sym));
    armSnapshotTimer();
  }
  if (history) loadTradeHistory(sym); // history and live feed may overlap: the merge dedupes by id
}

function selectPair(sym) {
  if (!S.markets.some((m) => m.symbol === sym)) sym = S.markets[0]?.symbol;
  if (sym && location.hash !== `#${sym}`) history.replaceState(null, "", `#${sym}`); // survives reloads
  if (!sym || sym === S.symbol) return;
  if (S.symbol) send("unsubscribe", channels(S.symbol));
  S.symbol = sym;
  S.market = S.markets.find((m) => m.symbol === sym);
  $("pair-select").value = sym;
  const m = S.market;
  $("market-info").textContent = `tick ${m.tick_size ?? "?"} · lot ${m.lot_size ?? "?"} · ${m.status ?? ""}`;
  document.querySelectorAll("i.base").forEach((el) => { el.textContent = m.base ? `(${m.base})` : ""; });
  document.querySelectorAll("i.quote").forEach((el) => { el.textContent = m.quote ? `(${m.quote})` : ""; });
  document.title = `${sym} · Exchange`;
  // Clear the views: nothing of the old pair may remain on screen.
  S.book.clear(); S.trades = []; S.shownTrades = new Set();
  $("book").dataset.seq = "";
  clearTimeout(S.snapTimer);
  setBookState("loading");
  renderBook(); renderTrades();
  subscribePair(sym);
}

// ---------- start ----------

async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw new Error(`${url}: HTTP ${r.status}`);
  return r.json();
}

async function start() {
  setConn("connecting");
  for (let delay = BACKOFF_MIN; ; delay = Math.min(delay * 2, BACKOFF_MAX)) {
    try {
      const cfg = await getJSON("/config.json").catch(() => ({}));
      S.wsUrl = cfg.ws_url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
      S.markets = await getJSON("/api/v1/markets");
      break;
    } catch (e) {
      toast(`loading markets: ${e.message}`);
      await new Promise((res) => setTimeout(res, delay));
    }
  }
  if (!S.markets.length) toast("no markets are listed");
  const sel = $("pair-select");
  sel.innerHTML = S.markets.map((m) => `<option value="${esc(m.symbol)}">${esc(m.symbol)}</option>`).join("");
  sel.addEventListener("change", () => selectPair(sel.value));
  addEventListener("hashchange", () => selectPair(decodeURIComponent(location.hash.slice(1))));
  selectPair(decodeURIComponent(location.hash.slice(1)));
  connect();
  // A socket can die without a close event (sleep, network change): treat long silence as loss.
  setInterval(() => { if (S.ws?.readyState === WebSocket.OPEN && Date.now() - S.lastMsg > SILENCE_MS) lost(S.ws, "no data"); }, 1000);
}

if (typeof document !== "undefined") start();
