// Models served and live figures. Polls the engine's own APIs once a second:
// /v1/stats (counters, workers, traffic split), /v1/models (registry source),
// /v2/health/ready, and /metrics for latency histograms. Rates are computed here, from
// counter deltas between polls. Every served version is a row of its own: the live one
// (keyed by the model's name) and its canary or shadow candidate ("name:canary",
// "name:shadow"; see versionKey). On a Ray cluster each model replica reports apart: the
// rows are their sums (cluster.js) and each replica has a row of its own.

import { authFetch } from "./auth.js";
import { COLORS, LineChart } from "./charts.js";
import { mergeReplicas, renderReplicas, replicaKey } from "./cluster.js";
import {
  el, fmtAgo, fmtBytes, fmtPercent, fmtRate, fmtSeconds, fmtWeight, roleLabel, setFigure,
  shortDigest, versionKey, versionLabel,
} from "./dom.js";
import { MonitorView, driftingFeatures } from "./monitor.js";

const POLL_MS = 1000;
const WINDOW_S = 5; // rates and latency quantiles are over this many seconds
const SPAN_S = 120; // charts show this much history
const STAGES = ["decode", "contract", "queue", "model", "output"];
const STAGE_COLORS = {
  decode: COLORS.purple, contract: COLORS.amber, queue: COLORS.gray, model: COLORS.red,
  output: COLORS.pink,
};

const state = {
  samples: new Map(), // version key -> raw samples of that served version within the window
  points: new Map(), // version key -> chart points, oldest first
  stats: null,
  models: [],
  source: null,
  selected: null, // a version key
  metricsOn: true, // false once /metrics answers 404 (BATON_METRICS=false)
  charts: null,
  monitor: null,
};

class HttpFailure extends Error {
  constructor(url, status) {
    super(`${url} answered HTTP ${status}`);
    this.status = status;
  }
}

async function getJSON(url) {
  const resp = await authFetch(url);
  if (!resp.ok) throw new HttpFailure(url, resp.status);
  return resp.json();
}

async function getMetricsText() {
  if (!state.metricsOn) return null;
  const resp = await authFetch("/metrics");
  if (resp.status === 404) { state.metricsOn = false; return null; }
  return resp.ok ? resp.text() : null;
}

async function getReady() {
  const resp = await fetch("/v2/health/ready", { cache: "no-store" });
  return resp.status === 200;
}

// -- latency from the Prometheus histogram -------------------------------------------------
const BUCKET_LINE = /^baton_stage_duration_seconds_bucket\{(.*)\}\s+(\S+)/;
const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

/** "name@version" -> [[upper bound, cumulative count], ...] for the "total" stage; the
 * counts of a cluster's replicas (the same buckets, told apart by a replica label) added. */
export function parseLatencyBuckets(text) {
  const counts = new Map();
  for (const line of text.split("\n")) {
    const m = BUCKET_LINE.exec(line);
    if (!m) continue;
    const labels = {};
    for (const [, k, v] of m[1].matchAll(LABEL)) labels[k] = v.replace(/\\(.)/g, "$1");
    if (labels.stage !== "total") continue;
    const key = `${labels.model}@${labels.version}`;
    if (!counts.has(key)) counts.set(key, new Map());
    const le = labels.le === "+Inf" ? Infinity : Number(labels.le);
    counts.get(key).set(le, (counts.get(key).get(le) ?? 0) + Number(m[2]));
  }
  const out = new Map();
  for (const [key, byBound] of counts) out.set(key, [...byBound].sort((a, b) => a[0] - b[0]));
  return out;
}

/** The q-quantile of what was observed between two bucket snapshots (as Prometheus does). */
export function windowQuantile(before, after, q) {
  if (!before || !after || before.length !== after.length) return null;
  const counts = after.map(([le, n], i) => [le, n - before[i][1]]);
  const total = counts[counts.length - 1][1];
  if (!(total > 0)) return null;
  const rank = q * total;
  let lower = 0;
  let below = 0;
  for (const [le, n] of counts) {
    if (n >= rank) {
      if (le === Infinity) return lower; // past the last bound: that bound is all we know
      return lower + (le - lower) * ((rank - below) / Math.max(n - below, 1e-12));
    }
    lower = le;
    below = n;
  }
  return lower;
}

