"""Position-wise residual MLP that moves symbol embeddings.

    e (..., D) ──► Linear(D→h) ─► LayerNorm(h) ─► GELU ─► Dropout ─► Linear(h→D) ──► δ
    transformed = normalize(e + scale · δ)                       (unit norm, fp32)

The output is a direction in embedding space; the quantizers turn it into a vocabulary embedding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["SymbolMLP"]


class SymbolMLP(nn.Module):
    """The symbol MLP of the seed: ``normalize(e + scale * mlp(e))``, applied to each position on its own.

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
        self.net = nn.Sequential(
            nn.Linear(embed_dim, hidden_dim),
            nn.LayerNorm(hidden_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, embed_dim),
        )
        if zero_init_output:
            nn.init.zeros_(self.net[-1].weight)
            nn.init.zeros_(self.net[-1].bias)

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
            x = e.float()
            lin1, norm, _, drop, lin2 = self.net
            h = F.linear(x, lin1.weight.float(), lin1.bias.float())  # (..., h)
            h = F.layer_norm(h, norm.normalized_shape, norm.weight.float(), norm.bias.float(), norm.eps)
            h = drop(F.gelu(h))
            delta = F.linear(h, lin2.weight.float(), lin2.bias.float())  # (..., D)
            return F.normalize(x + self.scale * delta, dim=-1)
