"""``saelab demo``: the main job on the bundled toy world, end to end, in a few minutes on a laptop CPU.

Stages (each timed; all results in ``OUT/summary.json`` and a self-contained ``OUT/index.html``):

1. train a JumpReLU SAE on an attention layer (``hook_z``) of the toy model;
2. evaluate it by splicing it into the model (fidelity, sparsity, CE/KL recovered); then train a TopK
   transcoder that replaces layer 1's MLP (reads ``hook_resid_mid``, predicts ``hook_mlp_out``), spliced
   the same way;
3. a small fidelity–sparsity frontier of several architectures trained from one activation stream;
4. feature recovery against the toy world's planted variables, with neuron and random baselines;
5. feature dashboards for a few dozen latents;
6. attention analyses: head census, induction heads, one direct-feature-attribution view;
7. steering with one latent, and the feature-patching experiment (SAE latents against PCA, ICA, neurons);
8. circuit discovery on toy IOI: discrete SAEs, activation patching, EAP and ACDC, scored by ROC AUC and F1;
9. one prompt walked through the explorer's API, and the command that opens the explorer on the results.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from saelab.errors import check_range
from saelab.fileio import atomic_write_json
from saelab.report import HtmlReport, Section


@dataclass
class DemoConfig:
    """What the demo trains and measures (defaults sized for about 5 minutes on 2 CPU cores)."""

    out: str = "demo_out"
    hook: str = "blocks.3.attn.hook_z"  # the toy model's induction heads (3.1, 3.2) live here
    d_sae: int = 512
    tokens: int = 300_000
    l0_coefficient: float = 0.02
    seed: int = 0
    eval_tokens: int = 20_000
    transcoder_hooks: tuple[str, str] = ("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out")  # MLP 1 in -> out
    transcoder_k: int = 32
    transcoder_tokens: int = 150_000
    frontier_archs: tuple[str, ...] = ("topk", "jumprelu", "relu")
    frontier_points: int = 2
    frontier_tokens: int = 200_000
    dashboard_features: int = 32
    dashboard_tokens: int = 20_000
    small: bool = False  # the later stages at test size (tests/test_demo.py)

    def __post_init__(self) -> None:
        check_range("d_sae", self.d_sae, 1, integer=True)
        check_range("tokens", self.tokens, 4096, integer=True)
        check_range("l0_coefficient", self.l0_coefficient, 0, lo_open=True)
        check_range("seed", self.seed, 0, integer=True)
        check_range("eval_tokens", self.eval_tokens, 256, integer=True)
        check_range("dashboard_features", self.dashboard_features, 1, self.d_sae, integer=True)
        check_range("dashboard_tokens", self.dashboard_tokens, 256, integer=True)
        check_range("frontier_points", self.frontier_points, 1, integer=True)
        check_range("transcoder_k", self.transcoder_k, 1, self.d_sae, integer=True)
        check_range("transcoder_tokens", self.transcoder_tokens, 4096, integer=True)
        check_range("frontier_tokens", self.frontier_tokens, 4096, integer=True)


class Demo:
    """Runs the stages in order, sharing the model and the trained SAE between them."""

    def __init__(self, cfg: DemoConfig, progress: bool = True):
        from saelab.models import load_model

        self.cfg, self.progress = cfg, progress
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.lm = load_model("toy")
        self.sae = None
        self.summary: dict[str, Any] = {"config": asdict(cfg), "timings_s": {}}
        self.report = HtmlReport("saelab demo: the toy world",
                                 f"A {self.lm.n_layers}-layer GPT-2 trained on saelab's synthetic corpus; "
                                 f"SAE on {cfg.hook}.")

    def stage(self, name: str, run: Callable[[Section], dict[str, Any]], title: str) -> None:
        print(f"[demo] {title} ...", flush=True)
        started = time.perf_counter()
        self.summary[name] = run(self.report.section(title))
        seconds = round(time.perf_counter() - started, 2)
        self.summary["timings_s"][name] = seconds
        print(f"[demo] {title}: done in {seconds:.1f} s", flush=True)

    # ------------------------------------------------------------------ stages
    def train(self, section: Section) -> dict[str, Any]:
        from saelab.data.store import TextSpec
        from saelab.train import DataSpec, RunSpec, TrainConfig, train_run

        cfg = self.cfg
        steps = -(-cfg.tokens // 2048)
        train_cfg = TrainConfig(tokens=cfg.tokens, batch_size=2048, lr=1e-3, lr_warmup_steps=steps // 20,
                                lr_decay_steps=steps // 5, sparsity_warmup_steps=steps // 5, seed=cfg.seed,
                                log_every=max(1, steps // 20))
        run_dir = self.out / "train"
        spec = RunSpec.create([{"architecture": "jumprelu", "hook_name": cfg.hook, "d_sae": cfg.d_sae,
                                "name": "jumprelu", "l0_coefficient": cfg.l0_coefficient}], train_cfg, run_dir,
                              data=DataSpec(TextSpec(source=f"toy:{cfg.seed}"), seed=cfg.seed), lm=self.lm)
        spec.save()
        saes = train_run(spec, progress=self.progress, lm=self.lm)
        self.sae = saes["jumprelu"]
        self.sae_dir = run_dir / "saes" / "jumprelu"
        last = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()][-1]
        sae_cfg = spec.saes[0]
        result = {"sae_dir": str(self.sae_dir), "steps": train_cfg.total_steps,
                  "tokens": train_cfg.total_steps * train_cfg.batch_size, "d_in": sae_cfg.d_in,
                  "d_sae": cfg.d_sae, "final_train_l0": last["l0"], "final_train_fvu": last["fvu"],
                  "dead_fraction": last["dead_fraction"]}
        section.paragraph(f"JumpReLU SAE, {cfg.d_sae} latents on {cfg.hook} (d_in {sae_cfg.d_in}), trained on "
                          f"{result['tokens']:,} toy-world tokens; folder {self.sae_dir} (SAELens format).")
        section.table([{"metric": k, "value": v} for k, v in result.items() if k != "sae_dir"])
        return result

    def evaluate(self, section: Section) -> dict[str, Any]:
        from saelab.eval import EvalConfig, evaluate_sae, plot_density_histogram

        result = evaluate_sae(self.lm, self.sae, config=EvalConfig(tokens=self.cfg.eval_tokens,
                                                                   progress=self.progress))
        metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float)) and k not in ("d_in",)}
        keys = ("l0", "mse", "fvu", "cosine", "ce_clean", "ce_spliced", "delta_loss", "ce_loss_recovered", "kl",
                "kl_recovered", "dead_fraction", "dense_fraction", "kl_with_error")
        section.paragraph(f"Spliced into the model at {self.cfg.hook} on {metrics['n_tokens']:,} held-out tokens "
                          "(special tokens masked); CE recovered is against zero-ablation of the hook; "
                          "kl_with_error is the spliced run with the error term added back (0 = clean).")
        section.table([{"metric": k, "value": metrics[k]} for k in keys if k in metrics])
        section.image(plot_density_histogram(result.metrics, self.out / "eval" / "density_histogram.png"),
                      alt="log10 latent density")
        return metrics

    def transcoder(self, section: Section) -> dict[str, Any]:
        from saelab.data.store import TextSpec
        from saelab.eval import EvalConfig, evaluate_sae
        from saelab.train import DataSpec, RunSpec, TrainConfig, train_run

        cfg = self.cfg
        source, target = cfg.transcoder_hooks
        steps = -(-cfg.transcoder_tokens // 1024)
        train_cfg = TrainConfig(tokens=cfg.transcoder_tokens, batch_size=1024, lr=2e-3, lr_decay_steps=steps // 5,
                                seed=cfg.seed, log_every=max(1, steps // 10))
        spec = RunSpec.create([{"architecture": "topk", "hook_name": source, "hook_name_out": target,
                                "d_sae": cfg.d_sae, "k": cfg.transcoder_k, "name": "transcoder"}], train_cfg,
                              self.out / "transcoder",
                              data=DataSpec(TextSpec(source=f"toy:{cfg.seed}"), seed=cfg.seed), lm=self.lm)
        spec.save()
        sae = train_run(spec, progress=self.progress, lm=self.lm)["transcoder"]
        result = evaluate_sae(self.lm, sae, config=EvalConfig(tokens=cfg.eval_tokens // 2, progress=self.progress))
        keys = ("l0", "fvu", "ce_clean", "ce_spliced", "ce_loss_recovered", "kl", "dead_fraction", "kl_with_error")
        metrics = {k: result.metrics[k] for k in keys if k in result.metrics}
        section.paragraph(f"A TopK transcoder (k {cfg.transcoder_k}, {cfg.d_sae} latents) reads {source} and predicts "
                          f"{target}, trained on {train_cfg.total_steps * train_cfg.batch_size:,} tokens; spliced in "
                          f"place of the MLP's output (read {source}, write {target} in one forward). FVU is "
                          f"against the MLP's real output; CE recovered is against zero-ablating {target}.")
        section.table([{"metric": k, "value": v} for k, v in metrics.items()])
        return {"sae_dir": str(self.out / "transcoder" / "saes" / "transcoder"), "source": source,
                "target": target, **metrics}

    def frontier(self, section: Section) -> dict[str, Any]:
        from saelab.eval import EvalConfig, SweepConfig, run_sweep

        cfg = self.cfg
        sweep = run_sweep(self.lm, SweepConfig(
            hook=cfg.hook, archs=cfg.frontier_archs, points=cfg.frontier_points, d_sae=cfg.d_sae,
            train_tokens=cfg.frontier_tokens, seed=cfg.seed, progress=self.progress,
            eval=EvalConfig(tokens=cfg.eval_tokens // 2, check_error_term=False, progress=self.progress)),
            self.out / "frontier")
        section.paragraph(f"{len(sweep['rows'])} SAEs ({', '.join(cfg.frontier_archs)} at {cfg.frontier_points} "
                          f"sparsity settings each) trained together from one activation stream of "
                          f"{cfg.frontier_tokens:,} tokens, then evaluated on held-out tokens.")
        columns = ["architecture", "sparsity_field", "sparsity_value", "l0", "fvu", "delta_loss",
                   "ce_loss_recovered", "dead_fraction"]
        section.table(sweep["rows"], columns)
        for path in sweep["files"].values():
            if str(path).endswith(".png"):
                section.image(Path(path), alt=Path(path).stem)
        return {"rows": [{c: row.get(c) for c in columns} for row in sweep["rows"]],
                "matched_l0": sweep.get("matched_l0"), "files": {k: str(v) for k, v in sweep["files"].items()}}

    def recovery(self, section: Section) -> dict[str, Any]:
        from saelab.eval import RecoveryConfig, feature_recovery

        report = feature_recovery(self.lm, self.sae, RecoveryConfig(tokens=self.cfg.eval_tokens,
                                                                    progress=self.progress))
        atomic_write_json(self.out / "recovery.json", report)
        section.paragraph("For each variable planted in the toy world (topics, syntactic roles, induction-"
                          "predictable tokens, task positions), the single unit with the best F1 over held-out "
                          f"tokens; a variable counts as recovered at F1 >= {report['f1_threshold']}. Baselines: "
                          "the model's MLP neurons and random directions.")
        sets = report["unit_sets"]
        section.table([{"units": s["name"], "n": s["n_units"], "recovered": f"{s['recovered']}/{s['n_variables']}",
                        "mean best F1": s["mean_best_f1"], "threshold rule": s["threshold_rule"]} for s in sets])
        sae_set = next(s for s in sets if s["kind"] == "sae")
        section.table([{"variable": v["variable"], "latent": best["unit"], "precision": best["precision"],
                        "recall": best["recall"], "F1": best["f1"]}
                       for v, best in zip(report["variables"], sae_set["per_variable"], strict=True)])
        return {s["name"]: {"recovered": s["recovered"], "n_variables": s["n_variables"],
                            "mean_best_f1": s["mean_best_f1"]} for s in sets}

    def dashboards(self, section: Section) -> dict[str, Any]:
        from saelab.data.sources import ToySource
        from saelab.interp import FeatureDataConfig, build_feature_data, write_dashboard

        cfg = self.cfg
        data = build_feature_data(self.lm, self.sae, cfg.hook, ToySource(seed=cfg.seed + 1),
                                  list(range(cfg.dashboard_features)),
                                  FeatureDataConfig(n_tokens=cfg.dashboard_tokens, progress=self.progress))
        paths = write_dashboard(data, self.out / "dashboard", title=f"toy {cfg.hook} JumpReLU features")
        href = paths["dashboard"].relative_to(self.out).as_posix()
        section.paragraph(f"Dashboards for latents 0–{cfg.dashboard_features - 1}: top examples, activation "
                          "quantiles, logit effects through W_O and the unembedding, nearest latents.")
        section.link(href, "Open the feature dashboards")
        live = [f for f in data.features if f.n_fires > 0]
        section.table([{"latent": f.index, "density": f.density, "max_act": f.max_act,
                        "top_tokens": ", ".join(ex.tokens[ex.mark] for ex in f.top_examples[:3])} for f in live[:12]])
        return {"dashboard": str(paths["dashboard"]), "features": len(data.features), "live_features": len(live)}

    def attention(self, section: Section) -> dict[str, Any]:
        from saelab.attention.geometry import bind_attention_sae
        from saelab.attention.reports import build_census_report, build_dfa_report, build_induction_report
        from saelab.attention.views import write_census, write_dfa, write_induction

        out = self.out / "attention"
        asae = bind_attention_sae(self.lm, self.sae, self.cfg.hook)
        census = build_census_report(asae, "toy", n_windows=16)
        induction = build_induction_report(self.lm, n_seqs=16, ablate=False)
        summary = census["summary"]
        verdicts = []
        for name, what in (("roles", "by role (top-context overlap)"), ("families", "by planted family")):
            poly = summary["polysemantic"][name]
            verdicts.append(f"{what}, {poly['n_polysemantic']} of {poly['n_heads_judged']} judged heads are "
                            f"polysemantic (95% interval {poly['interval']})" if poly["share"] is not None
                            else f"{what}, no head could be judged")
        section.paragraph(f"Head census of the SAE's {summary['n_latents']} latents (top latents per head by "
                          f"decoder-norm share): {'; '.join(verdicts)}.")
        section.table([{"family": k, "latents": v} for k, v in summary["family_counts"].items()])
        section.paragraph("Induction heads (attention from the second copy of a repeated random sequence to the "
                          "token after the first copy):")
        section.table(induction["induction_heads"])
        paths = write_census(census, out) + write_induction(induction, out)
        dfa = self._dfa_example(asae, census, build_dfa_report)
        paths += write_dfa(dfa, out)
        section.paragraph(f"Direct feature attribution of latent {dfa['feature']} at token "
                          f"{dfa['tokens'][dfa['position']]!r} (position {dfa['position']}), by head and by "
                          "source token:")
        for path in paths:
            if Path(path).suffix == ".png":
                section.image(Path(path), alt=Path(path).stem)
        atomic_write_json(out / "census.json", census)
        atomic_write_json(out / "induction.json", induction)
        return {"family_counts": summary["family_counts"],
                "polysemantic_share": {k: v["share"] for k, v in summary["polysemantic"].items()},
                "induction_heads": induction["induction_heads"],
                "dfa": {"feature": dfa["feature"], "position": dfa["position"],
                        "token": dfa["tokens"][dfa["position"]]}}

    def causal(self, section: Section) -> dict[str, Any]:
        from saelab.causal import causal_demo_stage

        return causal_demo_stage(self.lm, self.sae, self.out / "causal", section, small=self.cfg.small,
                                 sae_dir=self.sae_dir)

    def circuits(self, section: Section) -> dict[str, Any]:
        from saelab.circuits import circuits_demo_stage

        return circuits_demo_stage(self.lm, self.sae, self.out, section, small=self.cfg.small)

    def explorer(self, section: Section) -> dict[str, Any]:
        from saelab.explorer.demo_stage import explorer_demo_stage

        return explorer_demo_stage(self.lm, self.sae, self.out, section, small=self.cfg.small, sae_dir=self.sae_dir,
                                   dashboard=self.out / "dashboard" / "feature_data.json")

    def _dfa_example(self, asae, census: dict, build_dfa_report) -> dict:
        """DFA on a repeated random span at the second "waters" (induction predicts "strict" next), of the
        census's strongest induction latent if it has one, else of the latent most active there."""
        span = "target waters strict reset 38 Kevin at crop"
        prompt = f"The singer plays a song . {span} {span}"
        position = len(prompt.split()) - 6  # in model tokens: BOS first, so this is the second "waters"
        induction = [e for head in census["heads"] for e in head["latents"] if e.get("family") == "induction"]
        if induction:
            latent = max(induction, key=lambda e: e["head_attribution"])["latent"]
        else:
            ids, _ = self.lm.tokenize([prompt])
            _, cache = self.lm.run_with_cache(ids, [self.cfg.hook], stop_at_layer="auto")
            z = cache[self.cfg.hook][0, position].reshape(-1)
            latent = int(self.sae.encode(z).argmax())
        return build_dfa_report(asae, prompt, feature=latent, position=position)

    def run(self) -> dict[str, Any]:
        started = time.perf_counter()
        self.stage("train", self.train, "1. Training a JumpReLU SAE on attention outputs")
        self.stage("evaluate", self.evaluate, "2. Fidelity and sparsity by splicing")
        self.stage("transcoder", self.transcoder, "2b. A transcoder: the MLP of layer 1 replaced by sparse latents")
        self.stage("frontier", self.frontier, "3. A small fidelity–sparsity frontier")
        self.stage("recovery", self.recovery, "4. Feature recovery against planted variables")
        self.stage("dashboards", self.dashboards, "5. Feature dashboards")
        self.stage("attention", self.attention, "6. Attention heads through the SAE")
        self.stage("causal", self.causal, "7. Causal interventions: steering and feature patching")
        self.stage("circuits", self.circuits, "8. Circuit discovery: discrete SAEs against patching, EAP and ACDC")
        self.stage("explorer", self.explorer, "9. The explorer: one prompt through the SAE")
        self.summary["total_seconds"] = round(time.perf_counter() - started, 2)
        atomic_write_json(self.out / "summary.json", self.summary)
        self.report.write(self.out / "index.html")
        return self.summary
