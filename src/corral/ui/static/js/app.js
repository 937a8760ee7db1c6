// Mission Control's shell: login, header and nav, hash router, toasts, the connection banner,
// and the character that follows the agent's live events. Views load on first use (dynamic
// import), so the dashboard never downloads the graph, history or editor code.

import { api, ApiError, on as onApi } from "./api.js";
import { Live, stream } from "./live.js";
import { createCharacter } from "./character.js";

const VIEWS = {
  dashboard: { title: "Dashboard", load: () => import("./dashboard.js") },
  chat: { title: "Chat", load: () => import("./chat.js") },
  workflows: { title: "Workflows", load: () => import("./workflows.js") },
  history: { title: "History", load: () => import("./history.js") },
  editor: { title: "Editor", load: () => import("./editor.js") },
  voice: { title: "Voice", load: () => import("./voice.js") },
  archive: { title: "Archive", load: () => import("./archive.js") },
  incidents: { title: "Incidents", load: () => import("./incidents.js") },
};
const DEFAULT_VIEW = "dashboard";

const $ = (id) => document.getElementById(id);
const els = {
  login: $("login"),
  loginForm: $("login-form"),
  loginKey: $("login-key"),
  loginNote: $("login-note"),
  loginError: $("login-error"),
  loginSubmit: $("login-submit"),
  app: $("app"),
  main: $("main"),
  who: $("who"),
  logout: $("logout"),
  banner: $("banner"),
  toasts: $("toasts"),
};

let me = null; // {key_id, name, scope, expires_at} while logged in
const live = new Live();
let current = null; // {hash, unmount}
let routeToken = 0;

// --- toasts ---------------------------------------------------------------------------------

function toast(message, kind = "info") {
  const item = document.createElement("div");
  item.className = `toast toast-${kind}`;
  item.dataset.testid = "toast";
  if (kind === "error") item.setAttribute("role", "alert");
  const text = document.createElement("span");
  text.textContent = String(message);
  const close = document.createElement("button");
  close.type = "button";
  close.className = "toast-close";
  close.setAttribute("aria-label", "Dismiss");
  close.textContent = "×";
  const remove = () => item.remove();
  close.addEventListener("click", remove);
  item.append(text, close);
  els.toasts.append(item);
  while (els.toasts.children.length > 5) els.toasts.firstElementChild.remove();
  setTimeout(remove, kind === "error" ? 12000 : 6000);
}

// --- character, driven by the agent's events ------------------------------------------------

const character = createCharacter("idle");
$("character-slot").replaceWith(character.el);

const activeRuns = new Set(); // run ids seen running
const waitingGates = new Set(); // gate ids waiting for a person
const nodeTypes = new Map(); // "run/node" -> node type
let speakingUntil = 0;
let speakingTimer = null;
let manualState = ""; // what a view asked for (e.g. "listening" while typing)

function refreshCharacter() {
  let state = manualState || "idle";
  if (waitingGates.size) state = "waiting";
  else if (Date.now() < speakingUntil) state = "speaking";
  else if (activeRuns.size) state = manualState === "speaking" ? "speaking" : "thinking";
  character.set(state);
}

const characterApi = {
  set(state) {
    manualState = state === "idle" ? "" : state;
    refreshCharacter();
  },
  get state() {
    return character.state;
  },
};

function forgetRun(runId) {
  activeRuns.delete(runId);
  for (const key of nodeTypes.keys()) if (key.startsWith(`${runId}/`)) nodeTypes.delete(key);
}

live.on("event", (e) => {
  if (!e || !e.type) return;
  const data = e.data || {};
  switch (e.type) {
    case "run.finished":
    case "run.failed":
    case "run.cancelled":
      forgetRun(e.run_id);
      if (!activeRuns.size) manualState = "";
      break;
    case "node.started":
      activeRuns.add(e.run_id);
      nodeTypes.set(`${e.run_id}/${e.node_id}`, data.type);
      break;
    case "node.token":
      activeRuns.add(e.run_id);
      if (nodeTypes.get(`${e.run_id}/${e.node_id}`) === "llm") {
        speakingUntil = Date.now() + 1200;
        clearTimeout(speakingTimer);
        speakingTimer = setTimeout(refreshCharacter, 1250);
      }
      break;
    case "gate.waiting":
      activeRuns.add(e.run_id);
      if (data.gate_id) waitingGates.add(data.gate_id);
      break;
    case "gate.resolved":
      waitingGates.delete(data.gate_id);
      break;
    default:
      // voice.turn summaries arrive after their run has ended: they start nothing
      if (!e.type.startsWith("voice.")) activeRuns.add(e.run_id);
  }
  refreshCharacter();
});

