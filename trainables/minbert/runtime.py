"""Where this training process runs: its rank, the other ranks, its seeds, its peak memory."""

from __future__ import annotations

import ctypes
import gc
import os
import random
import resource

import torch

_PROC_STATUS = "/proc/self/status"
_PROC_CLEAR_REFS = "/proc/self/clear_refs"

__all__ = [
    "barrier",
    "dist_backend",
    "dist_rank_and_size",
    "peak_memory_mb",
    "release_device_memory",
    "release_host_memory",
    "reset_peak_memory",
    "seed_everything",
]


def dist_rank_and_size() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) unless launched data parallel."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def dist_backend() -> str | None:
    """The torch.distributed backend of this process ("nccl", "gloo"), or None without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return str(dist.get_backend())
    return None


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
    """Peak resident memory of this process since `reset_peak_memory` (MB); on a GPU, the
    peak allocated device memory."""
    if torch.cuda.is_available():
        return round(torch.cuda.max_memory_allocated() / 2**20, 1)
    try:  # Linux: the peak RSS the kernel keeps, which /proc/self/clear_refs can reset
        with open(_PROC_STATUS) as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except (OSError, ValueError, IndexError):
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def reset_peak_memory() -> None:
    """Start counting `peak_memory_mb` afresh (a reused worker process runs one trial after
    another; each trial's peak is its own): the GPU's peak statistics, and on Linux the
    process's peak RSS (writing 5 to /proc/self/clear_refs sets it to the current RSS).
    Elsewhere the CPU figure stays the process's peak since it started."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.reset_peak_memory_stats()
    try:
        with open(_PROC_CLEAR_REFS, "w") as clear_refs:
            clear_refs.write("5")
    except OSError:
        pass  # not Linux, or /proc read-only in this container


def release_host_memory() -> None:
    """Hand the C heap's free pages back to the OS (glibc's malloc_trim), after a trial's
    tensors are freed. A reused Ray worker runs each trial in a new thread; glibc keeps what
    each thread freed in its arena, and the worker's resident memory grew by 20-30 MB per
    tiny trial until this (measured: docs/BENCHMARKS.md, sweep overhead). No-op off glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    trim = getattr(libc, "malloc_trim", None)
    if trim is not None:
        trim(0)


def release_device_memory() -> None:
    """Free what a finished trial left: collect the reference cycles that keep its tensors
    alive (DeepSpeed's engine and optimizer hold some), then hand the CUDA caching
    allocator's unused blocks back to the driver, so that the next trial in this process, or
    another process sharing the GPU, gets them."""
    gc.collect()
    if torch.cuda.is_available() and torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
