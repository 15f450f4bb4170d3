// meshlens dashboard: polls /api/v1/topology and draws the live service graph.
// Every value that comes from telemetry is set with textContent or as an SVG text node:
// a service named "<img src=x onerror=alert(1)>" shows as those characters and runs nothing.
"use strict";

const SVG = "http://www.w3.org/2000/svg";
const REFRESH_MS = 2000;
// The selection panel's SQL lists (busiest operations, recent and slowest traces) refresh
// at most this often: each is a scan of the stored spans.
const EXTRAS_MS = 10000;
// Health thresholds on the error ratio (documented in the README).
const WARN_ERROR_RATIO = 0.01;
const BAD_ERROR_RATIO = 0.05;
const LABELED_EDGES = 150;
const UUID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

const state = { paused: false, selected: null, positions: new Map(), view: null, timer: null, zoom: null, extras: null, sidecars: 0 };
const $ = (id) => document.getElementById(id);

function el(tag, attrs, text) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, String(v));
  if (text !== undefined) e.textContent = text;
  return e;
}

// The share that failed: of the requests an edge's caller got answers to, or, for a node
// (`attempts`), of every attempt it received, its callers' retries included (as `meshlens
// stat` counts them), so that retries do not hide a failing service.
function failed(traffic, attempts) {
  const actual = traffic.actual_success_ratio;
  return attempts && traffic.retries > 0 && typeof actual === "number" ? 1 - actual : traffic.error_ratio;
}

function health(traffic, kind, attempts = false) {
  if (kind === "unknown" || kind === "external" || !traffic || traffic.requests === 0) return "idle";
  if (failed(traffic, attempts) >= BAD_ERROR_RATIO) return "bad";
  if (failed(traffic, attempts) >= WARN_ERROR_RATIO) return "warn";
  return "ok";
}

const fmt = {
  rate: (v) => `${v.toFixed(v < 10 ? 2 : 1)} rps`,
  pct: (v) => `${(v * 100).toFixed(v < 0.1 ? 2 : 1)}%`,
  ms: (v) => (v === null || v === undefined ? "–" : `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms`),
  cores: (v) => (v === null || v === undefined ? "–" : `${v.toFixed(v < 0.1 ? 3 : 2)} cores`),
  mib: (v) => (v === null || v === undefined ? "–" : `${(v / 1048576).toFixed(1)} MiB`),
};

function edgeLabel(e) {
  switch ($("label").value) {
    case "error": return fmt.pct(e.error_ratio);
    case "p99": return fmt.ms(e.p99_ms);
    default: return fmt.rate(e.request_rate);
  }
}

// Layered layout: a node's column is the longest path to it from a node without callers.
// Positions are kept across refreshes, so nodes never jump; only new nodes are placed.
function layout(view, width, height) {
  const incoming = new Map(view.nodes.map((n) => [n.id, []]));
  for (const e of view.edges) if (e.source !== e.target) incoming.get(e.target)?.push(e.source);
  const rank = new Map();
  const visit = (id, depth) => {
    if (depth > view.nodes.length) return 0;
    if (rank.has(id)) return rank.get(id);
    const parents = incoming.get(id) || [];
    const r = parents.length === 0 ? 0 : 1 + Math.max(...parents.map((p) => visit(p, depth + 1)));
    rank.set(id, r);
    return r;
  };
  view.nodes.forEach((n) => visit(n.id, 0));
  const columns = Math.max(1, ...rank.values()) + 1;
  const colWidth = Math.max(140, (width - 120) / Math.max(1, columns - 1 || 1));
  // Rows: new columns are ordered by the mean row of each node's callers (fewer crossings);
  // nodes that appear later go below the ones already placed in their column.
  const next = new Map();
  for (const [id, pos] of state.positions) if (rank.has(id)) next.set(pos.col, Math.max(next.get(pos.col) ?? 0, pos.row + 1));
  const byColumn = new Map();
  for (const n of view.nodes) {
    if (state.positions.has(n.id)) continue;
    const col = rank.get(n.id) || 0;
    if (!byColumn.has(col)) byColumn.set(col, []);
    byColumn.get(col).push(n.id);
  }
  for (const col of [...byColumn.keys()].sort((a, b) => a - b)) {
    const weight = (id) => {
      const rows = (incoming.get(id) || []).map((p) => state.positions.get(p)?.row).filter((r) => r !== undefined);
      return rows.length ? rows.reduce((a, b) => a + b, 0) / rows.length : Infinity;
    };
    const ids = byColumn.get(col).sort((a, b) => weight(a) - weight(b) || a.localeCompare(b));
    for (const id of ids) {
      const row = next.get(col) ?? 0;
      next.set(col, row + 1);
      state.positions.set(id, { col, row });
    }
  }
  const place = new Map();
  for (const n of view.nodes) {
    const p = state.positions.get(n.id);
    place.set(n.id, { x: 70 + p.col * colWidth, y: 60 + p.row * 90 });
  }
  const rows = Math.max(...[...place.values()].map((p) => p.y), 0) + 60;
  const cols = Math.max(...[...place.values()].map((p) => p.x), 0) + 90;
  return { place, height: Math.max(height, rows), extent: { w: cols, h: rows } };
}

