// saelab explorer: the page's logic. Plain DOM (no framework, no network beyond this server).
// Every string from the server is inserted with textContent, never as HTML.
// The graph page (graph.html) loads this file first for its helpers (el, api, fmt, ...), then graph.js.
// Deep link: #sae=NAME&latent=N[&prompt=TEXT&position=P] opens that latent (the graph view links here).
"use strict";

const state = {
  info: null, sae: null, prompt: "", tokens: null, position: null,
  latent: null,   // {sae, latent, position}: what the right-hand side shows
  trail: [],      // recursion steps: [{sae, latent, position, via}]
};

const $ = (id) => document.getElementById(id);

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function clear(node, ...children) { node.replaceChildren(...children.flat(Infinity).filter((c) => c)); return node; }
function show(id, visible = true) { $(id).hidden = !visible; }
function fmt(x, digits = 3) {
  if (x === null || x === undefined) return "–";
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e4)) return x.toExponential(2);
  return x.toFixed(digits);
}
function tokenText(t) { return t.replace(/ /g, "\u00a0").replace(/\n/g, "\u21b5"); }
function saeInfo(name) { return state.info.saes.find((s) => s.name === name); }

async function api(path, body) {
  const options = body === undefined ? {} :
    { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify(body) };
  const response = await fetch(path, options);
  let data = null;
  try { data = await response.json(); } catch (_) { data = null; }
  if (!response.ok) {
    const detail = data && (data.message || (typeof data.detail === "string" ? data.detail : null));
    throw new Error(detail || `${path}: HTTP ${response.status}`);
  }
  return data;
}

function showError(error) {
  const box = $("error");
  if (!error) { box.hidden = true; return; }
  box.textContent = error.message || String(error);
  box.hidden = false;
}

async function guarded(task) {
  try { showError(null); await task(); } catch (error) { showError(error); }
}

// ------------------------------------------------------------------------------------------- colours
function actColour(value, max) {
  const t = max > 0 ? Math.min(1, Math.max(0, value / max)) : 0;
  return `rgba(234, 120, 20, ${(0.08 + 0.72 * t).toFixed(3)})`;
}
function signedColour(value, max) {
  const t = max > 0 ? Math.min(1, Math.abs(value) / max) : 0;
  return value >= 0 ? `rgba(214, 60, 60, ${(0.75 * t).toFixed(3)})` : `rgba(50, 100, 220, ${(0.75 * t).toFixed(3)})`;
}

function bar(value, max, cls = "bar") {
  const width = max > 0 ? Math.min(100, (100 * Math.abs(value)) / max) : 0;
  return el("span", { class: `${cls} ${value < 0 ? "neg" : "pos"}`, style: `width:${width.toFixed(1)}%` });
}

// -------------------------------------------------------------------------------------------- start
async function start() {
  state.info = await api("api/info");
  const info = state.info;
  $("model-info").textContent = `model ${info.model} · ${info.n_layers} layers · d_model ${info.d_model} · ` +
    `${info.n_heads} heads · vocab ${info.d_vocab} · ${info.saes.length} SAE${info.saes.length > 1 ? "s" : ""}`;
  const select = $("sae-select");
  clear(select, info.saes.map((s) => el("option", { value: s.name, text: `${s.name} · ${s.hook}` })));
  state.sae = info.saes[0].name;
  describeSae();
  clear($("examples"), info.example_prompts.map((text, i) =>
    el("button", { class: "chip", title: text, onclick: () => { $("prompt").value = text; run(); } },
      text.split(" ").slice(0, 3).join(" ") + "…")));
  $("prompt").value = info.example_prompts[0] || "";
  $("prompt").maxLength = info.limits.max_prompt_chars;
  select.addEventListener("change", () => { state.sae = select.value; describeSae(); if (state.prompt) run(); });
  $("run").addEventListener("click", run);
  $("prompt").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) run(); });
  $("compare-run").addEventListener("click", () => guarded(compare));
  if (info.graphs.length) {
    const link = $("graphs-link");
    link.textContent = `attribution graphs (${info.graphs.length}) ▸`;
    link.hidden = false;
  }
  await openFromHash();
}

