"""BEATs' input features: SALMONN's Kaldi fbank, batched on the device.

wav (B, S) 16 kHz ─► frames (B, T, 400) every 160 samples ─► DC removal, pre-emphasis, Povey window
    ─► |rFFT 512|² (B, T, 257) ─► 128 Kaldi mel filters ─► log ─► (x − mean) / (2·std)   (B, T, 128)
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor

__all__ = ["FRAME_LENGTH", "FRAME_SHIFT", "NUM_MEL_BINS", "SAMPLE_RATE", "batched_fbank"]

SAMPLE_RATE = 16_000
NUM_MEL_BINS = 128
FRAME_LENGTH = 400  # samples in a 25 ms Kaldi frame
FRAME_SHIFT = 160  # samples in a 10 ms hop
FBANK_MEAN, FBANK_STD = 15.41663, 6.55582  # BEATs pre-training statistics; the official code divides by 2 * std


@functools.cache
def _mel_banks(device: torch.device) -> Tensor:
    """Kaldi's 128 mel filters for a 512-point FFT, (128, 257), made once per device (a copy to the GPU on every
    call would block the host)."""
    mel, _ = kaldi.get_mel_banks(NUM_MEL_BINS, 512, float(SAMPLE_RATE), 20.0, 0.0, 100.0, -500.0, 1.0)
    return F.pad(mel, (0, 1)).float().to(device)  # Kaldi leaves out the Nyquist bin


def batched_fbank(wav: Tensor) -> Tensor:
    """SALMONN's BEATs features for a batch: Kaldi fbank (povey window, pre-emphasis 0.97, DC removal, no dither,
    128 mel bins, 25 ms / 10 ms frames, snip edges) of ``wav * 2**15``, normalised; (B, S) -> (B, T, 128) fp32.

    Each frame reads only its own samples, so frames inside a clip equal ``kaldi.fbank`` of the clip alone.
    """
    x = wav.float() * 2**15
    frames = x.unfold(1, FRAME_LENGTH, FRAME_SHIFT)  # (B, T, 400)
    frames = frames - frames.mean(-1, keepdim=True)
    frames = frames - 0.97 * torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
    frames = frames * torch.hann_window(FRAME_LENGTH, periodic=False, device=wav.device).pow(0.85)
    power = torch.fft.rfft(frames, n=512).abs().pow(2)  # (B, T, 257)
    fbank = (power @ _mel_banks(power.device).T).clamp_min(torch.finfo(torch.float32).eps).log()  # (B, T, 128)
    return (fbank - FBANK_MEAN) / (2 * FBANK_STD)
