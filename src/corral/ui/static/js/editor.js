// The workflow editor: a Drawflow canvas over the workflow YAML. Nodes come from the palette (the
// server's node types); wiring output port P of node A into input Q of node B writes the binding
// `in: {Q: $A.P}`; wiring a "done" or branch output into a node's "after" input writes an edge.
// The side form edits a node's id, title, parameters (from the type's JSON schema), literal inputs and
// error handling; the YAML is validated on the server as you edit, saved, exported and imported.
// Route: #/editor[/NAME]
//
// The model (workflow, nodes, bindings, edges) is the source of truth; the canvas is redrawn from it.

const enc = encodeURIComponent;
const NAME_RE = /^[A-Za-z][A-Za-z0-9_-]{0,63}$/;
const REF_RE = /^\$([A-Za-z][A-Za-z0-9_-]*)(?:\.([A-Za-z0-9_-]+))?$/;
const RESERVED = new Set(["inputs", "vars", "run"]);
const PORT_TYPES = ["any", "string", "number", "integer", "boolean", "list", "object", "messages"];
const NODE_KEYS = ["type", "title", "in", "params", "timeout_s", "retry", "on_error", "set", "append", "ui"];
const TOP_KEYS = ["version", "name", "description", "inputs", "vars", "nodes", "edges", "max_steps"];
const ROW = 22; // px per port row; keep in step with views.css (.ed-node .dfn-row, .input, .output)

// ---------------------------------------------------------------------------------------------
// DOM helpers: dom.js (this module stays free of Cytoscape, so it does not import graph.js)

import { ensureCss, h, loadScript } from "./dom.js";

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
}

const clone = (value) => (value === undefined ? undefined : JSON.parse(JSON.stringify(value)));
const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);

// ---------------------------------------------------------------------------------------------
// The model: pure functions (exported as _internals for tests)

export function compatible(source, target) {
  if (source === "any" || target === "any" || source === target) return true;
  const pair = `${source}>${target}`;
  return pair === "integer>number" || pair === "messages>list" || pair === "list>messages";
}

/** A parsed YAML document -> the editor model. Throws with a plain message when it is not a workflow. */
export function docToModel(doc) {
  if (!isObj(doc)) throw new Error("a workflow file must be a mapping with `name`, `nodes` and `edges`");
  if (doc.nodes !== undefined && !isObj(doc.nodes)) throw new Error("`nodes` must be a mapping of node id to node");
  if (doc.edges !== undefined && doc.edges !== null && !Array.isArray(doc.edges)) throw new Error("`edges` must be a list");
  const extra = {};
  for (const [k, v] of Object.entries(doc)) if (!TOP_KEYS.includes(k)) extra[k] = clone(v);
  const wf = {
    version: doc.version ?? 1,
    name: doc.name === undefined || doc.name === null ? "" : String(doc.name),
    description: doc.description === undefined || doc.description === null ? "" : String(doc.description),
    inputs: isObj(doc.inputs) ? clone(doc.inputs) : {},
    vars: doc.vars === undefined ? undefined : clone(doc.vars),
    max_steps: doc.max_steps,
    extra,
  };
  const nodes = new Map();
  for (const [id, spec0] of Object.entries(doc.nodes || {})) {
    const spec = isObj(spec0) ? spec0 : {};
    const node = {
      id: String(id),
      type: spec.type === undefined ? "" : String(spec.type),
      title: spec.title === undefined || spec.title === null ? "" : String(spec.title),
      in: isObj(spec.in) ? clone(spec.in) : {},
      params: isObj(spec.params) ? clone(spec.params) : {},
      timeout_s: spec.timeout_s,
      retry: spec.retry === undefined ? undefined : clone(spec.retry),
      on_error: spec.on_error,
      set: isObj(spec.set) ? clone(spec.set) : {},
      append: isObj(spec.append) ? clone(spec.append) : {},
      ui: isObj(spec.ui) ? clone(spec.ui) : {},
      extra: {},
      pending: [],
      extraBranches: [],
    };
    for (const [k, v] of Object.entries(spec)) if (!NODE_KEYS.includes(k)) node.extra[k] = clone(v);
    nodes.set(node.id, node);
  }
  const edges = (doc.edges || []).map((e) => {
    const edge = { from: e && e.from !== undefined ? String(e.from) : "", to: e && e.to !== undefined ? String(e.to) : "", when: undefined, extra: {} };
    if (e && e.when !== undefined && e.when !== null) edge.when = typeof e.when === "string" ? e.when : e.when;
    for (const [k, v] of Object.entries(e || {})) if (!["from", "to", "when"].includes(k)) edge.extra[k] = clone(v);
    return edge;
  });
  return { wf, nodes, edges };
}

/** The model -> a plain document ready for YAML (positions: id -> {x, y}). */
export function modelToDoc(model, positions = {}) {
  const { wf } = model;
  const doc = { version: wf.version ?? 1, name: wf.name };
  if (wf.description) doc.description = wf.description;
  if (wf.inputs && Object.keys(wf.inputs).length) doc.inputs = clone(wf.inputs);
  if (wf.vars !== undefined) doc.vars = clone(wf.vars);
  if (wf.max_steps !== undefined && wf.max_steps !== null && wf.max_steps !== "") doc.max_steps = wf.max_steps;
  doc.nodes = {};
  for (const node of model.nodes.values()) {
    const out = { type: node.type };
    if (node.title) out.title = node.title;
    if (Object.keys(node.in).length) out.in = clone(node.in);
    if (Object.keys(node.params).length) out.params = clone(node.params);
    if (node.timeout_s !== undefined && node.timeout_s !== null && node.timeout_s !== "") out.timeout_s = node.timeout_s;
    if (node.retry !== undefined && node.retry !== null) out.retry = clone(node.retry);
    if (node.on_error && node.on_error !== "fail") out.on_error = node.on_error;
    if (node.set && Object.keys(node.set).length) out.set = clone(node.set);
    if (node.append && Object.keys(node.append).length) out.append = clone(node.append);
    const ui = { ...clone(node.ui || {}) };
    const pos = positions[node.id];
    if (pos) {
      ui.x = Math.round(pos.x);
      ui.y = Math.round(pos.y);
    }
    if (Object.keys(ui).length) out.ui = ui;
    Object.assign(out, clone(node.extra));
    doc.nodes[node.id] = out;
  }
  if (model.edges.length) {
    doc.edges = model.edges.map((e) => {
      const out = { from: e.from, to: e.to };
      if (e.when !== undefined && e.when !== null && e.when !== "") out.when = e.when;
      return Object.assign(out, clone(e.extra));
    });
  }
  Object.assign(doc, clone(wf.extra));
  return doc;
}

