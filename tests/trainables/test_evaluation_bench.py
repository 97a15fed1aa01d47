"""benchmarks/bench_eval.py on a tiny random model and the synthetic set: the previous commit's
evaluation and this tree's run side by side and agree.

    .venv/bin/python -m pytest tests/trainables/test_evaluation_bench.py -q -m slow
"""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "benchmarks" / "bench_eval.py"
TINY = [
    "--checkpoint",
    "random",
    "--max-length",
    "32",
    "--threads",
    "1",
    "--repeats",
    "2",
    "--set",
    "model.hidden_size=32",
    "--set",
    "model.num_layers=2",
    "--set",
    "model.num_heads=2",
    "--set",
    "model.intermediate_size=64",
]


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_eval", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_eval"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("bench_eval", None)


def has_history() -> bool:
    if shutil.which("git") is None:
        return False
    probe = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--verify", "HEAD^{commit}"], capture_output=True
    )
    return probe.returncode == 0


@pytest.mark.slow  # two worker processes, each importing torch and tokenising the set
@pytest.mark.skipif(not has_history(), reason="needs the repository's git history")
def test_before_and_after_agree_and_the_report_holds_together(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    result = bench.main(
        [
            *TINY,
            "--set",
            f"data.cache_dir={tmp_path / 'cache'}",
            "--sweep",
            "16",
            "--json",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert result["match"], printed
    assert "predictions match: yes" in printed
    # "before" is a commit without the cached evaluation (HEAD may move while this runs)
    old_code = bench.git("show", f"{result['setup']['before']}:trainables/minbert/evaluation.py")
    assert bench.NEW_API not in old_code
    assert set(result["times_s"]) == {"A", "B", "B16"}
    assert all(len(v) == 2 and min(v) > 0 for v in result["times_s"].values())
    assert result["speedup_median"] == pytest.approx(
        result["median_s"]["A"] / result["median_s"]["B"]
    )
    sizes = result["setup"]["dev_sizes"]
    assert result["work"]["A"]["rows"] == sizes["sst"] + 2 * (sizes["para"] + sizes["sts"])
    # B encodes every distinct sentence once: no more rows than A, and the same at any batch
    assert 0 < result["work"]["B"]["rows"] <= result["work"]["A"]["rows"]
    assert 0 < result["work"]["B"]["positions"] <= result["work"]["A"]["positions"]
    assert result["work"]["B16"]["rows"] == result["work"]["B"]["rows"]
    assert result["scores"]["A"]["dev_sst_acc"] == result["scores"]["B"]["dev_sst_acc"]
    assert json.loads(out.read_text())["agreement"] == result["agreement"]
