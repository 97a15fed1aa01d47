"""Selection on dev (`train.select_best_dev`): a trial's final dev, train and held-out test
scores and prediction files are those of its best dev evaluation's weights, never chosen on
test, and a run resumed after a crash still knows its best.

The situation is forced on a tiny model: `Degrade` adds noise to the weights after chosen
steps until the dev score lies clearly below the best so far (measured with the trainer's
own evaluation), so the evaluations after the first are worse than the first.
"""

from __future__ import annotations

import json

import pytest
import torch

from trainables.errors import ConfigError
from trainables.minbert import run_checkpoint
from trainables.minbert.callbacks import TrainerCallback
from trainables.minbert.trainer import MultitaskTrainer, train_trial

pytestmark = pytest.mark.usefixtures("torch_one_thread")

MARGIN = 0.02  # how far below the best so far a degraded evaluation must lie
SCORES = ("sst_acc", "para_acc", "sts_r", "overall")


# 6 steps: evaluations after steps 2, 4 and 6 (the final); every checkpoint stays, to
# evaluate the best one directly
SELECTION = ("train.evals_per_epoch=3", "train.keep_checkpoints=5")


class Degrade(TrainerCallback):
    """Forces the situation selection on dev is for: the first evaluation the best, the later
    ones clearly worse. Records every evaluation and can crash after one.

    A tiny model barely trained scores near chance, and where its first evaluation lands in
    the spread of chance-level scores is luck. So before the first evaluation (`boost_step`)
    the weights become the best of BOOST_DRAWS noise draws around them, by the trainer's own
    dev evaluation (the top of that spread); after each of `steps`, fresh draws around the
    step's weights until one is finite and at least MARGIN below the best so far. Each step
    has its own seeded generator, so runs and resumed runs draw alike. Draws are fresh around
    the same weights, at scales cycling through 0.5, 1 and 2, never compounding: ever larger
    noise saturates the heads (constant predictions, a NaN STS correlation).
    """

    BOOST_DRAWS = 16
    ATTEMPTS = 48
    SCALES = (0.5, 1.0, 2.0)

    def __init__(
        self, steps: tuple[int, ...], crash_after_eval: int | None = None, boost_step: int = 2
    ) -> None:
        self.steps = steps
        self.crash_after_eval = crash_after_eval
        self.boost_step = boost_step
        self.evals: list[dict] = []
        self.best_seen = float("-inf")

    @staticmethod
    def _dev(trainer) -> float:
        return trainer.evaluate(trainer.data.dev, "dev")["dev_overall"]

    def _draws(self, trainer, step: int, count: int):
        """`count` noisy copies of the current weights, each loaded into the engine in turn
        and yielded while loaded; the current weights are loaded again after the last.
        Through the module's whole state_dict: under ZeRO-3 a rank's parameters are
        partitions, which these helpers gather and scatter again."""
        gen = torch.Generator().manual_seed(step)
        base = {k: w.clone() for k, w in run_checkpoint.module_weights(trainer.engine).items()}
        for attempt in range(count):
            scale = self.SCALES[attempt % len(self.SCALES)]
            noisy = {
                k: w + torch.randn(w.shape, generator=gen, dtype=w.dtype) * scale
                if w.is_floating_point()
                else w
                for k, w in base.items()
            }
            run_checkpoint.load_module_weights(trainer.engine, noisy)
            yield noisy
        run_checkpoint.load_module_weights(trainer.engine, base)

    def on_step_end(self, trainer, logs):
        step = logs["step"]
        if step == self.boost_step:
            best_score = self._dev(trainer)
            best = {k: w.clone() for k, w in run_checkpoint.module_weights(trainer.engine).items()}
            for weights in self._draws(trainer, step, self.BOOST_DRAWS):
                score = self._dev(trainer)
                if score == score and score > best_score:  # finite (not NaN) and better
                    best_score, best = score, weights
            run_checkpoint.load_module_weights(trainer.engine, best)
            return
        if step not in self.steps:
            return
        recorded = trainer.best.record  # a resumed run's best so far, from its checkpoint
        target = max(self.best_seen, recorded["dev_overall"] if recorded else float("-inf"))
        if (score := self._dev(trainer)) == score and score < target - MARGIN:
            return
        scores = [score]
        for _ in self._draws(trainer, step, self.ATTEMPTS):
            score = self._dev(trainer)
            if score == score and score < target - MARGIN:  # finite (not NaN) and worse
                return
            scores.append(score)
        raise AssertionError(
            f"could not degrade the model below {target - MARGIN:.4f}: scores {scores}"
        )

    def on_evaluate(self, trainer, metrics, checkpoint):
        self.evals.append(dict(metrics))
        if not metrics.get("final"):
            self.best_seen = max(self.best_seen, metrics["dev_overall"])
        if self.crash_after_eval is not None and len(self.evals) == self.crash_after_eval:
            raise KeyboardInterrupt("simulated crash")


