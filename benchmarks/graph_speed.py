"""Time of one attribution graph for a 16-token prompt, split into its phases, against one plain
forward + backward pass of the same model on the same prompt.

Phases (``saelab.graphs.trace``): ``forward`` (the real model's clean run with every hook the
replacement needs, and the frozen replacement model's calibration pass), ``attribution`` (the batched
backward passes of every feature and logit row) and ``pruning`` (influence, pruning, scores, paths).
The ratio is graph time / (forward + backward of the top logit with respect to the embeddings).

Toy model: the transcoders of ``--toy-transcoders`` (``saelab graph train-transcoders``). Gemma 3 270M
(when ``--gemma`` exists): the transcoders of ``--gemma-transcoders``, else untrained TopK transcoders of
``--gemma-d-sae`` latents and ``--gemma-k`` active ones (the time depends on how many features fire, not
on what they mean; the replacement and completeness scores are then meaningless and not reported).

    python benchmarks/graph_speed.py [--toy-transcoders runs/graphs/toy_transcoders] [--gemma real/gemma-3-270m]
        [--gemma-transcoders DIR] [--no-gemma] [--reps 3] [--threads 1] [--device cpu] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

TOY_PROMPT = "When Mary and John went to the store , John gave a book to Mary and then she said"
GEMMA_PROMPT = ("When Mary and John went to the store, John gave a drink to Mary because she was thirsty after "
                "the long walk home")


def sixteen_tokens(lm, text: str) -> torch.Tensor:
    ids = lm.tokenize(text)[0][0]
    if ids.shape[0] < 16:
        raise SystemExit(f"the prompt has only {ids.shape[0]} tokens; give a longer one")
    return ids[:16]


def forward_backward_seconds(lm, ids: torch.Tensor, reps: int) -> float:
    """Median seconds of one forward pass with logits and one backward pass of the top logit to the embeddings."""
    def embeddings_as_leaf(value: torch.Tensor) -> torch.Tensor:
        return value.detach().requires_grad_(True)

    times = []
    for _ in range(reps + 1):
        start = time.perf_counter()
        logits = lm.run_with_hooks(ids[None], {"blocks.0.hook_resid_pre": embeddings_as_leaf}, grad=True)
        logits[0, -1].max().backward()
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def graph_seconds(lm, transcoders, ids: torch.Tensor, reps: int, batch_size: int) -> dict:
    from saelab.graphs import GraphConfig, trace_prompt

    runs = []
    for _ in range(reps):
        start = time.perf_counter()
        result = trace_prompt(lm, transcoders, ids, GraphConfig(batch_size=batch_size))
        if lm.device.type == "cuda":
            torch.cuda.synchronize()
        runs.append((time.perf_counter() - start, result))
    total, result = sorted(runs, key=lambda r: r[0])[len(runs) // 2]
    return {"seconds": total, **{f"seconds_{k}": v for k, v in result.timings.items()},
            "active_features": result.graph.n_active_features, "feature_nodes": result.graph.layout.n_features,
            "nodes": result.graph.layout.n_nodes, "pruned_nodes": result.pruned.n_nodes,
            "scores": result.scores.to_dict(), "max_logit_error": result.replacement.max_logit_error}


def untrained_transcoders(lm, d_sae: int, k: int):
    from saelab.sae import SAEConfig, make_sae

    return [make_sae(SAEConfig("topk", lm.d_model, d_sae, hook_name=f"blocks.{layer}.ln2.hook_normalized",
                               hook_name_out=f"blocks.{layer}.hook_mlp_out", k=k),
                     torch.Generator().manual_seed(layer)).to(lm.device) for layer in range(lm.n_layers)]


def measure(name: str, lm, transcoders, ids, args, trained: bool) -> dict:
    plain = forward_backward_seconds(lm, ids, max(3, args.reps))
    graph = graph_seconds(lm, transcoders, ids, args.reps, args.batch_size)
    if not trained:
        graph.pop("scores")
    return {"model": name, "tokens": int(ids.shape[0]), "transcoders": "trained" if trained else "untrained",
            "forward_backward_seconds": plain, **graph, "ratio_to_forward_backward": graph["seconds"] / plain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--toy-transcoders", default="runs/graphs/toy_transcoders")
    parser.add_argument("--gemma", default="real/gemma-3-270m")
    parser.add_argument("--no-gemma", action="store_true", help="time the toy model only")
    parser.add_argument("--gemma-transcoders", default=None)
    parser.add_argument("--gemma-d-sae", type=int, default=4096)
    parser.add_argument("--gemma-k", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=256, help="attribution targets per backward pass")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from saelab.graphs import load_transcoders
    from saelab.models import load_model

    rows = []
    toy = load_model("toy", device=args.device)
    toy_transcoders, _ = load_transcoders(toy, [args.toy_transcoders], device=args.device)
    rows.append(measure("toy", toy, toy_transcoders, sixteen_tokens(toy, TOY_PROMPT), args, trained=True))
    if not args.no_gemma and Path(args.gemma).is_dir():
        gemma = load_model(args.gemma, device=args.device)
        if args.gemma_transcoders:
            transcoders, _ = load_transcoders(gemma, [args.gemma_transcoders], device=args.device)
        else:
            transcoders = untrained_transcoders(gemma, args.gemma_d_sae, args.gemma_k)
        rows.append(measure("gemma-3-270m", gemma, transcoders, sixteen_tokens(gemma, GEMMA_PROMPT), args,
                            trained=bool(args.gemma_transcoders)))
    elif not args.no_gemma:
        print(f"(no {args.gemma}: Gemma 3 270M skipped)")
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"graph of a 16-token prompt, {args.threads} thread(s), {args.device}, median of {args.reps}")
    print("| model | transcoders | active features | graph s | forward s | attribution s | pruning s | "
          "fwd+bwd s | ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['transcoders']} | {r['active_features']} | {r['seconds']:.2f} | "
              f"{r['seconds_forward']:.3f} | {r['seconds_attribution']:.2f} | {r['seconds_pruning']:.2f} | "
              f"{r['forward_backward_seconds']:.4f} | {r['ratio_to_forward_backward']:.0f} |")
    for r in rows:
        if "scores" in r:
            print(f"{r['model']}: replacement {r['scores']['replacement']:.3f}, completeness "
                  f"{r['scores']['completeness']:.3f}, {r['pruned_nodes']} of {r['nodes']} nodes kept")


if __name__ == "__main__":
    main()
