"""Training-step speed of minBERT against transformers' BertModel on the same checkpoint.

    .venv/bin/python benchmarks/bench_model.py --batch 32 --seq 64 --steps 20 --warmup 3

One step = forward + backward of loss = mean(last hidden states) + zeroing the gradients, in
fp32, train mode (dropout on), identical inputs for both models. The two models alternate
A/B every repetition (and which goes first), so that load from other processes hits both
alike. The headline figure is the median over repetitions of the paired ratio
reference_time / minbert_time (each pair measured back to back), which is robust to load that
changes during the run; the medians of each model's wall and CPU times are printed as well.
`--padding` gives every other row random padding.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

from trainables.minbert.hf_folder import minilm_dir  # noqa: E402
from trainables.minbert.model import BertModel  # noqa: E402


def make_inputs(
    batch: int, seq: int, vocab: int, padding: bool, seed: int = 0
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(1000, vocab, (batch, seq), generator=g)
    input_ids[:, 0] = 101  # [CLS]
    attention_mask = torch.ones(batch, seq, dtype=torch.long)
    if padding:
        for row in range(0, batch, 2):
            n = int(torch.randint(seq // 4, seq, (1,), generator=g))
            attention_mask[row, n:] = 0
            input_ids[row, n:] = 0
    token_type_ids = torch.zeros(batch, seq, dtype=torch.long)
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": token_type_ids,
    }


def step_minbert(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    hidden, _ = model(inputs["input_ids"], inputs["attention_mask"], inputs["token_type_ids"])
    hidden.mean().backward()
    model.zero_grad(set_to_none=True)


def step_reference(model: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> None:
    hidden = model(**inputs).last_hidden_state
    hidden.mean().backward()
    model.zero_grad(set_to_none=True)


def timed(fn, *args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) for one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn(*args)
    return time.perf_counter() - wall, time.process_time() - cpu


def main(argv: list[str] | None = None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="timed repetitions per model")
    parser.add_argument("--warmup", type=int, default=3, help="untimed repetitions per model")
    parser.add_argument(
        "--attn",
        default="sdpa",
        choices=["sdpa", "eager"],
        help="transformers attention implementation",
    )
    parser.add_argument("--padding", action="store_true", help="pad every other row")
    parser.add_argument(
        "--no-dropout",
        action="store_true",
        help="dropout 0 in both models (isolates the gain that is not dropout)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from transformers import BertModel as HFBertModel

    folder = minilm_dir()
    ours = BertModel.from_pretrained(folder).train()
    ref = HFBertModel.from_pretrained(str(folder), attn_implementation=args.attn).train()
    if args.no_dropout:
        for module in list(ours.modules()) + list(ref.modules()):
            for name in ("p", "dropout_p"):  # minBERT's Dropout / attention, nn.Dropout
                if isinstance(getattr(module, name, None), float):
                    setattr(module, name, 0.0)
    inputs = make_inputs(args.batch, args.seq, ours.config.vocab_size, args.padding)

    for _ in range(args.warmup):
        step_minbert(ours, inputs)
        step_reference(ref, inputs)
    t_ours: list[tuple[float, float]] = []
    t_ref: list[tuple[float, float]] = []
    for i in range(args.steps):  # alternate which model goes first, too
        if i % 2 == 0:
            t_ours.append(timed(step_minbert, ours, inputs))
            t_ref.append(timed(step_reference, ref, inputs))
        else:
            t_ref.append(timed(step_reference, ref, inputs))
            t_ours.append(timed(step_minbert, ours, inputs))

    def median_ms(times: list[tuple[float, float]], which: int) -> float:
        return statistics.median(t[which] for t in times) * 1e3

    def paired(which: int) -> float:
        return statistics.median(r[which] / o[which] for r, o in zip(t_ref, t_ours, strict=True))

    ratio = paired(0)
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"threads {torch.get_num_threads()}, python {sys.version.split()[0]}"
    )
    print(
        f"minBERT {median_ms(t_ours, 0):.1f} ms wall / {median_ms(t_ours, 1):.1f} ms CPU, "
        f"transformers-{args.attn} {median_ms(t_ref, 0):.1f} ms wall / "
        f"{median_ms(t_ref, 1):.1f} ms CPU per training step (medians of {args.steps})"
    )
    print(
        f"speedup {ratio:.3f}x wall ({paired(1):.3f}x CPU time): median paired ratio "
        f"transformers-{args.attn} / minBERT, batch {args.batch}, seq {args.seq}"
        f"{', padded' if args.padding else ''}{', no dropout' if args.no_dropout else ''}, "
        "fp32, train mode"
    )
    return ratio


if __name__ == "__main__":
    main()
