// The trace viewer: recent traces (filters) and one trace as a waterfall (from #<trace_id>).
import { el, nodeColor } from "/static/common.js";

const $ = (id) => document.getElementById(id);
const API = "/debug/traces/api/traces";
const TRACE_ID = /^[0-9a-f]{32}$/i;

function setStatus(text, kind = "idle") {
  const s = $("viewer-status");
  s.textContent = text;
  s.className = `status status-${kind}`;
}

const fmtMs = (ms) => (typeof ms === "number" ? (ms >= 100 ? ms.toFixed(0) : ms.toFixed(2)) + " ms" : "–");
const nanos = (v) => (typeof v === "string" ? Number(BigInt(v) / 1000n) / 1e3 : Number(v) / 1e6); // → ms
const fmtStart = (ns) => (ns ? new Date(nanos(ns)).toLocaleTimeString() : "");

// -- the list --------------------------------------------------------------------

async function loadList() {
  const form = new FormData($("filters"));
  const params = new URLSearchParams();
  for (const key of ["name", "min_ms", "limit"]) {
    const v = String(form.get(key) || "").trim();
    if (v) params.set(key, v);
  }
  for (const key of ["errors", "include_polling", "local"]) if (form.get(key)) params.set(key, "1");
  $("list-message").textContent = "loading…";
  try {
    const res = await fetch(`${API}?${params}`, { cache: "no-store" });
    const body = await res.json().catch(() => ({}));
    if (!res.ok) throw new Error(body.error || `HTTP ${res.status}`);
    const traces = body.traces || [];
    $("traces-body").replaceChildren(...traces.map((t) => el("tr", { className: t.errors ? "has-error" : "" },
      el("td", {}, el("a", { href: `#${t.trace_id}`, textContent: t.root_name || "(missing root)",
                              title: t.trace_id }),
        t.root_node ? null : el("span", {
          className: "badge badge-warn",
          title: "no node returned this trace's root span: still running (a WebSocket connection's), "
                 + "dropped from a node's buffer, or on a node that did not answer",
        }, "root not found")),
      el("td", {}, fmtStart(t.start_unix_nano)),
      el("td", { className: "num" }, fmtMs(t.duration_ms)),
      el("td", { className: "num" }, String(t.span_count ?? "")),
      el("td", { className: "node" }, (t.nodes || []).join(", ")),
      el("td", { className: "num" }, t.errors ? el("span", { className: "badge badge-error" }, String(t.errors)) : "0"))));
    renderScope(body);
    const hidden = body.hidden_polling ? ` (${body.hidden_polling} polling trace(s) of the chat page left out)` : "";
    $("list-message").textContent = (traces.length ? `${traces.length} trace(s), newest first` : "no traces match") + hidden;
  } catch (err) {
    $("list-message").textContent = `could not load traces: ${err.message}`;
  }
}

/** Whose traces the list shows: the whole cluster (partial when a node did not answer) or one node. */
function renderScope(body) {
  const scope = $("list-scope");
  const nodes = body.nodes || [body.node];
  if (body.scope === "node") {
    scope.replaceChildren("This node only: ", el("span", { className: "node" }, body.node || ""));
  } else {
    scope.replaceChildren(`Whole cluster: ${nodes.length} node(s) answered`,
      el("span", { className: "node" }, ` (${nodes.join(", ")})`));
  }
  const missing = body.missing || [];
  if (body.partial) {
    scope.append(el("br"), "Partial: ", missing.length ? missing.map((m) => `${m.node} did not answer (${m.reason})`).join("; ")
      : "", (body.truncated || []).length ? ` ${body.truncated.join(", ")} left older traces out` : "");
  }
  scope.classList.toggle("partial", Boolean(body.partial));
}

// -- one trace -------------------------------------------------------------------

