"""Fixed (V, r) codes of the arms that do not learn their code with the model.

    trained full table E (V, d) ─┬─ svd:         U_r S_r, the best rank-r factorisation E ≈ (U_r S_r) V_r^T
                                 └─ autoencoder: E ─► MLP d→d→r ─► code ─► MLP r→d→d ─► Ê, MSE only
    no table                     ── random:      N(0, 1)

Each table is then scaled to the std a learned (joint) code starts with, so every arm feeds the model at the
same scale; only its geometry differs. Diagnostics (variance kept, reconstruction error) go to the record.
"""

from __future__ import annotations

import torch
from torch import nn

from .model import factor_std

__all__ = ["fixed_codes"]


def _rescale(codes: torch.Tensor, r: int) -> torch.Tensor:
    rms = codes.pow(2).mean().sqrt().clamp_min(1e-12)
    return codes * (factor_std(r) / rms)


def svd_codes(table: torch.Tensor, r: int) -> tuple[torch.Tensor, dict]:
    """U_r S_r of the trained table (zero columns past its rank) and the share of its energy kept."""
    u, s, _ = torch.linalg.svd(table.double(), full_matrices=False)
    k = min(r, len(s))
    codes = torch.zeros(table.shape[0], r, dtype=torch.float64)
    codes[:, :k] = u[:, :k] * s[:k]
    return codes.float(), {"energy_kept": float(s[:k].pow(2).sum() / s.pow(2).sum())}


def autoencoder_codes(table: torch.Tensor, r: int, steps: int, lr: float, seed: int, device: str) -> tuple:
    """Trains an MLP autoencoder d → r → d on the table's rows for reconstruction only; returns the codes."""
    torch.manual_seed(seed)
    d = table.shape[1]
    x = (table / table.pow(2).mean().sqrt()).float().to(device)  # (V, d), unit RMS: lr does not depend on scale
    enc = nn.Sequential(nn.Linear(d, d), nn.GELU(), nn.Linear(d, r)).to(device)
    dec = nn.Sequential(nn.Linear(r, d), nn.GELU(), nn.Linear(d, d)).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps), eta_min=lr / 10)
    for _ in range(steps):
        loss = (dec(enc(x)) - x).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    with torch.no_grad():
        codes = enc(x)
        rel = float((dec(codes) - x).pow(2).sum() / x.pow(2).sum())
    return codes.cpu(), {"reconstruction_rel_error": rel}


def fixed_codes(
    arm: str,
    r: int,
    vocab_size: int,
    table: torch.Tensor | None,
    seed: int,
    ae_steps: int,
    ae_lr: float,
    device: str = "cpu",
) -> tuple[torch.Tensor, dict]:
    """The (V, r) fixed code table of ``arm`` at the joint arm's initial scale, and its diagnostics.

    Args:
        arm: "random", "svd" or "autoencoder".
        r: Code width.
        vocab_size: V.
        table: The trained full-arm (V, d) table (svd, autoencoder); None for random.
        seed: Seeds the random table and the autoencoder.
        ae_steps, ae_lr: The autoencoder's training.
        device: Where the autoencoder trains.
    """
    if arm == "random":
        codes, info = torch.randn(vocab_size, r, generator=torch.Generator().manual_seed(10_000 + seed)), {}
    elif table is None:
        raise ValueError(f"arm {arm!r} needs the trained full-arm table")
    elif arm == "svd":
        codes, info = svd_codes(table, r)
    elif arm == "autoencoder":
        codes, info = autoencoder_codes(table, r, ae_steps, ae_lr, seed, device)
    else:
        raise ValueError(f"arm {arm!r} has no fixed codes")
    return _rescale(codes, r), info
