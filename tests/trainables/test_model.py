"""minBERT against the references: transformers' BertModel and sentence-transformers (MiniLM)."""

from __future__ import annotations

import copy
import csv
import json

import pytest
import torch
import torch.nn.functional as F

from trainables.errors import ConfigError
from trainables.minbert.model import BertConfig, BertModel, dropout, mean_pool
from trainables.minbert.tokenizer import WordPieceTokenizer

pytestmark = pytest.mark.usefixtures("torch_one_thread")

FALLBACK_SENTENCES = [
    "It 's a lovely film with lovely performances by Buy and Accorsi .",
    "No one goes unindicted here , which is probably for the best .",
    "A sentimental mess that never rings true .",
    "Great.",
    "The movie is a disaster from start to finish , and the acting is wooden , the plot "
    "incoherent and the jokes fall flat every single time they are attempted .",
    "Two black dogs are playing on the grass.",
    "UN chief welcomes peaceful presidential elections in Guinea",
    "How do I learn Python quickly?",
    "Ça coûte combien ? naïve café",
    "A man is slicing a tomato.",
    "Is it worth it?",
    "Stocks fell sharply on Monday after the central bank raised interest rates again.",
    "ok",
    "The cat sat on the mat while the dog slept by the fire.",
    "What is the best way to prepare for an interview at a large technology company?",
    "Hm.",
]


def real_sentences(cs224n_path, n: int = 16) -> list[str]:
    if cs224n_path is None:
        return FALLBACK_SENTENCES[:n]
    with open(cs224n_path / "ids-sst-dev.csv", newline="") as fp:
        rows = list(csv.DictReader(fp, delimiter="\t"))
    # Every 50th sentence: a spread of lengths, so the batch is padded unevenly.
    return [rows[i]["sentence"].strip() for i in range(0, 50 * n, 50)]


@pytest.fixture(scope="module")
def ours(minilm_path) -> BertModel:
    return BertModel.from_pretrained(minilm_path)


@pytest.fixture(scope="module")
def tokenizer(minilm_path) -> WordPieceTokenizer:
    return WordPieceTokenizer(minilm_path / "vocab.txt")


@pytest.fixture(scope="module")
def batch(cs224n_path, tokenizer) -> dict[str, torch.Tensor]:
    sentences = real_sentences(cs224n_path)
    batch = tokenizer.pad(tokenizer.encode(sentences, max_length=256))
    lengths = batch["attention_mask"].sum(1)
    assert lengths.min() < lengths.max(), "the batch must contain padding"
    return batch


@pytest.fixture(scope="module")
def reference(minilm_path):
    from transformers import BertModel as HFBertModel

    return HFBertModel.from_pretrained(str(minilm_path), attn_implementation="sdpa").eval()


def test_hidden_states_and_pooler_match_transformers(ours, reference, batch):
    with torch.no_grad():
        hidden, pooled = ours(**batch)
        expected = reference(**batch)
    real = batch["attention_mask"].bool()
    assert hidden.shape == expected.last_hidden_state.shape
    torch.testing.assert_close(hidden[real], expected.last_hidden_state[real], rtol=0, atol=1e-5)
    torch.testing.assert_close(pooled, expected.pooler_output, rtol=0, atol=1e-5)


def test_same_math_as_transformers_in_float64(ours, reference, batch):
    """fp32 rounding hides small mistakes (eps, scale, mask): in fp64 they agree to 1e-10."""
    small = {k: v[:6] for k, v in batch.items()}
    with torch.no_grad():
        hidden, pooled = copy.deepcopy(ours).double()(**small)
        expected = copy.deepcopy(reference).double()(**small)
    real = small["attention_mask"].bool()
    torch.testing.assert_close(hidden[real], expected.last_hidden_state[real], rtol=0, atol=1e-10)
    torch.testing.assert_close(pooled, expected.pooler_output, rtol=0, atol=1e-10)


