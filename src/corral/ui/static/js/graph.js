// The run graph: a workflow drawn with Cytoscape.js, coloured by the state of each node in a run,
// with an accessible list of the same nodes beside it. Shared by the workflows and history views,
// together with a few helpers for them (DOM building, lazy scripts, the live event tap, run watching).
//
// Cytoscape is imported here and only here, so the dashboard never downloads it.

import cytoscape from "../vendor/cytoscape.esm.min.js";

// ---------------------------------------------------------------------------------------------
// Small shared helpers (the DOM ones live in dom.js; re-exported for the graph views)

import { ensureCss, fill, h, loadScript } from "./dom.js";

export { ensureCss, fill, h, loadScript };

/** The styles of the graph, workflows, history and editor views. */
export function ensureViewsCss() {
  ensureCss("/ui/views.css");
}

/** js-yaml, loaded on first use. */
export function ensureYaml() {
  return loadScript("/ui/vendor/js-yaml.min.js", "jsyaml");
}

export function fmtTime(epoch) {
  if (!epoch) return "—";
  const d = new Date(epoch * 1000);
  const today = new Date();
  const sameDay = d.toDateString() === today.toDateString();
  return sameDay ? d.toLocaleTimeString() : d.toLocaleString();
}

export function fmtSeconds(s) {
  if (s === undefined || s === null || Number.isNaN(Number(s))) return "";
  s = Number(s);
  if (s < 10) return `${s.toFixed(2)} s`;
  if (s < 120) return `${s.toFixed(1)} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${(s / 3600).toFixed(1)} h`;
}

export const ACTIVE = new Set(["running", "waiting"]);

export function statusBadge(status, attrs = {}) {
  return h("span", { class: `status-badge status-${status || "unknown"}`, ...attrs }, status || "unknown");
}

/** A plain error with a Retry button; returns the element. */
export function errorBox(message, onRetry) {
  return h(
    "div",
    { class: "view-error", role: "alert", testid: "view-error" },
    h("p", {}, message),
    onRetry ? h("button", { type: "button", class: "btn", onclick: onRetry, testid: "retry" }, "Retry") : null,
  );
}

export function messageOf(err) {
  if (!err) return "something went wrong";
  return err.message || String(err);
}

// ---------------------------------------------------------------------------------------------
// The live event tap: one listener on the shared Live instance, remembering recent events so a view
// that opens a run just after it started (or after a remount) can replay what it missed.

const TAP_SIZE = 3000;
const tapped = [];
const tappedLives = new WeakSet();

export function tapEvents(live) {
  if (!live || tappedLives.has(live)) return;
  tappedLives.add(live);
  live.on("event", (e) => {
    if (!e) return;
    tapped.push(e);
    if (tapped.length > TAP_SIZE) tapped.splice(0, tapped.length - TAP_SIZE);
  });
}

export function matchesRun(e, runId) {
  return !!e && !!runId && (e.run_id === runId || (e.data && e.data.root_run === runId));
}

/** Recent events of a run (its own and its sub-workflows'), oldest first. */
export function recentEvents(runId) {
  return tapped.filter((e) => matchesRun(e, runId));
}

/**
 * Follow one run: `onEvent(e)` for each live event of it (first the ones already seen, then new
 * ones), `onEnd()` once when the run (not a sub-workflow) finishes. Polls GET /api/runs/ID while the
 * socket is down so the end is never missed. Returns stop().
 */
