"""The tuned-ablation mode (a `tuning:` section): each variant tuned on the same budget, then
each variant's best configuration re-run over the final seeds; bad plans refused in one line,
and a real run on tiny models killed in each phase and resumed."""

from __future__ import annotations

import copy
import json
import os
import signal
from pathlib import Path

import pytest
import yaml

from hpsearch.ablation import _phase_settings, phase_documents
from hpsearch.experiment import ABLATION_FILE, PHASES_DIR, warm_start_folder
from hpsearch.settings import SweepSettings
from hpsearch.space_parser import load_search_space
from trainables.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

TINY_BASE = {
    "model.checkpoint": "random",
    "model.hidden_size": 32,
    "model.num_layers": 2,
    "model.num_heads": 2,
    "model.intermediate_size": 64,
    "data.max_length": 32,
    "data.max_train_examples": 64,
    "data.max_eval_examples": 32,
    "data.train_eval_examples": 16,
    "train.batch_size": 8,
    "train.evals_per_epoch": 2,
    "train.seed": 0,
}

TUNED = {
    "name": "tuned",
    "base": TINY_BASE,
    "variants": {"baseline": {}, "cosine": {"extensions.cosine_sts": True}},
    "parameters": {"train.lr": {"type": "float", "low": 1.0e-4, "high": 1.0e-2, "log": True}},
    "search": {
        "sampler": "tpe",
        "seed": 0,
        "max_concurrent": 2,
        "metric": "dev_overall",
        "mode": "max",
        "scheduler": "asha",
        "asha": {"grace_period": 1, "reduction_factor": 2},
    },
    "tuning": {
        "trials_per_variant": 2,
        "final_seeds": [1, 2],
        "reference": {"train.lr": 1.0e-3},
    },
}


def _write(tmp_path: Path, doc: dict, name: str = "tuned") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def _changed(path: str, value, *, delete: bool = False) -> dict:
    """TUNED with one dotted-path entry (split on '/') set, or deleted."""
    doc = copy.deepcopy(TUNED)
    *parents, last = path.split("/")
    node = doc
    for key in parents:
        node = node[key]
    if delete:
        del node[last]
    else:
        node[last] = value
    return doc


def test_a_tuned_space_parses_into_its_plan(tmp_path):
    space = load_search_space(_write(tmp_path, TUNED))
    plan = space.tuning
    assert plan is not None
    assert plan.trials_per_variant == 2 and plan.final_seeds == [1, 2]
    assert plan.baseline == "baseline" and plan.reference == {"train.lr": 1.0e-3}
    assert plan.phases == ["final", "reference"]


@pytest.mark.parametrize(
    ("path", "value", "delete", "message"),
    [
        ("parameters", None, True, "declare at least one that is sampled"),
        ("parameters", {"train.lr": 1.0e-3}, False, "declare at least one that is sampled"),
        ("variants", None, True, "declare at least one"),
        ("seeds", [1, 2], False, "takes its seeds from tuning.final_seeds"),
        ("search/sampler", "grid", False, "tpe or random"),
        ("search/sampler", "nsga2", False, "cannot tune a variant"),
        ("search/num_samples", 4, False, "remove num_samples"),
        ("tuning/trials_per_variant", 1, False, "an integer of at least 2"),
        ("tuning/trials_per_variant", "many", False, "an integer of at least 2"),
        ("search/asha", {"grace_period": 1, "reduction_factor": 3}, False, "reduction factor 3"),
        ("search/asha", {"grace_period": 2, "reduction_factor": 2}, False, "never stop a trial"),
        ("tuning/final_seeds", [1], False, "at least two"),
        ("tuning/final_seeds", [1, 1], False, "lists a seed twice"),
        ("tuning/final_seeds", [0, 1], False, "the tuning trials' train.seed"),
        ("tuning/reference", {"extensions.cosine_sts": False}, False, "is set by a variant"),
        ("tuning/overrides", {"train.lr": 1.0e-3}, False, "is a tuned parameter"),
        ("tuning/baseline", "cosin", False, "did you mean 'cosine'"),
        ("tuning/budget", 3, False, "unknown key"),
    ],
)
def test_bad_tuned_spaces_are_refused_in_one_line(tmp_path, path, value, delete, message):
    with pytest.raises(ConfigError) as err:
        load_search_space(_write(tmp_path, _changed(path, value, delete=delete)))
    text = str(err.value)
    assert message in text and "\n" not in text, text


def test_a_bad_phase_value_is_refused_before_anything_is_written(tmp_path, cli):
    """A reference value the trial config refuses fails the pre-flight of the reference
    phase: exit 2, one line, no experiment folder."""
    space = _write(tmp_path, _changed("tuning/reference", {"model.dropout": 1.5}))
    proc = cli("sweep", str(space), "--storage-path", str(tmp_path / "out"), check=False)
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "phase reference" in lines[0] and "model.dropout" in lines[0]
    assert not (tmp_path / "out").exists()


