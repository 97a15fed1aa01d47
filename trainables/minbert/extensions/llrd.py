"""Layer-wise learning-rate decay: the `llrd` toggle.

The lower a layer, the more general what it learned in pre-training and the less it should
move when fine-tuning (Howard & Ruder 2018, ULMFiT's discriminative fine-tuning; Clark et al.
2020, ELECTRA's layer-wise decay; Sun et al. 2019 for BERT). With decay d and L encoder
layers (BEiT's and timm's convention, ULMFiT's "each layer one factor below the one above"):

    task heads and everything outside the encoder's layers   scale 1
    (the heads, any task-specific layers, the pooler)
    encoder layer i (0 at the bottom, L-1 at the top)        scale d^(L - i)
    embeddings (word, position, token type, their norm)      scale d^(L + 1)

so the top layer learns at d * lr, one factor below the heads, and the embeddings at the
lowest rate. The pooler sits above the last layer and, like the heads, gets scale 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

from trainables.errors import ConfigError
from trainables.minbert.extensions.optimization import ParamGroups
from trainables.minbert.model import BertModel

if TYPE_CHECKING:
    from trainables.minbert.config import TrialConfig

__all__ = ["LayerwiseLrDecay"]


class LayerwiseLrDecay(ParamGroups):
    """One param group per encoder depth, each a further factor `decay` below the one above.

    Args:
        cfg: the trial's configuration (how the registry builds it); its
            `extensions.llrd_decay` is the decay.
        decay: the decay, given directly instead of `cfg`; in (0, 1], where 1 gives every
            group train.lr.

    The model must hold its minBERT encoder as `model.encoder` (`MultitaskBert` does).
    """

    def __init__(self, cfg: TrialConfig | None = None, *, decay: float | None = None) -> None:
        if decay is None:
            if cfg is None:
                raise TypeError("LayerwiseLrDecay needs the trial's config or a decay")
            decay = float(cfg.extensions.option("llrd_decay"))
        if not 0.0 < decay <= 1.0:
            raise ConfigError(f"extensions.llrd_decay must be in (0, 1], got {decay}")
        self.decay = decay

    def scaled_groups(self, model: nn.Module) -> list[tuple[float, list[nn.Parameter]]]:
        encoder = getattr(model, "encoder", None)
        if not isinstance(encoder, BertModel):
            raise ConfigError(
                f"extensions.llrd needs a model with a minBERT encoder as .encoder, "
                f"not a {type(model).__name__}: turn llrd off for this model"
            )
        layers = list(encoder.encoder.layer)
        depth_of: dict[int, int] = {}  # parameter id -> depth; 0: embeddings, i + 1: layer i
        for p in encoder.embeddings.parameters():
            depth_of[id(p)] = 0
        for i, layer in enumerate(layers):
            for p in layer.parameters():
                depth_of[id(p)] = i + 1
        top = len(layers) + 1  # heads, pooler and anything else outside the layers
        by_depth: dict[int, list[nn.Parameter]] = {d: [] for d in range(top, -1, -1)}
        for p in model.parameters():
            if p.requires_grad:
                by_depth[depth_of.get(id(p), top)].append(p)
        return [(self.decay ** (top - d), params) for d, params in by_depth.items()]
