// Workflows: pick a workflow, see its graph, run it with inputs and watch the run live, node by node
// (tokens, tool calls, approvals). Any active run, e.g. one started from chat, can be opened here.
// Route: #/workflows[/NAME][/RUN_ID]

import {
  ACTIVE,
  createRunGraph,
  ensureViewsCss,
  ensureYaml,
  errorBox,
  fmtSeconds,
  fill,
  fmtTime,
  h,
  matchesRun,
  messageOf,
  renderNodeDetail,
  renderValue,
  statusBadge,
  tapEvents,
  watchRun,
} from "./graph.js";

const enc = encodeURIComponent;
const MODEL_TYPES = new Set(["llm", "tool_choice"]);

function routeParts() {
  return location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
}

function setRoute(name, runId) {
  const hash = `#/workflows${name ? "/" + enc(name) : ""}${runId ? "/" + enc(runId) : ""}`;
  if (location.hash !== hash) history.pushState(null, "", hash);
}

/** One form field per declared input; returns {element, read() -> value | undefined (throws on bad JSON)}. */
function inputField(name, spec) {
  spec = spec && typeof spec === "object" ? spec : {};
  const type = spec.type || "any";
  const required = spec.required !== false && spec.default === undefined;
  const id = `wf-input-${name}`;
  const hint = [type, required ? "required" : "optional", spec.description || ""].filter(Boolean).join(" · ");
  const hasDefault = spec.default !== undefined && spec.default !== null && spec.default !== "";
  let control;
  let read;
  if (type === "boolean") {
    control = h("input", { type: "checkbox", id, testid: `input-${name}`, checked: spec.default === true });
    read = () => control.checked;
  } else if (type === "number" || type === "integer") {
    control = h("input", {
      type: "number",
      id,
      testid: `input-${name}`,
      step: type === "integer" ? "1" : "any",
      placeholder: hasDefault ? String(spec.default) : "",
      required: required || undefined,
    });
    read = () => (control.value === "" ? undefined : Number(control.value));
  } else if (type === "messages") {
    control = h("textarea", {
      id,
      testid: `input-${name}`,
      rows: 3,
      placeholder: "Type a message (sent as the user), or paste a JSON messages list",
      required: required || undefined,
    });
    read = () => {
      const text = control.value.trim();
      if (!text) return undefined;
      if (text.startsWith("[")) {
        try {
          return JSON.parse(text);
        } catch (err) {
          throw new Error(`${name}: not a JSON list (${err.message}); or type plain text for one user message`);
        }
      }
      return [{ role: "user", content: control.value }];
    };
  } else if (type === "string") {
    const long = /text|prompt|content|document|body|task|question|message/i.test(name);
    control = h(long ? "textarea" : "input", {
      id,
      testid: `input-${name}`,
      rows: long ? 3 : undefined,
      type: long ? undefined : "text",
      placeholder: hasDefault ? String(spec.default) : "",
      required: required || undefined,
    });
    read = () => (control.value === "" ? (required ? "" : undefined) : control.value);
  } else {
    control = h("textarea", {
      id,
      testid: `input-${name}`,
      rows: 3,
      placeholder: type === "any" ? "JSON, or plain text" : `JSON ${type}`,
      required: required || undefined,
    });
    read = () => {
      const text = control.value.trim();
      if (!text) return undefined;
      try {
        return JSON.parse(text);
      } catch (err) {
        if (type === "any") return control.value;
        throw new Error(`${name}: not valid JSON (${err.message})`);
      }
    };
  }
  const element = h(
    "div",
    { class: "field" },
    h("label", { for: id }, name, required ? h("span", { class: "req", "aria-hidden": "true" }, " *") : null),
    control,
    h("small", { class: "hint" }, hint),
  );
  return { element, read };
}

