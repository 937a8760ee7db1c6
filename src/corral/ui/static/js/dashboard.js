// Dashboard: the cluster at a glance, from the status stream (SSE /api/status/stream, one
// message a second; first paint from GET /api/status). Rows are updated in place, so a hover
// tooltip or a text selection survives the next tick.

import { h } from "./dom.js";

function setText(el, text) {
  text = String(text);
  if (el.textContent !== text) el.textContent = text;
}

function setAttr(el, name, value) {
  if (value === "" || value === null || value === undefined) el.removeAttribute(name);
  else if (el.getAttribute(name) !== String(value)) el.setAttribute(name, String(value));
}

export function bytes(n) {
  if (typeof n !== "number" || !Number.isFinite(n) || n < 0) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${n >= 100 || i === 0 ? Math.round(n) : n.toFixed(1)} ${units[i]}`;
}

function num(n, digits = 1) {
  return typeof n === "number" && Number.isFinite(n) ? n.toFixed(digits) : "—";
}

function uptime(s) {
  if (typeof s !== "number") return "";
  if (s < 120) return `${Math.round(s)} s`;
  if (s < 7200) return `${Math.round(s / 60)} min`;
  if (s < 172800) return `${(s / 3600).toFixed(1)} h`;
  return `${Math.round(s / 86400)} days`;
}

function health(replica) {
  const status = replica.status || "unknown";
  if (status === "ready" && replica.healthy !== false) return ["ok", "ready"];
  if (status === "ready") return ["bad", "ready · not healthy"];
  if (status === "starting") return ["warn", "starting"];
  if (status === "stopped") return ["muted", "stopped"];
  if (status === "crashed" || status === "unhealthy") return ["bad", status];
  return ["muted", status];
}

const REPLICA_COLUMNS = [
  "Expert", "Replica", "Machine", "Status", "Load", ["Tokens/s", "tps"], ["Memory", "memory"], ["Served", "served"],
  ["Failures / restarts", "failures"], "Last error",
];
const NODE_COLUMNS = ["Machine", "Role", ["Cores", "cores"], "Memory used / total", "Load (1, 5, 15 min)", "Power", "Up"];

function table(testid, caption, columns) {
  const body = h("tbody");
  const el = h(
    "table",
    { class: "data", testid },
    h("caption", { class: "sr-only" }, caption),
    h("thead", {}, h("tr", {}, ...columns.map((c) => (Array.isArray(c) ? h("th", { scope: "col", class: `col-${c[1]}` }, c[0]) : h("th", { scope: "col" }, c))))),
    body,
  );
  return { wrap: h("div", { class: "table-wrap", tabindex: "0", role: "region", "aria-label": caption }, el), body };
}

function card(title, testid) {
  const value = h("div", { class: "card-value" }, "—");
  const note = h("div", { class: "card-note" });
  const el = h("div", { class: "card", testid }, h("div", { class: "card-title" }, title), value, note);
  return { el, value, note };
}

export async function mount(root, ctx) {
  const streamState = h("span", { class: "pill pill-muted", testid: "stream-state", role: "status" }, "connecting…");
  const asOf = h("span", { class: "muted small" });
  const cards = {
    queue: card("Queue", "card-queue"),
    runs: card("Agent runs", "card-runs"),
    gates: card("Waiting for approval", "card-gates"),
  };
  const replicas = table("status-table", "Experts and their replicas", REPLICA_COLUMNS);
  const nodes = table("nodes-table", "Machines", NODE_COLUMNS);
  const linksBox = h("nav", { class: "links", "aria-label": "Admin tools", hidden: true });
  const problem = h("p", { class: "error-text", role: "alert", hidden: true });

  root.append(
    h(
      "div",
      { class: "dashboard", testid: "dashboard" },
      h("div", { class: "view-head" }, h("h1", {}, "Dashboard"), streamState, asOf),
      problem,
      h("div", { class: "cards" }, cards.queue.el, cards.runs.el, cards.gates.el),
      linksBox,
      h("h2", {}, "Experts and replicas"),
      replicas.wrap,
      h("h2", {}, "Machines"),
      nodes.wrap,
    ),
  );

  const replicaRows = new Map(); // key -> {tr, cells}
  const nodeRows = new Map();
  let linksKey = "";

  function replicaRow(key) {
    let row = replicaRows.get(key);
    if (row) return row;
    const cells = {};
    const tr = h("tr", { testid: "replica-row" });
    const expertName = h("span", { class: "expert-name" });
    const expertMeta = h("span", { class: "muted small block" });
    cells.expert = h("th", { scope: "row" }, expertName, expertMeta);
    cells.expertName = expertName;
    cells.expertMeta = expertMeta;
    for (const name of ["replica", "node", "status", "load", "tps", "memory", "served", "failures", "error"]) {
      cells[name] = h("td", { class: `col-${name}` });
    }
    cells.badge = h("span", { class: "badge" });
    cells.status.append(cells.badge);
    cells.loadText = h("span");
    cells.meter = h("span", { class: "meter", "aria-hidden": "true" }, h("span"));
    cells.load.append(cells.loadText, cells.meter);
    tr.append(cells.expert, cells.replica, cells.node, cells.status, cells.load, cells.tps, cells.memory,
      cells.served, cells.failures, cells.error);
    row = { tr, cells };
    replicaRows.set(key, row);
    return row;
  }

  function renderExperts(experts) {
    const order = [];
    if (!experts.length) {
      let row = replicaRows.get("(none)");
      if (!row) {
        row = { tr: h("tr", {}, h("td", { colspan: REPLICA_COLUMNS.length, class: "empty" }, "No experts are configured. Add some under experts: in corral.yaml.")) };
        replicaRows.set("(none)", row);
      }
      order.push(row.tr);
    }
    for (const expert of experts) {
      const list = expert.replicas && expert.replicas.length ? expert.replicas : [null];
      list.forEach((replica, index) => {
        const key = replica ? `${expert.name}\u0000${replica.name}` : `${expert.name}\u0000`;
        const { tr, cells } = replicaRow(key);
        tr.classList.toggle("group-start", index === 0);
        tr.classList.toggle("group-rest", index > 0);
        setText(cells.expertName, expert.name);
        const meta = [expert.kind, expert.model].filter(Boolean).join(" · ");
        const queue = `${expert.queued || 0} queued · ${expert.admitted || 0} admitted`;
        setText(cells.expertMeta, index === 0 ? `${meta}${meta ? " — " : ""}${queue}` : "");
        setAttr(cells.expert, "title", expert.description || "");
        if (!replica) {
          setText(cells.replica, "no replicas");
          for (const name of ["node", "tps", "memory", "served", "failures", "error", "loadText"]) setText(cells[name], "");
          cells.meter.hidden = true;
          cells.badge.className = "badge badge-muted";
          setText(cells.badge, "none running");
          order.push(tr);
          return;
        }
        setText(cells.replica, replica.name);
        setAttr(cells.replica, "title", replica.pid ? `pid ${replica.pid} · port ${replica.port} · ${replica.model || ""}` : replica.model || "");
        setText(cells.node, replica.node || "—");
        const [level, label] = health(replica);
        const cls = `badge badge-${level}`;
        if (cells.badge.className !== cls) cells.badge.className = cls;
        setText(cells.badge, label);
        const slots = replica.slots || 0;
        const busy = replica.in_flight || 0;
        setText(cells.loadText, `${busy}/${slots}`);
        cells.meter.hidden = !slots;
        cells.meter.firstChild.style.width = `${slots ? Math.min(100, (100 * busy) / slots) : 0}%`;
        setText(cells.tps, replica.tokens_per_second == null ? "—" : `${num(replica.tokens_per_second)}${replica.measured === false ? " (est.)" : ""}`);
        setAttr(cells.tps, "title", replica.measured === false ? "an estimate until the replica has served a request" : "");
        setText(cells.memory, bytes(replica.rss_bytes));
        setText(cells.served, replica.served ?? 0);
        setText(cells.failures, `${replica.failures ?? 0} / ${replica.restarts ?? 0}`);
        const error = replica.last_error || "";
        setText(cells.error, error ? (error.length > 80 ? `${error.slice(0, 79)}…` : error) : "—");
        setAttr(cells.error, "title", error);
        order.push(tr);
      });
    }
    syncBody(replicas.body, order, replicaRows);
  }

  function nodeRow(name) {
    let row = nodeRows.get(name);
    if (row) return row;
    const cells = {};
    cells.name = h("th", { scope: "row" });
    for (const c of ["role", "cores", "memory", "load", "power", "up"]) cells[c] = h("td", { class: `col-${c}` });
    cells.badge = h("span", { class: "badge" });
    cells.power.append(cells.badge);
    const tr = h("tr", { testid: "node-row" }, cells.name, cells.role, cells.cores, cells.memory, cells.load, cells.power, cells.up);
    row = { tr, cells };
    nodeRows.set(name, row);
    return row;
  }

  function renderNodes(list) {
    const order = [];
    for (const node of list) {
      const { tr, cells } = nodeRow(node.name);
      setText(cells.name, node.name);
      const about = [];
      if ((node.cpu_flags || []).length) about.push(`CPU: ${node.cpu_flags.join(" ")}`);
      if (node.mac) about.push(`MAC: ${node.mac}`);
      if ((node.replicas || []).length) about.push(`runs: ${node.replicas.join(", ")}`);
      setAttr(cells.name, "title", about.join("\n"));
      setText(cells.role, node.role || "—");
      setText(cells.cores, node.cores ?? "—");
      const total = node.memory_total;
      const used = typeof total === "number" && typeof node.memory_available === "number" ? total - node.memory_available : null;
      setText(cells.memory, used === null ? "—" : `${bytes(used)} / ${bytes(total)} (${Math.round((100 * used) / total)}%)`);
      setText(cells.load, Array.isArray(node.load) ? node.load.map((x) => num(x, 2)).join("  ") : "—");
      const power = node.power || "unknown";
      // Cluster power states: awake, sleeping (put to sleep when idle), waking (Wake-on-LAN sent), lost.
      const tone = { awake: "ok", asleep: "muted", sleeping: "muted", lost: "bad" }[power] || "warn";
      const cls = `badge badge-${tone}`;
      if (cells.badge.className !== cls) cells.badge.className = cls;
      setText(cells.badge, power);
      setText(cells.up, uptime(node.uptime_s) || "—");
      order.push(tr);
    }
    if (!list.length) {
      const row = nodeRows.get("(none)") || { tr: h("tr", {}, h("td", { colspan: NODE_COLUMNS.length, class: "empty" }, "No machines reported yet.")) };
      nodeRows.set("(none)", row);
      order.push(row.tr);
    }
    syncBody(nodes.body, order, nodeRows);
  }

  function syncBody(body, order, rows) {
    const same = body.children.length === order.length && order.every((tr, i) => body.children[i] === tr);
    if (!same) body.replaceChildren(...order);
    const keep = new Set(order);
    for (const [key, row] of rows) if (!keep.has(row.tr)) rows.delete(key);
  }

  function renderLinks(links) {
    const key = JSON.stringify(links);
    if (key === linksKey) return;
    linksKey = key;
    linksBox.replaceChildren();
    linksBox.hidden = !links.length;
    if (!links.length) return;
    linksBox.append(h("span", { class: "muted" }, "Admin tools: "));
    for (const link of links) {
      linksBox.append(h("a", { href: link.url, target: "_blank", rel: "noopener", testid: "admin-link" }, link.name || link.url), " ");
    }
  }

  function render(status) {
    if (!status || typeof status !== "object") return;
    problem.hidden = true;
    const experts = Array.isArray(status.experts) ? status.experts : [];
    renderExperts(experts);
    renderNodes(Array.isArray(status.nodes) ? status.nodes : []);
    renderLinks(Array.isArray(status.links) ? status.links : []);
    const queued = experts.reduce((sum, e) => sum + (e.queued || 0), 0);
    const admitted = experts.reduce((sum, e) => sum + (e.admitted || 0), 0);
    setText(cards.queue.value, `${queued} / ${admitted}`);
    setText(cards.queue.note, "queued / admitted requests");
    const agent = status.agent || null;
    setText(cards.runs.value, agent ? agent.active_runs ?? 0 : "—");
    setText(cards.runs.note, agent ? `active · workflow ${agent.workflow || "agent"}` : "the agent is off");
    const gates = agent ? agent.pending_gates ?? 0 : 0;
    setText(cards.gates.value, agent ? gates : "—");
    cards.gates.el.classList.toggle("card-alert", gates > 0);
    if (gates > 0 && !cards.gates.note.querySelector("a")) {
      cards.gates.note.replaceChildren(h("a", { href: "#/chat" }, "Answer them in Chat"));
    } else if (!gates) {
      setText(cards.gates.note, "approvals pending");
    }
    if (typeof status.time === "number") setText(asOf, `as of ${new Date(status.time * 1000).toLocaleTimeString()}`);
  }

  try {
    render(await ctx.api("/api/status"));
  } catch (err) {
    if (err.unauthorized) throw err;
    problem.textContent = `Could not read the status: ${err.message}`;
    problem.hidden = false;
  }

  const close = ctx.stream(
    "/api/status/stream",
    "status",
    (status) => {
      render(status);
      streamState.className = "pill pill-ok";
      setText(streamState, "live");
    },
    (state) => {
      if (state === "open") {
        streamState.className = "pill pill-ok";
        setText(streamState, "live");
      } else {
        streamState.className = "pill pill-warn";
        setText(streamState, "reconnecting…");
      }
    },
  );
  return () => close();
}