// Find dims what does not match; Hide removes nodes (and their edges) by health.
function visible(view) {
  const hide = $("hide").value;
  const hidden = new Set();
  for (const n of view.nodes) {
    const h = health(n.inbound, n.kind, true);
    const outside = n.kind === "unknown" || n.kind === "external";
    if ((hide === "healthy" && (h === "ok" || h === "idle")) ||
        (hide === "under5" && !(n.inbound && failed(n.inbound, true) > BAD_ERROR_RATIO)) ||
        (hide === "outside" && outside)) hidden.add(n.id);
  }
  return {
    nodes: view.nodes.filter((n) => !hidden.has(n.id)),
    edges: view.edges.filter((e) => !hidden.has(e.source) && !hidden.has(e.target)),
  };
}

function matches(n) {
  const q = $("find").value.trim().toLowerCase();
  return !q || n.label.toLowerCase().includes(q) || n.id.toLowerCase().includes(q);
}

function draw(full) {
  const view = visible(full);
  const svg = $("graph");
  const width = svg.clientWidth || 900;
  const { place, height, extent } = layout(view, width, 520);
  // The graph keeps its own size; wheel zooms and drag pans move the view box, which
  // survives refreshes until the layout is reset.
  const visibleHeight = Math.min(height, 640);
  if (!state.zoom) state.zoom = { x: 0, y: 0, w: Math.max(width, extent.w), h: Math.max(visibleHeight, extent.h) };
  const z = state.zoom;
  svg.setAttribute("viewBox", `${z.x} ${z.y} ${z.w} ${z.h}`);
  svg.style.height = `${visibleHeight}px`;
  svg.replaceChildren();
  svg.classList.toggle("large", view.edges.length > LABELED_EDGES);
  const defs = el("defs");
  for (const h of ["ok", "warn", "bad", "idle"]) {
    // Sized in user space, so a thicker (selected) edge keeps a normal arrowhead.
    const m = el("marker", { id: `arrow-${h}`, viewBox: "0 0 10 10", refX: 26, refY: 5, markerUnits: "userSpaceOnUse", markerWidth: 12, markerHeight: 12, orient: "auto-start-reverse" });
    m.appendChild(el("path", { d: "M 0 0 L 10 5 L 0 10 z", class: h }));
    defs.appendChild(m);
  }
  svg.appendChild(defs);
  const kinds = new Map(view.nodes.map((n) => [n.id, n.kind]));
  for (const e of view.edges) {
    const a = place.get(e.source), b = place.get(e.target);
    if (!a || !b) continue;
    const h = health(e, kinds.get(e.target));
    const g = el("g", { class: `edge${state.selected === `edge:${e.id}` ? " selected" : ""}`, "data-id": e.id });
    const mx = (a.x + b.x) / 2, my = (a.y + b.y) / 2 - (a.y === b.y ? 30 : 0);
    g.appendChild(el("path", { d: `M ${a.x} ${a.y} Q ${mx} ${my} ${b.x} ${b.y}`, class: h, "marker-end": `url(#arrow-${h})` }));
    // Past LABELED_EDGES edges, only the selected edge is labelled (the table lists all):
    // thousands of labels cost more to paint than they tell.
    if (view.edges.length <= LABELED_EDGES || state.selected === `edge:${e.id}`) {
      g.appendChild(el("text", { x: (a.x + 2 * mx + b.x) / 4, y: (a.y + 2 * my + b.y) / 4 - 6, "text-anchor": "middle" }, edgeLabel(e)));
    } else {
      g.appendChild(el("title", {}, `${e.source} → ${e.target}: ${edgeLabel(e)}`));
    }
    g.addEventListener("click", () => select(`edge:${e.id}`));
    svg.appendChild(g);
  }
  for (const n of view.nodes) {
    const p = place.get(n.id);
    const dim = matches(n) ? "" : " dim";
    const g = el("g", { class: `node${state.selected === `node:${n.id}` ? " selected" : ""}${dim}`, "data-id": n.id, transform: `translate(${p.x},${p.y})` });
    g.appendChild(el("circle", { r: n.kind === "service" ? 16 : 12, class: health(n.inbound, n.kind, true) }));
    g.appendChild(el("text", { y: 32, "text-anchor": "middle" }, n.label));
    g.addEventListener("click", () => select(`node:${n.id}`));
    svg.appendChild(g);
  }
  $("empty").hidden = view.nodes.length > 0;
}

