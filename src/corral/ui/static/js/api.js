// Mission Control's HTTP client: same-origin fetch with the session cookie, errors as ApiError.
//
// The API key never reaches JavaScript storage: /api/login turns it into an HttpOnly,
// SameSite=Strict cookie and every later call rides on that cookie.

export class ApiError extends Error {
  constructor(status, message, body) {
    super(message);
    this.name = "ApiError";
    this.status = status; // 0 when the server could not be reached
    this.body = body;
  }
  get unauthorized() {
    return this.status === 401;
  }
  get offline() {
    return this.status === 0;
  }
}

const listeners = { unauthorized: new Set(), offline: new Set(), online: new Set() };

/** Subscribe to "unauthorized" (session gone), "offline" (server unreachable) or "online". */
export function on(kind, fn) {
  listeners[kind].add(fn);
  return () => listeners[kind].delete(fn);
}

export function emit(kind, detail) {
  for (const fn of listeners[kind]) {
    try {
      fn(detail);
    } catch (err) {
      console.warn(err);
    }
  }
}

function messageOf(status, body, fallback) {
  if (body && typeof body === "object") {
    if (body.error && typeof body.error.message === "string") return body.error.message;
    if (typeof body.message === "string") return body.message;
  }
  return fallback || `the server answered ${status}`;
}

/**
 * Call the API. `body` (an object) is sent as JSON; a string is sent as text/yaml.
 * Resolves to the parsed JSON (or text for non-JSON answers); rejects with ApiError.
 */
export async function api(path, { method, body, signal, quiet401 = false } = {}) {
  const init = { method: method || (body === undefined ? "GET" : "POST"), credentials: "same-origin", signal };
  init.headers = { accept: "application/json" };
  if (typeof body === "string") {
    init.headers["content-type"] = "text/yaml";
    init.body = body;
  } else if (body !== undefined) {
    init.headers["content-type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err && err.name === "AbortError") throw err;
    emit("offline");
    throw new ApiError(0, "corral is not answering; it may be restarting. Retrying…");
  }
  emit("online");
  const type = response.headers.get("content-type") || "";
  const data = type.includes("json") ? await response.json().catch(() => null) : await response.text();
  if (!response.ok) {
    const error = new ApiError(response.status, messageOf(response.status, data, response.statusText), data);
    if (response.status === 401 && !quiet401) emit("unauthorized", error);
    throw error;
  }
  return data;
}

/** Download `text` as a file named `name` (export of YAML, saved sessions). */
export function download(name, text, type = "application/json") {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Let the user pick a file and resolve to its text (import of YAML or a saved session). */
export function pickFile(accept) {
  return new Promise((resolve, reject) => {
    const input = document.createElement("input");
    input.type = "file";
    input.accept = accept;
    input.addEventListener("change", () => {
      const file = input.files && input.files[0];
      if (!file) return reject(new Error("no file chosen"));
      file.text().then(resolve, reject);
    });
    input.click();
  });
}