export function watchRun(ctx, runId, { onEvent, onEnd, onPoll } = {}) {
  tapEvents(ctx.live);
  let stopped = false;
  let ended = false;
  const seen = new Set();
  const key = (e) => `${e.seq ?? ""}|${e.ts ?? ""}|${e.type}|${e.node_id ?? ""}|${e.run_id}`;
  const end = () => {
    if (ended || stopped) return;
    ended = true;
    if (onEnd) onEnd();
  };
  const handle = (e) => {
    if (stopped || !matchesRun(e, runId)) return;
    const k = key(e);
    if (seen.has(k)) return;
    seen.add(k);
    if (onEvent) onEvent(e);
    if (e.run_id === runId && ["run.finished", "run.failed", "run.cancelled"].includes(e.type)) end();
  };
  for (const e of recentEvents(runId)) handle(e);
  const off = ctx.live.on("event", handle);
  let pollTimer = null;
  let lastPoll = Date.now();
  const poll = async () => {
    if (stopped || ended) return;
    const socketDown = ctx.live.state !== "open";
    if (socketDown || Date.now() - lastPoll > 15000) {
      lastPoll = Date.now();
      try {
        const run = await ctx.api(`/api/runs/${encodeURIComponent(runId)}`);
        if (onPoll) onPoll(run);
        if (run && !ACTIVE.has(run.status)) end();
      } catch {
        /* the socket banner says we are offline; try again on the next tick */
      }
    }
    if (!stopped && !ended) pollTimer = setTimeout(poll, 3000);
  };
  pollTimer = setTimeout(poll, 3000);
  return () => {
    stopped = true;
    off();
    clearTimeout(pollTimer);
  };
}

// ---------------------------------------------------------------------------------------------
// The graph component

export const STATES = ["pending", "running", "ok", "error", "waiting", "skipped"];

const STATE_STYLE = {
  pending: { bg: "#e5e7eb", border: "#6b7280", style: "solid", width: 1 },
  running: { bg: "#bfdbfe", border: "#1d4ed8", style: "dashed", width: 3 },
  ok: { bg: "#bbf7d0", border: "#15803d", style: "solid", width: 3 },
  error: { bg: "#fecaca", border: "#b91c1c", style: "double", width: 6 },
  waiting: { bg: "#fde68a", border: "#b45309", style: "dotted", width: 4 },
  skipped: { bg: "#f8fafc", border: "#94a3b8", style: "dashed", width: 1 },
};

const STATE_WORD = {
  pending: "not run",
  running: "running",
  ok: "done",
  error: "failed",
  waiting: "waiting for approval",
  skipped: "skipped",
};

function graphStyle() {
  const styles = [
    {
      selector: "node",
      style: {
        shape: "round-rectangle",
        label: "data(label)",
        "text-wrap": "wrap",
        "text-valign": "center",
        "text-halign": "center",
        "font-size": 12,
        "font-family": "system-ui, -apple-system, Segoe UI, sans-serif",
        color: "#111827",
        width: "data(w)",
        height: "data(h)",
        "background-color": STATE_STYLE.pending.bg,
        "border-color": STATE_STYLE.pending.border,
        "border-style": "solid",
        "border-width": 1,
      },
    },
    {
      selector: "edge",
      style: {
        width: 2,
        "line-color": "#64748b",
        "target-arrow-color": "#64748b",
        "target-arrow-shape": "triangle",
        "curve-style": "bezier",
        label: "data(label)",
        "font-size": 11,
        color: "#1f2937",
        "text-background-color": "#ffffff",
        "text-background-opacity": 0.85,
        "text-background-padding": 2,
        "text-rotation": "none",
      },
    },
    {
      selector: "edge.implicit",
      style: { "line-style": "dashed", "line-color": "#94a3b8", "target-arrow-color": "#94a3b8", width: 1.5 },
    },
    {
      selector: "edge.back",
      style: {
        "curve-style": "unbundled-bezier",
        "control-point-distances": 80,
        "control-point-weights": 0.5,
        "line-color": "#7c3aed",
        "target-arrow-color": "#7c3aed",
      },
    },
    {
      selector: "node.picked",
      style: { "underlay-color": "#2563eb", "underlay-opacity": 0.3, "underlay-padding": 7 },
    },
  ];
  for (const [state, s] of Object.entries(STATE_STYLE)) {
    styles.push({
      selector: `node.state-${state}`,
      style: {
        "background-color": s.bg,
        "border-color": s.border,
        "border-style": s.style,
        "border-width": s.width,
        ...(state === "skipped" ? { color: "#64748b" } : {}),
      },
    });
  }
  return styles;
}

