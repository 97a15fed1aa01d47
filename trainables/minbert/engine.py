"""DeepSpeed as the training engine: its config from a trial's TrainConfig, and one training step.

    engine = build_engine(model, cfg.train, total_steps=1000)
    for step in plan:
        losses = {t: loss_of(engine.module, t, batch[t]) for t in step}
        stats = optimizer_step(engine, losses, shared_params(engine.module), surgery)

Single-process runs (tests, one trial per Tune worker) get a one-rank process group on
127.0.0.1; Ray Train sets the rendezvous variables itself for multi-worker runs.

DeepSpeed JIT-compiles two C++ ops on CPU that this module avoids:
- FusedAdam, for an Adam/AdamW optimizer: `"torch_adam": true` uses torch.optim.AdamW instead,
  with `fused=True` (torch's own fused kernel, on CPU and CUDA alike, nothing to compile).
- `deepspeed_shm_comm`, a shared-memory allreduce built (~26 s) whenever DeepSpeed creates its
  communication backend, even for a world of one. DeepSpeed skips it when its op table
  `deepspeed.ops.__compatible_ops__` marks it incompatible, which `build_engine` does; gloo
  then does the allreduce. Set HPSEARCH_DS_SHM_COMM=1 to let multi-worker CPU runs build and
  use it (cached under $TORCH_EXTENSIONS_DIR, default ~/.cache/torch_extensions).
"""

from __future__ import annotations

import math
import os
import socket
from typing import TYPE_CHECKING, Any

import torch

from trainables.errors import ConfigError
from trainables.minbert.config import TrainConfig
from trainables.minbert.extensions.surgery import GradientSurgery

if TYPE_CHECKING:
    import deepspeed

__all__ = [
    "ADAM_BETAS",
    "ADAM_EPS",
    "build_engine",
    "deepspeed_config",
    "ensure_single_process_env",
    "hardware_has_bf16",
    "optimizer_step",
    "use_bf16",
]

# AdamW constants the trial config does not expose: torch's and BERT's defaults.
ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
_NEVER_PRINT = 2**31 - 1
_SHM_COMM_OP = "deepspeed_shm_comm"


def ensure_single_process_env() -> dict[str, str]:
    """Set the torch.distributed rendezvous variables for a one-process world where unset.

    MASTER_ADDR=127.0.0.1, MASTER_PORT=<a free port>, RANK=0, WORLD_SIZE=1, LOCAL_RANK=0;
    variables already set (by Ray Train, torchrun, a previous call) are left alone. Without
    them `deepspeed.initialize` tries MPI discovery and fails for want of mpi4py.

    Returns:
        The variables this call set.
    """
    wanted = {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": None,
        "RANK": "0",
        "WORLD_SIZE": "1",
        "LOCAL_RANK": "0",
    }
    set_now: dict[str, str] = {}
    for key, value in wanted.items():
        if key not in os.environ:
            set_now[key] = os.environ[key] = value if value is not None else str(_free_port())
    return set_now


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def hardware_has_bf16() -> bool:
    """Whether this machine runs bf16 math natively (so "auto" precision picks bf16).

    CUDA: `torch.cuda.is_bf16_supported()` (Ampere and newer). CPU: Intel AMX tiles or the
    AVX512-BF16 instructions. Without them oneDNN emulates bf16, which is slower than fp32 and
    less precise, so "auto" stays fp32.
    """
    if torch.cuda.is_available():
        return bool(torch.cuda.is_bf16_supported())
    cpu = torch.cpu
    return bool(cpu._is_amx_tile_supported() or cpu._is_avx512_bf16_supported())


def use_bf16(precision: str, hardware_bf16: bool | None = None) -> bool:
    """Whether a run with `train.deepspeed.precision` trains in bf16.

    Args:
        precision: "bf16" (always), "fp32" (never) or "auto" (when the hardware has bf16).
        hardware_bf16: what to assume about the hardware; None asks `hardware_has_bf16()`.
    """
    if precision == "bf16":
        return True
    if precision == "fp32":
        return False
    if precision == "auto":
        return hardware_has_bf16() if hardware_bf16 is None else hardware_bf16
    raise ValueError(f"train.deepspeed.precision: unknown '{precision}': use auto, fp32 or bf16")