// Wheel zooms around the pointer; dragging the background pans.
function panZoom() {
  const svg = $("graph");
  const point = (event) => {
    const r = svg.getBoundingClientRect(), z = state.zoom;
    return { x: z.x + ((event.clientX - r.left) / r.width) * z.w, y: z.y + ((event.clientY - r.top) / r.height) * z.h };
  };
  svg.addEventListener("wheel", (event) => {
    if (!state.zoom) return;
    event.preventDefault();
    const p = point(event), z = state.zoom;
    const k = Math.exp(Math.sign(event.deltaY) * 0.15);
    state.zoom = { x: p.x - (p.x - z.x) * k, y: p.y - (p.y - z.y) * k, w: z.w * k, h: z.h * k };
    svg.setAttribute("viewBox", `${state.zoom.x} ${state.zoom.y} ${state.zoom.w} ${state.zoom.h}`);
  }, { passive: false });
  let drag = null;
  svg.addEventListener("pointerdown", (event) => {
    if (event.target !== svg || !state.zoom) return;
    drag = { x: event.clientX, y: event.clientY, from: { ...state.zoom } };
    svg.setPointerCapture(event.pointerId);
  });
  svg.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const r = svg.getBoundingClientRect();
    const dx = ((event.clientX - drag.x) / r.width) * drag.from.w, dy = ((event.clientY - drag.y) / r.height) * drag.from.h;
    state.zoom = { ...drag.from, x: drag.from.x - dx, y: drag.from.y - dy };
    svg.setAttribute("viewBox", `${state.zoom.x} ${state.zoom.y} ${state.zoom.w} ${state.zoom.h}`);
  });
  svg.addEventListener("pointerup", () => { drag = null; });
  svg.addEventListener("dblclick", () => { state.zoom = null; if (state.view) render(state.view); });
}

// A two-cell table row.
function pair(label, value) {
  const tr = document.createElement("tr");
  const a = document.createElement("td"); a.textContent = label;
  const b = document.createElement("td"); b.textContent = value;
  tr.append(a, b);
  return tr;
}

function row(table, label, value) {
  table.appendChild(pair(label, value));
}

