"""Seeded tone tasks for tests that must not depend on espeak-ng (the package's own generator)."""

from __future__ import annotations

from pathlib import Path

from salmonn_symbols.data.tones import make_tone_task as _make

PITCHES = {"alpha": 220.0, "beta": 330.0, "gamma": 495.0}


def make_tone_task(root: Path, per_label: dict[str, int] | None = None, seed: int = 0, name: str = "tones") -> Path:
    """alpha / beta / gamma at 220 / 330 / 495 Hz; ``per_label`` clips per label and split."""
    return _make(root, list(PITCHES), per_label, seed, name, list(PITCHES.values()))
