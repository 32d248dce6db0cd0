"""Training on many processes with torch.distributed (torchrun; NCCL on GPUs, gloo on CPUs).

::

    torchrun --nproc-per-node 8 -m saelab train --model google/gemma-2-2b --device cuda ...
    torchrun --nproc-per-node 8 -m saelab train ... --parallel sae      # each rank trains some SAEs

Every rank reads the same *global* batch ``{hook: [batch_size, d_in]}`` from the batch source (an
``ActivationStore`` splits each buffer's forward passes between the ranks and all-gathers the
activations, so the model runs once per token overall). Then, per ``TrainConfig.parallel``:

- ``"data"``: every rank trains a replica of every SAE on its slice of the batch (rows
  ``[rank·b, (rank+1)·b)``, ``b = batch_size / world_size``). One all-reduce per SAE and step averages
  the gradients together with the loss, firing counts are summed and BatchTopK's smallest kept
  activation is min-reduced, so the replicas stay identical and equal (up to float rounding) to a
  one-process run on the same batches. BatchTopK is the exception: its top-(b·k) selection is per rank.
- ``"sae"``: each rank trains a subset of the SAEs (balanced by ``d_in·d_sae``) on the whole batch;
  metrics and checkpoint files travel to rank 0 as safetensors/JSON bytes over the collectives.

Rank 0 writes checkpoints and metrics (in ``"data"`` mode metrics lines are rank 0's slice, token
counts global). A checkpoint holds the global state, so a run resumes on any number of ranks. The run
folder must be on a filesystem every rank can read (one machine, or a shared filesystem across nodes).
Joining the process group and the plain row/byte gathers live in ``saelab.parallel``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from safetensors.torch import load as load_safetensors_bytes
from safetensors.torch import save as save_safetensors_bytes
from torch import Tensor

from saelab.errors import ConfigError
from saelab.parallel import active_world, comm_device, gather_bytes
from saelab.sae.config import SAEConfig
from saelab.train.config import PARALLEL_MODES


def tensors_to_bytes(tensors: dict[str, Tensor]) -> bytes:
    return save_safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in tensors.items()})


def tensors_from_bytes(data: bytes) -> dict[str, Tensor]:
    return load_safetensors_bytes(data)


def assign_saes(sae_cfgs: list[SAEConfig], world_size: int) -> list[int]:
    """The rank training each SAE in ``"sae"`` mode: largest first (``d_in·d_sae``) onto the least loaded rank."""
    if len(sae_cfgs) < world_size:
        raise ConfigError(f"parallel='sae' needs at least one SAE per rank: {len(sae_cfgs)} SAE(s) on "
                          f"{world_size} ranks; train more SAEs, use fewer ranks, or use parallel='data'")
    load = [0] * world_size
    owner = [0] * len(sae_cfgs)
    order = sorted(range(len(sae_cfgs)), key=lambda i: (-sae_cfgs[i].d_in * sae_cfgs[i].d_sae, sae_cfgs[i].name))
    for i in order:
        rank = min(range(world_size), key=lambda r: (load[r], r))
        owner[i] = rank
        load[rank] += sae_cfgs[i].d_in * sae_cfgs[i].d_sae
    return owner


@dataclass
class DistributedRun:
    """This process's place in a multi-process training run (see the module docstring)."""

    rank: int
    world_size: int
    mode: str

    @classmethod
    def current(cls, mode: str) -> DistributedRun | None:
        """The run of the initialised default process group, or None for a single process."""
        if mode not in PARALLEL_MODES:
            raise ConfigError(f"parallel={mode!r} is not accepted; accepted: {', '.join(PARALLEL_MODES)}")
        rank, world = active_world()
        return cls(rank, world, mode) if world > 1 else None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def data_parallel(self) -> bool:
        return self.mode == "data"

    def check_batch_size(self, batch_size: int) -> None:
        if self.data_parallel and batch_size % self.world_size:
            raise ConfigError(f"batch_size={batch_size} must be divisible by the {self.world_size} ranks of a "
                              f"data-parallel run; accepted: a multiple of {self.world_size}")

    def local_rows(self, x: Tensor) -> Tensor:
        """This rank's slice ``[batch / world, ...]`` of a global batch (data mode), else the batch."""
        if not self.data_parallel:
            return x
        share = x.shape[0] // self.world_size
        return x[self.rank * share:(self.rank + 1) * share]

    def owned(self, sae_cfgs: list[SAEConfig]) -> list[SAEConfig]:
        """The SAEs this rank trains."""
        if self.data_parallel:
            return list(sae_cfgs)
        owner = assign_saes(sae_cfgs, self.world_size)
        return [c for c, r in zip(sae_cfgs, owner, strict=True) if r == self.rank]

    # ----- data-parallel reductions -----
    def average_(self, grads: list[Tensor], loss: Tensor) -> Tensor:
        """Average ``grads`` (in place) and ``loss`` over ranks with one all-reduce; returns the mean loss."""
        device = comm_device()
        flat = torch.cat([g.reshape(-1).to(device=device, dtype=torch.float64 if g.dtype == torch.float64
                                           else torch.float32) for g in grads]
                         + [loss.detach().reshape(1).to(device=device, dtype=torch.float64 if loss.dtype ==
                                                        torch.float64 else torch.float32)])
        dist.all_reduce(flat)
        flat.div_(self.world_size)
        offset = 0
        for g in grads:
            n = g.numel()
            g.copy_(flat[offset:offset + n].view_as(g))
            offset += n
        return flat[offset].to(loss.device)

    def sum_(self, t: Tensor) -> Tensor:
        out = t.to(comm_device()).clone()
        dist.all_reduce(out)
        return out.to(t.device)

    def min_(self, t: Tensor) -> Tensor:
        out = t.to(comm_device()).clone()
        dist.all_reduce(out, op=dist.ReduceOp.MIN)
        return out.to(t.device)

    def broadcast_(self, tensors: list[Tensor]) -> None:
        """Overwrite ``tensors`` on every rank with rank 0's values."""
        device = comm_device()
        for t in tensors:
            buf = t.detach().to(device).contiguous()
            dist.broadcast(buf, src=0)
            t.data.copy_(buf.to(t.device))

    # ----- rank 0 collects -----
    def gather_json(self, value: Any) -> list[Any]:
        """Every rank's JSON-able ``value`` on rank 0 (rank order); [] elsewhere."""
        return [json.loads(b) for b in gather_bytes(json.dumps(value).encode())]

    def gather_tensor_files(self, files: dict[str, dict[str, Tensor]]) -> dict[str, dict[str, Tensor]]:
        """Every rank's ``{file: {name: tensor}}`` merged on rank 0 (over safetensors bytes); {} elsewhere."""
        names = self.gather_json(sorted(files))
        payloads = [tensors_to_bytes(files[name]) for name in sorted(files)]
        header = json.dumps([len(p) for p in payloads]).encode()
        gathered = gather_bytes(header + b"\n" + b"".join(payloads))
        merged: dict[str, dict[str, Tensor]] = {}
        if not self.is_main:
            return merged
        for rank_names, blob in zip(names, gathered, strict=True):
            header, _, body = blob.partition(b"\n")
            offset = 0
            for name, length in zip(rank_names, json.loads(header), strict=True):
                merged[name] = tensors_from_bytes(body[offset:offset + length])
                offset += length
        return merged

    def barrier(self) -> None:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()