/** Strings PyYAML (YAML 1.1) would read as something else: js-yaml must quote them when dumping. */
const YAML11 =
  /^(?:y|Y|yes|Yes|YES|n|N|no|No|NO|on|On|ON|off|Off|OFF|true|True|TRUE|false|False|FALSE|null|Null|NULL|~|=|<<|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?|[-+]?\.?[0-9][0-9_]*\.?[0-9_]*(?:[eE][-+]?[0-9]+)?|0b[01_]+|0x[0-9a-fA-F_]+|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$/;
let dumpSchema = null;
export function dumpYaml(jsyaml, doc) {
  if (!dumpSchema) {
    const yaml11 = new jsyaml.Type("tag:yaml.org,2002:corral-yaml11-str", {
      kind: "scalar",
      resolve: (data) => typeof data === "string" && YAML11.test(data),
      construct: (data) => data,
    });
    dumpSchema = jsyaml.DEFAULT_SCHEMA.extend({ implicit: [yaml11] });
  }
  return jsyaml.dump(doc, { schema: dumpSchema, lineWidth: 100, noRefs: true, sortKeys: false });
}

function branchesOf(node, meta, model) {
  const out = [];
  const add = (b) => {
    if (b !== undefined && b !== null && b !== "" && !out.includes(String(b))) out.push(String(b));
  };
  if (node.type === "switch") {
    const cases = Array.isArray(node.params.cases) ? node.params.cases : [];
    for (const c of cases) if (isObj(c)) add(c.branch);
    add(typeof node.params.default === "string" ? node.params.default : "default");
  } else if (node.type === "router") {
    if (Array.isArray(node.params.experts)) node.params.experts.forEach(add);
  } else if (meta) {
    (meta.branches || []).forEach(add);
  }
  if (node.on_error === "branch") add("error");
  (node.extraBranches || []).forEach(add);
  for (const e of model.edges) if (e.from === node.id && e.when !== undefined && e.when !== null && e.when !== "") add(e.when);
  return out;
}

/** Every `$node.port` reference inside a binding value (deep). */
function refsIn(value, found = []) {
  if (typeof value === "string") {
    const m = REF_RE.exec(value);
    if (m && !value.startsWith("$$")) found.push({ node: m[1], port: m[2] });
  } else if (Array.isArray(value)) value.forEach((v) => refsIn(v, found));
  else if (isObj(value)) Object.values(value).forEach((v) => refsIn(v, found));
  return found;
}

/** A node's ports: ins [{key, name, kind: after|data|plus, type, required}], outs [{key, name, kind: done|data|branch, type}]. */
export function portsOf(node, model, types) {
  const meta = types[node.type];
  const dynamicIn = !meta || meta.dynamic_inputs;
  const ins = [{ key: "after", name: "after", kind: "after", type: "control" }];
  const declared = new Set();
  for (const p of (meta && meta.inputs) || []) {
    declared.add(p.name);
    ins.push({ key: `d:${p.name}`, name: p.name, kind: "data", type: p.type || "any", required: !!p.required && p.default === undefined, description: p.description || "" });
  }
  for (const name of [...Object.keys(node.in), ...(node.pending || [])]) {
    if (declared.has(name)) continue;
    declared.add(name);
    ins.push({ key: `d:${name}`, name, kind: "data", type: "any", dynamic: true });
  }
  if (dynamicIn) ins.push({ key: "plus", name: "+", kind: "plus", type: "any" });

  const outs = [{ key: "done", name: "done", kind: "done", type: "control" }];
  const seen = new Set();
  const addOut = (name, type = "any", description = "") => {
    if (seen.has(name)) return;
    seen.add(name);
    outs.push({ key: `d:${name}`, name, kind: "data", type, description });
  };
  if (node.type === "input") {
    for (const [name, spec] of Object.entries(model.wf.inputs || {})) addOut(name, (isObj(spec) && spec.type) || "any");
  } else if (node.type === "output" || node.type === "pass") {
    for (const p of ins) if (p.kind === "data") addOut(p.name, "any");
  } else if (meta && !meta.dynamic_outputs) {
    for (const p of meta.outputs || []) addOut(p.name, p.type || "any", p.description || "");
  }
  for (const other of model.nodes.values()) {
    for (const ref of refsIn(other.in)) if (ref.node === node.id && ref.port) addOut(ref.port, "any");
  }
  for (const b of branchesOf(node, meta, model)) outs.push({ key: `b:${b}`, name: b, kind: "branch", type: "control" });
  return { ins, outs };
}

/** The connections the model implies: [{from, outKey, to, inKey}]. */
export function connectionsOf(model) {
  const list = [];
  for (const node of model.nodes.values()) {
    for (const [name, value] of Object.entries(node.in)) {
      if (typeof value !== "string" || value.startsWith("$$")) continue;
      const m = REF_RE.exec(value);
      if (!m || !m[2] || m[1] === node.id || !model.nodes.has(m[1])) continue;
      list.push({ from: m[1], outKey: `d:${m[2]}`, to: node.id, inKey: `d:${name}` });
    }
  }
  for (const e of model.edges) {
    if (!model.nodes.has(e.from) || !model.nodes.has(e.to) || e.from === e.to) continue;
    list.push({ from: e.from, outKey: e.when !== undefined && e.when !== null && e.when !== "" ? `b:${e.when}` : "done", to: e.to, inKey: "after" });
  }
  return list;
}

/** Positions for nodes without ui.x/ui.y: columns by depth along edges and bindings. */
export function autoLayout(model, types = {}) {
  const ids = [...model.nodes.keys()];
  const preds = new Map(ids.map((id) => [id, new Set()]));
  for (const c of connectionsOf(model)) preds.get(c.to).add(c.from);
  const depth = new Map();
  const visiting = new Set();
  const depthOf = (id) => {
    if (depth.has(id)) return depth.get(id);
    if (visiting.has(id)) return 0; // a back edge: ignore
    visiting.add(id);
    let d = 0;
    for (const p of preds.get(id)) d = Math.max(d, depthOf(p) + 1);
    visiting.delete(id);
    depth.set(id, d);
    return d;
  };
  const columnY = new Map();
  const positions = {};
  const heightOf = (node) => {
    const ports = portsOf(node, model, types);
    return 48 + 10 + Math.max(ports.ins.length, ports.outs.length) * ROW;
  };
  for (const id of ids) {
    const node = model.nodes.get(id);
    if (node.ui && Number.isFinite(+node.ui.x) && Number.isFinite(+node.ui.y) && node.ui.x !== null && node.ui.y !== null) {
      positions[id] = { x: +node.ui.x, y: +node.ui.y };
      continue;
    }
    const d = depthOf(id);
    const y = columnY.get(d) ?? 40;
    columnY.set(d, y + heightOf(node) + 36);
    positions[id] = { x: 40 + d * 290, y };
  }
  return positions;
}

export function renameRefs(value, from, to) {
  if (typeof value === "string") {
    if (value.startsWith("$$")) return value;
    const m = REF_RE.exec(value);
    if (m && m[1] === from) return `$${to}${m[2] ? "." + m[2] : ""}`;
    return value;
  }
  if (Array.isArray(value)) return value.map((v) => renameRefs(v, from, to));
  if (isObj(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, renameRefs(v, from, to)]));
  return value;
}

function renameInputRefs(value, from, to) {
  if (typeof value === "string") return value === `$inputs.${from}` ? `$inputs.${to}` : value;
  if (Array.isArray(value)) return value.map((v) => renameInputRefs(v, from, to));
  if (isObj(value)) return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, renameInputRefs(v, from, to)]));
  return value;
}

/** Defaults for a new node of a type: required parameters get a starting value. */
function starterParams(meta) {
  const params = {};
  if (!meta) return params;
  if (meta.type === "switch") return { cases: [{ branch: "match", op: "truthy" }], default: "other" };
  if (meta.type === "loop") return { max_iterations: 3 };
  const schema = meta.params || {};
  for (const name of schema.required || []) {
    const prop = resolveProp((schema.properties || {})[name] || {}, schema);
    if (prop.default !== undefined) continue;
    if (prop.type === "string") params[name] = "";
    else if (prop.type === "integer" || prop.type === "number") params[name] = prop.minimum ?? 1;
    else if (prop.type === "array") params[name] = [];
    else if (prop.type === "boolean") params[name] = false;
  }
  return params;
}

function resolveProp(prop, schema) {
  let p = prop || {};
  const defs = (schema && (schema.$defs || schema.definitions)) || {};
  if (p.$ref) p = { ...(defs[p.$ref.split("/").pop()] || {}), ...p };
  if (Array.isArray(p.allOf) && p.allOf.length === 1) p = { ...resolveProp(p.allOf[0], schema), ...p };
  if (Array.isArray(p.anyOf)) {
    const nonNull = p.anyOf.filter((t) => t && t.type !== "null");
    const nullable = nonNull.length < p.anyOf.length;
    if (nonNull.length === 1) {
      const inner = resolveProp(nonNull[0], schema);
      p = { ...inner, title: p.title, description: p.description, default: p.default, nullable };
    } else p = { ...p, nullable };
  }
  return p;
}

export const _internals = { docToModel, modelToDoc, portsOf, connectionsOf, autoLayout, dumpYaml, renameRefs, compatible, starterParams };

// ---------------------------------------------------------------------------------------------
// The view

