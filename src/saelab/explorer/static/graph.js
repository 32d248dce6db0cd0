// saelab explorer: the attribution graph view (graph.html). Plain DOM and SVG, no network beyond this
// server; uses explorer.js's helpers (el, clear, show, fmt, tokenText, api, guarded, bar), loaded first.
// Every string from the server is inserted with textContent, never as HTML.
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const KIND_ORDER = { embedding: 0, feature: 1, error: 2, logit: 3 };
const graphState = {
  graph: null,          // the /api/graph answer
  nodes: new Map(),     // id -> node
  placed: new Map(),    // id -> {x, y, r, node, shape}
  edgeEls: [],          // [{edge, line}]
  maxWeight: 0,
  selected: [],         // feature node ids chosen for an intervention
  pinned: null,         // a highlighted path: Set of node ids
};

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined) continue;
    if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat(Infinity)) if (child) node.append(child);
  return node;
}

function nodeName(node) {
  if (node.kind === "logit") return `logit “${node.token}”`;
  if (node.kind === "feature") return `${node.label || `L${node.layer} #${node.feature}`} @ “${node.token}”`;
  if (node.kind === "error") return `error L${node.layer} @ “${node.token}”`;
  return `embedding “${node.token}”`;
}

// -------------------------------------------------------------------------------------------- start
async function startGraphPage() {
  const [info, list] = await Promise.all([api("api/info"), api("api/graphs")]);
  $("model-info").textContent = `model ${info.model} · ${info.n_layers} layers · d_model ${info.d_model} · ` +
    `${list.graphs.length} graph${list.graphs.length === 1 ? "" : "s"}`;
  const select = $("graph-select");
  clear(select, list.graphs.map((g) => el("option", { value: g.name, text: `${g.name} · ${g.n_tokens} tokens` })));
  const wanted = new URLSearchParams(window.location.search).get("id");
  const first = list.graphs.some((g) => g.name === wanted) ? wanted : list.graphs[0].name;
  select.value = first;
  select.addEventListener("change", () => guarded(() => loadGraph(select.value)));
  $("edge-threshold").addEventListener("input", applyThreshold);
  $("intervene-run").addEventListener("click", runIntervention);
  $("selection-clear").addEventListener("click", () => { graphState.selected = []; renderSelection(); });
  $("scale").addEventListener("focus", () => { $("mode-steer").checked = true; });
  await loadGraph(first);
}

async function loadGraph(name) {
  const g = await api("api/graph", { graph: name });
  window.history.replaceState(null, "", `?id=${encodeURIComponent(name)}`);
  graphState.graph = g;
  graphState.nodes = new Map(g.nodes.map((n) => [n.id, n]));
  graphState.selected = [];
  graphState.pinned = null;
  graphState.maxWeight = Math.max(1e-12, ...g.edges.map((e) => Math.abs(e.weight)));
  graphState.sortedWeights = g.edges.map((e) => Math.abs(e.weight)).sort((a, b) => a - b);
  $("graph-prompt").textContent = g.prompt ? `“${g.prompt}”` : `${g.n_tokens} token ids`;
  const s = g.scores;
  const meta = g.metadata;
  clear($("graph-stats"),
    stat("nodes", g.n_nodes), stat("edges", g.edges_total),
    stat("replacement", fmt(s.pruned_replacement ?? s.replacement, 3)),
    stat("completeness", fmt(s.pruned_completeness ?? s.completeness, 3)),
    stat("full graph", `${fmt(s.replacement, 3)} / ${fmt(s.completeness, 3)}`),
    stat("max |logit error|", fmt(meta.max_logit_error ?? null, 2)));
  drawGraph(g);
  renderPaths(g);
  show("node-card", false);
  show("node-placeholder");
  clear($("intervene-body"));
  $("intervene-note").textContent = g.can_intervene ? "" : `view only: ${g.intervene_note}`;
  renderSelection();
}

