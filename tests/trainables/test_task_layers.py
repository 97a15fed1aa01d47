"""Task-specific top layers (`extensions.task_layers`): each task's sentence embedding is the
shared bottom of the encoder followed by the task's own copy of the top layers, which a
direct implementation checks (the original encoder with its top layers swapped for the
task's); the copies start as the pre-trained layers, are task parameters (never shared with
gradient surgery) and are counted as the class docstring says."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from torch import nn

from trainables.errors import ConfigError
from trainables.minbert.config import load_trial_config
from trainables.minbert.extensions import registry
from trainables.minbert.extensions.task_layers import (
    TaskLayers,
    TaskTopLayers,
    layer_parameter_count,
    make_task_layers,
)
from trainables.minbert.model import BertConfig, BertLayer, BertModel, mean_pool
from trainables.minbert.multitask import MultitaskBert
from trainables.minbert.trainer import MultitaskTrainer, train_trial

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TASKS = ("sst", "para", "sts")
CONFIG = BertConfig(vocab_size=60, hidden_size=16, num_layers=3, num_heads=2, intermediate_size=32)


def pair(count: int, pooling: str) -> tuple[MultitaskBert, MultitaskBert]:
    """A model without task layers and one with `count` of them, on the same encoder weights
    and the same heads, both in eval mode."""
    encoder = BertModel.from_config(CONFIG, seed=0)
    plain = MultitaskBert(copy.deepcopy(encoder), 0.1, "siamese", pooling)
    layered = MultitaskBert(
        copy.deepcopy(encoder), 0.1, "siamese", pooling, task_layers=TaskTopLayers(count=count)
    )
    for name in ("sst_head", "para_head", "sts_head"):
        getattr(layered, name).load_state_dict(getattr(plain, name).state_dict())
    return plain.eval(), layered.eval()


def padded_inputs(seed: int = 1) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, CONFIG.vocab_size, (5, 7), generator=gen)
    mask = torch.ones_like(ids)
    for row, length in ((1, 4), (3, 6), (4, 2)):  # padding in some rows
        ids[row, length:] = 0
        mask[row, length:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def packed_inputs() -> tuple[dict[str, torch.Tensor], list[tuple[int, int]]]:
    """Two groups of sentences laid out flat (`BertModel.forward_packed`)."""
    gen = torch.Generator().manual_seed(2)
    groups = [(3, 6), (2, 4)]
    ids = torch.randint(1, CONFIG.vocab_size, (sum(r * w for r, w in groups),), generator=gen)
    mask = torch.ones_like(ids)
    mask[6 + 4 : 6 + 6] = 0  # the second row of the first group has 4 tokens
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}, groups


def perturb(module: nn.Module, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)


def reference_embedding(
    layered: MultitaskBert, task: str, inputs: dict[str, torch.Tensor], pooling: str
) -> torch.Tensor:
    """The direct implementation: a full BERT encoder whose bottom layers, embeddings and
    pooler are the shared ones and whose top layers are the task's copies, run whole."""
    full = BertModel(CONFIG).eval()
    shared = layered.encoder
    assert layered.task_layers is not None
    own = list(layered.task_layers.layers[task])
    full.embeddings.load_state_dict(shared.embeddings.state_dict())
    full.pooler.load_state_dict(shared.pooler.state_dict())
    for i, layer in enumerate([*shared.encoder.layer, *own]):
        full.encoder.layer[i].load_state_dict(layer.state_dict())
    hidden, pooled = full(**inputs)
    return mean_pool(hidden, inputs["attention_mask"]) if pooling == "mean" else pooled


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("count", [1, 3])
def test_copies_start_as_the_pretrained_top_layers(count, pooling):
    plain, layered = pair(count, pooling)
    inputs = padded_inputs()
    packed, groups = packed_inputs()
    with torch.no_grad():
        for task in TASKS:
            torch.testing.assert_close(layered.embed(inputs, task), plain.embed(inputs))
            torch.testing.assert_close(
                layered.embed_packed(packed, groups, task), plain.embed_packed(packed, groups)
            )
    with pytest.raises(ValueError, match="needs its task"):
        layered.embed(inputs)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
