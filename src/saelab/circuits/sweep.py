"""How the discrete-SAE method's AUC depends on its settings: position rule, loss normalisation, L1
coefficient, learning-rate schedule (lr, epochs), codebook size, number of training examples, and
level (node or edge), averaged over SAE seeds (and the training prompts they draw), against the same
ground truth and scoring prompts.

Seeds: the scoring prompts use ``discovery.seed``; SAE seed ``s`` (0 .. ``seeds`` - 1) trains on prompts
drawn with seed ``discovery.seed + 1 + s``, so a sweep run with a different ``discovery.seed`` sees
other scoring and training prompts (``benchmarks/dsae_rules.py`` tunes on one such split and reports
on the split ``saelab circuits compare`` uses)."""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, replace

import numpy as np
from tqdm.auto import tqdm

from saelab.circuits.discover import DiscoveryConfig
from saelab.circuits.discrete_sae import LOSS_NORMS
from saelab.circuits.dsae import POSITION_RULES, DSAEConfig, dsae_scores, head_vectors
from saelab.circuits.ground_truth import ground_truth_for
from saelab.circuits.heads import all_heads
from saelab.circuits.result import MethodResult
from saelab.circuits.tasks import TASKS, task_batch
from saelab.errors import ConfigError, check_choice, check_range


@dataclass(frozen=True)
class DSAESweepConfig:
    """The grid; every cell is run with ``seeds`` SAE seeds (training prompts drawn with the same seed).
    ``loss_norms``/``l1s``/``schedules`` (``(lr, epochs)`` pairs): empty means ``discovery.dsae``'s value."""

    tasks: tuple[str, ...] = TASKS
    positions: tuple[str, ...] = POSITION_RULES
    codebooks: tuple[int, ...] = (50, 200, 800)
    n_trains: tuple[int, ...] = (6, 10, 25, 50)
    seeds: int = 3
    discovery: DiscoveryConfig = DiscoveryConfig()
    loss_norms: tuple[str, ...] = ()
    l1s: tuple[float, ...] = ()
    schedules: tuple[tuple[float, int], ...] = ()

    def __post_init__(self):
        if not (self.tasks and self.positions and self.codebooks and self.n_trains):
            raise ConfigError("the dsae sweep needs at least one value of each setting")
        for task in self.tasks:
            check_choice("task", task, TASKS)
        for position in self.positions:
            check_choice("position", position, POSITION_RULES)
        for norm in self.loss_norms:
            check_choice("loss_norm", norm, LOSS_NORMS)
        check_range("seeds", self.seeds, 1, 100, integer=True)
        for schedule in self.schedules:
            if len(schedule) != 2:
                raise ConfigError(f"a dsae sweep schedule is (lr, epochs), got {schedule!r}")
        self.cells()  # every cell is a DSAEConfig, which validates each value

    def cells(self) -> list[DSAEConfig]:
        """Every cell's settings (seed 0), in the order rows are written."""
        base = self.discovery.dsae
        return [replace(base, position=position, loss_norm=norm, l1=l1, lr=lr, epochs=epochs, codebook=codebook,
                        n_train=n_train)
                for position, norm, l1, (lr, epochs), codebook, n_train in itertools.product(
                    self.positions, self.loss_norms or (base.loss_norm,), self.l1s or (base.l1,),
                    self.schedules or ((base.lr, base.epochs),), self.codebooks, self.n_trains)]


def dsae_sweep(lm, cfg: DSAESweepConfig, progress: bool = True) -> list[dict]:
    """Rows ``{task, position, loss_norm, l1, lr, epochs, codebook, n_train, level, auc_mean, auc_std,
    auc_per_seed, f1_mean, runtime_s}`` (``runtime_s``: SAE training and code scoring, the scoring
    prompts' head outputs computed once per task and position rule)."""
    rows = []
    grid = list(itertools.product(cfg.tasks, cfg.cells()))
    cache: dict = {}
    for task, cell in tqdm(grid, desc="dsae sweep", disable=not progress):
        if task not in cache:
            score = task_batch(lm, task, cfg.discovery.n_pairs, cfg.discovery.seed, cfg.discovery.templates)
            cache[task] = (ground_truth_for(lm, task, None).heads, score, {})
        truth, score, vectors = cache[task]
        if cell.position not in vectors:
            vectors[cell.position] = head_vectors(lm, score, cell.position)
        results: dict[str, list] = {"node": [], "edge": []}
        for seed in range(cfg.seeds):
            train = task_batch(lm, task, cell.n_train, cfg.discovery.seed + 1 + seed, cfg.discovery.templates)
            start = time.perf_counter()
            nodes, edges, _ = dsae_scores(lm, train, score, replace(cell, seed=seed), vectors[cell.position])
            runtime = time.perf_counter() - start
            for level, scores in (("node", nodes), ("edge", edges)):
                report = MethodResult(f"dsae:{level}", task, all_heads(lm), scores, runtime).evaluate(truth)
                results[level].append((report["auc"], report["best_f1"]["f1"], runtime))
        for level, values in results.items():
            values = np.array(values)
            rows.append({"task": task, "position": cell.position, "loss_norm": cell.loss_norm, "l1": cell.l1,
                         "lr": cell.lr, "epochs": cell.epochs, "codebook": cell.codebook, "n_train": cell.n_train,
                         "level": level, "auc_mean": round(float(values[:, 0].mean()), 4),
                         "auc_std": round(float(values[:, 0].std()), 4),
                         "auc_per_seed": [round(float(v), 4) for v in values[:, 0]],
                         "f1_mean": round(float(values[:, 1].mean()), 4),
                         "runtime_s": round(float(values[:, 2].mean()), 3)})
    return rows


__all__ = ["DSAEConfig", "DSAESweepConfig", "dsae_sweep"]