function showTraffic(title, t, extra) {
  $("detail-title").textContent = title;
  const table = $("detail-table");
  table.replaceChildren();
  for (const [k, v] of extra) row(table, k, v);
  row(table, "Requests", String(t.requests));
  row(table, "Request rate", fmt.rate(t.request_rate));
  row(table, "Error ratio", fmt.pct(t.error_ratio));
  if (t.retries > 0) {
    row(table, "Retries", `${t.retries} (${fmt.pct(t.retries / Math.max(t.requests, 1))} of requests)`);
    // Every attempt, retries included.
    row(table, "Actual success", `${fmt.pct(t.actual_success_ratio)} of attempts`);
  }
  if (t.request_messages + t.response_messages > 0) {
    // gRPC: messages each way, which streams make more than the calls.
    const perCall = (n) => (n / Math.max(t.requests, 1)).toFixed(1);
    row(table, "Messages sent", `${t.request_messages} (${perCall(t.request_messages)} per call)`);
    row(table, "Messages received", `${t.response_messages} (${perCall(t.response_messages)} per call)`);
  }
  row(table, "p50", fmt.ms(t.p50_ms));
  row(table, "p90", fmt.ms(t.p90_ms));
  row(table, "p99", fmt.ms(t.p99_ms));
  const codes = $("codes-table");
  codes.replaceChildren();
  const entries = Object.entries(t.response_codes || {});
  $("codes-title").hidden = entries.length === 0;
  for (const [code, n] of entries) row(codes, code, String(n));
}

function showSelection() {
  const view = state.view;
  if (!view || !state.selected) return;
  const [kind, ...rest] = state.selected.split(":");
  const id = rest.join(":");
  const node = (nodeId) => view.nodes.find((x) => x.id === nodeId);
  if (kind === "edge") {
    const e = view.edges.find((x) => x.id === id);
    if (e) {
      showSidecars(null);
      showTraffic(`${displayName(node(e.source), e.source)} → ${displayName(node(e.target), e.target)}`, e, [["Protocol", e.protocol]]);
      charts({ source: e.source, target: e.target });
      detailExtras(node(e.source), node(e.target));
    }
  } else {
    const n = node(id);
    if (n) {
      const facts = [["Kind", n.kind], ["Namespace", n.namespace || "–"], ["Requests sent", String(n.outbound_requests)]];
      showTraffic(displayName(n), n.inbound, facts);
      showSidecars(n);
      charts({ target: n.id });
      detailExtras(n, null);
    }
  }
}

// What the node's sidecars cost: their instances' CPU (between each one's last two
// readings) and resident memory, from /api/v1/instances. Hidden for an edge, and for a node
// without sidecars that export their process figures. Only the latest answer is shown.
async function showSidecars(n) {
  const token = ++state.sidecars;
  const hide = () => { $("sidecars-table").replaceChildren(); $("sidecars-title").hidden = true; };
  if (!n || n.kind !== "service") return hide();
  const query = new URLSearchParams({ service: n.service, sdk: "meshlens-proxy" });
  if (n.namespace) query.set("namespace", n.namespace);
  if (n.workload) query.set("workload", n.workload);
  if (n.version) query.set("version", n.version);
  let list;
  try {
    const response = await fetch(`/api/v1/instances?${query}`);
    if (!response.ok) return;
    list = await response.json();
  } catch {
    return;
  }
  if (token !== state.sidecars) return;
  if (list.length === 0) return hide();
  const sum = (key) => (list.some((i) => i[key] !== null) ? list.reduce((a, i) => a + (i[key] || 0), 0) : null);
  const rows = [pair("Instances", String(list.length)), pair("CPU", fmt.cores(sum("cpu_cores"))), pair("Memory", fmt.mib(sum("resident_bytes")))];
  const SHOWN = 10;
  for (const i of list.slice(0, SHOWN)) {
    // A drawn UUID says nothing past its first digits; a pod's name is shown whole.
    const name = UUID.test(i.instance) ? `${i.instance.slice(0, 8)}…` : i.instance || "(no instance ID)";
    const tr = pair(name, `${fmt.cores(i.cpu_cores)} · ${fmt.mib(i.resident_bytes)}`);
    tr.title = `${i.instance} (${i.workload} ${i.version}): ${i.threads ?? "–"} threads, ${i.open_fds ?? "–"} open files`;
    rows.push(tr);
  }
  if (list.length > SHOWN) rows.push(pair("…", `${list.length - SHOWN} more`));
  $("sidecars-table").replaceChildren(...rows);
  $("sidecars-title").hidden = false;
}

// The rows of an SQL query, or an error with the collector's reason.
async function sqlRows(query) {
  const response = await fetch("/api/v1/sql", { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ query }) });
  const result = await response.json();
  if (!response.ok) throw new Error(result.error || `HTTP ${response.status}`);
  return result.rows;
}