async function resyncGates() {
  // After a reconnect we may have missed events: start over from what the server says.
  activeRuns.clear();
  waitingGates.clear();
  nodeTypes.clear();
  try {
    const { gates = [] } = await api("/api/gates");
    for (const gate of gates) if (gate.status === undefined || gate.status === "pending") waitingGates.add(gate.id);
  } catch {
    // offline or no agent: the banner or the views say so
  }
  refreshCharacter();
}

// --- connection banner ----------------------------------------------------------------------

let apiOffline = false;
let liveWasOpen = false;
let liveSlowTimer = null;
let liveSlow = false;

function refreshBanner() {
  const lost = Boolean(me) && (apiOffline || (live.state !== "open" && (liveWasOpen || liveSlow)));
  els.banner.hidden = !lost;
}

onApi("offline", () => {
  apiOffline = true;
  refreshBanner();
});
onApi("online", () => {
  apiOffline = false;
  refreshBanner();
});
// A socket refused for a lost session may close without code 1008 (a refused handshake reads
// as 1006 in the browser): ask /api/me, whose 401 raises "unauthorized" through api.js.
let lastProbe = 0;
function probeSession() {
  if (!me || Date.now() - lastProbe < 5000) return;
  lastProbe = Date.now();
  api("/api/me").catch(() => {});
}

live.on("state", (state) => {
  clearTimeout(liveSlowTimer);
  if (state === "closed" && me && !live.stopped) probeSession();
  if (state === "open") {
    liveSlow = false;
    if (liveWasOpen) resyncGates();
    liveWasOpen = true;
  } else if (me && !live.stopped) {
    liveSlowTimer = setTimeout(() => {
      liveSlow = true;
      refreshBanner();
    }, 4000);
  }
  refreshBanner();
});

// --- login / logout -------------------------------------------------------------------------

/** Show the login screen. At boot (`fresh` false) it is already there and may hold typing. */
function showLogin(note = "", fresh = true) {
  me = null;
  els.app.hidden = true;
  els.banner.hidden = true;
  els.login.hidden = false;
  els.loginNote.textContent = note;
  els.loginNote.hidden = !note;
  if (!fresh) return;
  els.login.classList.remove("login-boot");
  els.loginError.textContent = "";
  els.loginKey.value = "";
  els.loginSubmit.disabled = false;
  els.loginKey.focus();
}

function showApp() {
  els.login.hidden = true;
  els.login.classList.remove("login-boot");
  els.app.hidden = false;
  els.who.textContent = `${me.name || me.key_id || "signed in"} · ${me.scope}`;
  els.who.title = typeof me.expires_at === "number" ? `session until ${new Date(me.expires_at * 1000).toLocaleString()}` : "";
}

function enter(user) {
  me = user;
  liveWasOpen = false;
  liveSlow = false;
  showApp();
  live.start();
  resyncGates();
  route();
}

function leave(note) {
  live.stop();
  unmountCurrent();
  els.main.replaceChildren();
  activeRuns.clear();
  waitingGates.clear();
  manualState = "";
  refreshCharacter();
  showLogin(note);
}

els.loginForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const key = els.loginKey.value.trim();
  els.loginError.textContent = "";
  if (!key) {
    els.loginError.textContent = "Enter your API key (it starts with crl_).";
    els.loginKey.focus();
    return;
  }
  els.loginSubmit.disabled = true;
  try {
    await api("/api/login", { body: { key }, quiet401: true });
  } catch (err) {
    loginFailed(err);
    return;
  }
  try {
    const user = await api("/api/me", { quiet401: true });
    els.loginKey.value = "";
    enter(user);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      els.loginSubmit.disabled = false;
      els.loginError.textContent = "The key was accepted, but this browser did not keep the session cookie. Allow cookies for this site and try again.";
      return;
    }
    loginFailed(err);
  }
});