@pytest.mark.parametrize("count", [1, 2, 3])
def test_each_task_embeds_through_its_own_top_layers(count, pooling):
    _, layered = pair(count, pooling)
    assert layered.task_layers is not None
    perturb(layered.encoder, 10)  # as if trained: shared part and each copy their own way
    for k, task in enumerate(TASKS):
        perturb(layered.task_layers.layers[task], 20 + k)
    inputs = padded_inputs()
    packed, groups = packed_inputs()
    flat = {
        "input_ids": torch.cat([packed["input_ids"][:18].view(3, 6), pad(packed, 18, 2, 4)]),
        "attention_mask": torch.cat(
            [packed["attention_mask"][:18].view(3, 6), pad(packed, 18, 2, 4, key="mask")]
        ),
    }  # the packed groups as one padded batch of width 6
    with torch.no_grad():
        embeddings = {}
        for task in TASKS:
            embeddings[task] = layered.embed(inputs, task)
            expected = reference_embedding(layered, task, inputs, pooling)
            torch.testing.assert_close(embeddings[task], expected, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(
                layered.embed_packed(packed, groups, task),
                reference_embedding(layered, task, flat, pooling),
                rtol=1e-5,
                atol=1e-6,
            )
        assert not torch.allclose(embeddings["sst"], embeddings["para"])
        assert not torch.allclose(embeddings["para"], embeddings["sts"])
        batch = {"task": "sst", "inputs": inputs, "labels": torch.zeros(5, dtype=torch.long)}
        torch.testing.assert_close(layered(batch), layered.sst_head(embeddings["sst"]))


def pad(packed, start, rows, width, key="ids"):
    """Rows of a packed group (starting at flat position `start`) padded to width 6."""
    name = "input_ids" if key == "ids" else "attention_mask"
    block = packed[name][start : start + rows * width].view(rows, width)
    return torch.nn.functional.pad(block, (0, 6 - width))


@pytest.mark.parametrize("count", [1, 2, 3])
def test_only_the_bottom_is_shared_and_the_count_is_the_documented_one(count):
    plain, layered = pair(count, "mean")
    assert layered.task_layers is not None
    L = CONFIG.num_layers
    per_layer = layer_parameter_count(CONFIG.hidden_size, CONFIG.intermediate_size)
    assert per_layer == sum(p.numel() for p in BertLayer(CONFIG).parameters())
    assert len(layered.encoder.encoder.layer) == L - count
    assert isinstance(layered.task_layers, TaskTopLayers)
    assert layered.task_layers.first_index == L - count
    shared = {id(p) for p in layered.shared_parameters()}
    copies = {id(p) for p in layered.task_layers.parameters()}
    assert shared == {id(p) for p in layered.encoder.parameters()} and not shared & copies
    by_task = [{id(p) for p in layered.task_layers.layers[t].parameters()} for t in TASKS]
    assert all(not a & b for a in by_task for b in by_task if a is not b)
    assert sum(p.numel() for p in layered.task_layers.parameters()) == 3 * count * per_layer
    total = {m: sum(p.numel() for p in m.parameters()) for m in (plain, layered)}
    assert total[layered] - total[plain] == 2 * count * per_layer
    assert sum(p.numel() for p in layered.shared_parameters()) == sum(
        p.numel() for p in plain.shared_parameters()
    ) - (count * per_layer)


def test_the_docstring_figures_for_minilm(minilm_path):
    config = BertConfig.from_json(minilm_path / "config.json")
    with torch.device("meta"):
        encoder = BertModel(config)
    per_layer = layer_parameter_count(config.hidden_size, config.intermediate_size)
    assert per_layer == sum(p.numel() for p in encoder.encoder.layer[0].parameters())
    assert per_layer == 1_774_464 and 2 * per_layer == 3_548_928
    total = sum(p.numel() for p in encoder.parameters())
    assert round(total / 1e6, 1) == 22.7 and round(100 * 2 * per_layer / total, 1) == 15.6
    # fp32 weight + gradient + AdamW's two moments; a checkpoint's weight and moments
    assert round(2 * per_layer * 16 / 1e6) == 57 and round(2 * per_layer * 12 / 1e6) == 43
    assert TaskTopLayers.__doc__ is not None
    for figure in ("1,774,464", "3,548,928", "15.6%", "22.7M", "57 MB", "43 MB"):
        assert figure in " ".join(TaskTopLayers.__doc__.split()), figure


def test_a_task_loss_reaches_only_its_own_copies():
    _, layered = pair(1, "mean")
    assert layered.task_layers is not None
    layered.train()
    inputs = padded_inputs()
    sides = {"input_ids": inputs["input_ids"][:4], "attention_mask": inputs["attention_mask"][:4]}
    batches = {
        "sst": {"task": "sst", "inputs": inputs, "labels": torch.tensor([0, 1, 2, 3, 4])},
        "para": {
            "task": "para",
            "inputs_a": sides,
            "inputs_b": {k: v.flip(0) for k, v in sides.items()},
            "labels": torch.tensor([1.0, 0.0, 1.0, 0.0]),
        },
    }
    for task, batch in batches.items():
        layered.zero_grad(set_to_none=True)
        layered.loss(batch).backward()
        for other in TASKS:
            grads = [p.grad for p in layered.task_layers.layers[other].parameters()]
            if other == task:
                assert all(g is not None and bool(g.abs().sum() > 0) for g in grads), other
            else:
                assert all(g is None for g in grads), other
        assert all(p.grad is not None for p in layered.encoder.encoder.layer.parameters())


def test_the_toggle_builds_it_and_refuses_a_count_above_the_layers():
    toggle = next(t for t in registry.toggles() if t.name == "task_layers")
    assert toggle.kind == "task_layers" and toggle.key == "extensions.task_layers"
    on = load_trial_config(None, ["extensions.task_layers=true", "extensions.task_layers_count=2"])
    built = make_task_layers(on)
    assert isinstance(built, TaskTopLayers) and isinstance(built, TaskLayers)
    assert built.count == 2
    assert make_task_layers(load_trial_config(None, [])) is None
    with pytest.raises(ConfigError, match="task_layers_count"):
        load_trial_config(None, ["extensions.task_layers=true", "extensions.task_layers_count=0"])
    with pytest.raises(ConfigError, match="at most 3"):
        MultitaskBert(
            BertModel.from_config(CONFIG, seed=0), 0.1, task_layers=TaskTopLayers(count=4)
        )
    attached = TaskTopLayers(count=1)
    MultitaskBert(BertModel.from_config(CONFIG, seed=0), 0.1, task_layers=attached)
    with pytest.raises(RuntimeError, match="already attached"):
        attached.attach(BertModel.from_config(CONFIG, seed=0), TASKS)


def test_a_trial_trains_the_copies_apart_with_pcgrad_on_the_shared_part(tmp_path, tiny_overrides):
    cfg = load_trial_config(
        None,
        [
            *tiny_overrides,
            "extensions.task_layers=true",
            "extensions.pcgrad=true",
            "train.max_steps=3",
            "train.select_best_dev=false",
        ],
    )
    trainer = MultitaskTrainer(cfg, tmp_path / "run")
    trainer.setup()
    try:
        layers = trainer.model.task_layers
        assert isinstance(layers, TaskTopLayers) and layers.first_index == 1
        shared = {id(p) for p in trainer.shared_params}
        assert shared == {id(p) for p in trainer.model.encoder.parameters() if p.requires_grad}
        assert not shared & {id(p) for p in layers.parameters()}
        before = {t: copy.deepcopy(layers.layers[t].state_dict()) for t in TASKS}
        assert all(torch.equal(before["sst"][k], before["sts"][k]) for k in before["sst"])
        summary = trainer.train()
        after = {t: layers.layers[t].state_dict() for t in TASKS}
        for task in TASKS:  # every copy moved, each its own way
            assert any(not torch.equal(before[task][k], after[task][k]) for k in after[task])
        assert any(not torch.equal(after["sst"][k], after["para"][k]) for k in after["sst"])
    finally:
        trainer.cleanup()
    assert summary["steps"] == 3 and summary["dev_overall"] == summary["dev_overall"]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["extensions"]["task_layers"] is True
    # the run checkpoint restores the same structure: a trainer resumed from it scores the
    # held-out split as the trial did at its end
    again = MultitaskTrainer(cfg, tmp_path / "again", resume_from=tmp_path / "run")
    again.setup()
    try:
        test = again.evaluate(again.data.test, "test")
    finally:
        again.cleanup()
    assert test == {k: v for k, v in summary.items() if k.startswith("test_")}


def test_a_trial_with_every_layer_per_task_and_cross_pairs_runs(tmp_path, tiny_overrides):
    cfg = load_trial_config(
        None,
        [
            *tiny_overrides,
            "extensions.task_layers=true",
            "extensions.task_layers_count=2",  # every layer: only the embeddings are shared
            "model.pair_encoding=cross",
            "model.pooling=cls",
            "train.max_steps=2",
        ],
    )
    summary = train_trial(cfg, tmp_path / "run")
    assert summary["steps"] == 2
    for split in ("dev", "test"):
        assert summary[f"{split}_overall"] == summary[f"{split}_overall"]  # not NaN
