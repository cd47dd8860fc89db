"""Position-wise residual MLP that moves symbol embeddings.

    e (..., D) ─► ê = e / ‖e‖ ──► Linear(D→h) ─► LayerNorm(h) ─► GELU ─► Dropout ─► Linear(h→D) ──► δ
    transformed = normalize(ê + scale · δ)                       (unit norm, fp32)

The output is a direction in embedding space; the quantizers turn it into a vocabulary embedding. The seed
writes ``normalize(e + scale · mlp(e))``; the residual is added to the unit direction instead, so ``scale``
means the same whatever the norm of a model's embeddings (a row of norm 0.2 would otherwise move 5× as far
as a row of norm 1 for the same δ, and a row of norm 5 would barely move at all).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SymbolMLP"]


def _uniform(like: Tensor, bound: float, generator: torch.Generator | None) -> Tensor:
    """U(-bound, bound) values shaped like ``like``, drawn on the generator's own device (a seeded CPU generator
    gives every rank, and every accelerator, the same draw); ``copy_`` then moves them to ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.empty(like.shape, dtype=like.dtype, device=device).uniform_(-bound, bound, generator=generator)


class SymbolMLP(nn.Module):
    """The symbol MLP of the seed: ``normalize(ê + scale * mlp(ê))`` with ê the unit direction of each embedding,
    applied to each position on its own.

    Args:
        embed_dim: Width D of the LLM's token embeddings.
        hidden_dim: Bottleneck width h (8 or 16 in the seed).
        scale: Weight of the residual update.
        dropout: Dropout after the GELU.
        zero_init_output: Start the last Linear at zero, so the untrained MLP leaves each symbol's direction as
            it is and training starts from the symbols' own embeddings.
    """

    def __init__(
        self,
        embed_dim: int,
        hidden_dim: int = 8,
        scale: float = 0.2,
        dropout: float = 0.1,
        zero_init_output: bool = True,
    ):
        super().__init__()
        self.embed_dim, self.hidden_dim, self.scale = embed_dim, hidden_dim, scale
        self.zero_init_output = zero_init_output
        self.net = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, embed_dim),
        )
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Fresh weights (the identity map when ``zero_init_output``), drawn from ``generator`` when given, so
        every rank re-draws the same ones; called again after every discovery, so the next cycle's MLP starts
        from the newly discovered tokens instead of applying the old move to them."""
        lin1, norm, _, _, lin2 = self.net
        with torch.no_grad():
            bound = 1.0 / self.embed_dim**0.5  # nn.Linear's default range
            lin1.weight.copy_(_uniform(lin1.weight, bound, generator))
            lin1.bias.copy_(_uniform(lin1.bias, bound, generator))
            norm.reset_parameters()
            if self.zero_init_output:
                lin2.weight.zero_()
                lin2.bias.zero_()
            else:
                b2 = 1.0 / self.hidden_dim**0.5
                lin2.weight.copy_(_uniform(lin2.weight, b2, generator))
                lin2.bias.copy_(_uniform(lin2.bias, b2, generator))

    def forward(self, e: Tensor) -> Tensor:
        """Transforms embeddings.

        Args:
            e: Symbol-token embeddings, shape (..., D), any float dtype.

        Returns:
            Unit-norm transformed embeddings, shape (..., D), float32.
        """
        # fp32 whatever the surrounding autocast or parameter dtype: the output feeds a cosine over the whole
        # vocabulary, where bf16 rounding is enough to change the argmax between ranks.
        with torch.autocast(device_type=e.device.type, enabled=False):
            x = F.normalize(e.float(), dim=-1)  # (..., D) unit directions
            lin1, norm, _, drop, lin2 = self.net
            h = F.linear(x, lin1.weight.float(), lin1.bias.float())  # (..., h)
            h = F.layer_norm(h, norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
            h = drop(F.gelu(h))
            delta = F.linear(h, lin2.weight.float(), lin2.bias.float())  # (..., D)
            return F.normalize(x + self.scale * delta, dim=-1)
