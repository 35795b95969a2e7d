// The registry view: versions, stages, approvals and the audit trail, through the engine's
// same-origin proxy (/ui/api/registry). The user's registry token is kept in sessionStorage
// and sent with each call (the engine checks it has 'read', the registry decides the rest);
// until the user signs in with another, the engine token is tried (a registry-issued
// token is both).

import { authFetch, engineToken } from "./auth.js";
import { el, fmtTime, shortDigest } from "./dom.js";

const API = "/ui/api/registry";
const TOKEN_KEY = "baton.registry-token";
const DECIDERS = ["approver", "admin"]; // who the registry lets approve (it checks; we hint)
const REFRESH_MS = 10000;
const AUDIT_ROWS = 100;

// session counts sign-ins and sign-outs, refreshes counts refreshes: the results of a
// refresh overtaken by either are dropped, so a slow answer never paints over a newer one.
const reg = { me: null, timer: null, names: [], session: 0, refreshes: 0, signedOut: false };

class RegistryFailure extends Error {
  constructor(status, body) {
    super(body?.error ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.code ?? "ERROR";
    this.scope = body?.details?.scope; // set when the engine, not the registry, refused
  }
}

/** The token for registry calls: the one signed in with, else the engine's own. */
function registryToken() {
  return sessionStorage.getItem(TOKEN_KEY) ?? (reg.signedOut ? null : engineToken());
}

async function call(method, path, body, token = registryToken()) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  let resp;
  try {
    resp = await fetch(API + path, {
      method, headers, cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new RegistryFailure(0, { error: `cannot reach the engine: ${err.message}`,
      code: "NETWORK_ERROR" });
  }
  let data;
  try {
    data = await resp.json();
  } catch {
    data = { error: `HTTP ${resp.status} with a body that is not JSON` };
  }
  if (!resp.ok) throw new RegistryFailure(resp.status, data);
  return data;
}

function explain(action, err) {
  const status = err.status ? `HTTP ${err.status} ${err.code}` : err.code;
  if (err.status === 403 && err.scope) {
    return `Refused by this engine: the token lacks the '${err.scope}' scope (${status})`;
  }
  if (err.status === 403) return `Refused by the registry: ${err.message} (${status})`;
  if (err.status === 401) return `The registry did not accept this token: ${err.message} (${status})`;
  return `${action} failed: ${err.message} (${status})`;
}

function message(kind, text, status) {
  const box = document.getElementById("registry-message");
  box.hidden = !text;
  box.dataset.kind = kind;
  box.dataset.status = status ?? "";
  box.textContent = text ?? "";
}

const enc = encodeURIComponent;

function approvalsCell(details) {
  const approvals = details?.approvals;
  if (!approvals) return el("td", { class: "muted" }, "—");
  if (!approvals.length) return el("td", { class: "muted", "data-testid": "approvals" }, "none");
  return el("td", { class: "small", "data-testid": "approvals" }, approvals.map((a) => el("div", {
    "data-user": a.user, "data-decision": a.decision,
  }, el("strong", {}, `${a.decision === "approve" ? "✓ approved" : "✗ rejected"} by ${a.user}`),
  a.reason ? `: ${a.reason}` : "")));
}

// The handoff report the registry wrote when it validated the version: fetched with the
// signed-in token (a plain link could not carry it) and saved as a file. Not opened from a
// blob in a tab: that page would inherit this page's policy, which forbids its inline style;
// a saved page is also what gets attached to a change ticket.
function reportLink(b, details) {
  if (!details?.report) return null;
  const link = el("a", { href: "#", class: "small report-link",
    "data-testid": `report-${b.name}-${b.version}`,
    title: "the handoff report: what an approver reads before approving" }, "report");
  link.addEventListener("click", (event) => {
    event.preventDefault();
    saveReport(b);
  });
  return [" ", link];
}

async function saveReport(b) {
  const token = registryToken();
  try {
    const resp = await fetch(`${API}/bundles/${enc(b.name)}/${enc(b.version)}/report.html`, {
      headers: token ? { authorization: `Bearer ${token}` } : {}, cache: "no-store",
    });
    if (!resp.ok) throw new RegistryFailure(resp.status, await resp.json().catch(() => ({})));
    const url = URL.createObjectURL(new Blob([await resp.text()], { type: "text/html" }));
    const save = el("a", { href: url, download: `${b.name}-${b.version}-report.html` });
    document.body.append(save);
    save.click();
    save.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    message("error", explain("Fetching the report", err), err.status);
  }
}

function decideCell(b, details) {
  if (b.stage !== "validated" && b.stage !== "staging") return el("td", { class: "muted" }, "—");
  const mine = (details?.approvals ?? []).find((a) => a.user === reg.me?.name);
  if (mine) {
    return el("td", { class: "small muted", "data-testid": "decided" },
      `You ${mine.decision === "approve" ? "approved" : "rejected"} this version.`);
  }
  const id = `${b.name}-${b.version}`;
  const reason = el("input", {
    type: "text", placeholder: "reason (required)", "data-testid": `reason-${id}`,
    "aria-label": `reason to approve or reject ${b.name} ${b.version}`,
  });
  const approve = el("button", { type: "button", "data-testid": `approve-${id}` }, "Approve");
  const reject = el("button", { type: "button", class: "danger", "data-testid": `reject-${id}` },
    "Reject");
  const buttons = [approve, reject];
  approve.addEventListener("click", () => decide(b, "approve", reason, buttons));
  reject.addEventListener("click", () => decide(b, "reject", reason, buttons));
  const role = reg.me?.role;
  const hint = role && !DECIDERS.includes(role)
    ? el("div", { class: "small muted" },
      `Your role (${role}) may not approve: the registry will refuse.`)
    : null;
  return el("td", {}, el("div", { class: "decide" }, reason, approve, reject), hint);
}

async function decide(b, decision, reasonInput, buttons) {
  for (const button of buttons) button.disabled = true;
  const what = `${b.name} ${b.version}`;
  try {
    const out = await call("POST", `/bundles/${enc(b.name)}/${enc(b.version)}/${decision}`,
      { reason: reasonInput.value });
    const n = (out.approvals ?? []).filter((a) => a.decision === "approve").length;
    message("ok", `${decision === "approve" ? "Approved" : "Rejected"} ${what} as ` +
      `${reg.me?.name ?? "you"}: it is ${out.stage} with ${n} approval${n === 1 ? "" : "s"}.`,
    200);
  } catch (err) {
    message("error", explain(decision === "approve" ? "Approval" : "Rejection", err),
      err.status);
  } finally {
    for (const button of buttons) button.disabled = false;
  }
  await refresh();
}

function renderBundles(bundles, details) {
  const byName = new Map();
  for (const b of bundles) byName.set(b.name, [...(byName.get(b.name) ?? []), b]);
  const rows = [];
  for (const [, versions] of byName) {
    for (const b of [...versions].reverse()) { // newest first within a model
      rows.push(el("tr", { "data-testid": `bundle-${b.name}-${b.version}`, "data-stage": b.stage },
        el("td", {}, el("strong", {}, b.name)),
        el("td", {}, b.version, reportLink(b, details.get(`${b.name}@${b.version}`))),
        el("td", {}, el("span", { class: `badge stage-${b.stage}`, "data-testid": "stage" },
          b.stage)),
        el("td", {}, b.author),
        el("td", {}, el("code", { title: b.digest }, shortDigest(b.digest))),
        approvalsCell(details.get(`${b.name}@${b.version}`)),
        el("td", { class: "small" }, fmtTime(b.created_at)),
        decideCell(b, details.get(`${b.name}@${b.version}`))));
    }
  }
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 8, class: "muted" },
    "The registry holds no bundle yet.")));
  document.getElementById("bundles-body").replaceChildren(...rows);
}

