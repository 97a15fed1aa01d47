"""SMART smoothness-inducing adversarial regularisation (the `smart` toggle), for every task."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from trainables.minbert.extensions.loss_terms import LossTerm, TaskOutput

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig
    from trainables.minbert.multitask import MultitaskBert

__all__ = [
    "Smart",
    "ascent_step",
    "divergence",
    "squared_error",
    "symmetric_bernoulli_kl",
    "symmetric_kl",
]


def _wide(x: torch.Tensor) -> torch.Tensor:
    """`x` in float32 at least (bf16 outputs are compared in float32, float64 stays)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def symmetric_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) + KL(q || p) of the categorical distributions softmax(p), softmax(q) (B, C),
    averaged over the batch: sum_c (p_c - q_c)(log p_c - log q_c)."""
    log_p = F.log_softmax(_wide(p_logits), dim=-1)
    log_q = F.log_softmax(_wide(q_logits), dim=-1)
    return ((log_p.exp() - log_q.exp()) * (log_p - log_q)).sum(dim=-1).mean()


def symmetric_bernoulli_kl(x_logits: torch.Tensor, y_logits: torch.Tensor) -> torch.Tensor:
    """KL + reverse KL of Bernoulli(sigmoid(x)) and Bernoulli(sigmoid(y)) (B,), averaged over
    the batch; in closed form (sigmoid(x) - sigmoid(y)) * (x - y)."""
    x, y = _wide(x_logits), _wide(y_logits)
    return ((torch.sigmoid(x) - torch.sigmoid(y)) * (x - y)).mean()


def squared_error(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(x - y)^2 averaged over the batch: the divergence of two regression outputs (B,)."""
    return (_wide(x) - _wide(y)).pow(2).mean()


def divergence(task: str, clean: torch.Tensor, perturbed: torch.Tensor) -> torch.Tensor:
    """SMART's l_s between a task's clean and perturbed outputs: symmetric KL of the SST
    classes, of the Quora Bernoulli, squared error of the STS scores."""
    if task == "sst":
        return symmetric_kl(clean, perturbed)
    if task == "para":
        return symmetric_bernoulli_kl(clean, perturbed)
    return squared_error(clean, perturbed)


def ascent_step(
    delta: torch.Tensor, grad: torch.Tensor, step_size: float, epsilon: float
) -> torch.Tensor:
    """One projected ascent step: delta + step_size * grad / ||grad||_inf, then projected onto
    the infinity-norm ball of radius epsilon (a clamp). The norm is taken per token vector
    (the last dimension), so a sentence's step does not shrink with another's larger
    gradient; a token with no gradient (padding) does not move."""
    scale = grad.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(grad.dtype).tiny)
    return (delta + step_size * grad / scale).clamp(-epsilon, epsilon)


class _Perturbation:
    """Adds one perturbation per embedding-layer call of a forward (one call in every layout),
    each created at its first call as Gaussian noise of the output's shape, projected."""

    def __init__(self, std: float, epsilon: float, generator: torch.Generator) -> None:
        self.std, self.epsilon, self.generator = std, epsilon, generator
        self.deltas: list[torch.Tensor] = []
        self.calls = 0
        self.requires_grad = False

    def start(self, requires_grad: bool) -> None:
        """Before each forward: count calls from the first again; whether the perturbations
        are leaves whose gradient the next ascent step reads."""
        self.calls = 0
        self.requires_grad = requires_grad
        self.deltas = [d.detach().requires_grad_(requires_grad) for d in self.deltas]

    def ascend(self, grads: tuple[torch.Tensor | None, ...], step_size: float) -> None:
        """One projected ascent step of every perturbation (`ascent_step`)."""
        self.deltas = [
            d.detach() if g is None else ascent_step(d.detach(), g, step_size, self.epsilon)
            for d, g in zip(self.deltas, grads, strict=True)
        ]

    def __call__(self, embedded: torch.Tensor) -> torch.Tensor:
        if self.calls == len(self.deltas):
            gen = self.generator
            noise = torch.randn(embedded.shape, generator=gen, device=gen.device)
            delta = self.std * noise.to(embedded.device, embedded.dtype)
            self.deltas.append(delta.clamp_(-self.epsilon, self.epsilon))
            self.deltas[-1].requires_grad_(self.requires_grad)
        delta = self.deltas[self.calls]
        self.calls += 1
        return embedded + delta


