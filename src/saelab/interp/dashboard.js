"use strict";
(function () {
  const DATA = JSON.parse(document.getElementById("saelab-data").textContent);
  const META = DATA.meta, FEATURES = DATA.features;
  const BY_INDEX = new Map(FEATURES.map((f) => [f.index, f]));
  const PAGE = 200;
  const indexView = document.getElementById("index-view");
  const featureView = document.getElementById("feature-view");
  let shown = PAGE, filtered = FEATURES.slice();

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const c of children) if (c != null) node.append(c);
    return node;
  }
  const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toPrecision(d));
  const pct = (x) => (100 * x).toPrecision(3) + "%";
  const topToken = (f) => (f.top_examples.length ? f.top_examples[0].tokens[f.top_examples[0].mark] : "");
  const featureLink = (i, label) => el("a", { href: "#feature-" + i, class: "flink", text: label || "#" + i });

  document.getElementById("summary").textContent =
    `${FEATURES.length} features of ${META.d_sae} · ${META.architecture} SAE on ${META.hook} · ` +
    `${META.n_tokens.toLocaleString()} tokens`;

  // ------------------------------------------------------------------ index
  const search = el("input", { type: "search", id: "search", placeholder: "search index or token…" });
  const sort = el("select", { id: "sort" },
    el("option", { value: "index", text: "sort: index" }),
    el("option", { value: "density-desc", text: "sort: density (high first)" }),
    el("option", { value: "density-asc", text: "sort: density (low first)" }),
    el("option", { value: "max-desc", text: "sort: max activation" }));
  const tbody = el("tbody", { id: "index-rows" });
  const more = el("button", { id: "more", text: "show more" });
  indexView.append(el("div", { class: "controls" }, search, sort, el("span", { id: "count", class: "muted" })),
    el("table", { id: "index-table" }, el("thead", {}, el("tr", {}, el("th", { text: "feature" }),
      el("th", { text: "density" }), el("th", { text: "max act" }), el("th", { text: "top token" }),
      el("th", { text: "top logits" }))), tbody), more);

  function applyFilter() {
    const q = search.value.trim().toLowerCase();
    filtered = FEATURES.filter((f) => !q || String(f.index) === q ||
      topToken(f).toLowerCase().includes(q) ||
      (f.logits && f.logits.top.some((t) => String(t[0]).toLowerCase().includes(q))));
    const key = sort.value;
    const cmp = {
      "index": (a, b) => a.index - b.index,
      "density-desc": (a, b) => b.density - a.density,
      "density-asc": (a, b) => a.density - b.density,
      "max-desc": (a, b) => b.max_act - a.max_act,
    }[key];
    filtered.sort(cmp);
    shown = PAGE;
    renderRows();
  }
  function renderRows() {
    tbody.replaceChildren();
    for (const f of filtered.slice(0, shown)) {
      tbody.append(el("tr", { class: "index-row", "data-index": f.index },
        el("td", {}, featureLink(f.index)), el("td", { class: "num", text: pct(f.density) }),
        el("td", { class: "num", text: fmt(f.max_act) }), el("td", { text: JSON.stringify(topToken(f)) }),
        el("td", { text: f.logits ? f.logits.top.slice(0, 5).map((t) => t[0]).join(" · ") : "–" })));
    }
    document.getElementById("count").textContent = `${Math.min(shown, filtered.length)} of ${filtered.length} shown`;
    more.hidden = shown >= filtered.length;
  }
  search.addEventListener("input", applyFilter);
  sort.addEventListener("change", applyFilter);
  more.addEventListener("click", () => { shown += PAGE; renderRows(); });

  // ------------------------------------------------------------------ feature page
  function histogram(edges, counts, { width = 320, height = 90, signed = false } = {}) {
    const ns = "http://www.w3.org/2000/svg";
    const svg = document.createElementNS(ns, "svg");
    svg.setAttribute("width", width); svg.setAttribute("height", height + 16);
    if (!counts.length) return svg;
    const peak = Math.max(...counts, 1e-9), w = width / counts.length;
    counts.forEach((c, i) => {
      const r = document.createElementNS(ns, "rect");
      const h = (c / peak) * height;
      r.setAttribute("x", i * w); r.setAttribute("y", height - h);
      r.setAttribute("width", Math.max(w - 1, 1)); r.setAttribute("height", h);
      r.setAttribute("class", signed && edges[i + 1] <= 0 ? "bar neg" : "bar");
      const t = document.createElementNS(ns, "title");
      t.textContent = `${fmt(edges[i])} – ${fmt(edges[i + 1])}: ${fmt(c)}`;
      r.append(t); svg.append(r);
    });
    for (const [x, v, anchor] of [[0, edges[0], "start"], [width, edges[edges.length - 1], "end"]]) {
      const t = document.createElementNS(ns, "text");
      t.setAttribute("x", x); t.setAttribute("y", height + 13); t.setAttribute("font-size", "11");
      t.setAttribute("text-anchor", anchor); t.textContent = fmt(v); svg.append(t);
    }
    return svg;
  }
  function exampleRow(ex, maxAct) {
    const line = el("div", { class: "example" }, el("span", { class: "act", text: fmt(ex.act) }));
    ex.tokens.forEach((tok, i) => {
      const a = ex.acts[i], alpha = maxAct > 0 ? Math.min(1, Math.max(0, a / maxAct)) : 0;
      const span = el("span", { class: "tok" + (i === ex.mark ? " mark" : ""), title: `${JSON.stringify(tok)} · act ${fmt(a, 4)}`,
        text: tok + " " });
      if (alpha > 0) span.style.background = `rgba(232,131,58,${(0.15 + 0.85 * alpha).toFixed(3)})`;
      line.append(span);
    });
    return line;
  }
  function logitTable(rows, cls) {
    return el("table", {}, el("tbody", {}, ...rows.map((r) => el("tr", {},
      el("td", { text: JSON.stringify(r[0]) }), el("td", { class: "num " + cls, text: fmt(r[1]) })))));
  }
  function neighborList(rows, label) {
    return el("table", {}, el("thead", {}, el("tr", {}, el("th", { text: "latent" }), el("th", { text: label }))),
      el("tbody", {}, ...rows.map((r) => el("tr", {}, el("td", {},
        BY_INDEX.has(r[0]) ? featureLink(r[0]) : document.createTextNode("#" + r[0])),
        el("td", { class: "num", text: fmt(r[1]) })))));
  }
  function renderFeature(f) {
    const cards = [];
    cards.push(el("div", { class: "card" }, el("h3", { text: "Activations (non-zero)" }),
      el("p", { text: `density ${pct(f.density)} · ${f.n_fires} firings · max ${fmt(f.max_act)} · mean ${fmt(f.mean_act)}` }),
      histogram(f.hist.edges, f.hist.counts)));
    if (f.logits) {
      cards.push(el("div", { class: "card" }, el("h3", { text: "Logit effects" }),
        el("div", { class: "grid" }, el("div", {}, el("b", { text: "promoted" }), logitTable(f.logits.top, "pos")),
          el("div", {}, el("b", { text: "suppressed" }), logitTable(f.logits.bottom, "neg"))),
        histogram(f.logits.hist.edges, f.logits.hist.counts, { signed: true })));
    } else {
      cards.push(el("div", { class: "card" }, el("h3", { text: "Logit effects" }),
        el("p", { class: "muted", text: "not available for this hook (no linear path to the logits)" })));
    }
    const near = el("div", { class: "card" }, el("h3", { text: "Nearest latents" }),
      el("div", { class: "grid" }, neighborList(f.neighbors_cosine, "decoder cos"),
        f.neighbors_correlation.length ? neighborList(f.neighbors_correlation, "act. corr.") : null));
    if (f.head_shares) near.append(el("p", { text: "decoder norm per head: " + f.head_shares.map((s, h) => `h${h} ${pct(s)}`).join(" · ") }));
    cards.push(near);
    const examples = el("div", { class: "card", id: "examples" }, el("h3", { text: `Top ${f.top_examples.length} examples` }));
    if (!f.top_examples.length) examples.append(el("p", { class: "muted", text: "this latent never fired on the token budget" }));
    for (const ex of f.top_examples) examples.append(exampleRow(ex, f.max_act));
    for (const g of f.quantile_groups) {
      const body = el("div", {});
      const det = el("details", { class: "quantile" }, el("summary", { text: `${g.label}: ${fmt(g.lo)} – ${fmt(g.hi)}` }), body);
      det.addEventListener("toggle", () => {
        if (det.open && !body.childElementCount) for (const ex of g.examples) body.append(exampleRow(ex, f.max_act));
      });
      examples.append(det);
    }
    featureView.replaceChildren(el("p", {}, el("a", { href: "#", id: "back", text: "← all features" })),
      el("h2", { id: "feature-title", text: `Feature ${f.index}` }), el("div", { class: "grid" }, ...cards), examples);
  }

  function route() {
    const m = /^#feature-(\d+)$/.exec(location.hash);
    const f = m ? BY_INDEX.get(Number(m[1])) : null;
    if (f) {
      renderFeature(f);
      indexView.hidden = true; featureView.hidden = false; window.scrollTo(0, 0);
    } else {
      featureView.hidden = true; featureView.replaceChildren(); indexView.hidden = false;
    }
  }
  window.addEventListener("hashchange", route);
  applyFilter();
  route();
})();
