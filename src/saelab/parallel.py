"""Process-group basics under torch.distributed (torchrun): where this process is, and row/byte gathers.

Low in the layering (it imports no other saelab module), so the data layer (``ActivationStore``
splitting forward passes between ranks) and the trainer (``saelab.train.distributed``) share it.
Every helper is a no-op, or returns the single-process answer, when no process group is initialised.
"""

from __future__ import annotations

import logging
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

logger = logging.getLogger("saelab.train")


def launched_by_torchrun() -> bool:
    """True when the environment describes a multi-process launch (torchrun sets WORLD_SIZE and RANK)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def init_from_env(device: str = "cpu", timeout_s: float = 1800.0) -> str:
    """Join the process group torchrun describes (no-op when already joined); returns the device to use.

    Backend: NCCL when ``device`` is CUDA, else gloo. On CUDA each process takes ``cuda:LOCAL_RANK``
    (a ``device`` naming one GPU index is replaced by the local rank's GPU).
    """
    local = local_device(device)
    if dist.is_initialized():
        return local
    backend = "nccl" if local.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(torch.device(local))
    dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
    logger.info("rank %d of %d joined (%s, %s)", dist.get_rank(), dist.get_world_size(), backend, local)
    return local


def local_device(device: str) -> str:
    """``cuda:LOCAL_RANK`` for a CUDA ``device`` (this process's GPU), else ``device`` unchanged."""
    if device.startswith("cuda"):
        return f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    return device


def active_world() -> tuple[int, int]:
    """(rank, world_size) of the default process group, (0, 1) when none is initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def comm_device() -> torch.device:
    """Where collective buffers must live: the current GPU under NCCL, else the CPU."""
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_gather_rows(x: Tensor, counts: list[int]) -> Tensor:
    """Concatenate every rank's ``x [counts[rank], ...]`` in rank order, on every rank (sizes may differ)."""
    _rank, world = active_world()
    if world == 1:
        return x
    longest = max(counts)
    device = comm_device()
    padded = torch.zeros((longest, *x.shape[1:]), dtype=x.dtype, device=device)
    padded[:x.shape[0]] = x.to(device)
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[:n] for part, n in zip(parts, counts, strict=True)]).to(x.device)


def gather_bytes(payload: bytes) -> list[bytes]:
    """Every rank's ``payload``, in rank order, on rank 0 (an empty list elsewhere)."""
    rank, world = active_world()
    if world == 1:
        return [payload]
    device = comm_device()
    size = torch.tensor([len(payload)], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    lengths = [int(s) for s in sizes]
    buf = torch.zeros(max(lengths), dtype=torch.uint8, device=device)
    if payload:
        buf[:len(payload)] = torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device)
    parts = [torch.empty_like(buf) for _ in range(world)] if rank == 0 else None
    dist.gather(buf, parts, dst=0)
    if rank != 0:
        return []
    return [bytes(part[:n].cpu().numpy().tobytes()) for part, n in zip(parts, lengths, strict=True)]
