"""Why the discrete SAE ranks Gemma 3 270M's circuit heads near chance: per-head output norms, and the
node AUC under the changes the paper's setup suggests (more training prompts, a wider codebook) and
one of ours (each head's vectors divided by that head's mean norm before the shared SAE).

One scoring set (``--score-pairs`` pairs of seed 0) and one training pool (``--train-pairs`` pairs of
seed 1, the first ``n_train`` used), per position rule; default SAE settings otherwise
(``DSAEConfig``). Needs the reference circuit of the task as a ground-truth file
(``saelab circuits reference ... --truth-dir DIR``). One JSON line per cell.

    python benchmarks/dsae_gemma_study.py --model real/gemma-3-270m --task ioi \
        --truth runs/circuits_g270m_gt/ioi.json --rules changed_end,mean   # about 40 min on a busy core
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from saelab.circuits.dsae import DSAEConfig, node_scores, prompt_head_vectors, train_discrete_sae
from saelab.circuits.ground_truth import load_ground_truth
from saelab.circuits.heads import all_heads
from saelab.circuits.scoring import auc, roc_curve
from saelab.circuits.tasks import task_batch
from saelab.models import load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="real/gemma-3-270m")
    parser.add_argument("--task", default="ioi")
    parser.add_argument("--truth", required=True, help="ground-truth circuit file of the task")
    parser.add_argument("--rules", default="changed_end,mean")
    parser.add_argument("--n-trains", default="10,40,80")
    parser.add_argument("--codebooks", default="200,800")
    parser.add_argument("--train-pairs", type=int, default=80)
    parser.add_argument("--score-pairs", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    heads = all_heads(lm)
    truth_heads = set(load_ground_truth(args.truth).heads)
    truth = [h in truth_heads for h in heads]
    train = task_batch(lm, args.task, args.train_pairs, seed=1, templates="natural")
    score = task_batch(lm, args.task, args.score_pairs, seed=0, templates="natural")
    n = args.train_pairs
    for rule in args.rules.split(","):
        start = time.perf_counter()
        pos_pool, neg_pool, pos_score, neg_score = prompt_head_vectors(
            lm, [(train.clean_ids, train, slice(0, n // 2)), (train.corrupted_ids, train, slice(n // 2, n)),
                 (score.clean_ids, score, slice(None)), (score.corrupted_ids, score, slice(None))], rule)
        norms = torch.cat([pos_pool.rows(), neg_pool.rows()]).norm(dim=-1).mean(0)  # [heads]
        print(json.dumps({"rule": rule, "vectors_s": round(time.perf_counter() - start, 1),
                          "head_norm_min": round(float(norms.min()), 2), "head_norm_median": round(float(norms.median()), 2),
                          "head_norm_max": round(float(norms.max()), 2),
                          "largest_heads": [str(heads[i]) for i in norms.argsort(descending=True)[:6].tolist()]}),
              flush=True)
        for n_train in (int(v) for v in args.n_trains.split(",")):
            for codebook in (int(v) for v in args.codebooks.split(",")):
                for norm in ("raw", "per_head"):
                    cfg = DSAEConfig(n_train=n_train, codebook=codebook, position=rule)
                    x = torch.cat([pos_pool.rows()[:n_train - n_train // 2], neg_pool.rows()[:n_train // 2]])
                    head_scale = (x.norm(dim=-1).mean(0).clamp_min(1e-6)[None, :, None] if norm == "per_head"
                                  else torch.ones(1))
                    sae, scale, _ = train_discrete_sae((x / head_scale).reshape(-1, x.shape[-1]), cfg)
                    pos = sae.encode(pos_score.rows() / head_scale / scale).argmax(-1)
                    neg = sae.encode(neg_score.rows() / head_scale / scale).argmax(-1)
                    scores = node_scores(pos, neg)
                    fpr, tpr, _ = roc_curve(list(scores), truth)
                    print(json.dumps({"task": args.task, "rule": rule, "n_train": n_train, "codebook": codebook,
                                      "norm": norm, "auc": round(auc(fpr, tpr), 3),
                                      "codes_used": int(torch.cat([pos, neg]).unique().numel()),
                                      "heads_with_nonzero_score": int((scores > 0).sum())}), flush=True)


if __name__ == "__main__":
    main()
