// The fleet page: one EventSource on `events`, a snapshot then deltas (router/http/live/feed.py).
// Everything is kept in plain maps and drawn at most a few times a second; only one page
// of nodes is ever in the DOM, so a fleet of thousands stays light. Text from the fleet
// (node ids, model names, errors) is only ever set as textContent, never as HTML.
"use strict";

const PAGE_SIZE = 50;
const REQUESTS_SHOWN = 100;
const DRAW_EVERY_MS = 250;
const TICK_MS = 500;

const state = {
  nodes: new Map(), // id -> row
  heard: new Map(), // id -> unix seconds
  requests: [], // newest last
  providers: [],
  queue: null,
  skew: 0, // browser clock minus router clock, seconds
  page: 0,
  filterNode: "",
  filterModel: "",
  show: "all",
  staleShown: 0,
  expanded: new Set(), // node ids whose details are open
  unsent: 0, // requests answered while the router sent only the newest of each batch
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "title") node.title = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === "") continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function chip(text, kind, title) {
  return el("span", { class: "chip " + (kind || ""), title }, text);
}

function routerNow() {
  return Date.now() / 1000 - state.skew;
}

function ago(unix) {
  if (!unix) return "—";
  const s = Math.max(0, routerNow() - unix);
  if (s < 1) return "now";
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  return Math.round(s / 3600) + " h ago";
}

function fmtMs(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : Math.round(ms) + " ms";
}

function clock(unix) {
  return new Date(unix * 1000).toLocaleTimeString();
}

// --- the model of the fleet -------------------------------------------------------------

// The router says so, or its ttl has passed since it was last heard (before the router's
// sweep notices); a heartbeat that arrives brings it back.
function isStale(row) {
  const heard = state.heard.get(row.id);
  return row.stale || (heard !== undefined && routerNow() > heard + row.ttl_s);
}

function problems(row) {
  const out = [];
  if (isStale(row)) out.push("stale");
  for (const [kind, status] of Object.entries(row.breakers)) {
    if (status !== "closed") out.push(kind + " breaker " + status.replace("_", "-"));
  }
  for (const runtime of row.runtimes) {
    if (runtime.state !== "healthy" && runtime.state !== "disabled") {
      out.push(runtime.kind + " " + runtime.state);
    }
  }
  return out;
}

function nodeMatches(row) {
  if (state.filterNode && !row.id.toLowerCase().includes(state.filterNode)) return false;
  if (state.filterModel && !row.models.some((m) => m.name.toLowerCase().includes(state.filterModel))) {
    return false;
  }
  if (state.show === "problems" && problems(row).length === 0) return false;
  return true;
}

function requestMatches(req) {
  if (state.filterNode) {
    const where = [req.node, ...req.attempts.map((a) => a.where)].filter(Boolean);
    if (!where.some((w) => w.toLowerCase().includes(state.filterNode))) return false;
  }
  if (state.filterModel) {
    const models = [req.model, req.asked, ...req.attempts.map((a) => a.model)].filter(Boolean);
    if (!models.some((m) => m.toLowerCase().includes(state.filterModel))) return false;
  }
  return true;
}

// --- drawing -----------------------------------------------------------------------------

function loadCell(load) {
  return Object.entries(load).map(([kind, [inflight, capacity]]) => {
    const full = capacity > 0 && inflight >= capacity;
    return chip(`${kind} ${inflight}/${capacity}`, full ? "warn" : "", `${kind} slots in use`);
  });
}

function runtimeChips(row) {
  return row.runtimes.map((r) => {
    const kind = r.state === "healthy" ? "ok" : r.state === "disabled" ? "" : "bad";
    const title = [r.url, r.latency_ms != null ? r.latency_ms + " ms" : "", r.error || ""]
      .filter(Boolean)
      .join(" · ");
    return chip(`${r.kind} ${r.state}`, kind, title);
  });
}

function modelCell(row) {
  const names = row.models.map((m) => m.name + (m.running ? "" : " (idle)"));
  const shown = names.slice(0, 3).join(", ");
  const more = names.length > 3 ? ` +${names.length - 3}` : "";
  return el("span", { title: names.join("\n") }, shown + more || "—");
}

