// Time-series line charts drawn on <canvas>: no library, nothing fetched from elsewhere.

const AXIS = "#5f6b7a";
const GRID = "#e5e7eb";
const PAD = { left: 58, right: 12, top: 10, bottom: 22 };

export const COLORS = {
  blue: "#2563eb", green: "#15803d", amber: "#d97706", red: "#dc2626",
  purple: "#7c3aed", teal: "#0f766e", gray: "#6b7280", pink: "#db2777",
};

/** The smallest "nice" number (1, 2, 2.5, 5 x 10^n) at or above v. */
function niceCeil(v) {
  if (!(v > 0)) return 1;
  const e = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * e >= v) return m * e;
  return 10 * e;
}

export class LineChart {
  /**
   * @param {HTMLElement} figure  a <figure> holding a <canvas> and a <ul class="legend">
   * @param {{series: {key: string, label: string, color: string}[],
   *          format: (v: number) => string, span?: number}} options
   */
  constructor(figure, { series, format, span = 120, empty = "no data yet" }) {
    this.canvas = figure.querySelector("canvas");
    this.legend = figure.querySelector("ul.legend");
    this.series = series;
    this.format = format;
    this.span = span;
    this.empty = empty;
    this.points = [];
    this.tEnd = null;
    this.values = new Map();
    this.legend.replaceChildren(...series.map((s) => {
      const li = document.createElement("li");
      li.dataset.series = s.key;
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = s.color;
      const value = document.createElement("span");
      value.className = "v";
      value.textContent = "—";
      this.values.set(s.key, { li, value });
      li.append(swatch, document.createTextNode(s.label), value);
      return li;
    }));
    this.observer = new ResizeObserver(() => this.draw());
    this.observer.observe(this.canvas);
  }

  /** points: [{t: seconds, [key]: number | null}], oldest first; the axis ends at tEnd. */
  update(points, tEnd = null) {
    this.points = points;
    this.tEnd = tEnd;
    const last = points[points.length - 1];
    for (const s of this.series) {
      const v = last ? last[s.key] : null;
      const { li, value } = this.values.get(s.key);
      value.textContent = v == null ? "—" : this.format(v);
      li.dataset.value = v == null ? "" : String(v);
    }
    this.draw();
  }

  draw() {
    const c = this.canvas;
    const dpr = window.devicePixelRatio || 1;
    const w = c.clientWidth;
    const h = c.clientHeight;
    if (!w || !h) return;
    if (c.width !== Math.round(w * dpr) || c.height !== Math.round(h * dpr)) {
      c.width = Math.round(w * dpr);
      c.height = Math.round(h * dpr);
    }
    const ctx = c.getContext("2d");
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, w, h);
    const pw = w - PAD.left - PAD.right;
    const ph = h - PAD.top - PAD.bottom;
    const tEnd = this.tEnd ?? (this.points.length ? this.points[this.points.length - 1].t
      : Date.now() / 1000);
    const tStart = tEnd - this.span;
    const visible = this.points.filter((p) => p.t >= tStart);
    let max = 0;
    let any = false;
    for (const p of visible) for (const s of this.series) {
      const v = p[s.key];
      if (v != null && Number.isFinite(v)) { max = Math.max(max, v); any = true; }
    }
    const step = max > 0 ? niceCeil((max * 1.05) / 4) : 0.25; // four gridlines, round values
    const yMax = step * 4;
    const x = (t) => PAD.left + ((t - tStart) / this.span) * pw;
    const y = (v) => PAD.top + ph - (v / yMax) * ph;

    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.textBaseline = "middle";
    ctx.textAlign = "right";
    for (let i = 0; i <= 4; i++) {
      const v = step * i;
      const yy = Math.round(y(v)) + 0.5;
      ctx.strokeStyle = GRID;
      ctx.beginPath();
      ctx.moveTo(PAD.left, yy);
      ctx.lineTo(PAD.left + pw, yy);
      ctx.stroke();
      ctx.fillStyle = AXIS;
      ctx.fillText(this.format(v), PAD.left - 6, yy);
    }
    ctx.textAlign = "center";
    ctx.textBaseline = "top";
    for (let ago = this.span; ago >= 0; ago -= 30) {
      const xx = x(tEnd - ago);
      ctx.fillText(ago === 0 ? "now" : `-${ago}s`, Math.min(Math.max(xx, PAD.left + 12), w - 14),
        PAD.top + ph + 6);
    }
    ctx.strokeStyle = AXIS;
    ctx.beginPath();
    ctx.moveTo(PAD.left + 0.5, PAD.top);
    ctx.lineTo(PAD.left + 0.5, PAD.top + ph + 0.5);
    ctx.lineTo(PAD.left + pw, PAD.top + ph + 0.5);
    ctx.stroke();

    if (!any) {
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.font = "13px system-ui, sans-serif";
      ctx.fillStyle = AXIS;
      ctx.fillText(this.empty, PAD.left + pw / 2, PAD.top + ph / 2);
      return;
    }
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    for (const s of this.series) {
      ctx.strokeStyle = s.color;
      ctx.fillStyle = s.color;
      let drawing = false;
      ctx.beginPath();
      visible.forEach((p, i) => {
        const v = p[s.key];
        if (v == null || !Number.isFinite(v)) { drawing = false; return; }
        const prev = visible[i - 1];
        const next = visible[i + 1];
        const alone = (!prev || prev[s.key] == null) && (!next || next[s.key] == null);
        if (alone) ctx.fillRect(x(p.t) - 2, y(v) - 2, 4, 4);
        if (drawing) ctx.lineTo(x(p.t), y(v)); else ctx.moveTo(x(p.t), y(v));
        drawing = true;
      });
      ctx.stroke();
    }
  }
}
