"""Companion experiments, each in its own sub-package with its own LightningModule and data.

``salmonn-symbols experiment NAME --preset quick|full [--config FILE] [--key value]`` runs one; `common` holds
what they share (command line, presets, seeds, loggers, result files).
"""

from __future__ import annotations

import importlib

from .common import Experiment

__all__ = ["EXPERIMENTS", "load_experiment"]

# command name -> module whose EXPERIMENT attribute describes it
EXPERIMENTS: dict[str, str] = {
    "learned-encoding": "salmonn_symbols.experiments.learned_encoding",
    "latentwire": "salmonn_symbols.experiments.latentwire",
    "rewa": "salmonn_symbols.experiments.rewa",
}


def load_experiment(name: str) -> Experiment:
    """The `Experiment` registered as ``name``; a ValueError lists the known names."""
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown experiment {name!r}; experiments: {sorted(EXPERIMENTS)}")
    return importlib.import_module(EXPERIMENTS[name]).EXPERIMENT
