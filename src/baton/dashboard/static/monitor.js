// The data scientist's figures for the selected model: quality (from ground-truth labels
// joined to logged predictions) and input drift against the training reference, as the
// engine reports them in /v1/stats. Nothing here is made up: no data, no chart.

import { COLORS, LineChart } from "./charts.js";
import { el, fmtTime, versionKey, versionLabel } from "./dom.js";

const PALETTE = [COLORS.blue, COLORS.amber, COLORS.green, COLORS.purple, COLORS.teal,
  COLORS.pink, COLORS.red, COLORS.gray];
const SPAN_S = 120;
const DRIFT_POINTS = 600; // per model: ten minutes of polls

const fmtMetric = (v) => String(parseFloat(v.toFixed(3)));
const fmtPsi = (v) => (Number.isFinite(v) ? v.toFixed(3) : "∞");
const fmtShare = (v) => (v == null ? "—" : `${(v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1)}%`);

/** A chart whose series are named by the data (metrics, features): rebuilt when they change. */
class KeyedChart {
  constructor(id, format) {
    this.figure = document.getElementById(id);
    this.format = format;
    this.keys = "";
    this.chart = null;
  }

  update(keys, points, tEnd, span) {
    if (this.keys !== keys.join("\n")) {
      this.keys = keys.join("\n");
      this.chart?.observer.disconnect();
      this.chart = new LineChart(this.figure, {
        series: keys.map((k, i) => ({ key: k, label: k, color: PALETTE[i % PALETTE.length] })),
        format: this.format,
      });
    }
    this.chart.span = span;
    this.chart.update(points, tEnd);
  }
}

function show(panel, has, why) {
  panel.dataset.state = has ? "data" : "empty";
  panel.querySelector(".empty").hidden = has;
  panel.querySelector(".data").hidden = !has;
  if (!has) panel.querySelector(".why").textContent = why;
}

export class MonitorView {
  constructor() {
    this.qualityChart = new KeyedChart("chart-quality", fmtMetric);
    this.driftChart = new KeyedChart("chart-drift", fmtMetric);
    this.drift = new Map(); // version key -> [{t, version, [feature]: psi}] seen by this page
  }

  /** Keep each model's drift figures over time: the engine reports only the latest. */
  ingest(stats) {
    for (const m of stats.models) {
      if (!m.drift || !Object.keys(m.drift).length) continue;
      const key = versionKey(m);
      let points = this.drift.get(key) ?? [];
      if (points.length && points[points.length - 1].version !== m.version) points = [];
      const point = { t: stats.time, version: m.version };
      for (const [feature, d] of Object.entries(m.drift)) point[feature] = d.psi;
      points.push(point);
      if (points.length > DRIFT_POINTS) points.shift();
      this.drift.set(key, points);
    }
  }

  render(m, now) {
    this.renderQuality(m, now);
    this.renderDrift(m, now);
  }

  renderQuality(m, now) {
    const q = m?.metrics?.quality;
    const has = Boolean(q && q.labelled > 0);
    show(document.getElementById("quality-panel"), has, !m ? "No model is selected."
      : !q ? `${m.name} has no quality tracking: the prediction log is off, or its outputs ` +
        "cannot be compared with labels."
        : m.role && m.role !== "live" ? `${m.name} ${versionLabel(m)} is a candidate: ` +
          `labels sent to /v1/models/${m.name}/feedback update the live version's quality.`
        : `No ground-truth labels have arrived for ${m.name} ${m.version}. Send them to ` +
          `/v1/models/${m.name}/feedback as [{"id": prediction id, "label": true value}].`);
    if (!has) return;
    const skip = new Set(["labelled", "history", "metric_failures", "metric_errors"]);
    const keys = Object.keys(q).filter((k) => !skip.has(k) && typeof q[k] === "number");
    document.getElementById("quality-figures").replaceChildren(
      el("div", { class: "figure", "data-testid": "quality-labelled", "data-value": q.labelled },
        el("span", { class: "label" }, "Labelled predictions"),
        el("span", { class: "value" }, String(q.labelled))),
      ...keys.map((k) => el("div", {
        class: "figure", "data-testid": `quality-${k}`, "data-value": q[k],
      }, el("span", { class: "label" }, k), el("span", { class: "value" }, fmtMetric(q[k])))));
    const failures = Object.entries(q.metric_errors ?? {});
    document.getElementById("quality-errors").replaceChildren(...failures.map(([name, msg]) =>
      el("p", { class: "message", "data-kind": "error", "data-testid": "quality-error" },
        `Metric ${name} failed (${q.metric_failures?.[name] ?? 1} times): ${msg}`)));
    const history = (q.history ?? []).map((h) => ({ ...h, t: h.time }));
    const span = Math.max(SPAN_S, history.length ? now - history[0].t : 0);
    this.qualityChart.update(keys, history, now, span);
  }

