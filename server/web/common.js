// Shared helpers of the chat page and the trace viewer (plain ES module, no dependencies).

const GRAFANA_KEY = "webserver.grafanaUrl";

/**
 * The Grafana base URL trace links go to, or "" for the built-in viewer.
 * `?grafana=https://grafana.example:3000` sets it (kept in localStorage);
 * `?grafana=` (empty) clears it.
 */
export function grafanaUrl() {
  const params = new URLSearchParams(location.search);
  if (params.has("grafana")) {
    let value = (params.get("grafana") || "").trim().replace(/\/+$/, "");
    if (value && !isHttpUrl(value)) value = "";  // never a javascript: or data: link

    try {
      if (value) localStorage.setItem(GRAFANA_KEY, value);
      else localStorage.removeItem(GRAFANA_KEY);
    } catch { /* storage disabled: the query parameter still applies */ }
    return value;
  }
  try {
    const stored = localStorage.getItem(GRAFANA_KEY) || "";
    return isHttpUrl(stored) ? stored : "";
  } catch {
    return "";
  }
}

/** Only http(s) URLs may become link targets. */
function isHttpUrl(value) {
  try {
    const url = new URL(value);
    return url.protocol === "http:" || url.protocol === "https:";
  } catch {
    return false;
  }
}

/** Where a trace id links to: Grafana Explore (Tempo datasource uid `tempo`) or /debug/traces#id. */
export function traceHref(traceId) {
  const grafana = grafanaUrl();
  if (!grafana) return `/debug/traces#${encodeURIComponent(traceId)}`;
  const left = {
    datasource: "tempo",
    queries: [{ refId: "A", datasource: { type: "tempo", uid: "tempo" }, queryType: "traceql", query: traceId }],
    range: { from: "now-1h", to: "now" },
  };
  return `${grafana}/explore?schemaVersion=1&orgId=1&left=${encodeURIComponent(JSON.stringify(left))}`;
}

/** An <a> to the trace, its text the shortened id (the full id in its title and accessible name). */
export function traceLink(traceId) {
  const a = document.createElement("a");
  a.className = "trace-link";
  a.href = traceHref(traceId);
  a.textContent = `trace ${traceId.slice(0, 8)}…`;
  a.title = `trace ${traceId}`;
  a.setAttribute("aria-label", `trace ${traceId}`);
  a.dataset.traceId = traceId;
  if (grafanaUrl()) {
    a.target = "_blank";
    a.rel = "noopener";
  }
  return a;
}

/** document.createElement with properties, attributes (`attrs`) and children. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  const { attrs, dataset, ...rest } = props;
  Object.assign(node, rest);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  for (const [k, v] of Object.entries(dataset || {})) node.dataset[k] = v;
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** A short, readable node name: `webserver@127.0.0.1:4001` stays as is; colour index is stable per name. */
export function nodeColorIndex(name, names) {
  const i = names.indexOf(name);
  return i >= 0 ? i % 8 : 7;
}