function loginFailed(err) {
  els.loginSubmit.disabled = false;
  if (err instanceof ApiError && err.status === 401) {
    els.loginError.textContent = "That key was not accepted. Check it and try again, or ask your admin for a new one.";
  } else {
    els.loginError.textContent = err.message || "Logging in failed; try again.";
  }
  els.loginKey.select();
}

els.logout.addEventListener("click", async () => {
  try {
    await api("/api/logout", { method: "POST", quiet401: true });
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      toast(`Logging out failed: ${err.message}`, "error");
      return;
    }
  }
  leave("You have logged out.");
});

onApi("unauthorized", () => {
  if (!me) return;
  leave("Your session expired — log in again.");
});

// --- router ---------------------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.replace(/^#\/?/, "");
  const parts = raw.split("/").filter(Boolean).map((part) => {
    try {
      return decodeURIComponent(part);
    } catch {
      return part;
    }
  });
  const name = parts.shift() || DEFAULT_VIEW;
  return { name, params: parts };
}

function navigate(hash) {
  if (!hash.startsWith("#")) hash = `#${hash}`;
  if (location.hash === hash) route(true);
  else location.hash = hash;
}

function unmountCurrent() {
  routeToken += 1;
  const previous = current;
  current = null;
  if (previous && typeof previous.unmount === "function") {
    try {
      previous.unmount();
    } catch (err) {
      console.warn(err);
    }
  }
}

function markNav(name) {
  for (const link of document.querySelectorAll(".nav a")) {
    if (link.dataset.view === name) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

async function route(force = false) {
  if (!me) return;
  const hash = location.hash || `#/${DEFAULT_VIEW}`;
  if (!force && current && current.hash === hash) return;
  const { name, params } = parseHash();
  unmountCurrent();
  const token = routeToken;
  const hadFocusInMain = els.main.contains(document.activeElement);
  const root = document.createElement("section");
  root.className = `view view-${name}`;
  root.setAttribute("aria-label", VIEWS[name] ? VIEWS[name].title : "Not found");
  els.main.replaceChildren(root);
  markNav(name);
  const view = VIEWS[name];
  if (!view) {
    document.title = "Not found · Corral";
    const p = document.createElement("p");
    p.className = "empty";
    p.append(`There is no page called "${name}". `);
    const a = document.createElement("a");
    a.href = "#/dashboard";
    a.textContent = "Go to the dashboard";
    p.append(a);
    root.append(p);
    current = { hash, unmount: null };
    return;
  }
  document.title = `${view.title} · Corral`;
  current = { hash, unmount: null };
  const ctx = { api, ApiError, live, stream, me, toast, navigate, character: characterApi, params };
  try {
    const mod = await view.load();
    if (token !== routeToken) return;
    const unmount = await mod.mount(root, ctx);
    if (token !== routeToken) {
      if (typeof unmount === "function") unmount();
      return;
    }
    current.unmount = unmount;
  } catch (err) {
    if (token !== routeToken) return;
    if (err instanceof ApiError && err.unauthorized) return; // the login screen takes over
    console.warn(err);
    const p = document.createElement("p");
    p.className = "error-text";
    p.setAttribute("role", "alert");
    p.textContent = `The ${view.title} page could not load: ${err.message || err}. Reload the page to try again.`;
    root.append(p);
  }
  if (hadFocusInMain) els.main.focus();
}

window.addEventListener("hashchange", () => route());

// --- start ----------------------------------------------------------------------------------

// A 401 from /api/me means "not logged in"; so does a 200 that names no scope.
const signedIn = (user) => Boolean(user && typeof user === "object" && user.scope);

async function start() {
  try {
    const user = await api("/api/me", { quiet401: true });
    if (signedIn(user)) enter(user);
    else showLogin("", false);
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      showLogin("", false);
      return;
    }
    // Server unreachable: say so on the login screen and keep trying quietly.
    showLogin("corral is not answering yet; this page will connect when it is back.", false);
    setTimeout(retryStart, 3000);
  }
}

async function retryStart() {
  if (me) return;
  try {
    const user = await api("/api/me", { quiet401: true });
    if (signedIn(user)) enter(user);
    else {
      els.loginNote.textContent = "";
      els.loginNote.hidden = true;
    }
  } catch (err) {
    if (err instanceof ApiError && err.status === 401) {
      els.loginNote.textContent = "";
      els.loginNote.hidden = true;
      return;
    }
    setTimeout(retryStart, 3000);
  }
}

start();
