"""Scoring one index on one side (held-out or train) of a split.

database ─index.add─► codes          (encode time per 1k vectors)
queries ─index.search(depth)─► candidates (Q, depth)   (search time per 1k queries)
    ├─ first k ─────────────────────────────► recall@k vs the exact cosine top-k
    ├─ re-scored with the full vectors, top k ─► recall@k after re-ranking the top-depth
    └─ labels (synthetic) ─────────────────► class precision@k (the share of the k found that share
                                              the query's class: the seed's notion of a hit)
"""

from __future__ import annotations

import numpy as np

from .indexes import CodecIndex

__all__ = ["class_precision", "evaluate_side", "recall_at_k", "rerank"]


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each query's exact top-k (truth, (Q, k)) among its first k found ids (found, (Q, ≥k))."""
    k = truth.shape[1]
    hits = [len(set(f[:k].tolist()) & set(t.tolist())) for f, t in zip(found, truth, strict=True)]
    return float(np.mean(hits)) / k


def rerank(candidates: np.ndarray, queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    """The k candidates with the highest full-precision cosine, per query.

    Args:
        candidates: (Q, R) ids into ``database``; -1 marks a missing candidate.
        queries: (Q, D) unit vectors.
        database: (N, D) unit vectors.
        k: How many to keep.

    Returns:
        (Q, k) ids, best first.
    """
    out = []
    for start in range(0, len(candidates), 256):  # 256 queries at a time bound the (q, R, D) gather
        cand = candidates[start : start + 256]
        safe = np.where(cand < 0, 0, cand)
        scores = np.einsum("qd,qrd->qr", queries[start : start + 256], database[safe])  # (q, R)
        scores[cand < 0] = -np.inf
        order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        out.append(np.take_along_axis(cand, order, axis=1))
    return np.concatenate(out)


def class_precision(found: np.ndarray, query_labels: np.ndarray, db_labels: np.ndarray, k: int) -> float:
    """Share of the first k found ids whose label is the query's."""
    return float((db_labels[found[:, :k]] == query_labels[:, None]).mean())


def evaluate_side(
    index: CodecIndex,
    queries: np.ndarray,
    database: np.ndarray,
    truth: np.ndarray,
    depth: int,
    query_labels: np.ndarray | None = None,
    db_labels: np.ndarray | None = None,
) -> dict[str, float]:
    """Stores ``database`` in ``index``, searches it with ``queries`` and scores the result.

    Args:
        index: A fitted index.
        queries: (Q, D) unit vectors.
        database: (N, D) unit vectors.
        truth: (Q, k) exact cosine top-k ids into ``database``.
        depth: Candidates retrieved per query (re-ranked with the full vectors).
        query_labels: (Q,) class ids, or None.
        db_labels: (N,) class ids, or None.

    Returns:
        recall, recall_rerank, class_precision (None without labels), encode_ms_per_1k, search_ms_per_1k.
    """
    k = truth.shape[1]
    encode_s = index.add(database)
    found, search_s = index.search(queries, max(depth, k))
    out = {
        "recall": recall_at_k(found, truth),
        "recall_rerank": recall_at_k(rerank(found, queries, database, k), truth),
        "class_precision": None,
        "encode_ms_per_1k": 1000 * encode_s,
        "search_ms_per_1k": 1000 * search_s,
    }
    if query_labels is not None and db_labels is not None:
        out["class_precision"] = class_precision(found, query_labels, db_labels, k)
    return out