/** Spans in tree order (children by start time under their parent), each with its depth. */
export function treeOrder(spans) {
  const byId = new Map(spans.map((s) => [s.span_id, s]));
  const children = new Map();
  const roots = [];
  for (const s of spans) {
    if (s.parent_span_id && byId.has(s.parent_span_id)) {
      if (!children.has(s.parent_span_id)) children.set(s.parent_span_id, []);
      children.get(s.parent_span_id).push(s);
    } else {
      roots.push(s);
    }
  }
  const start = (s) => nanos(s.start_unix_nano);
  const out = [];
  const seen = new Set();
  const visit = (s, depth) => {
    if (seen.has(s.span_id)) return;
    seen.add(s.span_id);
    out.push({ span: s, depth });
    for (const c of (children.get(s.span_id) || []).sort((a, b) => start(a) - start(b))) visit(c, depth + 1);
  };
  for (const r of roots.sort((a, b) => start(a) - start(b))) visit(r, 0);
  // Spans only reachable through a cycle of parent ids (a corrupt reply) are still drawn.
  for (const s of spans) visit(s, 0);
  return out;
}

async function loadTrace(traceId) {
  const panel = $("trace-panel");
  panel.hidden = false;
  $("trace-title").textContent = `Trace ${traceId}`;
  $("waterfall").replaceChildren();
  $("span-detail").hidden = true;
  $("partial-banner").hidden = true;
  $("node-legend").replaceChildren();
  if (!TRACE_ID.test(traceId)) {
    setStatus(`not a trace id: ${traceId}`, "error");
    return;
  }
  setStatus("loading trace…", "connecting");
  let body;
  try {
    const res = await fetch(`${API}/${encodeURIComponent(traceId)}`, { cache: "no-store" });
    if (res.status === 404) throw new Error("this trace is not held by any node (expired or never recorded)");
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    body = await res.json();
  } catch (err) {
    setStatus(`could not load trace: ${err.message}`, "error");
    return;
  }
  const shown = renderTrace(body);
  // The counts are the waterfall's own (rows drawn, nodes they are on), so header and picture agree.
  const counts = `${shown.spans} span(s) on ${shown.nodes} node(s)`;
  $("trace-title").textContent = `Trace ${traceId}: ${counts}`;
  if (body.partial) setStatus(`partial trace: ${counts}, some spans missing`, "warn");
  else setStatus(`complete trace: ${counts}`, "connected");
  $("trace-title").focus();
}

/** The banner of a partial trace: who did not answer, who left spans out, spans whose parent is gone. */
function partialBanner(body) {
  const parts = [];
  for (const m of body.missing || []) {
    parts.push(el("li", {}, el("code", {}, m.node), " did not answer", m.reason ? ` (${m.reason})` : ""));
  }
  for (const n of body.truncated || []) parts.push(el("li", {}, el("code", {}, n), " left some spans out (too many)"));
  const orphans = body.orphans || [];
  if (orphans.length) {
    const from = [...new Set(orphans.map((o) => o.from_node).filter(Boolean))];
    parts.push(el("li", {}, `${orphans.length} span(s) point at parent spans no node returned`,
      from.length ? ` (sent from ${from.join(", ")})` : "",
      ": still running, dropped from a node's buffer, or on a node that left the cluster"));
  }
  return [el("strong", {}, "Partial trace: "), "spans are missing.", parts.length ? el("ul", {}, ...parts) : null];
}

