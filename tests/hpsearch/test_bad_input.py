"""Bad input is refused before a minute of compute: one line, exit status 2, nothing written.

Every case runs the real command, `python -m hpsearch.cli ...`, in a subprocess whose working
directory is an empty folder, with `--storage-path` / `--out` inside the test's folder and
RAY_TMPDIR pointing at a folder that must never appear. After the command the test checks:
    - exit status 2;
    - stderr is exactly one line, starting with "error:", naming the culprit;
    - the test folder holds exactly what it held before (no experiment or run folder, no
      half-created storage path, nothing in the working directory);
    - Ray never started (its temp folder was never created).
The table of cases is reproduced in docs/RELIABILITY.md.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SMOKE = REPO / "search_spaces" / "smoke.yaml"
TINY = REPO / "trainables" / "configs" / "tiny.yaml"


@dataclass
class Case:
    id: str
    args: Callable[[Path], list[str]]  # given the case folder, the command line after `hpsearch`
    expect: str  # a regular expression the error line must match
    setup: Callable[[Path], None] = lambda root: None
    env: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------- input builders
def _space(
    root: Path,
    mutate: Callable[[dict], None] | None = None,
    text: str | None = None,
    name: str = "space.yaml",
) -> Path:
    path = root / "inputs" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if text is None:
        doc = yaml.safe_load(SMOKE.read_text())
        if mutate:
            mutate(doc)
        text = yaml.safe_dump(doc, sort_keys=False)
    path.write_text(text)
    return path


def _sweep(
    *extra: str, space: str = "space.yaml", storage: str = "store"
) -> Callable[[Path], list[str]]:
    """`sweep` of inputs/SPACE into STORAGE (relative to the case folder, or absolute)."""

    def args(root: Path) -> list[str]:
        return [
            "sweep",
            str(root / "inputs" / space),
            "--storage-path",
            str(root / storage),
            "--num-cpus",
            "2",
            *extra,
        ]

    return args


def _with_space(mutate: Callable[[dict], None] | None = None, text: str | None = None):
    return lambda root: _space(root, mutate, text)


def _with_file(name: str) -> Callable[[Path], None]:
    """The smoke space plus a plain file inputs/NAME where a folder is expected."""

    def setup(root: Path) -> None:
        _space(root)
        (root / "inputs" / name).write_text("not a folder\n")

    return setup


def _param(key: str, spec: dict) -> Callable[[dict], None]:
    return lambda doc: doc["parameters"].__setitem__(key, spec)


def _search(key: str, value) -> Callable[[dict], None]:
    return lambda doc: doc["search"].__setitem__(key, value)


def _data(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    """The smoke space plus a copy of the synthetic data set, broken by `edit`."""

    def setup(root: Path) -> None:
        _space(root)
        data = root / "inputs" / "data"
        shutil.copytree(_SYNTH_DIR, data)
        edit(data)

    return setup


def _rewrite(name: str, change: Callable[[list[str]], list[str]]) -> Callable[[Path], None]:
    def edit(data: Path) -> None:
        lines = (data / name).read_text().splitlines()
        (data / name).write_text("\n".join(change(lines)) + "\n")

    return edit


def _ckpt(edit: Callable[[Path], None]) -> Callable[[Path], None]:
    """The smoke space plus a copy of a tiny exported BERT folder, broken by `edit`."""

    def setup(root: Path) -> None:
        _space(root)
        folder = root / "inputs" / "bert"
        shutil.copytree(_BERT_DIR, folder)
        edit(folder)

    return setup


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _run_dir(with_checkpoint: bool) -> Callable[[Path], None]:
    """A run folder of `hpsearch train`: no checkpoint, or one never sealed by a manifest."""

    def setup(root: Path) -> None:
        run = root / "inputs" / "run"
        (run / "checkpoints").mkdir(parents=True)
        (run / "config.json").write_text("{}")
        if with_checkpoint:
            step = run / "checkpoints" / "step-00000004"
            step.mkdir()
            (step / "trainer_state.pt").write_bytes(b"\x80\x02half a pickle")

    return setup


def _cluster(mutate: Callable[[dict], None] | None = None, text: str | None = None):
    def setup(root: Path) -> None:
        path = root / "inputs" / "cluster.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        if text is not None:
            path.write_text(text)
            return
        doc = yaml.safe_load((REPO / "cluster.yaml").read_text())
        if mutate:
            mutate(doc)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))

    return setup


def _exp_dir(experiment_json: str | None) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        exp = root / "inputs" / "exp"
        exp.mkdir(parents=True)
        if experiment_json is not None:
            (exp / "experiment.json").write_text(experiment_json)
            (exp / "search_space.yaml").write_text(SMOKE.read_text())

    return setup


def _no_gpu() -> bool:
    import torch

    return torch.cuda.device_count() == 0


_SYNTH_DIR: Path = Path()  # set by the module fixture
_BERT_DIR: Path = Path()

CASES = [
    # -- search-space files -------------------------------------------------------------
    Case("space: file missing", _sweep(space="absent.yaml"), r"absent\.yaml does not exist"),
    Case(
        "space: YAML syntax",
        _sweep(),
        r"space\.yaml: invalid YAML at line \d+",
        _with_space(text="name: broken\nbase: {model.hidden_size: 32\nsearch: {}\n"),
    ),
    Case(
        "space: top level not a mapping",
        _sweep(),
        r"top level must be a mapping",
        _with_space(text="- train.lr\n- model.dropout\n"),
    ),
    Case(
        "space: unknown top-level key",
        _sweep(),
        r"parameterz",
        _with_space(lambda d: d.__setitem__("parameterz", {})),
    ),
    Case(
        "space: unknown config key",
        _sweep(),
        r"train\.lrr.*did you mean 'train\.lr'",
        _with_space(_param("train.lrr", {"type": "float", "low": 1e-4, "high": 1e-2})),
    ),
    Case(
        "space: unknown extension toggle",
        _sweep(),
        r"extensions\.gradnorm",
        _with_space(
            _param("extensions.gradnorm", {"type": "categorical", "choices": [False, True]})
        ),
    ),
    Case(
        "space: range low above high",
        _sweep(),
        r"train\.lr",
        _with_space(_param("train.lr", {"type": "float", "low": 1e-2, "high": 1e-4})),
    ),
    Case(
        "space: log range from zero",
        _sweep(),
        r"train\.lr",
        _with_space(_param("train.lr", {"type": "float", "low": 0.0, "high": 1e-2, "log": True})),
    ),
    Case(
        "space: condition points nowhere",
        _sweep(),
        r"extensions\.pcgrad",
        _with_space(
            _param(
                "extensions.sequential_sts_epochs",
                {"type": "int", "low": 1, "high": 2, "when": {"extensions.pcgrad_typo": True}},
            )
        ),
    ),
    Case(
        "space: unknown sampler",
        _sweep(),
        r"search\.sampler.*unknown sampler 'tpee'",
        _with_space(_search("sampler", "tpee")),
    ),
    Case(
        "space: searching on the test split",
        _sweep(),
        r"test_overall.*dev_overall",
        _with_space(_search("metric", "test_overall")),
    ),
    Case(
        "space: num_samples 0",
        _sweep(),
        r"search\.num_samples",
        _with_space(_search("num_samples", 0)),
    ),
    Case(
        "space: key given twice",
        _sweep(),
        r"appears twice",
        _with_space(
            text=SMOKE.read_text().replace(
                "  sampler: tpe\n", "  sampler: tpe\n  sampler: random\n"
            )
        ),
    ),
    Case(
        "space: grid over a float range",
        _sweep(),
        r"grid cannot enumerate",
        _with_space(_search("sampler", "grid")),
    ),
    Case(
        "space: empty file",
        _sweep(),
        r"space\.yaml: the file is empty: .*parameters, variants or seeds",
        _with_space(text="# to be written\n"),
    ),
    Case(
        "space: nothing to search",
        _sweep(),
        r"space\.yaml: nothing to search: .*no parameters, variants or seeds",
        _with_space(
            text="name: same\nbase: {model.checkpoint: random}\nsearch: {num_samples: 2}\n"
        ),
    ),
    # -- the storage path --------------------------------------------------------------
    Case(
        "storage: an existing file",
        _sweep(storage="inputs/results"),
        r"--storage-path \S+/inputs/results is a file, not a folder",
        _with_file("results"),
    ),
    Case(
        "storage: under a file",
        _sweep(storage="inputs/results/sweeps"),
        r"--storage-path \S+/results/sweeps cannot be created: \S+/inputs/results is a file",
        _with_file("results"),
    ),
    Case(
        "storage: no permission to create it",
        _sweep(storage="/proc/self/results"),  # a folder nobody may write in, root included
        r"--storage-path /proc/\d+/results cannot be created in /proc/\d+ \(permission denied\)",
        _with_space(),
    ),
    # -- configuration overrides ------------------------------------------------------
    Case(
        "override: unknown key",
        _sweep("train.lrr=1e-3"),
        r"train\.lrr.*did you mean",
        _with_space(),
    ),
    Case(
        "override: out of range",
        _sweep("train.weight_decay=-1"),
        r"train\.weight_decay",
        _with_space(),
    ),
    Case(
        "override: not key=value",
        _sweep("train.lr"),
        r"override 'train\.lr' is not of the form",
        _with_space(),
    ),
    Case(
        "override: wrong type",
        _sweep("train.batch_size=many"),
        r"train\.batch_size",
        _with_space(),
    ),
    Case(
        "override: incompatible settings",
        _sweep("extensions.pcgrad=true", "train.deepspeed.zero_stage=3"),
        r"ZeRO-3",
        _with_space(),
    ),
    Case(
        "override: train, unknown section",
        lambda r: ["train", str(TINY), "trainer.lr=1", "--out", str(r / "out")],
        r"trainer\.lr",
    ),
    # -- command-line options ----------------------------------------------------------
    Case(
        "option: unknown flag",
        _sweep("--max-trials", "3"),
        r"unrecognized arguments: --max-trials",
        _with_space(),
    ),
    Case(
        "option: --num-samples 0",
        _sweep("--num-samples", "0"),
        r"--num-samples.*>= 1",
        _with_space(),
    ),
    Case(
        "option: --max-failures -1",
        _sweep("--max-failures", "-1"),
        r"--max-failures.*>= 0",
        _with_space(),
    ),
    Case(
        "option: --time-limit-per-trial 0",
        _sweep("--time-limit-per-trial", "0"),
        r"--time-limit-per-trial.*> 0",
        _with_space(),
    ),
    Case(
        "option: trial larger than the machine",
        _sweep("--cpus-per-trial", "8"),
        r"needs 8 CPUs .* local Ray has 2",
        _with_space(),
    ),
    pytest.param(
        Case(
            "option: GPUs on a machine without one",
            _sweep("--gpus-per-trial", "1"),
            r"--gpus-per-trial 1 but this machine has 0 GPU",
            _with_space(),
        ),
        marks=pytest.mark.skipif("not _no_gpu()", reason="this machine has a GPU"),
    ),
    Case(
        "option: experiment name with a slash",
        _sweep("--name", "a/b"),
        r"'a/b' is not a plain folder name",
        _with_space(),
    ),
    Case(
        "option: malformed --address",
        _sweep("--address", "head node"),
        r"--address 'head node' is not a Ray address",
        _with_space(),
    ),
    Case(
        "option: TensorBoard on a public address",
        lambda r: ["tensorboard", str(r / "inputs" / "exp"), "--host", "0.0.0.0"],
        r"not a loopback address",
        _exp_dir(None),
    ),
    Case(
        "option: malformed HPSEARCH_FAULT hook",
        _sweep(),
        r"HPSEARCH_FAULT: unknown fault",
        _with_space(),
        env={"HPSEARCH_FAULT": "explode:1"},
    ),
    # -- data folders -----------------------------------------------------------------
    Case(
        "data: folder missing",
        _sweep("--data-dir", "/nonexistent/cs224n"),
        r"--data-dir /nonexistent/cs224n does not exist",
        _with_space(),
    ),
    Case(
        "data: a file missing",
        lambda r: _sweep("--data-dir", str(r / "inputs/data"))(r),
        r"has no sts-train\.csv",
        _data(lambda d: (d / "sts-train.csv").unlink()),
    ),
    Case(
        "data: wrong columns",
        lambda r: _sweep("--data-dir", str(r / "inputs/data"))(r),
        r"ids-sst-train\.csv: missing column\(s\) sentiment",
        _data(
            _rewrite(
                "ids-sst-train.csv", lambda ls: [ls[0].replace("sentiment", "label"), *ls[1:]]
            )
        ),
    ),
    Case(
        "data: labels out of range",
        lambda r: _sweep("--data-dir", str(r / "inputs/data"))(r),
        r"quora-dev\.csv has no usable rows \(.*\d+ label out of range\)",
        _data(
            _rewrite(
                "quora-dev.csv",
                lambda ls: [ls[0], *(re.sub(r"\t[01](\.0)?$", "\t7", x) for x in ls[1:])],
            )
        ),
    ),
    Case(
        "data: empty file",
        lambda r: _sweep("--data-dir", str(r / "inputs/data"))(r),
        r"sts-dev\.csv is empty",
        _data(lambda d: (d / "sts-dev.csv").write_text("")),
    ),
    Case(
        "data: not UTF-8",
        lambda r: _sweep("--data-dir", str(r / "inputs/data"))(r),
        r"ids-sst-dev\.csv is not UTF-8",
        _data(
            lambda d: (d / "ids-sst-dev.csv").write_bytes(
                (d / "ids-sst-dev.csv").read_bytes() + b"\t99\tcaf\xe9 \xff\t2\n"
            )
        ),
    ),
    Case(
        "data: train command, bad folder",
        lambda r: [
            "train",
            str(TINY),
            "--data-dir",
            str(r / "inputs/data"),
            "--out",
            str(r / "out"),
        ],
        r"has no ids-sst-train\.csv",
        _data(lambda d: (d / "ids-sst-train.csv").unlink()),
    ),
    # -- checkpoint folders -------------------------------------------------------------
    Case(
        "checkpoint: folder missing",
        _sweep("model.checkpoint=/nonexistent/bert"),
        r"checkpoint folder /nonexistent/bert does not exist",
        _with_space(),
    ),
    Case(
        "checkpoint: no weights file",
        lambda r: _sweep(f"model.checkpoint={r}/inputs/bert")(r),
        r"has no model\.safetensors or pytorch_model\.bin",
        _ckpt(lambda f: (f / "model.safetensors").unlink()),
    ),
    Case(
        "checkpoint: truncated weights",
        lambda r: _sweep(f"model.checkpoint={r}/inputs/bert")(r),
        r"model\.safetensors is corrupt or truncated",
        _ckpt(lambda f: _truncate(f / "model.safetensors")),
    ),
    Case(
        "checkpoint: malformed config.json",
        lambda r: [
            "train",
            str(TINY),
            f"model.checkpoint={r}/inputs/bert",
            "--out",
            str(r / "out"),
        ],
        r"config\.json",
        _ckpt(lambda f: (f / "config.json").write_text('{"hidden_size": ')),
    ),
    Case(
        "checkpoint: --resume without a checkpoint",
        lambda r: ["train", str(TINY), "--resume", "--out", str(r / "inputs/run")],
        r"no checkpoint found in .*run",
        _run_dir(with_checkpoint=False),
    ),
    Case(
        "checkpoint: --resume from a checkpoint never sealed",
        lambda r: ["train", str(TINY), "--resume", "--out", str(r / "inputs/run")],
        r"no intact checkpoint .*manifest missing",
        _run_dir(with_checkpoint=True),
    ),
    # -- experiment folders -------------------------------------------------------------
    Case(
        "experiment: resume a folder that is not one",
        lambda r: ["resume", str(r / "inputs/exp")],
        r"not an hpsearch experiment folder",
        _exp_dir(None),
    ),
    Case(
        "experiment: resume with experiment.json cut short",
        lambda r: ["resume", str(r / "inputs/exp")],
        r"experiment\.json is unreadable",
        _exp_dir('{"name": "smoke", "settings": {'),
    ),
    Case(
        "experiment: report on a folder that is not one",
        lambda r: ["report", str(r / "inputs/exp")],
        r"is not an experiment folder",
        _exp_dir(None),
    ),
    # -- cluster files -------------------------------------------------------------------
    Case(
        "cluster: file missing",
        lambda r: ["check-cluster", str(r / "inputs/none.yaml")],
        r"none\.yaml",
    ),
    Case(
        "cluster: YAML syntax",
        lambda r: ["check-cluster", str(r / "inputs/cluster.yaml")],
        r"cluster\.yaml",
        _cluster(text="cluster_name: x\nprovider: [aws\n"),
    ),
    Case(
        "cluster: unknown top-level key",
        lambda r: ["check-cluster", str(r / "inputs/cluster.yaml")],
        r"max_wrokers",
        _cluster(lambda d: d.__setitem__("max_wrokers", 3)),
    ),
    Case(
        "cluster: head node type that is not declared",
        lambda r: ["check-cluster", str(r / "inputs/cluster.yaml")],
        r"head_node_type",
        _cluster(lambda d: d.__setitem__("head_node_type", "gpu_head")),
    ),
]


@pytest.fixture(scope="module", autouse=True)
def _shared_inputs(tmp_path_factory):
    """A synthetic CS224N-format data set and a tiny exported BERT folder, built once."""
    global _SYNTH_DIR, _BERT_DIR
    from trainables.minbert.hf_folder import minilm_dir, save_pretrained
    from trainables.minbert.model import BertConfig, BertModel
    from trainables.minbert.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("bad-input-shared")
    _SYNTH_DIR = root / "synthetic"
    write_synthetic_dataset(_SYNTH_DIR, seed=0)
    vocab = minilm_dir() / "vocab.txt"
    model = BertModel.from_config(
        BertConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), seed=0
    )
    _BERT_DIR = save_pretrained(model, root / "bert", vocab)


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_is_refused_in_one_line(case: Case, tmp_path: Path) -> None:
    case.setup(tmp_path)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    before = _listing(tmp_path)
    ray_tmp = tmp_path.parent / f"{tmp_path.name}-ray"
    env = {k: v for k, v in os.environ.items() if k != "HPSEARCH_FAULT"}
    env.update(
        {
            "RAY_TMPDIR": str(ray_tmp),
            "HF_HUB_OFFLINE": "1",
            **case.env,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", *case.args(tmp_path)],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    err = proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}\nstdout: {proc.stdout}\nstderr: {err}"
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(case.expect, lines[0]), lines[0]
    assert _listing(tmp_path) == before, "the command wrote files"
    assert not ray_tmp.exists(), "Ray was started"


def test_an_armed_fault_hook_is_named_in_one_warning_line(tmp_path: Path) -> None:
    """A well-formed HPSEARCH_FAULT never fires silently: every command says so on stderr."""
    env = {**os.environ, "HPSEARCH_FAULT": "nan_at_step:3@seed=1; sleep_in_report:0.5"}
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "data", "synth", "--dest", str(tmp_path / "d")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.splitlines() == [
        "warning: HPSEARCH_FAULT is set: fault injection armed "
        "(nan_at_step:3@seed=1; sleep_in_report:0.5); unset it for real runs"
    ]
    assert "synthetic data set written" in proc.stdout
    env.pop("HPSEARCH_FAULT")  # unset: not a word about it
    proc = subprocess.run(
        [sys.executable, "-m", "hpsearch.cli", "data", "synth", "--dest", str(tmp_path / "e")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "HPSEARCH_FAULT" not in proc.stderr, proc.stderr
