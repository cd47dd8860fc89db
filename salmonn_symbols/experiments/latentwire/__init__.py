"""LatentWire stage 1: a frozen LLM reads its own token embeddings after a fixed PCA wire and a trained adapter.

    question ─► frozen token embeddings ─► PCA wire (per token 8-64x, or k tokens pooled per vector, + noise)
        ─► adapter (linear / MLP / transformer; MSE + answer CE) ─► frozen LLM ─► greedy answer
    arms: full embeddings, zero-training snap, PCA only, adapter MSE only, adapter MSE + CE

``salmonn-symbols experiment latentwire --preset quick|full [--config configs/experiments/latentwire.yaml]``;
``salmonn-symbols experiment latentwire --merge [A/results.json,B/results.json] --out DIR`` combines runs of
disjoint seeds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..common import Experiment
from .config import PRESETS, LatentWireConfig
from .merge import merge_runs
from .run import run

__all__ = ["EXPERIMENT"]


def _run_or_merge(cfg: LatentWireConfig, out_dir: Path, preset: str | None = None) -> dict[str, Any]:
    """Merges the runs named by ``cfg.merge`` when given, else runs the experiment."""
    return merge_runs(cfg.merge, out_dir) if cfg.merge else run(cfg, out_dir, preset)


EXPERIMENT = Experiment(
    name="latentwire",
    description="LatentWire stage 1: compressed token embeddings (PCA + trained adapter) into a frozen LLM",
    config_cls=LatentWireConfig,
    run=_run_or_merge,
    presets=PRESETS,
)
