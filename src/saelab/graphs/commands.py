"""``saelab graph``: attribution graphs of prompts through per-layer MLP transcoders.

::

    saelab graph --model toy --transcoders runs/graphs/toy_transcoders \\
        --prompt "When Mary and John went to the store , John gave a book to" --out runs/graphs/ioi
    saelab graph train-transcoders --model toy --out runs/graphs/toy_transcoders --tokens 1000000
    saelab graph intervene --graph runs/graphs/ioi --nodes feature:3:14:101 --scale 0
    saelab graph toy-check --transcoders runs/graphs/toy_transcoders --out runs/graphs/toy_check

``saelab graph`` writes ``OUT/graph.json`` (schema: ``saelab.graphs.graph_json``) and ``OUT/graph.png`` and
prints the graph's replacement and completeness scores, its size and its strongest paths.
``train-transcoders`` trains one transcoder per MLP (from one forward pass per batch, through the
ordinary training run: ``run.json``, metrics, checkpoints, ``--resume``). ``intervene`` scales feature nodes
in the real model and compares the logit changes with the graph's prediction. ``toy-check`` traces one
IOI, induction and greater-than prompt on the toy model and scores the heads carrying each graph's
edges against the toy reference circuits.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from saelab.cli_args import (
    add_model_arguments,
    add_source_arguments,
    add_threads_argument,
    apply_threads,
    emit,
    model_from_args,
    text_spec_from_args,
)
from saelab.errors import ConfigError
from saelab.fileio import check_output_folder

DTYPES = ("float32", "float64")


def register(subparsers) -> None:
    from saelab.graphs.attribution import GraphConfig
    from saelab.graphs.prune import EDGE_THRESHOLD, NODE_THRESHOLD

    p = subparsers.add_parser("graph", help="attribution graphs: trace a prompt through transcoder features",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, required=False)
    p.add_argument("--transcoders", nargs="+", default=None, metavar="DIR",
                   help="transcoder folders: SAE folders, a train-transcoders run, or folders of SAE folders")
    p.add_argument("--prompt", default=None, help="the text to trace (BOS is prepended when the tokenizer has one)")
    p.add_argument("--out", default=None, help="folder for graph.json and graph.png")
    defaults = GraphConfig()
    p.add_argument("--node-threshold", type=float, default=NODE_THRESHOLD,
                   help=f"share of influence the kept nodes hold (default {NODE_THRESHOLD})")
    p.add_argument("--edge-threshold", type=float, default=EDGE_THRESHOLD,
                   help=f"share of edge score the kept edges hold (default {EDGE_THRESHOLD})")
    p.add_argument("--max-logits", type=int, default=defaults.max_logits,
                   help=f"at most this many logit nodes (default {defaults.max_logits})")
    p.add_argument("--prob-mass", type=float, default=defaults.prob_mass,
                   help=f"logit nodes until their probabilities sum to this (default {defaults.prob_mass})")
    p.add_argument("--max-feature-nodes", type=int, default=defaults.max_feature_nodes,
                   help=f"at most this many feature nodes, by influence (default {defaults.max_feature_nodes}; 0: all)")
    p.add_argument("--batch-size", type=int, default=defaults.batch_size,
                   help=f"attribution targets per backward pass (default {defaults.batch_size})")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="dtype of the replacement model")
    p.add_argument("--labels", action="append", default=None, metavar="LAYER=DIR",
                   help="feature labels of one block from a dashboard or autointerp folder (repeat per block)")
    p.add_argument("--heads", action="store_true",
                   help="also score the attention heads carrying the pruned edges (metadata 'heads')")
    p.add_argument("--top-paths", type=int, default=5, help="strongest paths to report (default 5)")
    add_threads_argument(p)
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.set_defaults(func=run_graph)
    sub = p.add_subparsers(dest="graph_command", metavar="SUBCOMMAND")
    _register_train(sub)
    _register_intervene(sub)
    _register_toy_check(sub)


def _register_train(sub) -> None:
    from saelab.graphs.transcoders import DEFAULT_INPUT_KIND, INPUT_KINDS

    t = sub.add_parser("train-transcoders", help="train one transcoder per MLP layer",
                       description="Train one transcoder per MLP of the model in one run (one forward pass per "
                                   "batch feeds them all); the folders land in OUT/saes/mlpL-transcoder.")
    add_model_arguments(t, required=False)
    add_source_arguments(t)
    t.add_argument("--out", required=True, help="run folder (run.json, metrics, checkpoints, saes/)")
    t.add_argument("--tokens", type=int, default=1_000_000, help="training tokens (default 1,000,000)")
    t.add_argument("--arch", default="topk", help="architecture (default topk)")
    t.add_argument("--k", type=int, default=32, help="active latents per token of topk-style architectures (default 32)")
    t.add_argument("--d-sae", type=int, default=None, help="latents per transcoder (default 8 x d_model)")
    t.add_argument("--input", choices=INPUT_KINDS, default=DEFAULT_INPUT_KIND,
                   help=f"the MLP input the transcoders read (default {DEFAULT_INPUT_KIND}: the MLP norm's output)")
    t.add_argument("--skip", action="store_true", help="skip transcoders (a linear skip term x @ W_skip)")
    t.add_argument("--batch-size", type=int, default=4096, help="tokens per training step (default 4096)")
    t.add_argument("--lr", type=float, default=None, help="learning rate (default 3e-4)")
    t.add_argument("--seed", type=int, default=0, help="seed of init and data order")
    t.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (0: at the end)")
    t.add_argument("--resume", action="store_true", help="continue the interrupted run in --out")
    t.add_argument("--no-progress", dest="progress", action="store_false", help="hide the progress bar")
    add_threads_argument(t)
    t.add_argument("--json", action="store_true", help="print the summary as JSON")
    t.set_defaults(func=run_train_transcoders)


def _register_intervene(sub) -> None:
    i = sub.add_parser("intervene", help="scale graph feature nodes in the real model; compare with the graph",
                       description="Scale feature nodes of a graph (0: ablate, 2: double) at their MLP output in the "
                                   "real model and compare each logit node's change with the graph's prediction. "
                                   "The model and transcoders recorded in graph.json are reloaded unless given.")
    i.add_argument("--graph", required=True, help="graph.json (or its folder) written by `saelab graph`")
    i.add_argument("--nodes", required=True, help="comma-separated feature node ids (feature:LAYER:POS:INDEX)")
    i.add_argument("--scale", type=float, default=0.0, help="factor on the features' activations (default 0)")
    i.add_argument("--model", default=None, help="the model (default: the one recorded in the graph)")
    i.add_argument("--transcoders", nargs="+", default=None, metavar="DIR", help="default: the recorded folders")
    i.add_argument("--model-dtype", default="float32", help="dtype the model runs in")
    i.add_argument("--device", default="cpu", help="device the model runs on")
    add_threads_argument(i)
    i.add_argument("--json", action="store_true", help="print the result as JSON")
    i.set_defaults(func=run_intervene)


def _register_toy_check(sub) -> None:
    c = sub.add_parser("toy-check", help="graphs of toy IOI, induction and greater-than prompts vs reference circuits",
                       description="Trace one IOI, one induction and one greater-than prompt on the toy model and score "
                                   "the heads carrying each pruned graph's edges against the toy reference circuits.")
    c.add_argument("--transcoders", nargs="+", required=True, metavar="DIR", help="the toy model's transcoders")
    c.add_argument("--out", default=None, help="also write each task's graph.json and graph.png under OUT/TASK")
    c.add_argument("--seed", type=int, default=0, help="seed of the prompts (default 0)")
    add_threads_argument(c)
    c.add_argument("--json", action="store_true", help="print the report as JSON")
    c.set_defaults(func=run_toy_check)


# ----------------------------------------------------------------------------------------- graph
def _dtype(name: str):
    import torch

    return {"float32": torch.float32, "float64": torch.float64}[name]


def _path_text(document: dict[str, Any], path: dict[str, Any]) -> str:
    nodes = {n["id"]: n for n in document["nodes"]}

    def name(node_id: str) -> str:
        node = nodes[node_id]
        if node["kind"] == "logit":
            return f"logit {node['token']!r}"
        where = f"{node['token']!r}@{node['position']}"
        if node["kind"] == "feature":
            return f"{node['label']} {where}"
        return f"{node['kind']}{'' if node['kind'] == 'embedding' else ' L' + str(node['layer'])} {where}"

    return " -> ".join(name(i) for i in path["nodes"]) + f"  ({path['score']:.3g})"


def run_graph(args: argparse.Namespace) -> int:
    from saelab.graphs.attribution import GraphConfig
    from saelab.graphs.graph_json import GRAPH_FILE, write_graph_json
    from saelab.graphs.heads import head_scores
    from saelab.graphs.labels import labels_by_layer
    from saelab.graphs.plot import plot_graph
    from saelab.graphs.prune import PruneConfig
    from saelab.graphs.trace import trace_prompt
    from saelab.graphs.transcoders import load_transcoders

    missing = [flag for flag, value in (("--transcoders", args.transcoders), ("--prompt", args.prompt),
                                        ("--out", args.out)) if not value]
    if missing:
        raise ConfigError(f"saelab graph needs {', '.join(missing)} (or a sub-command: train-transcoders, intervene, "
                          "toy-check); see saelab graph --help")
    apply_threads(args)
    graph_cfg = GraphConfig(max_logits=args.max_logits, prob_mass=args.prob_mass,
                            max_feature_nodes=args.max_feature_nodes or None, batch_size=args.batch_size)
    prune_cfg = PruneConfig(args.node_threshold, args.edge_threshold)
    out = check_output_folder(Path(args.out), what="--out")
    lm = model_from_args(args)
    transcoders, paths = load_transcoders(lm, args.transcoders, device=args.device)
    labels = labels_by_layer(args.labels or [], lm.n_layers)
    result = trace_prompt(lm, transcoders, args.prompt, graph_cfg, prune_cfg, _dtype(args.dtype), args.top_paths,
                          progress=not args.json)
    document = result.document(model_name=args.model, transcoder_paths=paths, labels=labels)
    if args.heads:
        scores = head_scores(result.replacement, result.graph, result.pruned, args.batch_size)
        ranked = sorted(((f"{layer}.{head}", float(scores[layer, head])) for layer in range(lm.n_layers)
                         for head in range(lm.n_heads)), key=lambda item: -item[1])
        document["metadata"]["heads"] = [{"head": h, "share": s} for h, s in ranked]
    graph_path = write_graph_json(out / GRAPH_FILE, document)
    plot_path = plot_graph(document, out / "graph.png")
    meta = document["metadata"]
    names = {n["id"]: n for n in document["nodes"] if n["kind"] == "logit"}
    summary: dict[str, Any] = {
        "graph": str(graph_path), "plot": str(plot_path), "tokens": len(meta["tokens"]),
        "logits": {names[f"logit:{int(t)}"]["token"]: round(float(p), 4)
                   for t, p in zip(result.graph.layout.logit_tokens, result.graph.logit_probabilities, strict=True)},
        **{f"score_{k}": round(v, 4) for k, v in meta["scores"].items()},
        **meta["counts"], "max_logit_error": meta["max_logit_error"],
        **{f"seconds_{k}": v for k, v in meta["timings"].items()},
    }
    if args.heads:
        summary["top_heads"] = [f"{h['head']}:{h['share']:.3f}" for h in meta["heads"][:5]]
    if args.json:
        summary["top_paths"] = meta["top_paths"]
        emit(summary, True)
    else:
        emit(summary, False)
        print("top paths (token -> logit):")
        for path in meta["top_paths"]:
            print("  " + _path_text(document, path))
    return 0


# ------------------------------------------------------------------------------- train-transcoders
def run_train_transcoders(args: argparse.Namespace) -> int:
    import time

    from saelab.graphs.transcoders import training_entries
    from saelab.train.config import TrainConfig
    from saelab.train.curves import read_curves
    from saelab.train.run_spec import (
        DataSpec,
        ModelSpec,
        RunSpec,
        refuse_existing_run,
        resume_spec,
        run_summary,
        train_run,
    )

    apply_threads(args)
    out = check_output_folder(Path(args.out), what="--out")
    started = time.perf_counter()
    lm = None
    if args.resume:
        spec = resume_spec(out, tokens=args.tokens)
    else:
        refuse_existing_run(out)
        steps = -(-args.tokens // max(args.batch_size, 1))
        train = TrainConfig(tokens=args.tokens, batch_size=args.batch_size, seed=args.seed,
                            checkpoint_every=args.checkpoint_every, log_every=max(1, min(50, steps)),
                            lr_warmup_steps=int(0.05 * steps), lr_decay_steps=int(0.2 * steps),
                            sparsity_warmup_steps=int(0.1 * steps), device=args.device,
                            **({"lr": args.lr} if args.lr is not None else {}))
        model = ModelSpec(args.model, args.model_dtype, args.device)
        lm = model.load()
        from saelab.sae.registry import sae_class

        options = {"k": args.k} if "k" in sae_class(args.arch).option_names() else {}
        entries = training_entries(lm, architecture=args.arch, d_sae=args.d_sae, input_kind=args.input,
                                   skip_connection=args.skip, options=options)
        data = DataSpec(text_spec_from_args(args), include_special_tokens=args.include_special_tokens,
                        model_batch_size=args.model_batch_size, seed=args.seed)
        spec = RunSpec.create(entries, train, out, model=model, data=data, lm=lm)
        spec.save()
    train_run(spec, resume=args.resume, progress=args.progress, lm=lm)
    summary = run_summary(spec)
    curves = read_curves(out)
    summary["final"] = {name: {key: round(rows[-1][key], 4) for key in ("fvu", "l0") if key in rows[-1]}
                        for name, rows in curves.items() if rows}
    summary["seconds"] = round(time.perf_counter() - started, 2)
    emit(summary, args.json)
    return 0


# ------------------------------------------------------------------------------------- intervene
def run_intervene(args: argparse.Namespace) -> int:
    from saelab.graphs.attribution import graph_config_of
    from saelab.graphs.graph_json import load_graph_json
    from saelab.graphs.interventions import intervene
    from saelab.graphs.trace import trace_prompt
    from saelab.graphs.transcoders import load_transcoders
    from saelab.interp.tokens import TokenNames
    from saelab.models import load_model

    apply_threads(args)
    document = load_graph_json(args.graph)
    meta = document["metadata"]
    model_spec = args.model or meta["model"]
    folders = args.transcoders or [t["path"] for t in meta["transcoders"]]
    if not all(folders):
        raise ConfigError(f"{args.graph} records no transcoder folders; pass --transcoders")
    lm = load_model(model_spec, device=args.device, dtype=args.model_dtype)
    transcoders, _ = load_transcoders(lm, folders, device=args.device)
    result = trace_prompt(lm, transcoders, meta["token_ids"], graph_config_of(meta), n_paths=0)
    nodes = [n.strip() for n in args.nodes.split(",") if n.strip()]
    outcome = intervene(result.replacement, result.graph, nodes, args.scale)
    summary = outcome.summary(TokenNames(lm).names(outcome.tokens.tolist()))
    if args.json:
        emit(summary, True)
    else:
        emit({k: v for k, v in summary.items() if k != "logits"}, False)
        for row in summary["logits"]:
            print(f"  {row['token']!r:>14}  real {row['real']:+.4f}  graph {row['predicted']:+.4f}  direct "
                  f"{row['direct']:+.4f}  p {row['probability_before']:.3f} -> {row['probability_after']:.3f}")
    return 0


# ------------------------------------------------------------------------------------- toy-check
def run_toy_check(args: argparse.Namespace) -> int:
    from saelab.graphs.graph_json import GRAPH_FILE, write_graph_json
    from saelab.graphs.plot import plot_graph
    from saelab.graphs.toy_check import toy_alignment
    from saelab.graphs.transcoders import load_transcoders
    from saelab.models import load_model

    apply_threads(args)
    out = check_output_folder(Path(args.out), what="--out") if args.out else None
    lm = load_model("toy")
    transcoders, paths = load_transcoders(lm, args.transcoders)
    reports, traces = toy_alignment(lm, transcoders, seed=args.seed)
    if out is not None:
        for task, trace in traces.items():
            document = trace.document(model_name="toy", transcoder_paths=paths)
            write_graph_json(out / task / GRAPH_FILE, document)
            plot_graph(document, out / task / "graph.png")
            reports[task]["graph"] = str(out / task / GRAPH_FILE)
    if args.json:
        emit(reports, True)
        return 0
    for task, report in reports.items():
        flat = {"prompt": report["prompt"], "top_logit_is_answer": report["top_logit_is_answer"],
                "answer_probability": round(report["answer_probability"], 4),
                **{k: round(v, 4) for k, v in report["scores"].items()}, **report["nodes"],
                "reference_heads": report["reference_heads"],
                "top_heads": [f"{h['head']}:{h['share']:.3f}" for h in report["top_heads"]],
                "heads_auc": round(report["heads_vs_reference"]["auc"], 4),
                "heads_precision_at_reference_size": report["heads_vs_reference"]["at_truth_size"]["precision"],
                "position_shares": {k: round(v, 3) for k, v in report["position_shares"].items()}}
        print(f"== {task}")
        emit(flat, False)
    return 0
