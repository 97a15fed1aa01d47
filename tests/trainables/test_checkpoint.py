"""Checkpoint folders: export, reload (HF layouts old and new), and one-line errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from trainables.errors import ConfigError
from trainables.minbert.hf_folder import (
    check_checkpoint_dir,
    minilm_dir,
    resolve_checkpoint_dir,
    save_pretrained,
)
from trainables.minbert.model import BertConfig, BertModel

pytestmark = pytest.mark.usefixtures("torch_one_thread")

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("abcdefghijklmnopqrstuvwxyz")


@pytest.fixture()
def vocab_file(tmp_path):
    path = tmp_path / "src_vocab.txt"
    path.write_text("\n".join(VOCAB) + "\n")
    return path


@pytest.fixture()
def tiny() -> BertModel:
    config = BertConfig(
        vocab_size=len(VOCAB),
        hidden_size=16,
        num_layers=2,
        num_heads=4,
        intermediate_size=24,
        max_position_embeddings=32,
        type_vocab_size=2,
    )
    return BertModel.from_config(config, seed=0).eval()


@pytest.fixture()
def folder(tmp_path, tiny, vocab_file):
    return save_pretrained(tiny, tmp_path / "ckpt", vocab_file)


def inputs() -> dict[str, torch.Tensor]:
    ids = torch.tensor([[2, 7, 8, 9, 3, 0], [2, 10, 11, 3, 12, 3]])
    return {
        "input_ids": ids,
        "attention_mask": (ids != 0).long(),
        "token_type_ids": torch.tensor([[0] * 6, [0, 0, 0, 0, 1, 1]]),
    }


def assert_same_model(a: BertModel, b: BertModel) -> None:
    assert a.config == b.config
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    with torch.no_grad():
        for x, y in zip(a(**inputs()), b(**inputs()), strict=True):
            assert torch.equal(x, y)


def one_line_error(excinfo, *needles: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, (needle, message)
    return message


def test_save_then_load_round_trips_exactly(folder, tiny, vocab_file):
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.safetensors",
        "vocab.txt",
    ]
    assert (folder / "vocab.txt").read_text() == vocab_file.read_text()
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] == 2 and config["model_type"] == "bert"
    keys = load_file(str(folder / "model.safetensors"))
    assert "encoder.layer.1.attention.self.query.weight" in keys  # HF names, q/k/v split
    loaded = BertModel.from_pretrained(folder)
    assert not loaded.training
    assert_same_model(tiny, loaded)


def test_pytorch_model_bin_with_bert_prefix_round_trips(tmp_path, tiny, vocab_file):
    folder = save_pretrained(
        tiny, tmp_path / "bin", vocab_file, weights_format="bin", key_prefix="bert."
    )
    assert (folder / "pytorch_model.bin").is_file()
    assert not (folder / "model.safetensors").exists()
    assert all(
        k.startswith("bert.") for k in torch.load(folder / "pytorch_model.bin", weights_only=True)
    )
    assert_same_model(tiny, BertModel.from_pretrained(folder))


def test_bert_base_style_checkpoint_loads(tmp_path, tiny, vocab_file):
    """Google's layout: bert. prefix, LayerNorm gamma/beta, MLM/NSP heads, position_ids."""
    folder = save_pretrained(tiny, tmp_path / "base", vocab_file)
    state = {}
    for key, value in tiny.hf_state_dict().items():
        key = key.replace("LayerNorm.weight", "LayerNorm.gamma").replace(
            "LayerNorm.bias", "LayerNorm.beta"
        )
        state["bert." + key] = value
    state["bert.embeddings.position_ids"] = torch.arange(32)[None]
    state["cls.predictions.bias"] = torch.zeros(len(VOCAB))
    state["cls.predictions.transform.dense.weight"] = torch.zeros(16, 16)
    state["cls.seq_relationship.weight"] = torch.zeros(2, 16)
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    assert_same_model(tiny, BertModel.from_pretrained(folder))


