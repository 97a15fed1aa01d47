"""Run checkpoints: sealed DeepSpeed checkpoints a trial resumes from, and nothing else.

"Checkpoint" means three things in this project, each with its own module:
- a **run checkpoint** (this module): `RUN/checkpoints/step-NNNNNNNN/`, the DeepSpeed engine
  state (weights, optimizer, scheduler) plus `trainer_state.pt` (step, position in the epoch,
  random states, the best dev evaluation so far) and, when that best evaluation came before
  the checkpoint's step, its weights in `best_weights.pt`, sealed by a `MANIFEST.json` of
  SHA-256 checksums;
- a **Hugging Face checkpoint folder** (`hf_folder.py`): pretrained weights to start from;
- a **Ray checkpoint**: the run checkpoint a trial reported to Ray Tune with its last result
  (`hpsearch.worker` asks this module whether it is intact before resuming from it).

A checkpoint is written into a hidden staging folder, sealed, then renamed into place: a
half-written one never looks whole, and `find_checkpoint` skips any whose files do not match
their manifest. Loading goes through `torch.load(weights_only=True)`, DeepSpeed's own loads
included: a tampered file is refused, never unpickled.

    staging = stage(root, step)                  # every rank: engine.save_checkpoint(staging)
    state = {..., **random_states()}             # the trainer's own state, random states too
    final = seal(staging, root, step, state, keep=2)   # rank 0: trainer state, manifest, rename
    folder = find_checkpoint(run_dir)            # the newest intact one, or ConfigError
    state = load(engine, folder)                 # engine restored; returns the trainer state
    restore_random_states(state)

Selection on dev (`BestCheckpoint`, `train.select_best_dev`): the weights of the run's best
dev evaluation are kept in memory, a CPU copy of the module's state_dict, and sealed into
every run checkpoint taken after a later, worse evaluation, so a resumed run knows its best
so far; the trainer loads them before the final evaluation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import random
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from trainables.atomic import write_json_atomic
from trainables.errors import ConfigError

__all__ = [
    "BEST_WEIGHTS",
    "MANIFEST",
    "TRAINER_STATE",
    "BestCheckpoint",
    "find_checkpoint",
    "load",
    "load_module_weights",
    "module_weights",
    "random_states",
    "restore_random_states",
    "seal",
    "stage",
    "tag_of",
    "verify_checkpoint",
]

MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.pt"
BEST_WEIGHTS = "best_weights.pt"  # the module's state_dict at the best dev evaluation


def tag_of(step: int) -> str:
    """The folder name of the checkpoint taken at optimizer step `step`."""
    return f"step-{step:08d}"


def stage(root: Path, step: int, *, clean: bool) -> Path:
    """The staging folder the engine saves the checkpoint of `step` into.

    With `clean` (rank 0), the staging folders of interrupted saves are removed first (they
    are never checkpoints) and this one is created.
    """
    staging = root / f".staging-{tag_of(step)}"
    if clean:
        for stale in root.glob(".staging-*"):
            shutil.rmtree(stale, ignore_errors=True)
        staging.mkdir(parents=True)
    return staging


def seal(
    staging: Path,
    root: Path,
    step: int,
    trainer_state: dict[str, Any],
    keep: int,
    extra_files: Mapping[str, Any] | None = None,
) -> Path:
    """Add the trainer state, any `extra_files` ({file name: tensors to torch.save}) and the
    manifest, move the checkpoint into place, prune old ones.

    Returns the sealed folder `root/step-NNNNNNNN`; only the newest `keep` are kept.
    """
    tag = tag_of(step)
    folder = staging / tag
    torch.save(trainer_state, folder / TRAINER_STATE)
    for name, tensors in (extra_files or {}).items():
        torch.save(tensors, folder / name)
    files = {
        str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }
    write_json_atomic(folder / MANIFEST, {"tag": tag, "step": step, "files": files})
    final = root / tag
    if final.exists():
        shutil.rmtree(final)
    os.replace(folder, final)
    shutil.rmtree(staging, ignore_errors=True)
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def find_checkpoint(path: str | Path) -> Path:
    """The newest sealed, intact checkpoint at `path` (a checkpoint folder or a run folder)."""
    path = Path(path)
    if (path / MANIFEST).is_file() or (path / TRAINER_STATE).exists():
        candidates = [path]
    else:
        root = path / "checkpoints" if (path / "checkpoints").is_dir() else path
        candidates = sorted((p for p in root.glob("step-*") if p.is_dir()), reverse=True)
    problems = []
    for folder in candidates:
        problem = verify_checkpoint(folder)
        if problem is None:
            return folder
        problems.append(problem)
    if not candidates:
        raise ConfigError(
            f"no checkpoint found in {path}: pass a run folder or a checkpoint folder"
        )
    raise ConfigError(f"no intact checkpoint in {path}: {'; '.join(problems)}")


def verify_checkpoint(folder: Path) -> str | None:
    """None if every file matches the manifest; else what is wrong."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return f"{folder.name}: manifest missing or unreadable (checkpoint was not completed)"
    for rel, digest in files.items():
        f = folder / rel
        if not f.is_file():
            return f"{folder.name}: {rel} is missing"
        if _sha256(f) != digest:
            return f"{folder.name}: {rel} is corrupt (checksum mismatch)"
    return None