def test_every_variant_gets_the_same_budget_and_the_final_runs_its_best(tmp_path):
    space = load_search_space(_write(tmp_path, TUNED))
    best = {"baseline": {"train.lr": 0.002}, "cosine": {"train.lr": 0.0005}}
    docs = phase_documents(TUNED, space.tuning, best)
    assert list(docs) == ["tune-baseline", "tune-cosine", "final", "reference"]
    tunes = [docs["tune-baseline"], docs["tune-cosine"]]
    for doc in tunes:
        assert doc["search"]["num_samples"] == 2
        assert doc["parameters"] == TUNED["parameters"]
        assert doc["search"]["scheduler"] == "asha" and doc["search"]["sampler"] == "tpe"
    assert docs["tune-cosine"]["variants"] == {"cosine": {"extensions.cosine_sts": True}}
    final = docs["final"]
    assert final["seeds"] == [1, 2] and final["search"]["sampler"] == "grid"
    assert final["variants"] == {
        "baseline": {"train.lr": 0.002},
        "cosine": {"extensions.cosine_sts": True, "train.lr": 0.0005},
    }
    assert "train.seed" not in final["base"]
    assert docs["reference"]["base"]["train.lr"] == 1.0e-3
    assert docs["reference"]["variants"] == TUNED["variants"]
    for name, doc in docs.items():  # each phase is a valid space of its own
        load_search_space(_write(tmp_path, doc, name))


def _phase_records(exp: Path, phase: str) -> list[dict]:
    folder = exp / "phases" / phase / "trials"
    return [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]


def _running_in(exp: Path, phase: str):
    def find():
        return any(r["status"] == "running" for r in _phase_records(exp, phase))

    return find


def _kill_driver(session, driver) -> None:
    os.kill(driver.pid, signal.SIGKILL)
    driver.wait(timeout=60)
    session.kill_all()  # what is left of its Ray holds the CPUs


def test_tuned_ablation_killed_in_each_phase_resumes_to_the_end(tmp_path, ray_session):
    """A tiny tuned ablation (2 variants x 2 tuning trials, then 2 seeds each, tuned and at the
    reference settings): the driver SIGKILLed while the second variant is tuning, again while
    the final runs start; `hpsearch resume` finishes every phase, each variant had the same
    budget, the final runs use each variant's best with the declared seeds, nothing ran twice,
    and the report compares the tuned variants."""
    space = _write(tmp_path, TUNED)
    exp = tmp_path / "tuned"
    sweep = ["sweep", str(space), "--storage-path", str(tmp_path), "--num-cpus", "2"]
    resume = ["resume", str(exp), "--num-cpus", "2"]

    driver = ray_session.start(sweep, tmp_path / "sweep.log")
    ray_session.wait_for(_running_in(exp, "tune-cosine"), 900, "tune-cosine running", driver)
    _kill_driver(ray_session, driver)
    assert not (exp / "phases" / "final").exists()

    # Hold the final phase's seed-1 trials in their start, kill the driver there.
    driver = ray_session.start(
        resume, tmp_path / "resume1.log", HPSEARCH_FAULT="sleep_in_setup:300@seed=1"
    )
    held = lambda: list((exp / "phases" / "final" / "runs").glob("*/.fault-sleep_in_setup"))  # noqa: E731
    ray_session.wait_for(held, 900, "a final trial held in its start", driver)
    _kill_driver(ray_session, driver)

    out = ray_session.run(resume, tmp_path / "resume2.log", timeout=1200)
    assert "report:" in out, out[-3000:]

    plan = json.loads((exp / ABLATION_FILE).read_text())
    assert plan["phases"] == ["tune-baseline", "tune-cosine", "final", "reference"]
    for variant in ("baseline", "cosine"):
        ran = [r for r in _phase_records(exp, f"tune-{variant}") if r["reason"] != "abandoned"]
        assert len(ran) == 2, ran  # the same budget for each variant
        assert all(r["status"] in ("finished", "stopped") for r in ran), ran
        best = plan["tuned"][variant]
        finished = {r["trial_id"]: r for r in ran if r["status"] == "finished"}
        assert best["trial_id"] in finished
        assert best["settings"] == {"train.lr": finished[best["trial_id"]]["config"]["train.lr"]}
    finals = [r for r in _phase_records(exp, "final") if r["status"] == "finished"]
    assert sorted((r["variant"], r["config"]["train.seed"]) for r in finals) == [
        ("baseline", 1),
        ("baseline", 2),
        ("cosine", 1),
        ("cosine", 2),
    ]
    for r in finals:
        assert r["config"]["train.lr"] == plan["tuned"][r["variant"]]["settings"]["train.lr"]
        assert r["config"]["extensions.cosine_sts"] is (r["variant"] == "cosine")
        metrics = (exp / "phases" / "final" / r["trial_dir"] / "metrics.jsonl").read_text()
        assert sum(bool(json.loads(x).get("final")) for x in metrics.splitlines()) == 1
    references = [r for r in _phase_records(exp, "reference") if r["status"] == "finished"]
    assert len(references) == 4 and {r["config"]["train.lr"] for r in references} == {1.0e-3}

    report = (exp / "report" / "report.md").read_text()
    assert "Tuned ablation" in report and "cosine" in report
    assert (exp / "report" / "tuned_scores.csv").is_file()


