"""PNG and HTML views of the attention reports (``saelab.attention.reports``); files written atomically.

    write_census(report, out_dir)     -> [census.png, census.html, census.json]
    write_dfa(report, out_dir)        -> [dfa.png, dfa.html, dfa.json]
    write_induction(report, out_dir)  -> [induction.png, prefix.png, induction.json]
    write_ioi(report, out_dir)        -> [ioi.png, ioi.json]
"""

from __future__ import annotations

import html
from pathlib import Path

import numpy as np

from saelab.fileio import atomic_write_bytes, atomic_write_json
from saelab.plotting import pyplot, save_png


def _page(title: str, body: str) -> bytes:
    style = ("body{font-family:sans-serif;margin:1.5em}table{border-collapse:collapse}"
             "td,th{border:1px solid #ccc;padding:3px 6px;font-size:13px}span.t{padding:1px 2px}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>").encode()


def _tokens_html(tokens: list[str], values: list[float]) -> str:
    top = max([abs(v) for v in values] + [1e-12])
    spans = []
    for tok, v in zip(tokens, values, strict=True):
        alpha = min(1.0, abs(v) / top)
        color = f"rgba(220,60,40,{alpha:.2f})" if v >= 0 else f"rgba(40,90,220,{alpha:.2f})"
        spans.append(f"<span class='t' style='background:{color}' title='{v:.4g}'>{html.escape(tok)}</span>")
    return " ".join(spans)


def write_census(report: dict, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    plt = pyplot()
    heads = report["heads"]
    families = sorted({e.get("family", "n/a") for h in heads for e in h["latents"]})
    counts = np.array([[sum(1 for e in h["latents"] if e.get("family", "n/a") == f) for f in families] for h in heads])
    fig, (ax, hist_ax) = plt.subplots(1, 2, figsize=(4.5 + 0.9 * len(families), 1.5 + 0.45 * len(heads)),
                                      gridspec_kw={"width_ratios": [1.2 + 0.9 * len(families), 3.5]})
    ax.imshow(counts, cmap="Blues", aspect="auto")
    ax.set_xticks(range(len(families)), families, rotation=30, ha="right")
    ax.set_yticks(range(len(heads)), [h["head"] for h in heads])
    for i in range(len(heads)):
        for j in range(len(families)):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=8)
    ax.set_title("top latents per head by family")
    hist = report["summary"].get("head_concentration", {}).get("max_share_histogram")
    if hist:
        edges = hist["edges"]
        hist_ax.bar(edges[:-1], hist["counts"], width=np.diff(edges), align="edge", color="#4a78b5")
        hist_ax.set_xlabel("largest head attribution of a live latent")
        hist_ax.set_ylabel("latents")
    hist_ax.set_title("head concentration")
    fig.tight_layout()
    paths = [save_png(fig, out / "census.png", dpi=110)]
    rows = []
    for h in heads:
        for e in h["latents"]:
            example = e["examples"][0] if e["examples"] else None
            context = " ".join(example["context"]) if example else ""
            logits = ", ".join(t for t, _ in e["top_logits"])
            rows.append(f"<tr><td>{h['head']}</td><td>{e['latent']}</td><td>{e['head_attribution']:.3f}</td>"
                        f"<td>{html.escape(str(e.get('family', '')))} {html.escape(str(e.get('family_value', '')))}</td>"
                        f"<td>{html.escape(context)}</td><td>{html.escape(logits)}</td></tr>")
    body = (f"<pre>{html.escape(str(report['summary']))}</pre><table><tr><th>head</th><th>latent</th><th>h</th>"
            "<th>family</th><th>top example</th><th>top logits</th></tr>" + "".join(rows) + "</table>")
    atomic_write_bytes(out / "census.html", _page(f"Head census {report['hook']}", body))
    atomic_write_json(out / "census.json", report)
    return [*paths, out / "census.html", out / "census.json"]