def direct_scores(cfg, checkpoint, out_dir) -> tuple[dict, dict[str, str], dict]:
    """The dev, train and test scores, the prediction files and the weights of a checkpoint,
    evaluated by a trainer of their own (set up from the checkpoint, no training)."""
    trainer = MultitaskTrainer(cfg, out_dir, resume_from=checkpoint)
    trainer.setup()
    try:
        scores = trainer.evaluate(trainer.data.dev, "dev", write_predictions=True)
        scores.update(trainer.evaluate(trainer.data.train_eval, "train"))
        scores.update(trainer.evaluate(trainer.data.test, "test", write_predictions=True))
        weights = run_checkpoint.module_weights(trainer.engine)
    finally:
        trainer.cleanup()
    return scores, predictions(out_dir), weights


def predictions(run) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((run / "predictions").glob("*.csv"))}


# (ZeRO-3 does not train minBERT yet: BertEmbeddings reads its position table's weight
# directly, which ZeRO-3 has partitioned away; module_weights' gathering is checked alone.)
@pytest.mark.parametrize("zero_stage", [0, 2])
def test_the_final_scores_are_those_of_the_best_dev_checkpoint(tmp_path, zero_stage, tiny_trial):
    cfg = tiny_trial(*SELECTION, f"train.deepspeed.zero_stage={zero_stage}")
    assert cfg.train.select_best_dev, "selection on dev is the default"
    run = tmp_path / "run"
    rec = Degrade(steps=(4, 6))
    summary = train_trial(cfg, run, callbacks=[rec])
    first, final = rec.evals[0], rec.evals[-1]
    assert [e["step"] for e in rec.evals] == [2, 4, 6]
    # the forced situation: the later evaluations are worse than the first
    assert rec.evals[1]["dev_overall"] < first["dev_overall"] - MARGIN
    assert summary["last_dev_overall"] < first["dev_overall"] - MARGIN
    assert summary["selected_step"] == 2 and summary["selected_eval"] == 1
    assert summary["selected_phase"] == "multitask" and summary["select_best_dev"] is True
    for m in SCORES:  # the dev scores at the selected evaluation, measured again at the end
        assert summary[f"dev_{m}"] == pytest.approx(first[f"dev_{m}"], abs=1e-12)
    assert summary["steps"] == 6 and summary["final"] is True
    # metrics.jsonl: every evaluation as measured, the final line the summary (what Ray ranks)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["dev_overall"] for x in lines[:2]] == pytest.approx(
        [e["dev_overall"] for e in rec.evals[:2]]
    )
    assert lines[-1]["dev_overall"] == summary["dev_overall"] == final["dev_overall"]
    assert json.loads((run / "summary.json").read_text())["selected_step"] == 2
    # the held-out scores and every prediction file equal the best checkpoint's, evaluated
    # directly by a trainer set up from it
    best = run / "checkpoints" / run_checkpoint.tag_of(2)
    scores, files, at_best = direct_scores(cfg, best, tmp_path / "direct")
    for split in ("dev", "train", "test"):
        for m in SCORES:
            assert summary[f"{split}_{m}"] == scores[f"{split}_{m}"], (split, m)
    assert predictions(run) == files and len(files) == 6
    # the final checkpoint holds the last weights (to resume from) and the best ones beside
    last = run / "checkpoints" / run_checkpoint.tag_of(6)
    kept = torch.load(last / run_checkpoint.BEST_WEIGHTS, weights_only=True)
    assert kept.keys() == at_best.keys()
    assert all(torch.equal(kept[k], at_best[k]) for k in kept)
    assert run_checkpoint.verify_checkpoint(last) is None  # sealed with the rest


def test_without_selection_the_last_step_is_scored(tmp_path, tiny_trial):
    cfg = tiny_trial(*SELECTION, "train.select_best_dev=false")
    run = tmp_path / "run"
    rec = Degrade(steps=(4, 6))
    summary = train_trial(cfg, run, callbacks=[rec])
    assert summary["selected_step"] == 6 and summary["selected_eval"] == 3
    assert summary["select_best_dev"] is False
    assert summary["dev_overall"] == summary["last_dev_overall"] < rec.best_seen - MARGIN
    assert not any((run / "checkpoints").rglob(run_checkpoint.BEST_WEIGHTS))
    last = run / "checkpoints" / run_checkpoint.tag_of(6)
    scores, files, _ = direct_scores(cfg, last, tmp_path / "direct")
    assert all(summary[f"test_{m}"] == scores[f"test_{m}"] for m in SCORES)
    assert predictions(run) == files


