"""Training SAEs: one activation stream feeding several SAEs, checkpoints, exact resume.

    from saelab.train import TrainConfig, train_saes
    saes = train_saes(sae_cfgs, source, TrainConfig(tokens=2_000_000), "runs/x", resume=False)

``source`` is any object with ``iter_batches(start_batch=0)`` yielding ``{hook: Tensor[batch, d_in]}``
(see ``saelab.train.source``).
"""

from saelab.train.allocator import tune_cpu_allocator
from saelab.train.config import TrainConfig
from saelab.train.init import geometric_median
from saelab.train.source import BatchSource, InMemorySource
from saelab.train.step import SAEUpdater, StepResult
from saelab.train.synthetic import PlantedDictionary, PlantedDictionarySource
from saelab.train.trainer import NonFiniteError, Trainer, sae_seed, train_saes

__all__ = [
    "BatchSource", "InMemorySource", "NonFiniteError", "PlantedDictionary", "PlantedDictionarySource",
    "SAEUpdater", "StepResult", "TrainConfig", "Trainer", "geometric_median", "sae_seed", "train_saes",
    "tune_cpu_allocator",
]