function subject(e) {
  if (e.name) return `${e.name}${e.version ? ` ${e.version}` : ""}`;
  const d = e.details ?? {};
  return d.user ? `user ${d.user}${d.role ? ` (${d.role})` : ""}` : "—";
}

function renderAudit(events) {
  const rows = events.slice(-AUDIT_ROWS).reverse().map((e) => el("tr", {
    "data-testid": "audit-row", "data-action": e.action, "data-actor": e.actor,
  },
  el("td", { class: "small" }, fmtTime(e.time)),
  el("td", {}, e.actor),
  el("td", {}, el("span", { class: "badge" }, e.action)),
  el("td", {}, subject(e)),
  el("td", { class: "small" }, e.from && e.to && e.from !== e.to ? `${e.from} → ${e.to}`
    : e.to ?? "—"),
  el("td", { class: "small" }, e.reason || "")));
  if (!rows.length) rows.push(el("tr", {}, el("td", { colspan: 6, class: "muted" }, "No events.")));
  document.getElementById("audit-body").replaceChildren(...rows);
}

function renderAuditFilter(names) {
  const select = document.getElementById("audit-filter");
  if (names.join("\n") === reg.names.join("\n")) return;
  reg.names = names;
  const current = select.value;
  select.replaceChildren(el("option", { value: "" }, "all models"),
    ...names.map((n) => el("option", { value: n }, n)));
  select.value = names.includes(current) ? current : "";
}

