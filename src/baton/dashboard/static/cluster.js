// A Ray cluster's engine (`baton serve --ray`): its /v1/stats has one entry per model
// replica, each with `replica`, `node` and `node_ip`. mergeReplicas() folds them into one
// entry per served version, the way one engine reports it, so every view of the page works
// unchanged; renderReplicas() shows each replica and its node.

import { el, fmtPercent, fmtRate, versionKey } from "./dom.js";

const sum = (list, get) => list.reduce((n, x) => n + (get(x) ?? 0), 0);

/** The key of a replica's own figures (its rates and CPU are computed like a version's). */
export function replicaKey(r) {
  return `replica:${r.replica}`;
}

function addCounts(into, from) {
  for (const [k, n] of Object.entries(from ?? {})) into[k] = (into[k] ?? 0) + n;
  return into;
}

/** Counters summed; a mean weighted by requests; a quantile as the largest of the
 * replicas' (an upper bound of the cluster's: the page says "≤"); quality as the busiest
 * replica measured it. */
function mergeMetrics(list, busiest) {
  const withMetrics = list.filter((r) => r.metrics);
  if (!withMetrics.length) return null;
  const ms = withMetrics.map((r) => r.metrics);
  const requests = sum(ms, (m) => m.requests);
  const weighted = (get) => {
    const known = ms.filter((m) => get(m) != null && m.requests > 0);
    const n = sum(known, (m) => m.requests);
    return n > 0 ? sum(known, (m) => get(m) * m.requests) / n : null;
  };
  const quantile = (q) => {
    const known = ms.map((m) => m.latency_seconds?.[q]).filter((v) => v != null);
    return known.length ? Math.max(...known) : null;
  };
  const stages = new Set(ms.flatMap((m) => Object.keys(m.stage_mean_seconds ?? {})));
  return {
    requests,
    records: sum(ms, (m) => m.records),
    errors: sum(ms, (m) => m.errors),
    errors_by_stage: ms.reduce((acc, m) => addCounts(acc, m.errors_by_stage), {}),
    errors_by_code: ms.reduce((acc, m) => addCounts(acc, m.errors_by_code), {}),
    latency_seconds: { p50: quantile("p50"), p90: quantile("p90"), p99: quantile("p99") },
    stage_mean_seconds: Object.fromEntries([...stages].map((s) =>
      [s, weighted((m) => m.stage_mean_seconds?.[s])])),
    batch_rows_mean: weighted((m) => m.batch_rows_mean),
    quality: busiest.metrics?.quality ?? null,
  };
}

/** One entry per served version from a cluster's per-replica entries. While a new version
 * rolls out, a model's row shows the version most of its replicas serve (the replicas
 * table shows each); its drift and quality are its busiest replica's, whose traffic is a
 * share of the same stream. */
export function mergeReplicas(entries) {
  const groups = new Map();
  for (const e of entries) {
    const key = versionKey(e);
    groups.set(key, [...(groups.get(key) ?? []), e]);
  }
  const merged = [];
  for (const group of groups.values()) {
    const byVersion = new Map();
    for (const e of group) byVersion.set(e.version, [...(byVersion.get(e.version) ?? []), e]);
    const list = [...byVersion.values()].sort((a, b) => b.length - a.length)[0];
    const busiest = [...list].sort((a, b) =>
      (b.metrics?.requests ?? 0) - (a.metrics?.requests ?? 0))[0];
    const failures = list.map((r) => r.last_failure).filter(Boolean)
      .sort((a, b) => b.time - a.time);
    merged.push({
      name: busiest.name, version: busiest.version, role: busiest.role,
      digest: busiest.digest, ready: list.some((r) => r.ready),
      queued_rows: sum(list, (r) => r.queued_rows), in_flight: sum(list, (r) => r.in_flight),
      restarts: sum(list, (r) => r.restarts), last_failure: failures[0] ?? null,
      workers: list.flatMap((r) => r.workers.map((w) => ({ ...w, key: `${r.replica}/${w.pid}`,
        node: r.node }))),
      traffic: null, metrics: mergeMetrics(list, busiest),
      drift: busiest.drift, drift_alerts: busiest.drift_alerts ?? [],
    });
  }
  return merged;
}

function shortNode(r) {
  const id = r.node ? r.node.slice(0, 12) : "?";
  return r.node_ip ? `${r.node_ip} · ${id}` : id;
}

/** The replicas table: one row per model replica, with its node and its own figures. */
export function renderReplicas(replicas, latestPoint) {
  const section = document.getElementById("replicas");
  section.hidden = replicas == null;
  if (replicas == null) return;
  const sorted = [...replicas].sort((a, b) =>
    a.name.localeCompare(b.name) || shortNode(a).localeCompare(shortNode(b)));
  const rows = sorted.map((r) => {
    const p = latestPoint(replicaKey(r));
    const ready = r.workers.filter((w) => w.state === "ready").length;
    return el("tr", { "data-testid": `replica-row-${r.replica}`, "data-node": r.node ?? "" },
      el("td", {}, el("strong", {}, r.name)),
      el("td", { "data-testid": "replica-id" }, el("code", {}, r.replica)),
      el("td", { "data-testid": "replica-node", title: r.node ?? "" }, shortNode(r)),
      el("td", {}, r.version),
      el("td", {}, el("span", { class: `badge ${r.ready ? "ok" : "bad"}` },
        r.ready ? "ready" : "not ready"),
      el("div", { class: "small muted" }, `${ready}/${r.workers.length} workers ready`)),
      el("td", { class: "num" }, String(r.restarts)),
      el("td", { class: "num", "data-testid": "replica-rps" }, fmtRate(p?.rps)),
      el("td", { class: "num" }, fmtPercent(p?.cpu)));
  });
  if (!rows.length) {
    rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" },
      "No replica has reported yet.")));
  }
  const nodes = new Set(replicas.map((r) => r.node));
  document.getElementById("replicas-summary").textContent =
    `${replicas.length} replica${replicas.length === 1 ? "" : "s"} on ${nodes.size} ` +
    `node${nodes.size === 1 ? "" : "s"} of a Ray cluster`;
  document.getElementById("replicas-body").replaceChildren(...rows);
}
