"""The `hpsearch` command.

    hpsearch train CONFIG.yaml [section.key=value ...] [--data-dir DIR] [--out DIR] [--smoke-test]
    hpsearch sweep SPACE.yaml [--name N] [--storage-path DIR] [--num-samples N] ...
    hpsearch resume EXP_DIR
    hpsearch slurm SPACE.yaml [sweep options] [--nodes N --time T ...] [--submit]
    hpsearch report EXP_DIR
    hpsearch tensorboard EXP_DIR [--port P]
    hpsearch dashboard EXP_DIR [--port P]
    hpsearch check-cluster cluster.yaml
    hpsearch data download --dest DIR
    hpsearch data synth --dest DIR

Bad input ends in one line on stderr, `error: <what is wrong and how to fix it>`, and exit
status 2, before anything is launched or written. Heavy libraries are imported only by the
subcommand that needs them, so `--help` and input errors answer at once.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hpsearch import dashboard, tensorboard
from hpsearch.settings import SweepSettings
from hpsearch.slurm import add_job_arguments as add_slurm_job_arguments
from trainables.errors import ConfigError

EXIT_BAD_INPUT = 2
_default = SweepSettings.default  # every sweep option's default lives in SweepSettings


def _number(kind: type[int] | type[float], low: float, strict: bool) -> Callable[[str], Any]:
    """An argparse type: a finite number of `kind` above `low` (strictly, or at least)."""
    what = "a whole number" if kind is int else "a number"
    bound = f"> {low:g}" if strict else f">= {low:g}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if (
            value != value
            or value in (float("inf"), float("-inf"))
            or (value <= low if strict else value < low)
        ):
            raise argparse.ArgumentTypeError(f"expected {what} {bound}, got {text}")
        return value

    parse.__name__ = f"{kind.__name__} {bound}"  # what argparse names in its messages
    return parse


_positive_int = _number(int, 1, strict=False)
_non_negative_int = _number(int, 0, strict=False)
_positive_float = _number(float, 0, strict=True)
_non_negative_float = _number(float, 0, strict=False)


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line with exit status 2, like every other
    input error."""

    def error(self, message: str) -> Any:
        self.exit(EXIT_BAD_INPUT, f"error: {self.prog}: {message} (see `{self.prog} --help`)\n")


def add_sweep_arguments(sweep: argparse.ArgumentParser) -> None:
    """`hpsearch sweep`'s options after the space (also `hpsearch slurm`'s); their defaults
    come from SweepSettings."""
    sweep.add_argument(
        "overrides", nargs="*", help="dotted trial-config overrides applied to every trial"
    )
    sweep.add_argument("--name", help="experiment name (default: the space's name)")
    sweep.add_argument(
        "--storage-path",
        default=_default("storage_path"),
        help=f"where experiments live (default: {_default('storage_path')}/)",
    )
    sweep.add_argument(
        "--num-samples", type=_positive_int, help="trials to run (default: the space's)"
    )
    sweep.add_argument("--max-concurrent", type=_positive_int, help="trials running at once")
    sweep.add_argument(
        "--cpus-per-trial",
        type=_positive_float,
        default=_default("cpus_per_trial"),
        help="CPUs per trial worker",
    )
    sweep.add_argument(
        "--gpus-per-trial",
        type=_non_negative_float,
        default=_default("gpus_per_trial"),
        help="GPUs per trial worker",
    )
    sweep.add_argument(
        "--workers-per-trial",
        type=_positive_int,
        default=_default("workers_per_trial"),
        help="data-parallel DeepSpeed workers per trial (Ray Train)",
    )
    sweep.add_argument(
        "--data-dir", help="folder with the CS224N files (default: built-in synthetic data)"
    )
    sweep.add_argument(
        "--address", help="Ray cluster address (e.g. auto or HOST:6379); default: a local Ray"
    )
    sweep.add_argument(
        "--num-cpus", type=_positive_int, help="CPUs of the local Ray (default: all)"
    )
    sweep.add_argument(
        "--max-failures",
        type=_non_negative_int,
        default=_default("max_failures"),
        help=f"retries of a crashed trial from its last checkpoint "
        f"(default {_default('max_failures')})",
    )
    sweep.add_argument(
        "--time-limit-per-trial",
        type=_positive_float,
        default=_default("time_limit_per_trial"),
        help="seconds a trial may run before it is stopped and marked failed",
    )
    sweep.add_argument(
        "--exist-ok-suffix",
        action="store_true",
        help="if the experiment folder exists, use NAME-2, NAME-3, ... instead of refusing",
    )
    sweep.add_argument(
        "--warm-start",
        metavar="EXP_DIR",
        help="seed the sampler with the finished trials of an earlier experiment",
    )
    sweep.add_argument("--no-report", action="store_true", help="skip the report at the end")
    sweep.add_argument(
        "--smoke-test", action="store_true", help="2 tiny trials, to check the set-up"
    )