async function openFromHash() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const sae = params.get("sae");
  const latent = Number(params.get("latent"));
  if (!sae || !saeInfo(sae) || !params.has("latent") || !Number.isInteger(latent) || latent < 0) return;
  state.sae = sae;
  $("sae-select").value = sae;
  describeSae();
  if (params.get("prompt")) {
    $("prompt").value = params.get("prompt");
    await run();
  }
  let position = params.has("position") ? Number(params.get("position")) : -1;
  if (state.tokens && Number.isInteger(position) && position >= 0 && position < state.tokens.tokens.length) {
    selectToken(position);
  } else {
    position = -1;
  }
  await selectLatent({ sae, latent, position }, true);
}

function describeSae() {
  const s = saeInfo(state.sae);
  $("sae-meta").textContent = `${s.architecture}, ${s.d_sae} latents, ${s.kind}` +
    (s.dashboard_features ? `, ${s.dashboard_features} precomputed dashboards` : "") +
    (s.upstream.length ? ` · upstream: ${s.upstream.join(", ")}` : "");
}

// ------------------------------------------------------------------------------------------- tokens
async function run() {
  await guarded(async () => {
    const prompt = $("prompt").value;
    $("run").disabled = true;
    try {
      state.tokens = await api("api/tokens", { prompt, sae: state.sae, k: 8 });
    } finally { $("run").disabled = false; }
    state.prompt = prompt;
    state.position = null;
    state.latent = null;
    state.trail = [];
    for (const id of ["latent-card", "dfa-card", "recurse-card", "compare-card"]) show(id, false);
    show("placeholder");
    renderTokens();
    show("token-card", false);
  });
}

function renderTokens() {
  const data = state.tokens;
  const max = data.max_activation;
  clear($("tokens"), data.tokens.map((row) => {
    const top = row.latents[0];
    const span = el("span", {
      class: `tok${row.special ? " special" : ""}${row.position === state.position ? " selected" : ""}`,
      "data-pos": row.position,
      title: top ? `#${row.position} · latent ${top.latent}: ${fmt(top.activation)}` : `#${row.position} · no active latent`,
      onclick: () => selectToken(row.position),
    }, tokenText(row.token));
    if (top) span.style.background = actColour(top.activation, max);
    return span;
  }));
  clear($("prompt-top"), el("span", { class: "muted small" }, "strongest in the prompt: "),
    data.prompt_top.map((l) => latentChip(l.latent, fmt(l.activation, 2), () => {
      const pos = peakPosition(l.latent);
      selectToken(pos);
      selectLatent({ sae: state.sae, latent: l.latent, position: pos }, true);
    })));
  show("tokens-card");
}

function peakPosition(latent) {
  let best = state.tokens.tokens.length - 1, value = -1;
  for (const row of state.tokens.tokens) {
    for (const l of row.latents) if (l.latent === latent && l.activation > value) { value = l.activation; best = row.position; }
  }
  return best;
}

function latentChip(latent, label, onclick) {
  return el("button", { class: "chip latent-link", "data-latent": latent, onclick }, `#${latent}`,
    label ? el("small", {}, ` ${label}`) : null);
}

function selectToken(position) {
  state.position = position;
  for (const node of document.querySelectorAll("#tokens .tok")) {
    node.classList.toggle("selected", Number(node.dataset.pos) === position);
  }
  const row = state.tokens.tokens[position];
  $("token-title").textContent = `Token ${position}: “${row.token}”`;
  const max = Math.max(1e-9, ...row.latents.map((l) => l.activation));
  const table = $("token-latents");
  if (!row.latents.length) {
    clear(table, el("tr", {}, el("td", { class: "muted" },
      row.special ? "special token: SAEs do not read it" : "no latent is active here")));
  } else {
    clear(table, el("tr", {}, el("th", {}, "latent"), el("th", {}, "activation"), el("th", {}, "")),
      row.latents.map((l) => el("tr", { class: "latent-row", "data-latent": l.latent },
        el("td", {}, latentChip(l.latent, null,
          () => selectLatent({ sae: state.sae, latent: l.latent, position }, true))),
        el("td", { class: "num" }, fmt(l.activation)),
        el("td", { class: "barcell" }, bar(l.activation, max)))));
  }
  show("token-card");
}

