"""Run checkpoints: sealed DeepSpeed checkpoints a trial resumes from, and nothing else.

"Checkpoint" means three things in this project, each with its own module:
- a **run checkpoint** (this module): `RUN/checkpoints/step-NNNNNNNN/`, the DeepSpeed engine
  state (weights, optimizer, scheduler) plus `trainer_state.pt` (step, position in the epoch,
  random states), sealed by a `MANIFEST.json` of SHA-256 checksums;
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
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import pickle
import random
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from trainables.atomic import write_json_atomic
from trainables.errors import ConfigError

__all__ = [
    "MANIFEST",
    "TRAINER_STATE",
    "find_checkpoint",
    "load",
    "random_states",
    "restore_random_states",
    "seal",
    "stage",
    "tag_of",
    "verify_checkpoint",
]

MANIFEST = "MANIFEST.json"
TRAINER_STATE = "trainer_state.pt"


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


def seal(staging: Path, root: Path, step: int, trainer_state: dict[str, Any], keep: int) -> Path:
    """Add the trainer state and the manifest, move the checkpoint into place, prune old ones.

    Returns the sealed folder `root/step-NNNNNNNN`; only the newest `keep` are kept.
    """
    tag = tag_of(step)
    folder = staging / tag
    torch.save(trainer_state, folder / TRAINER_STATE)
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