def test_gradients_match_transformers(minilm_path, batch):
    """Training path (manual attention with a dropout mask, p ~ 0) gives HF's gradients."""
    from transformers import BertModel as HFBertModel

    ours = BertModel.from_pretrained(minilm_path, hidden_dropout=0.0)
    ours.config.attention_dropout = 1e-9  # takes the training attention path, drops ~nothing
    for layer in ours.encoder.layer:
        layer.attention.self.dropout_p = 1e-9
    ref = HFBertModel.from_pretrained(
        str(minilm_path), hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0
    )
    small = {k: v[:4, :24] for k, v in batch.items()}
    real = small["attention_mask"].unsqueeze(-1).float()
    ours.train()
    ref.train()
    hidden, pooled = ours(**small)
    ((hidden * real).sum() / real.sum() + pooled.mean()).backward()
    out = ref(**small)
    ((out.last_hidden_state * real).sum() / real.sum() + out.pooler_output.mean()).backward()

    layer, ref_layer = ours.encoder.layer[2], ref.encoder.layer[2]
    ref_qkv = torch.cat(
        [getattr(ref_layer.attention.self, n).weight.grad for n in ("query", "key", "value")]
    )
    torch.testing.assert_close(layer.attention.self.qkv.weight.grad, ref_qkv, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        layer.output.dense.weight.grad, ref_layer.output.dense.weight.grad, rtol=1e-4, atol=1e-6
    )
    torch.testing.assert_close(
        ours.embeddings.word_embeddings.weight.grad,
        ref.embeddings.word_embeddings.weight.grad,
        rtol=1e-4,
        atol=1e-6,
    )
    assert ours.embeddings.word_embeddings.weight.grad[ours.config.pad_token_id].abs().sum() == 0


def test_mean_pooled_embedding_matches_sentence_transformers(
    ours, tokenizer, cs224n_path, minilm_path
):
    from sentence_transformers import SentenceTransformer

    sentences = real_sentences(cs224n_path)
    st = SentenceTransformer(str(minilm_path), device="cpu")
    expected = st.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    batch = tokenizer.pad(tokenizer.encode(sentences, max_length=st.max_seq_length))
    with torch.no_grad():
        hidden, _ = ours(**batch)
    got = F.normalize(mean_pool(hidden, batch["attention_mask"]), dim=-1)
    torch.testing.assert_close(got, expected.cpu(), rtol=0, atol=1e-5)


def test_padding_does_not_change_a_sentence(ours, batch):
    lengths = batch["attention_mask"].sum(1)
    row = int(lengths.argmin())
    n = int(lengths[row])
    with torch.no_grad():
        padded, _ = ours(**batch)
        alone, pooled_alone = ours(batch["input_ids"][row : row + 1, :n])
    torch.testing.assert_close(padded[row, :n], alone[0], rtol=0, atol=1e-5)


def test_training_attention_path_matches_eval_path_when_nothing_is_dropped(ours, batch):
    with torch.no_grad():
        expected, _ = ours(**batch)
        for layer in ours.encoder.layer:
            layer.attention.self.dropout_p = 1e-9
        ours.embeddings.dropout.p = 0.0
        for layer in ours.encoder.layer:
            layer.attention.output.dropout.p = layer.output.dropout.p = 0.0
        try:
            ours.train()
            got, _ = ours(**batch)
        finally:
            ours.eval()
            ours.embeddings.dropout.p = ours.config.hidden_dropout
            for layer in ours.encoder.layer:
                layer.attention.self.dropout_p = ours.config.attention_dropout
                layer.attention.output.dropout.p = ours.config.hidden_dropout
                layer.output.dropout.p = ours.config.hidden_dropout
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(got[real], expected[real], rtol=0, atol=1e-5)


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_dropout_drops_p_and_rescales(p):
    x = torch.rand(400, 500) + 1.0
    torch.manual_seed(0)
    y = dropout(x, p, training=True)
    kept = y != 0
    assert abs(1 - kept.float().mean().item() - p) < 0.005
    torch.testing.assert_close(y[kept], x[kept] / (1 - p))
    torch.manual_seed(0)
    assert torch.equal(dropout(x, p, training=True), y)  # seeded like every other torch RNG
    assert not torch.equal(dropout(x, p, training=True), y)
    assert dropout(x, p, training=False) is x
    x.requires_grad_(True)
    torch.manual_seed(1)
    dropout(x, p, training=True).sum().backward()
    torch.manual_seed(1)
    expected = dropout(torch.ones_like(x), p, training=True)
    torch.testing.assert_close(x.grad, expected)