// -- samples and rates ----------------------------------------------------------------------
function sampleOf(m, t, buckets) {
  const metrics = m.metrics;
  const cpu = new Map();
  let rss = null;
  for (const w of m.workers) {
    if (w.pid != null && w.cpu_seconds != null) cpu.set(w.key ?? w.pid, w.cpu_seconds);
    if (w.rss_bytes != null) rss = (rss ?? 0) + w.rss_bytes;
  }
  return {
    t, version: m.version, cpu, rss,
    requests: metrics?.requests ?? null,
    records: metrics?.records ?? null,
    errors: metrics?.errors ?? null,
    byStage: metrics?.errors_by_stage ?? {},
    byCode: metrics?.errors_by_code ?? {},
    buckets: buckets?.get(`${m.name}@${m.version}`) ?? null,
  };
}

function ingest(m, t, buckets, key = versionKey(m)) {
  const sample = sampleOf(m, t, buckets);
  let list = state.samples.get(key) ?? [];
  if (list.length && list[list.length - 1].version !== m.version) list = []; // counters restart
  list.push(sample);
  while (list.length > 1 && list[0].t < t - WINDOW_S - 0.25) list.shift();
  state.samples.set(key, list);

  const base = list[0];
  const dt = t - base.t;
  const rate = (a, b) => (dt > 0 && a != null && b != null && b >= a ? (b - a) / dt : null);
  const point = { t, version: m.version };
  point.rps = rate(base.requests, sample.requests);
  point.recps = rate(base.records, sample.records);
  point.errps = rate(base.errors, sample.errors);
  point.codes = {};
  if (sample.errors != null) {
    for (const s of STAGES) point[`err_${s}`] = rate(base.byStage[s] ?? 0, sample.byStage[s] ?? 0);
    for (const [key, n] of Object.entries(sample.byCode)) {
      const r = rate(base.byCode[key] ?? 0, n);
      if (r > 0) point.codes[key] = r;
    }
  }
  if (base !== sample) {
    point.p50 = windowQuantile(base.buckets, sample.buckets, 0.5);
    point.p90 = windowQuantile(base.buckets, sample.buckets, 0.9);
    point.p99 = windowQuantile(base.buckets, sample.buckets, 0.99);
  }
  let cpuSeconds = 0;
  let cpuKnown = false;
  for (const [pid, seconds] of sample.cpu) {
    const before = base.cpu.get(pid);
    if (before != null && seconds >= before) { cpuSeconds += seconds - before; cpuKnown = true; }
  }
  point.cpu = cpuKnown && dt > 0 ? (cpuSeconds / dt) * 100 : null;
  point.mem = sample.rss;
  point.memMiB = sample.rss == null ? null : sample.rss / 1048576;

  const points = state.points.get(key) ?? [];
  points.push(point);
  while (points.length && points[0].t < t - SPAN_S - 2) points.shift();
  state.points.set(key, points);
}

function latestPoint(key) {
  const points = state.points.get(key);
  return points && points.length ? points[points.length - 1] : null;
}

// -- views ----------------------------------------------------------------------------------
function healthCell(m) {
  const ready = m.workers.filter((w) => w.state === "ready").length;
  return el("td", {},
    el("span", { class: `badge ${m.ready ? "ok" : "bad"}`, "data-testid": "health" },
      m.ready ? "ready" : "not ready"),
    el("div", { class: "small muted" }, `${ready}/${m.workers.length} workers ready`));
}

function workersCell(m) {
  return el("td", {}, el("div", { class: "workers" }, m.workers.map((w) => el("span", {
    class: `badge ${w.state === "ready" ? "ok" : w.state === "absent" ? "bad" : "warn"}`,
    title: `slot ${w.slot}`,
  }, `${w.pid != null ? `pid ${w.pid}` : `slot ${w.slot}`} · ${w.state}`))));
}

function failureCell(m) {
  const f = m.last_failure;
  if (!f) return el("td", { class: "muted" }, "none");
  return el("td", { class: "small" }, el("strong", {}, fmtAgo(f.time)), el("div", {}, f.reason));
}

