// Archive: the prompt-evolution tree of a suite (corral evolve). Each variant is a node coloured by
// its score (red 0 → green 1), a star marks the promoted prompt and a diamond the Pareto front;
// clicking one shows its prompt, the diff against its parent, the mutation's rationale and its
// score on every case. Admins promote a variant or roll the promotion back.
// Route: #/archive[/VARIANT]   Data: GET /api/evolve/tree, GET /api/evolve/variants/ID

import cytoscape from "../vendor/cytoscape.esm.min.js";
import { ensureCss, fill, h } from "./dom.js";

const enc = encodeURIComponent;

function colour(score) {
  if (score === null || score === undefined) return "#94a3b8";
  const hue = Math.round(Math.max(0, Math.min(1, score)) * 120);
  return `hsl(${hue}, 65%, 42%)`;
}

function pct(score) {
  return score === null || score === undefined ? "—" : `${Math.round(score * 100)}%`;
}

function diffView(text) {
  if (!text) return h("p", { class: "muted small" }, "No diff: this is a seed prompt.");
  const lines = text.split("\n").map((line) => {
    const kind = line.startsWith("+") && !line.startsWith("+++") ? "add" : line.startsWith("-") && !line.startsWith("---") ? "del" : "";
    return h("span", { class: `diff-line ${kind ? `diff-${kind}` : ""}` }, line + "\n");
  });
  return h("pre", { class: "archive-pre archive-diff", testid: "archive-diff" }, lines);
}