function breakerChips(row) {
  const entries = Object.entries(row.breakers);
  if (entries.length === 0) return "—";
  return entries.map(([kind, status]) =>
    chip(`${kind} ${status.replace("_", "-")}`, status === "closed" ? "ok" : "bad", "circuit breaker"),
  );
}

function gpuCell(row) {
  if (row.gpus.length === 0) return "—";
  return row.gpus.map((g) => {
    const mem = g.mem_total_mb ? ` ${Math.round((g.mem_used_mb || 0) / 1024)}/${Math.round(g.mem_total_mb / 1024)} GB` : "";
    const util = g.util_pct != null ? ` ${g.util_pct}%` : "";
    return chip(g.name + util + mem, "", "GPU: utilisation, memory used/total");
  });
}

function nodeRow(row) {
  const trouble = problems(row);
  const stale = isStale(row);
  const status = stale ? chip("stale", "bad") : trouble.length ? chip("degraded", "warn", trouble.join(", ")) : chip("ok", "ok");
  return el(
    "tr",
    { "data-node": row.id, class: stale ? "stale" : trouble.length ? "troubled" : "" },
    el("td", { class: "id" }, row.id, row.local ? chip("local", "") : ""),
    el("td", { class: "state" }, status),
    el("td", { class: "heard", title: "ttl " + row.ttl_s + " s" }, ago(state.heard.get(row.id))),
    el("td", {}, runtimeChips(row)),
    el("td", {}, modelCell(row)),
    el("td", {}, loadCell(row.load)),
    el("td", { class: "breakers" }, breakerChips(row)),
    el("td", {}, gpuCell(row)),
  );
}

function nodeDetails(row) {
  const runtimes = row.runtimes.map((r) =>
    el("li", {}, `${r.kind} ${r.url}: ${r.state}`, r.latency_ms != null ? `, ${r.latency_ms} ms` : "", `, ${r.models} models`, r.error ? el("span", { class: "error" }, ` — ${r.error}`) : ""),
  );
  const models = row.models.map((m) => el("li", {}, `${m.name} (${m.type}, ${m.runtime}${m.running ? ", running" : ""})`));
  return el(
    "tr",
    { class: "details", "data-details": row.id },
    el(
      "td",
      { colspan: 8 },
      el("div", { class: "detail-grid" },
        el("div", {}, el("h3", {}, "runtimes"), el("ul", {}, runtimes.length ? runtimes : el("li", {}, "none"))),
        el("div", {}, el("h3", {}, "models"), el("ul", {}, models.length ? models : el("li", {}, "none"))),
        el("div", {}, el("h3", {}, "node"), el("ul", {}, el("li", {}, `version ${row.version}`), el("li", {}, `ttl ${row.ttl_s} s`))),
      ),
    ),
  );
}

function drawNodes() {
  const all = [...state.nodes.values()];
  const rows = all.filter(nodeMatches).sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
  state.page = Math.min(state.page, pages - 1);
  const start = state.page * PAGE_SIZE;
  const shown = [];
  for (const row of rows.slice(start, start + PAGE_SIZE)) {
    shown.push(nodeRow(row));
    if (state.expanded.has(row.id)) shown.push(nodeDetails(row));
  }
  $("nodes").tBodies[0].replaceChildren(...shown);
  $("page").textContent = `page ${state.page + 1} of ${pages}`;
  $("prev").disabled = state.page === 0;
  $("next").disabled = state.page >= pages - 1;
  $("pager").hidden = pages <= 1;
  const stale = all.filter(isStale).length;
  state.staleShown = stale;
  $("nodes-count").textContent = rows.length === all.length ? `${all.length}` : `${rows.length} of ${all.length}`;
  $("summary").textContent = `${all.length - stale} fresh · ${stale} stale`;
}