async function refresh() {
  if (!reg.me) return;
  const session = reg.session;
  const seq = ++reg.refreshes;
  const stale = () => session !== reg.session || seq !== reg.refreshes;
  const token = registryToken();
  const get = (path) => call("GET", path, undefined, token);
  try {
    const { bundles } = await get("/bundles");
    // Approvals matter where a version is, or may go, live: fetch those versions' details.
    const decided = bundles.filter((b) => ["validated", "staging", "production"]
      .includes(b.stage));
    const shown = await Promise.all(decided.map((b) =>
      get(`/bundles/${enc(b.name)}/${enc(b.version)}`)));
    if (stale()) return;
    const details = new Map(shown.map((d) => [`${d.name}@${d.version}`, d]));
    renderBundles(bundles, details);
    renderAuditFilter([...new Set(bundles.map((b) => b.name))]);
    const name = document.getElementById("audit-filter").value;
    const { events } = await get(name ? `/history/${enc(name)}` : `/audit?last=${AUDIT_ROWS}`);
    if (stale()) return;
    renderAudit(events);
  } catch (err) {
    if (!stale()) message("error", explain("Reading the registry", err), err.status);
  }
}

async function signIn() {
  const whoami = document.getElementById("whoami");
  const session = ++reg.session;
  try {
    const me = await call("GET", "/whoami");
    if (session !== reg.session) return;
    reg.me = me;
  } catch (err) {
    if (session !== reg.session) return;
    reg.me = null;
    whoami.textContent = "";
    if (err.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      reg.signedOut = true; // not the engine token again: the user signs in
    }
    message("error", explain("Sign-in", err), err.status);
    return;
  }
  whoami.textContent = `Signed in as ${reg.me.name} (${reg.me.role})`;
  whoami.dataset.role = reg.me.role;
  document.getElementById("sign-out").hidden = false;
  document.getElementById("registry-body").hidden = false;
  message("info", null);
  await refresh();
  clearInterval(reg.timer);
  reg.timer = setInterval(refresh, REFRESH_MS);
}

function signOut() {
  reg.session++;
  reg.signedOut = true;
  sessionStorage.removeItem(TOKEN_KEY);
  reg.me = null;
  clearInterval(reg.timer);
  document.getElementById("whoami").textContent = "";
  document.getElementById("sign-out").hidden = true;
  document.getElementById("registry-body").hidden = true;
  document.getElementById("bundles-body").replaceChildren();
  document.getElementById("audit-body").replaceChildren();
  message("info", "Signed out.");
}

export async function startRegistry() {
  const off = document.getElementById("registry-off");
  let info;
  try {
    // The engine's own route (it names the registry): asks for an engine token if needed.
    const resp = await authFetch(API);
    info = await resp.json();
    if (!resp.ok) throw new RegistryFailure(resp.status, info);
  } catch (err) {
    if (!(err instanceof RegistryFailure)) err = new RegistryFailure(0, { error: err.message });
    off.hidden = false;
    off.textContent = explain("Asking the engine about its registry", err);
    return;
  }
  if (!info.url) {
    off.hidden = false;
    off.textContent = "This engine serves bundles given on the command line, not from a " +
      "registry: there are no versions, stages or approvals to show. Start it with " +
      "--registry to see them here.";
    return;
  }
  document.getElementById("registry-on").hidden = false;
  document.getElementById("registry-info").textContent =
    `This engine serves the ${info.stage} stage of the registry at ${info.url}.`;
  document.getElementById("token-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const input = document.getElementById("token-input");
    const token = input.value.trim();
    if (!token) { message("error", "Paste a registry token first."); return; }
    sessionStorage.setItem(TOKEN_KEY, token);
    reg.signedOut = false;
    input.value = "";
    signIn();
  });
  document.getElementById("sign-out").addEventListener("click", signOut);
  document.getElementById("audit-filter").addEventListener("change", refresh);
  if (registryToken()) await signIn();
}
