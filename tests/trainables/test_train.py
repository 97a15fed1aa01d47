"""The training loop end to end on a tiny model: reproducible, resumable, honest outputs."""

from __future__ import annotations

import json
import math

import pytest
import torch

from trainables.errors import ConfigError, NonFiniteLossError
from trainables.minbert.callbacks import TrainerCallback
from trainables.minbert.run_checkpoint import find_checkpoint
from trainables.minbert.trainer import MultitaskTrainer, train_trial


class Recorder(TrainerCallback):
    def __init__(self, crash_after_eval: int | None = None) -> None:
        self.steps: list[dict] = []
        self.evals: list[dict] = []
        self.crash_after_eval = crash_after_eval

    def on_step_end(self, trainer, logs):
        self.steps.append(dict(logs))

    def on_evaluate(self, trainer, metrics, checkpoint):
        self.evals.append(dict(metrics))
        if self.crash_after_eval is not None and len(self.evals) == self.crash_after_eval:
            raise KeyboardInterrupt("simulated crash")


def losses(rec: Recorder) -> list[tuple[int, float, float, float]]:
    return [
        (s["step"], s.get("loss_sst"), s.get("loss_para"), s.get("loss_sts")) for s in rec.steps
    ]


def test_two_step_seeded_run_is_reproducible(tmp_path, tiny_trial):
    cfg = tiny_trial(
        "train.max_steps=2",
        "extensions.pcgrad=true",
        "extensions.cosine_sts=true",
    )
    a, b = Recorder(), Recorder()
    train_trial(cfg, tmp_path / "a", callbacks=[a])
    train_trial(cfg, tmp_path / "b", callbacks=[b])
    assert len(a.steps) == 2
    torch.testing.assert_close(torch.tensor(losses(a)), torch.tensor(losses(b)), rtol=0, atol=0)
    assert all(math.isfinite(v) for s in losses(a) for v in s[1:])
    # a different seed takes a different path
    c = Recorder()
    train_trial(
        tiny_trial(
            "train.max_steps=2",
            "extensions.pcgrad=true",
            "extensions.cosine_sts=true",
            "train.seed=3",
        ),
        tmp_path / "c",
        callbacks=[c],
    )
    assert losses(c) != losses(a)


def test_run_folder_outputs(tmp_path, tiny_trial):
    cfg = tiny_trial("extensions.pcgrad=true", "extensions.sequential_sts=true")
    summary = train_trial(cfg, tmp_path / "run")
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["extensions"]["pcgrad"] is True
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["phase"] for x in lines][0] == "sequential"
    assert lines[-1]["phase"] == "multitask" and lines[-1]["epoch"] == pytest.approx(1.0)
    assert any(x["pcgrad_conflict_rate"] is not None for x in lines if x["phase"] == "multitask")
    saved = json.loads((run / "summary.json").read_text())
    assert saved["status"] == "finished" and saved["steps"] == summary["steps"] > 0
    for split in ("dev", "train", "test"):
        for m in ("sst_acc", "para_acc", "sts_r", "overall"):
            assert math.isfinite(saved[f"{split}_{m}"])
        overall = (
            saved[f"{split}_sst_acc"]
            + saved[f"{split}_para_acc"]
            + (saved[f"{split}_sts_r"] + 1) / 2
        ) / 3
        assert saved[f"{split}_overall"] == pytest.approx(overall)
    for name in (
        "sst-dev-output.csv",
        "para-dev-output.csv",
        "sts-dev-output.csv",
        "sst-test-output.csv",
        "para-test-output.csv",
        "sts-test-output.csv",
    ):
        assert (run / "predictions" / name).is_file()
    assert (
        (run / "predictions" / "sst-dev-output.csv")
        .read_text()
        .startswith("id \t Predicted_Sentiment ")
    )
    assert list((run / "tb").rglob("events.out.tfevents.*"))
    assert find_checkpoint(run).name.startswith("step-")


def test_resume_continues_with_identical_steps(tmp_path, tiny_trial):
    cfg = tiny_trial(
        "extensions.pcgrad=true",
        "train.evals_per_epoch=3",
        "model.dropout=0.2",
    )
    full = Recorder()
    train_trial(cfg, tmp_path / "full", callbacks=[full])
    crashed = Recorder(crash_after_eval=1)
    with pytest.raises(KeyboardInterrupt):
        train_trial(cfg, tmp_path / "crash", callbacks=[crashed])
    done = len(crashed.steps)
    assert 0 < done < len(full.steps)
    resumed = Recorder()
    train_trial(cfg, tmp_path / "crash", callbacks=[resumed], resume_from=tmp_path / "crash")
    assert resumed.steps[0]["step"] == done + 1
    torch.testing.assert_close(
        torch.tensor(losses(resumed)), torch.tensor(losses(full)[done:]), rtol=0, atol=0
    )
    assert resumed.evals[-1]["dev_overall"] == pytest.approx(full.evals[-1]["dev_overall"], abs=0)


def test_corrupt_checkpoint_falls_back_to_previous_good_one(tmp_path, tiny_trial):
    cfg = tiny_trial("train.evals_per_epoch=3", "train.keep_checkpoints=3")
    train_trial(cfg, tmp_path / "run")
    ckpts = sorted((tmp_path / "run" / "checkpoints").glob("step-*"))
    assert len(ckpts) >= 2
    newest = ckpts[-1]
    victim = next(p for p in newest.rglob("*.pt") if p.name != "trainer_state.pt")
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # truncated
    assert find_checkpoint(tmp_path / "run") == ckpts[-2]
    for c in ckpts:
        (c / "MANIFEST.json").unlink()
    with pytest.raises(ConfigError, match="no intact checkpoint"):
        find_checkpoint(tmp_path / "run")


def test_non_finite_loss_stops_the_trial(tmp_path, tiny_trial):
    cfg = tiny_trial("train.lr=1e30", "train.grad_clip=0", "extensions.pcgrad=false")
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at step \d+"):
        train_trial(cfg, tmp_path / "run")


def test_trainer_counts_steps_from_the_sampler(tmp_path, tiny_trial):
    cfg = tiny_trial("extensions.task_sampling=proportional", "train.max_steps=3")
    trainer = MultitaskTrainer(cfg, tmp_path / "run")
    trainer.setup()
    try:
        assert trainer.total_steps == 3
        summary = trainer.train()
        assert summary["steps"] == 3
    finally:
        trainer.cleanup()


def test_freeze_word_embeddings_keeps_the_matrix_fixed_while_the_rest_trains(tmp_path, tiny_trial):
    """model.freeze_word_embeddings reaches the model: the word-embedding matrix gets no
    gradient and no update (no AdamW decay either), every other parameter trains."""
    cfg = tiny_trial("train.max_steps=3", "model.freeze_word_embeddings=true")
    trainer = MultitaskTrainer(cfg, tmp_path / "run")
    try:
        trainer.setup()
        words = trainer.model.encoder.embeddings.word_embeddings.weight
        before = words.detach().clone()
        layer = trainer.model.sst_head.weight
        layer_before = layer.detach().clone()
        assert not words.requires_grad
        trainer.train()
        assert torch.equal(words.detach(), before)
        assert not torch.equal(layer.detach(), layer_before)
    finally:
        trainer.cleanup()