  renderDrift(m, now) {
    const drift = m?.drift;
    const features = Object.keys(drift ?? {}).sort();
    show(document.getElementById("drift-panel"), features.length > 0, !m
      ? "No model is selected."
      : !drift ? `${m.name} ${m.version} has no training reference profile, so its inputs ` +
        "cannot be compared with anything (bundles packaged with the SDK carry one: " +
        "[monitoring] reference in baton.toml)."
        : `Drift for ${m.name} ${m.version} is computed once enough recent inputs have ` +
          "arrived; send traffic and it appears here.");
    if (!features.length) return;
    const scale = Math.max(0.5, ...features.map((f) => drift[f].psi).filter(Number.isFinite));
    document.getElementById("drift-body").replaceChildren(...features.map((f) => {
      const d = drift[f];
      const bar = el("span", { class: `bar${d.drifting ? " drifting" : ""}` });
      bar.style.width = `${Math.min(1, Number.isFinite(d.psi) ? d.psi / scale : 1) * 100}%`;
      return el("tr", { "data-testid": `drift-${f}`, "data-drifting": String(d.drifting) },
        el("td", {}, el("strong", {}, f),
          el("div", { class: "small muted" }, `${d.rows ?? "?"} recent inputs`)),
        el("td", {}, el("div", { class: "psi" }, el("span", { class: "track" }, bar),
          el("span", {}, fmtPsi(d.psi)))),
        el("td", { class: "num" },
          d.ks_at_percentiles == null ? "—" : d.ks_at_percentiles.toFixed(3)),
        el("td", { class: "num" }, fmtShare(d.missing)),
        el("td", { class: "num" }, fmtShare(d.unseen_share)),
        el("td", {}, el("span", { class: `badge ${d.drifting ? "bad" : "ok"}` },
          d.drifting ? "drifting" : "stable")));
    }));
    const points = this.drift.get(versionKey(m)) ?? [];
    const span = Math.max(SPAN_S, points.length ? now - points[0].t : 0);
    this.driftChart.update(features, points, now, span);
    const alerts = (m.drift_alerts ?? []).slice(-5).reverse();
    document.getElementById("drift-alerts").replaceChildren(...alerts.map((a) => el("li", {},
      el("strong", {}, `${fmtTime(a.time * 1000)}: ${a.feature} started drifting`),
      ` — PSI ${fmtPsi(a.psi)} over the threshold ${a.threshold}` +
      (a.ks_at_percentiles != null ? `, KS ${a.ks_at_percentiles.toFixed(3)}` : ""))));
    document.getElementById("drift-alerts-title").hidden = alerts.length === 0;
  }
}

/** Models with drifting features, for the page's banner. */
export function driftingFeatures(models) {
  const out = [];
  for (const m of models) {
    for (const [feature, d] of Object.entries(m.drift ?? {})) {
      if (d.drifting) out.push({ model: m.name, version: versionLabel(m), feature, psi: d.psi });
    }
  }
  return out;
}