def test_dropout_is_active_only_in_training(ours, batch):
    small = {k: v[:2] for k, v in batch.items()}
    with torch.no_grad():
        ours.train()
        try:
            a, _ = ours(**small)
            b, _ = ours(**small)
        finally:
            ours.eval()
        c, _ = ours(**small)
        d, _ = ours(**small)
    assert not torch.allclose(a, b)
    assert torch.equal(c, d)


def test_from_config_is_seeded_and_initialised_as_bert():
    config = BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_layers=2,
        num_heads=4,
        intermediate_size=32,
        max_position_embeddings=20,
    )
    a = BertModel.from_config(config, seed=3)
    b = BertModel.from_config(config, seed=3)
    c = BertModel.from_config(config, seed=4)
    for (name, pa), pb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(pa, pb), name
    assert not torch.equal(
        a.encoder.layer[0].attention.self.qkv.weight, c.encoder.layer[0].attention.self.qkv.weight
    )
    assert torch.equal(a.embeddings.LayerNorm.weight, torch.ones(16))
    assert torch.equal(a.encoder.layer[1].output.dense.bias, torch.zeros(16))
    assert torch.equal(a.embeddings.word_embeddings.weight[0], torch.zeros(16))
    std = a.encoder.layer[0].intermediate.dense.weight.std().item()
    assert 0.015 < std < 0.025
    hidden, pooled = a(torch.randint(1, 50, (3, 7)))
    assert hidden.shape == (3, 7, 16) and pooled.shape == (3, 16)
    assert a.config is config


def test_mean_pool_ignores_padding():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]]])
    mask = torch.tensor([[1, 1, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0]]))
    torch.testing.assert_close(mean_pool(hidden, None), hidden.mean(1))


def test_too_long_input_is_refused():
    model = BertModel.from_config(
        BertConfig(
            vocab_size=10,
            hidden_size=8,
            num_layers=1,
            num_heads=2,
            intermediate_size=8,
            max_position_embeddings=4,
        ),
        seed=0,
    )
    with pytest.raises(ValueError, match="max_position_embeddings"):
        model(torch.ones(1, 5, dtype=torch.long))


def test_heads_must_divide_hidden_size():
    with pytest.raises(ConfigError, match="hidden_size .*num_heads"):
        BertConfig(hidden_size=30, num_heads=4)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("hidden_act", "gelu_new", "hidden_act"),
        ("position_embedding_type", "relative_key", "position_embedding_type"),
        ("model_type", "roberta", "model_type"),
        ("num_attention_heads", 5, "num_heads"),
        ("hidden_dropout_prob", 1.5, "hidden_dropout"),
        ("num_hidden_layers", "six", "num_layers"),
    ],
)
def test_config_json_refuses_what_the_encoder_does_not_implement(
    tmp_path, minilm_path, field, value, match
):
    raw = json.loads((minilm_path / "config.json").read_text())
    raw[field] = value
    path = tmp_path / "config.json"
    path.write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=match) as info:
        BertConfig.from_json(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_config_json_round_trips(minilm_path):
    config = BertConfig.from_json(minilm_path / "config.json")
    assert (config.hidden_size, config.num_layers, config.num_heads) == (384, 6, 12)
    assert config.layer_norm_eps == 1e-12 and config.vocab_size == 30522
    hf = config.to_hf_dict()
    assert hf["num_hidden_layers"] == 6 and hf["attention_probs_dropout_prob"] == 0.1