// Traces (trace_id, operation, ms) as table rows, each opening the trace view.
function traceRows(rows) {
  return rows.map(([trace, op, ms]) => {
    const tr = pair(op, fmt.ms(ms));
    tr.className = "link";
    tr.title = `trace ${trace}`;
    tr.addEventListener("click", () => { showTab("traces"); openTrace(trace); });
    return tr;
  });
}

// The busiest operations (operation, spans, p99 ms) as table rows.
function opRows(rows) {
  return rows.map(([op, n, p99]) => pair(op, `${n} spans · p99 ${fmt.ms(p99)}`));
}

// A string as an SQL literal.
const sqlText = (s) => `'${String(s).replaceAll("'", "''")}'`;

// The panel's lists: table, title, rows builder.
const EXTRAS = [["recent-table", "recent-title", traceRows], ["slowest-table", "slowest-title", traceRows], ["ops-table", "ops-title", opRows]];

// A node as people write it: `reviews.shop`, with its workload (`reviews-v2.shop`) or its
// version (`reviews.shop v2`) when the graph is grouped so; its ID when it is not in the view.
function displayName(n, id) {
  if (!n) return id;
  if (n.kind !== "service") return n.label;
  const qualified = (name) => (n.namespace ? `${name}.${n.namespace}` : name);
  return n.version ? `${qualified(n.service)} ${n.version}` : qualified(n.workload ?? n.service);
}

// The SQL conditions that pick a node's spans out of the spans table: its service's, and,
// when the graph is grouped by workload or version, those of that workload or version. A
// span's own side is its source on a CLIENT span and its destination on the others; a span
// that names no workload or version counts as the topology counts it (the service's
// workload, version "unknown").
function ownSide(n) {
  const where = [`service = ${sqlText(n.service)}`];
  const own = (column) => `CASE WHEN kind = 'client' THEN source_${column} ELSE destination_${column} END`;
  if (n.workload) where.push(`coalesce(${own("workload")}, service) = ${sqlText(n.workload)}`);
  if (n.version) where.push(`coalesce(${own("version")}, 'unknown') = ${sqlText(n.version)}`);
  return where;
}

// The conditions on a caller's spans that pick those towards a destination node.
function towards(n) {
  const where = [`destination_service = ${sqlText(n.service)}`];
  if (n.workload) where.push(`coalesce(destination_workload, destination_service) = ${sqlText(n.workload)}`);
  if (n.version) where.push(`coalesce(destination_version, 'unknown') = ${sqlText(n.version)}`);
  return where;
}

// The panel's SQL lists, refreshed with the graph: the recent and slowest traces and the
// busiest operations of a service (or of a caller towards one destination), and a button to
// its traces. The queries run one after another, and for one selection a round starts at
// most every EXTRAS_MS and never while the last is still running, so a slow collector is not
// sent a pile of scans. A list is replaced only by new rows: a failed query leaves the last
// ones in place.
async function detailExtras(source, destination) {
  const key = JSON.stringify([source?.id, destination?.id, windowParams()]);
  const last = state.extras?.key === key ? state.extras : null;
  if (last && (last.busy || Date.now() - last.started < EXTRAS_MS)) return;
  if (!last) {
    for (const [table, title] of EXTRAS) { $(table).replaceChildren(); $(title).hidden = true; }
  }
  const button = $("detail-traces");
  // An unknown caller or an external host reported no spans of its own.
  button.hidden = source?.kind !== "service";
  if (button.hidden) {
    state.extras = null;
    return;
  }
  const round = { key, busy: true, started: Date.now() };
  state.extras = round;
  const tags = {};
  if (destination) {
    tags["meshlens.destination.service"] = destination.service;
    if (destination.workload) tags["meshlens.destination.workload"] = destination.workload;
    if (destination.version) tags["meshlens.destination.version"] = destination.version;
  }
  button.onclick = () => openTraces(source.service, tags);
  // The lists cover the graph's window, as the panel's figures do.
  const [start, end] = windowRange();
  const where = [...ownSide(source), `start_time >= to_timestamp_millis(${Math.floor(start)})`];
  if (end !== null) where.push(`start_time < to_timestamp_millis(${Math.ceil(end)})`);
  if (destination) where.push(...towards(destination));
  const queries = [
    `SELECT trace_id, operation, duration_ns / 1e6 AS ms FROM spans WHERE ${where.join(" AND ")} ORDER BY start_time DESC LIMIT 5`,
    `SELECT trace_id, operation, duration_ns / 1e6 AS ms FROM spans WHERE ${where.join(" AND ")} ORDER BY duration_ns DESC LIMIT 5`,
    `SELECT operation, count(*) AS spans, approx_percentile_cont(duration_ns / 1e6, 0.99) AS p99_ms
      FROM spans WHERE ${where.join(" AND ")} GROUP BY operation ORDER BY spans DESC LIMIT 5`,
  ];
  try {
    for (const [i, [table, title, build]] of EXTRAS.entries()) {
      let rows;
      try {
        rows = await sqlRows(queries[i]);
      } catch {
        continue;
      }
      if (state.extras !== round) return;
      $(table).replaceChildren(...build(rows));
      $(title).hidden = rows.length === 0;
    }
  } finally {
    round.busy = false;
  }
}

