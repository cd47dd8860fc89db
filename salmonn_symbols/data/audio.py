"""Audio loading as SALMONN expects it: 16 kHz mono float, at most 30 s, at least 1 s.

Every failure names the file and the sample id: a missing file, an unreadable or corrupt file, an empty or
all-zero clip, or NaN samples.
"""

from __future__ import annotations

import hashlib
import logging
import os

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

from .manifest import DataError, DataProblem

__all__ = ["MAX_SECONDS", "MIN_SECONDS", "SAMPLE_RATE", "AudioStats", "audio_key", "load_audio", "prepare_waveform"]

SAMPLE_RATE = 16000
MAX_SECONDS = 30.0
MIN_SECONDS = 1.0
log = logging.getLogger(__name__)


def audio_key(wav: torch.Tensor) -> str:
    """Content hash of one prepared waveform (its float32 samples): the speech cache's key."""
    return hashlib.sha1(wav.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()).hexdigest()


class AudioStats:
    """Counts of clips that were truncated (reported as one warning, not one per clip)."""

    def __init__(self) -> None:
        self.truncated = 0
        self.loaded = 0

    def report(self) -> None:
        """Logs how many clips were longer than 30 s."""
        if self.truncated:
            log.warning(
                "%d of %d clips were longer than %.0f s and were truncated", self.truncated, self.loaded, MAX_SECONDS
            )


def prepare_waveform(
    wav: np.ndarray, sr: int, where: str, sample_id: str | None = None, stats: AudioStats | None = None
) -> torch.Tensor:
    """Downmixes, checks, resamples, truncates and pads one clip.

    Args:
        wav: Samples, shape (S,) or (S, C).
        sr: Its sample rate.
        where: Location for error messages (file path).
        sample_id: Sample id for error messages.
        stats: Optional truncation counter.

    Returns:
        float32 waveform at 16 kHz, shape (S',), 1 s <= S' / 16000 <= 30 s.
    """
    x = torch.as_tensor(np.asarray(wav, dtype=np.float32))
    if x.ndim == 2:
        x = x.mean(dim=1)  # downmix every channel rather than dropping all but the first
    if x.numel() == 0:
        raise DataError(DataProblem(where, "audio is empty", sample_id))
    if torch.isnan(x).any():
        raise DataError(DataProblem(where, f"audio has {int(torch.isnan(x).sum())} NaN samples", sample_id))
    if not torch.isfinite(x).all():
        raise DataError(DataProblem(where, "audio has infinite samples", sample_id))
    if not x.abs().max() > 0:
        raise DataError(DataProblem(where, "audio is all zeros", sample_id))
    if sr != SAMPLE_RATE:
        x = AF.resample(x, sr, SAMPLE_RATE)
    limit = int(MAX_SECONDS * SAMPLE_RATE)
    if stats is not None:
        stats.loaded += 1
        stats.truncated += int(x.numel() > limit)
    x = x[:limit]
    if x.numel() < MIN_SECONDS * SAMPLE_RATE:  # SALMONN pads very short clips to 1 s
        x = torch.nn.functional.pad(x, (0, int(MIN_SECONDS * SAMPLE_RATE) - x.numel()))
    return x.contiguous()


def load_audio(path: str, sample_id: str | None = None, stats: AudioStats | None = None) -> torch.Tensor:
    """Reads an audio file with soundfile and prepares it (see `prepare_waveform`).

    Raises:
        DataError: naming the file and the sample for a missing, unreadable, corrupt, empty, all-zero or NaN clip.
    """
    if not os.path.isfile(path):  # soundfile reports a missing file as a generic "System error"
        raise DataError(DataProblem(path, "audio file not found", sample_id))
    try:
        wav, sr = sf.read(path, dtype="float32", always_2d=False)
    except (sf.LibsndfileError, RuntimeError, OSError) as e:
        raise DataError(DataProblem(path, f"cannot decode audio ({e})", sample_id)) from None
    return prepare_waveform(wav, sr, path, sample_id, stats)