export async function mount(root, ctx) {
  ensureCss("/ui/views.css");
  ensureCss("/ui/vendor/drawflow.min.css");
  let alive = true;
  const view = h("div", { class: "editor-view", testid: "editor" }, h("p", { class: "muted" }, "Loading the editor…"));
  root.replaceChildren(view);

  let Drawflow;
  let jsyaml;
  let retryStart = null;
  let types = {};
  let typeList = [];
  const boot = async () => {
    view.replaceChildren(h("p", { class: "muted" }, "Loading the editor…"));
    try {
      [Drawflow, jsyaml] = await Promise.all([loadScript("/ui/vendor/drawflow.min.js", "Drawflow"), loadScript("/ui/vendor/js-yaml.min.js", "jsyaml")]);
      const data = await ctx.api("/api/workflows/node-types");
      typeList = data.node_types || [];
      types = Object.fromEntries(typeList.map((t) => [t.type, t]));
      return true;
    } catch (err) {
      if (!alive) return false;
      view.replaceChildren(
        h("div", { class: "view-error", role: "alert", testid: "view-error" }, h("p", {}, `The editor could not start: ${err.message}`), h("button", { type: "button", class: "btn", testid: "retry", onclick: () => boot().then((ok) => ok && alive && retryStart && retryStart()) }, "Retry")),
      );
      return false;
    }
  };
  let teardown = null;
  const unmount = () => {
    alive = false;
    if (teardown) teardown();
  };
  if (!(await boot()) || !alive) {
    retryStart = () => (teardown = start());
    return unmount;
  }
  teardown = start();
  return unmount;

  function start() {
    // ---- state
    let model = docToModel({ version: 1, name: "", nodes: {} });
    let editor = null;
    let syncing = 0;
    let selected = null;
    let dirty = false;
    let savedName = null;
    let savedVersion = null;
    let issues = [];
    const df = new Map(); // node id -> {dfId, sig, ports}
    const byDf = new Map(); // drawflow id (string) -> node id
    const cleanups = [];

    // ---- layout
    const nameInput = h("input", { id: "wf-name", testid: "wf-name", type: "text", placeholder: "my-workflow", autocomplete: "off", spellcheck: "false", "aria-describedby": "wf-name-hint" });
    const descInput = h("input", { id: "wf-description", testid: "wf-description", type: "text", placeholder: "what it does" });
    const btn = (label, testid, extra = {}) => h("button", { type: "button", class: "btn", testid, ...extra }, label);
    const newBtn = btn("New", "new-workflow");
    const importBtn = btn("Import YAML", "import-yaml");
    const exportBtn = btn("Export YAML", "export-yaml");
    const saveBtn = btn("Save", "save-workflow", { class: "btn btn-primary" });
    const runBtn = btn("Run", "run-workflow");
    const savedLabel = h("span", { class: "saved-version", testid: "saved-version", role: "status", "aria-live": "polite" }, "not saved");
    const toolbarError = h("p", { class: "form-error", role: "alert", testid: "editor-error" });
    const toolbar = h(
      "div",
      { class: "ed-toolbar" },
      h("div", { class: "field" }, h("label", { for: "wf-name" }, "Name"), nameInput, h("small", { id: "wf-name-hint", class: "hint" }, "letters, digits, _ and -; the file name")),
      h("div", { class: "field field-grow" }, h("label", { for: "wf-description" }, "Description"), descInput),
      h("div", { class: "ed-actions" }, newBtn, importBtn, exportBtn, saveBtn, runBtn, savedLabel),
      toolbarError,
    );
    const palette = h("nav", { class: "ed-palette", testid: "palette", "aria-label": "node types: press Enter to add one, or drag it onto the canvas" });
    const canvasEl = h("div", { class: "ed-canvas", testid: "editor-canvas", "aria-label": "workflow canvas" });
    const zoomBar = h(
      "div",
      { class: "ed-zoom" },
      h("button", { type: "button", class: "btn btn-small", "aria-label": "zoom in", onclick: () => editor && editor.zoom_in() }, "+"),
      h("button", { type: "button", class: "btn btn-small", "aria-label": "zoom out", onclick: () => editor && editor.zoom_out() }, "−"),
      h("button", { type: "button", class: "btn btn-small", "aria-label": "reset the zoom", onclick: () => editor && editor.zoom_reset() }, "1:1"),
      h("button", { type: "button", class: "btn btn-small", "aria-label": "fit the workflow in view", testid: "fit-canvas", onclick: () => fitView() }, "fit"),
    );
    const nodeSelect = h("select", { id: "node-select", testid: "node-select" });
    const nodeForm = h("section", { class: "node-form", testid: "node-form", "aria-label": "selected node" });
    const wfForm = h("section", { class: "wf-form", "aria-label": "workflow inputs and variables" });
    const problems = h("section", { class: "problems", testid: "problems", "aria-live": "polite", "aria-label": "problems" });
    const yamlPre = h("pre", { class: "yaml-preview", testid: "yaml-preview" });
    const side = h(
      "aside",
      { class: "ed-side" },
      h("div", { class: "field" }, h("label", { for: "node-select" }, "Edit node"), nodeSelect),
      nodeForm,
      problems,
      wfForm,
      h("details", { class: "yaml-box" }, h("summary", {}, "YAML"), yamlPre),
    );
    view.replaceChildren(
      toolbar,
      h("div", { class: "ed-body" }, palette, h("div", { class: "ed-canvas-wrap" }, canvasEl, zoomBar), side),
    );

    // ---- palette
    const byCategory = new Map();
    for (const t of typeList) {
      const cat = t.category || "other";
      if (!byCategory.has(cat)) byCategory.set(cat, []);
      byCategory.get(cat).push(t);
    }
    for (const [cat, list] of byCategory) {
      palette.append(
        h("h3", {}, cat),
        h(
          "ul",
          {},
          list.map((t) =>
            h(
              "li",
              {},
              h(
                "button",
                {
                  type: "button",
                  class: "palette-item",
                  testid: `palette-${t.type}`,
                  draggable: "true",
                  title: t.description || t.title,
                  "aria-label": `add a ${t.title || t.type} node (${t.type})`,
                  onclick: () => addNode(t.type, freePosition()),
                  ondragstart: (event) => {
                    event.dataTransfer.setData("application/x-corral-node", t.type);
                    event.dataTransfer.setData("text/plain", t.type);
                    event.dataTransfer.effectAllowed = "copy";
                  },
                },
                h("span", { class: "pi-title" }, t.title || t.type),
                h("small", {}, t.type),
              ),
            ),
          ),
        ),
      );
    }
    canvasEl.addEventListener("dragover", (event) => {
      event.preventDefault();
      event.dataTransfer.dropEffect = "copy";
    });
    canvasEl.addEventListener("drop", (event) => {
      event.preventDefault();
      const type = event.dataTransfer.getData("application/x-corral-node") || event.dataTransfer.getData("text/plain");
      if (!type || !types[type]) return;
      const p = toCanvas(event.clientX, event.clientY);
      addNode(type, { x: p.x - 20, y: p.y - 20 });
    });

    // ---- drawflow
    function createEditor() {
      const host = h("div", { class: "ed-df" });
      canvasEl.replaceChildren(host);
      editor = new Drawflow(host);
      editor.reroute = false;
      editor.curvature = 0.4;
      editor.zoom_min = 0.3;
      editor.start();
      host.setAttribute("aria-label", "workflow canvas: drag from an output port to an input port to connect; Delete removes the selected node or connection");
      editor.on("nodeSelected", (id) => {
        const nodeId = byDf.get(String(id));
        if (nodeId && nodeId !== selected) select(nodeId);
      });
      editor.on("nodeMoved", () => {
        markDirty(false);
      });
      editor.on("nodeRemoved", (id) => {
        if (syncing) return;
        const nodeId = byDf.get(String(id));
        if (nodeId) removeNode(nodeId, true);
      });
      editor.on("connectionCreated", (c) => {
        if (!syncing) onConnect(c);
      });
      editor.on("connectionRemoved", (c) => {
        if (!syncing) onDisconnect(c);
      });
    }

    /** Zoom and pan so every node is in view (never zooming in past 1). */
    function fitView() {
      if (!editor || !df.size) return;
      const W = canvasEl.clientWidth;
      const H = canvasEl.clientHeight;
      if (!W || !H) return;
      let minX = Infinity;
      let minY = Infinity;
      let maxX = -Infinity;
      let maxY = -Infinity;
      for (const [id, entry] of df) {
        const p = position(id);
        const el = canvasEl.querySelector(`#node-${entry.dfId}`);
        if (!p || !el) continue;
        minX = Math.min(minX, p.x);
        minY = Math.min(minY, p.y);
        maxX = Math.max(maxX, p.x + el.offsetWidth);
        maxY = Math.max(maxY, p.y + el.offsetHeight);
      }
      if (!Number.isFinite(minX)) return;
      const pad = 24;
      const z = Math.max(editor.zoom_min, Math.min(1, (W - 2 * pad) / (maxX - minX || 1), (H - 2 * pad) / (maxY - minY || 1)));
      editor.zoom = z;
      editor.zoom_refresh();
      // The canvas scales about its centre: solve for the translation that puts the box's corner at (pad, pad).
      const tx = pad - W / 2 - (minX - W / 2) * z;
      const ty = pad - H / 2 - (minY - H / 2) * z;
      editor.canvas_x = tx;
      editor.canvas_y = ty;
      editor.precanvas.style.transform = `translate(${tx}px, ${ty}px) scale(${z})`;
    }

    function toCanvas(clientX, clientY) {
      const pre = editor.precanvas.getBoundingClientRect();
      return { x: (clientX - pre.x) / editor.zoom, y: (clientY - pre.y) / editor.zoom };
    }

    function position(id) {
      const entry = df.get(id);
      const data = entry && editor.drawflow.drawflow.Home.data[entry.dfId];
      return data ? { x: data.pos_x, y: data.pos_y } : null;
    }

    function positions() {
      const out = {};
      for (const id of model.nodes.keys()) {
        const p = position(id);
        if (p) out[id] = p;
      }
      return out;
    }

    function freePosition() {
      const rect = canvasEl.getBoundingClientRect();
      const origin = toCanvas(rect.left, rect.top);
      const taken = Object.values(positions());
      for (let row = 0; row < 40; row++) {
        for (let col = 0; col < 4; col++) {
          const x = origin.x + 30 + col * 260;
          const y = origin.y + 30 + row * 180;
          if (!taken.some((p) => Math.abs(p.x - x) < 240 && Math.abs(p.y - y) < 160)) return { x, y };
        }
      }
      return { x: origin.x + 30, y: origin.y + 30 };
    }

    function portLabel(p, side) {
      if (p.kind === "after") return `<span class="dfn-ctl">after</span>`;
      if (p.kind === "plus") return `<span class="dfn-plus">+ input</span>`;
      if (p.kind === "done") return `<span class="dfn-ctl">done</span>`;
      if (p.kind === "branch") return `<span class="dfn-branch">⎇ ${esc(p.name)}</span>`;
      const type = `<i>${esc(p.type)}</i>`;
      const req = p.required ? `<b aria-hidden="true">*</b>` : "";
      return side === "in" ? `${esc(p.name)}${req} ${type}` : `${type} ${esc(p.name)}`;
    }

    function nodeHtml(node, ports) {
      const meta = types[node.type];
      const mine = issues.filter((i) => i.node === node.id);
      const rows = [];
      const n = Math.max(ports.ins.length, ports.outs.length);
      for (let i = 0; i < n; i++) {
        const a = ports.ins[i];
        const b = ports.outs[i];
        rows.push(`<div class="dfn-row"><span class="dfn-in">${a ? portLabel(a, "in") : ""}</span><span class="dfn-out">${b ? portLabel(b, "out") : ""}</span></div>`);
      }
      return (
        `<div class="dfn" data-node="${esc(node.id)}">` +
        `<div class="dfn-top"><div class="dfn-head"><span class="dfn-title">${esc(node.title || (meta && meta.title) || node.type)}</span>` +
        (mine.length ? `<span class="dfn-issue" title="${esc(mine.map((i) => i.message).join("\n"))}" data-testid="issue-${esc(node.id)}">${mine.length} ⚠</span>` : "") +
        `</div><div class="dfn-sub"><span class="dfn-id">${esc(node.id)}</span> · ${esc(node.type || "?")}${meta ? "" : " (unknown type)"}</div></div>` +
        `<div class="dfn-rows">${rows.join("")}</div></div>`
      );
    }

    function decorate(node, entry) {
      const el = canvasEl.querySelector(`#node-${entry.dfId}`);
      if (!el) return;
      el.dataset.testid = `ed-node-${node.id}`;
      el.dataset.node = node.id;
      el.classList.toggle("ed-has-issue", issues.some((i) => i.node === node.id));
      el.classList.toggle("ed-selected", node.id === selected);
      entry.ports.ins.forEach((p, i) => {
        const port = el.querySelector(`.inputs .input_${i + 1}`);
        if (!port) return;
        port.dataset.testid = `port-in-${node.id}-${p.kind === "plus" ? "new" : p.name}`;
        port.classList.toggle("port-ctl", p.kind === "after");
        port.classList.toggle("port-plus", p.kind === "plus");
        port.dataset.port = p.name;
        port.title = p.kind === "plus" ? "drop a connection here to add an input" : `${p.name}: ${p.type}`;
      });
      entry.ports.outs.forEach((p, i) => {
        const port = el.querySelector(`.outputs .output_${i + 1}`);
        if (!port) return;
        port.dataset.testid = `port-out-${node.id}-${p.kind === "branch" ? "branch-" + p.name : p.name}`;
        port.classList.toggle("port-ctl", p.kind === "done");
        port.classList.toggle("port-branch", p.kind === "branch");
        port.dataset.port = p.name;
        port.title = p.kind === "branch" ? `branch ${p.name}: connect to a node's "after" input` : p.kind === "done" ? `done: connect to a node's "after" input` : `${p.name}: ${p.type}`;
      });
    }

    /** Redraw the canvas from the model: (re)create nodes whose ports changed, then the connections. */
    function refresh() {
      if (!editor) return;
      syncing++;
      try {
        for (const [id, entry] of [...df]) {
          if (!model.nodes.has(id)) {
            editor.removeNodeId(`node-${entry.dfId}`);
            byDf.delete(String(entry.dfId));
            df.delete(id);
          }
        }
        const pending = autoLayout(model, types);
        for (const node of model.nodes.values()) {
          const ports = portsOf(node, model, types);
          const sig = JSON.stringify([ports.ins.map((p) => p.key + p.type + (p.required ? "*" : "")), ports.outs.map((p) => p.key + p.type)]);
          let entry = df.get(node.id);
          const html = nodeHtml(node, ports);
          if (entry && entry.sig === sig) {
            entry.ports = ports;
            if (entry.html !== html) {
              const content = canvasEl.querySelector(`#node-${entry.dfId} .drawflow_content_node`);
              if (content) content.innerHTML = html;
              const stored = editor.drawflow.drawflow.Home.data[entry.dfId];
              if (stored) stored.html = html;
              entry.html = html;
            }
            decorate(node, entry);
            continue;
          }
          const pos = (entry && position(node.id)) || pending[node.id] || { x: 40, y: 40 };
          if (entry) {
            editor.removeNodeId(`node-${entry.dfId}`);
            byDf.delete(String(entry.dfId));
          }
          const dfId = editor.addNode(node.type || "node", ports.ins.length, ports.outs.length, pos.x, pos.y, "ed-node", {}, html);
          entry = { dfId: String(dfId), sig, ports, html };
          df.set(node.id, entry);
          byDf.set(String(dfId), node.id);
          decorate(node, entry);
        }
        // Connections: make Drawflow's match the model's.
        const want = new Map();
        for (const c of connectionsOf(model)) {
          const a = df.get(c.from);
          const b = df.get(c.to);
          if (!a || !b) continue;
          const oi = a.ports.outs.findIndex((p) => p.key === c.outKey);
          const ii = b.ports.ins.findIndex((p) => p.key === c.inKey);
          if (oi < 0 || ii < 0) continue;
          want.set(`${a.dfId}|output_${oi + 1}|${b.dfId}|input_${ii + 1}`, [a.dfId, b.dfId, `output_${oi + 1}`, `input_${ii + 1}`]);
        }
        const data = editor.drawflow.drawflow.Home.data;
        const have = new Set();
        for (const [outId, n] of Object.entries(data)) {
          for (const [outClass, output] of Object.entries(n.outputs || {})) {
            for (const conn of [...output.connections]) {
              const key = `${outId}|${outClass}|${conn.node}|${conn.output}`;
              if (want.has(key)) have.add(key);
              else editor.removeSingleConnection(outId, conn.node, outClass, conn.output);
            }
          }
        }
        for (const [key, args] of want) if (!have.has(key)) editor.addConnection(...args);
        for (const entry of df.values()) editor.updateConnectionNodes(`node-${entry.dfId}`);
        // Drawflow keeps a handle on the selected element; drop it when that element was redrawn.
        if (editor.node_selected && !editor.node_selected.isConnected) editor.node_selected = null;
        if (editor.connection_selected && !editor.connection_selected.isConnected) editor.connection_selected = null;
      } finally {
        syncing--;
      }
      renderNodeSelect();
    }

    // ---- model edits
    function uniqueId(base) {
      let stem = String(base || "node").replace(/[^A-Za-z0-9_-]/g, "_");
      if (!/^[A-Za-z]/.test(stem)) stem = `n${stem}`;
      stem = stem.slice(0, 60);
      let id = RESERVED.has(stem) ? `${stem}_1` : stem;
      for (let i = 2; model.nodes.has(id); i++) id = `${stem}_${i}`;
      return id;
    }

    function addNode(type, pos) {
      const meta = types[type];
      const id = uniqueId(type);
      model.nodes.set(id, {
        id,
        type,
        title: "",
        in: {},
        params: starterParams(meta),
        timeout_s: undefined,
        retry: undefined,
        on_error: undefined,
        set: {},
        append: {},
        ui: { x: Math.round(pos.x), y: Math.round(pos.y) },
        extra: {},
        pending: [],
        extraBranches: [],
      });
      refresh();
      select(id);
      markDirty();
      ctx.toast(`Added ${meta ? meta.title || type : type} node "${id}"`, "ok");
    }

    function removeNode(id, fromCanvas = false) {
      if (!model.nodes.has(id)) return;
      model.nodes.delete(id);
      model.edges = model.edges.filter((e) => e.from !== id && e.to !== id);
      for (const other of model.nodes.values()) {
        for (const [name, value] of Object.entries(other.in)) {
          const m = typeof value === "string" && !value.startsWith("$$") ? REF_RE.exec(value) : null;
          if (m && m[1] === id) {
            delete other.in[name];
            if (portsAreDynamic(other) && !(other.pending || []).includes(name)) other.pending.push(name);
          }
        }
      }
      if (fromCanvas) {
        const entry = df.get(id);
        if (entry) byDf.delete(String(entry.dfId));
        df.delete(id);
      }
      if (selected === id) selected = null;
      refresh();
      renderForm();
      markDirty();
    }

    function portsAreDynamic(node) {
      const meta = types[node.type];
      return !meta || meta.dynamic_inputs;
    }

    function portAt(nodeId, side, klass) {
      const entry = df.get(nodeId);
      const index = Number(String(klass).split("_")[1]) - 1;
      if (!entry) return null;
      return (side === "in" ? entry.ports.ins : entry.ports.outs)[index] || null;
    }

    function refuse(c, why) {
      syncing++;
      try {
        editor.removeSingleConnection(c.output_id, c.input_id, c.output_class, c.input_class);
      } finally {
        syncing--;
      }
      ctx.toast(why, "error");
    }

    function onConnect(c) {
      const from = byDf.get(String(c.output_id));
      const to = byDf.get(String(c.input_id));
      const out = from && portAt(from, "out", c.output_class);
      const inp = to && portAt(to, "in", c.input_class);
      if (!out || !inp) return refuse(c, "That connection does not match any port; try again.");
      if (from === to) return refuse(c, "A node cannot feed itself; route repeats through a loop node.");
      if (out.kind !== "data" && inp.kind !== "after")
        return refuse(c, `"${from}.${out.kind === "done" ? "done" : out.name}" sets the order, not data: connect it to the "after" input of the node that runs next.`);
      if (out.kind === "data" && inp.kind === "after")
        return refuse(c, `The "after" input takes a "done" or branch output. Drop ${from}.${out.name} on a named input instead.`);
      if (out.kind === "data" && inp.kind === "data" && !compatible(out.type, inp.type))
        return refuse(c, `Types clash: ${from}.${out.name} is ${out.type}, but ${to}.${inp.name} takes ${inp.type}.`);
      const target = model.nodes.get(to);
      if (inp.kind === "after") {
        const when = out.kind === "branch" ? out.name : undefined;
        if (model.edges.some((e) => e.from === from && e.to === to && (e.when ?? undefined) === when)) return refuse(c, "That edge is already there.");
        model.edges.push({ from, to, when, extra: {} });
      } else {
        let name = inp.name;
        if (inp.kind === "plus") {
          name = out.name;
          const taken = new Set([...Object.keys(target.in), ...(target.pending || [])]);
          for (let i = 2; taken.has(name); i++) name = `${out.name}_${i}`;
        }
        target.in[name] = `$${from}.${out.name}`;
        target.pending = (target.pending || []).filter((n) => n !== name);
      }
      setTimeout(() => {
        if (!alive) return;
        refresh();
        if (selected === to || selected === from) renderForm();
        markDirty();
      }, 0);
    }

    function onDisconnect(c) {
      const from = byDf.get(String(c.output_id));
      const to = byDf.get(String(c.input_id));
      const out = from && portAt(from, "out", c.output_class);
      const inp = to && portAt(to, "in", c.input_class);
      if (!out || !inp || !model.nodes.has(to)) return;
      const target = model.nodes.get(to);
      if (inp.kind === "after") {
        const when = out.kind === "branch" ? out.name : undefined;
        const i = model.edges.findIndex((e) => e.from === from && e.to === to && (e.when ?? undefined) === when);
        if (i >= 0) model.edges.splice(i, 1);
      } else if (inp.kind === "data" && target.in[inp.name] === `$${from}.${out.name}`) {
        delete target.in[inp.name];
        if (portsAreDynamic(target) && !(types[target.type] && (types[target.type].inputs || []).some((p) => p.name === inp.name))) {
          target.pending = [...(target.pending || []), inp.name];
        }
      }
      setTimeout(() => {
        if (!alive) return;
        refresh();
        if (selected === to || selected === from) renderForm();
        markDirty();
      }, 0);
    }

    function renameNode(oldId, newId) {
      if (oldId === newId) return null;
      if (!NAME_RE.test(newId) || RESERVED.has(newId))
        return "A node id starts with a letter and uses letters, digits, _ or - (at most 64), and is not inputs, vars or run.";
      if (model.nodes.has(newId)) return `There is already a node "${newId}".`;
      const nodes = new Map();
      for (const [id, node] of model.nodes) {
        node.in = renameRefs(node.in, oldId, newId);
        if (id === oldId) {
          node.id = newId;
          nodes.set(newId, node);
        } else nodes.set(id, node);
      }
      model.nodes = nodes;
      for (const e of model.edges) {
        if (e.from === oldId) e.from = newId;
        if (e.to === oldId) e.to = newId;
      }
      const entry = df.get(oldId);
      if (entry) {
        df.delete(oldId);
        df.set(newId, entry);
        byDf.set(String(entry.dfId), newId);
      }
      if (selected === oldId) selected = newId;
      return null;
    }

    // ---- dirty, YAML, validation
    function buildYaml() {
      return dumpYaml(jsyaml, modelToDoc(model, positions()));
    }

    function renderSaved() {
      savedLabel.textContent = savedVersion ? `saved v${savedVersion}${dirty ? " · unsaved changes" : ""}` : dirty ? "not saved" : "not saved";
      savedLabel.dataset.version = savedVersion ? String(savedVersion) : "";
    }

    let validateTimer = null;
    let validateToken = 0;
    function markDirty(validate = true) {
      dirty = true;
      renderSaved();
      clearTimeout(validateTimer);
      validateTimer = setTimeout(() => {
        if (!alive) return;
        yamlPre.textContent = safeYaml();
        if (validate) runValidate();
      }, validate ? 500 : 300);
    }

    function safeYaml() {
      try {
        return buildYaml();
      } catch (err) {
        return `# could not build the YAML: ${err.message}`;
      }
    }

    async function runValidate() {
      const mine = ++validateToken;
      const text = safeYaml();
      yamlPre.textContent = text;
      try {
        const reply = await ctx.api("/api/workflows/validate", { body: text });
        if (!alive || mine !== validateToken) return;
        const list = Array.isArray(reply.issues) && reply.issues.length ? reply.issues : (reply.problems || []).map((m) => ({ node: null, message: m }));
        setIssues(reply.valid ? [] : list, reply.valid);
      } catch (err) {
        if (!alive || mine !== validateToken) return;
        setIssues([{ node: null, message: `Could not check the workflow: ${err.message}` }], false, true);
      }
    }

    function setIssues(list, valid, failed = false) {
      issues = list.map((i) => ({ node: i.node && model.nodes.has(i.node) ? i.node : i.node || null, message: String(i.message || i) }));
      problems.dataset.valid = valid ? "true" : "false";
      const items = issues.map((i) =>
        h(
          "li",
          { class: "problem" },
          i.node && model.nodes.has(i.node)
            ? h("button", { type: "button", class: "btn-link problem-node", onclick: () => select(i.node, true) }, i.node)
            : i.node
              ? h("strong", {}, i.node)
              : null,
          i.node ? ": " : "",
          i.message,
        ),
      );
      problems.replaceChildren(
        h("h3", {}, valid ? "No problems" : failed ? "Problems (not checked)" : `Problems (${issues.length})`),
        valid ? h("p", { class: "ok-note" }, "The workflow is valid.") : h("ul", {}, items),
      );
      refresh();
    }

    function localProblem(message) {
      problems.dataset.valid = "false";
      problems.replaceChildren(h("h3", {}, "Problems"), h("ul", {}, h("li", { class: "problem", role: "alert" }, message)));
    }

    // ---- forms
    function renderNodeSelect() {
      const keep = selected || "";
      nodeSelect.replaceChildren(
        h("option", { value: "" }, model.nodes.size ? "— choose a node —" : "— no nodes yet —"),
        ...[...model.nodes.values()].map((n) => h("option", { value: n.id }, `${n.id} (${n.type})`)),
      );
      nodeSelect.value = model.nodes.has(keep) ? keep : "";
    }
    nodeSelect.addEventListener("change", () => {
      if (nodeSelect.value) select(nodeSelect.value, true);
    });

    function select(id, focusForm = false) {
      selected = model.nodes.has(id) ? id : null;
      const mine = selected && df.get(selected);
      if (editor && editor.node_selected && (!mine || editor.node_selected.id !== `node-${mine.dfId}`)) {
        editor.node_selected.classList.remove("selected");
        editor.node_selected = null;
      }
      for (const [nid, entry] of df) {
        const el = canvasEl.querySelector(`#node-${entry.dfId}`);
        if (el) el.classList.toggle("ed-selected", nid === selected);
      }
      nodeSelect.value = selected || "";
      renderForm();
      if (focusForm) {
        const first = nodeForm.querySelector("input, select, textarea");
        if (first) first.focus();
      }
    }

    function field(label, control, hint, id) {
      if (id) control.id = id;
      return h("div", { class: "field" }, h("label", { for: control.id }, label), control, hint ? h("small", { class: "hint" }, hint) : null);
    }

    function literalText(value) {
      if (value === undefined) return "";
      if (typeof value === "string") return value;
      return JSON.stringify(value);
    }

    function parseLiteral(text, type) {
      if (type === "string") return text;
      try {
        const v = jsyaml.load(text);
        return v === undefined ? text : v;
      } catch {
        return text;
      }
    }

    function paramControl(node, name, prop0, schema, requiredSet) {
      const prop = resolveProp(prop0, schema);
      const id = `param-${name}`;
      const value = node.params[name];
      const required = requiredSet.has(name);
      const label = [prop.title || name, required ? " *" : ""].join("");
      const dflt = prop.default !== undefined && prop.default !== null ? `default: ${typeof prop.default === "string" ? prop.default : JSON.stringify(prop.default)}` : prop.nullable ? "default: none" : "";
      const hint = [prop.description, dflt].filter(Boolean).join(" · ");
      const error = h("small", { class: "field-error", role: "alert" });
      const set = (v) => {
        if (v === undefined) delete node.params[name];
        else node.params[name] = v;
        const structural = node.type === "switch" || node.type === "router";
        if (structural) refresh();
        markDirty();
      };
      let control;
      if (Array.isArray(prop.enum)) {
        control = h(
          "select",
          { testid: id },
          h("option", { value: "" }, prop.default !== undefined ? `(default: ${prop.default})` : "(not set)"),
          prop.enum.map((v) => h("option", { value: JSON.stringify(v) }, String(v))),
        );
        control.value = value === undefined ? "" : JSON.stringify(value);
        control.addEventListener("change", () => set(control.value === "" ? undefined : JSON.parse(control.value)));
      } else if (prop.type === "string") {
        const long = /template|system|prompt/i.test(name) || /template/i.test(prop.description || "");
        control = h(long ? "textarea" : "input", { testid: id, rows: long ? 6 : undefined, type: long ? undefined : "text", spellcheck: long ? "true" : "false" });
        control.value = value === undefined || value === null ? "" : String(value);
        if (prop.default !== undefined && prop.default !== null) control.placeholder = String(prop.default);
        control.addEventListener("input", () => set(control.value === "" && !required ? undefined : control.value));
      } else if (prop.type === "integer" || prop.type === "number") {
        control = h("input", { testid: id, type: "number", step: prop.type === "integer" ? "1" : "any", min: prop.minimum, max: prop.maximum });
        control.value = value === undefined || value === null ? "" : String(value);
        if (prop.default !== undefined && prop.default !== null) control.placeholder = String(prop.default);
        control.addEventListener("input", () => {
          if (control.value === "") return set(undefined);
          const n = Number(control.value);
          if (Number.isFinite(n)) set(prop.type === "integer" ? Math.trunc(n) : n);
        });
      } else if (prop.type === "boolean") {
        control = h(
          "select",
          { testid: id },
          h("option", { value: "" }, prop.default !== undefined ? `(default: ${prop.default})` : "(not set)"),
          h("option", { value: "true" }, "true"),
          h("option", { value: "false" }, "false"),
        );
        control.value = value === undefined ? "" : String(!!value);
        control.addEventListener("change", () => set(control.value === "" ? undefined : control.value === "true"));
      } else if (prop.type === "array" && prop.items && prop.items.type === "string") {
        control = h("textarea", { testid: id, rows: 3, spellcheck: "false" });
        control.value = Array.isArray(value) ? value.join("\n") : value === undefined || value === null ? "" : literalText(value);
        control.addEventListener("input", () => {
          const items = control.value.split("\n").map((s) => s.trim()).filter(Boolean);
          set(control.value.trim() === "" ? undefined : items);
        });
        return field(label, control, [hint, "one per line"].filter(Boolean).join(" · "), id);
      } else {
        control = h("textarea", { testid: id, rows: 4, spellcheck: "false", class: "mono" });
        control.value = value === undefined ? "" : JSON.stringify(value, null, 1);
        control.addEventListener("input", () => {
          error.textContent = "";
          if (control.value.trim() === "") return set(undefined);
          try {
            set(jsyaml.load(control.value));
          } catch (err) {
            error.textContent = `Not valid JSON or YAML: ${String(err.message).split("\n")[0]}`;
          }
        });
        const el = field(label, control, [hint, "JSON"].filter(Boolean).join(" · "), id);
        el.append(error);
        return el;
      }
      return field(label, control, hint, id);
    }

    function bindRow(node, port) {
      const name = port.name;
      const value = node.in[name];
      const selectId = `bind-${name}`;
      const valueId = `value-${name}`;
      const options = [h("option", { value: "" }, value === undefined ? "— not bound —" : "— a value —")];
      const refs = [];
      for (const [iname, spec] of Object.entries(model.wf.inputs || {})) {
        const t = (isObj(spec) && spec.type) || "any";
        if (compatible(t, port.type)) refs.push([`$inputs.${iname}`, `run input ${iname} (${t})`]);
      }
      const vars = new Set(Object.keys(isObj(model.wf.vars) ? model.wf.vars : {}));
      for (const n of model.nodes.values()) for (const v of [...Object.keys(n.set || {}), ...Object.keys(n.append || {})]) vars.add(v);
      for (const v of vars) refs.push([`$vars.${v}`, `variable ${v}`]);
      for (const other of model.nodes.values()) {
        if (other.id === node.id) continue;
        const entry = df.get(other.id);
        const outs = entry ? entry.ports.outs : portsOf(other, model, types).outs;
        for (const p of outs) if (p.kind === "data" && compatible(p.type, port.type)) refs.push([`$${other.id}.${p.name}`, `${other.id}.${p.name} (${p.type})`]);
      }
      const isRef = typeof value === "string" && refs.some(([v]) => v === value);
      if (typeof value === "string" && REF_RE.test(value) && !isRef) refs.push([value, value]);
      for (const [v, label] of refs) options.push(h("option", { value: v }, label));
      const sel = h("select", { testid: selectId, id: selectId, "aria-label": `${name}: bind to` }, options);
      const literal = h(port.type === "string" ? "textarea" : "input", {
        testid: valueId,
        id: valueId,
        rows: port.type === "string" ? 2 : undefined,
        type: port.type === "string" ? undefined : "text",
        "aria-label": `${name}: value`,
        placeholder: port.type === "string" ? "text (or $inputs.x, $node.port)" : `${port.type} as JSON/YAML`,
        spellcheck: "false",
      });
      const bound = typeof value === "string" && REF_RE.test(value) && !value.startsWith("$$");
      sel.value = bound && refs.some(([v]) => v === value) ? value : "";
      literal.value = sel.value ? "" : literalText(value);
      literal.hidden = !!sel.value;
      sel.addEventListener("change", () => {
        if (sel.value) node.in[name] = sel.value;
        else if (literal.value !== "") node.in[name] = parseLiteral(literal.value, port.type);
        else delete node.in[name];
        literal.hidden = !!sel.value;
        if (!sel.value) literal.value = "";
        node.pending = (node.pending || []).filter((n) => n !== name || node.in[name] === undefined);
        if (node.in[name] === undefined && port.dynamic && !node.pending.includes(name)) node.pending.push(name);
        refresh();
        markDirty();
      });
      literal.addEventListener("input", () => {
        if (literal.value === "") {
          delete node.in[name];
          if (port.dynamic && !(node.pending || []).includes(name)) node.pending = [...(node.pending || []), name];
        } else node.in[name] = parseLiteral(literal.value, port.type);
        markDirty();
      });
      literal.addEventListener("change", () => refresh());
      const remove = port.dynamic
        ? h(
            "button",
            {
              type: "button",
              class: "btn btn-small",
              testid: `remove-input-${name}`,
              "aria-label": `remove input ${name}`,
              onclick: () => {
                delete node.in[name];
                node.pending = (node.pending || []).filter((n) => n !== name);
                refresh();
                renderForm();
                markDirty();
              },
            },
            "✕",
          )
        : null;
      return h(
        "div",
        { class: "bind-row", dataset: { input: name } },
        h("label", { for: selectId }, name, port.required ? h("b", { "aria-hidden": "true" }, " *") : null, " ", h("i", {}, port.type)),
        h("div", { class: "bind-controls" }, sel, remove),
        literal,
        port.description ? h("small", { class: "hint" }, port.description) : null,
      );
    }

    function edgesBlock(node) {
      const incoming = model.edges.map((e, i) => [e, i]).filter(([e]) => e.to === node.id);
      const fromSel = h("select", { id: "edge-from", testid: "edge-from" }, h("option", { value: "" }, "— node —"), [...model.nodes.values()].filter((n) => n.id !== node.id).map((n) => h("option", { value: n.id }, n.id)));
      const whenSel = h("select", { id: "edge-when", testid: "edge-when" }, h("option", { value: "" }, "always (done)"));
      fromSel.addEventListener("change", () => {
        const src = model.nodes.get(fromSel.value);
        whenSel.replaceChildren(h("option", { value: "" }, "always (done)"));
        if (src) for (const b of branchesOf(src, types[src.type], model)) whenSel.append(h("option", { value: b }, `when ${b}`));
      });
      const add = h("button", {
        type: "button",
        class: "btn btn-small",
        testid: "add-edge",
        onclick: () => {
          if (!fromSel.value) return;
          const when = whenSel.value || undefined;
          if (model.edges.some((e) => e.from === fromSel.value && e.to === node.id && (e.when ?? undefined) === when)) return ctx.toast("That edge is already there.", "error");
          model.edges.push({ from: fromSel.value, to: node.id, when, extra: {} });
          refresh();
          renderForm();
          markDirty();
        },
      }, "Add edge");
      return h(
        "fieldset",
        { class: "edges-block" },
        h("legend", {}, "Runs after (edges)"),
        incoming.length
          ? h(
              "ul",
              {},
              incoming.map(([e, i]) =>
                h(
                  "li",
                  {},
                  `${e.from}${e.when ? " when " + e.when : ""} `,
                  h("button", {
                    type: "button",
                    class: "btn btn-small",
                    "aria-label": `remove the edge from ${e.from}${e.when ? " when " + e.when : ""}`,
                    testid: `remove-edge-${e.from}${e.when ? "-" + e.when : ""}`,
                    onclick: () => {
                      model.edges.splice(i, 1);
                      refresh();
                      renderForm();
                      markDirty();
                    },
                  }, "✕"),
                ),
              ),
            )
          : h("p", { class: "hint" }, "No explicit edge: it runs after the nodes it reads."),
        h("div", { class: "edge-add" }, h("label", { for: "edge-from", class: "sr-only" }, "from node"), fromSel, h("label", { for: "edge-when", class: "sr-only" }, "when"), whenSel, add),
      );
    }

    function renderForm() {
      const node = selected ? model.nodes.get(selected) : null;
      if (!node) {
        nodeForm.replaceChildren(h("h3", {}, "Node"), h("p", { class: "muted" }, model.nodes.size ? "Select a node on the canvas or in the list above to edit it." : "Add a node from the palette: press Enter on a type, or drag it onto the canvas."));
        return;
      }
      const meta = types[node.type];
      const idInput = h("input", { type: "text", testid: "node-id", spellcheck: "false", autocomplete: "off" });
      idInput.value = node.id;
      const idError = h("small", { class: "field-error", role: "alert" });
      idInput.addEventListener("change", () => {
        const why = renameNode(node.id, idInput.value.trim());
        idError.textContent = why || "";
        if (why) return;
        refresh();
        renderForm();
        markDirty();
      });
      const titleInput = h("input", { type: "text", testid: "node-title" });
      titleInput.value = node.title;
      titleInput.placeholder = (meta && meta.title) || node.type;
      titleInput.addEventListener("input", () => {
        node.title = titleInput.value;
        refresh();
        markDirty();
      });

      const parts = [
        h("h3", {}, `Node `, h("code", {}, node.id), " ", h("small", {}, node.type)),
        meta ? h("p", { class: "hint" }, meta.description) : h("p", { class: "form-error" }, `Unknown node type "${node.type}".`),
        h("div", { class: "field" }, h("label", { for: "node-id" }, "Id"), Object.assign(idInput, { id: "node-id" }), idError),
        field("Title", titleInput, "", "node-title"),
      ];

      // Inputs
      const ports = (df.get(node.id) || {}).ports || portsOf(node, model, types);
      const dataIns = ports.ins.filter((p) => p.kind === "data");
      const inputsBox = h("fieldset", { class: "inputs-block" }, h("legend", {}, "Inputs"));
      if (!dataIns.length) inputsBox.append(h("p", { class: "hint" }, portsAreDynamic(node) ? "No inputs yet: add one below, or drop a connection on “+ input”." : "This node type takes no inputs."));
      for (const p of dataIns) inputsBox.append(bindRow(node, p));
      if (portsAreDynamic(node)) {
        const newName = h("input", { type: "text", id: "new-input-name", testid: "new-input-name", placeholder: "name", spellcheck: "false", autocomplete: "off" });
        const addErr = h("small", { class: "field-error", role: "alert" });
        const addInput = () => {
          const name = newName.value.trim();
          addErr.textContent = "";
          if (!/^[A-Za-z_][A-Za-z0-9_-]{0,63}$/.test(name)) return (addErr.textContent = "Use letters, digits, _ or -, starting with a letter or _.");
          if (name in node.in || (node.pending || []).includes(name) || (meta && (meta.inputs || []).some((p) => p.name === name))) return (addErr.textContent = `"${name}" is already an input.`);
          node.pending = [...(node.pending || []), name];
          refresh();
          renderForm();
          markDirty(false);
          const sel = nodeForm.querySelector(`[data-testid="bind-${CSS.escape(name)}"]`);
          if (sel) sel.focus();
        };
        newName.addEventListener("keydown", (event) => {
          if (event.key === "Enter") {
            event.preventDefault();
            addInput();
          }
        });
        inputsBox.append(
          h(
            "div",
            { class: "add-input" },
            h("label", { for: "new-input-name" }, "+ input"),
            newName,
            h("button", { type: "button", class: "btn btn-small", testid: "add-input", onclick: addInput }, "Add input"),
            addErr,
          ),
        );
      }
      parts.push(inputsBox);

      // Parameters
      const schema = (meta && meta.params) || {};
      const props = schema.properties || {};
      const requiredSet = new Set(schema.required || []);
      const paramNames = [...Object.keys(props)];
      const unknown = Object.keys(node.params).filter((k) => !(k in props));
      if (paramNames.length || unknown.length) {
        const box = h("fieldset", { class: "params-block" }, h("legend", {}, "Parameters"));
        for (const name of paramNames) box.append(paramControl(node, name, props[name], schema, requiredSet));
        for (const name of unknown) box.append(paramControl(node, name, {}, schema, requiredSet));
        parts.push(box);
      }
      if (node.type === "router" && !Array.isArray(node.params.experts)) {
        const bName = h("input", { type: "text", id: "new-branch-name", testid: "new-branch-name", placeholder: "expert name" });
        parts.push(
          h(
            "div",
            { class: "add-input" },
            h("label", { for: "new-branch-name" }, "+ branch"),
            bName,
            h("button", {
              type: "button",
              class: "btn btn-small",
              testid: "add-branch",
              onclick: () => {
                const b = bName.value.trim();
                if (!b) return;
                node.extraBranches = [...new Set([...(node.extraBranches || []), b])];
                refresh();
                renderForm();
              },
            }, "Add branch"),
          ),
        );
      }

      // Error handling and timing
      const onError = h("select", { id: "node-on-error", testid: "node-on-error" }, ["fail", "branch", "continue"].map((v) => h("option", { value: v }, v)));
      onError.value = node.on_error || "fail";
      onError.addEventListener("change", () => {
        node.on_error = onError.value === "fail" ? undefined : onError.value;
        refresh();
        markDirty();
      });
      const timeout = h("input", { type: "number", id: "node-timeout", testid: "node-timeout", min: "0", step: "any", placeholder: "no limit" });
      timeout.value = node.timeout_s ?? "";
      timeout.addEventListener("input", () => {
        node.timeout_s = timeout.value === "" ? undefined : Number(timeout.value);
        markDirty();
      });
      const attempts = h("input", { type: "number", id: "node-retry-attempts", testid: "node-retry-attempts", min: "1", max: "20", step: "1", placeholder: "1" });
      const backoff = h("input", { type: "number", id: "node-retry-backoff", testid: "node-retry-backoff", min: "0", step: "any", placeholder: "0.5" });
      attempts.value = node.retry && node.retry.attempts !== undefined ? node.retry.attempts : "";
      backoff.value = node.retry && node.retry.backoff_s !== undefined ? node.retry.backoff_s : "";
      const setRetry = () => {
        const retry = { ...(node.retry || {}) };
        if (attempts.value === "") delete retry.attempts;
        else retry.attempts = Math.trunc(Number(attempts.value));
        if (backoff.value === "") delete retry.backoff_s;
        else retry.backoff_s = Number(backoff.value);
        node.retry = Object.keys(retry).length ? retry : undefined;
        markDirty();
      };
      attempts.addEventListener("input", setRetry);
      backoff.addEventListener("input", setRetry);
      const varsField = (key, label) => {
        const ta = h("textarea", { id: `node-${key}`, testid: `node-${key}`, rows: 1, class: "mono", spellcheck: "false", placeholder: "{variable: output_port}" });
        ta.value = node[key] && Object.keys(node[key]).length ? JSON.stringify(node[key]) : "";
        const err = h("small", { class: "field-error", role: "alert" });
        ta.addEventListener("input", () => {
          err.textContent = "";
          if (!ta.value.trim()) {
            node[key] = {};
            return markDirty();
          }
          try {
            const v = jsyaml.load(ta.value);
            if (!isObj(v)) throw new Error("write a mapping, e.g. {steps: step}");
            node[key] = v;
            markDirty();
          } catch (e) {
            err.textContent = String(e.message).split("\n")[0];
          }
        });
        const el = field(label, ta, key === "set" ? "replace a run variable with an output" : "append an output to a run variable");
        el.append(err);
        return el;
      };
      parts.push(
        h(
          "fieldset",
          { class: "misc-block" },
          h("legend", {}, "Errors, timing and variables"),
          field("On error", onError, "fail the run, emit the error branch, or continue", "node-on-error"),
          field("Timeout (s per attempt)", timeout, "", "node-timeout"),
          h("div", { class: "field-pair" }, field("Attempts", attempts, "", "node-retry-attempts"), field("Backoff (s)", backoff, "", "node-retry-backoff")),
          varsField("set", "Set variables"),
          varsField("append", "Append to variables"),
        ),
      );
      parts.push(edgesBlock(node));
      parts.push(
        h("div", { class: "form-actions" }, h("button", { type: "button", class: "btn btn-danger", testid: "delete-node", onclick: () => removeNode(node.id) }, "Delete node")),
      );
      nodeForm.replaceChildren(...parts);
    }

    function renderWfForm() {
      const rows = Object.entries(model.wf.inputs || {}).map(([name, spec0], i) => {
        const spec = isObj(spec0) ? spec0 : {};
        const nameIn = h("input", { type: "text", id: `wf-input-name-${i}`, testid: `wf-input-name-${i}`, value: name, "aria-label": "input name", spellcheck: "false" });
        const typeSel = h("select", { id: `wf-input-type-${i}`, testid: `wf-input-type-${i}`, "aria-label": `type of ${name}` }, PORT_TYPES.map((t) => h("option", { value: t }, t)));
        typeSel.value = spec.type || "any";
        const req = h("input", { type: "checkbox", id: `wf-input-required-${i}`, testid: `wf-input-required-${i}`, checked: spec.required !== false });
        const dflt = h("input", { type: "text", id: `wf-input-default-${i}`, testid: `wf-input-default-${i}`, placeholder: "default", "aria-label": `default of ${name}`, value: spec.default === undefined ? "" : literalText(spec.default) });
        const desc = h("input", { type: "text", id: `wf-input-desc-${i}`, testid: `wf-input-desc-${i}`, placeholder: "description", "aria-label": `description of ${name}`, value: spec.description || "" });
        const err = h("small", { class: "field-error", role: "alert" });
        // Each control changes only its own key, so untouched keys (say `default: ''`) survive as they are.
        const patch = (fn, structural = false) => {
          const next = { ...(isObj(model.wf.inputs[name]) ? model.wf.inputs[name] : {}) };
          fn(next);
          model.wf.inputs[name] = next;
          if (structural) refresh();
          markDirty();
        };
        typeSel.addEventListener("change", () => patch((n) => (n.type = typeSel.value), true));
        req.addEventListener("change", () =>
          patch((n) => {
            if (req.checked) delete n.required;
            else n.required = false;
          }),
        );
        dflt.addEventListener("input", () =>
          patch((n) => {
            if (dflt.value === "") delete n.default;
            else n.default = parseLiteral(dflt.value, typeSel.value);
          }),
        );
        desc.addEventListener("input", () =>
          patch((n) => {
            if (desc.value) n.description = desc.value;
            else delete n.description;
          }),
        );
        nameIn.addEventListener("change", () => {
          const next = nameIn.value.trim();
          err.textContent = "";
          if (next === name) return;
          if (!/^[A-Za-z_][A-Za-z0-9_-]{0,63}$/.test(next)) return (err.textContent = "Use letters, digits, _ or -.");
          if (next in model.wf.inputs) return (err.textContent = `"${next}" is already an input.`);
          model.wf.inputs = Object.fromEntries(Object.entries(model.wf.inputs).map(([k, v]) => [k === name ? next : k, v]));
          for (const n of model.nodes.values()) n.in = renameInputRefs(n.in, name, next);
          refresh();
          renderWfForm();
          renderForm();
          markDirty();
        });
        const remove = h("button", {
          type: "button",
          class: "btn btn-small",
          testid: `wf-input-remove-${i}`,
          "aria-label": `remove input ${name}`,
          onclick: () => {
            delete model.wf.inputs[name];
            refresh();
            renderWfForm();
            markDirty();
          },
        }, "✕");
        return h("li", { class: "wf-input-row" }, nameIn, typeSel, h("label", { class: "check" }, req, " required"), dflt, desc, remove, err);
      });
      const add = h("button", {
        type: "button",
        class: "btn btn-small",
        testid: "add-wf-input",
        onclick: () => {
          let name = "input";
          for (let i = 2; name in model.wf.inputs; i++) name = `input${i}`;
          model.wf.inputs[name] = { type: "string" };
          refresh();
          renderWfForm();
          markDirty();
          const el = wfForm.querySelector(`[data-testid="wf-input-name-${Object.keys(model.wf.inputs).length - 1}"]`);
          if (el) {
            el.focus();
            el.select();
          }
        },
      }, "+ input");
      const varsTa = h("textarea", { id: "wf-vars", testid: "wf-vars", rows: 2, class: "mono", spellcheck: "false", placeholder: "{steps: []}" });
      varsTa.value = model.wf.vars === undefined ? "" : JSON.stringify(model.wf.vars);
      const varsErr = h("small", { class: "field-error", role: "alert" });
      varsTa.addEventListener("input", () => {
        varsErr.textContent = "";
        if (!varsTa.value.trim()) {
          model.wf.vars = undefined;
          return markDirty();
        }
        try {
          const v = jsyaml.load(varsTa.value);
          if (!isObj(v)) throw new Error("write a mapping, e.g. {steps: []}");
          model.wf.vars = v;
          markDirty();
        } catch (e) {
          varsErr.textContent = String(e.message).split("\n")[0];
        }
      });
      wfForm.replaceChildren(
        h("h3", {}, "Workflow inputs"),
        rows.length ? h("ul", { class: "wf-inputs" }, rows) : h("p", { class: "hint" }, "No inputs: the run starts with none."),
        add,
        h("div", { class: "field" }, h("label", { for: "wf-vars" }, "Run variables"), varsTa, h("small", { class: "hint" }, "JSON/YAML mapping of variable to starting value"), varsErr),
      );
    }

    // ---- whole-workflow actions
    function load(newModel, { name = null, version = null, isDirty = false } = {}) {
      model = newModel;
      selected = null;
      issues = [];
      if (!editor) createEditor();
      syncing++;
      try {
        editor.clear();
        editor.node_selected = null;
        editor.connection_selected = null;
        editor.ele_selected = null;
      } finally {
        syncing--;
      }
      df.clear();
      byDf.clear();
      refresh();
      nameInput.value = model.wf.name;
      descInput.value = model.wf.description;
      savedName = name;
      savedVersion = version;
      dirty = isDirty;
      renderSaved();
      renderWfForm();
      renderForm();
      toolbarError.textContent = "";
      yamlPre.textContent = safeYaml();
      problems.replaceChildren(h("h3", {}, "Problems"), h("p", { class: "hint" }, "Checking…"));
      editor.zoom_reset();
      editor.canvas_x = 0;
      editor.canvas_y = 0;
      editor.precanvas.style.transform = "";
      requestAnimationFrame(() => alive && fitView());
      runValidate();
    }

    nameInput.addEventListener("input", () => {
      model.wf.name = nameInput.value.trim();
      nameInput.setAttribute("aria-invalid", model.wf.name && !NAME_RE.test(model.wf.name) ? "true" : "false");
      markDirty();
    });
    descInput.addEventListener("input", () => {
      model.wf.description = descInput.value;
      markDirty();
    });

    async function save() {
      toolbarError.textContent = "";
      if (!model.wf.name) {
        toolbarError.textContent = "Give the workflow a name first.";
        nameInput.focus();
        return false;
      }
      if (!NAME_RE.test(model.wf.name)) {
        toolbarError.textContent = "The name starts with a letter and uses letters, digits, _ or - (at most 64).";
        nameInput.focus();
        return false;
      }
      saveBtn.disabled = true;
      try {
        const text = buildYaml();
        const reply = await ctx.api("/api/workflows/save", { body: { yaml: text } });
        if (!alive) return false;
        savedName = reply.name || model.wf.name;
        savedVersion = reply.version;
        dirty = false;
        renderSaved();
        const hash = `#/editor/${enc(savedName)}`;
        if (location.hash !== hash) history.replaceState(null, "", hash);
        ctx.toast(`Saved ${savedName} as version ${savedVersion}`, "ok");
        return true;
      } catch (err) {
        const msg = err.status === 403 ? "Saving workflows needs an admin key." : `Could not save: ${err.message}`;
        toolbarError.textContent = msg;
        ctx.toast(msg, "error");
        return false;
      } finally {
        saveBtn.disabled = false;
      }
    }
    saveBtn.addEventListener("click", save);

    exportBtn.addEventListener("click", () => {
      const text = safeYaml();
      const name = `${model.wf.name || "workflow"}.yaml`;
      const url = URL.createObjectURL(new Blob([text], { type: "text/yaml" }));
      const a = h("a", { href: url, download: name, hidden: true });
      document.body.append(a);
      a.click();
      a.remove();
      setTimeout(() => URL.revokeObjectURL(url), 1000);
      ctx.toast(`Exported ${name}`, "ok");
    });

    importBtn.addEventListener("click", async () => {
      toolbarError.textContent = "";
      let text;
      try {
        text = await pickText(".yaml,.yml,text/yaml,application/yaml,text/plain");
      } catch {
        return; // nothing chosen
      }
      importText(text);
    });

    function importText(text) {
      let next;
      try {
        next = docToModel(jsyaml.load(text));
        if (!next.nodes.size) throw new Error("the file has no nodes");
      } catch (err) {
        const msg = `Could not import: ${String(err.message || err).split("\n")[0]}. The canvas is unchanged.`;
        toolbarError.textContent = msg;
        ctx.toast(msg, "error");
        return false;
      }
      load(next, { name: null, version: null, isDirty: true });
      ctx.toast(`Imported ${next.wf.name || "the workflow"}; save it to keep it`, "ok");
      return true;
    }

    newBtn.addEventListener("click", () => {
      load(docToModel({ version: 1, name: "", nodes: {} }));
      if (location.hash !== "#/editor") history.replaceState(null, "", "#/editor");
      nameInput.focus();
    });

    runBtn.addEventListener("click", async () => {
      runBtn.disabled = true;
      try {
        if (dirty || !savedName || savedName !== model.wf.name) {
          if (!(await save())) return;
        }
        const name = savedName;
        const needs = Object.entries(model.wf.inputs || {}).filter(([, s]) => !isObj(s) || (s.required !== false && s.default === undefined));
        if (needs.length) {
          ctx.toast(`Fill in ${needs.map(([n]) => n).join(", ")} and press Run`, "info");
          ctx.navigate(`#/workflows/${enc(name)}`);
          return;
        }
        const reply = await ctx.api(`/api/workflows/${enc(name)}/run`, { body: { inputs: {}, session: "" } });
        ctx.navigate(`#/workflows/${enc(name)}/${enc(reply.run_id)}`);
      } catch (err) {
        toolbarError.textContent = `Could not run: ${err.message}`;
      } finally {
        runBtn.disabled = false;
      }
    });

    async function openNamed(name) {
      toolbarError.textContent = "";
      try {
        const detail = await ctx.api(`/api/workflows/${enc(name)}`);
        if (!alive) return;
        let next;
        if (detail.yaml) next = docToModel(jsyaml.load(detail.yaml));
        else next = fromGraph(detail);
        load(next, { name: detail.name || name, version: detail.version ?? null });
      } catch (err) {
        if (!alive) return;
        load(docToModel({ version: 1, name: "", nodes: {} }));
        const msg = `Could not open workflow ${name}: ${err.message}`;
        toolbarError.replaceChildren(msg, " ", h("button", { type: "button", class: "btn btn-small", testid: "retry", onclick: () => openNamed(name) }, "Retry"));
        localProblem(msg);
      }
    }

    function fromGraph(detail) {
      const g = detail.graph || { nodes: [], edges: [] };
      const doc = { version: 1, name: detail.name, description: detail.description || "", nodes: {}, edges: [] };
      for (const n of g.nodes || []) doc.nodes[n.id] = { type: n.type, title: n.title || "", in: n.in || {}, params: n.params || {}, on_error: n.on_error, ui: n.ui || {} };
      for (const e of g.edges || []) if (!e.implicit) doc.edges.push({ from: e.from, to: e.to, ...(e.when ? { when: e.when } : {}) });
      return docToModel(doc);
    }

    // Keep the canvas' connections drawn right when the layout changes size.
    if (typeof ResizeObserver !== "undefined") {
      const ro = new ResizeObserver(() => {
        if (editor) for (const entry of df.values()) editor.updateConnectionNodes(`node-${entry.dfId}`);
      });
      ro.observe(canvasEl);
      cleanups.push(() => ro.disconnect());
    }

    // Routing fallback for a shell that does not remount on hash changes.
    let hashTimer = null;
    const onHash = () => {
      clearTimeout(hashTimer);
      hashTimer = setTimeout(() => {
        if (!alive) return;
        const parts = location.hash.replace(/^#\/?/, "").split("/").filter(Boolean).map(decodeURIComponent);
        if (parts[0] !== "editor") return;
        const name = parts[1] || null;
        if (name && name !== savedName) openNamed(name);
      }, 0);
    };
    window.addEventListener("hashchange", onHash);
    cleanups.push(() => window.removeEventListener("hashchange", onHash));

    const name = (ctx.params || [])[0];
    if (name) openNamed(name);
    else load(docToModel({ version: 1, name: "", nodes: {} }));

    return () => {
      clearTimeout(validateTimer);
      clearTimeout(hashTimer);
      for (const fn of cleanups) fn();
      editor = null;
    };
  }
}

function pickText(accept) {
  return new Promise((resolve, reject) => {
    const input = document.createElement("input");
    input.type = "file";
    input.accept = accept;
    input.hidden = true;
    input.dataset.testid = "import-file";
    input.addEventListener("change", () => {
      const file = input.files && input.files[0];
      input.remove();
      if (!file) return reject(new Error("no file chosen"));
      file.text().then(resolve, reject);
    });
    input.addEventListener("cancel", () => {
      input.remove();
      reject(new Error("no file chosen"));
    });
    document.body.append(input);
    input.click();
  });
}
