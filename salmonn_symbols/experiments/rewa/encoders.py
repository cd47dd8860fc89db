"""The compressing encoders compared with FAISS: fixed random ones and learned projections.

    x (N, D) unit ─┬─ SignRandomProjection: sign(R x), R ~ N(0, 1)^(bits × D)  ─► (N, bits) bits, Hamming search
                   ├─ RandomHadamard:       √(n/m)·S H D [x; 0]  (n = 2^⌈log2 D⌉) ─► (N, m), cosine search
                   ├─ LinearProjection:     W x  (learned; starts as a random orthogonal W) ─► (N, m)
                   └─ MLPProjection:        W2 GELU(LN(W1 x))  (the seed's encoder)    ─► (N, m)
    every continuous output is L2-normalised, so inner product search is cosine search.

The binary one is the seed's "binary REWA" (random projection + sign); the Hadamard one is its "continuous
REWA". Both are fixed by their seed; the learned ones are trained by `training.ProjectionTrainer`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["LinearProjection", "MLPProjection", "RandomHadamard", "SignRandomProjection", "make_learned"]


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class SignRandomProjection(nn.Module):
    """Binary REWA: the signs of ``bits`` Gaussian random projections (SimHash), packed 8 to a byte.

    Args:
        dim: Input dimension D.
        bits: Code length; a multiple of 8.
        seed: Seed of the projection.
    """

    def __init__(self, dim: int, bits: int, seed: int):
        super().__init__()
        if bits % 8:
            raise ValueError(f"binary code length must be a multiple of 8 bits, got {bits}")
        self.bits = bits
        self.register_buffer("proj", torch.randn(bits, dim, generator=_generator(seed)))  # (bits, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, bits) bool."""
        return x @ self.proj.T > 0

    def pack(self, x: np.ndarray) -> np.ndarray:
        """(N, D) float -> (N, bits / 8) uint8 codes, as faiss binary indexes store them."""
        with torch.inference_mode():
            bits = self(torch.from_numpy(x)).numpy()
        return np.packbits(bits, axis=1, bitorder="little")


def _hadamard(n: int) -> torch.Tensor:
    """The n × n Sylvester Hadamard matrix scaled to be orthonormal (n a power of 2)."""
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


class RandomHadamard(nn.Module):
    """Continuous REWA: a subsampled randomised Hadamard transform to ``m`` dims, normalised.

    Args:
        dim: Input dimension D (zero-padded to the next power of 2, n).
        m: Output dimension (at most n).
        seed: Seed of the signs and the kept rows.
    """

    def __init__(self, dim: int, m: int, seed: int):
        super().__init__()
        n = 1 << (dim - 1).bit_length()
        if m > n:
            raise ValueError(f"random Hadamard: {m} dims exceed the padded input size {n}")
        g = _generator(seed)
        signs = torch.randint(0, 2, (n,), generator=g).float() * 2 - 1  # (n,) the random diagonal D
        rows = torch.randperm(n, generator=g)[:m]  # the subsampling S
        mat = _hadamard(n)[rows] * signs * math.sqrt(n / m)  # (m, n)
        self.register_buffer("proj", mat[:, :dim].contiguous())  # (m, D): padding columns multiply zeros

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, m) unit rows."""
        return F.normalize(x @ self.proj.T, dim=-1)


class LinearProjection(nn.Module):
    """A learned linear map to ``m`` dims, initialised as a random orthogonal projection.

    Args:
        dim: Input dimension D.
        m: Output dimension.
        seed: Seed of the initial weights.
    """

    def __init__(self, dim: int, m: int, seed: int):
        super().__init__()
        self.proj = nn.Linear(dim, m, bias=False)
        with torch.no_grad():
            q = torch.linalg.qr(torch.randn(max(dim, m), min(dim, m), generator=_generator(seed)))[0]
            self.proj.weight.copy_(q.T if m <= dim else q)  # (m, D) with orthonormal rows (or columns)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, m) unit rows."""
        return F.normalize(self.proj(x), dim=-1)


class MLPProjection(nn.Module):
    """The seed's encoder: Linear -> LayerNorm -> GELU -> Linear, to ``m`` dims, normalised.

    Args:
        dim: Input dimension D.
        m: Output dimension.
        hidden: Hidden width.
        seed: Seed of the initial weights.
    """

    def __init__(self, dim: int, m: int, hidden: int, seed: int):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(dim, hidden), nn.LayerNorm(hidden), nn.GELU(), nn.Linear(hidden, m))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, m) unit rows."""
        return F.normalize(self.net(x), dim=-1)


def make_learned(arch: str, dim: int, m: int, hidden: int, seed: int) -> nn.Module:
    """A learned projection by name: "linear" or "mlp"."""
    if arch == "linear":
        return LinearProjection(dim, m, seed)
    if arch == "mlp":
        return MLPProjection(dim, m, hidden, seed)
    raise ValueError(f"rank_arch must be 'linear' or 'mlp', got {arch!r}")