def write_dfa(report: dict, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    plt = pyplot()
    by_source_head = np.array(report["by_source_head"])  # [n_heads, src]
    tokens = report["tokens"]
    fig, axes = plt.subplots(1, 2, figsize=(max(6, 0.35 * len(tokens) + 3), 3.2),
                             gridspec_kw={"width_ratios": [4, 1]})
    lim = float(np.abs(by_source_head).max()) or 1.0
    axes[0].imshow(by_source_head, cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto")
    axes[0].set_xticks(range(len(tokens)), tokens, rotation=60, ha="right", fontsize=7)
    axes[0].set_yticks(range(by_source_head.shape[0]))
    axes[0].set_ylabel("head")
    axes[0].set_title(f"DFA of latent {report['feature']} at '{report['token']}' by source")
    heads = list(report["by_head"])
    axes[1].barh(range(len(heads)), [report["by_head"][h] for h in heads])
    axes[1].set_yticks(range(len(heads)), heads)
    axes[1].invert_yaxis()
    axes[1].set_title("by head")
    paths = [save_png(fig, out / "dfa.png", dpi=110)]
    totals = by_source_head.sum(0).tolist()
    body = (f"<p>pre-activation {report['preactivation']:.4g} = Σ sources {sum(totals):.4g} + bias "
            f"{report['bias']:.4g} + b_dec term {report['b_dec_term']:.4g}</p><p>{_tokens_html(tokens, totals)}</p>")
    if "recursive" in report:
        body += f"<h2>recursive DFA</h2><pre>{html.escape(str(report['recursive']))}</pre>"
    atomic_write_bytes(out / "dfa.html", _page(f"DFA latent {report['feature']}", body))
    atomic_write_json(out / "dfa.json", report)
    return [*paths, out / "dfa.html", out / "dfa.json"]


def _grid(keys: list[str]) -> tuple[int, int]:
    layers = sorted({int(k.split(".")[0]) for k in keys})
    heads = sorted({int(k.split(".")[1]) for k in keys})
    return len(layers), len(heads)


def write_induction(report: dict, out_dir: str | Path) -> list[Path]:
    out = Path(out_dir)
    plt = pyplot()
    scores = report["induction_scores"]
    n_layers, n_heads = _grid(list(scores))
    grid = np.array([[scores[f"{L}.{h}"] for h in range(n_heads)] for L in range(n_layers)])
    fig, ax = plt.subplots(figsize=(1 + 0.6 * n_heads, 1 + 0.45 * n_layers))
    im = ax.imshow(grid, cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title("induction score")
    fig.colorbar(im)
    paths = [save_png(fig, out / "induction.png", dpi=110)]
    prefix = report["prefix"]
    fig, axes = plt.subplots(n_layers, n_heads, figsize=(1.9 * n_heads + 1, 1.5 * n_layers + 1), sharex=True,
                             sharey=True, squeeze=False, layout="constrained")
    for L in range(n_layers):  # noqa: N806
        for h in range(n_heads):
            key = f"{L}.{h}"
            color = "C3" if key in prefix["long_prefix"] else ("C2" if key in prefix["short_prefix"] else "C7")
            axes[L][h].plot(prefix["prefix_lengths"], prefix["scores"][key], color=color)
            axes[L][h].set_title(key, fontsize=7)
            axes[L][h].set_ylim(0, 1)
    fig.supxlabel("prefix length")
    fig.suptitle("attention to the token after the earlier prefix\n(red: needs a long prefix, green: a short one)")
    paths.append(save_png(fig, out / "prefix.png", dpi=110))
    atomic_write_json(out / "induction.json", report)
    return [*paths, out / "induction.json"]


def write_ioi(report: dict, out_dir: str | Path, top: int = 20) -> list[Path]:
    out = Path(out_dir)
    plt = pyplot()
    latents = report["latents"][:top]
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(latents) + 2), 3))
    x = np.arange(len(latents))
    for offset, variant in ((-0.2, "ABBA"), (0.2, "BABA")):
        values = [e["delta_logit_diff"][variant] or 0.0 for e in latents]
        ax.bar(x + offset, values, width=0.4, label=variant)
    ax.set_xticks(x, [str(e["latent"]) + ("*" if e["positional"] else "") for e in latents], rotation=60)
    ax.set_ylabel("Δ logit diff when ablated at S2")
    ax.set_title("IOI: latents active at S2 (* positional)")
    ax.legend()
    paths = [save_png(fig, out / "ioi.png", dpi=110)]
    atomic_write_json(out / "ioi.json", report)
    return [*paths, out / "ioi.json"]