function trafficCell(m) {
  const t = m.traffic;
  if (!t) return el("td", { class: "muted" }, "—");
  if (m.role === "canary") {
    return el("td", { class: "small", "data-testid": "traffic" },
      el("strong", {}, `answers ${fmtWeight(t.weight)} of requests`),
      el("div", {}, `${t.to_candidate} of ${t.requests} requests so far`));
  }
  if (m.role === "shadow") {
    return el("td", { class: "small", "data-testid": "traffic" },
      el("strong", {}, "gets a copy of every request, never answers"),
      el("div", {}, `${t.compared_rows} rows compared, ${t.mismatched_rows} differ` +
        ` (max diff ${t.max_abs_diff}), ${t.candidate_errors} errors, ${t.skipped} skipped`));
  }
  const ready = t.candidate_ready ? "ready" : "not ready";
  if (t.mode === "canary") {
    return el("td", { class: "small", "data-testid": "traffic" },
      el("strong", {}, `canary ${fmtWeight(t.weight)} → ${t.candidate}`),
      ` (${ready})`, el("div", {}, `${t.to_candidate} of ${t.requests} requests sent to it`));
  }
  return el("td", { class: "small", "data-testid": "traffic" },
    el("strong", {}, `shadow → ${t.candidate}`), ` (${ready})`,
    el("div", {}, `${t.compared_rows} rows compared, ${t.mismatched_rows} differ` +
      ` (max diff ${t.max_abs_diff}), ${t.candidate_errors} candidate errors`));
}

function stageCell(m) {
  if (m.role && m.role !== "live") {
    return el("td", { class: "muted", title: "the stage is the live version's" }, "—");
  }
  const s = state.source;
  if (!s) return el("td", { class: "muted" }, "local bundle");
  return el("td", {}, el("span", { class: `badge stage-${s.stage}` }, s.stage),
    el("div", { class: "small muted" }, "from the registry"));
}

function renderModels() {
  const body = document.getElementById("models-body");
  const rows = state.stats.models.map((m) => {
    const key = versionKey(m);
    const p = latestPoint(key);
    const role = roleLabel(m);
    const tr = el("tr", {
      "data-testid": `model-row-${key}`, "data-model": m.name, "data-role": m.role ?? "live",
      class: [key === state.selected ? "selected" : null,
        m.role && m.role !== "live" ? "candidate" : null].filter(Boolean).join(" ") || null,
    },
    el("td", {}, el("strong", { "data-testid": "model-name" }, m.name)),
    el("td", { "data-testid": "model-version" }, m.version,
      role ? el("span", { class: `role role-${m.role ?? "live"}`, "data-testid": "model-role" },
        ` (${role})`) : null),
    stageCell(m),
    el("td", {}, el("code", { title: m.digest }, shortDigest(m.digest))),
    healthCell(m), workersCell(m),
    el("td", { class: "num" }, String(m.restarts)),
    failureCell(m), trafficCell(m),
    el("td", { class: "num" }, fmtRate(p?.rps)),
    el("td", { class: `num${p?.errps > 0 ? " bad" : ""}` }, fmtRate(p?.errps)));
    tr.addEventListener("click", () => select(key));
    return tr;
  });
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: 11, class: "muted" },
      state.source ? "No model in the followed stage yet." : "This engine serves no model.")));
  }
  body.replaceChildren(...rows);

  const src = document.getElementById("source");
  if (state.source) {
    const s = state.source;
    const failed = Object.entries(s.failed ?? {});
    src.textContent = `Serving the ${s.stage} stage of a registry` +
      (s.syncs != null ? ` (${s.syncs} syncs)` : "") +
      (s.last_error ? ` — last sync failed: ${s.last_error}` : "") +
      failed.map(([d, why]) => ` — not serving ${shortDigest(d)}: ${why}`).join("");
  } else {
    src.textContent = "Serving bundles given on the command line.";
  }
}

function renderSelect() {
  const select = document.getElementById("model-select");
  const models = state.stats.models;
  const keys = models.map(versionKey);
  if (!keys.includes(state.selected)) state.selected = keys[0] ?? null;
  const labels = models.map((m) => (roleLabel(m) ? `${m.name} ${versionLabel(m)}` : m.name));
  const have = [...select.options].map((o) => `${o.value}\t${o.textContent}`).join("\n");
  if (have !== keys.map((k, i) => `${k}\t${labels[i]}`).join("\n")) {
    select.replaceChildren(...keys.map((k, i) => el("option", { value: k }, labels[i])));
  }
  if (state.selected) select.value = state.selected;
}

