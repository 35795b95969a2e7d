// The engine's own token: asked for when an engine API answers 401, kept in this tab's
// sessionStorage (never in a URL), sent as "Authorization: Bearer". A 403 is shown as
// such: the token is valid but lacks the scope that call needs.

const KEY = "baton.token";
let pending = null; // one prompt, however many calls are waiting for a token

export function engineToken() {
  return sessionStorage.getItem(KEY);
}

/** fetch() with the engine token; on 401 asks for a token and tries again. */
export async function authFetch(url, init = {}) {
  for (;;) {
    const token = engineToken();
    const headers = new Headers(init.headers ?? {});
    if (token) headers.set("authorization", `Bearer ${token}`);
    const resp = await fetch(url, { cache: "no-store", ...init, headers });
    if (resp.status === 401) {
      if (token !== engineToken()) continue; // a new token arrived while this call ran
      await askForToken(await bodyOf(resp), Boolean(token));
      continue;
    }
    if (resp.status === 403) showForbidden(url, await bodyOf(resp));
    else if (resp.ok) hideForbidden(url);
    return resp;
  }
}

async function bodyOf(resp) {
  try {
    return await resp.clone().json();
  } catch {
    return {};
  }
}

function askForToken(body, refused) {
  if (pending) return pending; // the first refusal's reason stays on screen
  if (refused) sessionStorage.removeItem(KEY);
  const form = document.getElementById("auth-form");
  const reason = document.getElementById("auth-reason");
  reason.dataset.code = body.code ?? "";
  reason.textContent = refused
    ? `The engine did not accept this token: ${body.error ?? "refused"} (${body.code ?? "401"}).`
    : "This engine asks for a token. Paste one with the 'read' scope to see its models " +
      "and figures.";
  form.hidden = false;
  const input = document.getElementById("auth-token");
  input.focus();
  pending = new Promise((resolve) => {
    form.onsubmit = (e) => {
      e.preventDefault();
      const token = input.value.trim();
      if (!token) return;
      sessionStorage.setItem(KEY, token);
      input.value = "";
      form.hidden = true;
      form.onsubmit = null;
      pending = null;
      resolve();
    };
  });
  return pending;
}

const refused = new Map(); // path -> {needed, held, code} of its latest 403

function showForbidden(url, body) {
  refused.set(new URL(url, location.origin).pathname, {
    needed: body.details?.scope ?? "?", held: body.details?.scopes ?? [],
    code: body.code ?? "FORBIDDEN",
  });
  renderForbidden();
}

function hideForbidden(url) {
  if (refused.delete(new URL(url, location.origin).pathname)) renderForbidden();
}

function renderForbidden() {
  const banner = document.getElementById("forbidden-banner");
  banner.hidden = refused.size === 0;
  banner.dataset.status = refused.size ? "403" : "";
  const byScope = new Map(); // one sentence per missing scope
  for (const [path, r] of refused) {
    const entry = byScope.get(r.needed) ?? { paths: [], held: r.held, code: r.code };
    entry.paths.push(path);
    byScope.set(r.needed, entry);
  }
  document.getElementById("forbidden-text").textContent = [...byScope].map(([needed, e]) =>
    `This token (scopes: ${e.held.join(", ") || "none"}) lacks the '${needed}' scope that ` +
    `${e.paths.join(", ")} ${e.paths.length > 1 ? "need" : "needs"} ` +
    `(HTTP 403 ${e.code}).`).join(" ");
}

/** Forget the engine token and start again: the page asks for another. */
export function switchToken() {
  sessionStorage.removeItem(KEY);
  location.reload();
}
