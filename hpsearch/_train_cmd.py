"""`hpsearch train`: one configuration, no Ray, a progress bar and a one-screen summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from trainables.errors import ConfigError
from trainables.minbert.config import TrialConfig, load_trial_config

# What --smoke-test changes: a few steps on a little data, same code path.
SMOKE_OVERRIDES = [
    "data.max_train_examples=64",
    "data.max_eval_examples=48",
    "data.train_eval_examples=32",
    "data.max_length=48",
    "train.max_steps=4",
    "train.evals_per_epoch=2",
    "train.batch_size=8",
]


def resolve_train_config(args: argparse.Namespace) -> TrialConfig:
    overrides = list(SMOKE_OVERRIDES) if args.smoke_test else []
    overrides += list(args.overrides)
    if args.data_dir:
        data_dir = Path(args.data_dir)
        if not data_dir.is_dir():
            raise ConfigError(
                f"--data-dir {data_dir} does not exist: pass the folder holding the "
                "CS224N files (see `hpsearch data download`)"
            )
        overrides.append(f"data.data_dir={data_dir.resolve()}")
    return load_trial_config(args.config, overrides)


def _out_dir(args: argparse.Namespace) -> Path:
    if args.out:
        out = Path(args.out)
    else:
        out = Path("runs") / f"{Path(args.config).stem}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.resume:
        if not out.is_dir():
            raise ConfigError(
                f"--resume: run folder {out} does not exist: pass the --out of the run to continue"
            )
    elif out.exists() and any(out.iterdir()):
        raise ConfigError(
            f"run folder {out} already holds results: pass another --out, "
            "or --resume to continue that run"
        )
    return out


def preflight(cfg: TrialConfig) -> None:
    """Check the checkpoint folder and the data files, before the run folder is created.

    A missing or truncated weights file, a data folder without its files, a file with the
    wrong columns or no usable row: each is one ConfigError here, and nothing is written
    (the token cache the data check fills is reused by the run).
    """
    from trainables.minbert import _faults
    from trainables.minbert.data import load_multitask_data
    from trainables.minbert.hf_folder import minilm_dir, resolve_checkpoint_dir
    from trainables.minbert.model import BertModel
    from trainables.minbert.tokenizer import WordPieceTokenizer

    _faults.check_env()
    m = cfg.model
    if m.checkpoint == "minilm":
        minilm_dir()
    elif m.checkpoint != "random":
        BertModel.from_pretrained(m.checkpoint)
    if m.checkpoint == "random" and m.vocab_file:
        vocab = Path(m.vocab_file)
        if not vocab.is_file():
            raise ConfigError(
                f"model.vocab_file {vocab} does not exist: pass a WordPiece "
                "vocab.txt, or leave it unset to use MiniLM's"
            )
    else:
        vocab = (
            resolve_checkpoint_dir("minilm" if m.checkpoint == "random" else m.checkpoint)
            / "vocab.txt"
        )
    load_multitask_data(cfg.data, WordPieceTokenizer(vocab), m.pair_encoding)


def run_train(args: argparse.Namespace) -> int:
    cfg = resolve_train_config(args)
    out = _out_dir(args)
    if args.resume:
        from trainables.minbert.run_checkpoint import find_checkpoint

        find_checkpoint(out)  # refuse before any work when nothing intact is there
    preflight(cfg)
    from trainables.minbert.callbacks import ProgressBar
    from trainables.minbert.trainer import train_trial

    t0 = time.perf_counter()
    summary = train_trial(
        cfg, out, callbacks=[ProgressBar()], resume_from=out if args.resume else None
    )
    print(format_summary(cfg, summary, out, time.perf_counter() - t0))
    return 0


def format_summary(cfg: TrialConfig, summary: dict[str, Any], out: Path, wall_s: float) -> str:
    ext = cfg.extensions
    on = [
        name
        for name, flag in (
            ("cosine_sts", ext.cosine_sts),
            ("pcgrad", ext.pcgrad),
            ("sequential_sts", ext.sequential_sts),
        )
        if flag
    ]
    lines = [
        "",
        f"run folder   {out}",
        f"model        {cfg.model.checkpoint}  ({cfg.model.pair_encoding}, {cfg.model.pooling} pooling)",
        f"extensions   {', '.join(on) or 'none'}; task sampling {ext.task_sampling}",
        f"training     {summary['steps']} steps, lr {cfg.train.lr:g}, dropout {cfg.model.dropout:g}, "
        f"weight decay {cfg.train.weight_decay:g}, seed {cfg.train.seed}",
        f"time         {summary['train_time_s']:.1f} s training, {wall_s:.1f} s in all; "
        f"peak memory {summary['peak_mem_mb']:.0f} MB",
        "",
        f"{'split':<8}{'SST acc':>10}{'Quora acc':>11}{'STS r':>9}{'overall':>10}",
    ]
    for split, label in (("dev", "dev"), ("train", "train*"), ("test", "test**")):
        lines.append(
            f"{label:<8}{summary[f'{split}_sst_acc']:>10.3f}{summary[f'{split}_para_acc']:>11.3f}"
            f"{summary[f'{split}_sts_r']:>9.3f}{summary[f'{split}_overall']:>10.3f}"
        )
    lines += [
        "",
        "*  a fixed subset of the training split",
        "** the held-out split of each train file (the official test files have no labels)",
        f"predictions  {out / 'predictions'}   TensorBoard  tensorboard --logdir {out / 'tb'}",
    ]
    return "\n".join(lines)
