"""Cache of the frozen speech path, computed once per clip and run directory: the projected speech tokens (88, H)
while the whole speech path is frozen, or the frozen encoders' frames (1500, C) while the Q-Former trains.

    collate: audio_keys = sha1(waveform bytes)                       (CPU, in the DataLoader workers)
    step:    cached rows ──► speech (B, 88, H) ◄── encode_speech(missing rows only) ──► stored
    disk:    <cache_dir>/<fingerprint>/rank<r>-<n>.safetensors     (one shard per rank and flush, atomic)
    flush:   this rank's new rows ──► its shard;  the other ranks' new shards ──► memory (a hit on every rank)

The fingerprint hashes every weight of the part it caches (Whisper and BEATs; for speech tokens also the
Q-Former, query, projection and both LayerNorms), its settings and the dtype the rows were computed in, so
changing any of them reads from another folder: the cache can never serve stale features.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from ..data.audio import audio_key
from ..io import atomic_write_bytes
from ..model.speech_llm import SpeechLLM, audio_frames

__all__ = ["RunSpeechCache", "SpeechCache", "audio_key", "speech_fingerprint"]


# Part of every fingerprint. 2: rows are computed with the frozen parts in eval mode during training too (rows of
# format 1 could carry BEATs / Q-Former dropout), so caches written before that fix are never read.
CACHE_FORMAT = 2


def speech_fingerprint(model: SpeechLLM, dtype: str, level: str = "speech") -> str:
    """Hash of the cached part's weights and settings and of the compute dtype (``level``: "speech" for the
    speech tokens, "audio" for the frozen encoders' frames)."""
    h = hashlib.sha256()
    h.update(f"format{CACHE_FORMAT}:{level}".encode())
    parts = [("whisper", model.whisper), ("beats", model.beats)]
    if level == "speech":
        parts += [
            ("ln_speech", model.ln_speech),
            ("ln_audio", model.ln_audio),
            ("qformer", model.speech_qformer),
            ("proj", model.speech_llama_proj),
            ("utterance", model.speech_utterance),
        ]
    for name, module in parts:
        if module is None:
            continue
        h.update(name.encode())
        for key, t in sorted(module.state_dict().items()):
            h.update(key.encode())
            h.update(t.detach().to(torch.float32).cpu().numpy().tobytes())
    q = model.speech_qformer
    h.update(f"{model.n_mels}:{q.window}:{q.stride}:{q.num_query}:{dtype}".encode())
    return h.hexdigest()[:20]