CONFIRM = {  # one variant: "tune, then confirm" (search_spaces/best_minilm.yaml's shape)
    **{k: v for k, v in TUNED.items() if k not in ("variants", "tuning")},
    "name": "confirm",
    "variants": {"recipe": {"extensions.cosine_sts": True}},
    "tuning": {
        "trials_per_variant": 2,
        "final_seeds": [1, 2],
        "overrides": {"data.max_train_examples": 32},  # the search on less data
    },
}


def test_one_variant_is_tuned_then_its_best_confirmed_over_the_seeds_at_full_size(tmp_path):
    space = load_search_space(_write(tmp_path, CONFIRM))
    assert space.tuning is not None and space.tuning.phases == ["final"]
    docs = phase_documents(CONFIRM, space.tuning, {"recipe": {"train.lr": 0.003}})
    assert list(docs) == ["tune-recipe", "final"]
    assert docs["tune-recipe"]["base"]["data.max_train_examples"] == 32
    final = docs["final"]
    assert final["base"]["data.max_train_examples"] == 64  # the overrides were the search's
    assert final["seeds"] == [1, 2]
    assert final["variants"] == {"recipe": {"extensions.cosine_sts": True, "train.lr": 0.003}}


def test_a_one_variant_plan_runs_and_reports_without_comparisons(tmp_path, cli):
    """A real tiny 'tune, then confirm': 2 tuning trials on 32 examples, the best re-run at
    64 examples with seeds 1 and 2; the report has its scores and configuration, and no
    effects section (there is nothing to compare with)."""
    space = _write(tmp_path, CONFIRM)
    cli("sweep", str(space), "--storage-path", str(tmp_path), "--num-cpus", "2", timeout=1200)
    exp = tmp_path / "confirm"
    plan = json.loads((exp / ABLATION_FILE).read_text())
    best = plan["tuned"]["recipe"]
    finals = [r for r in _phase_records(exp, "final") if r["status"] == "finished"]
    assert sorted(r["config"]["train.seed"] for r in finals) == [1, 2]
    for r in finals:
        assert r["config"]["train.lr"] == best["settings"]["train.lr"]
        assert r["config"]["data.max_train_examples"] == 64
    report = (exp / "report" / "report.md").read_text()
    assert "'recipe' was tuned over train.lr in 2 trials" in report
    assert "Tuned configurations" in report and "Effects against the baseline" not in report
    # The plan folder is a warm start for a later search: its one tuning phase is meant.
    tune = exp / PHASES_DIR / "tune-recipe"
    assert warm_start_folder(str(exp)) == tune
    from hpsearch import driver  # Ray Tune and Optuna: imported by this test alone

    plan_of = load_search_space(space).tuning
    assert plan_of is not None
    tune_doc = phase_documents(CONFIRM, plan_of)["tune-recipe"]
    tune_space = load_search_space(_write(tmp_path, tune_doc, "tune"))
    earlier = driver.load_warm_start(str(exp), tune_space)  # resolves the plan folder itself
    assert len(earlier) == 2 and {t.user_attrs["warm_start_from"] for t in earlier} == {
        "tune-recipe"
    }
    assert all("train.lr" in t.params for t in earlier)


def test_warm_start_is_refused_for_a_plan_of_several_variants(tmp_path, cli):
    """Every variant of a tuned ablation gets the same budget from scratch: `--warm-start`
    there is bad input (exit 2, one line, nothing written)."""
    space = _write(tmp_path, TUNED)
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    out = tmp_path / "out"
    proc = cli(
        "sweep", str(space), "--storage-path", str(out), "--warm-start", str(earlier), check=False
    )
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "--warm-start" in lines[0] and "from scratch" in lines[0], lines
    assert not out.exists()


def test_a_warm_start_seeds_the_tuning_phase_only(tmp_path):
    settings = SweepSettings.from_dict({"warm_start": "/earlier/search"})
    phases = tmp_path / "phases"
    assert _phase_settings(settings, phases, "tune-recipe").warm_start == "/earlier/search"
    for phase in ("final", "reference"):
        assert _phase_settings(settings, phases, phase).warm_start is None


def test_the_folder_of_a_plan_of_several_variants_is_no_warm_start(tmp_path):
    """A plan folder of two tuned variants: which search to start from is the user's choice,
    and the one-line error lists the phase folders to pick from."""
    (tmp_path / ABLATION_FILE).write_text(json.dumps({"phases": ["tune-a", "tune-b", "final"]}))
    with pytest.raises(ConfigError) as err:
        warm_start_folder(str(tmp_path))
    text = str(err.value)
    assert "\n" not in text and "2 variants" in text
    assert (
        str(tmp_path / PHASES_DIR / "tune-a") in text
        and str(tmp_path / PHASES_DIR / "tune-b") in text
    )
    plain = tmp_path / "plain"  # not a plan folder: passed through for the driver to check
    assert warm_start_folder(str(plain)) == plain
    (tmp_path / ABLATION_FILE).write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable.*tune-<variant>"):
        warm_start_folder(tmp_path)
