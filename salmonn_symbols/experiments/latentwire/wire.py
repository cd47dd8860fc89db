"""The wire: a fixed PCA of the frozen LLM's token embeddings, with optional pooling along the sequence.

    message embeddings (B, L, D)
      ─► windows of k consecutive tokens (k = 1: per token) ─► mean (B, G, D) or concat (B, G, kD)
      ─► centre, project on the top d = D / ratio principal directions of the training windows ─► codes (B, G, d)
      ─► [noise: + level * per-dimension std * N(0, 1)]                                    (what is sent)
      ─► PCA inverse, each window's reconstruction repeated over its k slots ─► (B, G*k, D) (PCA-only arm)
      ─► snap (k = 1 only): each code to the nearest code of the whole vocabulary ─► that token's embedding

The PCA is fitted once on the training split's message tokens and never trained. G = ceil(L / k); a last,
partial window is pooled over its real tokens (mean) or zero-filled (concat).
"""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["Wire", "fit_wire"]


class Wire(nn.Module):
    """A fitted PCA wire (buffers only: nothing here is trained).

    Args:
        mean: (P,) mean of the training windows, P = D (mean pooling) or k*D (concat).
        components: (d, P) top principal directions, rows orthonormal.
        std: (d,) standard deviation of each code dimension on the training windows.
        token_var: Mean per-dimension variance of training token embeddings (the unit of the normalised MSE).
        k: Tokens per window.
        mode: "mean" or "concat".
        dim: D, the LLM's embedding width.
    """

    def __init__(
        self,
        mean: torch.Tensor,
        components: torch.Tensor,
        std: torch.Tensor,
        token_var: float,
        k: int,
        mode: str,
        dim: int,
    ) -> None:
        super().__init__()
        self.register_buffer("mean", mean)
        self.register_buffer("components", components)
        self.register_buffer("std", std)
        self.register_buffer("vocab_codes", torch.empty(0), persistent=False)
        self.token_var, self.k, self.mode, self.dim = token_var, k, mode, dim
        self.explained = float("nan")

    @property
    def code_dim(self) -> int:
        return self.components.shape[0]

    def windows(self, emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pools (B, L, D) embeddings into (B, G, P) windows; returns them and the (B, G) window mask."""
        b, n, d = emb.shape
        g = math.ceil(n / self.k)
        pad = g * self.k - n
        emb = torch.nn.functional.pad(emb * mask[..., None], (0, 0, 0, pad)).view(b, g, self.k, d)
        m = torch.nn.functional.pad(mask, (0, pad)).view(b, g, self.k)  # (B, G, k)
        if self.mode == "mean":
            win = emb.sum(2) / m.sum(2, keepdim=True).clamp(min=1)  # (B, G, D)
        else:
            win = emb.reshape(b, g, self.k * d)  # (B, G, kD)
        return win, m.any(2)

    def encode(self, emb: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes (B, G, d) of (B, L, D) message embeddings, and the (B, G) window mask (float32 even under
        autocast: a bf16 wire alone makes snapping miss tokens at 32x and 64x)."""
        with _float32(emb):
            win, gmask = self.windows(emb.float(), mask)
            return (win - self.mean) @ self.components.T, gmask

    def add_noise(self, codes: torch.Tensor, level: float, generator: torch.Generator | None = None) -> torch.Tensor:
        """Codes plus Gaussian noise of ``level`` times each dimension's training std."""
        if level <= 0:
            return codes
        eps = torch.randn(codes.shape, generator=generator, device=codes.device if generator is None else "cpu")
        return codes + level * self.std * eps.to(codes.device)

    def decode(self, codes: torch.Tensor, length: int) -> torch.Tensor:
        """PCA inverse: (B, G, d) codes to (B, length, D) token embeddings (a window's mean fills its k slots)."""
        with _float32(codes):
            win = codes.float() @ self.components + self.mean  # (B, G, P)
        b, g, _ = win.shape
        if self.mode == "mean":
            tokens = win[:, :, None, :].expand(b, g, self.k, self.dim)
        else:
            tokens = win.view(b, g, self.k, self.dim)
        return tokens.reshape(b, g * self.k, self.dim)[:, :length]

    def set_vocabulary(self, table: torch.Tensor) -> None:
        """Codes of every vocabulary row (V, d), for snapping; per-token wires only."""
        if self.k != 1:
            raise ValueError("snapping needs a per-token wire (k = 1)")
        with _float32(table):
            self.vocab_codes = (table.float() - self.mean) @ self.components.T

    @torch.no_grad()
    def snap(self, codes: torch.Tensor, table: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """Each (B, L, d) code replaced by the embedding of the vocabulary row with the nearest code (B, L, D)."""
        if self.vocab_codes.numel() == 0:
            raise RuntimeError("call set_vocabulary(table) before snap")
        flat = codes.reshape(-1, codes.shape[-1]).float()  # (N, d)
        sq = (self.vocab_codes**2).sum(1)  # (V,)
        with _float32(codes):
            ids = torch.cat([(sq - 2 * part @ self.vocab_codes.T).argmin(1) for part in flat.split(chunk)])  # (N,)
        return table[ids].float().view(*codes.shape[:-1], table.shape[1])


def _float32(t: torch.Tensor) -> torch.autocast:
    """A context where autocast is off on ``t``'s device: the wire computes in float32."""
    return torch.autocast(t.device.type, enabled=False)


@torch.no_grad()
def fit_wire(messages: list[torch.Tensor], ratio: int, k: int, mode: str) -> Wire:
    """Fits the PCA wire on training messages.

    Args:
        messages: Training message embeddings, each (L_i, D).
        ratio: D / d, the compression of each wire vector.
        k: Tokens per window (1: per token).
        mode: Window pooling, "mean" or "concat".
    """
    dim = messages[0].shape[1]
    tokens = torch.cat(messages).double()  # (N, D)
    token_var = tokens.var(0).mean().item()
    probe = Wire(torch.zeros(1), torch.zeros(0, 1), torch.zeros(0), token_var, k, mode, dim)
    wins = torch.cat(
        [
            probe.windows(m[None].float(), torch.ones(1, len(m), dtype=torch.bool, device=m.device))[0][0]
            for m in messages
        ]
    ).double()  # (W, P)
    d = max(1, dim // ratio)
    if d > min(wins.shape):
        raise ValueError(f"ratio {ratio}: {d} code dimensions but only {len(wins)} training windows")
    mean = wins.mean(0)
    cov = (wins - mean).T @ (wins - mean) / len(wins)  # (P, P)
    evals, evecs = torch.linalg.eigh(cov)  # ascending
    comps = evecs[:, -d:].flip(1).T.contiguous()  # (d, P)
    std = evals[-d:].flip(0).clamp(min=0).sqrt()
    wire = Wire(mean.float(), comps.float(), std.float(), token_var, k, mode, dim)
    wire.explained = (evals[-d:].sum() / evals.sum()).item()  # fraction of the windows' variance kept
    return wire
