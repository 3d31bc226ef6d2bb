// The trace viewer: recent traces (filters) and one trace as a waterfall (from #<trace_id>).
import { el } from "/static/common.js";

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
  if (form.get("errors")) params.set("errors", "1");
  $("list-message").textContent = "loading…";
  try {
    const res = await fetch(`${API}?${params}`, { cache: "no-store" });
    if (!res.ok) throw new Error(`HTTP ${res.status}`);
    const body = await res.json();
    const traces = body.traces || [];
    $("traces-body").replaceChildren(...traces.map((t) => el("tr", { className: t.errors ? "has-error" : "" },
      el("td", {}, el("a", { href: `#${t.trace_id}`, textContent: t.root_name || "(missing root)",
                              title: t.trace_id })),
      el("td", {}, fmtStart(t.start_unix_nano)),
      el("td", { className: "num" }, fmtMs(t.duration_ms)),
      el("td", { className: "num" }, String(t.span_count ?? "")),
      el("td", {}, (t.nodes || []).join(", ")),
      el("td", { className: "num" }, t.errors ? el("span", { className: "badge badge-error" }, String(t.errors)) : "0"))));
    $("list-message").textContent = traces.length
      ? `${traces.length} trace(s) held by ${body.node || "this node"}, newest first`
      : "no traces match";
  } catch (err) {
    $("list-message").textContent = `could not load traces: ${err.message}`;
  }
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
  renderTrace(body);
  setStatus(`trace ${traceId}: ${body.spans.length} span(s) from ${body.nodes.length} node(s)`, "connected");
  $("trace-title").focus();
}

function renderTrace(body) {
  const spans = body.spans || [];
  const nodes = [...new Set([...(body.nodes || []), ...spans.map((s) => s.node)])].filter(Boolean);
  const color = (node) => `node-color-${Math.max(0, nodes.indexOf(node)) % 8}`;
  if (body.partial) {
    const missing = body.missing || [];
    $("partial-banner").replaceChildren(el("strong", {}, "Partial trace: "),
      missing.length ? "spans may be missing from " : "some spans may be missing.",
      ...missing.map((m, i) => el("span", {}, i ? ", " : "", el("code", {}, m.node), m.reason ? ` (${m.reason})` : "")));
    $("partial-banner").hidden = false;
  }
  $("node-legend").replaceChildren(...nodes.map((n) => el("li", {},
    el("span", { className: `swatch ${color(n)}`, attrs: { "aria-hidden": "true" } }), n)));
  if (!spans.length) return;
  const t0 = Math.min(...spans.map((s) => nanos(s.start_unix_nano)));
  const t1 = Math.max(...spans.map((s) => nanos(s.end_unix_nano ?? s.start_unix_nano) ));
  const total = Math.max(t1 - t0, 0.001);
  const rows = treeOrder(spans).map(({ span, depth }) => {
    const left = ((nanos(span.start_unix_nano) - t0) / total) * 100;
    const dur = typeof span.duration_ms === "number" ? span.duration_ms
      : nanos(span.end_unix_nano) - nanos(span.start_unix_nano);
    const width = Math.max((dur / total) * 100, 0.4);
    const isError = span.status && span.status.code === "ERROR";
    const button = el("button", {
      type: "button", className: `span-row${isError ? " is-error" : ""}`,
      dataset: { spanId: span.span_id, node: span.node || "" },
      attrs: { "aria-label": `${span.name} on ${span.node}, ${fmtMs(dur)}${isError ? ", error" : ""}` },
    },
    el("span", { className: "span-label", attrs: { style: `padding-left:${depth * 1}rem` } },
      el("span", { className: "span-name" }, span.name),
      isError ? el("span", { className: "badge badge-error" }, "ERROR") : null,
      el("span", { className: "span-dur" }, fmtMs(dur))),
    el("span", { className: "span-track" },
      el("span", { className: `span-bar ${color(span.node)}`,
                   attrs: { style: `left:${Math.min(left, 99.6)}%;width:${Math.min(width, 100 - Math.min(left, 99.6))}%` } })));
    button.addEventListener("click", () => showSpan(span, button));
    return el("div", { attrs: { role: "listitem" } }, button);
  });
  $("waterfall").replaceChildren(
    el("div", { className: "span-axis", attrs: { "aria-hidden": "true" } },
      el("span", {}, "0 ms"), el("span", {}, fmtMs(total))),
    ...rows);
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
