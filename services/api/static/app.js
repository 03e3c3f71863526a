// The trading page: pairs with their last price and 24h change, the live order book
// (grouping, depth bars, spread), candles and depth charts, the trade tape, the ticker,
// and trading for one account: order entry, open orders, fills, balances.
// Plain ES modules, no build step. Wire contract: the project's public API doc (REST
// under /api/v1; the WebSocket at the URL /config.json gives).

import { Book, canon, cmpDec, decimalsOf, fmtUnits, groupLevels, toUnits } from "./book.js";
import { CandleChart, DepthChart, loadChartLibrary } from "./charts.js";
import { Account, ApiError, checkOrder, getJSON } from "./trading.js";

const DEPTH = 50;                 // book depth we subscribe to
const MAX_TRADES = 50;
const MAX_FILLS = 100;
const BACKOFF_MIN = 500, BACKOFF_MAX = 5000;
const SILENCE_MS = 5000;  // the server heartbeats after 1 s of silence, so 5 s of nothing = dead link
const SNAPSHOT_MS = 5000; // re-ask for a snapshot if none arrives this long after (re)subscribing
const DEPTH_CHART_MS = 250; // the depth chart is redrawn at most this often
const GROUPINGS = [1n, 10n, 100n, 1000n]; // price buckets, in ticks
const CREDENTIALS = "exchange.credentials"; // localStorage: this browser's API key and secret
const LIVE = new Set(["new", "partially_filled"]);

// ---------- page state ----------