class Smart(LossTerm):
    """SMART's smoothness-inducing adversarial regulariser (Jiang et al. 2020, "SMART: Robust
    and Efficient Fine-Tuning for Pre-trained Natural Language Models through Principled
    Regularized Optimization", Algorithm 1), without its Bregman proximal point part.

    With x the encoder's embedding-layer output of the batch and f the model's prediction:

        delta_0 = clip(N(0, noise_std^2), -epsilon, epsilon)
        delta_k = clip(delta_{k-1} + step_size * g / ||g||_inf, -epsilon, epsilon),
                  g = grad_delta l_s(f(x) [held fixed], f(x + delta_{k-1}))      k = 1..steps
        term    = weight * l_s(f(x), f(x + delta_steps))

    l_s is `divergence` (symmetric KL for SST and Quora, squared error for STS); the term's
    gradient flows into the model through both outputs, delta_steps held fixed. Every
    perturbed forward replays the dropout masks of the clean one, so that the divergence
    measures the perturbation alone; the initial noise comes from a generator of this term,
    seeded from torch's global one at each call (reproducible, and resumed with it). The cost
    per task and step: steps + 1 extra forwards and steps input-gradient backwards.

    The defaults (step size and epsilon 1e-2, noise std 1e-5, one step) are larger than the
    paper's epsilon of 1e-5: on MiniLM and an SST batch that one gives a term of 3e-9 in fp32
    (1e-2: 2e-4, 1e-1: 1e-2, task loss 1.6), and in bf16, whose rounding step near 1 is 8e-3,
    most of so small a perturbation rounds away. The authors' code (mt-dnn) and
    smart-pytorch rescale each token's perturbation to infinity norm 1 instead of projecting.

    Args:
        cfg: the trial's configuration: `extensions.smart_weight`, `smart_noise_std`,
            `smart_steps`, `smart_step_size`, `smart_epsilon`.
    """

    name = "smart"
    replays_dropout = True

    def __init__(self, cfg: TrialConfig) -> None:
        super().__init__(frozenset({"sst", "para", "sts"}))
        ext = cfg.extensions
        self.weight = float(ext.option("smart_weight"))
        self.noise_std = float(ext.option("smart_noise_std"))
        self.steps = int(ext.option("smart_steps"))
        self.step_size = float(ext.option("smart_step_size"))
        self.epsilon = float(ext.option("smart_epsilon"))
        # The last call's perturbations, one per embedding-layer call, detached: the initial
        # noise and the perturbation the term was computed at (for inspection and tests).
        self.last_initial: list[torch.Tensor] = []
        self.last_final: list[torch.Tensor] = []

    def __call__(self, model: MultitaskBert, out: TaskOutput) -> torch.Tensor | None:
        task = out.batch["task"]
        if task not in self.tasks:
            return None
        seed = int(torch.randint(0, 2**62, (1,)).item())
        generator = torch.Generator(device=out.preds.device).manual_seed(seed)
        perturbation = _Perturbation(self.noise_std, self.epsilon, generator)
        target = out.preds.detach()
        for step in range(self.steps + 1):
            last = step == self.steps
            perturbation.start(requires_grad=not last)
            perturbed = model.forward_perturbed(out.batch, perturbation, out.random_state)
            if step == 0:
                self.last_initial = [d.detach() for d in perturbation.deltas]
            if last:
                break
            value = divergence(task, target, perturbed)
            perturbation.ascend(
                torch.autograd.grad(value, perturbation.deltas, allow_unused=True),
                self.step_size,
            )
        self.last_final = [d.detach() for d in perturbation.deltas]
        return self.weight * divergence(task, out.preds, perturbed)