def build_parser() -> argparse.ArgumentParser:
    """The `hpsearch` command line; the sweep options' defaults come from SweepSettings."""
    parser = OneLineErrorParser(
        prog="hpsearch", description="Distributed hyperparameter search for multitask minBERT."
    )
    commands = parser.add_subparsers(
        dest="command", required=True, parser_class=OneLineErrorParser
    )

    train = commands.add_parser("train", help="train one configuration, without Ray")
    train.add_argument(
        "config", help="trial config YAML (sections model, data, train, extensions)"
    )
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=2e-5")
    train.add_argument(
        "--data-dir", help="folder with the CS224N files (default: built-in synthetic data)"
    )
    train.add_argument(
        "--out", help="run folder (default: runs/<config name>-<time>); must not exist yet"
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in --out from its newest checkpoint",
    )
    train.add_argument(
        "--smoke-test",
        action="store_true",
        help="a few steps on a little data, to check the set-up",
    )

    sweep = commands.add_parser("sweep", help="run a search space as a Ray Tune experiment")
    sweep.add_argument("space", help="search space YAML (see search_spaces/)")
    add_sweep_arguments(sweep)

    slurm = commands.add_parser(
        "slurm", help="write (and --submit) a SLURM batch job that runs a sweep on Ray"
    )
    slurm.add_argument("space", nargs="?", help="search space YAML (not with --resume)")
    add_sweep_arguments(slurm)
    add_slurm_job_arguments(slurm)

    resume = commands.add_parser("resume", help="continue an interrupted experiment")
    resume.add_argument("exp_dir")
    resume.add_argument("--address", help="Ray cluster address")
    resume.add_argument("--num-cpus", type=_positive_int)
    resume.add_argument("--no-report", action="store_true")

    report = commands.add_parser("report", help="write the ablation report of an experiment")
    report.add_argument("exp_dir")

    export = commands.add_parser(
        "export",
        help="copy an experiment's checkable results (report, results.csv, each finished "
        "trial's config, summary, metrics and CS224N prediction files) to a new folder",
    )
    export.add_argument("exp_dir", help="an experiment folder, or an `hpsearch train` run folder")
    export.add_argument("dest", help="a new (or empty) folder, e.g. docs/examples/<name>")
    export.add_argument(
        "--phases",
        nargs="+",
        metavar="PHASE",
        help="tuned ablations: the phases whose trials' files are copied (default: final "
        "reference)",
    )

    board = commands.add_parser(
        "tensorboard", help="start TensorBoard on an experiment (127.0.0.1)"
    )
    board.add_argument("exp_dir")
    board.add_argument("--port", type=int, default=tensorboard.DEFAULT_PORT)
    board.add_argument(
        "--host",
        default=tensorboard.DEFAULT_HOST,
        help="bind address; anything but loopback needs --allow-remote",
    )
    board.add_argument("--allow-remote", action="store_true")

    study_board = commands.add_parser(
        "dashboard", help="start optuna-dashboard on an experiment's study (127.0.0.1, read-only)"
    )
    study_board.add_argument("exp_dir")
    study_board.add_argument(
        "--port",
        type=int,
        default=dashboard.DEFAULT_PORT,
        help=f"port (default {dashboard.DEFAULT_PORT}; 0: any free one)",
    )
    study_board.add_argument(
        "--host",
        default=dashboard.DEFAULT_HOST,
        help="bind address; anything but loopback needs --allow-remote",
    )
    study_board.add_argument("--allow-remote", action="store_true")

    cluster = commands.add_parser("check-cluster", help="validate a Ray cluster-launcher file")
    cluster.add_argument("file")

    data = commands.add_parser("data", help="data sets")
    data_commands = data.add_subparsers(
        dest="data_command", required=True, parser_class=OneLineErrorParser
    )
    download = data_commands.add_parser(
        "download", help="fetch the official CS224N files and check them"
    )
    download.add_argument("--dest", required=True)
    download.add_argument(
        "--base-url", default=None, help="mirror of the starter repository's data/ folder"
    )
    synth = data_commands.add_parser(
        "synth", help="write the built-in synthetic data set (CS224N format)"
    )
    synth.add_argument("--dest", required=True)
    synth.add_argument("--seed", type=int, default=0)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    # Overrides may follow the options (`sweep SPACE --num-samples 4 train.lr=1e-3`), which
    # argparse cannot place after its nargs="*" positional has been filled: take them here.
    strays = [a for a in rest if a.startswith("-") or not hasattr(args, "overrides")]
    if strays:
        parser.error(f"unrecognized arguments: {' '.join(strays)}")
    if rest:
        args.overrides = [*args.overrides, *rest]
    try:
        _warn_if_faults_armed()
        return _dispatch(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt as exc:
        # A sweep's Ctrl-C ends with the command that continues it (hpsearch.sweep).
        resume = getattr(exc, "resume_command", None)
        if resume:
            print(
                "interrupted: the experiment's state is saved; continue it with", file=sys.stderr
            )
            print(resume, file=sys.stderr)
        else:
            print("interrupted", file=sys.stderr)
        return 130


def _warn_if_faults_armed() -> None:
    """One line on stderr whenever HPSEARCH_FAULT is set: a test hook must never fire
    unnoticed in a real run (a malformed value is refused: ConfigError)."""
    from trainables.minbert import faults

    if not os.environ.get(faults.ENV):
        return
    armed = faults.armed()
    print(
        f"warning: {faults.ENV} is set: fault injection armed ({faults.describe(armed)}); "
        "unset it for real runs",
        file=sys.stderr,
    )


def settings_from_args(args: argparse.Namespace) -> SweepSettings:
    """The SweepSettings of `hpsearch sweep`'s arguments (every option is a field)."""
    from trainables.minbert.config import parse_override

    names = {f.name for f in dataclasses.fields(SweepSettings)}
    given = {name: value for name, value in vars(args).items() if name in names}
    given["report"] = not args.no_report
    given["overrides"] = dict(parse_override(o) for o in args.overrides)
    return SweepSettings(**given)


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "train":
        from hpsearch._train_cmd import run_train

        return run_train(args)
    if args.command == "sweep":
        from hpsearch.sweep import run_sweep

        exp = run_sweep(args.space, settings_from_args(args))
        print(f"experiment folder: {exp}")
        return 0
    if args.command == "resume":
        from hpsearch.sweep import resume_sweep

        resume_sweep(
            args.exp_dir, address=args.address, num_cpus=args.num_cpus, report=not args.no_report
        )
        return 0
    if args.command == "slurm":
        from hpsearch.slurm import run_slurm

        return run_slurm(args, settings_from_args(args))
    if args.command == "report":
        return _report(Path(args.exp_dir))
    if args.command == "export":
        return _export(Path(args.exp_dir), Path(args.dest), args.phases)
    if args.command == "tensorboard":
        exp = Path(args.exp_dir)
        if not exp.is_dir():
            raise ConfigError(
                f"experiment folder {exp} does not exist: pass the folder a sweep wrote"
            )
        return tensorboard.serve_forever(
            exp, host=args.host, port=args.port, allow_remote=args.allow_remote
        )
    if args.command == "dashboard":
        return dashboard.serve_forever(
            args.exp_dir, host=args.host, port=args.port, allow_remote=args.allow_remote
        )
    if args.command == "check-cluster":
        from hpsearch.cluster import check_cluster_file

        summary = check_cluster_file(args.file)
        print(summary.describe())
        return 0
    if args.command == "data":
        return _data(args)
    raise AssertionError(args.command)


def _report(exp_dir: Path) -> int:
    if not exp_dir.is_dir():
        raise ConfigError(
            f"experiment folder {exp_dir} does not exist: pass the folder a sweep wrote"
        )
    from reports import ReportError, build_report

    try:
        out = build_report(exp_dir)
    except ReportError as exc:  # the same one-line contract as ConfigError
        raise ConfigError(str(exc)) from None
    print(f"report written to {out}")
    return 0


def _export(exp_dir: Path, dest: Path, phases: list[str] | None) -> int:
    from reports import ReportError
    from reports.export import export_results

    try:
        written = export_results(exp_dir, dest, phases)
    except ReportError as exc:  # the same one-line contract as ConfigError
        raise ConfigError(str(exc)) from None
    size = sum(p.stat().st_size for p in written)
    print(f"{len(written)} files ({size / 1e6:.1f} MB) exported to {dest}")
    return 0


def _data(args: argparse.Namespace) -> int:
    dest = Path(args.dest)
    if args.data_command == "download":
        from trainables.minbert.download import download_cs224n

        kwargs = {"base_url": args.base_url} if args.base_url else {}
        files = download_cs224n(dest, **kwargs)
        print(f"{len(files)} files checked and written to {dest}")
        return 0
    from trainables.minbert.synthetic import write_synthetic_dataset

    write_synthetic_dataset(dest, seed=args.seed)
    print(f"synthetic data set written to {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
