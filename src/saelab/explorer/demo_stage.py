"""The explorer's stage of ``saelab demo``: one walk through the explorer's API on the demo's SAE
(what the page would show for an induction prompt), saved as JSON, plus the command that opens the
explorer on what the demo trained.

    summary = explorer_demo_stage(lm, sae, out_dir, section, small=False, sae_dir=demo_sae_dir,
                                  dashboard=out_dir / "dashboard" / "feature_data.json")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saelab.explorer.service import ExplorerLimits, ExplorerService
from saelab.explorer.toy import train_toy_explorer_saes
from saelab.fileio import atomic_write_json
from saelab.models import LoadedModel
from saelab.report import Section
from saelab.sae import SAE, save_sae

SPAN = "target waters strict reset 38 Kevin at crop"
PROMPT = f"The singer plays a song . {SPAN} {SPAN}"


def explore_command(sae_dirs: list[str], dashboards: list[str] = (), model: str = "toy") -> str:
    """The command line that opens the explorer on ``sae_dirs`` (for the demo and docs to print)."""
    parts = ["saelab", "explore", "--model", model]
    for d in sae_dirs:
        parts += ["--sae", str(d)]
    for d in dashboards:
        parts += ["--dashboard", str(d)]
    return " ".join(parts)


def explorer_demo_stage(lm: LoadedModel, sae: SAE, out_dir: Path, section: Section, small: bool,
                        sae_dir: str | Path | None = None, dashboard: str | Path | None = None) -> dict[str, Any]:
    """Walk the explorer over ``PROMPT`` with ``sae`` (a hook_z SAE of the toy model): latents per token,
    the strongest latent's DFA at the second copy of "waters", one recursive-DFA step into a small
    layer-2 attention SAE trained here (when ``sae`` reads layer 3), and the splice/ablate/steer
    comparison. Writes ``out_dir/explorer/walkthrough.json``; returns a summary with ``command``."""
    out = Path(out_dir) / "explorer"
    if sae_dir is None:
        sae_dir = save_sae(sae, out / "sae")
    saes = {"demo": sae}
    specs = [f"demo={sae_dir}"]
    layer = int(sae.cfg.hook_name.split(".")[1])
    if layer > 0:
        upstream_dir = train_toy_explorer_saes(out / "upstream", small=small, layers=(layer - 1,))[0]
        from saelab.sae import load_sae

        saes[f"L{layer - 1}"] = load_sae(upstream_dir)
        specs.append(f"L{layer - 1}={upstream_dir}")
    dashboards = {}
    if dashboard is not None and Path(dashboard).exists():
        dashboards = {"demo": dashboard}
    service = ExplorerService(lm, saes, ExplorerLimits(dashboard_tokens=1024 if small else 8192), dashboards=dashboards)

    tokens = service.tokens(PROMPT, "demo", k=5)
    position = len(PROMPT.split()) - 6                       # the second "waters" (BOS is token 0)
    row = tokens["tokens"][position]
    latent = row["latents"][0]["latent"] if row["latents"] else tokens["prompt_top"][0]["latent"]
    dfa = service.dfa(PROMPT, "demo", latent, position)
    walk: dict[str, Any] = {"prompt": PROMPT, "position": position, "token": row["token"], "latent": latent,
                            "tokens": tokens, "dfa": dfa, "latent_dashboard": service.latent("demo", latent)}
    top_source = dfa["top_sources"][0]
    if dfa["upstream"]:
        walk["recurse"] = service.recurse(PROMPT, "demo", latent, position, top_source["src"], dfa["upstream"][0])
    walk["compare"] = service.compare(PROMPT, "demo", latent, steer=4.0, position=position)
    atomic_write_json(out / "walkthrough.json", walk)

    command = explore_command(specs, [f"demo={dashboard}"] if dashboards else [])
    heads = dfa["by_head"]
    best_head = max(range(len(heads)), key=lambda h: abs(heads[h]))
    variants = {v["name"]: v for v in walk["compare"]["variants"]}
    section.paragraph(f"The explorer (a local web app) on the prompt {PROMPT!r}: at the second {row['token']!r} "
                      f"(position {position}) the strongest latent is {latent} (activation {dfa['activation']:.3f}); "
                      f"its DFA is largest through head {layer}.{best_head} and from source token "
                      f"{top_source['token']!r} (position {top_source['src']}).")
    rows = [{"run": v["name"], "top next token": v["top"][0]["token"], "prob": round(v["top"][0]["prob"], 4),
             "KL from clean": round(v["kl_from_clean"], 5)} for v in variants.values()]
    section.table(rows)
    section.paragraph(f"Open it on what the demo trained: {command}")
    summary = {"command": command, "prompt": PROMPT, "position": position, "latent": latent,
               "activation": dfa["activation"], "top_source": {"src": top_source["src"], "token": top_source["token"]},
               "best_head": f"{layer}.{best_head}", "compare": rows, "walkthrough": str(out / "walkthrough.json")}
    if "recurse" in walk:
        ups = walk["recurse"]["top_upstream_latents"]
        summary["recurse_top_upstream"] = ups[0] if ups else None
    return summary