const $ = (id) => document.getElementById(id);
const esc = (s) => String(s ?? "").replace(/[&<>"]/g, (c) => `&#${c.charCodeAt(0)};`);
const S = {
  cfg: {}, markets: [], market: null, symbol: null, interval: "1m", step: "", clockOffset: 0,
  ws: null, wsUrl: null, backoff: BACKOFF_MIN, reqId: 0, pending: new Map(), lastMsg: 0,
  retrying: false, book: new Book(), bookState: "loading", snapTimer: 0, lastResync: 0, renderQueued: false,
  trades: [], shownTrades: new Set(), tickers: new Map(),
  candles: null, depth: null, depthTimer: 0,
  account: null, privateState: "off", awaitingBalances: false,
  orders: new Map(), ended: new Map(), fills: [], balances: new Map(), lastPlaced: "",
  side: "buy", type: "limit",
};

function toast(msg) {
  const el = $("toast");
  el.textContent = msg; el.hidden = false;
  clearTimeout(toast.t); toast.t = setTimeout(() => { el.hidden = true; }, 5000);
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

const hhmmss = (ts) => new Date(ts).toTimeString().slice(0, 8);
const marketOf = (sym) => S.markets.find((m) => m.symbol === sym);

// ---------- WebSocket ----------

/** Send one op; resolves with the server's reply (null if the socket went first). */
function request(frame) {
  const ws = S.ws;
  if (!ws || ws.readyState !== WebSocket.OPEN) return Promise.resolve(null); // onopen resubscribes
  return new Promise((resolve) => {
    S.pending.set(frame.id, { frame, resolve });
    ws.send(JSON.stringify(frame));
  });
}
const send = (op, args) => request({ op, id: ++S.reqId, args });

const bookArg = (sym) => ({ ch: "book", symbol: sym, depth: DEPTH });
const candleArg = (sym) => ({ ch: "candles", symbol: sym, interval: S.interval });
const pairChannels = (sym) => [bookArg(sym), { ch: "trades", symbol: sym }, ...(S.candles ? [candleArg(sym)] : [])];

function connect() {
  setConn(S.retrying ? "reconnecting" : "connecting");
  const ws = new WebSocket(S.wsUrl);
  S.ws = ws;
  ws.onopen = () => {
    if (ws !== S.ws) return;
    S.lastMsg = Date.now();
    setConn("live");
    // Every pair's ticker feeds the pair list; the current pair gets everything else.
    send("subscribe", S.markets.map((m) => ({ ch: "ticker", symbol: m.symbol })));
    // History was just fetched on the first connect; after a drop, refetch it to fill the gap.
    if (S.symbol) subscribePair(S.symbol, S.retrying);
    if (S.account) logIn();
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
  if (!ws || ws !== S.ws) return;
  S.ws = null;
  for (const { resolve } of S.pending.values()) resolve(null);
  S.pending.clear();
  S.retrying = true;
  S.privateState = "off";
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
    if (!m.ok && req) {
      const args = (req.frame.args || []).map((a) => `${a.ch}:${a.symbol ?? ""}`).join(", ");
      toast(`${req.frame.op} ${args} failed: ${m.error?.code ?? "ERROR"} ${m.error?.message ?? ""}`);
    }
    req?.resolve(m);
    return;
  }
  switch (m.ch) {
    case "book": return onBook(m);
    case "trades": if (m.symbol === S.symbol) addTrades(m.data || []); return;
    case "candles": if (m.symbol === S.symbol && m.interval === S.interval) S.candles?.live(m.data); return;
    case "ticker": return onTicker(m.symbol, m.data);
    case "orders": return upsertOrder(m.data);
    case "fills": return addFills([m.data]);
    case "balances": return onBalances(m.data);
    case "heartbeat": return; // it only proves the link is alive (lastMsg already updated)
    case "system":
      if (m.type === "reconnect") lost(S.ws, m.reason || "server asked to reconnect");
      else if (m.type === "resync") refreshPrivate(); // lost account updates: refetch them
      return;
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

/** Canonical prices of this account's live orders on the current pair, per side. */
function myPrices() {
  const mine = { buy: new Set(), sell: new Set() };
  for (const o of S.orders.values()) {
    if (o.symbol === S.symbol && LIVE.has(o.status) && o.price) mine[o.side]?.add(canon(o.price));
  }
  return mine;
}

function renderBook() {
  const { bids, asks } = S.book.sorted();
  const m = S.market;
  // Sums use the pair's decimals, widened if a wire string has more (never silently truncate).
  const raw = bids.slice(0, DEPTH).concat(asks.slice(0, DEPTH));
  const qd = Math.max(m?.qty_decimals ?? 0, ...raw.map((l) => decimalsOf(l[1])));
  const pd = Math.max(m?.price_decimals ?? 0, ...raw.map((l) => decimalsOf(l[0])));
  const grouped = S.step && m && S.step !== m.tick_size;
  const view = (levels, isBid) => (grouped
    ? groupLevels(levels.slice(0, DEPTH), S.step, isBid, pd, qd)
    : levels.slice(0, DEPTH).map(([px, qty]) => ({ px, qty, prices: [canon(px)] })));
  const withCum = (levels) => {
    let cum = 0n;
    return levels.map((l) => ({ ...l, cum: (cum += toUnits(l.qty, qd)) }));
  };
  const b = withCum(view(bids, true)), a = withCum(view(asks, false));
  const max = Number([b.at(-1)?.cum ?? 0n, a.at(-1)?.cum ?? 0n].reduce((x, y) => (x > y ? x : y))) || 1;
  const mine = myPrices();
  const rows = (levels, own) => levels.map((l) => {
    const isMine = l.prices.some((p) => own.has(p));
    return `<div class="lvl${isMine ? " mine" : ""}" data-px="${esc(l.px)}"${isMine ? ' data-mine="1"' : ""}>` +
      `<i class="bar" style="width:${(Number(l.cum) / max * 100).toFixed(1)}%"></i>` +
      `<span>${esc(l.px)}</span><span>${esc(l.qty)}</span><span>${fmtUnits(l.cum, qd)}</span></div>`;
  }).join("");

  const asksEl = $("book-asks");
  // Asks are drawn highest first so the best ask sits next to the spread; keep that end in view.
  const pinned = asksEl.scrollHeight - asksEl.scrollTop - asksEl.clientHeight < 4;
  const none = (what) => (S.bookState === "live" ? `<div class="none">No ${what}</div>` : "");
  asksEl.innerHTML = rows(a.slice().reverse(), mine.sell) || none("asks");
  if (pinned) asksEl.scrollTop = asksEl.scrollHeight;
  $("book-bids").innerHTML = rows(b, mine.buy) || none("bids");

  let spread = "—";
  if (bids.length && asks.length) {
    const bid = toUnits(bids[0][0], pd), ask = toUnits(asks[0][0], pd);
    const bps = Number(ask - bid) / (Number(ask + bid) / 2) * 1e4;
    spread = `Spread ${fmtUnits(ask - bid, pd)} (${bps.toFixed(1)} bps)`;
  }
  $("spread").textContent = spread;
  queueDepthChart();
}

function queueDepthChart() {
  if (!S.depth || S.depthTimer) return;
  S.depthTimer = setTimeout(() => {
    S.depthTimer = 0;
    const { bids, asks } = S.book.sorted();
    const cum = (levels) => {
      let c = 0;
      return levels.slice(0, DEPTH).map(([px, qty]) => ({ px, cum: (c += Number(qty)) }));
    };
    if (S.market) S.depth.show(S.market, cum(bids), cum(asks));
  }, DEPTH_CHART_MS);
}

function setupGrouping(m) {
  const sel = $("grouping");
  const tick = toUnits(m.tick_size, m.price_decimals);
  sel.innerHTML = GROUPINGS.map((k) => {
    const step = fmtUnits(tick * k, m.price_decimals);
    return `<option value="${esc(step)}">${esc(step)}</option>`;
  }).join("");
  S.step = m.tick_size;
  sel.value = fmtUnits(tick, m.price_decimals);
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
  const first = S.shownTrades.size === 0; // don't flash the initial history
  $("trades").innerHTML = S.trades.map((t) =>
    `<div class="trade ${t.side === "buy" ? "buy" : "sell"}${!first && !S.shownTrades.has(t.id) ? " new" : ""}" data-id="${esc(t.id)}">` +
    `<span>${esc(t.px)}</span><span>${esc(t.qty)}</span><span>${hhmmss(t.ts)}</span></div>`).join("");
  S.shownTrades = new Set(S.trades.map((t) => t.id));
}

async function loadTradeHistory(sym) {
  try {
    const list = await getJSON(`/api/v1/markets/${encodeURIComponent(sym)}/trades?limit=${MAX_TRADES}`);
    if (sym === S.symbol) addTrades(list);
  } catch (e) {
    toast(`trade history for ${sym}: ${e.message}`);
  }
}

// ---------- candles ----------

async function loadCandles(sym, interval) {
  if (!S.candles) return;
  try {
    const list = await getJSON(`/api/v1/markets/${encodeURIComponent(sym)}/candles?interval=${interval}&limit=500`);
    if (sym === S.symbol && interval === S.interval) S.candles.load(list);
  } catch (e) {
    toast(`candles for ${sym}: ${e.message}`);
  }
}

function selectInterval(interval) {
  if (interval === S.interval || !S.candles) return;
  const old = candleArg(S.symbol);
  S.interval = interval;
  markIntervals();
  send("unsubscribe", [old]);
  S.candles.reset(S.market, interval);
  send("subscribe", [candleArg(S.symbol)]);
  loadCandles(S.symbol, interval);
}

function markIntervals() {
  document.querySelectorAll("#intervals button").forEach((b) => b.classList.toggle("on", b.dataset.interval === S.interval));
}

// ---------- tickers and the pair list ----------

function change24h(t) {
  if (!t?.last || !t.open_24h || Number(t.open_24h) === 0) return null;
  return (Number(t.last) - Number(t.open_24h)) / Number(t.open_24h) * 100;
}
const fmtChange = (c) => (c == null ? "—" : `${c >= 0 ? "+" : ""}${c.toFixed(2)}%`);
const trend = (c) => (c == null ? "" : c >= 0 ? "up" : "down");

function onTicker(sym, data) {
  if (!sym || !data) return;
  S.tickers.set(sym, data);
  renderPair(sym);
  if (sym === S.symbol) renderTicker();
}

function renderPairs() {
  $("pairs").innerHTML = S.markets.map((m) =>
    `<button type="button" class="pair" data-symbol="${esc(m.symbol)}"><b>${esc(m.symbol)}</b>` +
    `<span class="last">—</span><span class="chg">—</span></button>`).join("");
  S.markets.forEach((m) => renderPair(m.symbol));
}

function renderPair(sym) {
  const el = document.querySelector(`#pairs .pair[data-symbol="${CSS.escape(sym)}"]`);
  if (!el) return;
  const t = S.tickers.get(sym), c = change24h(t);
  el.querySelector(".last").textContent = t?.last ?? "—";
  const chg = el.querySelector(".chg");
  chg.textContent = fmtChange(c); chg.dataset.trend = trend(c);
  el.classList.toggle("on", sym === S.symbol);
}

function renderTicker() {
  const t = S.tickers.get(S.symbol) || {}, c = change24h(t);
  $("tk-symbol").textContent = S.symbol ?? "";
  $("tk-last").textContent = t.last ?? "—";
  $("tk-change").textContent = fmtChange(c); $("tk-change").dataset.trend = trend(c);
  $("tk-high").textContent = t.high_24h ?? "—";
  $("tk-low").textContent = t.low_24h ?? "—";
  $("tk-vol").textContent = t.vol_24h ?? "—";
  $("tk-qvol").textContent = t.quote_vol_24h ?? "—";
}

async function loadTickers() {
  await Promise.all(S.markets.map(async (m) => {
    try {
      const t = await getJSON(`/api/v1/markets/${encodeURIComponent(m.symbol)}/ticker`);
      if (!S.tickers.has(m.symbol)) onTicker(m.symbol, t); // a live one may have come first
    } catch (e) {
      toast(`ticker for ${m.symbol}: ${e.message}`);
    }
  }));
}

// ---------- pair selection ----------

/** Subscribe the pair's channels; also used after every reconnect. */
function subscribePair(sym, history = true) {
  if (S.ws?.readyState === WebSocket.OPEN) { // else the socket's onopen will do it
    if (S.bookState !== "loading") setBookState("resyncing", "subscribing");
    send("subscribe", pairChannels(sym));
    armSnapshotTimer();
  }
  if (history) { // history and live feed may overlap: the merges dedupe
    loadTradeHistory(sym);
    loadCandles(sym, S.interval);
  }
}

function selectPair(sym) {
  if (!marketOf(sym)) sym = S.markets[0]?.symbol;
  if (sym && location.hash !== `#${sym}`) history.replaceState(null, "", `#${sym}`); // survives reloads
  if (!sym || sym === S.symbol) return;
  if (S.symbol) send("unsubscribe", pairChannels(S.symbol));
  S.symbol = sym;
  const m = S.market = marketOf(sym);
  $("book").dataset.symbol = sym;
  $("market-info").textContent = `tick ${m.tick_size} · lot ${m.lot_size} · min ${m.min_qty} · ${m.status ?? ""}`;
  document.querySelectorAll("i.base").forEach((el) => { el.textContent = `(${m.base})`; });
  document.querySelectorAll("i.quote").forEach((el) => { el.textContent = `(${m.quote})`; });
  document.title = `${sym} · Exchange`;
  // Clear the views: nothing of the old pair may remain on screen.
  S.book.clear(); S.trades = []; S.shownTrades = new Set();
  $("book").dataset.seq = "";
  clearTimeout(S.snapTimer);
  setBookState("loading");
  setupGrouping(m);
  S.candles?.reset(m, S.interval);
  S.markets.forEach((x) => renderPair(x.symbol));
  renderTicker(); renderBook(); renderTrades(); renderForm();
  subscribePair(sym);
}

// ---------- the account: key, login, private channels ----------

function storedCredentials() {
  try { return JSON.parse(localStorage.getItem(CREDENTIALS) || "null"); } catch { return null; }
}

function useCredentials(creds) {
  localStorage.setItem(CREDENTIALS, JSON.stringify(creds));
  S.account = new Account(creds, S.clockOffset);
  S.orders.clear(); S.ended.clear(); S.fills = []; S.balances.clear();
  $("account-id").textContent = creds.account_id ? `Account ${creds.account_id}` : `Key ${creds.api_key.slice(0, 8)}…`;
  $("account-id").dataset.account = creds.account_id ?? "";
  $("account-change").textContent = "Change key";
  showKeyForm(false);
  renderMine();
  if (S.ws?.readyState === WebSocket.OPEN) logIn();
  else refreshPrivate();
}

/** A funded demo account from the local faucet. */
async function demoAccount() {
  const r = await fetch("/api/v1/demo/accounts", { method: "POST" });
  if (!r.ok) throw new ApiError(r.status, "FAUCET", `demo faucet answered HTTP ${r.status}`);
  const d = await r.json();
  return { account_id: d.account_id, api_key: d.api_key, api_secret: d.api_secret, demo: true };
}

function showKeyForm(show) {
  $("key-form").hidden = !show;
  $("order-form").hidden = show || !S.account;
}

async function logIn() {
  const account = S.account, ws = S.ws;
  if (!account || !ws) return;
  S.privateState = "login";
  const id = ++S.reqId;
  const reply = await request(await account.loginFrame(id));
  if (!reply?.ok || account !== S.account || ws !== S.ws) return; // failure toasted by dispatch
  S.awaitingBalances = true;
  const sub = await send("subscribe", [{ ch: "orders" }, { ch: "fills" }, { ch: "balances" }]);
  if (sub?.ok) S.privateState = "live";
}

function onBalances(list) {
  for (const b of list || []) S.balances.set(b.asset, b);
  renderBalances(); renderForm();
  if (S.awaitingBalances) {
    // The first balances frame is the snapshot: the account's updates now reach us, so
    // REST state read from here on misses nothing.
    S.awaitingBalances = false;
    refreshPrivate();
  }
}

/** Orders, fills and balances over REST (on login, after lost updates). */
async function refreshPrivate() {
  const account = S.account;
  if (!account) return;
  const asked = Date.now() + S.clockOffset;
  try {
    const [open, fills, balances] = await Promise.all([
      account.request("GET", "/api/v1/orders?status=open&limit=500"),
      account.request("GET", `/api/v1/fills?limit=${MAX_FILLS}`),
      account.request("GET", "/api/v1/balances"),
    ]);
    if (account !== S.account) return;
    const listed = new Set(open.map((o) => o.order_id));
    for (const o of S.orders.values()) {
      // An order the list no longer has ended before we asked (unless it changed since).
      if (!listed.has(o.order_id) && o.updated_ts < asked) S.orders.delete(o.order_id);
    }
    open.forEach((o) => upsertOrder(o, false));
    addFills(fills, false);
    for (const b of balances) if (!S.balances.has(b.asset) || S.privateState !== "live") S.balances.set(b.asset, b);
    renderMine();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      toast(`the API key was refused (${e.code}): enter another`);
      showKeyForm(true);
    } else toast(`account: ${e.message}`);
  }
}

function upsertOrder(o, render = true) {
  if (!o?.order_id || S.ended.has(o.order_id)) return; // its end is known: nothing is newer
  const had = S.orders.get(o.order_id);
  if (had && (had.updated_ts ?? 0) > (o.updated_ts ?? 0)) return; // older news
  if (LIVE.has(o.status)) S.orders.set(o.order_id, o);
  else { S.orders.delete(o.order_id); S.ended.set(o.order_id, o); }
  if (o.order_id === S.lastPlaced) noteOrder(o);
  if (render) { renderOrders(); queueRender(); }
}

/** What became of the order just placed, under the form. */
function noteOrder(o) {
  const why = o.reject_reason ? `: ${o.reject_reason}` : "";
  const el = $("order-status");
  el.textContent = `Order ${o.order_id} ${o.status.replace("_", " ")}${why}`;
  el.className = o.status === "rejected" ? "bad" : "";
}

function addFills(list, render = true) {
  const key = (f) => `${f.trade_id}:${f.order_id}`;
  const seen = new Set(S.fills.map(key));
  const fresh = list.filter((f) => f && !seen.has(key(f)) && (seen.add(key(f)), true));
  if (!fresh.length) return;
  S.fills = S.fills.concat(fresh).sort((a, b) => (b.ts - a.ts) || cmpDec(String(b.trade_id), String(a.trade_id))).slice(0, MAX_FILLS);
  if (render) renderFills();
}

function renderMine() { renderOrders(); renderFills(); renderBalances(); renderForm(); queueRender(); }

function renderOrders() {
  const list = [...S.orders.values()].sort((a, b) => b.created_ts - a.created_ts);
  $("open-count").textContent = list.length ? String(list.length) : "";
  $("open-orders").querySelector("tbody").innerHTML = list.map((o) =>
    `<tr data-order-id="${esc(o.order_id)}" data-symbol="${esc(o.symbol)}" data-status="${esc(o.status)}">` +
    `<td>${hhmmss(o.created_ts)}</td><td>${esc(o.symbol)}</td><td class="${o.side === "buy" ? "buy" : "sell"}">${esc(o.side)} ${esc(o.type)}</td>` +
    `<td class="num">${esc(o.price ?? "market")}</td><td class="num">${esc(o.qty)}</td>` +
    `<td class="num">${esc(o.filled_qty)}</td><td>${esc(o.status.replace("_", " "))}</td>` +
    `<td><button type="button" class="link cancel" data-cancel="${esc(o.order_id)}">Cancel</button></td></tr>`).join("") ||
    `<tr class="none"><td colspan="8">${S.account ? "No open orders" : "Not signed in"}</td></tr>`;
}

function renderFills() {
  $("fills").querySelector("tbody").innerHTML = S.fills.map((f) =>
    `<tr data-trade-id="${esc(f.trade_id)}" data-order-id="${esc(f.order_id)}">` +
    `<td>${hhmmss(f.ts)}</td><td>${esc(f.symbol)}</td><td class="${f.side === "buy" ? "buy" : "sell"}">${esc(f.side)}</td>` +
    `<td class="num">${esc(f.px)}</td><td class="num">${esc(f.qty)}</td><td class="num" title="${esc(f.fee_asset)}">${esc(f.fee)}</td>` +
    `<td>${esc(f.liquidity)}</td></tr>`).join("") ||
    `<tr class="none"><td colspan="7">No fills yet</td></tr>`;
}

function renderBalances() {
  const rows = [...S.balances.values()];
  $("balances").querySelector("tbody").innerHTML = rows.map((b) =>
    `<tr data-asset="${esc(b.asset)}"><td>${esc(b.asset)}</td><td class="num avail">${esc(b.available)}</td><td class="num held">${esc(b.held)}</td></tr>`).join("") ||
    `<tr class="none"><td colspan="3">—</td></tr>`;
}

async function cancelOrder(id, button) {
  if (!S.account) return;
  button.disabled = true;
  try {
    upsertOrder(await S.account.request("DELETE", `/api/v1/orders/${encodeURIComponent(id)}`));
  } catch (e) {
    toast(`cancel: ${e.message}`);
    button.disabled = false;
  }
}

// ---------- order entry ----------

function formValues() {
  return { side: S.side, type: S.type, price: $("order-price").value, qty: $("order-qty").value };
}

function available() {
  const m = S.market;
  if (!m || !S.account) return null;
  return S.balances.get(S.side === "buy" ? m.quote : m.base)?.available ?? null;
}

/** Show the order's total, the funds it can use, and what is wrong with it (if anything). */
function renderForm(showErrors = false) {
  const m = S.market;
  if (!m) return;
  const avail = available();
  $("order-available").textContent = avail == null ? "—" : `${avail} ${S.side === "buy" ? m.quote : m.base}`;
  $("price-row").hidden = S.type === "market";
  const submit = $("order-submit");
  submit.textContent = `${S.side === "buy" ? "Buy" : "Sell"} ${m.base}`;
  submit.className = `submit ${S.side}`;
  document.querySelectorAll("#order-form [data-side]").forEach((b) => b.classList.toggle("on", b.dataset.side === S.side));
  document.querySelectorAll("#order-form [data-type]").forEach((b) => b.classList.toggle("on", b.dataset.type === S.type));
  const v = formValues();
  const typed = v.qty.trim() !== "" || (S.type === "limit" && v.price.trim() !== "");
  const check = checkOrder(m, v, avail);
  $("order-total").textContent = check.total ? `${check.total} ${m.quote}` : "—";
  $("order-error").textContent = check.error && (typed || showErrors) ? check.error : "";
  return check;
}

async function submitOrder(ev) {
  ev.preventDefault();
  const check = renderForm(true);
  if (!check || check.error || !S.account) return;
  const button = $("order-submit");
  button.disabled = true;
  $("order-status").textContent = "";
  try {
    const order = await S.account.request("POST", "/api/v1/orders", check.order);
    S.lastPlaced = order.order_id;
    // Its updates may have come over the socket first: show the newest news of it.
    noteOrder(S.ended.get(order.order_id) ?? S.orders.get(order.order_id) ?? order);
    upsertOrder(order);
  } catch (e) {
    $("order-error").textContent = e instanceof ApiError ? `${e.code}: ${e.detail}` : e.message;
  } finally {
    button.disabled = false;
  }
}

function wireForms() {
  $("order-form").addEventListener("submit", submitOrder);
  $("order-form").addEventListener("input", () => { $("order-status").textContent = ""; renderForm(); });
  $("order-form").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-side], button[data-type]");
    if (!b) return;
    if (b.dataset.side) S.side = b.dataset.side;
    if (b.dataset.type) S.type = b.dataset.type;
    renderForm();
  });
  // A click on a level of the book takes its price, as on any trading screen.
  $("book").addEventListener("click", (ev) => {
    const lvl = ev.target.closest(".lvl");
    if (lvl) { $("order-price").value = lvl.dataset.px; renderForm(); }
  });
  $("open-orders").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-cancel]");
    if (b) cancelOrder(b.dataset.cancel, b);
  });
  $("grouping").addEventListener("change", (ev) => { S.step = ev.target.value; renderBook(); });
  $("intervals").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-interval]");
    if (b) selectInterval(b.dataset.interval);
  });
  $("pairs").addEventListener("click", (ev) => {
    const b = ev.target.closest("button[data-symbol]");
    if (b) selectPair(b.dataset.symbol);
  });
  $("account-change").addEventListener("click", () => showKeyForm($("key-form").hidden));
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const api_key = $("key-api").value.trim(), api_secret = $("key-secret").value.trim();
    if (!api_key || !api_secret) return toast("enter both the API key and its secret");
    $("key-secret").value = "";
    useCredentials({ api_key, api_secret });
  });
  $("key-demo").addEventListener("click", async () => {
    try { useCredentials(await demoAccount()); } catch (e) { toast(e.message); }
  });
}