def deepspeed_config(
    train: TrainConfig,
    world_size: int = 1,
    total_steps: int | None = None,
    hardware_bf16: bool | None = None,
) -> dict[str, Any]:
    """The DeepSpeed config dict for a trial's training section.

    Args:
        train: the trial's TrainConfig; `batch_size` is per worker and micro-step.
        world_size: data-parallel workers; train_batch_size = batch * grad_accum * world_size.
        total_steps: training steps of the whole run, i.e. calls to `optimizer_step`; the
            schedule counts optimizer steps, ceil(total_steps / grad_accum). With it and
            `warmup_ratio > 0`, the learning rate warms up linearly from 0 over the first
            warmup_ratio of the optimizer steps and then decays linearly to 0 at the last
            (DeepSpeed's WarmupDecayLR, the BERT recipe). Otherwise the learning rate stays
            constant, as in the CS224N starter.
        hardware_bf16: passed to `use_bf16` for precision "auto"; None asks the hardware.

    Returns:
        A config for `deepspeed.initialize(config=...)`.
    """
    if world_size < 1:
        raise ValueError(f"world_size must be at least 1, got {world_size}")
    config: dict[str, Any] = {
        "train_micro_batch_size_per_gpu": train.batch_size,
        "gradient_accumulation_steps": train.grad_accum,
        "train_batch_size": train.batch_size * train.grad_accum * world_size,
        "optimizer": {
            "type": "AdamW",
            "params": {
                "lr": train.lr,
                "weight_decay": train.weight_decay,
                "betas": list(ADAM_BETAS),
                "eps": ADAM_EPS,
                "torch_adam": True,  # torch.optim.AdamW: no FusedAdam JIT build
                # torch's own fused kernel (CPU and CUDA), no build: 130 -> 28 ms per step on
                # MiniLM's 22.7M parameters here against the default for-loop form
                "fused": True,
            },
        },
        # DeepSpeed's default is 1.0, not off: always say what the trial asked for.
        "gradient_clipping": train.grad_clip,
        "zero_optimization": _zero_section(train.deepspeed.zero_stage),
        "bf16": {"enabled": use_bf16(train.deepspeed.precision, hardware_bf16)},
        "steps_per_print": _NEVER_PRINT,
        "wall_clock_breakdown": False,
    }
    if total_steps is not None and train.warmup_ratio > 0:
        if total_steps < 1:
            raise ValueError(f"total_steps must be at least 1, got {total_steps}")
        optimizer_steps = math.ceil(total_steps / train.grad_accum)
        config["scheduler"] = {
            "type": "WarmupDecayLR",
            "params": {
                "total_num_steps": optimizer_steps,
                "warmup_min_lr": 0.0,
                "warmup_max_lr": train.lr,
                "warmup_num_steps": max(1, round(train.warmup_ratio * optimizer_steps)),
                "warmup_type": "linear",
            },
        }
    return config


def _zero_section(stage: int) -> dict[str, Any]:
    section: dict[str, Any] = {"stage": stage}
    if stage == 3:
        # Otherwise ZeRO-3 replaces torch.nn.functional.linear for the whole process, for good
        # ("This will persist unless manually reset"): other models in a reused worker would
        # run DeepSpeed's wrapper.
        section["memory_efficient_linear"] = False
    return section


def build_engine(
    model: torch.nn.Module, train: TrainConfig, total_steps: int | None = None
) -> deepspeed.DeepSpeedEngine:
    """Wrap `model` in a DeepSpeed engine (AdamW, ZeRO stage and precision from `train`).

    Sets up a one-process world when no launcher did (`ensure_single_process_env`) and keeps
    DeepSpeed from compiling its shared-memory comm op (see the module docstring). The engine
    owns the optimizer and the learning-rate schedule; step it with `optimizer_step`.

    Args:
        model: the multitask model; its trainable parameters are optimised.
        train: the trial's TrainConfig (pcgrad with ZeRO-3 was refused by its validator).
        total_steps: calls to `optimizer_step` in the whole run, for the warmup/decay schedule.
    """
    import deepspeed

    initialized = torch.distributed.is_initialized()
    world_size = torch.distributed.get_world_size() if initialized else None
    if "WORLD_SIZE" not in os.environ:
        if world_size not in (None, 1):
            raise RuntimeError(
                f"torch.distributed runs {world_size} ranks but WORLD_SIZE, RANK and LOCAL_RANK "
                "are not set: start the workers with Ray Train or torchrun, which set them"
            )
        # DeepSpeed reads LOCAL_RANK even when the (one-rank) group already exists.
        ensure_single_process_env()
    if world_size is None:
        world_size = int(os.environ["WORLD_SIZE"])
    if os.environ.get("HPSEARCH_DS_SHM_COMM", "0") != "1":
        compatible_ops = getattr(deepspeed.ops, "__compatible_ops__", None)  # probed on 1st use
        if isinstance(compatible_ops, dict):
            compatible_ops[_SHM_COMM_OP] = False
    config = deepspeed_config(train, world_size=world_size, total_steps=total_steps)
    params = [p for p in model.parameters() if p.requires_grad]
    engine, *_ = deepspeed.initialize(model=model, model_parameters=params, config=config)
    return engine