export async function mount(root, ctx) {
  ensureViewsCss();
  tapEvents(ctx.live);
  let alive = true;

  const st = {
    workflows: [],
    defaultName: null,
    name: null, // the workflow shown
    detail: null, // GET /api/workflows/NAME (latest)
    graphKey: "", // name@version of the drawn graph
    graphData: null,
    graph: null,
    runId: null,
    run: null,
    steps: [],
    events: [],
    tokens: new Map(),
    gates: new Map(),
    selected: null,
    follow: true,
    stopWatch: null,
    detailHandle: null,
  };

  // ---- layout
  const wfList = h("ul", { class: "wf-list", testid: "workflow-list", "aria-label": "workflows" });
  const activeList = h("ul", { class: "wf-list", testid: "active-runs", "aria-label": "active runs", "aria-live": "polite" });
  const refreshActiveBtn = h("button", { type: "button", class: "btn btn-small", "aria-label": "refresh the active runs" }, "Refresh");
  const side = h(
    "aside",
    { class: "wf-side" },
    h("h2", {}, "Workflows"),
    wfList,
    h("div", { class: "row-between" }, h("h2", {}, "Active runs"), refreshActiveBtn),
    activeList,
  );
  const header = h("header", { class: "wf-head" });
  const form = h("form", { class: "run-form", testid: "run-inputs", novalidate: true, "aria-label": "run inputs" });
  const formError = h("p", { class: "form-error", role: "alert", testid: "run-error" });
  const runStatus = h("span", { class: "run-status", testid: "run-status", role: "status", "aria-live": "polite" }, "No run yet");
  const cancelBtn = h("button", { type: "button", class: "btn btn-danger", testid: "cancel-run", hidden: true }, "Cancel run");
  const historyLink = h("a", { class: "btn btn-link", hidden: true }, "Open in history");
  const runBar = h("div", { class: "run-bar" }, runStatus, cancelBtn, historyLink);
  const gatesBox = h("div", { class: "gates", "aria-live": "assertive", testid: "gates" });
  const graphHost = h("div", { class: "graph-host" });
  const detailPanel = h("section", { class: "detail-panel", testid: "node-detail", "aria-label": "node detail", tabindex: "-1" });
  const outputsBox = h("section", { class: "run-outputs", testid: "run-outputs", "aria-live": "polite" });
  const main = h(
    "div",
    { class: "wf-main" },
    header,
    form,
    runBar,
    gatesBox,
    h("div", { class: "graph-and-detail" }, graphHost, detailPanel),
    outputsBox,
  );
  const message = h("div", { class: "view-message" });
  root.replaceChildren(h("div", { class: "wf-view", testid: "workflows" }, side, h("div", { class: "wf-content" }, message, main)));
  renderNodeDetail(detailPanel, {});

  // ---- workflow list
  async function loadList() {
    wfList.replaceChildren(h("li", { class: "muted" }, "Loading…"));
    try {
      const data = await ctx.api("/api/workflows");
      if (!alive) return;
      st.workflows = data.workflows || [];
      st.defaultName = data.default || (st.workflows[0] && st.workflows[0].name) || null;
      renderList();
    } catch (err) {
      if (!alive) return;
      wfList.replaceChildren(h("li", {}, errorBox(`Could not list the workflows: ${messageOf(err)}`, loadList)));
    }
  }

  function renderList() {
    if (!st.workflows.length) {
      wfList.replaceChildren(h("li", { class: "muted" }, "No workflows yet. Make one in the editor."));
      return;
    }
    wfList.replaceChildren(
      ...st.workflows.map((w) =>
        h(
          "li",
          {},
          h(
            "button",
            {
              type: "button",
              class: "wf-item",
              testid: `workflow-item-${w.name}`,
              "aria-current": w.name === st.name ? "true" : undefined,
              onclick: () => {
                setRoute(w.name, null);
                openRoute(w.name, null);
              },
            },
            h("span", { class: "wf-name" }, w.name, w.version ? h("small", {}, ` v${w.version}`) : null, w.valid === false ? h("span", { class: "badge badge-error" }, "invalid") : null),
            w.description ? h("span", { class: "wf-desc" }, w.description) : null,
          ),
        ),
      ),
    );
  }

  // ---- active runs
  let activeTimer = null;
  async function loadActive() {
    clearTimeout(activeTimer);
    try {
      const [running, waiting] = await Promise.all([
        ctx.api("/api/runs?status=running&limit=50"),
        ctx.api("/api/runs?status=waiting&limit=50").catch(() => ({ runs: [] })),
      ]);
      if (!alive) return;
      const runs = [...(running.runs || []), ...(waiting.runs || [])].sort((a, b) => (b.created || 0) - (a.created || 0));
      if (!runs.length) activeList.replaceChildren(h("li", { class: "muted" }, "No run is active."));
      else
        activeList.replaceChildren(
          ...runs.map((r) =>
            h(
              "li",
              {},
              h(
                "button",
                {
                  type: "button",
                  class: "wf-item",
                  dataset: { runId: r.id },
                  testid: `active-run-${r.id}`,
                  "aria-current": r.id === st.runId ? "true" : undefined,
                  onclick: () => {
                    setRoute(r.workflow, r.id);
                    openRoute(r.workflow, r.id);
                  },
                },
                h("span", { class: "wf-name" }, r.workflow, " ", statusBadge(r.status)),
                h("span", { class: "wf-desc" }, `${r.id.slice(0, 12)} · started ${fmtTime(r.created)}${r.session ? " · " + r.session : ""}`),
              ),
            ),
          ),
        );
    } catch (err) {
      if (!alive) return;
      activeList.replaceChildren(h("li", {}, errorBox(`Could not list the active runs: ${messageOf(err)}`, loadActive)));
    }
    if (alive) activeTimer = setTimeout(loadActive, 15000);
  }
  refreshActiveBtn.addEventListener("click", loadActive);
  let activeDebounce = null;
  const offActive = ctx.live.on("event", (e) => {
    if (!e || !["run.started", "run.finished", "run.failed", "run.cancelled"].includes(e.type)) return;
    clearTimeout(activeDebounce);
    activeDebounce = setTimeout(() => alive && loadActive(), 400);
  });

  // ---- one workflow
  async function showWorkflow(name) {
    st.name = name;
    st.detail = null;
    renderList();
    header.replaceChildren(h("h2", {}, name), h("p", { class: "muted" }, "Loading…"));
    form.replaceChildren();
    message.replaceChildren();
    try {
      const detail = await ctx.api(`/api/workflows/${enc(name)}`);
      if (!alive || st.name !== name) return;
      st.detail = detail;
      fill(header, 
        h(
          "div",
          { class: "row-between" },
          h("h2", {}, detail.name || name, h("small", {}, detail.version ? ` v${detail.version}` : "")),
          h("a", { class: "btn", href: `#/editor/${enc(name)}`, testid: "edit-workflow" }, "Open in editor"),
        ),
        detail.description ? h("p", { class: "wf-description" }, detail.description) : null,
      );
      await renderForm(detail);
      if (!st.runId) drawGraph(`${name}@${detail.version}`, detail.graph);
    } catch (err) {
      if (!alive || st.name !== name) return;
      header.replaceChildren(h("h2", {}, name));
      message.replaceChildren(errorBox(`Could not load workflow ${name}: ${messageOf(err)}`, () => showWorkflow(name)));
    }
  }

  let readers = [];
  async function renderForm(detail) {
    let inputs = null;
    if (detail.yaml) {
      try {
        const yaml = await ensureYaml();
        const doc = yaml.load(detail.yaml);
        if (doc && typeof doc === "object") inputs = doc.inputs || {};
      } catch {
        inputs = null;
      }
    }
    readers = [];
    const fields = [];
    if (inputs === null) {
      const ta = h("textarea", { id: "wf-input-json", testid: "input-json", rows: 4, placeholder: '{"name": "value"}' });
      fields.push(h("div", { class: "field" }, h("label", { for: "wf-input-json" }, "Inputs (JSON object)"), ta));
      readers.push(() => {
        const text = ta.value.trim();
        if (!text) return {};
        const value = JSON.parse(text);
        if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error("the inputs must be a JSON object");
        return value;
      });
    } else {
      for (const [name, spec] of Object.entries(inputs)) {
        const field = inputField(name, spec);
        fields.push(field.element);
        readers.push(() => {
          const value = field.read();
          return value === undefined ? {} : { [name]: value };
        });
      }
      if (!fields.length) fields.push(h("p", { class: "muted" }, "This workflow takes no inputs."));
    }
    const runBtn = h("button", { type: "submit", class: "btn btn-primary", testid: "run-button" }, "Run");
    form.replaceChildren(h("fieldset", {}, h("legend", {}, "Inputs"), ...fields), h("div", { class: "form-actions" }, runBtn), formError);
  }

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    if (!st.name) return;
    formError.textContent = "";
    let inputs = {};
    try {
      for (const read of readers) Object.assign(inputs, read());
    } catch (err) {
      formError.textContent = messageOf(err);
      return;
    }
    const button = form.querySelector("[data-testid=run-button]");
    if (button) button.disabled = true;
    try {
      const reply = await ctx.api(`/api/workflows/${enc(st.name)}/run`, { body: { inputs, session: "" } });
      if (!alive) return;
      setRoute(st.name, reply.run_id);
      await openRun(reply.run_id);
      loadActive();
    } catch (err) {
      formError.textContent = messageOf(err);
    } finally {
      if (button) button.disabled = false;
    }
  });

  // ---- the graph
  function drawGraph(key, graph) {
    if (st.graph && st.graphKey === key) return;
    if (st.graph) st.graph.destroy();
    st.graph = null;
    st.graphKey = key;
    st.graphData = graph || { nodes: [], edges: [], starts: [] };
    try {
      st.graph = createRunGraph(graphHost, st.graphData, { onSelect: (id) => selectNode(id, true) });
    } catch (err) {
      graphHost.replaceChildren(errorBox(`Could not draw the graph: ${messageOf(err)}`));
    }
  }

  function nodeData(id) {
    return ((st.graphData && st.graphData.nodes) || []).find((n) => n.id === id);
  }

  function selectNode(id, byUser) {
    if (byUser) st.follow = false;
    st.selected = id;
    if (st.graph) st.graph.select(id);
    renderDetail();
  }

  function renderDetail() {
    const node = st.selected ? nodeData(st.selected) : null;
    const own = st.events.filter((e) => e.run_id === st.runId);
    st.detailHandle = renderNodeDetail(detailPanel, {
      node,
      steps: st.steps,
      events: own,
      tokens: node ? st.tokens.get(node.id) || "" : "",
      thinking: node ? node.type === "tool_choice" : false,
    });
  }

  // ---- one run
  function setStatus(status, extra = "") {
    const id = st.runId ? st.runId.slice(0, 12) : "";
    runStatus.replaceChildren(id ? `Run ${id} · ` : "", statusBadge(status), extra ? ` ${extra}` : "");
    runStatus.dataset.status = status;
    cancelBtn.hidden = !ACTIVE.has(status);
    if (st.runId) {
      historyLink.hidden = false;
      historyLink.href = `#/history/${enc(st.runId)}`;
    }
  }

  function stopWatching() {
    if (st.stopWatch) st.stopWatch();
    st.stopWatch = null;
  }

  function clearRun() {
    stopWatching();
    st.runId = null;
    st.run = null;
    st.steps = [];
    st.events = [];
    st.tokens = new Map();
    st.gates = new Map();
    st.follow = true;
    gatesBox.replaceChildren();
    outputsBox.replaceChildren();
    if (st.graph) st.graph.reset();
    runStatus.replaceChildren("No run yet");
    delete runStatus.dataset.status;
    cancelBtn.hidden = true;
    historyLink.hidden = true;
  }

  async function openRun(runId) {
    clearRun();
    st.runId = runId;
    setStatus("running", "· loading…");
    // Follow live events from now on; the tap replays what came before.
    const buffered = [];
    let ready = false;
    let endedEarly = false;
    st.stopWatch = watchRun(ctx, runId, {
      onEvent: (e) => (ready ? onEvent(e) : buffered.push(e)),
      onEnd: () => (ready ? settle() : (endedEarly = true)),
      onPoll: (run) => {
        if (run && run.status && st.runId === runId) setStatus(run.status);
      },
    });
    let run;
    try {
      run = await ctx.api(`/api/runs/${enc(runId)}`);
    } catch (err) {
      if (!alive || st.runId !== runId) return;
      setStatus("unknown");
      message.replaceChildren(errorBox(`Could not load run ${runId}: ${messageOf(err)}`, () => openRun(runId)));
      return;
    }
    if (!alive || st.runId !== runId) return;
    message.replaceChildren();
    if (run.workflow && run.workflow !== st.name) await showWorkflow(run.workflow);
    if (!alive || st.runId !== runId) return;
    await ensureRunGraph(run);
    if (!alive || st.runId !== runId) return;
    applyRun(run);
    ready = true;
    for (const e of buffered) onEvent(e);
    buffered.length = 0;
    if (!ACTIVE.has(run.status)) settle(run);
    else if (endedEarly) settle();
  }

  async function ensureRunGraph(run) {
    const key = `${run.workflow}@${run.version}`;
    if (st.graphKey === key && st.graph) return;
    if (st.detail && st.detail.name === run.workflow && st.detail.version === run.version) {
      drawGraph(key, st.detail.graph);
      return;
    }
    try {
      const versioned = await ctx.api(`/api/workflows/${enc(run.workflow)}${run.version ? "?version=" + enc(run.version) : ""}`);
      drawGraph(key, versioned.graph);
    } catch (err) {
      graphHost.replaceChildren(errorBox(`Could not load ${run.workflow} v${run.version}: ${messageOf(err)}`, () => ensureRunGraph(run).then(() => applyRun(run))));
    }
  }

  function applyRun(run) {
    st.run = run;
    st.steps = run.steps || [];
    const final = !ACTIVE.has(run.status);
    if (st.graph) {
      st.graph.applySteps(st.steps, { final });
      for (const g of run.gates || []) if (g.status === "pending" && g.node) st.graph.setState(g.node, "waiting");
    }
    for (const g of run.gates || []) {
      if (g.status === "pending") addGate({ gate_id: g.id, title: g.title, details: g.details, expires: g.expires, node: g.node });
    }
    setStatus(run.status, final && run.finished && run.created ? `in ${fmtSeconds(run.finished - run.created)}` : "");
    renderOutputs(run);
    renderDetail();
  }

  function renderOutputs(run) {
    if (!run || ACTIVE.has(run.status)) {
      outputsBox.replaceChildren();
      return;
    }
    fill(outputsBox, 
      h("h3", {}, "Result"),
      run.error ? h("div", { class: "step-error", role: "alert" }, h("strong", {}, "Error: "), String(run.error)) : null,
      run.outputs && Object.keys(run.outputs).length ? renderValue(run.outputs, "run outputs") : h("p", { class: "muted" }, "No outputs."),
    );
  }

  let settling = false;
  async function settle(known) {
    if (settling) return;
    settling = true;
    const runId = st.runId;
    try {
      const run = known || (await ctx.api(`/api/runs/${enc(runId)}`));
      if (!alive || st.runId !== runId) return;
      stopWatching();
      gatesBox.replaceChildren();
      st.gates.clear();
      applyRun(run);
    } catch (err) {
      if (alive) ctx.toast(`Could not load the finished run: ${messageOf(err)}`, "error");
    } finally {
      settling = false;
    }
  }

  let refetchTimer = null;
  function refetchSteps() {
    clearTimeout(refetchTimer);
    const runId = st.runId;
    refetchTimer = setTimeout(async () => {
      try {
        const run = await ctx.api(`/api/runs/${enc(runId)}`);
        if (!alive || st.runId !== runId || !ACTIVE.has(run.status)) return;
        st.run = run;
        st.steps = run.steps || [];
        renderDetail();
      } catch {
        /* live events keep the graph right meanwhile */
      }
    }, 800);
  }

  function onEvent(e) {
    if (!alive || !matchesRun(e, st.runId)) return;
    st.events.push(e);
    if (st.events.length > 3000) st.events.splice(0, st.events.length - 3000);
    const own = e.run_id === st.runId;
    const data = e.data || {};
    if (own && st.graph) st.graph.applyEvent(e);
    switch (e.type) {
      case "node.started": {
        if (!own) break;
        st.tokens.set(e.node_id, "");
        const node = nodeData(e.node_id);
        if (st.follow && node && (MODEL_TYPES.has(node.type) || node.type === "tool" || node.type === "gate")) {
          st.selected = e.node_id;
          if (st.graph) st.graph.select(e.node_id);
          renderDetail();
        } else if (st.selected === e.node_id) renderDetail();
        break;
      }
      case "node.token": {
        if (!own) break;
        const text = data.text || "";
        st.tokens.set(e.node_id, (st.tokens.get(e.node_id) || "") + text);
        if (st.selected === e.node_id && st.detailHandle) st.detailHandle.appendToken(text);
        break;
      }
      case "node.output":
      case "node.failed":
      case "node.retry":
        if (own) {
          refetchSteps();
          if (st.selected === e.node_id) renderDetail();
        }
        break;
      case "gate.waiting":
        addGate({ gate_id: data.gate_id, title: data.title, details: data.details, expires: data.expires, node: e.node_id });
        setStatus("waiting");
        break;
      case "gate.resolved":
        removeGate(data.gate_id);
        if (!st.gates.size) setStatus("running");
        break;
      case "run.started":
        if (own) setStatus("running");
        break;
      case "run.failed":
      case "run.cancelled":
        if (own) setStatus(e.type === "run.failed" ? "failed" : "cancelled", data.error ? `· ${data.error}` : "");
        break;
      case "run.finished":
        if (own) setStatus("succeeded");
        break;
      default:
        break;
    }
  }

  // ---- gates
  function addGate(g) {
    if (!g.gate_id || st.gates.has(g.gate_id)) return;
    const error = h("p", { class: "form-error", role: "alert" });
    const answer = async (type, card) => {
      for (const b of card.querySelectorAll("button")) b.disabled = true;
      error.textContent = "";
      try {
        await ctx.live.request({ type, gate_id: g.gate_id });
        ctx.toast(type === "approve" ? "Approved" : "Denied", "ok");
        removeGate(g.gate_id);
      } catch (err) {
        error.textContent = messageOf(err);
        for (const b of card.querySelectorAll("button")) b.disabled = false;
      }
    };
    const card = h("div", { class: "gate-card", role: "group", "aria-label": `approval: ${g.title || "approve?"}`, testid: "gate", dataset: { gateId: g.gate_id } });
    fill(card, 
      h("h3", {}, "Waiting for approval: ", g.title || "Approve?"),
      g.node ? h("p", { class: "muted" }, `node ${g.node}${g.expires ? " · expires " + fmtTime(g.expires) : ""}`) : null,
      g.details !== undefined && g.details !== null ? renderValue(g.details, "details") : null,
      h(
        "div",
        { class: "form-actions" },
        h("button", { type: "button", class: "btn btn-primary", testid: "gate-approve", onclick: () => answer("approve", card) }, "Approve"),
        h("button", { type: "button", class: "btn btn-danger", testid: "gate-deny", onclick: () => answer("deny", card) }, "Deny"),
      ),
      error,
    );
    st.gates.set(g.gate_id, card);
    gatesBox.append(card);
  }

  function removeGate(id) {
    const card = st.gates.get(id);
    if (card) card.remove();
    st.gates.delete(id);
  }

  cancelBtn.addEventListener("click", async () => {
    if (!st.runId) return;
    cancelBtn.disabled = true;
    try {
      await ctx.api(`/api/runs/${enc(st.runId)}/cancel`, { method: "POST", body: {} });
      ctx.toast("Cancelling the run…", "info");
    } catch (err) {
      ctx.toast(`Could not cancel: ${messageOf(err)}`, "error");
    } finally {
      cancelBtn.disabled = false;
    }
  });

  // ---- routing
  async function openRoute(name, runId) {
    if (!name && !runId) {
      if (!st.workflows.length) await loadList();
      name = st.defaultName;
      if (!name) {
        clearRun();
        header.replaceChildren(h("h2", {}, "Workflows"), h("p", { class: "muted" }, "No workflow to show."));
        return;
      }
      history.replaceState(null, "", `#/workflows/${enc(name)}`);
    }
    if (runId) {
      if (name && name !== st.name) showWorkflow(name);
      if (runId !== st.runId) await openRun(runId);
      return;
    }
    clearRun();
    if (name !== st.name || !st.detail) await showWorkflow(name);
    else if (st.detail) drawGraph(`${name}@${st.detail.version}`, st.detail.graph);
    renderList();
  }

  let hashTimer = null;
  const onHash = () => {
    clearTimeout(hashTimer);
    hashTimer = setTimeout(() => {
      if (!alive) return;
      const parts = routeParts();
      if (parts[0] !== "workflows") return;
      openRoute(parts[1] || null, parts[2] || null);
    }, 0);
  };
  window.addEventListener("hashchange", onHash);
  window.addEventListener("popstate", onHash);

  await loadList();
  loadActive();
  const params = ctx.params || [];
  await openRoute(params[0] || null, params[1] || null);

  return () => {
    alive = false;
    stopWatching();
    offActive();
    clearTimeout(activeTimer);
    clearTimeout(activeDebounce);
    clearTimeout(refetchTimer);
    window.removeEventListener("hashchange", onHash);
    window.removeEventListener("popstate", onHash);
    if (st.graph) st.graph.destroy();
  };
}
