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
export function isHttpUrl(value) {
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

/**
 * An <a> to the trace, its text the shortened id (the full id in its title and accessible name).
 * Always a new tab: following it in the chat's own tab would end the chat session.
 */
export function traceLink(traceId) {
  const a = document.createElement("a");
  a.className = "trace-link";
  a.href = traceHref(traceId);
  a.textContent = `trace ${traceId.slice(0, 8)}…`;
  a.title = `trace ${traceId} (opens in a new tab)`;
  a.setAttribute("aria-label", `trace ${traceId} (opens in a new tab)`);
  a.dataset.traceId = traceId;
  a.target = "_blank";
  a.rel = "noopener";
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

/**
 * A node's colour, from a hash of its name alone: the same node has the same colour in
 * every trace and on every node's viewer, whatever order nodes appear in. (Two nodes may
 * come out alike; the legend and each span's details name the node.) Dark enough for
 * 3:1 against white at any hue.
 */
export function nodeColor(name) {
  let h = 0x811c9dc5;  // FNV-1a, then murmur3's finaliser: names a digit apart land far apart
  for (const ch of String(name)) h = Math.imul(h ^ ch.codePointAt(0), 0x01000193);
  h = Math.imul(h ^ (h >>> 16), 0x85ebca6b);
  h = Math.imul(h ^ (h >>> 13), 0xc2b2ae35);
  h = (h ^ (h >>> 16)) >>> 0;
  return `hsl(${h % 360} 70% ${(h >>> 9) % 2 ? 27 : 33}%)`;
}