// ------------------------------------------------------------------------------------------- latent
async function selectLatent(step, resetTrail) {
  await guarded(async () => {
    state.latent = step;
    if (resetTrail) state.trail = [step];
    show("placeholder", false);
    const info = saeInfo(step.sae);
    $("latent-title").textContent = `Latent ${step.latent} · ${step.sae}`;
    clear($("latent-body"), el("p", { class: "muted" }, "loading…"));
    show("latent-card");
    const jobs = [api("api/latent", { sae: step.sae, latent: step.latent }).then(renderDashboard)];
    if (info.kind === "attention" && state.prompt) {
      jobs.push(api("api/dfa", { prompt: state.prompt, sae: step.sae, latent: step.latent, position: step.position, k: 8 })
        .then(renderDFA));
    } else {
      show("dfa-card", false);
    }
    renderTrail();
    jobs.push(compare());
    await Promise.all(jobs);
  });
}

function histogram(hist) {
  if (!hist || !hist.counts.length) return el("p", { class: "muted" }, "never fired in the sample");
  const w = 320, h = 70, n = hist.counts.length, max = Math.max(...hist.counts, 1);
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("viewBox", `0 0 ${w} ${h + 14}`);
  svg.setAttribute("class", "hist");
  hist.counts.forEach((c, i) => {
    const r = document.createElementNS(svg.namespaceURI, "rect");
    const bh = (h * c) / max;
    r.setAttribute("x", ((i * w) / n + 0.5).toFixed(1));
    r.setAttribute("y", (h - bh).toFixed(1));
    r.setAttribute("width", Math.max(1, w / n - 1).toFixed(1));
    r.setAttribute("height", bh.toFixed(1));
    const title = document.createElementNS(svg.namespaceURI, "title");
    title.textContent = `${fmt(hist.edges[i])} – ${fmt(hist.edges[i + 1])}: ${Math.round(c)}`;
    r.append(title);
    svg.append(r);
  });
  for (const [x, anchor, value] of [[0, "start", hist.edges[0]], [w, "end", hist.edges[hist.edges.length - 1]]]) {
    const t = document.createElementNS(svg.namespaceURI, "text");
    t.setAttribute("x", x); t.setAttribute("y", h + 12); t.setAttribute("text-anchor", anchor);
    t.textContent = fmt(value, 2);
    svg.append(t);
  }
  return svg;
}

function example(ex, max) {
  return el("div", { class: "example" }, ex.tokens.map((t, i) => {
    const span = el("span", { class: `tok${i === ex.mark ? " mark" : ""}`, title: fmt(ex.acts[i]) }, tokenText(t));
    if (ex.acts[i] > 0) span.style.background = actColour(ex.acts[i], max);
    return span;
  }));
}

function logitTable(title, rows) {
  const max = Math.max(1e-9, ...rows.map((r) => Math.abs(r.weight)));
  return el("div", { class: "logits" }, el("h3", {}, title), el("table", { class: "grid" },
    rows.map((r) => el("tr", {}, el("td", { class: "tokname" }, tokenText(r.token)),
      el("td", { class: "num" }, fmt(r.weight, 2)), el("td", { class: "barcell" }, bar(r.weight, max))))));
}

function renderDashboard(d) {
  const stats = el("div", { class: "stats" },
    stat("density", `${(100 * d.density).toFixed(3)}%`), stat("max act", fmt(d.max_act)),
    stat("mean act", fmt(d.mean_act)),
    stat("source", d.source === "precomputed" ? `file, ${d.n_tokens.toLocaleString()} tok` :
      `on demand, ${d.n_tokens.toLocaleString()} tok`));
  const parts = [stats, el("div", { class: "two" },
    el("div", {}, el("h3", {}, "activations when firing"), histogram(d.hist)),
    d.head_shares ? el("div", {}, el("h3", {}, "decoder norm by head"), headBars(d.head_shares, "share")) : null)];
  if (d.top_logits.length) {
    parts.push(el("div", { class: "two" }, logitTable("promotes", d.top_logits), logitTable("suppresses", d.bottom_logits)));
  }
  const max = Math.max(1e-9, d.max_act);
  parts.push(el("h3", {}, "top examples"));
  parts.push(d.top_examples.length ? el("div", { class: "examples" }, d.top_examples.map((ex) => example(ex, max)))
    : el("p", { class: "muted" }, "no firing example in the sample"));
  for (const g of d.quantile_groups) {
    parts.push(el("details", { class: "quantile" }, el("summary", {}, g.label),
      el("div", { class: "examples" }, g.examples.map((ex) => example(ex, max)))));
  }
  if (d.neighbors.length) {
    parts.push(el("div", { class: "chips" }, el("span", { class: "muted small" }, "nearest by decoder cosine: "),
      d.neighbors.map((n) => latentChip(n.latent, fmt(n.activation, 2),
        () => selectLatent({ sae: d.sae, latent: n.latent, position: state.latent.position }, true)))));
  }
  clear($("latent-body"), parts);
}

