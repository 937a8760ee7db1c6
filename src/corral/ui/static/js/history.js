// History: browse past runs (filters, paging), open one to see its graph coloured by its steps, every
// step's inputs and outputs, its result; replay it with edited inputs or fork it from a step, then
// follow the new run live.
// Route: #/history[/RUN_ID]

import {
  ACTIVE,
  createRunGraph,
  ensureViewsCss,
  errorBox,
  fmtSeconds,
  fill,
  fmtTime,
  h,
  messageOf,
  renderNodeDetail,
  renderValue,
  statusBadge,
  tapEvents,
  watchRun,
} from "./graph.js";

const enc = encodeURIComponent;
const PAGE = 50;
const STATUSES = ["running", "waiting", "succeeded", "failed", "cancelled", "interrupted"];

// Filters survive leaving the list for a run and coming back.
const remembered = { workflow: "", status: "", since: "", before: "" };

function dateToEpoch(value, endOfDay) {
  if (!value) return null;
  const [y, m, d] = value.split("-").map(Number);
  if (!y || !m || !d) return null;
  const date = new Date(y, m - 1, d + (endOfDay ? 1 : 0));
  return Math.floor(date.getTime() / 1000);
}

function durationOf(run) {
  if (!run || !run.created) return "";
  const end = run.finished || (ACTIVE.has(run.status) ? Date.now() / 1000 : run.updated);
  if (!end) return "";
  return fmtSeconds(Math.max(0, end - run.created)) + (ACTIVE.has(run.status) ? " …" : "");
}

function stepCount(run) {
  if (Array.isArray(run.steps)) return run.steps.length;
  return run.steps ?? "";
}

function routeParts() {
  return location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
}