function drawModels() {
  const models = new Map();
  for (const row of state.nodes.values()) {
    if (isStale(row)) continue;
    for (const m of row.models) {
      if (state.filterModel && !m.name.toLowerCase().includes(state.filterModel)) continue;
      if (state.filterNode && !row.id.toLowerCase().includes(state.filterNode)) continue;
      const key = m.name + "\u0000" + m.type;
      const entry = models.get(key) || { name: m.name, type: m.type, nodes: [], running: 0, inflight: 0, capacity: 0 };
      entry.nodes.push(row.id);
      if (m.running) entry.running += 1;
      const kind = m.type === "vision" || m.type === "embed" ? m.type : "llm";
      const load = row.load[kind];
      if (load) {
        entry.inflight += load[0];
        entry.capacity += load[1];
      }
      models.set(key, entry);
    }
  }
  const sorted = [...models.values()].sort((a, b) => b.nodes.length - a.nodes.length || (a.name < b.name ? -1 : 1));
  $("models").tBodies[0].replaceChildren(
    ...sorted.slice(0, 200).map((m) => {
      const shown = m.nodes.slice(0, 4).join(", ") + (m.nodes.length > 4 ? ` +${m.nodes.length - 4}` : "");
      return el(
        "tr",
        { "data-model": m.name },
        el("td", {}, m.name),
        el("td", {}, m.type),
        el("td", { title: m.nodes.join("\n") }, `${m.nodes.length}: ${shown}`),
        el("td", {}, String(m.running)),
        el("td", {}, `${m.inflight}/${m.capacity}`),
      );
    }),
  );
  $("models-count").textContent = String(models.size);
}

function routeText(req) {
  if (req.via === "none") return "—";
  const where = req.node || req.provider || "";
  return where ? `${req.via} · ${where}` : req.via;
}

function drawRequests() {
  const shown = state.requests.filter(requestMatches).slice(-REQUESTS_SHOWN).reverse();
  $("requests").tBodies[0].replaceChildren(
    ...shown.map((req) =>
      el(
        "tr",
        { "data-status": req.status, "data-route": routeText(req), class: req.status === "ok" ? "" : "failed" },
        el("td", {}, clock(req.at)),
        el("td", {}, req.api + (req.stream ? " ⇣" : "")),
        el("td", {}, req.model || req.asked || "—"),
        el("td", { class: "route", title: req.fallback_reason || "" }, routeText(req)),
        el("td", {}, chip(req.status, req.status === "ok" ? "ok" : "bad")),
        el("td", {}, fmtMs(req.ms)),
        el("td", {}, fmtMs(req.ttft_ms)),
        el("td", {}, fmtMs(req.queue_ms)),
        el("td", {}, req.tokens ? `${req.tokens[0]} → ${req.tokens[1]}` : "—"),
        el(
          "td",
          { class: "attempts" },
          req.attempts.map((a) =>
            chip(`${a.where} ${a.outcome} ${fmtMs(a.ms)}`, a.outcome === "ok" ? "ok" : "bad", [a.model, a.key_id].filter(Boolean).join(" · ")),
          ),
        ),
      ),
    ),
  );
  const unsent = state.unsent ? `, ${state.unsent} more not shown` : "";
  $("requests-count").textContent = `${state.requests.length}${unsent}`;
}

function drawProviders() {
  const box = $("providers");
  if (!state.providers || state.providers.length === 0) {
    box.replaceChildren(el("p", { class: "quiet" }, "none configured"));
    return;
  }
  box.replaceChildren(
    ...state.providers.map((p) =>
      el(
        "div",
        { class: "provider", "data-provider": p.provider },
        el("h3", {}, p.provider, " ", el("span", { class: "quiet" }, p.kind)),
        el(
          "div",
          {},
          "keys: ",
          p.keys.map((k) =>
            chip(k.state === "ok" ? `${k.key_id} ok` : `${k.key_id} ${k.state} ${Math.round(k.cooldown_left_s)} s`, k.state === "ok" ? "ok" : "warn", k.reason || ""),
          ),
        ),
        el(
          "div",
          {},
          "models: ",
          p.models.length ? p.models.map((m) => chip(`${m.model} ${m.state}`, m.state === "healthy" ? "ok" : "bad", m.reason || "")) : "—",
        ),
        el(
          "div",
          { class: "quiet" },
          p.usage.map((u) => `${u.model} via ${u.key_id}: ${u.invocations} calls, ${u.failures} failed, ${u.tokens.prompt}+${u.tokens.completion} tokens`).join(" · "),
        ),
      ),
    ),
  );
}

function drawQueue() {
  const queue = state.queue;
  $("queue-section").hidden = queue === null || queue === undefined;
  if (!queue) return;
  $("queue-total").textContent = String(queue.total);
  $("queue").tBodies[0].replaceChildren(
    ...(queue.by || []).map((g) =>
      el("tr", { "data-tenant": g.tenant }, el("td", {}, g.tenant), el("td", {}, String(g.class)), el("td", {}, String(g.waiting)), el("td", {}, fmtMs(g.oldest_ms))),
    ),
  );
}

