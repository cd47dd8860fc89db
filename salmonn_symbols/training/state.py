"""Plain-type training state that a checkpoint carries besides the weights: RNG states and weight digests.

Everything here is made of tensors, lists and numbers, so checkpoints load with ``weights_only=True``.
"""

from __future__ import annotations

import hashlib
import random
from typing import Any

import numpy as np
import torch

__all__ = ["digest", "rng_state", "set_rng_state"]


def digest(params: list[torch.Tensor]) -> str:
    """A short SHA-256 of the exact values of ``params``: equal digests mean bitwise-equal weights."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), Python and NumPy generator states, as tensors, lists and numbers."""
    st = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": [st[0], st[1].tolist(), st[2], st[3], st[4]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores a `rng_state` snapshot."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))
