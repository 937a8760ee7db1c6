// Chat: a terminal-style conversation with the agent over the shared WebSocket, one session
// per route (#/chat/SESSION). Answer tokens stream in; tool calls show as cards; approvals are
// answered in place; a live log runs beside it for admins.

import { download, pickFile } from "./api.js";
import { h } from "./dom.js";


const pretty = (value) => (typeof value === "string" ? value : JSON.stringify(value, null, 2) ?? "");

const freshIds = new Set(); // ids made here that the server has not seen yet: no 404 asking for them

function newSessionId() {
  const bytes = crypto.getRandomValues(new Uint8Array(6));
  const id = `s-${Array.from(bytes, (b) => b.toString(36).padStart(2, "0")).join("").slice(0, 10)}`;
  freshIds.add(id);
  return id;
}

function ago(when) {
  if (typeof when !== "number") return when ? String(when) : "";
  const s = Date.now() / 1000 - when;
  if (s < 60) return "just now";
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return new Date(when * 1000).toLocaleDateString();
}

function clock(ts) {
  const d = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts || Date.now());
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleTimeString([], { hour12: false });
}

const LEVELS = { debug: 0, info: 1, warning: 2, warn: 2, error: 3, critical: 3, fatal: 3 };

export async function mount(root, ctx) {
  const { api, live, me } = ctx;
  let session = ctx.params[0] || "";
  let known = Boolean(session) && !freshIds.has(session); // whether the server may have this session
  if (!session) {
    session = newSessionId();
    history.replaceState(null, "", `#/chat/${encodeURIComponent(session)}`);
  }
  const cleanups = [];

  // --- layout -------------------------------------------------------------------------------
  const sessionSelect = h("select", { id: "chat-session", testid: "session-select" });
  const btn = (label, testid, extra = {}) => h("button", { type: "button", testid, ...extra }, label);
  const newBtn = btn("New session", "session-new");
  const saveBtn = btn("Save state", "save-state", { title: "Download this session as a JSON file" });
  const loadBtn = btn("Load state", "load-state", { title: "Open a saved session file" });
  const clearBtn = btn("Clear terminal", "chat-clear", { title: "Empty the screen; corral keeps its memory of the session" });
  const gateStrip = h("div", { class: "gate-strip", "aria-live": "polite", testid: "gate-strip" });
  const transcript = h("div", {
    class: "terminal", role: "log", "aria-live": "polite", "aria-label": "Conversation", tabindex: "0", testid: "transcript",
  });
  const input = h("textarea", {
    id: "chat-input", rows: "2", testid: "chat-input", autocomplete: "off",
    placeholder: "Ask corral…  (Enter sends, Shift+Enter starts a new line)",
  });
  const sendBtn = h("button", { type: "submit", class: "primary", testid: "chat-send" }, "Send");
  const stopBtn = btn("Stop", "chat-stop", { disabled: true, title: "Cancel the answer in progress" });
  const statusLine = h("p", { class: "chat-status muted small", role: "status", testid: "chat-status" });
  const form = h("form", { class: "chat-form" },
    h("label", { for: "chat-input", class: "sr-only" }, "Message"),
    input,
    h("div", { class: "chat-actions" }, sendBtn, stopBtn),
  );
  const logLevel = h("select", { id: "log-level", testid: "log-level" },
    ...[["all", "All levels"], ["info", "Info and up"], ["warning", "Warnings and errors"], ["error", "Errors only"]]
      .map(([value, label]) => h("option", { value }, label)));
  const logState = h("span", { class: "pill pill-muted", testid: "log-state" }, "connecting…");
  const logLines = h("div", { class: "log-lines", "data-min": "all", tabindex: "0", "aria-label": "Log lines" });
  const logBody = h("div", { class: "log-body" });
  const logDetails = h("details", { class: "log-details" },
    h("summary", {}, "Live log"),
    logBody,
  );
  if (window.matchMedia("(min-width: 1000px)").matches) logDetails.open = true;

  root.append(h("div", { class: "chat", testid: "chat" },
    h("div", { class: "chat-main" },
      h("div", { class: "chat-toolbar" },
        h("label", { for: "chat-session" }, "Session"), sessionSelect, newBtn, saveBtn, loadBtn, clearBtn),
      gateStrip,
      transcript,
      form,
      statusLine,
    ),
    h("aside", { class: "log-panel", testid: "log-panel", "aria-label": "Live log" }, logDetails),
  ));

  // --- transcript helpers -------------------------------------------------------------------
  function stick(fn) {
    const atBottom = transcript.scrollHeight - transcript.scrollTop - transcript.clientHeight < 48;
    const out = fn();
    if (atBottom) transcript.scrollTop = transcript.scrollHeight;
    return out;
  }

  function message(parent, role, text, when) {
    const who = role === "user" ? "you" : role === "assistant" ? "corral" : role;
    const body = h("span", { class: "msg-text" }, text || "");
    const el = h("div", { class: `msg msg-${role === "user" || role === "assistant" ? role : "other"}`,
      testid: role === "user" ? "msg-user" : role === "assistant" ? "msg-assistant" : "msg-other",
      title: when ? clock(when) : null },
    h("span", { class: "prompt", "aria-label": `${who}:` }, `${who} ›`), " ", body);
    stick(() => parent.append(el));
    return body;
  }

  function note(parent, text, kind = "note") {
    const el = h("p", { class: `line line-${kind}`, testid: kind === "error" ? "chat-error" : "chat-note" }, text);
    if (kind === "error") el.setAttribute("role", "alert");
    stick(() => parent.append(el));
    return el;
  }

  function setStatus(text) {
    statusLine.textContent = text;
  }

  // --- sessions -----------------------------------------------------------------------------
  async function refreshSessions() {
    let list = [];
    try {
      ({ sessions: list = [] } = await api("/api/sessions"));
    } catch (err) {
      if (err.unauthorized) return;
      setStatus(`Could not list sessions: ${err.message}`);
    }
    const options = list.map((s) => h("option", { value: s.id },
      `${s.id} · ${s.messages ?? 0} message${s.messages === 1 ? "" : "s"}${s.last_at ? ` · ${ago(s.last_at)}` : ""}`));
    if (list.some((s) => s.id === session)) known = true;
    if (!list.some((s) => s.id === session)) options.unshift(h("option", { value: session }, `${session} · new`));
    sessionSelect.replaceChildren(...options);
    sessionSelect.value = session;
  }

  async function loadHistory() {
    transcript.replaceChildren();
    if (!known) {
      note(transcript, `New session ${session}. Ask anything; some tools ask for your approval before they run.`);
      return;
    }
    try {
      const data = await api(`/api/sessions/${encodeURIComponent(session)}`);
      const messages = data.messages || [];
      if (!messages.length) note(transcript, `Session ${session} is empty. Ask anything.`);
      else note(transcript, `Session ${session} — ${messages.length} earlier message${messages.length === 1 ? "" : "s"}.`);
      for (const m of messages) message(transcript, m.role, pretty(m.content), m.created_at);
    } catch (err) {
      if (err.unauthorized) return;
      if (err.status === 404) {
        known = false;
        note(transcript, `New session ${session}. Ask anything; some tools ask for your approval before they run.`);
      } else {
        note(transcript, `Could not load this session: ${err.message}`, "error");
      }
    }
    transcript.scrollTop = transcript.scrollHeight;
  }

  sessionSelect.addEventListener("change", () => {
    if (sessionSelect.value && sessionSelect.value !== session) ctx.navigate(`#/chat/${encodeURIComponent(sessionSelect.value)}`);
  });
  newBtn.addEventListener("click", () => ctx.navigate(`#/chat/${newSessionId()}`));

  saveBtn.addEventListener("click", async () => {
    if (!known) {
      ctx.toast("Nothing to save yet: this session has no messages.", "info");
      return;
    }
    try {
      const doc = await api(`/api/sessions/${encodeURIComponent(session)}/export`);
      download(`corral-session-${session}.json`, JSON.stringify(doc, null, 2));
      ctx.toast(`Saved session ${session}.`, "ok");
    } catch (err) {
      if (err.unauthorized) return;
      ctx.toast(err.status === 404 ? "Nothing to save yet: this session has no messages." : `Saving failed: ${err.message}`, "error");
    }
  });

  loadBtn.addEventListener("click", async () => {
    let doc;
    try {
      doc = JSON.parse(await pickFile(".json,application/json"));
    } catch (err) {
      ctx.toast(err instanceof SyntaxError ? "That file is not a saved session (it is not JSON)." : `Could not read the file: ${err.message}`, "error");
      return;
    }
    try {
      const reply = await api("/api/sessions/import", { body: doc });
      const id = reply.session;
      const count = Array.isArray(reply.messages) ? reply.messages.length : reply.messages ?? 0;
      ctx.toast(`Loaded ${count} message${count === 1 ? "" : "s"} into session ${id}.`, "ok");
      if (id === session) {
        known = true;
        await loadHistory();
        refreshSessions();
      } else {
        ctx.navigate(`#/chat/${encodeURIComponent(id)}`);
      }
    } catch (err) {
      if (!err.unauthorized) ctx.toast(`Loading failed: ${err.message}`, "error");
    }
  });

  clearBtn.addEventListener("click", () => {
    transcript.replaceChildren(h("p", { class: "line line-note" }, "Terminal cleared. corral still remembers this session."));
    if (turn && !turn.done) transcript.append(turn.el);
    input.focus();
  });

  // --- gates --------------------------------------------------------------------------------
  const gates = new Map(); // gate_id -> {el, buttons, left, expires, done}

  function gateCard(gate, parent) {
    const id = gate.gate_id || gate.id;
    if (!id) return;
    const existing = gates.get(id);
    if (existing) return existing;
    const left = h("span", { class: "gate-left", testid: "gate-time" });
    const outcome = h("p", { class: "gate-outcome", role: "status", testid: "gate-outcome" });
    const approve = h("button", { type: "button", class: "approve", testid: "gate-approve" }, "Approve");
    const deny = h("button", { type: "button", class: "deny", testid: "gate-deny" }, "Deny");
    const run = gate.run_id ? h("span", { class: "muted small" }, ` · run ${gate.run_id}`) : null;
    const el = h("div", { class: "gate-card", testid: "gate-card", "data-gate": id, role: "group", "aria-label": gate.title || "Approval needed" },
      h("div", { class: "gate-head" }, h("strong", {}, `⚠ ${gate.title || "Approve?"}`), run, " ", left),
      gate.details === undefined || gate.details === null || gate.details === "" ? null
        : h("pre", { class: "gate-details", tabindex: "0" }, pretty(gate.details)),
      h("div", { class: "gate-actions" }, approve, deny),
      outcome,
    );
    const entry = { el, approve, deny, left, outcome, expires: gate.expires, done: false };
    gates.set(id, entry);
    const decide = async (approved) => {
      approve.disabled = deny.disabled = true;
      outcome.textContent = approved ? "Approving…" : "Denying…";
      try {
        const reply = await live.request({ type: approved ? "approve" : "deny", gate_id: id });
        resolveGate(id, { status: reply.status || (approved ? "approved" : "denied"), by: reply.by || "you", reason: reply.reason });
      } catch (err) {
        if (entry.done) return;
        approve.disabled = deny.disabled = false;
        outcome.textContent = `Not sent: ${err.message}`;
      }
    };
    approve.addEventListener("click", () => decide(true));
    deny.addEventListener("click", () => decide(false));
    stick(() => parent.append(el));
    tickGates();
    return entry;
  }

  function resolveGate(id, data) {
    const entry = gates.get(id);
    if (!entry || entry.done) return;
    entry.done = true;
    entry.approve.disabled = entry.deny.disabled = true;
    entry.approve.hidden = entry.deny.hidden = true;
    const status = data.status || (data.approved ? "approved" : "denied");
    const words = {
      approved: "Approved", denied: "Denied", expired: "Expired: nobody answered in time, so it was denied",
      cancelled: "Cancelled with its run",
      "no longer pending": "No longer waiting: answered elsewhere or expired",
    };
    let text = words[status] || status;
    if (data.by && (status === "approved" || status === "denied")) text += ` by ${data.by}`;
    if (data.reason) text += ` (${data.reason})`;
    entry.outcome.textContent = `${text}.`;
    entry.left.textContent = "";
    entry.el.classList.add(`gate-${status === "approved" ? "approved" : "denied"}`);
    entry.el.dataset.status = status;
    if (entry.el.parentElement === gateStrip) setTimeout(() => entry.el.remove(), 20000);
  }

  function tickGates() {
    const now = Date.now() / 1000;
    for (const entry of gates.values()) {
      if (entry.done || typeof entry.expires !== "number") continue;
      const s = Math.max(0, Math.round(entry.expires - now));
      entry.left.textContent = s > 0 ? `· ${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")} left` : "· expiring…";
    }
  }
  const gateTimer = setInterval(tickGates, 1000);
  cleanups.push(() => clearInterval(gateTimer));

  async function loadPendingGates(reconcile = false) {
    try {
      const { gates: list = [] } = await api("/api/gates");
      if (reconcile) {
        // Answered or expired while we were away: say so instead of offering stale buttons.
        const pending = new Set(list.map((g) => g.id));
        for (const [id, entry] of gates) if (!entry.done && !pending.has(id)) resolveGate(id, { status: "no longer pending" });
      }
      for (const gate of list) {
        if (gate.status && gate.status !== "pending") continue;
        gateCard({ ...gate, gate_id: gate.id }, gateStrip);
      }
    } catch (err) {
      if (!err.unauthorized && err.status !== 404) setStatus(`Could not read pending approvals: ${err.message}`);
    }
  }

  // --- a turn: one message and the run that answers it --------------------------------------
  let turn = null;
  let awaitingReply = false;
  const early = [];

  function belongs(e) {
    return Boolean(turn && turn.runId && (e.run_id === turn.runId || (e.data && e.data.root_run === turn.runId)));
  }

  function answerEl() {
    if (!turn.answer) turn.answer = message(turn.el, "assistant", "");
    return turn.answer;
  }

  function thinkingFor(key) {
    let t = turn.thinking.get(key);
    if (!t) {
      const pre = h("pre", { class: "thinking-text" });
      const summary = h("summary", {}, "thinking…");
      const el = h("details", { class: "thinking", testid: "thinking" }, summary, pre);
      t = { el, pre, summary };
      turn.thinking.set(key, t);
      stick(() => turn.el.append(el));
    }
    return t;
  }

  function toolCard(key, runId) {
    let card = turn.tools.get(key);
    if (card) return card;
    const choice = turn.choice.get(runId) || {};
    const name = h("strong", { class: "tool-name" }, choice.tool || "tool");
    const state = h("span", { class: "tool-state", testid: "tool-state" }, "running…");
    const args = h("pre", { class: "tool-args", tabindex: "0" }, choice.arguments === undefined ? "" : pretty(choice.arguments));
    const result = h("pre", { class: "tool-result", tabindex: "0", hidden: true, testid: "tool-result" });
    const el = h("div", { class: "tool-card", testid: "tool-card" },
      h("div", { class: "tool-head" }, h("span", { "aria-hidden": "true" }, "⚙ "), name, " ", state), args, result);
    card = { el, name, state, args, result };
    turn.tools.set(key, card);
    stick(() => turn.el.append(el));
    return card;
  }

  function finishTool(card, step, error) {
    if (step) {
      if (step.tool) card.name.textContent = step.tool;
      if (step.arguments !== undefined) card.args.textContent = pretty(step.arguments);
    }
    const ok = !error && step && step.ok !== false && !step.error;
    const text = error || (step && (step.error ?? step.content ?? step.result)) || "";
    card.result.textContent = pretty(text) || "(no output)";
    card.result.hidden = false;
    card.result.classList.toggle("error", !ok);
    const decision = step && step.decision && step.decision !== "auto" ? ` · ${step.decision}` : "";
    card.state.textContent = `${ok ? "done" : step && step.decision === "denied" ? "not run" : "error"}${decision}`;
    card.el.classList.add(ok ? "tool-ok" : "tool-error");
    stick(() => {});
  }

  function handleEvent(e) {
    const data = e.data || {};
    if (e.type === "gate.waiting") {
      gateCard({ ...data, run_id: e.run_id }, belongs(e) ? turn.el : gateStrip);
      return;
    }
    if (e.type === "gate.resolved") {
      resolveGate(data.gate_id, data);
      return;
    }
    if (!turn || turn.done || !belongs(e)) return;
    const key = `${e.run_id}/${e.node_id}`;
    const type = turn.types.get(key);
    switch (e.type) {
      case "node.started":
        turn.types.set(key, data.type);
        turn.thinking.delete(key);
        turn.tools.delete(key);
        if (data.type === "tool") toolCard(key, e.run_id);
        break;
      case "node.token": {
        const text = data.text || "";
        if (type === "llm") {
          const el = answerEl();
          if (turn.lastLlm && turn.lastLlm !== key && el.textContent) el.append("\n\n");
          turn.lastLlm = key;
          stick(() => el.append(text));
          turn.streamed = true;
        } else {
          const t = thinkingFor(key);
          stick(() => t.pre.append(text));
        }
        break;
      }
      case "node.output": {
        const outputs = data.outputs || {};
        if (type === "tool_choice") {
          turn.choice.set(e.run_id, { tool: outputs.tool, arguments: outputs.arguments });
          const t = turn.thinking.get(key);
          if (t) t.summary.textContent = outputs.tool ? `thought: use ${outputs.tool}` : "thought: ready to answer";
        } else if (type === "tool") {
          finishTool(toolCard(key, e.run_id), outputs.step || outputs, null);
        }
        break;
      }
      case "node.failed":
        if (type === "tool") finishTool(toolCard(key, e.run_id), null, data.error || "the tool failed");
        else note(turn.el, `step ${e.node_id} failed${data.attempts > 1 ? ` after ${data.attempts} tries` : ""}: ${data.error || "unknown error"}`, "dim");
        break;
      case "node.retry":
        note(turn.el, `retrying ${e.node_id} (try ${data.attempt}${data.delay_s ? ` in ${data.delay_s} s` : ""}): ${data.error || ""}`, "dim");
        break;
      case "run.finished":
      case "run.failed":
      case "run.cancelled":
        if (e.run_id === turn.runId) finishTurn(e.type.slice(4), data);
        break;
      default:
    }
  }

  function finishTurn(outcome, data) {
    if (!turn || turn.done) return;
    for (const t of turn.thinking.values()) if (t.summary.textContent === "thinking…") t.summary.textContent = "thought";
    for (const card of turn.tools.values()) if (card.state.textContent === "running…") card.state.textContent = "did not finish";
    if (outcome === "finished" || outcome === "succeeded") {
      const answer = data.outputs && data.outputs.answer;
      if (!turn.streamed) {
        if (answer !== undefined && answer !== null && answer !== "") stick(() => answerEl().append(pretty(answer)));
        else note(turn.el, "(the run finished without an answer)", "dim");
      }
    } else if (outcome === "cancelled") {
      const why = data.error && data.error !== "cancelled" ? `: ${data.error}` : "";
      note(turn.el, `Stopped — the answer was cancelled${why}. The session still works; send another message.`, "error");
    } else {
      note(turn.el, `The run failed: ${data.error || "no reason given"}. The session still works; send another message.`, "error");
    }
    turn.done = true;
    known = true;
    freshIds.delete(session);
    setBusy(false);
    refreshSessions();
  }

  function setBusy(busy) {
    sendBtn.disabled = busy;
    stopBtn.disabled = !busy;
    setStatus(busy ? "corral is working on it… Stop cancels." : "");
  }

  async function send() {
    const text = input.value.trim();
    if (!text) return;
    if (turn && !turn.done) {
      setStatus("Wait for this answer, or press Stop.");
      return;
    }
    input.value = "";
    const el = h("div", { class: "turn" });
    stick(() => transcript.append(el));
    message(el, "user", text);
    turn = { runId: "", el, done: false, streamed: false, answer: null, lastLlm: "",
      types: new Map(), thinking: new Map(), tools: new Map(), choice: new Map() };
    const mine = turn;
    ctx.character.set("idle");
    setBusy(true);
    awaitingReply = true;
    early.length = 0;
    let reply;
    try {
      reply = await live.request({ type: "chat", text, session });
    } catch (err) {
      awaitingReply = false;
      const backlog = early.splice(0);
      for (const e of backlog) handleEvent(e);
      if (turn !== mine) return;
      note(el, `Not sent: ${err.message}`, "error");
      if (!input.value) input.value = text;
      turn.done = true;
      setBusy(false);
      return;
    }
    awaitingReply = false;
    mine.runId = reply.run_id || "";
    const backlog = early.splice(0);
    for (const e of backlog) handleEvent(e);
  }

  async function checkRun() {
    // After the socket came back: events may have been lost; ask how the run ended.
    if (!turn || turn.done || !turn.runId) return;
    try {
      const run = await api(`/api/runs/${encodeURIComponent(turn.runId)}`);
      if (!turn || turn.done || run.id !== turn.runId) return;
      if (run.status === "succeeded") finishTurn("finished", { outputs: run.outputs || {} });
      else if (run.status === "cancelled") finishTurn("cancelled", { error: run.error });
      else if (run.status === "failed" || run.status === "interrupted") finishTurn("failed", { error: run.error || run.status });
    } catch {
      // still offline: the banner says so; try again on the next reconnect
    }
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });
  input.addEventListener("input", () => {
    if (!turn || turn.done) ctx.character.set(input.value.trim() ? "listening" : "idle");
  });
  input.addEventListener("blur", () => {
    if (ctx.character.state === "listening") ctx.character.set("idle");
  });
  stopBtn.addEventListener("click", async () => {
    if (!turn || turn.done || !turn.runId) return;
    stopBtn.disabled = true;
    setStatus("Stopping…");
    try {
      await live.request({ type: "cancel", run_id: turn.runId });
    } catch {
      try {
        await api(`/api/runs/${encodeURIComponent(turn.runId)}/cancel`, { method: "POST" });
      } catch (err) {
        if (err.unauthorized) return;
        stopBtn.disabled = false;
        setStatus(`Could not stop it: ${err.message}`);
      }
    }
  });

  cleanups.push(live.on("event", (e) => {
    if (awaitingReply) {
      early.push(e);
      if (early.length > 1000) early.shift();
      return;
    }
    handleEvent(e);
  }));
  cleanups.push(live.on("state", (state) => {
    if (state === "open") {
      checkRun();
      loadPendingGates(true);
    }
  }));

  // --- live log -----------------------------------------------------------------------------
  if (me.scope !== "admin") {
    logBody.append(h("p", { class: "muted", testid: "log-needs-admin" }, "The live log needs an admin key."));
  } else {
    logBody.append(h("div", { class: "log-tools" }, h("label", { for: "log-level" }, "Show"), logLevel, logState), logLines);
    logLevel.addEventListener("change", () => {
      logLines.dataset.min = logLevel.value;
    });
    let lastSeq = -1;
    let lastTs = 0;
    const addLine = (line) => {
      if (!line || typeof line !== "object") return;
      if (typeof line.seq === "number" && line.seq <= lastSeq && (line.ts || 0) <= lastTs) return;
      lastSeq = typeof line.seq === "number" ? line.seq : lastSeq;
      lastTs = Math.max(lastTs, line.ts || 0);
      const level = String(line.level || "info").toLowerCase();
      const cls = ["debug", "info", "warning", "error"][LEVELS[level] ?? 1];
      const el = h("div", { class: `log-line lvl-${cls}`, testid: "log-line" },
        h("span", { class: "log-time" }, clock(line.ts)), " ",
        h("span", { class: "log-level" }, level.toUpperCase()), " ",
        h("span", { class: "log-logger" }, line.logger || ""), " ",
        h("span", { class: "log-msg" }, line.message ?? ""));
      const atBottom = logLines.scrollHeight - logLines.scrollTop - logLines.clientHeight < 32;
      logLines.append(el);
      while (logLines.childElementCount > 500) logLines.firstElementChild.remove();
      if (atBottom) logLines.scrollTop = logLines.scrollHeight;
    };
    const close = ctx.stream("/api/logs/stream", "log", addLine, (state) => {
      logState.className = `pill ${state === "open" ? "pill-ok" : "pill-warn"}`;
      logState.textContent = state === "open" ? "live" : "reconnecting…";
    });
    cleanups.push(close);
  }

  // --- first paint --------------------------------------------------------------------------
  // The session list first: it tells whether a session made here is known to the server yet.
  await Promise.all([refreshSessions().then(loadHistory), loadPendingGates()]);
  input.focus();

  return () => {
    for (const fn of cleanups.splice(0)) {
      try {
        fn();
      } catch (err) {
        console.warn(err);
      }
    }
    if (ctx.character.state === "listening") ctx.character.set("idle");
  };
}
