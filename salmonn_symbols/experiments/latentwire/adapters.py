"""Adapters: from wire codes back to the LLM's token embeddings (the only trained part).

    codes (B, G, d) ─► PCA inverse (fixed, from the wire) ─► base (B, G*k, D)
                   └► learned residual (zero at init) ──────────────► + ─► reconstruction (B, L, D)

    linear:      Linear(d, k*D)                                  one window at a time
    mlp:         Linear(d, H) GELU Linear(H, H) GELU Linear(H, k*D)   one window at a time
    transformer: Linear(d, H) + position ─► encoder over the G windows ─► each window split into k slots
                 (Linear(H, k*H) + slot position) ─► encoder over the G*k slots ─► Linear(H, D)
                 (sees the whole message: the only adapter that can undo pooling or noise from context)

Each adapter starts as the PCA-only reconstruction, so training can only move it from there. The learned part reads
whitened codes and writes in units of the embeddings' standard deviation.
"""

from __future__ import annotations

import torch
from torch import nn

from .wire import Wire

__all__ = ["Adapter", "build_adapter"]

MAX_SLOTS = 512  # longest message in tokens the transformer's position table holds


class _Window(nn.Module):
    """Linear or MLP residual applied to each window on its own."""

    def __init__(self, d: int, k: int, dim: int, hidden: int, mlp: bool) -> None:
        super().__init__()
        out = nn.Linear(hidden if mlp else d, k * dim)
        nn.init.zeros_(out.weight)
        nn.init.zeros_(out.bias)
        layers = [nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(), out] if mlp else [out]
        self.net = nn.Sequential(*layers)
        self.k, self.dim = k, dim

    def forward(self, codes: torch.Tensor, gmask: torch.Tensor) -> torch.Tensor:
        b, g, _ = codes.shape
        return self.net(codes).view(b, g * self.k, self.dim)  # (B, G*k, D)


class _Sequence(nn.Module):
    """Transformer residual over the whole message: windows, then their k slots."""

    def __init__(self, d: int, k: int, dim: int, hidden: int, layers: int, heads: int) -> None:
        super().__init__()

        def encoder() -> nn.TransformerEncoder:
            layer = nn.TransformerEncoderLayer(
                hidden, heads, 4 * hidden, dropout=0.0, batch_first=True, norm_first=True
            )
            return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)

        self.inp = nn.Linear(d, hidden)
        self.pos = nn.Embedding(MAX_SLOTS, hidden)
        self.windows = encoder()
        self.split = nn.Linear(hidden, k * hidden)
        self.slots = encoder()
        self.out = nn.Linear(hidden, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        nn.init.normal_(self.pos.weight, std=0.02)
        self.k, self.hidden = k, hidden

    def forward(self, codes: torch.Tensor, gmask: torch.Tensor) -> torch.Tensor:
        b, g, _ = codes.shape
        if g * self.k > MAX_SLOTS:
            raise ValueError(f"message of {g * self.k} slots is longer than the adapter's {MAX_SLOTS} positions")
        x = self.inp(codes) + self.pos.weight[:g]  # (B, G, H)
        x = self.windows(x, src_key_padding_mask=~gmask)
        x = self.split(x).view(b, g * self.k, self.hidden) + self.pos.weight[: g * self.k]  # (B, G*k, H)
        smask = gmask.repeat_interleave(self.k, dim=1)  # (B, G*k)
        x = self.slots(x, src_key_padding_mask=~smask)
        return self.out(x)  # (B, G*k, D)


class Adapter(nn.Module):
    """PCA inverse of the wire plus a learned residual.

    Args:
        wire: The fitted wire (its PCA inverse is the fixed base).
        kind: "linear", "mlp" or "transformer".
        hidden, layers, heads: Width, encoder layers and heads (``layers``/``heads``: transformer only).
    """

    def __init__(self, wire: Wire, kind: str, hidden: int, layers: int, heads: int) -> None:
        super().__init__()
        d, k, dim = wire.code_dim, wire.k, wire.dim
        if kind in ("linear", "mlp"):
            self.residual: nn.Module = _Window(d, k, dim, hidden, mlp=kind == "mlp")
        elif kind == "transformer":
            self.residual = _Sequence(d, k, dim, hidden, layers, heads)
        else:
            raise ValueError(f"unknown adapter {kind!r}; adapters: linear, mlp, transformer")
        self.kind = kind

    def forward(self, wire: Wire, codes: torch.Tensor, gmask: torch.Tensor, length: int) -> torch.Tensor:
        """(B, length, D) reconstruction of (B, G, d) codes with (B, G) window mask."""
        # the nets see whitened codes and speak in units of the embeddings' std (~0.1 for SmolLM2), so one
        # optimiser step moves the reconstruction by a small fraction of an embedding, whatever the model
        z = codes / wire.std.clamp(min=1e-6)
        return wire.decode(codes, length) + wire.token_var**0.5 * self.residual(z, gmask)[:, :length]


def build_adapter(wire: Wire, kind: str, hidden: int, layers: int, heads: int) -> Adapter:
    """The adapter ``kind`` for ``wire``."""
    return Adapter(wire, kind, hidden, layers, heads)
