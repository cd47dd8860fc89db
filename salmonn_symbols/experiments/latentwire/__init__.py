"""LatentWire stage 1: a frozen LLM reads its own token embeddings after a fixed PCA wire and a trained adapter.

    question ─► frozen token embeddings ─► PCA wire (per token 8-64x, or k tokens pooled per vector, + noise)
        ─► adapter (linear / MLP / transformer; MSE + answer CE) ─► frozen LLM ─► greedy answer
    arms: full embeddings, zero-training snap, PCA only, adapter MSE only, adapter MSE + CE

``salmonn-symbols experiment latentwire --preset quick|full [--config configs/experiments/latentwire.yaml]``.
"""

from __future__ import annotations

from ..common import Experiment
from .config import PRESETS, LatentWireConfig
from .run import run

__all__ = ["EXPERIMENT"]

EXPERIMENT = Experiment(
    name="latentwire",
    description="LatentWire stage 1: compressed token embeddings (PCA + trained adapter) into a frozen LLM",
    config_cls=LatentWireConfig,
    run=run,
    presets=PRESETS,
)