function drawAll() {
  drawNodes();
  drawModels();
  drawRequests();
  drawProviders();
  drawQueue();
}

// Events are drawn at most every DRAW_EVERY_MS; what the user does, at once.
let drawPending = false;
function draw() {
  if (drawPending) return;
  drawPending = true;
  setTimeout(() => {
    drawPending = false;
    drawAll();
  }, DRAW_EVERY_MS);
}

// --- the stream --------------------------------------------------------------------------

function takeNodes(rows, heard) {
  for (const row of rows || []) state.nodes.set(row.id, row);
  for (const [id, at] of Object.entries(heard || {})) state.heard.set(id, at);
}

function onSnapshot(body) {
  state.skew = Date.now() / 1000 - body.now;
  state.nodes = new Map();
  state.heard = new Map();
  takeNodes(body.nodes, body.heard);
  state.requests = body.requests || [];
  state.providers = (body.providers && body.providers.providers) || [];
  state.queue = body.queue;
  drawAll(); // the first picture at once; later events at most every DRAW_EVERY_MS
}

function onDelta(body) {
  state.skew = Date.now() / 1000 - body.now;
  takeNodes(body.nodes, body.heard);
  for (const id of body.gone || []) {
    state.nodes.delete(id);
    state.heard.delete(id);
  }
  if (body.requests_unsent) state.unsent += body.requests_unsent;
  if (body.requests && body.requests.length) {
    state.requests.push(...body.requests);
    if (state.requests.length > 1000) state.requests.splice(0, state.requests.length - 1000);
  }
  if ("providers" in body) state.providers = (body.providers && body.providers.providers) || [];
  if ("queue" in body) state.queue = body.queue;
  draw();
}

function connect() {
  const link = $("link");
  const source = new EventSource("events");
  source.addEventListener("hello", (e) => {
    $("logout").hidden = !JSON.parse(e.data).login;
  });
  source.addEventListener("snapshot", (e) => onSnapshot(JSON.parse(e.data)));
  source.addEventListener("delta", (e) => onDelta(JSON.parse(e.data)));
  source.onopen = () => {
    link.textContent = "live";
    link.className = "link up";
  };
  source.onerror = () => {
    link.textContent = "reconnecting…";
    link.className = "link down";
    if (source.readyState === EventSource.CLOSED) {
      // A refused stream (the session ended): back to the login form.
      const probe = new AbortController();
      fetch("events", { signal: probe.signal })
        .then((r) => {
          probe.abort();
          if (r.status === 401) window.location.assign("login");
          else setTimeout(connect, 2000);
        })
        .catch(() => setTimeout(connect, 2000));
    }
  };
}

function filtersChanged() {
  state.filterNode = $("filter-node").value.trim().toLowerCase();
  state.filterModel = $("filter-model").value.trim().toLowerCase();
  state.show = $("filter-show").value;
  state.page = 0;
  drawAll();
}

document.addEventListener("DOMContentLoaded", () => {
  $("filter-node").addEventListener("input", filtersChanged);
  $("filter-model").addEventListener("input", filtersChanged);
  $("filter-show").addEventListener("change", filtersChanged);
  $("filters").addEventListener("submit", (e) => e.preventDefault());
  $("nodes").tBodies[0].addEventListener("click", (e) => {
    const tr = e.target.closest("tr[data-node]");
    if (!tr) return;
    const id = tr.getAttribute("data-node");
    if (state.expanded.has(id)) state.expanded.delete(id);
    else state.expanded.add(id);
    drawNodes();
  });
  $("prev").addEventListener("click", () => {
    state.page = Math.max(0, state.page - 1);
    drawNodes();
  });
  $("next").addEventListener("click", () => {
    state.page += 1;
    drawNodes();
  });
  setInterval(() => {
    // Ages move with the clock, not with events; a node past its ttl is stale now,
    // before the router's sweep says so.
    const expired = [...state.nodes.values()].filter(isStale).length;
    if (expired !== state.staleShown) draw();
    for (const cell of document.querySelectorAll("#nodes td.heard")) {
      const id = cell.parentElement.getAttribute("data-node");
      cell.textContent = ago(state.heard.get(id));
    }
  }, TICK_MS);
  connect();
});