def load(engine: Any, folder: Path) -> dict[str, Any]:
    """Restore `engine` (weights, optimizer, scheduler) from a verified checkpoint folder and
    return its trainer state; ConfigError if a file holds more than tensors and plain records."""
    try:
        with _weights_only_deepspeed_loads(engine):
            load_path, _ = engine.load_checkpoint(
                str(folder.parent),
                tag=folder.name,
                load_optimizer_states=True,
                load_lr_scheduler_states=True,
            )
    except pickle.UnpicklingError as exc:
        reason = str(exc).split("WeightsUnpickler error: ")[-1].split(".")[0][:160]
        raise ConfigError(
            f"checkpoint {folder} holds more than weights and optimizer "
            f"state ({reason}); it was refused rather than unpickled: "
            "resume only from checkpoints this framework wrote"
        ) from None
    if load_path is None:
        raise ConfigError(
            f"checkpoint {folder}: DeepSpeed could not load it; pass another checkpoint or start afresh"
        )
    state: dict[str, Any] = torch.load(folder / TRAINER_STATE, weights_only=True)
    return state


def module_weights(engine: Any) -> dict[str, torch.Tensor]:
    """A CPU copy of the engine's module's state_dict (under ZeRO-3 gathered first, since each
    rank holds only its partition of the parameters)."""
    module = engine.module
    with _gathered(engine, module, modifier_rank=None):
        return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def load_module_weights(engine: Any, weights: Mapping[str, torch.Tensor]) -> None:
    """Put `weights` (from `module_weights`) into the engine's module, in place. The optimizer
    is left as it is: for evaluation after training, not for training on."""
    module = engine.module
    with _gathered(engine, module, modifier_rank=0):
        module.load_state_dict(dict(weights))


@contextlib.contextmanager
def _gathered(engine: Any, module: torch.nn.Module, modifier_rank: int | None) -> Iterator[None]:
    if engine.zero_optimization_stage() != 3:
        yield
        return
    import deepspeed

    params = list(module.parameters())
    with deepspeed.zero.GatheredParameters(params, modifier_rank=modifier_rank):
        yield


