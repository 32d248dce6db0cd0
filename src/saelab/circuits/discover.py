"""One entry point for every circuit-discovery method: ``discover(lm, task, method, cfg)``.

Methods (``METHODS``): ``dsae`` and ``dsae_edges`` (discrete SAE, node and edge scores), ``patching``,
``eap`` and ``eap_edges`` (edge attribution patching at head and edge level), ``acdc`` (edge-level) and
``acdc_nodes`` (head-level). Every method sees the same ``n_pairs`` clean/corrupted pairs (seed
``seed``); dsae trains on ``dsae.n_train`` further prompts (seed ``seed + 1``) and scores codes on those
``n_pairs`` pairs. ``EDGE_GRAPH_METHODS`` need the head graph (``saelab.circuits.graph``), which models
with grouped-query attention or a norm after the attention output lack; ``method_refusal`` says why.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from saelab.circuits.acdc import ACDCConfig, run_acdc
from saelab.circuits.acdc_nodes import run_acdc_nodes
from saelab.circuits.dsae import DSAEConfig, run_dsae
from saelab.circuits.eap import run_eap
from saelab.circuits.graph import edge_graph_refusal
from saelab.circuits.patching import run_patching
from saelab.circuits.result import MethodResult
from saelab.circuits.tasks import TASKS, TEMPLATE_FAMILIES, TaskBatch, task_batch
from saelab.errors import ConfigError, check_choice, check_range

METHODS = ("dsae", "dsae_edges", "patching", "eap", "eap_edges", "acdc", "acdc_nodes")
EDGE_GRAPH_METHODS = ("eap_edges", "acdc")
MAX_PAIRS = 100_000


@dataclass(frozen=True)
class DiscoveryConfig:
    """Prompts shared by all methods, and each method's settings."""

    n_pairs: int = 100
    seed: int = 0
    templates: str | None = None
    dsae: DSAEConfig = field(default_factory=DSAEConfig)
    acdc: ACDCConfig = field(default_factory=ACDCConfig)

    def __post_init__(self):
        check_range("n_pairs", self.n_pairs, 2, MAX_PAIRS, integer=True)
        check_range("seed", self.seed, 0, None, integer=True)
        if self.templates is not None:
            check_choice("templates", self.templates, TEMPLATE_FAMILIES)


def task_batches(lm, task: str, cfg: DiscoveryConfig) -> tuple[TaskBatch, TaskBatch]:
    """``(pairs, dsae_training_pairs)`` for ``task``."""
    check_choice("task", task, TASKS)
    return (task_batch(lm, task, cfg.n_pairs, cfg.seed, cfg.templates),
            task_batch(lm, task, cfg.dsae.n_train, cfg.seed + 1, cfg.templates))


def method_refusal(lm, method: str) -> str | None:
    """Why ``lm`` cannot run ``method`` (a short sentence), or None when it can."""
    check_choice("method", method, METHODS)
    refusal = edge_graph_refusal(lm) if method in EDGE_GRAPH_METHODS else None
    return None if refusal is None else f"edge-level: needs {refusal}"


def discover(lm, task: str, method: str, cfg: DiscoveryConfig | None = None, progress: bool = False,
             batches: tuple[TaskBatch, TaskBatch] | None = None) -> MethodResult:
    """Run ``method`` on ``task``; ``batches`` reuses prompts already built by ``task_batches``. A method
    the model cannot run (``method_refusal``) is refused with the reason and the methods that can."""
    cfg = cfg or DiscoveryConfig()
    check_choice("task", task, TASKS)
    refusal = method_refusal(lm, method)
    if refusal is not None:
        usable = [m for m in METHODS if method_refusal(lm, m) is None]
        raise ConfigError(f"method {method!r} cannot run on {lm.name} ({refusal}); use one of: {', '.join(usable)}")
    pairs, train = batches or task_batches(lm, task, cfg)
    if method in ("dsae", "dsae_edges"):
        return run_dsae(lm, train, pairs, cfg.dsae, level="node" if method == "dsae" else "edge")
    if method == "patching":
        return run_patching(lm, pairs, progress)
    if method in ("eap", "eap_edges"):
        return run_eap(lm, pairs, level="node" if method == "eap" else "edge")
    if method == "acdc_nodes":
        return run_acdc_nodes(lm, pairs, cfg.acdc, progress)
    return run_acdc(lm, pairs, cfg.acdc, progress)