export async function mount(root, ctx) {
  ensureCss("/ui/views.css");
  const isAdmin = ctx.me && ctx.me.scope === "admin";
  let alive = true;
  let cy = null;
  let tree = null;
  let selected = ctx.params && ctx.params[0] ? ctx.params[0] : null;

  const suitePick = h("select", { testid: "archive-suite", "aria-label": "Suite" });
  const rollback = isAdmin
    ? h("button", { type: "button", class: "btn", testid: "archive-rollback", onclick: () => doRollback() }, "Roll back promotion")
    : null;
  const summary = h("p", { class: "muted small", testid: "archive-summary" });
  const canvas = h("div", { class: "archive-canvas", testid: "archive-graph", role: "img", "aria-label": "Evolution tree" });
  const list = h("ul", { class: "archive-list", testid: "archive-list", "aria-label": "Variants" });
  const detail = h("div", { class: "archive-detail", testid: "archive-detail" },
    h("p", { class: "muted" }, "Choose a variant to see its prompt, diff and scores."));
  const legend = h(
    "p", { class: "muted small archive-legend" },
    "Colour: validation score (red 0% → green 100%, grey not scored). ★ promoted · ◆ Pareto front.",
  );
  root.replaceChildren(
    h("div", { class: "archive-view", testid: "archive" },
      h("div", { class: "archive-head" }, h("h2", {}, "Prompt evolution"), h("label", {}, "Suite ", suitePick), rollback),
      summary,
      h("div", { class: "archive-body" },
        h("div", { class: "archive-tree" }, canvas, legend, list),
        detail)),
  );
  suitePick.addEventListener("change", () => load(suitePick.value));

  async function load(suite) {
    const query = suite ? `?suite=${enc(suite)}` : "";
    try {
      tree = await ctx.api(`/api/evolve/tree${query}`);
    } catch (err) {
      if (alive) fill(summary, h("span", { class: "error-text", role: "alert" }, err.message || String(err)));
      return;
    }
    if (!alive) return;
    fill(suitePick, tree.suites.map((name) => h("option", { value: name, selected: name === tree.suite }, name)));
    const promoted = tree.nodes.filter((n) => n.promoted).map((n) => n.id);
    fill(summary, tree.nodes.length
      ? `${tree.nodes.length} variant(s) of suite ${tree.suite}; promoted: ${promoted.join(", ") || "none (seed prompts)"}`
      : `No variants yet for ${tree.suite || "any suite"}: run \`corral evolve campaign\`.`);
    draw();
    if (selected && tree.nodes.some((n) => n.id === selected)) show(selected);
  }

  function label(node) {
    return `${node.promoted ? "★ " : ""}${node.id.slice(2, 8)}\n${pct(node.score)}`;
  }

  function draw() {
    if (cy) cy.destroy();
    const elements = [];
    for (const node of tree.nodes) {
      elements.push({ data: { id: node.id, label: label(node), colour: colour(node.score) }, classes: [node.promoted ? "promoted" : "", node.pareto ? "pareto" : ""].join(" ") });
      for (const parent of node.parents) elements.push({ data: { id: `${parent}->${node.id}`, source: parent, target: node.id } });
    }
    cy = cytoscape({
      container: canvas,
      elements,
      layout: { name: "breadthfirst", directed: true, spacingFactor: 1.1, padding: 16 },
      style: [
        { selector: "node", style: { "background-color": "data(colour)", label: "data(label)", "text-wrap": "wrap", "font-size": 10, color: "#fff", "text-valign": "center", "text-halign": "center", width: 62, height: 40, shape: "round-rectangle" } },
        { selector: "node.pareto", style: { shape: "diamond", width: 70, height: 54 } },
        { selector: "node.promoted", style: { "border-width": 4, "border-color": "#f59e0b" } },
        { selector: "node:selected", style: { "overlay-color": "#2563eb", "overlay-opacity": 0.25 } },
        { selector: "edge", style: { width: 2, "line-color": "#94a3b8", "target-arrow-color": "#94a3b8", "target-arrow-shape": "triangle", "curve-style": "bezier" } },
      ],
      minZoom: 0.2,
      maxZoom: 2.5,
      userZoomingEnabled: false,
      boxSelectionEnabled: false,
      autoungrabify: true,
      selectionType: "single",
    });
    cy.on("tap", "node", (evt) => show(evt.target.id()));
    cy.fit(undefined, 16);
    if (cy.zoom() > 1.2) { cy.zoom(1.2); cy.center(); }
    fill(list, tree.nodes.map((node) => h("li", {},
      h("button", { type: "button", class: "archive-node", testid: `archive-node-${node.id}`, onclick: () => show(node.id) },
        h("span", { class: "archive-dot", style: `background:${colour(node.score)}` }),
        `${node.promoted ? "★ " : ""}${node.pareto ? "◆ " : ""}${node.id}`,
        h("span", { class: "muted small" }, ` gen ${node.generation} · ${node.selection} · ${pct(node.score)}`)))));
  }

  async function show(id) {
    selected = id;
    if (cy) { cy.$(":selected").unselect(); cy.$id(id).select(); }
    let v;
    try {
      v = await ctx.api(`/api/evolve/variants/${enc(id)}`);
    } catch (err) {
      fill(detail, h("p", { class: "error-text", role: "alert" }, err.message || String(err)));
      return;
    }
    if (!alive || selected !== id) return;
    const parents = v.parent_ids.length
      ? v.parent_ids.map((p) => h("button", { type: "button", class: "linkish", onclick: () => show(p) }, p))
      : ["none (seed)"];
    const promote = isAdmin && !v.promoted
      ? h("button", { type: "button", class: "primary", testid: "archive-promote", onclick: () => doPromote(v.id) }, "Promote")
      : null;
    fill(detail,
      h("h3", { testid: "archive-variant-id" }, `${v.promoted ? "★ " : ""}${v.id}`),
      h("dl", { class: "archive-facts" },
        h("dt", {}, "Role"), h("dd", {}, v.role),
        h("dt", {}, "Parent"), h("dd", { testid: "archive-parent" }, parents),
        h("dt", {}, "Chosen by"), h("dd", {}, `${v.selection} (generation ${v.generation}, seed ${v.seed})`),
        h("dt", {}, "Cost"), h("dd", {}, `${v.cost.calls} call(s), ${v.cost.tokens} tokens; models ${v.models.join(", ") || "—"}`)),
      promote,
      h("h4", {}, "Rationale"), h("p", { testid: "archive-rationale" }, v.rationale || "—"),
      h("h4", {}, "Prompt"), h("pre", { class: "archive-pre", testid: "archive-prompt" }, v.prompts[v.role] || ""),
      h("h4", {}, "Diff against the parent"), diffView(v.diff),
      h("h4", {}, "Scores per case"),
      v.scores.length
        ? h("table", { class: "archive-scores", testid: "archive-scores" },
            h("thead", {}, h("tr", {}, h("th", {}, "split"), h("th", {}, "case"), h("th", {}, "score"), h("th", {}, "feedback"))),
            h("tbody", {}, v.scores.map((s) => h("tr", { class: s.passed ? "pass" : "fail" },
              h("td", {}, s.split), h("td", {}, s.case), h("td", {}, pct(s.score)), h("td", { class: "small" }, s.feedback)))))
        : h("p", { class: "muted small" }, "Not evaluated yet."));
  }

  async function doPromote(id) {
    try {
      await ctx.api("/api/evolve/promote", { method: "POST", body: { variant_id: id } });
      ctx.toast(`Promoted ${id}; the agent uses it from its next step`, "info");
    } catch (err) {
      ctx.toast(err.message || String(err), "error");
    }
    await load(tree && tree.suite);
  }

  async function doRollback() {
    try {
      const res = await ctx.api("/api/evolve/rollback", { method: "POST", body: {} });
      ctx.toast(`Rolled back; promoted now: ${res.promoted || "the seed prompt"}`, "info");
    } catch (err) {
      ctx.toast(err.message || String(err), "error");
    }
    await load(tree && tree.suite);
  }

  await load(null);
  return () => {
    alive = false;
    if (cy) cy.destroy();
  };
}