/** Draws the trace; returns what it drew ({spans, nodes}) for the header. */
function renderTrace(body) {
  const spans = body.spans || [];
  const ordered = treeOrder(spans);
  const nodes = [...new Set(ordered.map(({ span }) => span.node).filter(Boolean))].sort();
  const orphanIds = new Set((body.orphans || []).map((o) => o.span_id));
  if (body.partial) {
    $("partial-banner").replaceChildren(...partialBanner(body).filter(Boolean));
    $("partial-banner").hidden = false;
  }
  $("node-legend").replaceChildren(...nodes.map((n) => el("li", { dataset: { node: n } },
    el("span", { className: "swatch", attrs: { "aria-hidden": "true", style: `background:${nodeColor(n)}` } }), n)));
  if (!ordered.length) return { spans: 0, nodes: 0 };
  const t0 = Math.min(...spans.map((s) => nanos(s.start_unix_nano)));
  const t1 = Math.max(...spans.map((s) => nanos(s.end_unix_nano ?? s.start_unix_nano) ));
  const total = Math.max(t1 - t0, 0.001);
  const rows = ordered.map(({ span, depth }) => {
    const left = ((nanos(span.start_unix_nano) - t0) / total) * 100;
    const dur = typeof span.duration_ms === "number" ? span.duration_ms
      : nanos(span.end_unix_nano) - nanos(span.start_unix_nano);
    const width = Math.max((dur / total) * 100, 0.4);
    const isError = span.status && span.status.code === "ERROR";
    const orphan = orphanIds.has(span.span_id);
    const button = el("button", {
      type: "button", className: `span-row${isError ? " is-error" : ""}${orphan ? " orphan" : ""}`,
      dataset: { spanId: span.span_id, node: span.node || "" },
      attrs: { "aria-label": `${span.name} on ${span.node}, ${fmtMs(dur)}${isError ? ", error" : ""}`
                             + `${orphan ? ", parent missing" : ""}` },
    },
    el("span", { className: "span-label", attrs: { style: `padding-left:${depth * 1}rem` } },
      el("span", { className: "span-name" }, span.name),
      isError ? el("span", { className: "badge badge-error" }, "ERROR") : null,
      orphan ? el("span", { className: "badge badge-warn" }, "parent missing") : null,
      el("span", { className: "span-dur" }, fmtMs(dur))),
    el("span", { className: "span-track" },
      el("span", { className: "span-bar",
                   attrs: { style: `background:${nodeColor(span.node)};left:${Math.min(left, 99.6)}%;`
                                   + `width:${Math.min(width, 100 - Math.min(left, 99.6))}%` } })));
    button.addEventListener("click", () => showSpan(span, button));
    return el("div", { attrs: { role: "listitem" } }, button);
  });
  $("waterfall").replaceChildren(
    el("div", { className: "span-axis", attrs: { "aria-hidden": "true" } },
      el("span", {}, "0 ms"), el("span", {}, fmtMs(total))),
    ...rows);
  return { spans: rows.length, nodes: nodes.length };
}

function showSpan(span, button) {
  for (const b of $("waterfall").querySelectorAll(".span-row.selected")) b.classList.remove("selected");
  button.classList.add("selected");
  const attrs = Object.entries(span.attributes || {});
  const events = span.events || [];
  const links = span.links || [];
  const status = span.status || {};
  const detail = $("span-detail");
  detail.replaceChildren(...[
    el("h3", {}, span.name),
    el("dl", { className: "kv" },
      el("dt", {}, "Node"), el("dd", { className: "span-node" }, span.node || "–"),
      el("dt", {}, "Kind"), el("dd", {}, span.kind || "–"),
      el("dt", {}, "Status"), el("dd", {}, `${status.code || "UNSET"}${status.description ? ": " + status.description : ""}`),
      el("dt", {}, "Duration"), el("dd", {}, fmtMs(span.duration_ms)),
      el("dt", {}, "Span id"), el("dd", {}, el("code", {}, span.span_id)),
      el("dt", {}, "Parent"), el("dd", {}, span.parent_span_id ? el("code", {}, span.parent_span_id) : "root")),
    el("h4", {}, "Attributes"),
    attrs.length ? el("table", { className: "attrs" }, el("tbody", {}, ...attrs.map(([k, v]) =>
      el("tr", {}, el("th", { scope: "row" }, k), el("td", {}, typeof v === "string" ? v : JSON.stringify(v))))))
      : el("p", { className: "hint" }, "none"),
    el("h4", {}, "Events"),
    events.length ? el("ul", {}, ...events.map((e) => el("li", {}, el("strong", {}, e.name), " ",
      e.time_unix_nano ? `+${fmtMs(nanos(e.time_unix_nano) - nanos(span.start_unix_nano))}` : "",
      Object.keys(e.attributes || {}).length ? el("pre", {}, JSON.stringify(e.attributes, null, 2)) : null)))
      : el("p", { className: "hint" }, "none"),
    links.length ? el("h4", {}, "Links") : null,
    links.length ? el("ul", {}, ...links.map((l) => el("li", {},
      l.trace_id ? el("a", { href: `#${l.trace_id}`, textContent: `trace ${l.trace_id}` }) : JSON.stringify(l),
      l.span_id ? ` span ${l.span_id}` : ""))) : null].filter(Boolean));
  detail.hidden = false;
}

// -- wiring ----------------------------------------------------------------------

function fromHash() {
  const id = decodeURIComponent(location.hash.slice(1)).trim();
  if (id) loadTrace(id);
  else $("trace-panel").hidden = true;
}

$("filters").addEventListener("submit", (ev) => {
  ev.preventDefault();
  loadList();
});
window.addEventListener("hashchange", fromHash);
loadList();
fromHash();
