"""`hpsearch train`: one configuration, no Ray, a progress bar and a one-screen summary."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from hpsearch import preflight
from trainables.errors import ConfigError
from trainables.minbert.config import TrialConfig, load_trial_config
from trainables.minbert.extensions.registry import toggles


def resolve_train_config(args: argparse.Namespace) -> TrialConfig:
    """The run's config: the file, then --smoke-test, the dotted overrides, --data-dir."""
    smoke = preflight.smoke_overrides() if args.smoke_test else {}
    dotted = [f"{key}={value}" for key, value in smoke.items()] + list(args.overrides)
    if args.data_dir:
        data_dir = preflight.data_dir_override(args.data_dir)
        dotted += [f"{key}={value}" for key, value in data_dir.items()]
    return load_trial_config(args.config, dotted)


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


def run_train(args: argparse.Namespace) -> int:
    """`hpsearch train`: check, train with a progress bar, print the summary."""
    cfg = resolve_train_config(args)
    out = _out_dir(args)
    if args.resume:
        from trainables.minbert.run_checkpoint import find_checkpoint

        find_checkpoint(out)  # refuse before any work when nothing intact is there
    preflight.check_trial(cfg)  # checkpoint, vocabulary and data, before the run folder
    from trainables.minbert.callbacks import ProgressBar
    from trainables.minbert.trainer import train_trial

    t0 = time.perf_counter()
    summary = train_trial(
        cfg, out, callbacks=[ProgressBar()], resume_from=out if args.resume else None
    )
    print(format_summary(cfg, summary, out, time.perf_counter() - t0))
    return 0


def format_summary(cfg: TrialConfig, summary: dict[str, Any], out: Path, wall_s: float) -> str:
    """The one-screen summary of a finished run."""
    ext = cfg.extensions
    flat = cfg.to_flat_dict()
    on = [toggle.name for toggle in toggles() if flat.get(toggle.key) is True]
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
