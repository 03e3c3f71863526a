// Trading from the browser: request signing (Web Crypto HMAC-SHA256, as the API
// requires), the signed REST calls, and the checks an order passes before it is sent.

import { decimalsOf, fmtUnits, isPlainDecimal, toUnits } from "./book.js";

const enc = new TextEncoder();

/** An error answered by the API: its stable code and message. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(`${code}: ${message}`);
    this.status = status; this.code = code; this.detail = message;
  }
}

async function failure(r) {
  let body = null;
  try { body = await r.json(); } catch { /* not JSON */ }
  return new ApiError(r.status, body?.error?.code ?? `HTTP_${r.status}`, body?.error?.message ?? r.statusText);
}

/** GET a public JSON resource; ApiError on a non-2xx answer. */
export async function getJSON(url) {
  const r = await fetch(url);
  if (!r.ok) throw await failure(r);
  return r.json();
}

/**
 * One account's signed access: every request carries X-API-KEY, X-API-TIMESTAMP and
 * X-API-SIGNATURE = hex(HMAC-SHA256(secret, timestamp + METHOD + path + body)).
 * Timestamps follow the server's clock (offset measured once) and never repeat, since
 * the API refuses a signature it has seen (two identical requests in one millisecond).
 */
export class Account {
  constructor({ account_id, api_key, api_secret }, clockOffsetMs = 0) {
    this.id = account_id ?? ""; this.apiKey = api_key; this.offset = clockOffsetMs;
    this.lastTs = 0;
    if (!globalThis.crypto?.subtle) throw new Error("signing needs a secure context (https or localhost)");
    this.key = crypto.subtle.importKey("raw", enc.encode(api_secret), { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  }

  timestamp() {
    this.lastTs = Math.max(Math.round(Date.now() + this.offset), this.lastTs + 1);
    return this.lastTs;
  }

  async sign(message) {
    const mac = await crypto.subtle.sign("HMAC", await this.key, enc.encode(message));
    return [...new Uint8Array(mac)].map((b) => b.toString(16).padStart(2, "0")).join("");
  }

  /** A signed REST call; the parsed JSON answer, or ApiError. */
  async request(method, path, body) {
    const text = body === undefined ? "" : JSON.stringify(body);
    const ts = this.timestamp();
    const headers = {
      "X-API-KEY": this.apiKey, "X-API-TIMESTAMP": String(ts),
      "X-API-SIGNATURE": await this.sign(`${ts}${method}${path}${text}`),
    };
    if (text) headers["Content-Type"] = "application/json";
    const r = await fetch(path, { method, headers, body: text || undefined });
    if (!r.ok) throw await failure(r);
    return r.json();
  }

  /** The WebSocket login frame: HMAC of timestamp + "GET" + "/ws". */
  async loginFrame(id) {
    const ts = this.timestamp();
    return { op: "login", id, api_key: this.apiKey, timestamp: ts, signature: await this.sign(`${ts}GET/ws`) };
  }
}

/** "600.005000" -> "600.005", "60120.000" -> "60120" */
const trimZeros = (s) => s.replace(/(\.\d*?[1-9])0+$|\.0+$/, "$1");

/**
 * Checks a person's order against the pair's rules and the funds shown, before it is
 * sent: returns {error, total, order}. `error` is a sentence or null; `order` is the
 * body to POST (decimals at the pair's precision); `total` the order's value in quote.
 * The API checks everything again: this only spares a round trip and explains.
 */
export function checkOrder(market, form, available) {
  const { side, type } = form;
  const price = String(form.price ?? "").trim(), qty = String(form.qty ?? "").trim();
  const pd = market.price_decimals, qd = market.qty_decimals;
  const base = market.base, quote = market.quote;
  const out = (error, total = null, order = null) => ({ error, total, order });
  if (!qty) return out("Enter a size");
  if (!isPlainDecimal(qty)) return out("The size must be a plain decimal number");
  const wq = Math.max(qd, decimalsOf(qty), decimalsOf(market.lot_size));
  const q = toUnits(qty, wq), lot = toUnits(market.lot_size, wq);
  if (q <= 0n) return out("The size must be above zero");
  if (q % lot !== 0n) return out(`The size must be a multiple of the lot size ${market.lot_size} ${base}`);
  if (q < toUnits(market.min_qty, wq)) return out(`The size is below the minimum ${market.min_qty} ${base}`);
  if (q > toUnits(market.max_qty, wq)) return out(`The size is above the maximum ${market.max_qty} ${base}`);
  const qtyWire = fmtUnits(q / 10n ** BigInt(wq - qd), qd);
  if (type === "market") {
    if (side === "sell" && available != null && q > toUnits(available, wq)) {
      return out(`Not enough ${base}: ${available} available`);
    }
    return out(null, null, { symbol: market.symbol, side, type, qty: qtyWire });
  }
  if (!price) return out("Enter a price");
  if (!isPlainDecimal(price)) return out("The price must be a plain decimal number");
  const wp = Math.max(pd, decimalsOf(price), decimalsOf(market.tick_size));
  const p = toUnits(price, wp), tick = toUnits(market.tick_size, wp);
  if (p <= 0n) return out("The price must be above zero");
  if (p % tick !== 0n) return out(`The price must be a multiple of the tick size ${market.tick_size}`);
  const priceWire = fmtUnits(p / 10n ** BigInt(wp - pd), pd);
  // Exact value in quote at pd + qd decimals, shown at the quote's usual precision.
  const valueDec = pd + qd;
  const value = toUnits(priceWire, pd) * toUnits(qtyWire, qd);
  const total = trimZeros(fmtUnits(value, valueDec));
  if (value < toUnits(market.min_notional, valueDec)) {
    return out(`The order's value ${total} ${quote} is below the minimum ${market.min_notional} ${quote}`, total);
  }
  if (available != null) {
    if (side === "buy") {
      // The API holds the value plus the larger fee: the order may end maker or taker.
      const bps = Math.max(market.maker_fee_bps ?? 0, market.taker_fee_bps ?? 0, 0);
      const fee = value * BigInt(bps) / 10000n;
      const need = value + fee;
      if (need > toUnits(available, valueDec)) {
        return out(`Not enough ${quote}: ${trimZeros(fmtUnits(need, valueDec))} needed with fees, ${available} available`, total);
      }
    } else if (q > toUnits(available, wq)) {
      return out(`Not enough ${base}: ${available} available`, total);
    }
  }
  return out(null, total, { symbol: market.symbol, side, type, price: priceWire, qty: qtyWire, tif: "GTC" });
}