// ------------------------------------------------------------------------------------------- layout
function layoutGraph(g) {
  const meta = g.metadata;
  const nPos = meta.tokens.length, nLayers = meta.n_layers;
  const left = 56, top = 58, bottom = 74, spacing = 14, lineH = 14;
  const room = Math.max(600, $("graph-wrap").clientWidth - left - 20);      // fit the card when it can
  const colW = Math.max(44, Math.min(120, room / nPos));
  const perLine = Math.max(1, Math.floor((colW - 10) / spacing));
  const cells = new Map();
  for (const node of g.nodes) {
    if (node.kind === "logit") continue;
    const key = `${node.layer}:${node.position}`;
    if (!cells.has(key)) cells.set(key, []);
    cells.get(key).push(node);
  }
  const lines = new Map();
  for (const [key, list] of cells) {
    list.sort((a, b) => KIND_ORDER[a.kind] - KIND_ORDER[b.kind] || b.influence - a.influence);
    const layer = Number(key.split(":")[0]);
    lines.set(layer, Math.max(lines.get(layer) || 1, Math.ceil(list.length / perLine)));
  }
  const rows = [];                                   // bottom (embeddings) to top (logits)
  for (let layer = -1; layer <= nLayers; layer += 1) {
    rows.push({ layer, height: (layer === nLayers ? 1 : (lines.get(layer) || 1)) * lineH + 20 });
  }
  const width = left + nPos * colW + 12;
  const height = top + rows.reduce((sum, r) => sum + r.height, 0) + bottom;
  let base = height - bottom;
  for (const row of rows) { row.base = base; row.centre = base - row.height / 2; base -= row.height; }
  const xOf = (pos) => left + (pos + 0.5) * colW;
  const maxInfluence = Math.max(1e-12, ...g.nodes.filter((n) => n.kind !== "logit").map((n) => Math.abs(n.influence)));
  const placed = new Map();
  for (const [key, list] of cells) {
    const [layer, pos] = key.split(":").map(Number);
    const row = rows[layer + 1];
    list.forEach((node, i) => {
      const line = Math.floor(i / perLine), k = i % perLine;
      const inLine = Math.min(perLine, list.length - line * perLine);
      const share = Math.sqrt(Math.abs(node.influence) / maxInfluence);
      placed.set(node.id, {
        node, x: xOf(pos) + (k - (inLine - 1) / 2) * spacing, y: row.base - 17 - line * lineH,
        r: node.kind === "feature" ? 3 + 4 * share : node.kind === "error" ? 2.6 + 3 * share : 4.5,
      });
    });
  }
  const logits = g.nodes.filter((n) => n.kind === "logit").sort((a, b) => b.influence - a.influence);
  const step = Math.min(84, (nPos * colW) / Math.max(1, logits.length));
  const logitRow = rows[rows.length - 1];
  logits.forEach((node, i) => {
    const x = Math.max(left + step / 2, xOf(meta.logit_position) - i * step);
    placed.set(node.id, { node, x, y: logitRow.base - 14, r: 3.5 + 7 * Math.sqrt(Math.max(0, node.probability || 0)) });
  });
  return { placed, rows, width, height, xOf, colW, left, bottom, nLayers };
}

