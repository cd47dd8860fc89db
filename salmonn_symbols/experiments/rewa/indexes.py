"""Every compared method as one searchable index at a known number of bytes per stored vector.

    method               stored code                                   bytes / vector   search
    exact                float32 vector (FAISS IndexFlatIP)             4·D              exact cosine (reference)
    sq_fp16 / sq_int8    FAISS scalar quantiser                         2·D / D          inner product on decoded
    pq / opq_pq          FAISS PQ, M sub-quantisers of 8 bits (+OPQ)    M                asymmetric distances
    binary_rewa          sign(R x), 8·B bits (FAISS IndexBinaryFlat)    B                Hamming
    random_hadamard      B-dim SRHT, int8 per dim (FAISS SQ8)           B                inner product
    learned_*            B-dim learned projection, int8 per dim         B                inner product
    learned_rank_pq      learned projection to P dims, then PQ with B   B                asymmetric distances
                         (P = pq_proj_factor·B, at most D)
    seed:*               the seed's settings: float32 / 16-bit codes    4·m / bits/8

Trainable parts (codebooks, OPQ rotation, int8 ranges) are fitted on the train part only.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import faiss
import numpy as np
import torch
from torch import nn

__all__ = ["CodecIndex", "faiss_index", "projected_index"]

_IP = faiss.METRIC_INNER_PRODUCT


class CodecIndex:
    """A FAISS index behind an optional encoder.

    Args:
        name: Method name.
        bytes_per_vector: Size of one stored code.
        index: A FAISS (float or binary) index over the encoder's outputs.
        encode: float32 (N, D) -> what ``index`` stores and searches with; None for the identity.
        size: What the code is, for the results ("16 dims int8", "128 bits", ...).
    """

    def __init__(
        self,
        name: str,
        bytes_per_vector: float,
        index,
        encode: Callable[[np.ndarray], np.ndarray] | None = None,
        size: str = "",
    ):
        self.name, self.bytes_per_vector, self.index, self.size = name, bytes_per_vector, index, size
        self.encode = encode or (lambda x: x)

    def fit(self, train: np.ndarray) -> float:
        """Trains the index on (encoded) train vectors; returns seconds."""
        start = time.perf_counter()
        if not self.index.is_trained:
            self.index.train(np.ascontiguousarray(self.encode(train)))
        return time.perf_counter() - start

    def add(self, database: np.ndarray) -> float:
        """Replaces the stored vectors by ``database`` (encoded); returns seconds per 1000 vectors."""
        self.index.reset()
        start = time.perf_counter()
        self.index.add(np.ascontiguousarray(self.encode(database)))
        return (time.perf_counter() - start) * 1000 / len(database)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, float]:
        """Top-``k`` ids (Q, k), best first, and seconds per 1000 queries (query encoding included)."""
        start = time.perf_counter()
        _, ids = self.index.search(np.ascontiguousarray(self.encode(queries)), k)
        return ids, (time.perf_counter() - start) * 1000 / len(queries)


def _quiet(cp) -> None:
    """Small train sets are fine for these tests; drop FAISS's 'please provide at least ...' warnings."""
    cp.min_points_per_centroid = 1


def _pq(dim: int, m: int, setting: str, kmeans_iters: int) -> faiss.IndexPQ:
    if dim % m:
        raise ValueError(f"{setting}: {dim} dims cannot be split into {m} PQ sub-vectors (need dim % bytes == 0)")
    index = faiss.IndexPQ(dim, m, 8, _IP)
    _quiet(index.pq.cp)
    index.pq.cp.niter = kmeans_iters
    return index


def faiss_index(name: str, dim: int, budget: int | None, opq_iters: int = 10, kmeans_iters: int = 25) -> CodecIndex:
    """A FAISS baseline on the full vectors: "exact", "sq_fp16", "sq_int8", "pq" or "opq_pq" (with ``budget``
    bytes); ``opq_iters`` OPQ alternations, ``kmeans_iters`` k-means iterations per PQ training."""
    if name == "exact":
        return CodecIndex(name, 4 * dim, faiss.IndexFlatIP(dim), size=f"{dim} dims float32")
    if name == "sq_fp16":
        return CodecIndex(
            name, 2 * dim, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_fp16, _IP), size=f"{dim} dims fp16"
        )
    if name == "sq_int8":
        return CodecIndex(
            name, dim, faiss.IndexScalarQuantizer(dim, faiss.ScalarQuantizer.QT_8bit, _IP), size=f"{dim} dims int8"
        )
    if name == "pq":
        return CodecIndex(name, budget, _pq(dim, budget, "pq", kmeans_iters), size=f"{budget}x8-bit PQ")
    if name == "opq_pq":
        pq = _pq(dim, budget, "opq_pq", kmeans_iters)
        opq = faiss.OPQMatrix(dim, budget)
        opq.niter = opq_iters
        opq.niter_pq_0 = kmeans_iters
        opq.pq = pq.pq  # OPQ alternates with this PQ (quiet clustering settings); IndexPQ retrains it after
        index = faiss.IndexPreTransform(opq, pq)
        return CodecIndex(name, budget, index, size=f"OPQ + {budget}x8-bit PQ")
    raise ValueError(f"unknown FAISS method {name!r}")


def _torch_encoder(module: nn.Module, batch: int = 65536) -> Callable[[np.ndarray], np.ndarray]:
    """A CPU module (N, D) -> (N, m) as a numpy function, in batches."""

    def encode(x: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            parts = [module(torch.from_numpy(x[i : i + batch])).numpy() for i in range(0, len(x), batch)]
        return np.concatenate(parts).astype(np.float32, copy=False)

    return encode


def projected_index(
    name: str, encoder: nn.Module, out_dim: int, storage: str, budget: int | None = None, kmeans_iters: int = 25
) -> CodecIndex:
    """An index over an encoder's outputs.

    Args:
        name: Method name.
        encoder: A CPU module; `encoders.SignRandomProjection` for "binary" storage.
        out_dim: Its output size (dims, or bits for "binary").
        storage: "int8" (one byte per dim), "float32", "pq" (``budget`` sub-quantisers) or "binary".
        budget: Bytes per vector for "pq".
        kmeans_iters: k-means iterations of the PQ training.
    """
    if storage == "binary":
        return CodecIndex(name, out_dim // 8, faiss.IndexBinaryFlat(out_dim), encoder.pack, size=f"{out_dim} bits")
    encode = _torch_encoder(encoder)
    if storage == "int8":
        index = faiss.IndexScalarQuantizer(out_dim, faiss.ScalarQuantizer.QT_8bit, _IP)
        return CodecIndex(name, out_dim, index, encode, size=f"{out_dim} dims int8")
    if storage == "float32":
        return CodecIndex(name, 4 * out_dim, faiss.IndexFlatIP(out_dim), encode, size=f"{out_dim} dims float32")
    if storage == "pq":
        index = _pq(out_dim, budget, f"{name} ({out_dim} dims)", kmeans_iters)
        return CodecIndex(name, budget, index, encode, size=f"{out_dim} dims -> {budget}x8-bit PQ")
    raise ValueError(f"unknown storage {storage!r}")