function labelOf(node, overlay) {
  const title = node.title || node.id;
  const lines = [title, `(${node.type})`];
  if (node.title && node.title !== node.id) lines[1] = `${node.id} (${node.type})`;
  if (overlay) lines.push(overlay);
  return lines.join("\n");
}

function sizeOf(label) {
  const lines = label.split("\n");
  const longest = Math.max(...lines.map((l) => l.length));
  return { w: Math.min(Math.max(longest * 6.8 + 26, 90), 320), h: lines.length * 16 + 18 };
}

/** "general · general/0 · 1.23 s" from a step's or an event's outputs and elapsed time. */
export function overlayText(outputs, elapsed) {
  const parts = [];
  if (outputs && typeof outputs === "object") {
    if (outputs.expert) parts.push(String(outputs.expert));
    if (outputs.replica) parts.push(String(outputs.replica));
  }
  if (elapsed !== undefined && elapsed !== null && elapsed !== "") parts.push(fmtSeconds(elapsed));
  return parts.join(" · ");
}

/**
 * Render `graph` ({nodes, edges, starts}) into `container`. Returns the component:
 * setState(id, state), setOverlay(id, text), applySteps(steps, {final}), applyEvent(e),
 * select(id), states(), destroy().
 */
export function createRunGraph(container, graph, { onSelect } = {}) {
  ensureViewsCss();
  const nodes = (graph && graph.nodes) || [];
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const state = new Map(nodes.map((n) => [n.id, "pending"]));
  const overlay = new Map();
  const iterations = new Map();

  container.classList.add("run-graph");
  const canvas = h("div", {
    class: "run-graph-canvas",
    testid: "run-graph",
    role: "img",
    "aria-label": `graph of ${nodes.length} nodes; use the node list to select one`,
  });
  const zoomIn = h("button", { type: "button", class: "btn btn-small", "aria-label": "zoom in", title: "zoom in" }, "+");
  const zoomOut = h("button", { type: "button", class: "btn btn-small", "aria-label": "zoom out", title: "zoom out" }, "−");
  const fit = h("button", { type: "button", class: "btn btn-small", "aria-label": "fit the graph", title: "fit" }, "fit");
  const legend = h(
    "div",
    { class: "run-graph-legend", "aria-hidden": "true" },
    STATES.map((s) => h("span", { class: `legend-item legend-${s}` }, STATE_WORD[s])),
  );
  const list = h("ul", { class: "run-graph-list", "aria-label": "nodes" });
  const buttons = new Map();
  for (const n of nodes) {
    const btn = h("button", {
      type: "button",
      class: "graph-node-btn state-pending",
      testid: `graph-node-${n.id}`,
      dataset: { state: "pending", node: n.id },
      "aria-pressed": "false",
      onclick: () => pick(n.id, true),
    });
    buttons.set(n.id, btn);
    list.append(h("li", {}, btn));
  }
  container.replaceChildren(
    h("div", { class: "run-graph-tools" }, zoomIn, zoomOut, fit, legend),
    canvas,
    h("details", { class: "run-graph-nodes", open: true }, h("summary", {}, "Nodes"), list),
  );

  const elements = [];
  for (const n of nodes) {
    const label = labelOf(n, "");
    elements.push({ group: "nodes", data: { id: n.id, label, ...sizeOf(label) }, classes: "state-pending" });
  }
  (graph.edges || []).forEach((e, i) => {
    if (!byId.has(e.from) || !byId.has(e.to)) return;
    const classes = [e.implicit ? "implicit" : "explicit", e.back ? "back" : ""].join(" ").trim();
    elements.push({
      group: "edges",
      data: { id: `e${i}`, source: e.from, target: e.to, label: e.when || "" },
      classes,
    });
  });

  const positioned = nodes.length > 0 && nodes.every((n) => n.ui && Number.isFinite(+n.ui.x) && Number.isFinite(+n.ui.y));
  let layout;
  if (positioned) {
    // Editor positions are the top-left corners of ~220 px wide boxes: use their centres.
    for (const el of elements) {
      if (el.group !== "nodes") continue;
      const n = byId.get(el.data.id);
      el.position = { x: +n.ui.x + 110, y: +n.ui.y + 40 };
    }
    layout = { name: "preset", padding: 24 };
  } else {
    const roots = (graph.starts || []).filter((id) => byId.has(id));
    layout = { name: "breadthfirst", directed: true, padding: 24, spacingFactor: 1.05, avoidOverlap: true };
    if (roots.length) layout.roots = roots;
  }

  const cy = cytoscape({
    container: canvas,
    elements,
    style: graphStyle(),
    layout,
    minZoom: 0.2,
    maxZoom: 3,
    userZoomingEnabled: false, // the wheel scrolls the page; the +/− buttons zoom
    boxSelectionEnabled: false,
    autoungrabify: false,
    selectionType: "single",
  });
  cy.on("tap", "node", (evt) => pick(evt.target.id(), true));

  zoomIn.addEventListener("click", () => cy.zoom({ level: cy.zoom() * 1.25, renderedPosition: center() }));
  zoomOut.addEventListener("click", () => cy.zoom({ level: cy.zoom() / 1.25, renderedPosition: center() }));
  fit.addEventListener("click", () => fitCapped());
  // Fit the graph, but never blow a small graph up past 1.2x.
  function fitCapped() {
    cy.fit(undefined, 24);
    if (cy.zoom() > 1.2) {
      cy.zoom(1.2);
      cy.center();
    }
  }
  function center() {
    return { x: canvas.clientWidth / 2, y: canvas.clientHeight / 2 };
  }

  let resizeObserver = null;
  if (typeof ResizeObserver !== "undefined") {
    let fitted = false;
    resizeObserver = new ResizeObserver(() => {
      cy.resize();
      if (!fitted && canvas.clientWidth > 0) {
        fitted = true;
        fitCapped();
      }
    });
    resizeObserver.observe(canvas);
  }

  let picked = null;
  function pick(id, fromUser) {
    if (!byId.has(id)) return;
    if (picked) {
      cy.getElementById(picked).removeClass("picked");
      const old = buttons.get(picked);
      if (old) old.setAttribute("aria-pressed", "false");
    }
    picked = id;
    cy.getElementById(id).addClass("picked");
    const btn = buttons.get(id);
    if (btn) btn.setAttribute("aria-pressed", "true");
    if (fromUser && onSelect) onSelect(id);
  }

  function refresh(id) {
    const n = byId.get(id);
    if (!n) return;
    const st = state.get(id) || "pending";
    let extra = overlay.get(id) || "";
    const count = iterations.get(id) || 0;
    if (count > 1) extra = n.type === "loop" ? `iteration ${count - 1}${extra ? " · " + extra : ""}` : `×${count}${extra ? " · " + extra : ""}`;
    const label = labelOf(n, extra);
    const ele = cy.getElementById(id);
    ele.data({ label, ...sizeOf(label) });
    for (const s of STATES) ele.removeClass(`state-${s}`);
    ele.addClass(`state-${st}`);
    const btn = buttons.get(id);
    if (btn) {
      btn.dataset.state = st;
      btn.className = `graph-node-btn state-${st}`;
      fill(btn, 
        h("span", { class: "gn-title" }, n.title || n.id),
        h("span", { class: "gn-type" }, ` ${n.id !== (n.title || n.id) ? n.id + " · " : ""}${n.type}`),
        h("span", { class: "gn-state" }, STATE_WORD[st]),
        extra ? h("span", { class: "gn-overlay" }, extra) : null,
      );
      btn.setAttribute("aria-label", `${n.title || n.id} (${n.type}): ${STATE_WORD[st]}${extra ? ", " + extra : ""}`);
    }
  }
  for (const n of nodes) refresh(n.id);

  function setState(id, st) {
    if (!byId.has(id) || !STATES.includes(st)) return;
    state.set(id, st);
    refresh(id);
  }

  function setOverlay(id, text) {
    if (!byId.has(id)) return;
    overlay.set(id, text || "");
    refresh(id);
  }

  function applySteps(steps, { final = false } = {}) {
    // Nodes caught mid-flight when the run ended (cancelled, failed elsewhere) show as failed, not skipped.
    const inflight = new Map([...state].filter(([, s]) => s === "running" || s === "waiting"));
    iterations.clear();
    overlay.clear();
    for (const id of byId.keys()) state.set(id, "pending");
    const ordered = [...(steps || [])].sort((a, b) => (a.seq || 0) - (b.seq || 0));
    for (const step of ordered) {
      if (!byId.has(step.node)) continue;
      iterations.set(step.node, (iterations.get(step.node) || 0) + 1);
      state.set(step.node, step.status === "ok" ? "ok" : "error");
      overlay.set(step.node, overlayText(step.outputs, step.elapsed_s));
    }
    for (const [id, was] of inflight) {
      if (state.get(id) !== "pending") continue;
      state.set(id, final ? "error" : was); // still running (or waiting) when no step says otherwise
    }
    if (final) for (const id of byId.keys()) if (state.get(id) === "pending") state.set(id, "skipped");
    for (const id of byId.keys()) refresh(id);
  }

  function applyEvent(e) {
    if (!e || !e.node_id || !byId.has(e.node_id)) return;
    const id = e.node_id;
    const data = e.data || {};
    switch (e.type) {
      case "node.started":
        iterations.set(id, (iterations.get(id) || 0) + 1);
        overlay.set(id, "");
        setState(id, "running");
        break;
      case "node.retry":
        overlay.set(id, `retry ${data.attempt ?? ""}`.trim());
        setState(id, "running");
        break;
      case "node.output": {
        const failed = data.branch === "error" && data.outputs && "error" in data.outputs;
        overlay.set(id, overlayText(data.outputs, data.elapsed_s));
        setState(id, failed ? "error" : "ok");
        break;
      }
      case "node.failed":
        setState(id, "error");
        break;
      case "gate.waiting":
        setState(id, "waiting");
        break;
      case "gate.resolved":
        setState(id, "running");
        break;
      default:
        break;
    }
  }

  function reset() {
    iterations.clear();
    overlay.clear();
    for (const id of byId.keys()) state.set(id, "pending");
    for (const id of byId.keys()) refresh(id);
  }

  return {
    cy,
    reset,
    setState,
    setOverlay,
    applySteps,
    applyEvent,
    select: (id) => pick(id, false),
    states: () => Object.fromEntries(state),
    has: (id) => byId.has(id),
    node: (id) => byId.get(id),
    destroy() {
      if (resizeObserver) resizeObserver.disconnect();
      cy.destroy();
      container.replaceChildren();
      container.classList.remove("run-graph");
    },
  };
}