def optimizer_step(
    engine: deepspeed.DeepSpeedEngine,
    task_losses: dict[str, torch.Tensor],
    shared_params: list[torch.nn.Parameter],
    surgery: GradientSurgery,
) -> dict[str, float]:
    """One backward + optimizer step through the engine, with gradient surgery on shared params.

    The losses must come from `engine.module(...)`: autograd on outputs of `engine(...)` is
    refused by DeepSpeed. With a plain-sum surgery this is `engine.backward(sum(losses))`.
    Otherwise each task's gradient is taken with `torch.autograd.grad` (shared params, for the
    surgery, and every other trainable param, whose gradients are summed over tasks), and one
    surrogate loss sum((p * g).sum()) hands the engine exactly those gradients: d/dp = g. This
    works at ZeRO 0, 1 and 2 (ZeRO-3 partitions the parameters away). As with any DeepSpeed
    step, the engine divides gradients by gradient_accumulation_steps and only updates at an
    accumulation boundary. Note that DeepSpeed gives parameters no loss reached a zero
    gradient, so AdamW still moves the heads of tasks absent from a step (momentum, weight
    decay), unlike torch's `zero_grad(set_to_none=True)` default.

    Args:
        engine: from `build_engine`.
        task_losses: task name -> scalar loss of this step's batch for that task.
        shared_params: the parameters every task's loss flows through (the encoder).
        surgery: combines the shared parameters' task gradients.

    Returns:
        `surgery.last_stats` for this step (empty for the plain sum).
    """
    if not task_losses:
        raise ValueError("optimizer_step needs at least one task loss")
    if surgery.needs_task_gradients and engine.zero_optimization_stage() == 3:
        raise ConfigError(
            f"{type(surgery).__name__} needs per-task gradients, which ZeRO-3 partitions away: "
            "set train.deepspeed.zero_stage to 0, 1 or 2, or turn extensions.pcgrad off"
        )
    names = sorted(task_losses)
    if not surgery.needs_task_gradients:
        engine.backward(sum(task_losses[t] for t in names))
        engine.step()
        return {}
    shared_ids = {id(p) for p in shared_params}
    heads = [p for p in engine.module.parameters() if p.requires_grad and id(p) not in shared_ids]
    params = list(shared_params) + heads
    n_shared = len(shared_params)
    task_grads: dict[str, list[torch.Tensor]] = {}
    head_grads: list[torch.Tensor | None] = [None] * len(heads)
    for k, task in enumerate(names):
        grads = torch.autograd.grad(
            task_losses[task], params, retain_graph=k < len(names) - 1, allow_unused=True
        )
        task_grads[task] = [
            g if g is not None else torch.zeros_like(p)
            for p, g in zip(shared_params, grads[:n_shared], strict=True)
        ]
        for h, g in enumerate(grads[n_shared:]):
            if g is not None:
                before = head_grads[h]
                head_grads[h] = g if before is None else before + g
    combined = surgery.combine(task_grads)
    # Head params no task reached keep no gradient, as after a plain backward.
    pairs = list(zip(shared_params, combined, strict=True))
    pairs += [(p, g) for p, g in zip(heads, head_grads, strict=True) if g is not None]
    engine.backward(sum((p * g.detach()).sum() for p, g in pairs))
    engine.step()
    return dict(surgery.last_stats)
