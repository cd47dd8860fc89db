"""The synthetic espeak-ng benchmark: layout, manifests, audio, task YAMLs, determinism, errors and the CLI hooks.

Real espeak-ng runs (no mocks); the tests that need it are skipped only where it is not installed.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from salmonn_symbols.commands.make_dataset import add_args as add_make_dataset_args
from salmonn_symbols.commands.make_dataset import run as run_make_dataset
from salmonn_symbols.data.manifest import read_split
from salmonn_symbols.data.synthetic import _SPEAKERS, TASKS, _Job, _plan, _render, make_dataset
from salmonn_symbols.data.tasks import load_task_config
from salmonn_symbols.model.whisper import log_mel

ESPEAK = shutil.which("espeak-ng")
needs_espeak = pytest.mark.skipif(ESPEAK is None, reason="espeak-ng is not installed (`make setup` installs it)")

SIZES = {"train": 2, "validation": 1, "test": 1}
KWARGS = {"train_per_label": 2, "val_per_label": 1, "test_per_label": 1}
LABELS = {
    "speaker": ["alpha", "beta", "gamma", "delta"],
    "language": ["english", "german", "french", "spanish", "italian"],
    "command": ["stop", "play", "pause", "louder", "quieter", "next"],
}
FIELDS = {"id", "audio", "task", "label", "text", "dataset"}
YAML_KEYS = {"name", "task", "labels", "multi_label", "instructions", "few_shot", "format", "splits"}


def _rows(root: Path, task: str, split: str) -> list[dict]:
    lines = (root / task / f"{split}.jsonl").read_text("utf-8").splitlines()
    return [json.loads(line) for line in lines]


def _median_f0(x: np.ndarray, sr: int = 16000) -> float:
    """Median autocorrelation pitch (Hz) of the voiced 40 ms frames of a clip."""
    n, out = int(0.04 * sr), []
    for i in range(0, len(x) - n, n // 2):
        frame = x[i : i + n] - x[i : i + n].mean()
        if np.sqrt((frame**2).mean()) < 0.02:
            continue
        ac = np.correlate(frame, frame, "full")[n - 1 :]
        lo, hi = sr // 400, sr // 60
        k = lo + int(np.argmax(ac[lo:hi]))
        if ac[k] > 0.3 * ac[0]:
            out.append(sr / k)
    return float(np.median(out))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, dict[str, Path]]:
    if ESPEAK is None:
        pytest.skip("espeak-ng is not installed (`make setup` installs it)")
    root = tmp_path_factory.mktemp("synth")
    return root, make_dataset(root, seed=0, **KWARGS)


@needs_espeak
def test_manifests_audio_and_balance(built):
    root, yamls = built
    assert list(yamls) == ["speaker", "language", "command"]
    all_ids = []
    for task, split in itertools.product(LABELS, SIZES):
        rows = _rows(root, task, split)
        assert Counter(r["label"] for r in rows) == {lab: SIZES[split] for lab in LABELS[task]}
        for r in rows:
            assert set(r) == FIELDS
            assert re.fullmatch(rf"{task}-{split}-\d+", r["id"]), r["id"]
            assert r["audio"] == f"audio/{split}/{r['id']}.wav"
            assert r["dataset"] == f"synth_{task}" and r["task"] == TASKS[task].task and r["text"].strip()
            if task == "command":  # the label is said, exactly once
                assert re.findall(r"[a-z]+", r["text"].lower()).count(r["label"]) == 1, r
            path = root / task / r["audio"]
            info = sf.info(path)
            assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")
            wav, sr = sf.read(path, dtype="float32")
            assert wav.ndim == 1 and 0.5 <= len(wav) / sr <= 30.0
            assert np.isfinite(wav).all() and np.sqrt((wav**2).mean()) > 0.01
            all_ids.append(r["id"])
        assert not list((root / task / "audio" / split).glob(".*")), "temporary files left behind"
    assert len(all_ids) == len(set(all_ids)) == sum(len(v) for v in LABELS.values()) * sum(SIZES.values())


@needs_espeak
def test_test_sentences_are_never_heard_in_training(built):
    root, _ = built
    for task in LABELS:
        train = {r["text"] for r in _rows(root, task, "train")}
        held_out = {r["text"] for s in ("validation", "test") for r in _rows(root, task, s)}
        assert not train & held_out, task


@needs_espeak
def test_task_yaml_is_a_valid_task_description(built):
    root, yamls = built
    for task, path in yamls.items():
        assert path == root / task / "task.yaml"
        raw = yaml.safe_load(path.read_text("utf-8"))
        assert set(raw) == YAML_KEYS
        assert raw["name"] == f"synth_{task}" and raw["labels"] == LABELS[task]
        assert raw["multi_label"] is False and raw["format"] == "jsonl"
        assert raw["splits"] == {s: f"{s}.jsonl" for s in SIZES}
        assert raw["instructions"] and all("{labels}" in i for i in raw["instructions"])
        # the framework's own reader accepts it, and every sample of every split
        cfg = load_task_config(path)
        for split, n in SIZES.items():
            samples, problems = read_split(cfg, split)
            assert not problems and len(samples) == n * len(LABELS[task])
            assert all(Path(s.audio).is_file() for s in samples)


@needs_espeak
def test_same_seed_same_bytes_other_seed_differs(built, tmp_path):
    root, _ = built
    again = make_dataset(tmp_path / "again", seed=0, workers=3, **KWARGS)
    for task in LABELS:
        for name in [*(f"{s}.jsonl" for s in SIZES), "task.yaml"]:
            assert (root / task / name).read_bytes() == (tmp_path / "again" / task / name).read_bytes()
        for split in SIZES:
            for r in _rows(root, task, split):
                a, _ = sf.read(root / task / r["audio"], dtype="int16")
                b, _ = sf.read(tmp_path / "again" / task / r["audio"], dtype="int16")
                assert np.array_equal(a, b), r["id"]
    assert set(again) == set(LABELS)
    make_dataset(tmp_path / "other", tasks=["speaker", "command"], seed=1, **KWARGS)
    for task in ("speaker", "command"):
        assert (root / task / "train.jsonl").read_bytes() != (tmp_path / "other" / task / "train.jsonl").read_bytes()


@needs_espeak
def test_audio_goes_through_whisper_log_mel(built):
    root, _ = built
    for task in LABELS:
        r = _rows(root, task, "test")[0]
        wav, sr = sf.read(root / task / r["audio"], dtype="float32")
        mel = log_mel(torch.from_numpy(wav)[None].float())
        assert sr == 16000 and mel.shape == (1, 80, 3000) and torch.isfinite(mel).all()
        assert mel.std() > 0.1  # speech, not a constant


@needs_espeak
def test_speaker_profiles_have_distinct_pitch(built):
    root, _ = built
    f0: dict[str, list[float]] = {lab: [] for lab in LABELS["speaker"]}
    for split in SIZES:
        for r in _rows(root, "speaker", split):
            f0[r["label"]].append(_median_f0(sf.read(root / "speaker" / r["audio"], dtype="float32")[0]))
    med = {lab: float(np.median(v)) for lab, v in f0.items()}
    assert med["delta"] > 1.5 * med["alpha"], med
    for a, b in itertools.combinations(med, 2):
        assert abs(med[a] - med[b]) > 0.1 * min(med[a], med[b]), (a, b, med)


@pytest.mark.parametrize("task", ["speaker", "language", "command"])
def test_more_clips_than_sentences_are_still_distinct_clips(task):
    # 40 training clips per label from a pool of at most 18 sentences: every sentence is said two or three times,
    # never twice the same way (a byte-identical clip would count twice in training and in the speech cache).
    sizes = {"train": 40, "validation": 14, "test": 1}
    labels = LABELS[task][:3]
    jobs = _plan(task, labels, Path("unused"), sizes, seed=0)
    for split, rows in jobs.items():
        for lab in labels:
            clips = [(j.text, j.voice, j.pitch, j.speed) for j in rows if j.label == lab]
            assert len(clips) == sizes[split] and len(set(clips)) == len(clips), (split, lab)


def test_speaker_repeats_keep_the_profile_apart():
    # the first pass over the sentences is the exact profile; repeats stay within the jitter of it
    jobs = _plan("speaker", LABELS["speaker"], Path("unused"), {"train": 180, "validation": 1, "test": 1}, seed=3)
    for lab, (voice, pitch, speed) in _SPEAKERS.items():
        clips = [j for j in jobs["train"] if j.label == lab]
        assert len({j.text for j in clips}) == 120  # the training part of the 200-sentence pool
        assert all((j.voice, j.pitch, j.speed) == (voice, pitch, speed) for j in clips[:120])
        assert all(j.voice == voice and abs(j.pitch - pitch) <= 6 and abs(j.speed - speed) <= 8 for j in clips)
        assert len({(j.pitch, j.speed) for j in clips[120:]}) > 10


def test_missing_espeak_says_how_to_install(tmp_path):
    with pytest.raises(RuntimeError, match="espeak-ng") as e:
        make_dataset(tmp_path / "out", espeak="/nonexistent/espeak-ng")
    assert "make setup" in str(e.value) and "apt-get install espeak-ng" in str(e.value)
    assert "brew install espeak-ng" in str(e.value)
    assert not (tmp_path / "out").exists()


def test_unknown_task_lists_the_known_ones(tmp_path):
    with pytest.raises(ValueError, match="emotion") as e:
        make_dataset(tmp_path, tasks=["speaker", "emotion"], espeak="/nonexistent/espeak-ng")
    assert all(t in str(e.value) for t in ("speaker", "language", "command"))
    with pytest.raises(ValueError, match=">= 1"):
        make_dataset(tmp_path, train_per_label=0)


@pytest.mark.skipif(shutil.which("false") is None, reason="needs the `false` command")
def test_failing_espeak_names_the_sample(tmp_path):
    with pytest.raises(RuntimeError, match=r"sample speaker-train-0 \(exit code 1\)"):
        make_dataset(tmp_path, tasks=["speaker"], espeak=shutil.which("false"), **KWARGS)
    assert not list(tmp_path.rglob("*.jsonl")) and not list(tmp_path.rglob("*.yaml"))


@needs_espeak
def test_espeak_error_carries_its_stderr(tmp_path):
    job = _Job("speaker-train-7", "alpha", "hello there", "xx-no-such-voice", 50, 175, tmp_path / "a" / "x.wav")
    with pytest.raises(RuntimeError, match="speaker-train-7") as e:
        _render(ESPEAK, job)
    assert "voice" in str(e.value).lower()  # espeak-ng's own message about the missing voice
    assert not list((tmp_path / "a").iterdir()), "the temporary espeak output must be removed"


@needs_espeak
def test_cli_hooks_and_smaller_rebuild(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_make_dataset_args(parser)
    out = tmp_path / "synth"
    base = ["--out", str(out), "--tasks", "command", "--val-per-label", "1", "--test-per-label", "1"]
    assert run_make_dataset(parser.parse_args([*base, "--train-per-label", "2", "--seed", "3"])) == 0
    assert run_make_dataset(parser.parse_args([*base, "--train-per-label", "1", "--n-commands", "3"])) == 0
    assert "make-dataset: command" in capsys.readouterr().out
    assert yaml.safe_load((out / "command" / "task.yaml").read_text("utf-8"))["labels"] == ["stop", "play", "pause"]
    # the second, smaller build removed the first one's extra clips
    assert len(list((out / "command" / "audio" / "train").glob("*.wav"))) == len(_rows(out, "command", "train")) == 3
    assert run_make_dataset(parser.parse_args([*base, "--espeak", "/nonexistent/espeak-ng"])) == 1
    assert "apt-get install espeak-ng" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parser.parse_args(["--tasks", "emotion"])