// --------------------------------------------------------------------------------------------- draw
function drawGraph(g) {
  const lay = layoutGraph(g);
  graphState.placed = lay.placed;
  const meta = g.metadata;
  const root = svg("svg", { id: "graph-svg", class: "graph", width: lay.width, height: lay.height,
    viewBox: `0 0 ${lay.width} ${lay.height}`, role: "img", "aria-label": "attribution graph" });
  const bands = svg("g", { class: "bands" });
  lay.rows.forEach((row, i) => {
    if (i % 2 === 0) bands.append(svg("rect", { x: lay.left - 4, y: row.base - row.height, width: lay.width - lay.left,
      height: row.height, class: "band" }));
    const name = row.layer < 0 ? "emb" : row.layer === lay.nLayers ? "logits" : `L${row.layer}`;
    bands.append(svg("text", { x: lay.left - 10, y: row.centre + 4, class: "layer-label", "text-anchor": "end", text: name }));
  });
  const rotate = meta.tokens.some((t) => t.length * 7 > lay.colW - 6);
  const labels = svg("g", { class: "token-labels" });
  meta.tokens.forEach((t, pos) => {
    const x = lay.xOf(pos), y = lay.height - lay.bottom + 16;
    const text = tokenText(t.length > 14 ? `${t.slice(0, 13)}…` : t);
    labels.append(svg("text", { x, y, class: "token-label", "data-pos": pos, "text-anchor": rotate ? "end" : "middle",
      transform: rotate ? `rotate(-35 ${x} ${y})` : null, text }, svg("title", { text: `position ${pos}: ${t}` })));
    if (!rotate) labels.append(svg("text", { x, y: y + 14, class: "pos-label", "text-anchor": "middle", text: pos }));
  });
  const edges = svg("g", { class: "edges" });
  graphState.edgeEls = [];
  const ordered = [...g.edges].sort((a, b) => Math.abs(a.weight) - Math.abs(b.weight));   // strong on top
  for (const edge of ordered) {
    const a = lay.placed.get(edge.source), b = lay.placed.get(edge.target);
    if (!a || !b) continue;
    const t = Math.abs(edge.weight) / graphState.maxWeight;
    const line = svg("line", { x1: a.x.toFixed(1), y1: a.y.toFixed(1), x2: b.x.toFixed(1), y2: b.y.toFixed(1),
      class: `edge ${edge.weight >= 0 ? "pos" : "neg"}`, "stroke-width": (0.4 + 3.6 * Math.pow(t, 0.6)).toFixed(2),
      "stroke-opacity": (0.12 + 0.7 * Math.sqrt(t)).toFixed(3), "data-source": edge.source, "data-target": edge.target });
    graphState.edgeEls.push({ edge, line });
    edges.append(line);
  }
  const nodes = svg("g", { class: "nodes" });
  for (const p of lay.placed.values()) {
    const node = p.node;
    const attrs = { class: `node ${node.kind}`, "data-id": node.id, "data-kind": node.kind,
      onmouseenter: (e) => hoverNode(node, e), onmousemove: moveTooltip, onmouseleave: unhover,
      onclick: () => clickNode(node) };
    const shape = node.kind === "error" || node.kind === "embedding"
      ? svg("rect", { ...attrs, x: (p.x - p.r).toFixed(1), y: (p.y - p.r).toFixed(1), width: (2 * p.r).toFixed(1),
        height: (2 * p.r).toFixed(1), rx: node.kind === "embedding" ? 2 : 0,
        transform: node.kind === "error" ? `rotate(45 ${p.x.toFixed(1)} ${p.y.toFixed(1)})` : null })
      : svg("circle", { ...attrs, cx: p.x.toFixed(1), cy: p.y.toFixed(1), r: p.r.toFixed(1) });
    nodes.append(shape);
    p.shape = shape;
    if (node.kind === "logit") {
      nodes.append(svg("text", { x: p.x.toFixed(1), y: (p.y - p.r - 6).toFixed(1), class: "logit-label",
        "text-anchor": "middle", text: `${tokenText(node.token)} ${(100 * (node.probability || 0)).toFixed(0)}%` }));
    }
  }
  root.append(bands, labels, edges, nodes);
  clear($("graph-wrap"), root);
  applyThreshold();
}

function applyThreshold() {
  const g = graphState.graph;
  if (!g) return;
  const weights = graphState.sortedWeights;          // the slider hides that share of the edges, weakest first
  const cut = Math.min(weights.length - 1, Math.floor((Number($("edge-threshold").value) / 100) * weights.length));
  const threshold = cut > 0 ? weights[cut] : 0;
  let shown = 0;
  for (const { edge, line } of graphState.edgeEls) {
    const visible = Math.abs(edge.weight) >= threshold;
    line.classList.toggle("hidden", !visible);
    if (visible) shown += 1;
  }
  const loaded = g.edges.length < g.edges_total ? ` (the strongest ${g.edges.length} of ${g.edges_total} loaded)` : "";
  $("threshold-label").textContent = `|weight| ≥ ${fmt(threshold, 3)} · ${shown} of ${g.edges.length} edges shown${loaded}`;
}

// -------------------------------------------------------------------------------------- highlighting
// focus: {nodes: Set of ids, edges: Set of "source>target"} to light up (the rest dims), or null.
function highlight(focus) {
  const root = $("graph-svg");
  if (!root) return;
  root.classList.toggle("focusing", Boolean(focus));
  for (const { edge, line } of graphState.edgeEls) {
    line.classList.toggle("lit", Boolean(focus) && focus.edges.has(`${edge.source}>${edge.target}`));
  }
  for (const p of graphState.placed.values()) p.shape.classList.toggle("lit", Boolean(focus) && focus.nodes.has(p.node.id));
}

function neighbourhood(node) {
  const focus = { nodes: new Set([node.id]), edges: new Set() };
  for (const { edge } of graphState.edgeEls) {
    if (edge.source !== node.id && edge.target !== node.id) continue;
    focus.nodes.add(edge.source);
    focus.nodes.add(edge.target);
    focus.edges.add(`${edge.source}>${edge.target}`);
  }
  return focus;
}

