"""CS224N scores and submission files, checked against values computed by hand."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from trainables.minbert.metrics import (
    overall_score,
    para_accuracy,
    read_submission,
    sst_accuracy,
    sts_pearson,
    write_submission,
)


def test_sst_accuracy_by_hand() -> None:
    logits = [
        [0.1, 0.9, 0.0, 0.0, 0.0],  # argmax 1, label 1: right
        [0.0, 0.0, 0.0, 0.2, 0.3],  # argmax 4, label 3: wrong
        [5.0, 1.0, 1.0, 1.0, 1.0],  # argmax 0, label 0: right
        [-1.0, -1.0, 0.0, -1.0, -1.0],  # argmax 2, label 2: right
    ]
    labels = [1, 3, 0, 2]
    assert sst_accuracy(logits, labels) == 0.75  # 3 of 4
    assert sst_accuracy(torch.tensor(logits), torch.tensor(labels)) == 0.75
    assert sst_accuracy(torch.tensor(logits, dtype=torch.bfloat16), np.array(labels)) == 0.75


def test_sst_accuracy_refuses_wrong_shapes() -> None:
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        sst_accuracy([[0.0, 1.0]], [1])
    with pytest.raises(ValueError, match="2 predictions but 1 labels"):
        sst_accuracy(np.zeros((2, 5)), [1])
    with pytest.raises(ValueError, match="empty"):
        sst_accuracy(np.zeros((0, 5)), [])


def test_para_accuracy_by_hand() -> None:
    # logit > 0 -> 1: preds 1, 0, 0 (sigmoid(0) = 0.5 rounds to 0), 1, 0
    logits = [2.0, -0.5, 0.0, 0.1, -3.0]
    labels = [1, 1, 0, 1, 0]  # only the second is wrong
    assert para_accuracy(logits, labels) == 0.8
    assert para_accuracy(torch.tensor(logits).unsqueeze(1), torch.tensor(labels)) == 0.8


def test_para_accuracy_matches_the_starters_sigmoid_round() -> None:
    gen = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(200, generator=gen)
    labels = torch.randint(0, 2, (200,), generator=gen)
    starter = float((logits.sigmoid().round() == labels).float().mean())
    assert para_accuracy(logits, labels) == pytest.approx(starter)


def test_sts_pearson_by_hand() -> None:
    # deviations (-1, 0, 1) and (-1, 1, 0): cov 1, variances 2 and 2 -> r = 1 / 2
    assert sts_pearson([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)
    # Scale and offset of the predictions do not matter; a reversed order gives -1.
    assert sts_pearson([10.0, 20.0, 30.0], [0.0, 0.5, 1.0]) == pytest.approx(1.0)
    assert sts_pearson(torch.tensor([[3.0], [2.0], [1.0]]), [0.0, 0.5, 1.0]) == pytest.approx(-1.0)


def test_sts_pearson_matches_numpy_corrcoef() -> None:
    rng = np.random.default_rng(0)
    preds, labels = rng.normal(size=50), rng.uniform(0, 5, size=50)
    assert sts_pearson(preds, labels) == pytest.approx(np.corrcoef(preds, labels)[1][0], abs=1e-12)


def test_sts_pearson_constant_predictions_give_zero_without_nan_or_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert sts_pearson([2.5, 2.5, 2.5], [1.0, 3.0, 2.0]) == 0.0
        assert sts_pearson([1.0, 2.0, 3.0], [4.0, 4.0, 4.0]) == 0.0
        assert sts_pearson([1.0], [4.0]) == 0.0


def test_overall_score_reproduces_the_published_example() -> None:
    # arXiv 2408.15265: (0.516 + 0.886 + (0.864 + 1) / 2) / 3 = 2.334 / 3 = 0.778
    assert round(overall_score(0.516, 0.886, 0.864), 3) == 0.778
    assert overall_score(1.0, 1.0, 1.0) == 1.0
    assert overall_score(0.0, 0.0, -1.0) == 0.0


def test_submission_files_are_byte_exact(tmp_path) -> None:
    sst = write_submission(
        tmp_path / "sst-dev-output.csv", "sst", ["a1", "b2"], torch.tensor([3, 0])
    )
    para = write_submission(tmp_path / "para-dev-output.csv", "para", ["q1", "q2"], [True, False])
    sts = write_submission(tmp_path / "sts-dev-output.csv", "sts", ["s1", "s2"], [3.25, 0.5])
    assert sst.read_bytes() == b"id \t Predicted_Sentiment \na1 , 3 \nb2 , 0 \n"
    assert para.read_bytes() == b"id \t Predicted_Is_Paraphrase \nq1 , 1.0 \nq2 , 0.0 \n"
    assert sts.read_bytes() == b"id \t Predicted_Similiary \ns1 , 3.25 \ns2 , 0.5 \n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "para-dev-output.csv",
        "sst-dev-output.csv",
        "sts-dev-output.csv",
    ]  # no temporary file left behind


def test_submission_roundtrip_and_reads_the_starters_output(tmp_path) -> None:
    preds = np.array([0.1, 4.75, -0.3], dtype=np.float32)
    path = write_submission(tmp_path / "sts-test-output.csv", "sts", ["x", "y", "z"], preds)
    task, read = read_submission(path)
    assert task == "sts"
    assert read == {"x": float(preds[0]), "y": 4.75, "z": float(preds[2])}  # exact round trip
    # A file exactly as the starter writes it (f.write(f"{p} , {s} \n") after the header).
    starter = tmp_path / "para-test-output.csv"
    starter.write_text("id \t Predicted_Is_Paraphrase \nabc , 1.0 \ndef , 0.0 \n")
    assert read_submission(starter) == ("para", {"abc": 1.0, "def": 0.0})


def test_submission_overwrites_atomically_and_refuses_bad_input(tmp_path) -> None:
    path = tmp_path / "sst-test-output.csv"
    path.write_text("old content")
    write_submission(path, "sst", ["a"], [4])
    assert path.read_text() == "id \t Predicted_Sentiment \na , 4 \n"
    with pytest.raises(ValueError, match="unknown task"):
        write_submission(path, "cfimdb", ["a"], [1])
    with pytest.raises(ValueError, match="2 ids but 1 predictions"):
        write_submission(path, "sst", ["a", "b"], [1])
    with pytest.raises(ValueError, match="class 0-4"):
        write_submission(path, "sst", ["a"], [5])
    with pytest.raises(ValueError, match="not 0 or 1"):
        write_submission(path, "para", ["a"], [0.7])
    with pytest.raises(ValueError, match="finite"):
        write_submission(path, "sts", ["a"], [float("nan")])
    assert path.read_text() == "id \t Predicted_Sentiment \na , 4 \n"  # untouched by failures
    assert [p.name for p in tmp_path.iterdir()] == [path.name]