class BestCheckpoint:
    """The best dev evaluation of a run so far and its weights (`train.select_best_dev`).

    `offer` keeps an evaluation whose `key` score (dev_overall) is finite and higher than the
    best so far (the first of equal ones stays); its weights are copied then, to CPU memory,
    only when it is a new best. A run checkpoint carries the best's record in its trainer
    state and, when the best came before the checkpoint's step, the weights (`files`); a
    checkpoint at the best's own step needs no copy, its engine weights are the best's.

    Attributes:
        record: {"step", "eval", "epoch", "phase", and the dev scores} of the best, or None.
        weights: its module state_dict on the CPU, or None.
    """

    def __init__(self, key: str = "dev_overall") -> None:
        self.key = key
        self.record: dict[str, Any] | None = None
        self.weights: dict[str, torch.Tensor] | None = None

    def offer(
        self, record: dict[str, Any], weights: Callable[[], dict[str, torch.Tensor]]
    ) -> bool:
        """Keep `record` (and `weights()`) if it is the best so far; whether it was."""
        score = record.get(self.key)
        if not isinstance(score, (int, float)) or not math.isfinite(score):
            return False
        if self.record is not None and score <= self.record[self.key]:
            return False
        self.record, self.weights = dict(record), weights()
        return True

    def state_text(self) -> str:
        """The record as a trainer state keeps it (JSON text; "null" with none yet)."""
        return json.dumps(self.record)

    def files(self, step: int) -> dict[str, dict[str, torch.Tensor]]:
        """The extra files of a checkpoint at `step`: the best's weights when it came before."""
        if self.record is None or self.weights is None or self.record["step"] == step:
            return {}
        return {BEST_WEIGHTS: self.weights}

    def restore(
        self,
        state_text: str | None,
        folder: Path,
        step: int,
        current: Callable[[], dict[str, torch.Tensor]],
    ) -> None:
        """Take up the best of the checkpoint `folder` at `step`: its record, and its weights
        from `best_weights.pt`, or `current()` (the engine's, just loaded) when the best is the
        checkpoint's own step. A checkpoint from before selection existed has no record."""
        record = json.loads(state_text) if state_text else None
        if record is None:
            self.record, self.weights = None, None
            return
        if record["step"] == step:
            self.record, self.weights = record, current()
            return
        path = folder / BEST_WEIGHTS
        if not path.is_file():
            raise ConfigError(
                f"checkpoint {folder} records its best dev evaluation at step {record['step']} "
                f"but has no {BEST_WEIGHTS}: resume from another checkpoint or start afresh"
            )
        weights: dict[str, torch.Tensor] = torch.load(path, map_location="cpu", weights_only=True)
        self.record, self.weights = record, weights


def random_states() -> dict[str, Any]:
    """This process's random states, in the form a trainer state stores them (weights-only
    loadable: tensors and JSON text)."""
    states: dict[str, Any] = {
        "torch_rng": torch.get_rng_state(),
        "python_rng": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        states["cuda_rng"] = torch.cuda.get_rng_state_all()
    return states


def restore_random_states(state: dict[str, Any]) -> None:
    """Restore what `random_states` captured (CUDA's only where both runs have CUDA)."""
    torch.set_rng_state(state["torch_rng"])
    version, internal, gauss = json.loads(state["python_rng"])
    random.setstate((version, tuple(internal), gauss))
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def _deepspeed_safe_globals() -> list[Any]:
    """The plain DeepSpeed record classes that ZeRO optimizer states pickle (checked for
    ZeRO 1, 2 and 3 with deepspeed 0.19): allowed by the weights-only unpickler."""
    from deepspeed.runtime.fp16.loss_scaler import LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, ZeroStageEnum, fragment_address]


@contextlib.contextmanager
def _weights_only_deepspeed_loads(engine: Any) -> Iterator[None]:
    """Make DeepSpeed read checkpoints with `torch.load(weights_only=True)`.

    DeepSpeed's checkpoint engine calls `torch.load(..., weights_only=False)`, which would run
    any code a tampered file carries; for the length of a load its `load` goes through the
    weights-only unpickler instead.
    """
    ckpt_engine = getattr(engine, "checkpoint_engine", None)
    if ckpt_engine is None:
        yield
        return
    allowed = _deepspeed_safe_globals()

    def weights_only_load(path: str, map_location: Any = None) -> Any:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location=map_location, weights_only=True)

    ckpt_engine.load = weights_only_load
    try:
        yield
    finally:
        del ckpt_engine.load  # the class's own method again


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
