// Incidents: what the supervisor saw (a replica's crash, its diagnostics bundle), what it chose
// (rules or reflection, one typed action), and what happened (healed, reverted, waiting). In
// review mode a proposed action waits here for an admin to approve or reject it.
// Route: #/incidents[/ID]

import { ensureCss, fill, h } from "./dom.js";

const enc = encodeURIComponent;
const POLL_MS = 3000;

function when(epoch) {
  if (!epoch) return "—";
  const d = new Date(epoch * 1000);
  return d.toDateString() === new Date().toDateString() ? d.toLocaleTimeString() : d.toLocaleString();
}

function badge(status) {
  return h("span", { class: `status-badge status-${status} incident-${status}`, testid: "incident-status" }, status);
}

function actionText(action) {
  if (!action || !action.action) return "—";
  const extra = Object.entries(action)
    .filter(([k, v]) => k !== "action" && k !== "reason" && v !== "" && v !== null)
    .map(([k, v]) => `${k}=${v}`);
  return extra.length ? `${action.action} (${extra.join(", ")})` : action.action;
}

function bytes(n) {
  if (n === null || n === undefined) return "—";
  return n >= 1024 ** 3 ? `${(n / 1024 ** 3).toFixed(2)} GiB` : `${Math.round(n / 1024 ** 2)} MiB`;
}

export async function mount(root, ctx) {
  ensureCss("/ui/views.css");
  let alive = true;
  let timer = null;
  const isAdmin = ctx.me && ctx.me.scope === "admin";
  const head = h("div", { class: "incidents-head" });
  const list = h("div", { class: "incidents-list", testid: "incidents-list" });
  const detail = h("div", { class: "incidents-detail", testid: "incident-detail" });
  root.replaceChildren(h("div", { class: "incidents-view", testid: "incidents" }, head, list, detail));

  async function decide(incident, verb) {
    try {
      const reason = verb === "reject" ? "rejected in Mission Control" : "";
      const body = verb === "reject" ? { reason } : {};
      await ctx.api(`/api/supervisor/incidents/${enc(incident.id)}/${verb}`, { method: "POST", body });
      ctx.toast(verb === "approve" ? `Approved ${actionText(incident.action)} on ${incident.target}` : "Rejected", "info");
    } catch (err) {
      ctx.toast(err.message || String(err), "error");
    }
    await refresh();
  }

  function buttons(incident) {
    if (incident.status !== "proposed") return null;
    if (!isAdmin) return h("span", { class: "muted small" }, "waiting for an admin");
    return h(
      "span",
      { class: "incident-actions" },
      h("button", { type: "button", class: "primary", testid: "incident-approve", onclick: () => decide(incident, "approve") }, "Approve"),
      h("button", { type: "button", class: "btn", testid: "incident-reject", onclick: () => decide(incident, "reject") }, "Reject"),
    );
  }

  function renderList(status, incidents) {
    fill(
      head,
      h("h2", {}, "Incidents"),
      h(
        "p",
        { class: "muted", testid: "supervisor-mode" },
        `Supervisor mode: ${status.mode}. `,
        status.mode === "review" ? `${status.proposed} waiting for approval.` : "",
        status.mode === "observe" ? "Actions are recorded, never taken." : "",
        status.mode === "autonomous" ? "Actions are taken at once, with cooldowns and a revert." : "",
      ),
    );
    if (!incidents.length) {
      fill(list, h("p", { class: "empty", testid: "incidents-empty" }, "No incidents: every replica has behaved."));
      return;
    }
    const rows = incidents.map((i) =>
      h(
        "tr",
        { testid: "incident-row", dataset: { id: i.id, status: i.status } },
        h("td", {}, when(i.created)),
        h("td", {}, h("a", { href: `#/incidents/${enc(i.id)}` }, i.target)),
        h("td", {}, i.kind),
        h("td", {}, i.ended || "—"),
        h("td", { testid: "incident-action" }, actionText(i.action), h("span", { class: "muted small" }, i.classified_by !== "none" ? ` · ${i.classified_by}` : "")),
        h("td", {}, badge(i.status)),
        h("td", {}, buttons(i)),
      ),
    );
    fill(
      list,
      h(
        "table",
        { class: "incidents-table" },
        h("thead", {}, h("tr", {}, ["When", "Replica", "Kind", "Ended", "Action", "Status", ""].map((t) => h("th", { scope: "col" }, t)))),
        h("tbody", {}, rows),
      ),
    );
  }

  function renderDetail(incident) {
    if (!incident) return fill(detail);
    const b = incident.bundle || {};
    const mem = b.memory || {};
    const section = (title, ...body) => h("section", { class: "incident-section" }, h("h3", {}, title), ...body);
    fill(
      detail,
      h("h2", {}, `${incident.kind} on ${incident.target}`, " ", badge(incident.status)),
      h("p", {}, incident.reason),
      buttons(incident),
      incident.outcome ? h("p", { testid: "incident-outcome" }, incident.outcome) : null,
      section(
        "Diagnostics",
        h(
          "dl",
          { class: "incident-facts" },
          h("dt", {}, "Ended"), h("dd", {}, b.signal || (b.exit_code ?? "—")),
          h("dt", {}, "Memory"), h("dd", {}, `RSS ${bytes(mem.rss_bytes)}, limit ${bytes(mem.limit_bytes)}, free ${bytes(mem.available_bytes)} of ${bytes(mem.total_bytes)}`),
          h("dt", {}, "Crashes in window"), h("dd", {}, String(b.crashes_in_window ?? "—")),
          h("dt", {}, "Spec"), h("dd", {}, h("code", {}, JSON.stringify(b.spec || {}))),
        ),
        h("pre", { class: "json text", "aria-label": "log tail", testid: "incident-log" }, b.log_tail || "(empty log)"),
      ),
      incident.rejected_answers && incident.rejected_answers.length
        ? section("Rejected reflection answers", h("ul", {}, incident.rejected_answers.map((r) => h("li", {}, h("code", {}, JSON.stringify(r.answer)), " — ", r.reason))))
        : null,
      incident.adaptation && incident.adaptation.stage
        ? section("Adaptation", h("pre", { class: "json" }, JSON.stringify(incident.adaptation, null, 2)))
        : null,
      section(
        "History",
        h("ol", { class: "incident-history" }, (incident.history || []).map((e) => h("li", {}, `${when(e.time)} · ${e.event}`, Object.keys(e.detail || {}).length ? h("code", {}, " " + JSON.stringify(e.detail)) : null))),
      ),
    );
  }

  async function refresh() {
    if (!alive) return;
    const id = ctx.params && ctx.params[0];
    try {
      const [status, data] = await Promise.all([ctx.api("/api/supervisor"), ctx.api("/api/supervisor/incidents")]);
      if (!alive) return;
      renderList(status, data.incidents || []);
      renderDetail(id ? await ctx.api(`/api/supervisor/incidents/${enc(id)}`) : null);
    } catch (err) {
      if (!alive) return;
      if (err.status === 404 && !id) {
        fill(list, h("p", { class: "empty", testid: "incidents-off" }, "The supervisor is off (supervisor.enabled: false in corral.yaml)."));
      } else {
        fill(detail, h("p", { class: "view-error", role: "alert" }, err.message || String(err)));
      }
    }
  }

  const loop = async () => {
    await refresh();
    if (alive) timer = setTimeout(loop, POLL_MS);
  };
  await loop();
  return () => {
    alive = false;
    clearTimeout(timer);
  };
}