function stat(label, value) {
  return el("div", { class: "stat" }, el("div", { class: "muted small" }, label), el("div", { class: "value" }, value));
}

function headBars(values, label) {
  const layer = saeInfo(state.latent.sae).layer;
  const max = Math.max(1e-9, ...values.map(Math.abs));
  return el("table", { class: "grid heads" }, values.map((v, h) => el("tr", {},
    el("td", { class: "tokname" }, `head ${layer}.${h}`), el("td", { class: "num" }, fmt(v)),
    el("td", { class: "barcell", title: `${label} ${fmt(v)}` }, bar(v, max)))));
}

// ---------------------------------------------------------------------------------------------- DFA
function renderDFA(d) {
  $("dfa-where").textContent = `latent ${d.latent} at token ${d.position} “${d.tokens[d.position]}” · ` +
    `activation ${fmt(d.activation)} (pre-activation ${fmt(d.preactivation)} = Σ heads + bias ${fmt(d.bias)})`;
  const maxSrc = Math.max(1e-9, ...d.by_source_total.map(Math.abs));
  const sources = el("div", { class: "tokens" }, d.tokens.map((t, i) => {
    if (i > d.position) return el("span", { class: "tok after" }, tokenText(t));
    const v = d.by_source_total[i];
    const span = el("span", { class: `tok src${i === d.position ? " dest" : ""}`, "data-src": i, title: `src ${i}: ${fmt(v)}` },
      tokenText(t));
    span.style.background = signedColour(v, maxSrc);
    return span;
  }));
  const maxCell = Math.max(1e-9, ...d.by_source.flat().map(Math.abs));
  const layer = saeInfo(d.sae).layer;
  const heat = el("div", { class: "heat-wrap" }, el("table", { class: "heat" },
    el("tr", {}, el("th", {}, ""), d.tokens.slice(0, d.position + 1).map((t, i) => el("th", { title: `src ${i}` }, tokenText(t)))),
    d.by_source.map((row, h) => el("tr", {}, el("th", {}, `${layer}.${h}`), row.map((v, i) => {
      const cell = el("td", { title: `head ${layer}.${h} ← ${i}: ${fmt(v)}` });
      cell.style.background = signedColour(v, maxCell);
      return cell;
    })))));
  const upstream = d.upstream;
  const picker = upstream.length ? el("select", { id: "upstream-select" }, upstream.map((u) => el("option", { value: u, text: u }))) : null;
  const rows = d.top_sources.map((s) => el("tr", { class: "source-row", "data-src": s.src },
    el("td", { class: "num" }, s.src), el("td", { class: "tokname" }, tokenText(s.token)),
    el("td", { class: "num" }, fmt(s.dfa)), el("td", { class: "barcell" }, bar(s.dfa, maxSrc)),
    el("td", {}, upstream.length ? el("button", { class: "recurse", onclick: () => recurse(d, s.src) }, "recurse ▸") : null)));
  clear($("dfa-body"),
    el("div", { class: "two" },
      el("div", {}, el("h3", {}, "by head"), headBars(d.by_head, "DFA")),
      el("div", {}, el("h3", {}, "by source token"), sources,
        el("p", { class: "muted small" }, "red pushes the latent up, blue down; grey tokens come after it"))),
    el("h3", {}, "head × source"), heat,
    el("h3", {}, "top source tokens ", picker ? el("span", { class: "muted small" }, "upstream SAE ") : null, picker),
    el("table", { class: "grid sources" },
      el("tr", {}, el("th", {}, "src"), el("th", {}, "token"), el("th", {}, "DFA"), el("th", {}, ""), el("th", {}, "")), rows),
    upstream.length ? null : el("p", { class: "muted small" },
      "Load an SAE on this layer's input residual stream or an earlier attention layer to recurse."));
  show("dfa-card");
}