export async function mount(root, ctx) {
  ensureViewsCss();
  tapEvents(ctx.live);
  let alive = true;
  const view = h("div", { class: "history-view", testid: "history" });
  root.replaceChildren(view);

  let current = null; // the open run's teardown

  function teardown() {
    if (current) current();
    current = null;
  }

  let routeToken = 0;
  async function route(runId) {
    const mine = ++routeToken;
    teardown();
    const done = runId ? await showRun(runId) : await showList();
    if (mine !== routeToken || !alive) {
      if (done) done();
      return;
    }
    current = done;
  }

  // ------------------------------------------------------------------------------------------
  // The list

  async function showList() {
    const fWorkflow = h("select", { id: "filter-workflow", testid: "filter-workflow" }, h("option", { value: "" }, "all workflows"));
    const fStatus = h(
      "select",
      { id: "filter-status", testid: "filter-status" },
      h("option", { value: "" }, "any status"),
      STATUSES.map((s) => h("option", { value: s }, s)),
    );
    const fSince = h("input", { type: "date", id: "filter-since", testid: "filter-since" });
    const fBefore = h("input", { type: "date", id: "filter-before", testid: "filter-before" });
    fStatus.value = remembered.status;
    fSince.value = remembered.since;
    fBefore.value = remembered.before;
    const clearBtn = h("button", { type: "button", class: "btn", testid: "filter-clear" }, "Clear filters");
    const filters = h(
      "form",
      { class: "filters", role: "search", "aria-label": "filter runs" },
      h("div", { class: "field" }, h("label", { for: "filter-workflow" }, "Workflow"), fWorkflow),
      h("div", { class: "field" }, h("label", { for: "filter-status" }, "Status"), fStatus),
      h("div", { class: "field" }, h("label", { for: "filter-since" }, "From"), fSince),
      h("div", { class: "field" }, h("label", { for: "filter-before" }, "To (inclusive)"), fBefore),
      h("div", { class: "field field-actions" }, h("button", { type: "submit", class: "btn btn-primary", testid: "filter-apply" }, "Apply"), clearBtn),
    );
    const tbody = h("tbody");
    const table = h(
      "table",
      { class: "runs-table", testid: "runs-table" },
      h("caption", { class: "sr-only" }, "Runs, newest first. Press Enter on a row to open the run."),
      h(
        "thead",
        {},
        h("tr", {}, ["Started", "Workflow", "Status", "Steps", "Duration", "Session", "Error"].map((t) => h("th", { scope: "col" }, t))),
      ),
      tbody,
    );
    const note = h("div", { class: "view-message", "aria-live": "polite" });
    const more = h("button", { type: "button", class: "btn", testid: "load-more", hidden: true }, "Load more");
    view.replaceChildren(h("h2", {}, "Run history"), filters, note, h("div", { class: "table-wrap" }, table), more);

    let lastCreated = null;
    let token = 0;

    const query = (before) => {
      const q = new URLSearchParams();
      if (fWorkflow.value) q.set("workflow", fWorkflow.value);
      if (fStatus.value) q.set("status", fStatus.value);
      const since = dateToEpoch(fSince.value, false);
      if (since !== null) q.set("since", String(since));
      let until = dateToEpoch(fBefore.value, true);
      if (before !== null && before !== undefined) until = until === null ? before : Math.min(until, before);
      if (until !== null) q.set("before", String(until));
      q.set("limit", String(PAGE));
      return q.toString();
    };

    const row = (run) => {
      const open = () => ctx.navigate(`#/history/${enc(run.id)}`);
      const tr = h(
        "tr",
        {
          class: "run-row",
          testid: "run-row",
          dataset: { runId: run.id, status: run.status },
          tabindex: "0",
          "aria-label": `${run.workflow} run ${run.id}, ${run.status}, started ${fmtTime(run.created)}`,
          onclick: (event) => {
            if (event.target.closest("a")) return;
            open();
          },
          onkeydown: (event) => {
            if (event.key === "Enter" && !event.target.closest("a")) {
              event.preventDefault();
              open();
            }
          },
        },
        h("td", {}, h("a", { href: `#/history/${enc(run.id)}`, tabindex: "-1" }, fmtTime(run.created))),
        h("td", {}, `${run.workflow}@${run.version ?? "?"}`, run.forked_from ? h("small", { class: "muted" }, " fork") : null),
        h("td", {}, statusBadge(run.status)),
        h("td", { class: "num" }, String(stepCount(run))),
        h("td", { class: "num" }, durationOf(run)),
        h("td", { class: "ellipsis", title: run.session || "" }, run.session || "—"),
        h("td", { class: "ellipsis error-snippet", title: run.error || "" }, run.error ? String(run.error).slice(0, 90) : ""),
      );
      return tr;
    };

    const load = async (append) => {
      const mine = ++token;
      note.replaceChildren(append ? "" : h("p", { class: "muted" }, "Loading…"));
      more.disabled = true;
      try {
        const data = await ctx.api(`/api/runs?${query(append ? lastCreated : null)}`);
        if (!alive || mine !== token) return;
        const runs = data.runs || [];
        if (!append) tbody.replaceChildren();
        for (const run of runs) tbody.append(row(run));
        if (runs.length) lastCreated = runs[runs.length - 1].created;
        more.hidden = runs.length < PAGE;
        note.replaceChildren(
          !append && !runs.length ? h("p", { class: "muted", testid: "no-runs" }, "No runs match these filters.") : "",
        );
      } catch (err) {
        if (!alive || mine !== token) return;
        note.replaceChildren(errorBox(`Could not load the runs: ${messageOf(err)}`, () => load(append)));
      } finally {
        more.disabled = false;
      }
    };

    const apply = () => {
      remembered.workflow = fWorkflow.value;
      remembered.status = fStatus.value;
      remembered.since = fSince.value;
      remembered.before = fBefore.value;
      lastCreated = null;
      load(false);
    };
    filters.addEventListener("submit", (event) => {
      event.preventDefault();
      apply();
    });
    for (const control of [fWorkflow, fStatus, fSince, fBefore]) control.addEventListener("change", apply);
    clearBtn.addEventListener("click", () => {
      fWorkflow.value = "";
      fStatus.value = "";
      fSince.value = "";
      fBefore.value = "";
      apply();
    });
    more.addEventListener("click", () => load(true));

    if (remembered.workflow) fWorkflow.append(h("option", { value: remembered.workflow }, remembered.workflow));
    fWorkflow.value = remembered.workflow;
    ctx.api("/api/workflows").then(
      (data) => {
        if (!alive) return;
        const have = new Set([...fWorkflow.options].map((o) => o.value));
        for (const w of data.workflows || []) if (!have.has(w.name)) fWorkflow.append(h("option", { value: w.name }, w.name));
      },
      () => {},
    );
    await load(false);
    return () => {
      token++;
    };
  }

  // ------------------------------------------------------------------------------------------
  // One run

  async function showRun(runId) {
    let stopped = false;
    let graph = null;
    let stopWatch = null;
    let selected = null;
    let run = null;
    let events = [];
    const tokens = new Map();
    let detailHandle = null;

    const back = h("a", { href: "#/history", class: "btn btn-link", testid: "back-to-runs" }, "← All runs");
    const head = h("header", { class: "run-head" }, h("h2", {}, "Run ", h("code", {}, runId)));
    const status = h("span", { class: "run-status", testid: "run-status", role: "status", "aria-live": "polite" }, "loading…");
    const meta = h("div", { class: "kvs run-meta" });
    const actions = h("div", { class: "form-actions run-actions" });
    const graphHost = h("div", { class: "graph-host" });
    const detailPanel = h("section", { class: "detail-panel", testid: "node-detail", "aria-label": "node detail" });
    const stepList = h("ol", { class: "step-list", testid: "step-list", "aria-label": "steps" });
    const result = h("section", { class: "run-outputs", testid: "run-outputs", "aria-live": "polite" });
    const replayInputs = h("textarea", { id: "replay-inputs", testid: "replay-inputs", rows: 8, spellcheck: "false", "aria-describedby": "replay-error" });
    const replayError = h("p", { class: "form-error", id: "replay-error", role: "alert", testid: "replay-error" });
    const replayBtn = h("button", { type: "button", class: "btn btn-primary", testid: "replay-button" }, "Replay with these inputs");
    const forkSeq = h("select", { id: "fork-seq", testid: "fork-seq" });
    const forkBtn = h("button", { type: "button", class: "btn", testid: "fork-button" }, "Fork from this step");
    const replayBox = h(
      "section",
      { class: "replay-box", "aria-label": "replay or fork" },
      h("h3", {}, "Replay or fork"),
      h("div", { class: "field" }, h("label", { for: "replay-inputs" }, "Inputs (JSON; edit to change them)"), replayInputs),
      h("div", { class: "form-actions" }, replayBtn),
      h(
        "div",
        { class: "field fork-row" },
        h("label", { for: "fork-seq" }, "Fork: keep the steps up to"),
        forkSeq,
        forkBtn,
      ),
      replayError,
    );
    const body = h(
      "div",
      { class: "run-detail", testid: "run-detail" },
      h("div", { class: "row-between" }, back, status),
      head,
      meta,
      actions,
      h("div", { class: "graph-and-detail" }, graphHost, detailPanel),
      h("section", { class: "steps-box" }, h("h3", {}, "Steps"), stepList),
      result,
      replayBox,
    );
    const note = h("div", { class: "view-message" });
    view.replaceChildren(note, body);
    renderNodeDetail(detailPanel, {});

    const graphNode = (id) => (graph && graph.node(id)) || null;

    function renderDetail(focusSeq = null) {
      const node = selected ? graphNode(selected) : null;
      detailHandle = renderNodeDetail(detailPanel, {
        node: node || (selected ? { id: selected, type: "?", title: selected } : null),
        steps: (run && run.steps) || [],
        events: events.filter((e) => run && e.run_id === run.id),
        tokens: selected ? tokens.get(selected) || "" : "",
        thinking: node ? node.type === "tool_choice" : false,
        focusSeq,
      });
    }

    function select(id, seq = null) {
      selected = id;
      if (graph) graph.select(id);
      renderDetail(seq);
      if (seq !== null) detailPanel.focus?.();
    }

    function renderRun() {
      status.replaceChildren(statusBadge(run.status));
      status.dataset.status = run.status;
      head.replaceChildren(
        h("h2", {}, `${run.workflow}@${run.version ?? "?"} `, h("small", {}, h("code", {}, run.id))),
      );
      const link = (id) => h("a", { href: `#/history/${enc(id)}` }, id.slice(0, 12));
      const kv = (k, v) => h("div", { class: "kv" }, h("span", { class: "k" }, k), h("span", { class: "v" }, v));
      fill(meta, 
        kv("started", fmtTime(run.created)),
        kv("finished", run.finished ? fmtTime(run.finished) : "—"),
        kv("duration", durationOf(run) || "—"),
        kv("steps", String(stepCount(run))),
        kv("session", run.session || "—"),
        run.parent_id ? kv("parent", link(run.parent_id)) : null,
        run.forked_from ? kv("forked from", h("span", {}, link(run.forked_from), ` after step ${run.fork_seq ?? 0}`)) : null,
      );
      fill(actions, 
        ACTIVE.has(run.status)
          ? h("a", { class: "btn", href: `#/workflows/${enc(run.workflow)}/${enc(run.id)}`, testid: "watch-live" }, "Watch in Workflows")
          : null,
        ACTIVE.has(run.status) ? h("button", { type: "button", class: "btn btn-danger", testid: "cancel-run", onclick: cancel }, "Cancel run") : null,
        ["interrupted", "failed", "cancelled"].includes(run.status)
          ? h("button", { type: "button", class: "btn", testid: "resume-run", onclick: resume }, "Resume this run")
          : null,
      );
      const steps = [...(run.steps || [])].sort((a, b) => a.seq - b.seq);
      stepList.replaceChildren(
        ...(steps.length
          ? steps.map((s) =>
              h(
                "li",
                {},
                h(
                  "button",
                  {
                    type: "button",
                    class: `step-btn step-${s.status}`,
                    testid: `step-${s.seq}`,
                    dataset: { seq: s.seq, node: s.node },
                    onclick: () => select(s.node, s.seq),
                  },
                  h("span", { class: "step-seq" }, `#${s.seq}`),
                  h("span", { class: "step-node" }, s.node),
                  statusBadge(s.status),
                  s.branch ? h("span", { class: "step-branch" }, `→ ${s.branch}`) : null,
                  h("span", { class: "step-time" }, fmtSeconds(s.elapsed_s)),
                  s.error ? h("span", { class: "error-snippet" }, String(s.error).slice(0, 80)) : null,
                ),
              ),
            )
          : [h("li", { class: "muted" }, "No step has completed yet.")]),
      );
      // Fork points: 0 (none kept) .. last seq.
      const keep = forkSeq.value;
      forkSeq.replaceChildren(
        h("option", { value: "0" }, "0 — none (start over)"),
        ...steps.map((s) => h("option", { value: String(s.seq) }, `${s.seq} — after ${s.node}${s.branch ? " → " + s.branch : ""}`)),
      );
      if (keep && [...forkSeq.options].some((o) => o.value === keep)) forkSeq.value = keep;
      else if (steps.length) forkSeq.value = String(steps[steps.length - 1].seq);
      if (!replayInputs.dataset.touched) replayInputs.value = JSON.stringify(run.inputs || {}, null, 2);
      if (ACTIVE.has(run.status)) result.replaceChildren();
      else
        fill(result, 
          h("h3", {}, "Result"),
          run.error ? h("div", { class: "step-error", role: "alert" }, h("strong", {}, "Error: "), String(run.error)) : null,
          run.outputs && Object.keys(run.outputs).length ? renderValue(run.outputs, "run outputs") : h("p", { class: "muted" }, "No outputs."),
        );
      if (graph) {
        graph.applySteps(run.steps || [], { final: !ACTIVE.has(run.status) });
        for (const g of run.gates || []) if (g.status === "pending" && g.node) graph.setState(g.node, "waiting");
      }
      renderDetail();
    }
    replayInputs.addEventListener("input", () => {
      replayInputs.dataset.touched = "1";
      replayError.textContent = "";
    });

    function readInputs() {
      replayError.textContent = "";
      let inputs;
      try {
        inputs = JSON.parse(replayInputs.value.trim() || "{}");
      } catch (err) {
        replayError.textContent = `The inputs are not valid JSON: ${err.message}. Nothing was sent.`;
        replayInputs.focus();
        return null;
      }
      if (!inputs || typeof inputs !== "object" || Array.isArray(inputs)) {
        replayError.textContent = "The inputs must be a JSON object, e.g. {\"text\": \"…\"}. Nothing was sent.";
        replayInputs.focus();
        return null;
      }
      return inputs;
    }

    async function startNew(kind) {
      const inputs = readInputs();
      if (!inputs) return;
      const button = kind === "replay" ? replayBtn : forkBtn;
      button.disabled = true;
      try {
        const bodyJson = kind === "replay" ? { inputs } : { at_seq: Number(forkSeq.value || 0), inputs };
        const reply = await ctx.api(`/api/runs/${enc(runId)}/${kind}`, { body: bodyJson });
        ctx.toast(kind === "replay" ? "Replaying the run" : `Forked from step ${bodyJson.at_seq}`, "ok");
        ctx.navigate(`#/history/${enc(reply.run_id)}`);
      } catch (err) {
        replayError.textContent = messageOf(err);
      } finally {
        button.disabled = false;
      }
    }
    replayBtn.addEventListener("click", () => startNew("replay"));
    forkBtn.addEventListener("click", () => startNew("fork"));

    async function cancel() {
      try {
        await ctx.api(`/api/runs/${enc(runId)}/cancel`, { method: "POST", body: {} });
        ctx.toast("Cancelling the run…", "info");
      } catch (err) {
        ctx.toast(`Could not cancel: ${messageOf(err)}`, "error");
      }
    }

    async function resume() {
      try {
        await ctx.api(`/api/runs/${enc(runId)}/resume`, { method: "POST", body: {} });
        ctx.toast("Resuming the run", "ok");
        await reload();
        follow();
      } catch (err) {
        ctx.toast(`Could not resume: ${messageOf(err)}`, "error");
      }
    }

    async function reload() {
      const fresh = await ctx.api(`/api/runs/${enc(runId)}`);
      if (stopped) return;
      run = fresh;
      renderRun();
    }

    let refetchTimer = null;
    function follow() {
      if (stopWatch) return;
      stopWatch = watchRun(ctx, runId, {
        onEvent: (e) => {
          if (stopped) return;
          events.push(e);
          if (events.length > 3000) events.splice(0, events.length - 3000);
          if (e.run_id !== runId) return;
          if (graph) graph.applyEvent(e);
          if (e.type === "node.started") tokens.set(e.node_id, "");
          if (e.type === "node.token") {
            const text = (e.data && e.data.text) || "";
            tokens.set(e.node_id, (tokens.get(e.node_id) || "") + text);
            if (selected === e.node_id && detailHandle) detailHandle.appendToken(text);
            return;
          }
          if (e.type === "gate.waiting") {
            status.replaceChildren(statusBadge("waiting"));
            status.dataset.status = "waiting";
          }
          if (["node.output", "node.failed"].includes(e.type)) {
            clearTimeout(refetchTimer);
            refetchTimer = setTimeout(() => reload().catch(() => {}), 700);
          }
        },
        onEnd: () => {
          if (stopWatch) stopWatch();
          stopWatch = null;
          clearTimeout(refetchTimer);
          reload().catch((err) => ctx.toast(`Could not load the finished run: ${messageOf(err)}`, "error"));
        },
        onPoll: (fresh) => {
          if (stopped || !fresh) return;
          run = fresh;
          renderRun();
        },
      });
    }

    async function load() {
      note.replaceChildren();
      try {
        run = await ctx.api(`/api/runs/${enc(runId)}`);
      } catch (err) {
        if (stopped) return;
        body.hidden = true;
        note.replaceChildren(back.cloneNode(true), errorBox(`Could not load run ${runId}: ${messageOf(err)}`, () => load()));
        return;
      }
      if (stopped) return;
      body.hidden = false;
      try {
        const wf = await ctx.api(`/api/workflows/${enc(run.workflow)}${run.version ? "?version=" + enc(run.version) : ""}`);
        if (stopped) return;
        graph = createRunGraph(graphHost, wf.graph || { nodes: [], edges: [], starts: [] }, { onSelect: (id) => select(id) });
      } catch (err) {
        if (stopped) return;
        graphHost.replaceChildren(errorBox(`Could not load the graph of ${run.workflow} v${run.version}: ${messageOf(err)}`));
      }
      renderRun();
      if (ACTIVE.has(run.status)) follow();
    }

    if (ctx.live) tapEvents(ctx.live);
    await load();
    return () => {
      stopped = true;
      clearTimeout(refetchTimer);
      if (stopWatch) stopWatch();
      if (graph) graph.destroy();
    };
  }

  // ------------------------------------------------------------------------------------------
  // Routing (the shell remounts on navigation; this also copes with a shell that does not)

  let hashTimer = null;
  const onHash = () => {
    clearTimeout(hashTimer);
    hashTimer = setTimeout(() => {
      if (!alive) return;
      const parts = routeParts();
      if (parts[0] !== "history") return;
      route(parts[1] || null);
    }, 0);
  };
  window.addEventListener("hashchange", onHash);

  await route((ctx.params || [])[0] || null);

  return () => {
    alive = false;
    clearTimeout(hashTimer);
    window.removeEventListener("hashchange", onHash);
    teardown();
  };
}