// ---------- start ----------

async function start() {
  setConn("connecting");
  for (let delay = BACKOFF_MIN; ; delay = Math.min(delay * 2, BACKOFF_MAX)) {
    try {
      S.cfg = await getJSON("/config.json").catch(() => ({}));
      S.wsUrl = S.cfg.ws_url || `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`;
      const sent = Date.now();
      const [markets, time] = await Promise.all([getJSON("/api/v1/markets"), getJSON("/api/v1/time")]);
      S.markets = markets;
      // Signed requests must be within 5 s of the server's clock, whatever this one says.
      S.clockOffset = time.server_time - (sent + Date.now()) / 2;
      break;
    } catch (e) {
      toast(`loading markets: ${e.message}`);
      await new Promise((res) => setTimeout(res, delay));
    }
  }
  if (!S.markets.length) toast("no markets are listed");
  if (await loadChartLibrary()) {
    S.candles = new CandleChart($("candles"));
    S.depth = new DepthChart($("depth"));
  } else {
    $("charts-missing").hidden = false;
  }
  markIntervals();
  renderPairs();
  wireForms();
  $("key-demo").hidden = !S.cfg.demo_faucet;
  loadTickers();
  addEventListener("hashchange", () => selectPair(decodeURIComponent(location.hash.slice(1))));
  selectPair(decodeURIComponent(location.hash.slice(1)));

  const creds = storedCredentials();
  if (creds?.api_key && creds?.api_secret) useCredentials(creds);
  else if (S.cfg.demo_faucet) {
    // Local demo: a funded account on the first visit, so a newcomer can trade at once.
    try { useCredentials(await demoAccount()); } catch (e) { toast(e.message); showKeyForm(true); }
  } else showKeyForm(true);
  renderMine();
  connect();
  // A socket can die without a close event (sleep, network change): treat long silence as loss.
  setInterval(() => { if (S.ws?.readyState === WebSocket.OPEN && Date.now() - S.lastMsg > SILENCE_MS) lost(S.ws, "no data"); }, 1000);
}

if (typeof document !== "undefined") start();