function renderFigures() {
  const p = state.selected ? latestPoint(state.selected) : null;
  const m = selectedModel();
  setFigure("figure-rps", p?.rps ?? null, fmtRate);
  setFigure("figure-recps", p?.recps ?? null, fmtRate);
  setFigure("figure-p50", p?.p50 ?? null, fmtSeconds);
  setFigure("figure-p99", p?.p99 ?? null, fmtSeconds);
  setFigure("figure-errps", p?.errps ?? null, fmtRate, p?.errps > 0);
  setFigure("figure-cpu", p?.cpu ?? null, fmtPercent);
  setFigure("figure-mem", p?.mem ?? null, fmtBytes);
  setFigure("figure-total", m?.metrics?.requests ?? null, (v) => (v == null ? "—" : String(v)));
  const note = document.getElementById("latency-note");
  const all = m?.metrics?.latency_seconds;
  if (!state.metricsOn) {
    note.textContent = "— metrics are off (BATON_METRICS=false)";
  } else {
    note.textContent = `— last ${WINDOW_S} s` + (all && all.p50 != null
      ? `; since start p50 ≤ ${fmtSeconds(all.p50)}, p99 ≤ ${fmtSeconds(all.p99)}` : "");
  }
}

function renderCharts() {
  const points = state.points.get(state.selected) ?? [];
  const m = selectedModel();
  const off = m && m.metrics == null ? "metrics are off (BATON_METRICS=false)" : null;
  state.charts.throughput.empty = off ?? "no data yet";
  state.charts.errors.empty = off ?? "no data yet";
  state.charts.latency.empty = off ?? `no requests in the last ${WINDOW_S} s`;
  for (const chart of Object.values(state.charts)) chart.update(points);
}

/** The failing stage in plain words, for each model whose errors rose in the window. */
function renderErrorBanner() {
  const banner = document.getElementById("error-banner");
  const failing = [];
  for (const m of state.stats.models) {
    const p = latestPoint(versionKey(m));
    if (!p || !(p.errps > 0)) continue;
    const byStage = STAGES.map((s) => [s, p[`err_${s}`] ?? 0]).filter(([, r]) => r > 0)
      .sort((a, b) => b[1] - a[1]);
    for (const [stage, r] of byStage) {
      const codes = Object.entries(p.codes).filter(([k]) => k.startsWith(`${stage}/`))
        .sort((a, b) => b[1] - a[1]).map(([k]) => k.slice(stage.length + 1));
      failing.push({ model: m.name, version: versionLabel(m), role: m.role ?? "live", stage,
        rate: r, codes, rps: p.rps });
    }
  }
  failing.sort((a, b) => b.rate - a.rate);
  banner.hidden = failing.length === 0;
  if (!failing.length) { delete banner.dataset.stage; delete banner.dataset.code; return; }
  const top = failing[0];
  banner.dataset.stage = top.stage;
  banner.dataset.code = top.codes[0] ?? "";
  banner.dataset.model = top.model;
  banner.replaceChildren(...failing.map((f) => el("p", {
    "data-testid": "error-line", "data-stage": f.stage, "data-model": f.model,
    "data-role": f.role,
  }, `Errors at stage: ${f.stage}${f.codes.length ? ` (${f.codes.join(", ")})` : ""}` +
    ` — ${fmtRate(f.rate)}/s`,
  el("span", { class: "detail" }, ` on ${f.model} ${f.version}` +
    (f.rps > 0 ? `, ${Math.min(100, (f.rate / f.rps) * 100).toFixed(0)}% of requests` : "") +
    ` in the last ${WINDOW_S} s`))));
}

function select(key) {
  state.selected = key;
  renderAll();
}

function selectedModel() {
  return state.stats.models.find((x) => versionKey(x) === state.selected);
}

function renderAll() {
  if (!state.stats) return;
  renderSelect();
  renderModels();
  renderReplicas(state.stats.replicas, latestPoint);
  renderFigures();
  renderCharts();
  renderErrorBanner();
  renderDriftBanner();
  state.monitor.render(selectedModel(), state.stats.time);
}

