"""Where this training process runs: its rank, the other ranks, its seeds, its peak memory."""

from __future__ import annotations

import os
import random
import resource

import torch

__all__ = ["barrier", "dist_rank_and_size", "peak_memory_mb", "seed_everything"]


def dist_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) unless launched data parallel."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def barrier() -> None:
    """Wait for every rank (nothing to wait for in a one-process run)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.barrier()


def seed_everything(seed: int) -> None:
    """Seed Python's and torch's global random number generators."""
    random.seed(seed)
    torch.manual_seed(seed)


def peak_memory_mb() -> float:
    """Peak resident memory of this process (MB); on a GPU, the peak allocated device memory."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