def test_a_resumed_run_still_knows_its_best(tmp_path, tiny_trial):
    cfg = tiny_trial(*SELECTION)
    full = Degrade(steps=(4, 6))
    summary = train_trial(cfg, tmp_path / "full", callbacks=[full])
    crashed = Degrade(steps=(4, 6), crash_after_eval=2)  # after the checkpoint of step 4
    with pytest.raises(KeyboardInterrupt):
        train_trial(cfg, tmp_path / "crash", callbacks=[crashed])
    ckpt = run_checkpoint.find_checkpoint(tmp_path / "crash")
    assert ckpt.name == run_checkpoint.tag_of(4)
    assert (ckpt / run_checkpoint.BEST_WEIGHTS).is_file()  # the best (step 2) came before
    state = torch.load(ckpt / run_checkpoint.TRAINER_STATE, weights_only=True)
    assert json.loads(state["best_dev"])["step"] == 2
    resumed = Degrade(steps=(4, 6))
    again = train_trial(cfg, tmp_path / "crash", callbacks=[resumed], resume_from=ckpt)
    assert [e["step"] for e in resumed.evals] == [6]
    for key in ("selected_step", "selected_eval", "dev_overall", "last_dev_overall"):
        assert again[key] == summary[key], key
    for m in SCORES:
        assert again[f"test_{m}"] == summary[f"test_{m}"]
    assert predictions(tmp_path / "crash") == predictions(tmp_path / "full")


def test_best_checkpoint_keeps_the_first_finite_best_and_survives_a_round_trip(tmp_path):
    best = run_checkpoint.BestCheckpoint()
    weights = {"w": torch.tensor([1.0])}
    assert not best.offer({"step": 1, "dev_overall": float("nan")}, lambda: weights)
    assert best.offer({"step": 2, "dev_overall": 0.5}, lambda: weights)
    assert not best.offer({"step": 3, "dev_overall": 0.5}, lambda: {})  # a tie keeps the first
    assert not best.offer({"step": 4, "dev_overall": 0.4}, lambda: {})
    assert best.record == {"step": 2, "dev_overall": 0.5} and best.weights is weights
    assert best.files(2) == {} and best.files(4) == {run_checkpoint.BEST_WEIGHTS: weights}
    torch.save(weights, tmp_path / run_checkpoint.BEST_WEIGHTS)
    again = run_checkpoint.BestCheckpoint()
    again.restore(best.state_text(), tmp_path, 4, lambda: {})
    assert again.record == best.record and torch.equal(again.weights["w"], weights["w"])
    at_own_step = run_checkpoint.BestCheckpoint()
    at_own_step.restore(best.state_text(), tmp_path / "none", 2, lambda: {"w": torch.zeros(1)})
    assert torch.equal(at_own_step.weights["w"], torch.zeros(1))
    fresh = run_checkpoint.BestCheckpoint()
    fresh.restore(None, tmp_path, 4, lambda: {})  # a checkpoint from before selection existed
    assert fresh.record is None and fresh.weights is None
    with pytest.raises(ConfigError, match="has no best_weights.pt"):
        run_checkpoint.BestCheckpoint().restore(best.state_text(), tmp_path / "none", 4, dict)


def test_module_weights_gather_and_scatter_zero3_partitions():
    """Under ZeRO-3 a rank holds a partition of each parameter: the copy is of the whole
    tensors, and loading one changes what the engine's module computes."""
    from trainables.minbert.config import TrainConfig
    from trainables.minbert.engine import build_engine

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Tanh(), torch.nn.Linear(3, 2))
    full = {k: v.detach().clone() for k, v in model.state_dict().items()}
    train = TrainConfig(batch_size=2, deepspeed={"zero_stage": 3, "precision": "fp32"})
    engine = build_engine(model, train)
    try:
        assert engine.zero_optimization_stage() == 3
        assert any(p.numel() == 0 for p in engine.module.parameters())  # partitioned away
        copied = run_checkpoint.module_weights(engine)
        assert copied.keys() == full.keys()
        assert all(torch.equal(copied[k], full[k]) for k in full)
        changed = {k: v * 2 + 1 for k, v in copied.items()}
        run_checkpoint.load_module_weights(engine, changed)
        again = run_checkpoint.module_weights(engine)
        assert all(torch.equal(again[k], changed[k]) for k in changed)
        x = torch.randn(5, 4)
        expected = torch.tanh(x @ changed["0.weight"].T + changed["0.bias"])
        expected = expected @ changed["2.weight"].T + changed["2.bias"]
        with torch.no_grad():
            torch.testing.assert_close(engine.module(x), expected)
    finally:
        engine.destroy()
