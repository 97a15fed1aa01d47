"""DeepSpeed as the training engine: its config from a trial's TrainConfig, and one training step.

    engine = build_engine(model, cfg.train, total_steps=1000,
                          param_groups=make_param_groups(cfg), lr_schedule=make_lr_schedule(cfg))
    for step in plan:
        losses = {t: loss_of(engine.module, t, batch[t]) for t in step}
        stats = optimizer_step(engine, losses, shared_params(engine.module), surgery)

Single-process runs (tests, one trial per Tune worker) get a one-rank process group on
127.0.0.1; Ray Train sets the rendezvous variables itself for multi-worker runs.

The optimizer is AdamW over the param groups of the trial's `ParamGroups` (one group at
train.lr by default, layer-wise decay with `extensions.llrd`); the learning rate follows the
trial's `LrSchedule` (constant by default, warm-up and decay with `extensions.lr_schedule`),
given to DeepSpeed as a torch LambdaLR, the engine's lr scheduler: it scales each group's own
rate (DeepSpeed's WarmupDecayLR would write one rate into every group), DeepSpeed steps it at
every optimizer step and saves and restores its state with the engine checkpoint. The config
dict never names a DeepSpeed scheduler, so nothing else schedules the rate.

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

import os
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from trainables.errors import ConfigError
from trainables.minbert.config import TrainConfig
from trainables.minbert.extensions.optimization import (
    ConstantLr,
    LrSchedule,
    ParamGroups,
    SingleGroup,
    optimizer_param_groups,
)
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
    "lr_scheduler_factory",
    "optimizer_step",
    "optimizer_steps",
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
    train: TrainConfig, world_size: int = 1, hardware_bf16: bool | None = None
) -> dict[str, Any]:
    """The DeepSpeed config dict for a trial's training section.

    It names no scheduler: the learning-rate schedule is the `LrSchedule` that `build_engine`
    hands DeepSpeed as the engine's lr scheduler, the one way the rate changes in a run.

    Args:
        train: the trial's TrainConfig; `batch_size` is per worker and micro-step.
        world_size: data-parallel workers; train_batch_size = batch * grad_accum * world_size.
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
    return config


def optimizer_steps(total_steps: int, grad_accum: int) -> int:
    """Optimizer steps in a run of `total_steps` calls to `optimizer_step` (at least 1).

    The engine updates at every grad_accum-th call; calls after the last full accumulation
    never reach an update, so they do not count.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1, got {total_steps}")
    return max(1, total_steps // grad_accum)


def lr_scheduler_factory(
    schedule: LrSchedule, total: int | None
) -> Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler] | None:
    """What `deepspeed.initialize(lr_scheduler=...)` gets for `schedule` over `total`
    optimizer steps: None (no scheduler, a constant rate) when the schedule is constant, else
    a callable that DeepSpeed calls with the torch optimizer it built (ZeRO and bf16 wrap it
    but keep its param groups), making a torch LambdaLR of it.

    LambdaLR sets each group's rate to that group's initial rate times the multiplier, so
    per-group ratios survive. Its state (steps taken, initial rates) is plain numbers,
    restored from the engine checkpoint through the weights-only loader; the groups' current
    rates come back with the optimizer state."""
    if schedule.constant:
        return None
    if total is None:
        raise ValueError(f"{type(schedule).__name__} needs the run's total_steps")

    def multiplier(step: int) -> float:  # a plain function: LambdaLR saves no state of it
        return schedule.multiplier(step, total)

    def build(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, multiplier)

    return build


def _zero_section(stage: int) -> dict[str, Any]:
    section: dict[str, Any] = {"stage": stage}
    if stage == 3:
        # Otherwise ZeRO-3 replaces torch.nn.functional.linear for the whole process, for good
        # ("This will persist unless manually reset"): other models in a reused worker would
        # run DeepSpeed's wrapper.
        section["memory_efficient_linear"] = False
    return section


def build_engine(
    model: torch.nn.Module,
    train: TrainConfig,
    total_steps: int | None = None,
    param_groups: ParamGroups | None = None,
    lr_schedule: LrSchedule | None = None,
) -> deepspeed.DeepSpeedEngine:
    """Wrap `model` in a DeepSpeed engine (AdamW, ZeRO stage and precision from `train`).

    Sets up a one-process world when no launcher did (`ensure_single_process_env`) and keeps
    DeepSpeed from compiling its shared-memory comm op (see the module docstring). The engine
    owns the optimizer and the learning-rate schedule; step it with `optimizer_step`.

    Args:
        model: the multitask model; its trainable parameters are optimised.
        train: the trial's TrainConfig (pcgrad with ZeRO-3 was refused by its validator).
        total_steps: calls to `optimizer_step` in the whole run; a schedule that is not
            constant needs it (it runs over `optimizer_steps(total_steps, grad_accum)`).
        param_groups: how the trainable parameters split into AdamW groups, each at train.lr
            times its scale, all with train.weight_decay; None: one group (`SingleGroup`).
        lr_schedule: the multiplier on each group's rate per optimizer step; None: constant.
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
    config = deepspeed_config(train, world_size=world_size)
    groups = optimizer_param_groups(
        param_groups or SingleGroup(), model, train.lr, train.weight_decay
    )
    total = None if total_steps is None else optimizer_steps(total_steps, train.grad_accum)
    scheduler = lr_scheduler_factory(lr_schedule or ConstantLr(), total)
    engine, *_ = deepspeed.initialize(
        model=model, model_parameters=groups, config=config, lr_scheduler=scheduler
    )
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
