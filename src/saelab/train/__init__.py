"""Training SAEs: one activation stream feeding several SAEs, checkpoints, exact resume.

    from saelab.train import TrainConfig, train_saes
    saes = train_saes(sae_cfgs, source, TrainConfig(tokens=2_000_000), "runs/x", resume=False)

``source`` is any object with ``iter_batches(start_batch=0)`` yielding ``{hook: Tensor[batch, d_in]}``
(see ``saelab.train.source``). A whole run (model, data, SAEs, settings) as one saved object::

    spec = RunSpec.create(sae_entries, TrainConfig(tokens=2_000_000), "runs/x", model=ModelSpec("toy"))
    spec.save()                              # runs/x/run.json
    saes = train_run(spec)                   # resume: train_run(RunSpec.load("runs/x"), resume=True)
"""

from saelab.train.allocator import tune_cpu_allocator
from saelab.train.config import TrainConfig
from saelab.train.init import geometric_median
from saelab.train.run_spec import DataSpec, ModelSpec, RunSpec, train_run
from saelab.train.source import BatchSource, InMemorySource
from saelab.train.step import SAEUpdater, StepResult
from saelab.train.synthetic import PlantedDictionary, PlantedDictionarySource
from saelab.train.trainer import NonFiniteError, Trainer, sae_seed, train_saes

__all__ = [
    "BatchSource", "DataSpec", "InMemorySource", "ModelSpec", "NonFiniteError", "PlantedDictionary",
    "PlantedDictionarySource", "RunSpec", "SAEUpdater", "StepResult", "TrainConfig", "Trainer", "geometric_median",
    "sae_seed", "train_run", "train_saes", "tune_cpu_allocator",
]
