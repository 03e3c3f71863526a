// The candlestick chart (with volume) and the depth chart, drawn by TradingView's
// lightweight-charts, which the API serves from the npm package the set-up installs.
// The library is loaded on demand: if it is missing the page still trades, and says so.

let LWC = null;

/** Load the chart library once; false (and the reason logged) if it is not there. */
export async function loadChartLibrary() {
  if (LWC) return true;
  try {
    LWC = await import("/vendor/lightweight-charts.mjs");
    return true;
  } catch (e) {
    console.warn("charts unavailable:", e.message);
    return false;
  }
}

const THEME = {
  bg: "#14181d", text: "#7b8792", grid: "#1b2027", line: "#232a31",
  up: "#2ebd85", down: "#f6465d", upVol: "rgba(46, 189, 133, 0.45)", downVol: "rgba(246, 70, 93, 0.45)",
};

function baseOptions() {
  return {
    autoSize: true,
    layout: { background: { type: LWC.ColorType.Solid, color: THEME.bg }, textColor: THEME.text, fontSize: 11 },
    grid: { vertLines: { color: THEME.grid }, horzLines: { color: THEME.grid } },
    rightPriceScale: { borderColor: THEME.line },
    crosshair: { mode: LWC.CrosshairMode.Normal },
  };
}

const priceFormat = (market) => ({
  type: "price", precision: market.price_decimals, minMove: Number(market.tick_size),
});

/** Bars of one pair and interval: REST history, then live bars from the `candles` channel. */
export class CandleChart {
  constructor(el) {
    this.el = el;
    this.bars = new Map(); // t (ms) -> wire bar
    this.lastT = -Infinity;
    this.chart = LWC.createChart(el, {
      ...baseOptions(),
      timeScale: { borderColor: THEME.line, timeVisible: true, secondsVisible: false },
    });
    this.candles = this.chart.addSeries(LWC.CandlestickSeries, {
      upColor: THEME.up, downColor: THEME.down, borderVisible: false,
      wickUpColor: THEME.up, wickDownColor: THEME.down,
    });
    this.candles.priceScale().applyOptions({ scaleMargins: { top: 0.08, bottom: 0.28 } });
    this.volume = this.chart.addSeries(LWC.HistogramSeries, {
      priceFormat: { type: "volume" }, priceScaleId: "", lastValueVisible: false, priceLineVisible: false,
    });
    this.volume.priceScale().applyOptions({ scaleMargins: { top: 0.78, bottom: 0 } });
  }

  /** Start over for another pair or interval. */
  reset(market, interval) {
    this.bars.clear();
    this.lastT = -Infinity;
    this.candles.applyOptions({ priceFormat: priceFormat(market) });
    this.candles.setData([]);
    this.volume.setData([]);
    this.el.dataset.interval = interval;
    this.el.dataset.symbol = market.symbol;
    this._mark();
  }

  /** Keep the fuller of two versions of a bar (history and the live feed overlap). */
  _keep(bar) {
    const had = this.bars.get(bar.t);
    if (had && (had.n ?? 0) > (bar.n ?? 0)) return false;
    this.bars.set(bar.t, bar);
    return true;
  }

  /** REST history (oldest first) merged with whatever arrived live meanwhile. */
  load(list) {
    for (const bar of list) this._keep(bar);
    this._redraw();
  }

  /** One bar from the `candles` channel. */
  live(bar) {
    if (!this._keep(bar)) return;
    if (bar.t >= this.lastT) {
      // update() with an older time throws: only the newest bar goes this way.
      this.candles.update(candlePoint(bar));
      this.volume.update(volumePoint(bar));
      this.lastT = bar.t;
      this._mark();
    } else {
      this._redraw(); // a late correction of an older bar
    }
  }

  _redraw() {
    const list = [...this.bars.values()].sort((a, b) => a.t - b.t);
    this.candles.setData(list.map(candlePoint));
    this.volume.setData(list.map(volumePoint));
    this.lastT = list.length ? list.at(-1).t : -Infinity;
    this._mark();
  }

  _mark() { // what the chart holds, for a person's tools (and the tests) to read
    this.el.dataset.bars = String(this.bars.size);
    this.el.dataset.lastT = Number.isFinite(this.lastT) ? String(this.lastT) : "";
  }
}

const seconds = (ms) => Math.floor(ms / 1000);
const candlePoint = (b) => ({ time: seconds(b.t), open: Number(b.o), high: Number(b.h), low: Number(b.l), close: Number(b.c) });
const volumePoint = (b) => ({
  time: seconds(b.t), value: Number(b.v), color: Number(b.c) >= Number(b.o) ? THEME.upVol : THEME.downVol,
});

/** Cumulative size against price on both sides of the book (prices on the x axis). */
export class DepthChart {
  constructor(el) {
    this.el = el;
    this.chart = LWC.createOptionsChart(el, {
      ...baseOptions(),
      handleScroll: false, handleScale: false,
      timeScale: { borderColor: THEME.line, fixLeftEdge: true, fixRightEdge: true },
    });
    const area = (color) => ({
      lineColor: color, topColor: `${color}55`, bottomColor: `${color}08`, lineWidth: 2,
      lineType: LWC.LineType.WithSteps, lastValueVisible: false, priceLineVisible: false,
    });
    this.bids = this.chart.addSeries(LWC.AreaSeries, area(THEME.up));
    this.asks = this.chart.addSeries(LWC.AreaSeries, area(THEME.down));
  }

  /** bids and asks best first, each [{px, cum}] with cum a Number of base units. */
  show(market, bids, asks) {
    this.chart.applyOptions({ localization: { priceFormatter: (v) => Math.max(0, v).toFixed(Math.min(market.qty_decimals, 4)) } });
    // x must rise within a series: bids are drawn from the lowest price to the best.
    this.bids.setData(bids.slice().reverse().map((l) => ({ time: Number(l.px), value: l.cum })));
    this.asks.setData(asks.map((l) => ({ time: Number(l.px), value: l.cum })));
    this.chart.timeScale().fitContent();
    this.el.dataset.points = String(bids.length + asks.length);
  }
}