function setStatus(kind, text) {
  const pill = document.getElementById("engine-status");
  pill.dataset.state = kind;
  pill.textContent = text;
}

async function tick() {
  const offline = document.getElementById("offline-banner");
  try {
    const [stats, models, ready, metrics] = await Promise.all([
      getJSON("/v1/stats"), getJSON("/v1/models"), getReady(), getMetricsText()]);
    const buckets = metrics ? parseLatencyBuckets(metrics) : null;
    stats.replicas = stats.cluster ? stats.models : null;
    if (stats.cluster) stats.models = mergeReplicas(stats.replicas);
    for (const m of stats.models) ingest(m, stats.time, buckets);
    for (const r of stats.replicas ?? []) ingest(r, stats.time, null, replicaKey(r));
    state.monitor.ingest(stats);
    const served = new Set([...stats.models.map(versionKey),
      ...(stats.replicas ?? []).map(replicaKey)]);
    for (const key of [...state.points.keys()]) {
      if (!served.has(key)) {
        state.points.delete(key);
        state.samples.delete(key);
      }
    }
    state.stats = stats;
    state.models = models.models;
    state.source = models.source ?? null;
    offline.hidden = true;
    setStatus(ready ? "ready" : "not-ready", ready ? "engine ready" : "engine not ready");
    document.getElementById("updated").textContent =
      `updated ${new Date(stats.time * 1000).toLocaleTimeString()}`;
    renderAll();
  } catch (err) {
    if (err.status === 403) { // shown in the forbidden banner: the engine is there
      offline.hidden = true;
      setStatus("forbidden", "token lacks the read scope");
      return;
    }
    offline.hidden = false;
    offline.textContent = `Cannot reach the engine at ${location.origin}: ${err.message}. ` +
      "Retrying every second.";
    setStatus("offline", "engine unreachable");
  }
}

function renderDriftBanner() {
  const banner = document.getElementById("drift-banner");
  const drifting = driftingFeatures(state.stats.models);
  banner.hidden = drifting.length === 0;
  const byModel = new Map();
  for (const d of drifting) {
    const key = `${d.model} ${d.version}`;
    byModel.set(key, [...(byModel.get(key) ?? []), d]);
  }
  banner.replaceChildren(...[...byModel].map(([model, features]) => el("p", {
    "data-testid": "drift-line",
  }, `Input drift on ${model}: ` + features.map((d) =>
    `${d.feature} (PSI ${Number.isFinite(d.psi) ? d.psi.toFixed(2) : "∞"})`).join(", "),
  el("span", { class: "detail" }, " — above the bundle's drift threshold"))));
}

export function startLive() {
  state.monitor = new MonitorView();
  const stageSeries = STAGES.map((s) => ({ key: `err_${s}`, label: s, color: STAGE_COLORS[s] }));
  state.charts = {
    throughput: new LineChart(document.getElementById("chart-throughput"), {
      series: [{ key: "rps", label: "requests/s", color: COLORS.blue },
        { key: "recps", label: "records/s", color: COLORS.green }],
      format: fmtRate,
    }),
    latency: new LineChart(document.getElementById("chart-latency"), {
      empty: `no requests in the last ${WINDOW_S} s`,
      series: [{ key: "p50", label: "p50", color: COLORS.green },
        { key: "p90", label: "p90", color: COLORS.amber },
        { key: "p99", label: "p99", color: COLORS.red }],
      format: fmtSeconds,
    }),
    errors: new LineChart(document.getElementById("chart-errors"), {
      series: stageSeries, format: fmtRate,
    }),
    cpu: new LineChart(document.getElementById("chart-cpu"), {
      series: [{ key: "cpu", label: "CPU", color: COLORS.blue }], format: fmtPercent,
    }),
    memory: new LineChart(document.getElementById("chart-memory"), {
      series: [{ key: "memMiB", label: "resident memory", color: COLORS.purple }],
      format: (v) => `${v >= 10 || v === 0 ? v.toFixed(0) : v.toFixed(1)} MiB`,
    }),
  };
  document.getElementById("model-select").addEventListener("change", (e) => {
    select(e.target.value);
  });
  const loop = async () => {
    const started = performance.now();
    await tick();
    setTimeout(loop, Math.max(0, POLL_MS - (performance.now() - started)));
  };
  loop();
}
