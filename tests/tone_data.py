"""A small deterministic speech-free dataset for tests that must not depend on espeak-ng: seeded tones.

Each label is a pitch; clips are 1 s of that tone with seeded noise and amplitude, written as 16-bit WAV with
JSONL manifests and a task YAML, so they go through the same reading path as any dataset.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

PITCHES = {"alpha": 220.0, "beta": 330.0, "gamma": 495.0}


def make_tone_task(root: Path, per_label: dict[str, int] | None = None, seed: int = 0, name: str = "tones") -> Path:
    """Writes ``root/<name>/{task.yaml, <split>.jsonl, wav/*.wav}``; returns the task YAML path."""
    per_label = per_label or {"train": 4, "validation": 2, "test": 2}
    folder = root / name
    (folder / "wav").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    t = np.arange(16000) / 16000.0
    for split, n in per_label.items():
        rows = []
        for label, hz in PITCHES.items():
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
        "labels": list(PITCHES),
        "instructions": ["Which tone is this? Answer with one of: {labels}."],
        "few_shot": 0,
        "format": "jsonl",
        "splits": {s: f"{s}.jsonl" for s in per_label},
    }
    (folder / "task.yaml").write_text(yaml.safe_dump(task, sort_keys=False))
    return folder / "task.yaml"