function hoverNode(node, event) {
  highlight(neighbourhood(node));
  const tip = $("tooltip");
  clear(tip, el("strong", {}, nodeName(node)),
    el("div", { class: "small" }, `${node.kind} · layer ${node.layer} · position ${node.position}`),
    node.activation === null ? null : el("div", { class: "small" },
      `${node.kind === "logit" ? "logit" : node.kind === "feature" ? "activation" : "norm"} ${fmt(node.activation)}`),
    el("div", { class: "small" }, node.kind === "logit" ? `probability ${fmt(node.probability)}` :
      `influence ${fmt(node.influence)}`),
    node.kind === "feature" ? el("div", { class: "small muted" }, "click to select for an intervention") : null);
  tip.hidden = false;
  moveTooltip(event);
}

function moveTooltip(event) {
  const tip = $("tooltip"), card = $("graph-card").getBoundingClientRect();
  tip.style.left = `${Math.min(event.clientX - card.left + 14, card.width - 240)}px`;
  tip.style.top = `${event.clientY - card.top + 14}px`;
}

function unhover() {
  $("tooltip").hidden = true;
  highlight(graphState.pinned);
}

// ------------------------------------------------------------------------------------------ details
function clickNode(node) {
  showNode(node);
  if (node.kind !== "feature") return;
  const i = graphState.selected.indexOf(node.id);
  if (i >= 0) graphState.selected.splice(i, 1);
  else graphState.selected.push(node.id);
  renderSelection();
}

function dashboardLink(node) {
  const g = graphState.graph;
  const sae = g.sae_by_layer[node.layer];
  if (!sae) {
    return el("p", { class: "muted small" }, "No dashboard: the explorer has not loaded block " +
      `${node.layer}'s transcoder as an SAE (start it without --sae, or with --sae on the transcoder folders).`);
  }
  const params = new URLSearchParams({ sae, latent: String(node.feature) });
  if (g.prompt_tokens_match) { params.set("prompt", g.prompt); params.set("position", String(node.position)); }
  return el("p", {}, el("a", { class: "dashboard-link", href: `./#${params.toString()}`, target: "_blank" },
    `dashboard of latent ${node.feature} in ${sae} ▸`),
  el("span", { class: "muted small" }, " (the prompt explorer, this prompt and token)"));
}

function edgeTable(title, edges, other) {
  if (!edges.length) return null;
  const max = Math.max(1e-12, ...edges.map((e) => Math.abs(e.weight)));
  return el("div", {}, el("h3", {}, title), el("table", { class: "grid edges-table" }, edges.map((e) => {
    const n = graphState.nodes.get(other(e));
    return el("tr", {}, el("td", { class: "tokname" }, nodeName(n)), el("td", { class: "num" }, fmt(e.weight)),
      el("td", { class: "barcell" }, bar(e.weight, max)));
  })));
}

function showNode(node) {
  show("node-placeholder", false);
  $("node-title").textContent = nodeName(node);
  const g = graphState.graph;
  const incoming = g.edges.filter((e) => e.target === node.id).slice(0, 6);
  const outgoing = g.edges.filter((e) => e.source === node.id).slice(0, 6);
  const rows = [["id", node.id], ["kind", node.kind], ["layer", node.layer], ["position", node.position],
    ["token", node.token], node.feature === null ? null : ["feature", node.feature],
    node.activation === null ? null : [node.kind === "feature" ? "activation" : node.kind === "logit" ? "logit" : "norm",
      fmt(node.activation)],
    node.probability === null ? null : ["probability", fmt(node.probability)], ["influence", fmt(node.influence)]];
  clear($("node-body"),
    el("table", { class: "grid node-fields" }, rows.filter(Boolean).map(([k, v]) =>
      el("tr", {}, el("th", {}, k), el("td", { class: "tokname" }, String(v))))),
    node.kind === "feature" ? dashboardLink(node) : null,
    edgeTable("strongest inputs", incoming, (e) => e.source),
    edgeTable("strongest outputs", outgoing, (e) => e.target));
  show("node-card");
}

function renderPaths(g) {
  const paths = g.metadata.top_paths || [];
  show("paths-card", paths.length > 0);
  clear($("paths"), paths.map((path, i) => el("button", { class: "path", "data-path": i, onclick: () => {
    const again = graphState.pinned && graphState.pinned.index === i;
    graphState.pinned = again ? null : { index: i, nodes: new Set(path.nodes),
      edges: new Set(path.nodes.slice(1).map((id, j) => `${path.nodes[j]}>${id}`)) };
    highlight(graphState.pinned);
  } }, path.nodes.map((id) => nodeName(graphState.nodes.get(id) || { kind: "feature", label: id, token: "?" })).join(" → "),
  el("small", { class: "muted" }, `  ${fmt(path.score)}`))));
}

