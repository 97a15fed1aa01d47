"""What `hpsearch sweep` prints: one progress line per change, the failures, and nothing of
Ray's own output, which goes to EXP_DIR/driver.log (hpsearch.progress)."""

from __future__ import annotations

import io
import json
import logging
import sys
from pathlib import Path

import yaml

from hpsearch import progress

REPO = Path(__file__).resolve().parents[2]


def _grid_space(tmp_path: Path, name: str, seeds: list[int], **search: object) -> Path:
    doc = yaml.safe_load((REPO / "search_spaces" / "smoke.yaml").read_text())
    doc["name"] = name
    doc["base"].update({"train.lr": 1.0e-3})
    doc["search"] = {"sampler": "grid", "scheduler": "none", "max_concurrent": 2, **search}
    doc["parameters"] = {"train.epochs": {"type": "categorical", "choices": [1]}}
    doc["seeds"] = seeds
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_console_shows_progress_and_failures_while_ray_output_goes_to_the_log(
    tmp_path, cli, hpsearch_environ
):
    """Three tiny trials, the one with seed 2 raising at step 2: the terminal gets a short
    progress log (not Tune's tables), the final counts and best score, and the failed trial's
    reason in one line; driver.log gets Ray's tables, the trials' output and the traceback."""
    space = _grid_space(tmp_path, "console", [0, 1, 2])
    hpsearch_environ["HPSEARCH_FAULT"] = "raise_at_step:2@seed=2"
    proc = cli(
        "sweep",
        str(space),
        "--storage-path",
        str(tmp_path),
        "--num-cpus",
        "2",
        "--max-failures",
        "0",
        "--no-report",
        timeout=900,
    )
    exp = tmp_path / "console"
    out = proc.stdout
    lines = out.splitlines()
    assert len(lines) <= 30, out  # before: about 260 lines for a sweep like this one
    assert "Trial status" not in out and "╭" not in out and "pid=" not in out, out
    records = {p.stem: json.loads(p.read_text()) for p in (exp / "trials").glob("*.json")}
    failed = [tid for tid, r in records.items() if r["status"] == "failed"]
    assert len(failed) == 1 and sum(r["status"] == "finished" for r in records.values()) == 2
    # the failure, in one line, with the record's reason
    failure_lines = [ln for ln in lines if ln.startswith(f"trial {failed[0]} failed: ")]
    assert len(failure_lines) == 1, out
    assert "InjectedFault" in failure_lines[0] and records[failed[0]]["reason"] in failure_lines[0]
    # the last progress line: the final counts and the best finished score
    best = max(
        json.loads((exp / "runs" / tid / "summary.json").read_text())["dev_overall"]
        for tid, r in records.items()
        if r["status"] == "finished"
    )
    final = [ln for ln in lines if ln.startswith("trials 3/3 ended")]
    assert final, out
    assert "2 finished, 0 stopped, 1 failed; 0 running" in final[-1], final[-1]
    assert f"best dev_overall {best:.4f}" in final[-1], (final[-1], best)
    assert lines[-2].startswith("sweep console: 3 trials in"), out
    assert "2 finished" in lines[-2] and "1 failed" in lines[-2], out
    # stderr: only the fault hook's own warning line (every command prints it when armed)
    assert [ln for ln in proc.stderr.splitlines() if "HPSEARCH_FAULT" not in ln] == []
    log = (exp / progress.DRIVER_LOG).read_text()
    assert "Trial status" in log  # Tune's tables
    assert "(tune_trial pid=" in log  # what the trials printed, forwarded by Ray
    assert "InjectedFault" in log and "Traceback" in log  # the failure in full
    assert "\x1b[" not in log  # no terminal colour codes


