// minilog's UI: hand-written, no build step, nothing loaded from elsewhere.
// Views (location hash): #/ components, #/component/<id>, #/graph, #/targets,
// #/debug/<id>. Every value from the agent goes into the page as text, never HTML.
"use strict";

const API = "api/v0/web";
const main = document.getElementById("main");
const statusLine = document.getElementById("status");
const SVG_NS = "http://www.w3.org/2000/svg";

// -- small DOM helpers ------------------------------------------------------------

function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

function badge(text, cls) {
  return h("span", { class: `badge ${cls || text}` }, text);
}

function announce(text) {
  statusLine.textContent = text;
}

async function getJSON(path) {
  const resp = await fetch(path, { cache: "no-store" });
  if (!resp.ok) throw new Error(`${path}: ${resp.status} ${await resp.text()}`);
  return resp.json();
}

function labelsText(labels) {
  if (!labels) return "(dropped)";
  const names = Object.keys(labels).sort();
  return "{" + names.map((n) => `${n}=${JSON.stringify(labels[n])}`).join(", ") + "}";
}

function bytesText(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

// Values shown in Alloy's syntax, as Alloy's UI shows arguments and exports.
function alloyText(value, indent = "") {
  const next = indent + "  ";
  if (value === null || value === undefined) return "null";
  if (typeof value === "string") return JSON.stringify(value);
  if (typeof value !== "object") return String(value);
  if (Array.isArray(value)) {
    if (value.length === 0) return "[]";
    return "[\n" + value.map((v) => next + alloyText(v, next)).join(",\n") + ",\n" + indent + "]";
  }
  const keys = Object.keys(value);
  if (keys.length === 0) return "{}";
  const key = (k) => (/^[A-Za-z_][A-Za-z0-9_]*$/.test(k) ? k : JSON.stringify(k));
  return "{\n" + keys.map((k) => `${next}${key(k)} = ${alloyText(value[k], next)}`).join(",\n") + ",\n" + indent + "}";
}

// -- views --------------------------------------------------------------------------

let cleanup = null; // stops what the current view runs (live debugging's stream)
let routeSeq = 0; // the route being shown; a slower, older one must not replace it

function show(seq, ...nodes) {
  if (seq !== routeSeq) return false;
  main.replaceChildren(...nodes.filter((n) => n !== null && n !== undefined));
  return true;
}

async function viewComponents() {
  const seq = routeSeq;
  const components = await getJSON(`${API}/components`);
  const rows = components.map((c) =>
    h("tr", {},
      h("td", {}, h("a", { href: `#/component/${c.localID}` }, c.localID)),
      h("td", {}, c.name),
      h("td", {}, badge(c.health.state)),
      h("td", {}, c.health.message),
      h("td", {}, c.liveDebuggingEnabled
        ? h("a", { href: `#/debug/${c.localID}`, "aria-label": `live debugging of ${c.localID}` }, "live")
        : h("span", { class: "muted" }, "-")),
    ));
  const unhealthy = components.filter((c) => c.health.state === "unhealthy").length;
  show(seq,
    h("h1", {}, "Components"),
    h("p", { class: "muted" }, `${components.length} components, ${unhealthy} unhealthy.`),
    h("table", {},
      h("thead", {}, h("tr", {}, ["Component", "Type", "Health", "Message", "Live"].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, rows)),
  );
}

async function viewComponent(id) {
  const seq = routeSeq;
  const c = await getJSON(`${API}/components/${id}`);
  const section = (title, value) => [
    h("h2", {}, title),
    value === null || value === undefined
      ? h("p", { class: "muted" }, "none")
      : h("pre", { class: "value", tabindex: "0", "aria-label": title }, alloyText(value)),
  ];
  const links = (ids) => ids.length
    ? ids.map((r, i) => [i ? ", " : "", h("a", { href: `#/component/${r}` }, r)])
    : h("span", { class: "muted" }, "none");
  show(seq,
    h("h1", {}, c.localID, " ", badge(c.health.state)),
    h("dl", { class: "meta" },
      h("dt", {}, "type"), h("dd", {}, c.name),
      h("dt", {}, "health"), h("dd", {}, c.health.message || c.health.state),
      h("dt", {}, "since"), h("dd", {}, c.health.updatedTime),
      h("dt", {}, "references"), h("dd", {}, links(c.referencesTo)),
      h("dt", {}, "referenced by"), h("dd", {}, links(c.referencedBy)),
      h("dt", {}, "sends data to"), h("dd", {}, links(c.dataFlowEdgesTo)),
      h("dt", {}, "live debugging"), h("dd", {}, c.liveDebuggingEnabled
        ? h("a", { href: `#/debug/${c.localID}` }, "watch entries leaving it")
        : "not supported (it forwards no log entries)"),
    ),
    ...section("Arguments", c.arguments),
    ...section("Exports", c.exports),
    ...section("Debug info", c.debugInfo),
  );
}

// The graph as Alloy draws it: one node per component, edges along the data flow,
// left to right. Layers by longest path from a source; order in a layer by the mean
// position of the nodes feeding it (one sweep), which keeps pipelines straight.
async function viewGraph() {
  const seq = routeSeq;
  const components = await getJSON(`${API}/components`);
  const ids = components.map((c) => c.localID);
  const byId = new Map(components.map((c) => [c.localID, c]));
  const edges = [];
  for (const c of components) for (const to of c.dataFlowEdgesTo) if (byId.has(to)) edges.push([c.localID, to]);
  const layer = new Map(ids.map((id) => [id, 0]));
  for (let pass = 0; pass < ids.length; pass++) {
    let changed = false;
    for (const [from, to] of edges) {
      if (layer.get(to) < layer.get(from) + 1) { layer.set(to, layer.get(from) + 1); changed = true; }
    }
    if (!changed) break;
  }
  const layers = [];
  for (const id of ids) (layers[layer.get(id)] ||= []).push(id);
  const row = new Map();
  layers.forEach((ls, i) => {
    if (i > 0) {
      const pos = (id) => {
        const ins = edges.filter(([, to]) => to === id).map(([from]) => row.get(from));
        return ins.length ? ins.reduce((a, b) => a + b, 0) / ins.length : Infinity;
      };
      ls.sort((a, b) => pos(a) - pos(b));
    }
    ls.forEach((id, j) => row.set(id, j));
  });
  const W = 250, H = 58, GX = 90, GY = 34, PAD = 20;
  const xy = (id) => [PAD + layer.get(id) * (W + GX), PAD + row.get(id) * (H + GY)];
  const width = PAD * 2 + layers.length * W + Math.max(0, layers.length - 1) * GX;
  const height = PAD * 2 + Math.max(...layers.map((l) => l.length)) * (H + GY) - GY;
  const svg = s("svg", { class: "graph", width, height, viewBox: `0 0 ${width} ${height}`, role: "group", "aria-label": "component graph" },
    s("defs", {}, s("marker", { id: "arrow", viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 8, markerHeight: 8, orient: "auto-start-reverse" },
      s("path", { d: "M 0 0 L 10 5 L 0 10 z", fill: "#6b7688" }))));
  for (const [from, to] of edges) {
    const [x1, y1] = xy(from), [x2, y2] = xy(to);
    const a = [x1 + W, y1 + H / 2], b = [x2, y2 + H / 2], mid = (a[0] + b[0]) / 2;
    svg.append(s("path", {
      class: "edge", "data-from": from, "data-to": to, "marker-end": "url(#arrow)",
      d: `M ${a[0]} ${a[1]} C ${mid} ${a[1]}, ${mid} ${b[1]}, ${b[0]} ${b[1]}`,
    }, s("title", {}, `${from} sends to ${to}`)));
  }
  // Tab order follows the data: layer by layer, top to bottom.
  const ordered = [...ids].sort((a, b) => layer.get(a) - layer.get(b) || row.get(a) - row.get(b));
  for (const id of ordered) {
    const c = byId.get(id);
    const [x, y] = xy(id);
    const state = c.health.state;
    const color = { healthy: "#1a7f37", unhealthy: "#b42318" }[state] || "#5b6475";
    svg.append(s("a", { href: `#/component/${id}`, class: "node-link", "data-id": id, "aria-label": `${id}, ${state}` },
      s("title", {}, `${id}: ${state}${c.health.message ? " - " + c.health.message : ""}`),
      s("rect", { class: "node", x, y, width: W, height: H, rx: 8 }),
      s("rect", { class: "state", x, y, width: 8, height: H, rx: 3, fill: color }),
      s("text", { class: "name", x: x + 18, y: y + 24 }, c.name),
      s("text", { class: "label", x: x + 18, y: y + 44 }, `${c.label}  ·  ${state}`)));
  }
  show(seq,
    h("h1", {}, "Graph"),
    h("p", { class: "muted" }, `${ids.length} components, ${edges.length} edges; data flows left to right. Tab to a component, Enter opens it.`),
    h("div", { class: "graph-wrap" }, svg),
  );
}

function stageView(stage) {
  const title = h("h3", {}, stage.component);
  if (!stage.steps.length) {
    return h("div", { class: "stage" }, title, h("div", { class: "labels" }, labelsText(stage.output)));
  }
  const steps = stage.steps.map((st) => {
    if (st.labels === null) {
      return h("li", { class: "drop" }, `rule ${st.rule} (${st.action}) `, h("code", {}, st.text), h("div", {}, `dropped by rule ${st.rule} (${st.action})`));
    }
    const set = Object.entries(st.changes.set).map(([k, v]) => h("span", { class: "change-set" }, ` +${k}=${JSON.stringify(v)}`));
    const removed = st.changes.removed.map((k) => h("span", { class: "change-removed" }, ` -${k}`));
    return h("li", {}, `rule ${st.rule} (${st.action}) `, h("code", {}, st.text),
      h("div", { class: "labels" }, (set.length || removed.length) ? [set, removed] : "no change"),
      h("details", {}, h("summary", {}, "labels after it"), h("div", { class: "labels" }, labelsText(st.labels))));
  });
  return h("div", { class: "stage" }, title,
    h("details", {}, h("summary", {}, "labels in"), h("div", { class: "labels" }, labelsText(stage.input))),
    h("ol", { class: "steps" }, steps));
}

function targetView(t) {
  const state = t.tailer ? (t.tailer.running ? "running" : "not following") : t.state;
  const body = h("div", { class: "body" },
    t.stages.map(stageView),
    t.streams.map((st) => h("div", { class: "stage" },
      st.relabel_rules ? stageView(st.relabel_rules) : null,
      h("h3", {}, `${st.stream} `, badge(st.shipped ? "shipped" : "dropped")),
      h("div", { class: "labels" }, st.shipped ? `reaches Loki as ${st.labels_text}` : st.verdict),
      "lines" in st ? h("div", { class: "muted" }, `${st.lines} lines, ${bytesText(st.bytes)} sent; last entry ${st.last_entry || "-"}`) : null)),
    t.tailer ? h("dl", { class: "meta" },
      h("dt", {}, "tailer"), h("dd", {}, t.tailer.running ? "following the log" : "not following"),
      h("dt", {}, "read up to"), h("dd", {}, t.tailer.read_position || "-"),
      h("dt", {}, "acknowledged up to"), h("dd", {}, t.tailer.acknowledged_position || "-"),
      h("dt", {}, "lag"), h("dd", {}, `${t.tailer.lag_seconds} s`),
      h("dt", {}, "last error"), h("dd", {}, t.tailer.last_error || "none")) : null);
  return h("details", { class: "target", "data-name": t.name, "data-shipped": String(t.shipped) },
    h("summary", {},
      h("strong", {}, t.name), h("span", { class: "muted mono" }, t.id.slice(0, 12)),
      badge(t.shipped ? "shipped" : "not shipped", t.shipped ? "shipped" : "dropped"),
      h("span", { class: "muted" }, state || ""),
      t.shipped ? null : h("span", { class: "verdict" }, t.verdict)),
    body);
}

async function viewTargets() {
  const seq = routeSeq;
  const targets = await getJSON(`${API}/explain`);
  const filter = h("input", { type: "search", id: "filter", placeholder: "container name", "aria-label": "filter targets by name" });
  const list = h("div", {});
  const render = () => {
    const q = filter.value.trim().toLowerCase();
    const shown = targets.filter((t) => !q || t.name.toLowerCase().includes(q) || t.id.startsWith(q));
    const sources = [...new Set(shown.map((t) => t.source))];
    list.replaceChildren(...sources.map((src) => h("section", {},
      h("h2", {}, src),
      shown.filter((t) => t.source === src).map(targetView))));
    if (!shown.length) list.replaceChildren(h("p", { class: "muted" }, "No target."));
  };
  filter.addEventListener("input", render);
  render();
  const shipped = targets.filter((t) => t.shipped).length;
  show(seq,
    h("h1", {}, "Targets: why each container is shipped or not"),
    h("p", { class: "muted" }, `${targets.length} containers, ${shipped} shipped. Open one to see each step: what discovery found, each relabel rule in order with the labels after it, and what each stream reaches Loki with. As JSON: `, h("a", { href: `${API}/explain` }, `/${API}/explain`), "; from a shell: ", h("code", {}, "minilog explain CONFIG [CONTAINER]"), "."),
    h("div", { class: "toolbar" }, h("label", {}, "Filter ", filter)),
    list,
  );
}

async function viewDebug(id) {
  const seq = routeSeq;
  const components = (await getJSON(`${API}/components`)).filter((c) => c.liveDebuggingEnabled);
  if (!id && components.length) id = components[0].localID;
  const picker = h("select", { id: "debug-component", "aria-label": "component to watch" },
    components.map((c) => h("option", { value: c.localID, selected: c.localID === id }, c.localID)));
  picker.addEventListener("change", () => { location.hash = `#/debug/${picker.value}`; });
  const filter = h("input", { type: "search", id: "filter", placeholder: "text in line or labels", "aria-label": "filter entries" });
  const cap = h("input", { type: "number", id: "cap", min: "10", max: "10000", value: "1000", "aria-label": "entries kept in the browser" });
  const pause = h("button", { type: "button", id: "pause", "aria-pressed": "false" }, "Pause");
  const clear = h("button", { type: "button", id: "clear" }, "Clear");
  const counts = h("span", { class: "counts", id: "counts", "aria-live": "off" });
  const notice = h("div", {});
  const tbody = h("tbody", { id: "entries" });
  const rows = []; // {el, text}
  let received = 0, droppedAgent = 0, droppedBrowser = 0, paused = false, source = null;

  const showCounts = () => {
    counts.textContent = `${received} received, ${rows.length} held, ${droppedAgent} dropped by the agent (viewer too slow), ${droppedBrowser} dropped from the page (cap)`;
  };
  const matches = (text) => !filter.value || text.toLowerCase().includes(filter.value.toLowerCase());
  const add = (e) => {
    received++;
    const labels = labelsText(e.labels);
    const el = h("tr", {}, h("td", { class: "ts mono" }, e.timestamp), h("td", { class: "labels" }, labels), h("td", { class: "line" }, e.line));
    const text = `${e.line} ${labels}`;
    el.hidden = !matches(text);
    rows.push({ el, text });
    tbody.prepend(el);
    const limit = Math.max(10, Number(cap.value) || 1000);
    while (rows.length > limit) { rows.shift().el.remove(); droppedBrowser++; }
  };
  const connect = () => {
    if (!id) return;
    source = new EventSource(`${API}/debug/${encodeURIComponent(id).replace(/%2F/g, "/")}?capacity=${Math.max(10, Number(cap.value) || 1000)}`);
    source.addEventListener("hello", () => { notice.replaceChildren(); announce(`watching ${id}`); });
    source.addEventListener("entry", (ev) => { add(JSON.parse(ev.data)); showCounts(); });
    source.addEventListener("dropped", (ev) => { droppedAgent = JSON.parse(ev.data).dropped; showCounts(); });
    source.addEventListener("closed", () => { stop(); notice.replaceChildren(h("p", { class: "notice" }, "The agent ended the stream (live debugging was turned off).")); });
    source.onerror = async () => {
      if (source && source.readyState === EventSource.CLOSED) {
        stop();
        const resp = await fetch(`${API}/debug/${id}`, { headers: { Accept: "text/event-stream" } });
        const text = resp.ok ? "The stream ended." : await resp.text();
        notice.replaceChildren(h("p", { class: "error", id: "debug-error" }, text));
      }
    };
  };
  const stop = () => { if (source) { source.close(); source = null; } };
  pause.addEventListener("click", () => {
    paused = !paused;
    pause.setAttribute("aria-pressed", String(paused));
    pause.textContent = paused ? "Resume" : "Pause";
    if (paused) stop(); else connect();
    announce(paused ? "paused: the agent stops sending" : "resumed");
  });
  clear.addEventListener("click", () => { rows.length = 0; tbody.replaceChildren(); received = 0; droppedBrowser = 0; showCounts(); });
  filter.addEventListener("input", () => { for (const r of rows) r.el.hidden = !matches(r.text); });
  const shown = show(seq,
    h("h1", {}, "Live debugging"),
    h("p", { class: "muted" }, "Entries leaving the component, newest first, as they leave. Needs ", h("code", {}, "livedebugging { enabled = true }"), " in the config. A viewer that falls behind loses entries (counted below); the pipeline never waits for it."),
    h("div", { class: "toolbar" },
      h("label", {}, "Component ", picker),
      h("label", {}, "Filter ", filter),
      h("label", {}, "Keep ", cap, " entries"),
      pause, clear, counts),
    notice,
    components.length ? null : h("p", { class: "notice" }, "No component forwards log entries."),
    h("table", { class: "live" },
      h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Timestamp"), h("th", { scope: "col" }, "Labels"), h("th", { scope: "col" }, "Line"))),
      tbody),
  );
  if (!shown) return;
  cleanup = stop;
  showCounts();
  connect();
}

// -- routing and keys ---------------------------------------------------------------

async function route() {
  if (cleanup) { cleanup(); cleanup = null; }
  const seq = ++routeSeq;
  const hash = location.hash.replace(/^#\/?/, "");
  const [view, ...rest] = hash.split("/");
  const arg = decodeURIComponent(rest.join("/"));
  const name = { "": "components", component: "components", graph: "graph", targets: "targets", debug: "debug" }[view] || "components";
  for (const a of document.querySelectorAll("nav a")) {
    if (a.dataset.view === name) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
  try {
    if (view === "component" && arg) await viewComponent(arg);
    else if (view === "graph") await viewGraph();
    else if (view === "targets") await viewTargets();
    else if (view === "debug") await viewDebug(arg);
    else await viewComponents();
    document.title = `minilog · ${name}`;
    main.dataset.view = view || "components";
    announce(`${name} loaded`);
  } catch (err) {
    show(seq, h("h1", {}, "Error"), h("p", { class: "error" }, String(err.message || err)));
  }
}

const help = document.getElementById("help");
document.getElementById("help-button").addEventListener("click", () => help.showModal());

document.addEventListener("keydown", (ev) => {
  if (ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const typing = ev.target.closest && ev.target.closest("input, select, textarea");
  if (typing) {
    if (ev.key === "Escape") ev.target.blur();
    return;
  }
  const go = { c: "#/", g: "#/graph", t: "#/targets", l: "#/debug" }[ev.key];
  if (go) { location.hash = go; main.focus(); ev.preventDefault(); return; }
  if (ev.key === "/") { const f = document.getElementById("filter"); if (f) { f.focus(); ev.preventDefault(); } return; }
  if (ev.key === "p") { const b = document.getElementById("pause"); if (b) { b.click(); ev.preventDefault(); } return; }
  if (ev.key === "r") { route(); ev.preventDefault(); return; }
  if (ev.key === "?") { help.open ? help.close() : help.showModal(); ev.preventDefault(); }
});

window.addEventListener("hashchange", route);
route();