// ---------------------------------------------------------------------------------------- recursion
async function recurse(d, src) {
  await guarded(async () => {
    const upstream = $("upstream-select").value;
    const r = await api("api/recurse", { prompt: state.prompt, sae: d.sae, latent: d.latent, dest: d.position, src, upstream, k: 10 });
    const current = state.trail[state.trail.length - 1];
    current.via = { src, upstream, token: r.src_token };
    renderTrail();
    const max = Math.max(1e-9, ...r.top_upstream_latents.map((u) => Math.abs(u.score)));
    const next = (u) => () => {
      const step = { sae: r.upstream, latent: u.latent, position: r.src };
      state.trail.push(step);
      selectLatent(step, false);
    };
    clear($("recurse-body"),
      el("p", { class: "small" }, `Latent ${r.latent} at “${r.dest_token}” (${r.dest}) reads “${r.src_token}” (${r.src}) ` +
        `with source term ${fmt(r.source_term)}; the ${r.upstream} latents active at ${r.src} that write it:`),
      el("table", { class: "grid upstream" },
        el("tr", {}, el("th", {}, "latent"), el("th", {}, "score"), el("th", {}, "activation"), el("th", {}, "")),
        r.top_upstream_latents.map((u) => el("tr", { class: "upstream-row", "data-latent": u.latent },
          el("td", {}, latentChip(u.latent, null, next(u))), el("td", { class: "num" }, fmt(u.score)),
          el("td", { class: "num" }, fmt(u.activation)), el("td", { class: "barcell" }, bar(u.score, max))))),
      r.top_upstream_latents.length ? null : el("p", { class: "muted" }, "no upstream latent is active there"),
      el("p", { class: "muted small" }, (r.exact_split ?
        `exact split: error ${fmt(r.error_term)}, b_dec ${fmt(r.b_dec_term)}, value bias ${fmt(r.value_bias_term)}. ` :
        `direct path of ${r.upstream} only (no exact total). `) + `Approximation: ${r.approximation}.`));
    show("recurse-card");
  });
}

function renderTrail() {
  const steps = state.trail;
  if (steps.length < 2 && !(steps[0] && steps[0].via)) { show("recurse-card", false); return; }
  clear($("trail"), steps.map((s, i) => [
    i ? el("span", { class: "arrow" }, "←") : null,
    el("button", { class: `crumb${i === steps.length - 1 ? " current" : ""}`,
      onclick: () => { state.trail = steps.slice(0, i + 1); selectLatent(s, false); } },
      `${s.sae} #${s.latent} @${s.position}`),
    s.via ? el("span", { class: "muted small" }, ` via “${s.via.token}” (${s.via.src})`) : null]));
  show("recurse-card");
}

// ------------------------------------------------------------------------------------------ compare
async function compare() {
  if (!state.prompt) return;
  const chosen = state.latent;
  const sae = chosen ? chosen.sae : state.sae;
  const latent = chosen ? chosen.latent : null;
  const steer = Number($("steer").value || 0);
  const r = await api("api/compare", { prompt: state.prompt, sae, latent, steer, position: chosen ? chosen.position : -1, k: 6 });
  $("compare-where").textContent = `after token ${r.position} “${r.token}” · ${sae}` + (latent === null ? "" : ` latent ${latent}`);
  clear($("compare-body"), el("div", { class: "variants" }, r.variants.map((v) => el("div", { class: `variant ${v.name}` },
    el("h3", { title: v.description }, v.name, el("small", { class: "muted" }, ` KL ${fmt(v.kl_from_clean, 4)}`)),
    el("div", { class: "muted small" }, v.description),
    el("table", { class: "grid" }, v.top.map((p) => el("tr", {},
      el("td", { class: "tokname" }, tokenText(p.token)), el("td", { class: "num" }, (100 * p.prob).toFixed(1) + "%"),
      el("td", { class: "barcell" }, bar(p.prob, 1)))))))));
  show("compare-card");
}

window.addEventListener("DOMContentLoaded", () => { if ($("sae-select")) guarded(start); });
