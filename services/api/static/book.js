// Exact decimals, the book checksum and the local order book. Pure: no DOM, no socket,
// no clock. Wire decimals are compared, summed and grouped exactly (BigInt units): floats
// would misorder or misround them.

export const CHECK_LEVELS = 25; // the checksum covers the top min(25, depth) levels

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
export const isZero = (s) => /^0*(\.0*)?$/.test(s);
export const decimalsOf = (s) => (String(s).split(".")[1] || "").length;
/** "1.25" at 4 decimals -> 12500n (digits past `dec` are cut: callers widen `dec` first). */
export function toUnits(s, dec) {
  const [i, f = ""] = String(s).split(".");
  return BigInt((i || "0") + f.padEnd(dec, "0").slice(0, dec));
}
/** 12500n at 4 decimals -> "1.2500" */
export function fmtUnits(u, dec) {
  const neg = u < 0n, s = (neg ? -u : u).toString().padStart(dec + 1, "0");
  return (neg ? "-" : "") + (dec ? `${s.slice(0, -dec)}.${s.slice(-dec)}` : s);
}
/** A plain non-negative decimal as typed by a person: digits, at most one point. */
export const isPlainDecimal = (s) => /^(\d+(\.\d*)?|\.\d+)$/.test(String(s).trim());

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
  checksum(k = CHECK_LEVELS) { const { bids, asks } = this.sorted(); return bookChecksum(bids, asks, k); }
}

/**
 * Levels (best first, wire strings) merged into buckets of `step` (a tick multiple, a
 * decimal string): bids round down, asks up, so a bucket never shows a better price than
 * any order in it. Returns [{px, qty, prices}] best first, exact strings at `pd`/`qd`
 * decimals; `prices` are the canonical wire prices the bucket holds.
 */
export function groupLevels(levels, step, isBid, pd, qd) {
  const size = toUnits(step, pd);
  const out = [];
  for (const [px, qty] of levels) {
    const p = toUnits(px, pd);
    const rem = p % size;
    const edge = rem === 0n ? p : isBid ? p - rem : p - rem + size;
    const last = out.at(-1);
    if (last && last.units === edge) {
      last.q += toUnits(qty, qd);
      last.prices.push(canon(px));
    } else {
      out.push({ units: edge, q: toUnits(qty, qd), prices: [canon(px)] });
    }
  }
  return out.map((g) => ({ px: fmtUnits(g.units, pd), qty: fmtUnits(g.q, qd), prices: g.prices }));
}