// ------------------------------------------------------------------------------------- intervention
function renderSelection() {
  const g = graphState.graph;
  for (const p of graphState.placed.values()) p.shape.classList.toggle("selected", graphState.selected.includes(p.node.id));
  const box = $("selected");
  if (!graphState.selected.length) {
    clear(box, el("span", { class: "muted small" }, "no feature node selected: click feature nodes in the graph"));
  } else {
    clear(box, graphState.selected.map((id) => el("button", { class: "chip latent-link", "data-node": id,
      title: "drop it", onclick: () => {
        graphState.selected = graphState.selected.filter((x) => x !== id);
        renderSelection();
      } }, nodeName(graphState.nodes.get(id)), el("small", {}, " ×"))));
  }
  $("intervene-run").disabled = !graphState.selected.length || !(g && g.can_intervene);
}

async function runIntervention() {
  const g = graphState.graph;
  const steer = $("mode-steer").checked;
  const body = { graph: g.name, nodes: graphState.selected, mode: steer ? "steer" : "ablate", k: 8 };
  if (steer) body.scale = Number($("scale").value);
  $("intervene-run").disabled = true;
  $("intervene-error").hidden = true;
  clear($("intervene-body"), el("p", { class: "muted" }, "running the model…"));
  let r;
  try {
    r = await api("api/graph/intervene", body);
  } catch (error) {
    clear($("intervene-body"));
    $("intervene-error").textContent = error.message || String(error);
    $("intervene-error").hidden = false;
    return;
  } finally { renderSelection(); }
  const what = r.mode === "ablate" ? "ablated" : `steered ×${r.scale}`;
  const maxReal = Math.max(1e-9, ...r.logits.map((l) => Math.abs(l.real)), ...r.logits.map((l) => Math.abs(l.predicted)));
  const maxDelta = Math.max(1e-9, ...r.top_changed.map((t) => Math.abs(t.prob_after - t.prob_before)));
  const pct = (p) => `${(100 * p).toFixed(1)}%`;
  clear($("intervene-body"),
    el("p", { class: "small", id: "intervene-summary" }, `${r.nodes.length} feature node${r.nodes.length > 1 ? "s" : ""} ` +
      `${what}; next token after “${r.token}” (position ${r.position}) · KL from clean ${fmt(r.kl, 4)} · ` +
      `graph prediction off by at most ${fmt(r.max_abs_error)} logits`),
    el("h3", {}, "the graph's logit nodes: change of the logit (vs the mean logit)"),
    el("table", { class: "grid", id: "logit-table" },
      el("tr", {}, el("th", {}, "token"), el("th", {}, "p before"), el("th", {}, "p after"), el("th", {}, "real Δ"),
        el("th", {}, "graph Δ"), el("th", { title: "the intervened nodes' own edges only" }, "direct Δ"), el("th", {}, "")),
      r.logits.map((l) => el("tr", { class: "logit-row", "data-token": l.token_id },
        el("td", { class: "tokname" }, tokenText(l.token)), el("td", { class: "num" }, pct(l.prob_before)),
        el("td", { class: "num" }, pct(l.prob_after)), el("td", { class: "num real" }, fmt(l.real)),
        el("td", { class: "num" }, fmt(l.predicted)), el("td", { class: "num" }, fmt(l.direct)),
        el("td", { class: "barcell" }, bar(l.real, maxReal))))),
    el("h3", {}, "tokens whose probability changed most"),
    el("table", { class: "grid", id: "changed-table" },
      el("tr", {}, el("th", {}, "token"), el("th", {}, "p before"), el("th", {}, "p after"), el("th", {}, "logit"),
        el("th", {}, "")),
      r.top_changed.map((t) => el("tr", { class: "changed-row" },
        el("td", { class: "tokname" }, tokenText(t.token)), el("td", { class: "num" }, pct(t.prob_before)),
        el("td", { class: "num" }, pct(t.prob_after)),
        el("td", { class: "num" }, `${fmt(t.logit_before, 2)} → ${fmt(t.logit_after, 2)}`),
        el("td", { class: "barcell" }, bar(t.prob_after - t.prob_before, maxDelta))))));
}

window.addEventListener("DOMContentLoaded", () => { if ($("graph-select")) guarded(startGraphPage); });