// Request rate, error ratio and p99 over the window, for the selected node or edge.
async function charts(params) {
  const query = new URLSearchParams({ ...params, ...windowParams(), group: $("group").value });
  let points;
  try {
    const response = await fetch(`/api/v1/series?${query}`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    points = await response.json();
  } catch (err) {
    $("charts").replaceChildren(document.createTextNode(`no history: ${err.message}`));
    return;
  }
  const box = $("charts");
  box.replaceChildren();
  // Each chart: a title, its lines (label, value of a point) and a formatter.
  const specs = [
    ["Requests/s", [["", (p) => p.request_rate]], fmt.rate],
    ["Error ratio", [["", (p) => p.error_ratio]], fmt.pct],
    ["Latency p50 / p90 / p99", [["p50", (p) => p.p50_ms], ["p90", (p) => p.p90_ms], ["p99", (p) => p.p99_ms]], fmt.ms],
  ];
  for (const [title, lines, format] of specs) {
    const series = lines.map(([name, value]) => [name, points.map(value)]);
    const known = series.flatMap(([, values]) => values.filter((v) => v !== null && v !== undefined));
    const max = Math.max(...known, 1e-9);
    const div = document.createElement("div");
    div.className = "chart";
    const head = document.createElement("div");
    head.className = "title";
    const name = document.createElement("span"); name.textContent = title;
    const lastOf = (values) => values.filter((v) => v !== null && v !== undefined).at(-1);
    const now = series.map(([n, values]) => `${n ? `${n} ` : ""}${lastOf(values) === undefined ? "–" : format(lastOf(values))}`).join(" · ");
    const last = document.createElement("span"); last.textContent = known.length ? `now ${now} · max ${format(max)}` : "no data";
    head.append(name, last);
    const svg = el("svg", { viewBox: "0 0 100 40", preserveAspectRatio: "none" });
    series.forEach(([n, values], i) => {
      const coords = values
        .map((v, j) => (v === null || v === undefined ? null : `${(j / Math.max(1, values.length - 1)) * 100},${38 - (v / max) * 36}`))
        .filter((c) => c !== null);
      svg.appendChild(el("polyline", { points: coords.join(" "), class: `line${i}` }));
    });
    div.append(head, svg);
    box.appendChild(div);
  }
}

// The selection lives in the URL fragment (#select=edge:a->b), so a view can be linked.
function select(key) {
  state.selected = key;
  history.replaceState(null, "", `#select=${encodeURIComponent(key)}`);
  if (state.view) render(state.view);
}

function table(view) {
  const body = $("edges").tBodies[0];
  body.replaceChildren();
  const nodes = new Map(view.nodes.map((n) => [n.id, n]));
  const name = (nodeId) => displayName(nodes.get(nodeId), nodeId);
  for (const e of [...view.edges].sort((a, b) => b.request_rate - a.request_rate)) {
    const tr = document.createElement("tr");
    if (state.selected === `edge:${e.id}`) tr.className = "selected";
    const latency = [e.p50_ms, e.p90_ms, e.p99_ms].map(fmt.ms);
    const figures = [fmt.rate(e.request_rate), fmt.pct(e.error_ratio), ...latency, String(e.requests)];
    for (const v of [name(e.source), name(e.target), e.protocol, ...figures]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    tr.addEventListener("click", () => select(`edge:${e.id}`));
    body.appendChild(tr);
  }
}

function render(view) {
  draw(view);
  table(view);
  showSelection();
}

// The window as query parameters: `window=5m`, or `start`/`end` in Unix ms when custom.
function windowParams() {
  if ($("window").value !== "custom") return { window: $("window").value };
  const start = Date.parse($("window-start").value), end = Date.parse($("window-end").value);
  if (Number.isNaN(start) || Number.isNaN(end) || end <= start) return { window: "15m" };
  return { start: String(start), end: String(end) };
}

// The window as Unix milliseconds [start, end], for the panel's SQL lists; no end when it
// ends now.
function windowRange() {
  const params = windowParams();
  if (params.start) return [Number(params.start), Number(params.end)];
  const unit = { s: 1000, m: 60000, h: 3600000 }[params.window.slice(-1)];
  return [Date.now() - Number(params.window.slice(0, -1)) * unit, null];
}

async function refresh() {
  const params = new URLSearchParams({ ...windowParams(), group: $("group").value });
  try {
    const response = await fetch(`/api/v1/topology?${params}`);
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    const view = await response.json();
    state.view = view;
    render(view);
    $("status").textContent = `updated ${new Date().toLocaleTimeString()} · ${view.nodes.length} nodes · ${view.edges.length} edges`;
  } catch (err) {
    $("status").textContent = `cannot reach the collector: ${err.message}`;
  }
}

function schedule() {
  clearTimeout(state.timer);
  if (!state.paused) state.timer = setTimeout(async () => { await refresh(); schedule(); }, REFRESH_MS);
}

// Tabs: the topology, trace search and the SQL console; the open tab is in the URL too.
// The graph's controls (window, grouping, labels, find, hide, pause) show on its tab only.
function showTab(name) {
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("active", b.dataset.tab === name);
  for (const t of document.querySelectorAll(".tab")) t.hidden = t.id !== `tab-${name}`;
  $("graph-controls").hidden = name !== "topology";
  document.dispatchEvent(new CustomEvent("meshlens:tab", { detail: name }));
}

// A tab chosen by hand goes into the URL fragment, so a reload or a link opens it again.
function linkTab(name) {
  const fragment = name !== "topology" ? `#tab=${name}` : state.selected ? `#select=${encodeURIComponent(state.selected)}` : "";
  history.replaceState(null, "", fragment || location.pathname + location.search);
}

window.addEventListener("DOMContentLoaded", () => {
  const fragment = new URLSearchParams(location.hash.slice(1));
  const linked = fragment.get("select");
  if (linked) state.selected = linked;
  for (const b of document.querySelectorAll("#tabs button")) {
    b.addEventListener("click", () => { showTab(b.dataset.tab); linkTab(b.dataset.tab); });
  }
  if (fragment.get("tab")) showTab(fragment.get("tab"));
  const local = (ms) => new Date(ms - new Date().getTimezoneOffset() * 60000).toISOString().slice(0, 16);
  $("window-start").value = local(Date.now() - 15 * 60000);
  $("window-end").value = local(Date.now());
  $("window").addEventListener("change", () => { $("custom-window").hidden = $("window").value !== "custom"; });
  for (const id of ["window-start", "window-end"]) $(id).addEventListener("change", refresh);
  $("find").addEventListener("input", () => state.view && render(state.view));
  $("hide").addEventListener("change", () => state.view && render(state.view));
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
    schedule();
  });
  $("group").addEventListener("change", () => { state.positions.clear(); state.zoom = null; state.selected = null; refresh(); });
  panZoom();
  $("window").addEventListener("change", refresh);
  $("label").addEventListener("change", () => state.view && render(state.view));
  refresh().then(schedule);
});