// ---------------------------------------------------------------------------------------------
// Node detail

const LONG = 400;

/** Pretty JSON in a <pre>; long strings are cut with a "show all" disclosure holding the full text. */
export function renderValue(value, label) {
  if (value === undefined) return h("p", { class: "muted" }, "—");
  if (typeof value === "string" && !value.includes("\n") && value.length < 120) {
    return h("pre", { class: "json", "aria-label": label }, JSON.stringify(value));
  }
  if (typeof value === "string") {
    if (value.length <= LONG) return h("pre", { class: "json text", "aria-label": label }, value);
    return h(
      "details",
      { class: "long" },
      h("summary", {}, h("span", { class: "long-head" }, value.slice(0, 160).replace(/\s+/g, " ") + "…"), ` (${value.length} characters: show all)`),
      h("pre", { class: "json text" }, value),
    );
  }
  let longest = 0;
  const shortened = JSON.stringify(
    value,
    (k, v) => {
      if (typeof v === "string" && v.length > LONG) {
        longest = Math.max(longest, v.length);
        return `${v.slice(0, 200)}… (${v.length} characters)`;
      }
      return v;
    },
    2,
  );
  const pre = h("pre", { class: "json", "aria-label": label }, shortened ?? String(value));
  if (!longest) return pre;
  return h(
    "div",
    {},
    pre,
    h("details", { class: "long" }, h("summary", {}, "show the long texts in full"), h("pre", { class: "json" }, JSON.stringify(value, null, 2))),
  );
}