def test_transformers_reads_the_exported_folder(folder, tiny):
    from transformers import BertModel as HFBertModel

    ref = HFBertModel.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        hidden, pooled = tiny(**inputs())
        expected = ref(**inputs())
    real = inputs()["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], expected.last_hidden_state[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, expected.pooler_output, rtol=0, atol=1e-5)


def test_missing_pooler_is_initialised(folder, tiny):
    state = load_file(str(folder / "model.safetensors"))
    del state["pooler.dense.weight"], state["pooler.dense.bias"]
    save_file(state, str(folder / "model.safetensors"))
    model = BertModel.from_pretrained(folder)
    torch.testing.assert_close(
        model.embeddings.word_embeddings.weight,
        tiny.embeddings.word_embeddings.weight,
        rtol=0,
        atol=0,
    )
    assert torch.equal(model.pooler.dense.bias, torch.zeros(16))


def test_hidden_dropout_override(folder):
    model = BertModel.from_pretrained(folder, hidden_dropout=0.3)
    assert model.config.hidden_dropout == 0.3
    assert model.encoder.layer[0].output.dropout.p == 0.3
    assert model.embeddings.dropout.p == 0.3
    with pytest.raises(ConfigError, match="hidden_dropout"):
        BertModel.from_pretrained(folder, hidden_dropout=1.0)


def test_check_checkpoint_dir(folder, minilm_path):
    assert check_checkpoint_dir(folder) == folder
    assert check_checkpoint_dir(str(minilm_path)) == minilm_path
    assert resolve_checkpoint_dir("minilm") == minilm_dir()
    assert resolve_checkpoint_dir(str(folder)) == folder


def test_missing_folder(tmp_path):
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(tmp_path / "nope")
    one_line_error(info, str(tmp_path / "nope"), "does not exist")


@pytest.mark.parametrize("name", ["config.json", "vocab.txt", "model.safetensors"])
def test_missing_file(folder, name):
    (folder / name).unlink()
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(folder)
    one_line_error(info, "model.safetensors" if name == "model.safetensors" else name, str(folder))


def test_corrupt_config_json(folder):
    (folder / "config.json").write_text('{"hidden_size": 16,')
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(folder)
    one_line_error(info, "config.json", "corrupt")


def test_truncated_safetensors(folder):
    path = folder / "model.safetensors"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(folder)
    one_line_error(info, str(path), "corrupt or truncated", "re-download")


def test_truncated_pytorch_model_bin(tmp_path, tiny, vocab_file):
    folder = save_pretrained(tiny, tmp_path / "bin", vocab_file, weights_format="bin")
    path = folder / "pytorch_model.bin"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(folder)
    one_line_error(info, str(path), "corrupt or truncated", "re-download")


def test_missing_key(folder):
    state = load_file(str(folder / "model.safetensors"))
    del state["encoder.layer.1.output.LayerNorm.weight"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(folder)
    one_line_error(info, "model.safetensors", "encoder.layer.1.output.LayerNorm.weight", "missing")


def test_missing_one_of_query_key_value(folder):
    state = load_file(str(folder / "model.safetensors"))
    del state["encoder.layer.0.attention.self.key.bias"]
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(folder)
    one_line_error(info, "model.safetensors", "encoder.layer.0.attention.self.key.bias")


def test_unexpected_key(folder):
    state = load_file(str(folder / "model.safetensors"))
    state["encoder.layer.7.output.dense.weight"] = torch.zeros(16, 24)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(folder)
    one_line_error(info, "model.safetensors", "encoder.layer.7.output.dense.weight", "unexpected")


def test_wrong_shape(folder):
    state = load_file(str(folder / "model.safetensors"))
    state["encoder.layer.0.intermediate.dense.weight"] = torch.zeros(25, 16)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(folder)
    one_line_error(
        info,
        "model.safetensors",
        "encoder.layer.0.intermediate.dense.weight",
        "(25, 16)",
        "(24, 16)",
    )


def test_config_json_hidden_size_not_divisible_by_heads(folder):
    raw = json.loads((folder / "config.json").read_text())
    raw["num_attention_heads"] = 5
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(folder)
    one_line_error(info, "config.json", "hidden_size", "num_heads")


def test_config_json_missing_required_field(folder):
    raw = json.loads((folder / "config.json").read_text())
    del raw["num_hidden_layers"]
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError) as info:
        BertModel.from_pretrained(folder)
    one_line_error(info, "config.json", "num_hidden_layers")


def test_save_pretrained_needs_the_vocab(tmp_path, tiny):
    with pytest.raises(ConfigError) as info:
        save_pretrained(tiny, tmp_path / "out", tmp_path / "missing_vocab.txt")
    one_line_error(info, "missing_vocab.txt")


def test_minilm_folder_is_complete(minilm_path, tmp_path):
    assert check_checkpoint_dir(minilm_path) == minilm_path
    copy = tmp_path / "minilm"
    shutil.copytree(minilm_path, copy, ignore=shutil.ignore_patterns("*.safetensors", "*.json"))
    with pytest.raises(ConfigError) as info:
        check_checkpoint_dir(copy)
    one_line_error(info, "config.json")
