// Small helpers shared by the dashboard's views. Text always goes in as text, never as HTML.

/** el("td", {class: "num", "data-x": 1}, "text", childNode, ...) */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v == null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "title") node.title = v;
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child == null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export function fmtRate(v) {
  if (v == null) return "—";
  return String(parseFloat(v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)));
}

export function fmtSeconds(s) {
  if (s == null) return "—";
  if (!Number.isFinite(s)) return "> 10 s";
  if (s === 0) return "0";
  const short = (v) => String(parseFloat(v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2)));
  if (s < 0.001) return `${(s * 1e6).toFixed(0)} µs`;
  if (s < 1) return `${short(s * 1000)} ms`;
  return `${short(s)} s`;
}

export function fmtBytes(b) {
  if (b == null) return "—";
  if (b === 0) return "0";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (b >= 1024 && i < units.length - 1) { b /= 1024; i++; }
  return `${b.toFixed(b >= 100 || i === 0 ? 0 : 1)} ${units[i]}`;
}

export function fmtPercent(v) {
  return v == null ? "—" : `${parseFloat(v.toFixed(v >= 10 ? 0 : 2))}%`;
}

export function fmtAgo(epochSeconds, now = Date.now() / 1000) {
  const d = Math.max(0, now - epochSeconds);
  if (d < 60) return `${d.toFixed(0)}s ago`;
  if (d < 3600) return `${(d / 60).toFixed(0)} min ago`;
  if (d < 86400) return `${(d / 3600).toFixed(1)} h ago`;
  return `${(d / 86400).toFixed(1)} days ago`;
}

export function fmtTime(iso) {
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

export function shortDigest(digest) {
  return digest ? digest.replace(/^sha256:/, "").slice(0, 12) : "—";
}

/** A figure tile: its shown text and the raw number in data-value. */
export function setFigure(testid, value, format, alert = false) {
  const node = document.querySelector(`[data-testid="${testid}"]`);
  node.dataset.value = value == null ? "" : String(value);
  node.querySelector(".value").textContent = format(value);
  node.classList.toggle("alert", alert);
}

/** A canary's weight (0..1) as a percentage: 0.1 -> "10%", 0.125 -> "12.5%". */
export function fmtWeight(w) {
  return `${parseFloat((w * 100).toPrecision(4))}%`;
}

/** Which entry of /v1/stats a row stands for: the model's name for its live version, and
 * "name:canary" / "name:shadow" for a candidate (":" is never in a model's name). */
export function versionKey(m) {
  return !m.role || m.role === "live" ? m.name : `${m.name}:${m.role}`;
}

/** A served version's role as `baton status` shows it: "canary 10%", "shadow", "live"
 * (only beside a candidate), or "" for a version served alone. */
export function roleLabel(m) {
  const role = m.role ?? "live";
  if (role === "canary") {
    const w = m.traffic?.weight;
    return w == null ? "canary" : `canary ${fmtWeight(w)}`;
  }
  if (role === "shadow") return "shadow";
  return m.traffic ? "live" : "";
}

/** "1.1.0 (canary 10%)", "1.0.0 (live)", or just "1.0.0". */
export function versionLabel(m) {
  const role = roleLabel(m);
  return role ? `${m.version} (${role})` : m.version;
}
