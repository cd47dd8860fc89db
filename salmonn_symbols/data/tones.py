"""A speech-free synthetic task whose answer is known: one pitch per label.

    label i ─► pitch f_i (geometric steps from 220 Hz) ─► clips: 1 s sine at f_i · U(0.97, 1.03), amplitude
    U(0.2, 0.5), 1% white noise ─► 16-bit WAV + JSONL manifest per split + task YAML

It needs no espeak-ng, so tests and the known-answer discovery benchmark run anywhere; the clips go through
the same reading path (manifest, soundfile, checks) as any dataset.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

__all__ = ["GREEK", "make_tone_task"]

GREEK = (
    "alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa", "lambda", "mu",
    "nu", "xi", "omicron", "pi", "rho", "sigma", "tau", "upsilon",
)  # fmt: skip


def make_tone_task(
    root: str | Path,
    labels: Sequence[str] = GREEK[:3],
    per_split: Mapping[str, int] | None = None,
    seed: int = 0,
    name: str = "tones",
    pitches: Sequence[float] | None = None,
    step: float = 1.5,
    instruction: str = "Which tone is this? Answer with one of: {labels}.",
) -> Path:
    """Writes ``root/<name>/{task.yaml, <split>.jsonl, wav/*.wav}`` and returns the task YAML's path.

    Args:
        root: Output folder.
        labels: Label words, one pitch each.
        per_split: Clips per label in each split (default train 4, validation 2, test 2).
        seed: Seed of every random draw.
        name: Dataset name (and folder).
        pitches: Hz per label; default 220 · step^i.
        step: Ratio between neighbouring pitches when ``pitches`` is not given; narrowed so the highest pitch
            stays at or below 6 kHz (16 kHz audio holds pitches up to 8 kHz; above that they would alias).
        instruction: The task's instruction (``{labels}`` lists the current symbols).
    """
    per_split = dict(per_split or {"train": 4, "validation": 2, "test": 2})
    if pitches is None:
        step = min(step, (6000.0 / 220.0) ** (1.0 / max(1, len(labels) - 1)))
        pitches = [220.0 * step**i for i in range(len(labels))]
    pitches = list(pitches)
    if len(pitches) != len(labels):
        raise ValueError(f"{len(labels)} labels but {len(pitches)} pitches")
    folder = Path(root) / name
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000.0
    for split, n in per_split.items():
        rows = []
        for label, hz in zip(labels, pitches, strict=True):
            for i in range(n):
                wav = rng.uniform(0.2, 0.5) * np.sin(2 * np.pi * hz * rng.uniform(0.97, 1.03) * t)
                wav = (wav + 0.01 * rng.standard_normal(t.shape)).astype(np.float32)
                rel = f"wav/{split}_{label}_{i}.wav"
                sf.write(folder / rel, wav, 16000, subtype="PCM_16")
                rows.append({"id": f"{split}_{label}_{i}", "audio": rel, "label": label, "text": f"a {label} tone"})
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    task = {
        "name": name,
        "task": "pitch",
        "labels": list(labels),
        "instructions": [instruction],
        "few_shot": 0,
        "format": "jsonl",
        "splits": {s: f"{s}.jsonl" for s in per_split},
    }
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder / "task.yaml"
