"""A speech-recognition set made offline with espeak-ng: varied short sentences, many voices, their transcripts.

    templates × word slots ─(seeded RNG)─► unique sentences ─► split by sentence (held-out never heard in training)
        each clip: one sentence, a random voice (en-us/en-gb × 12 variants), pitch and speed
    ─► espeak-ng (the synthetic benchmark's renderer) ─► <out>/audio/<split>/<id>.wav
    ─► <out>/{train,validation}.jsonl   rows {"id", "audio", "text"}; audio relative to the manifest

The words include the command task's words ("stop", "play", "louder", ...) inside ordinary sentences and many other
common words, so a connector trained on this set learns to hear English, not the command task's carrier phrases.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

from ..io import atomic_write_text
from .grammar import sentences
from .synthetic import COMMAND_WORDS, INSTALL_HINT, _Job, _render_all

__all__ = ["make_sentence_set", "read_sentence_set", "sentences"]

_VOICES = ("en-us", "en-gb")
_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")


def _plan(texts: list[str], split: str, root: Path, seed: int) -> list[_Job]:
    rng = random.Random(f"sentence-voices:{split}:{seed}")
    jobs = []
    for i, text in enumerate(texts):
        voice = f"{rng.choice(_VOICES)}+{rng.choice(_VARIANTS)}"
        sid = f"asr-{split}-{i}"
        path = root / "audio" / split / f"{sid}.wav"
        jobs.append(_Job(sid, "", text, voice, rng.randint(20, 80), rng.randint(140, 200), path))
    return jobs


def make_sentence_set(
    out_dir: str | os.PathLike,
    n_train: int = 240,
    n_val: int = 40,
    seed: int = 0,
    workers: int = 2,
    espeak: str = "espeak-ng",
) -> dict[str, Path]:
    """Renders ``n_train`` + ``n_val`` distinct sentences (one clip each) and writes their manifests.

    Returns:
        Split name -> manifest path.

    Raises:
        RuntimeError: espeak-ng is missing (the message says how to install it) or failed on a sentence.
    """
    exe = shutil.which(espeak)
    if exe is None:
        raise RuntimeError(f"espeak-ng not found ({espeak!r}); the sentence set needs it: {INSTALL_HINT}")
    root, t0 = Path(out_dir), time.perf_counter()
    texts = sentences(n_train + n_val, seed)
    words = {w for t in texts for w in t.lower().rstrip(".").split()}
    print(
        f"sentence set: {n_train} + {n_val} sentences, {len(words)} distinct words "
        f"({len(words & set(COMMAND_WORDS))} of the command words)",
        flush=True,
    )
    out = {}
    for split, part in (("train", texts[:n_train]), ("validation", texts[n_train:])):
        jobs = _plan(part, split, root, seed)
        _render_all(exe, jobs, workers)
        rows = [{"id": j.id, "audio": j.path.relative_to(root).as_posix(), "text": j.text} for j in jobs]
        out[split] = atomic_write_text(root / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    print(f"sentence set: rendered in {time.perf_counter() - t0:.1f} s -> {root}", flush=True)
    return out


def read_sentence_set(manifest: str | os.PathLike) -> list[tuple[Path, str]]:
    """(audio path, transcript) of each row of a `make_sentence_set` manifest.

    Raises:
        ValueError: a row is not JSON or lacks ``audio``/``text`` (naming the file and line).
    """
    manifest = Path(manifest)
    out = []
    for n, line in enumerate(manifest.read_text().splitlines(), 1):
        try:
            row = json.loads(line)
            out.append((manifest.parent / row["audio"], str(row["text"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{manifest}:{n}: expected a JSON object with 'audio' and 'text' ({e})") from None
    return out