function kv(label, value) {
  return h("div", { class: "kv" }, h("span", { class: "k" }, label), h("span", { class: "v" }, value));
}

/**
 * Show one node of a run: its bindings and parameters, then each of its steps (inputs, outputs,
 * timing, attempts, branch, error), then live activity (tokens). Returns {appendToken(text, thinking)}.
 */
export function renderNodeDetail(panel, { node, steps = [], events = [], tokens = "", thinking = false, focusSeq = null } = {}) {
  panel.dataset.testid = "node-detail";
  panel.classList.add("node-detail");
  if (!node) {
    panel.replaceChildren(h("p", { class: "muted" }, "Select a node in the graph or the list to see its inputs, outputs and timing."));
    return { appendToken() {} };
  }
  const own = steps.filter((s) => s.node === node.id).sort((a, b) => a.seq - b.seq);
  const parts = [
    h("h3", {}, node.title || node.id, " ", h("small", {}, `${node.id} · ${node.type}`)),
  ];
  if (node.in && Object.keys(node.in).length) parts.push(h("h4", {}, "Bindings"), renderValue(node.in, "bindings"));
  if (node.params && Object.keys(node.params).length) parts.push(h("h4", {}, "Parameters"), renderValue(node.params, "parameters"));

  if (own.length === 0) parts.push(h("p", { class: "muted" }, "This node has no completed step in this run."));
  own.forEach((s, i) => {
    const head = [
      `Step ${s.seq}`,
      own.length > 1 ? ` (run ${i + 1} of ${own.length})` : "",
    ].join("");
    const section = h(
      "section",
      { class: `step step-${s.status}`, id: `step-${s.seq}`, dataset: { seq: s.seq } },
      h("h4", {}, head, " ", statusBadge(s.status)),
      h(
        "div",
        { class: "kvs" },
        kv("elapsed", fmtSeconds(s.elapsed_s) || "—"),
        kv("attempts", s.attempts ?? 1),
        kv("branch", s.branch || "—"),
        kv("trigger", s.trigger || "—"),
        kv("started", fmtTime(s.started)),
        s.outputs && s.outputs.expert ? kv("expert", `${s.outputs.expert}${s.outputs.replica ? " · " + s.outputs.replica : ""}`) : null,
      ),
      s.error ? h("div", { class: "step-error", role: "note" }, h("strong", {}, "Error: "), String(s.error)) : null,
      h("details", { open: own.length === 1 || s.seq === focusSeq }, h("summary", {}, "Inputs"), renderValue(s.inputs, "inputs")),
      h("details", { open: true }, h("summary", {}, "Outputs"), renderValue(s.outputs, "outputs")),
      s.var_updates && Object.keys(s.var_updates).length ? h("details", {}, h("summary", {}, "Variable updates"), renderValue(s.var_updates, "variable updates")) : null,
    );
    parts.push(section);
  });

  const live = events.filter((e) => e.node_id === node.id && e.type !== "node.token");
  if (live.length) {
    parts.push(
      h("h4", {}, "Live"),
      h(
        "ol",
        { class: "live-events" },
        live.slice(-30).map((e) => h("li", {}, `${e.type}${e.data && e.data.error ? ": " + e.data.error : ""}${e.data && e.data.attempt ? " (attempt " + e.data.attempt + ")" : ""}`)),
      ),
    );
  }
  const tokenPre = h("pre", { class: `tokens${thinking ? " thinking" : ""}`, testid: "node-tokens", "aria-live": "polite" }, tokens || "");
  const tokenBox = h("div", { class: "token-box", hidden: !tokens }, h("h4", {}, thinking ? "Thinking (the tool call as it streamed)" : own.length ? "Streamed text" : "Generating…"), tokenPre);
  parts.push(tokenBox);
  panel.replaceChildren(...parts);
  if (focusSeq !== null) {
    const target = panel.querySelector(`[data-seq="${focusSeq}"]`);
    if (target) target.scrollIntoView({ block: "nearest" });
  }
  return {
    appendToken(text) {
      tokenBox.hidden = false;
      tokenPre.append(document.createTextNode(text));
    },
  };
}