class SpeechCache:
    """Memory and disk cache of speech embeddings.

    Args:
        folder: Root folder of the disk cache (None: memory only).
        fingerprint: `speech_fingerprint` of the model it serves.
        rank: This process's rank (each rank writes its own shards; every rank reads all of them).
        level: "speech" caches `SpeechLLM.encode_speech`, "audio" caches `SpeechLLM.encode_audio`.
    """

    def __init__(self, folder: str | Path | None, fingerprint: str, rank: int = 0, level: str = "speech"):
        if level not in ("speech", "audio"):
            raise ValueError(f"cache level must be 'speech' or 'audio', got {level!r}")
        self.fingerprint, self.rank, self.level = fingerprint, rank, level
        self.folder = Path(folder) / fingerprint if folder else None
        self.rows: dict[str, Tensor] = {}
        self._new: dict[str, Tensor] = {}
        self._flushes = 0
        self.hits = self.misses = 0
        self._pending: list[torch.cuda.Event] = []
        self._read: set[str] = set()  # shard files whose rows are in memory
        self.read_shards()

    def read_shards(self) -> int:
        """Loads the rows of every shard on disk not read yet (other ranks' and earlier runs'); returns their count.

        Under DDP each rank computes the clips of its own batches: reading the others' shards at every flush makes
        a clip computed on any rank a hit on all of them from then on, as on one device."""
        if self.folder is None or not self.folder.is_dir():
            return 0
        n = 0
        for shard in sorted(self.folder.glob("*.safetensors")):  # complete files only: shards are renamed into place
            if shard.name in self._read:
                continue
            with safe_open(shard, framework="pt") as f:
                for key in f.keys():
                    if key not in self.rows:
                        self.rows[key], n = f.get_tensor(key), n + 1
            self._read.add(shard.name)
        return n

    @classmethod
    def for_run(
        cls, model: SpeechLLM, folder: str | None, run_dir: Path, precision: str, rank: int, level: str = "speech"
    ) -> SpeechCache:
        """The cache of a training run: under ``<run_dir>/speech_cache`` unless ``folder`` says where ("none":
        memory only), fingerprinted by ``model``'s cached part and the Trainer's ``precision``."""
        folder = folder or str(run_dir / "speech_cache")
        root = None if folder.lower() == "none" else folder
        return cls(root, speech_fingerprint(model, precision, level), rank, level)

    def __len__(self) -> int:
        return len(self.rows)

    def hit_rate(self) -> float:
        """The share of clips served from the cache since the last call (then the counts restart)."""
        rate = self.hits / max(1, self.hits + self.misses)
        self.hits = self.misses = 0
        return rate

    def speech(self, model: SpeechLLM, batch: dict, keys: list[str]) -> Tensor:
        """Speech embeddings of the batch: cached rows as they are, the others computed and remembered.

        Neither direction blocks the host: cached rows are gathered into pinned memory and copied up
        asynchronously, and fresh rows come down asynchronously into pinned memory that is only read (by a later
        step or a flush) after an event says the copy is done.

        Returns:
            (B, L, H) on the device and in the dtype of the computed rows.
        """
        device = batch["wav"].device
        missing = [i for i, k in enumerate(keys) if k not in self.rows]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        self._wait_for_copies()
        cached = [i for i, k in enumerate(keys) if k in self.rows]
        up = None
        if cached:
            first = self.rows[keys[cached[0]]]
            staging = torch.empty((len(cached), *first.shape), dtype=first.dtype, pin_memory=device.type == "cuda")
            up = torch.stack([self.rows[keys[i]] for i in cached], out=staging).to(device, non_blocking=True)
        if not missing:
            return up  # (B, L, H)
        idx = torch.tensor(missing, device=device)
        encode = model.encode_speech if self.level == "speech" else model.encode_audio
        with torch.no_grad():
            fresh = encode(batch["wav"][idx], batch["wav_lengths"][idx]).detach()  # (b, L, H)
        down = torch.empty(fresh.shape, dtype=fresh.dtype, pin_memory=device.type == "cuda")
        down.copy_(fresh, non_blocking=True)
        if device.type == "cuda":
            self._pending.append(torch.cuda.Event())
            self._pending[-1].record()
        for i, row in zip(missing, down, strict=True):
            self.rows[keys[i]] = row
            self._new[keys[i]] = row
        if up is None:
            return fresh
        out = torch.empty((len(keys), *fresh.shape[1:]), dtype=fresh.dtype, device=device)
        out[idx] = fresh
        out[torch.tensor(cached, device=device)] = up.to(fresh.dtype)
        return out

    def _wait_for_copies(self) -> None:
        """Waits for the device-to-host copies of fresh rows (long done by the time anything reads them)."""
        for event in self._pending:
            event.synchronize()
        self._pending.clear()

    def flush(self) -> Path | None:
        """Writes the rows computed since the last flush as one new shard of this rank, atomically, and reads the
        shards other ranks have written since the last flush. Returns the new shard (None: nothing new)."""
        if self.folder is None:
            return None
        path = None
        if self._new:
            self._wait_for_copies()
            path = self.folder / f"rank{self.rank}-{os.getpid()}-{self._flushes}.safetensors"
            atomic_write_bytes(path, save({k: v.contiguous() for k, v in self._new.items()}))
            self._new, self._flushes = {}, self._flushes + 1
            self._read.add(path.name)
        self.read_shards()
        return path


class RunSpeechCache:
    """The speech cache of a training run, opened on first use: speech tokens while the speech path is frozen,
    the frozen encoders' frames while it trains.

    Args:
        enabled: ``speech_cache`` of the run.
        folder: ``speech_cache_dir`` (default ``<run_dir>/speech_cache``; "none": memory only).
        run_dir: The run's folder.
        precision: The Trainer's precision (part of the fingerprint).
    """

    def __init__(self, enabled: bool, folder: str | None, run_dir: Path, precision: str):
        self.enabled, self.folder, self.run_dir, self.precision = enabled, folder, run_dir, precision
        self.cache: SpeechCache | None = None

    def speech(self, model: SpeechLLM, batch: dict, rank: int) -> Tensor | None:
        """The batch's speech embeddings, or None when caching is off (the model computes them). While the
        speech path trains, the frozen encoders' frames come from the cache and the trainable part runs on them,
        with gradients."""
        if not self.enabled:
            return None
        if self.cache is None:
            level = "audio" if any(p.requires_grad for p in model.speech_parameters()) else "speech"
            self.cache = SpeechCache.for_run(model, self.folder, self.run_dir, self.precision, rank, level)
        rows = self.cache.speech(model, batch, batch["audio_keys"])
        if self.cache.level == "speech":
            return rows
        # the trainable part runs on the frames of the windows that reach the LLM only
        frames = audio_frames(batch["wav_lengths"]).to(rows.device)
        return model.speech_from_audio(rows[:, : model.kept_frames(batch, rows.shape[1])], frames)

    def flush(self, rate: bool = True) -> float | None:
        """Writes new rows to disk; returns the hit rate since the last call (None before the cache exists)."""
        if self.cache is None:
            return None
        self.cache.flush()
        return self.cache.hit_rate() if rate else None
