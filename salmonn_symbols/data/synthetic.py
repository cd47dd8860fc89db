"""A synthetic speech benchmark made offline with espeak-ng: ``salmonn-symbols make-dataset``.

Three small classification tasks whose answers are known by construction, so symbol discovery can be run end to
end without downloading a corpus:

    speaker   which of 4 voice profiles speaks an English sentence   alpha, beta, gamma, delta
    language  which language a sentence is spoken in                 english, german, french, spanish, italian
    command   which media command is said inside a carrier phrase    stop, play, pause, louder, quieter, next

Layout under ``out_dir``::

    <task>/task.yaml                          task description (read by salmonn_symbols.data.tasks)
    <task>/{train,validation,test}.jsonl      manifests; audio paths are relative to the manifest
    <task>/audio/<split>/<id>.wav             16 kHz mono 16-bit PCM

Every clip is planned from a per-task RNG seeded with ``seed`` before any audio is made, and espeak-ng is
deterministic, so the same seed and sizes give byte-identical manifests and identical audio. Each split has
exactly ``*_per_label`` clips per label. Sentences (and command carrier phrases) are divided between the splits,
so validation and test sentences are never heard in training: a model cannot score by memorising sentences.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF
import yaml

from ..io import atomic_write, atomic_write_text
from .grammar import sentences

__all__ = ["COMMAND_WORDS", "SAMPLE_RATE", "SPLITS", "TASKS", "make_dataset"]

SAMPLE_RATE = 16000
SPLITS = ("train", "validation", "test")
MIN_SECONDS, MAX_SECONDS = 0.5, 30.0
INSTALL_HINT = (
    "run `make setup`, or install it yourself: `sudo apt-get install espeak-ng` (Debian/Ubuntu), "
    "`brew install espeak-ng` (macOS)"
)

# label -> (espeak-ng voice+variant, pitch 0-99, speed in words per minute). Variant, pitch and speed all differ,
# so the four profiles are clearly distinct to a listener (and to a pitch tracker).
_SPEAKERS = {
    "alpha": ("en+m3", 60, 165),
    "beta": ("en+f2", 60, 175),
    "gamma": ("en+m7", 20, 150),
    "delta": ("en+f4", 80, 190),
}
_PITCH_JITTER = 6  # of espeak-ng's 0-99 pitch scale, on a repeated sentence (the closest profiles are 20 apart)
# The speaker task's sentences: 200 distinct ones (120 for training, 40 each held out), so that a speaker model
# cannot lean on a few memorised sentences (with 30, validation rose and fell again; docs/benchmarks.md).
_SPEAKER_SENTENCES, _SPEAKER_SEED = 200, 7
# fmt: off
# The same ten sentences in every language, so the topic of a sentence says nothing about its language.
_LANG_VOICES = {"english": "en-us", "german": "de", "french": "fr-fr", "spanish": "es", "italian": "it"}
_PARALLEL = (
    ("The weather is nice today.", "Das Wetter ist heute schön.", "Il fait beau aujourd'hui.", "Hoy hace buen tiempo.",
     "Oggi il tempo è bello."),
    ("I would like a cup of coffee.", "Ich hätte gern eine Tasse Kaffee.", "Je voudrais une tasse de café.",
     "Me gustaría una taza de café.", "Vorrei una tazza di caffè."),
    ("The train leaves at seven o'clock.", "Der Zug fährt um sieben Uhr ab.", "Le train part à sept heures.",
     "El tren sale a las siete.", "Il treno parte alle sette."),
    ("My sister lives in a small town.", "Meine Schwester wohnt in einer kleinen Stadt.",
     "Ma sœur habite dans une petite ville.", "Mi hermana vive en un pueblo pequeño.",
     "Mia sorella abita in una piccola città."),
    ("We are reading a book about history.", "Wir lesen ein Buch über Geschichte.",
     "Nous lisons un livre sur l'histoire.", "Estamos leyendo un libro de historia.",
     "Stiamo leggendo un libro di storia."),
    ("The children play in the garden.", "Die Kinder spielen im Garten.", "Les enfants jouent dans le jardin.",
     "Los niños juegan en el jardín.", "I bambini giocano in giardino."),
    ("Please close the window.", "Bitte schließ das Fenster.", "Ferme la fenêtre, s'il te plaît.",
     "Por favor, cierra la ventana.", "Per favore, chiudi la finestra."),
    ("The shop opens tomorrow morning.", "Der Laden öffnet morgen früh.", "Le magasin ouvre demain matin.",
     "La tienda abre mañana por la mañana.", "Il negozio apre domani mattina."),
    ("He drinks water after running.", "Er trinkt Wasser nach dem Laufen.", "Il boit de l'eau après la course.",
     "Él bebe agua después de correr.", "Lui beve acqua dopo la corsa."),
    ("Our friends arrive on Sunday.", "Unsere Freunde kommen am Sonntag.", "Nos amis arrivent dimanche.",
     "Nuestros amigos llegan el domingo.", "I nostri amici arrivano domenica."),
)
_LANG_SENTENCES = {lang: tuple(row[i] for row in _PARALLEL) for i, lang in enumerate(_LANG_VOICES)}
# The first n_commands are used. No carrier phrase contains a command word, so the label is said exactly once.
COMMAND_WORDS = ("stop", "play", "pause", "louder", "quieter", "next", "previous", "repeat", "shuffle", "mute")
_COMMANDS = COMMAND_WORDS
_CARRIERS = (
    "please {cmd} now", "could you {cmd} the music", "{cmd}, please", "okay, {cmd}", "I said {cmd}",
    "hey speaker, {cmd}", "can you {cmd} it for me", "{cmd} the song right away", "my command is {cmd}",
    "would you {cmd} this track",
)
# fmt: on

_Clip = tuple[str, str, int, int]  # text, voice, pitch, speed
_Planner = Callable[[random.Random, str, int, Sequence[str]], dict[str, list[_Clip]]]


def _held_out(pool: Sequence[str], split: str) -> Sequence[str]:
    """The part of ``pool`` a split draws from: the last fifth for test, the fifth before it for validation."""
    n = max(1, len(pool) // 5)
    return {"train": pool[: len(pool) - 2 * n], "validation": pool[-2 * n : -n], "test": pool[-n:]}[split]


def _draw(rng: random.Random, pool: Sequence[str], k: int) -> list[str]:
    """``k`` items of ``pool``: whole shuffled passes over it, so every item is used equally often."""
    out: list[str] = []
    while len(out) < k:
        order = list(pool)
        rng.shuffle(order)
        out += order
    return out[:k]


def _plan_speaker(rng: random.Random, split: str, k: int, labels: Sequence[str]) -> dict[str, list[_Clip]]:
    # A sentence said again by the same speaker (more clips than the split has sentences) is said with a slightly
    # different pitch and speed, as a person would, so it is a new clip and not a byte-identical copy. The first
    # pass over the sentences keeps the profile exactly (so small sets are unchanged); the jitter stays well
    # inside the gaps between the profiles.
    pool = _held_out(sentences(_SPEAKER_SENTENCES, seed=_SPEAKER_SEED), split)
    out: dict[str, list[_Clip]] = {}
    for lab in labels:
        voice, pitch, speed = _SPEAKERS[lab]
        clips: list[_Clip] = []
        for i, t in enumerate(_draw(rng, pool, k)):
            clip = (t, voice, pitch, speed)
            while i >= len(pool) and clip in clips:  # a repeat: a delivery of this sentence not used yet
                clip = (t, voice, pitch + rng.randint(-_PITCH_JITTER, _PITCH_JITTER), speed + rng.randint(-8, 8))
            clips.append(clip)
        out[lab] = clips
    return out


def _plan_language(rng: random.Random, split: str, k: int, labels: Sequence[str]) -> dict[str, list[_Clip]]:
    # Pitch and speed vary so a sentence said twice in a split is still two different clips.
    return {
        lab: [
            (t, _LANG_VOICES[lab], rng.randint(35, 65), rng.randint(150, 185))
            for t in _draw(rng, _held_out(_LANG_SENTENCES[lab], split), k)
        ]
        for lab in labels
    }


def _plan_command(rng: random.Random, split: str, k: int, labels: Sequence[str]) -> dict[str, list[_Clip]]:
    # Wide pitch and speed ranges, so the command word, not the delivery, is what tells the classes apart.
    return {
        cmd: [
            (c.format(cmd=cmd), "en-us", rng.randint(25, 75), rng.randint(130, 210))
            for c in _draw(rng, _held_out(_CARRIERS, split), k)
        ]
        for cmd in labels
    }


@dataclass(frozen=True)
class _TaskDef:
    dataset: str
    task: str
    labels: tuple[str, ...]
    instructions: tuple[str, ...]
    few_shot: int
    plan: _Planner


# fmt: off
TASKS: dict[str, _TaskDef] = {
    "speaker": _TaskDef("synth_speaker", "speaker_identity", tuple(_SPEAKERS), (
        "Which voice is speaking? Answer with one of: {labels}.",
        "Who is the speaker? Options: {labels}.",
    ), 0, _plan_speaker),
    "language": _TaskDef("synth_language", "language_identification", tuple(_LANG_VOICES), (
        "Which language is spoken? Answer with one of: {labels}.",
        "What language does the speaker use? Options: {labels}.",
        "Identify the spoken language. Choose from: {labels}.",
    ), 0, _plan_language),
    "command": _TaskDef("synth_command", "command_recognition", _COMMANDS, (
        "Which command is said? Answer with one of: {labels}.",
        "What does the speaker ask the player to do? Options: {labels}.",
        "Name the spoken command. Choose from: {labels}.",
    ), 2, _plan_command),
}
# fmt: on


@dataclass(frozen=True)
class _Job:
    """One clip to render: what espeak-ng says, how it says it, and where the WAV goes."""

    id: str
    label: str
    text: str
    voice: str
    pitch: int
    speed: int
    path: Path


def _plan(name: str, labels: list[str], root: Path, sizes: dict[str, int], seed: int) -> dict[str, list[_Job]]:
    """Every clip of one task, split by split, before any audio is made (so parallel rendering cannot reorder)."""
    rng = random.Random(f"{name}:{seed}")  # str seeds are hashed with SHA-512: the same stream in every process
    jobs: dict[str, list[_Job]] = {}
    for split in SPLITS:
        clips = TASKS[name].plan(rng, split, sizes[split], labels)
        # Labels interleaved (alpha, beta, ..., alpha, beta, ...): every prefix of a manifest is nearly balanced.
        rows = [(lab, clips[lab][i]) for i in range(sizes[split]) for lab in labels]
        jobs[split] = [
            _Job(f"{name}-{split}-{n}", lab, t, v, p, s, root / "audio" / split / f"{name}-{split}-{n}.wav")
            for n, (lab, (t, v, p, s)) in enumerate(rows)
        ]
    return jobs


def _render(espeak: str, job: _Job) -> float:
    """Speaks ``job.text`` with espeak-ng, resamples to 16 kHz, checks it and writes ``job.path`` atomically.

    Returns:
        The clip's duration in seconds.
    """
    job.path.parent.mkdir(parents=True, exist_ok=True)
    fd, raw = tempfile.mkstemp(prefix=f".{job.id}.", suffix=".espeak.wav", dir=job.path.parent)
    os.close(fd)
    # Text on stdin (-b 1: UTF-8) rather than argv, so a sentence starting with "-" is never read as an option.
    cmd = [espeak, "-b", "1", "-v", job.voice, "-p", str(job.pitch), "-s", str(job.speed), "-w", raw, "--stdin"]
    try:
        try:
            proc = subprocess.run(cmd, input=job.text.encode("utf-8"), capture_output=True, timeout=60)
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"espeak-ng timed out on sample {job.id}: {shlex.join(cmd)}") from None
        # espeak-ng exits 0 even when it cannot write the file, so a missing or header-only WAV is a failure too.
        if proc.returncode != 0 or os.path.getsize(raw) <= 44:
            stderr = proc.stderr.decode("utf-8", "replace").strip() or "(nothing on stderr)"
            raise RuntimeError(
                f"espeak-ng failed on sample {job.id} (exit code {proc.returncode}): {stderr}\n"
                f"  command: {shlex.join(cmd)}  (text on stdin: {job.text!r})"
            )
        wav, sr = sf.read(raw, dtype="float32", always_2d=True)
    finally:
        os.unlink(raw)
    x = _to_16k(wav.mean(axis=1), sr)
    _check_clip(x, job.id)
    atomic_write(job.path, lambda f: sf.write(f, x, SAMPLE_RATE, format="WAV", subtype="PCM_16"))
    return len(x) / SAMPLE_RATE


def _to_16k(wav: np.ndarray, sr: int) -> np.ndarray:
    x = torch.from_numpy(np.ascontiguousarray(wav))
    if sr != SAMPLE_RATE:  # espeak-ng writes 22050 Hz
        x = AF.resample(x, sr, SAMPLE_RATE)
    # Resampling can overshoot full scale a little; clip so the 16-bit conversion cannot wrap around.
    return np.clip(x.numpy(), -1.0, 1.0)


def _check_clip(x: np.ndarray, sample_id: str) -> None:
    seconds = len(x) / SAMPLE_RATE
    if not MIN_SECONDS <= seconds <= MAX_SECONDS:
        raise RuntimeError(f"sample {sample_id}: {seconds:.2f} s of audio, expected {MIN_SECONDS}-{MAX_SECONDS} s")
    if not np.isfinite(x).all() or not np.abs(x).max() > 0:
        raise RuntimeError(f"sample {sample_id}: espeak-ng produced silent or non-finite audio")


def _render_all(espeak: str, jobs: list[_Job], workers: int) -> list[float]:
    # Threads, not processes: the work runs in the espeak-ng subprocess and in torch/soundfile, which release the
    # GIL, so threads parallelise it without pickling jobs or importing torch once per worker.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(_render, espeak, job) for job in jobs]
        try:
            return [f.result() for f in futures]  # in plan order: the first failing sample is the one reported
        except BaseException:
            for f in futures:  # stop at the first failure instead of rendering the rest in vain
                f.cancel()
            raise


def _manifest(jobs: list[_Job], root: Path, d: _TaskDef) -> str:
    keys = ("id", "audio", "task", "label", "text", "dataset")
    rows = [(j.id, j.path.relative_to(root).as_posix(), d.task, j.label, j.text, d.dataset) for j in jobs]
    return "".join(json.dumps(dict(zip(keys, r, strict=True)), ensure_ascii=False) + "\n" for r in rows)


def _task_yaml(d: _TaskDef, labels: list[str], seed: int, sizes: dict[str, int]) -> str:
    head = {"name": d.dataset, "task": d.task, "labels": labels, "multi_label": False}
    tail = {"few_shot": d.few_shot, "format": "jsonl", "splits": {s: f"{s}.jsonl" for s in SPLITS}}
    # Short lists and maps in flow style ([alpha, beta]), the long instruction strings one per line.
    parts = [(head, None), ({"instructions": list(d.instructions)}, False), (tail, None)]
    body = "".join(
        yaml.safe_dump(p, sort_keys=False, allow_unicode=True, width=120, default_flow_style=f) for p, f in parts
    )
    per_label = ", ".join(f"{s} {n}" for s, n in sizes.items())
    return (
        f"# Made by `salmonn-symbols make-dataset` (seed {seed}; clips per label: "
        f"{per_label}).\n# Re-run the command rather than editing this file: the manifests must match it.\n{body}"
    )


def _remove_stale(root: Path, name: str, jobs: dict[str, list[_Job]]) -> None:
    # A smaller re-build would otherwise leave the previous build's extra clips behind; only our own names go.
    for split, split_jobs in jobs.items():
        keep = {j.path.name for j in split_jobs}
        for p in (root / "audio" / split).glob(f"{name}-{split}-*.wav"):
            if p.name not in keep:
                p.unlink()


def _check_args(tasks: Sequence[str], sizes: dict[str, int], workers: int, n_commands: int) -> list[str]:
    names = [tasks] if isinstance(tasks, str) else list(dict.fromkeys(tasks))  # de-duplicated, order kept
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise ValueError(f"unknown task(s) {unknown or names}; known tasks: {', '.join(TASKS)}")
    bad = {s: n for s, n in sizes.items() if not isinstance(n, int) or n < 1}
    if bad:
        raise ValueError(f"clips per label must be integers >= 1, got {bad}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if not 2 <= n_commands <= len(_COMMANDS):
        raise ValueError(f"n_commands must be between 2 and {len(_COMMANDS)}, got {n_commands}")
    return names


def _build_task(
    name: str, root: Path, sizes: dict[str, int], seed: int, n_commands: int, espeak: str, workers: int
) -> tuple[Path, int, float]:
    """Builds one task under ``root``; returns its task.yaml, its number of clips and their total seconds."""
    t0, d = time.perf_counter(), TASKS[name]
    labels = list(d.labels[:n_commands] if name == "command" else d.labels)
    jobs = _plan(name, labels, root, sizes, seed)
    seconds = sum(_render_all(espeak, [j for split in SPLITS for j in jobs[split]], workers))
    _remove_stale(root, name, jobs)
    # Audio first, then manifests, the YAML last: a task.yaml on disk means its whole task is complete.
    for split in SPLITS:
        atomic_write_text(root / f"{split}.jsonl", _manifest(jobs[split], root, d))
    yaml_path = atomic_write_text(root / "task.yaml", _task_yaml(d, labels, seed, sizes))
    n, took = sum(len(v) for v in jobs.values()), time.perf_counter() - t0
    print(
        f"make-dataset: {name:<8} {n:4d} clips, {len(labels)} labels, {seconds:6.1f} s of audio, {took:.1f} s",
        flush=True,
    )
    return yaml_path, n, seconds


def make_dataset(
    out_dir: str | os.PathLike,
    *,
    tasks: Sequence[str] = ("speaker", "language", "command"),
    train_per_label: int = 8,
    val_per_label: int = 2,
    test_per_label: int = 2,
    seed: int = 0,
    workers: int = 2,
    espeak: str = "espeak-ng",
    n_commands: int = 6,
) -> dict[str, Path]:
    """Builds the synthetic speech benchmark: audio, manifests and a task YAML per task.

    Args:
        out_dir: Output folder; each task goes into ``out_dir/<task>/``. Existing files are overwritten.
        tasks: Tasks to build, out of "speaker", "language" and "command".
        train_per_label: Training clips per label.
        val_per_label: Validation clips per label.
        test_per_label: Test clips per label.
        seed: Seed of the per-task RNGs (sentence choice and order, pitch and speed).
        workers: espeak-ng processes run at once.
        espeak: espeak-ng executable (a name on PATH or a path).
        n_commands: Labels of the command task (the first N of stop, play, pause, louder, quieter, next,
            previous, repeat, shuffle, mute).

    Returns:
        Task name -> path of its ``task.yaml``, in the order of ``tasks``.

    Raises:
        ValueError: An unknown task name or a bad size.
        RuntimeError: espeak-ng is missing (the message says how to install it), or it failed on a sample (the
            message names the sample id and espeak-ng's stderr).
    """
    sizes = {"train": train_per_label, "validation": val_per_label, "test": test_per_label}
    names = _check_args(tasks, sizes, workers, n_commands)
    exe = shutil.which(espeak)
    if exe is None:
        raise RuntimeError(f"espeak-ng not found ({espeak!r}); the synthetic benchmark needs it: {INSTALL_HINT}")
    start, out, totals = time.perf_counter(), {}, [0, 0.0]
    for name in names:
        out[name], n, seconds = _build_task(name, Path(out_dir) / name, sizes, seed, n_commands, exe, workers)
        totals[0], totals[1] = totals[0] + n, totals[1] + seconds
    took = time.perf_counter() - start
    print(f"make-dataset: {totals[0]} clips, {totals[1] / 60:.1f} min of audio, built in {took:.1f} s", flush=True)
    print("make-dataset: task YAMLs: " + ", ".join(str(p) for p in out.values()), flush=True)
    return out