def test_quiet_console_sends_prints_warnings_and_log_records_to_the_file(tmp_path):
    """Inside quiet_console: print() and log records of a handler holding the terminal's
    stream go to the file (colour codes dropped); console() is still the terminal; all is
    restored after."""
    terminal = io.StringIO()
    handler = logging.StreamHandler(terminal)
    lib = logging.getLogger("hpsearch-test-lib")
    lib.addHandler(handler)
    lib.propagate = False
    before = sys.stdout
    sys.stdout = terminal
    try:
        with progress.quiet_console(tmp_path / "driver.log"):
            print("\x1b[36mfrom a library\x1b[0m")
            lib.warning("a log record")
            progress.console().write("for the user\n")
        print("after")
    finally:
        sys.stdout = before
        lib.removeHandler(handler)
    log = (tmp_path / "driver.log").read_text()
    assert "from a library" in log and "\x1b[" not in log
    assert "a log record" in log
    assert terminal.getvalue() == "for the user\nafter\n"
    assert handler.stream is terminal


def test_format_duration():
    assert progress.format_duration(9.4) == "0:09"
    assert progress.format_duration(247) == "4:07"
    assert progress.format_duration(3909) == "1:05:09"
    assert progress.format_duration(-3) == "0:00"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_on_a_terminal_the_progress_line_is_rewritten_in_place(tmp_path, monkeypatch):
    """Tune's hooks in the order a two-trial sweep calls them (real Trial objects, real
    records): on a TTY the line is rewritten with '\\r'; only the failure gets a line of its
    own, and the final state ends with a newline."""
    from ray.tune.experiment import Trial

    from hpsearch.experiment import Experiment
    from hpsearch.settings import SweepSettings
    from hpsearch.space_parser import load_search_space

    space_file = REPO / "search_spaces" / "smoke.yaml"
    space = load_search_space(space_file, overrides={"search.num_samples": 2})
    exp = Experiment.create(tmp_path / "tty", space_file, space, SweepSettings(), {}, [])
    exp.trials_dir.mkdir()
    bar = progress.SweepProgress(exp, space)
    ok, bad = (Trial("tune_trial", config={}, trial_id=t, stub=True) for t in ("aaaa", "bbbb"))
    terminal = _Terminal()
    monkeypatch.setenv("COLUMNS", "200")  # shutil.get_terminal_size reads it first
    before = sys.stdout
    sys.stdout = terminal
    try:
        with progress.quiet_console(tmp_path / "driver.log"):
            bar.setup()
            for trial in (ok, bad):
                bar.on_trial_start(0, [], trial)
            bar.on_trial_result(0, [], ok, {"dev_overall": 0.25})
            bar.on_trial_result(0, [], bad, {"dev_overall": 0.5})
            bar.on_trial_result(0, [], ok, {"dev_overall": 0.375, "final": True})
            (exp.trials_dir / "aaaa.json").write_text(json.dumps({"status": "finished"}))
            bar.on_trial_complete(0, [], ok)
            reason = "RuntimeError: boom; failed 1 time(s), retries exhausted (--max-failures 0)"
            (exp.trials_dir / "bbbb.json").write_text(
                json.dumps({"status": "failed", "reason": reason})
            )
            bar.on_trial_error(0, [], bad)
            bar.on_experiment_end([ok, bad])
    finally:
        sys.stdout = before
    shown = terminal.getvalue()
    rows = shown.split("\n")
    assert len(rows) == 3 and rows[-1] == "", shown  # the failure, the final line, nothing else
    assert rows[0].endswith(f"trial bbbb failed: {reason}"), rows[0]
    final = rows[1].split("\r")[-1]
    assert final.startswith("trials 2/2 ended: 1 finished, 0 stopped, 1 failed; 0 running")
    # the failed trial's better score is never the best; the finished one's latest is
    assert "best dev_overall 0.3750 (trial aaaa)" in final, final
    assert shown.count("\r") >= 8
    # narrower terminals: shorter forms of the same line
    form2 = "trials 2/2: 1 done, 0 running, 0 stopped, 1 failed | best dev_overall 0.3750 | done"
    assert bar.line(90)[1] == form2
    assert bar.line(79)[1] == "2/2: 1 done 0 run 0 stop 1 fail | best 0.3750 | done"
    assert bar.line(30)[1] == "2/2: 1 done 0 run 0 stop 1 fai"  # cut
    assert (tmp_path / "driver.log").read_text().count("\n") <= 2  # nothing Ray-side here
