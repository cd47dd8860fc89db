"""Vectors for the experiment and their train / held-out split.

synthetic: make_synthetic ──┐
stdlib:    build_corpus ─► embed_passages (MiniLM) ──┴─► vectors (N, D) [+ labels]
    ─ seeded permutation ─► held-out part: queries (n_queries) + database   (never seen in training)
                           train part:    everything the encoders, codebooks and OPQ are fitted on;
                                          a same-sized queries + database pair of it gives the train-side
                                          recall, so train vs held-out compares like with like
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .corpus import build_corpus, corpus_summary
from .embed import embed_passages
from .synthetic import make_synthetic

__all__ = ["Split", "exact_neighbours", "load_dataset", "make_split"]


@dataclass
class Split:
    """One seed's split of a dataset. Index arrays point into ``vectors``.

    Attributes:
        vectors: (N, D) float32 unit rows.
        labels: (N,) class ids, or None (no classes in a text corpus).
        train: Indices the encoders and codebooks may see.
        queries: Held-out queries.
        database: Held-out database searched by the held-out queries.
        train_queries: Queries of the train-side evaluation (a part of ``train``).
        train_database: Its database (another part of ``train``, as large as ``database`` when it can be).
    """

    vectors: np.ndarray
    labels: np.ndarray | None
    train: np.ndarray
    queries: np.ndarray
    database: np.ndarray
    train_queries: np.ndarray
    train_database: np.ndarray

    def sizes(self) -> dict[str, int]:
        names = ("train", "queries", "database", "train_queries", "train_database")
        return {k: len(getattr(self, k)) for k in names}


def make_split(
    vectors: np.ndarray, labels: np.ndarray | None, heldout_fraction: float, n_queries: int, seed: int
) -> Split:
    """Splits ``vectors`` at random (seeded) into a train part and a held-out queries + database part.

    Raises:
        ValueError: naming ``heldout_fraction`` or ``n_queries`` when the held-out part cannot hold the queries
            and a database at least as large.
    """
    n = len(vectors)
    if not 0.0 < heldout_fraction < 1.0:
        raise ValueError(f"heldout_fraction must lie in (0, 1), got {heldout_fraction}")
    n_held = int(round(n * heldout_fraction))
    if n_queries < 1 or 2 * n_queries > n_held:
        raise ValueError(
            f"n_queries={n_queries}: the held-out part has {n_held} of {n} vectors; it needs at least twice the "
            "queries (queries + a database); lower n_queries or raise heldout_fraction"
        )
    perm = np.random.default_rng(seed).permutation(n)
    held, train = perm[:n_held], perm[n_held:]
    queries, database = held[:n_queries], held[n_queries:]
    train_queries = train[:n_queries]
    train_database = train[n_queries : n_queries + len(database)]
    return Split(vectors, labels, train, queries, database, train_queries, train_database)


@torch.no_grad()
def exact_neighbours(
    queries: torch.Tensor, database: torch.Tensor, k: int, exclude_self: bool = False, chunk: int = 4096
) -> torch.Tensor:
    """Top-``k`` database rows by cosine (the rows are unit vectors), best first.

    Args:
        queries: (Q, D).
        database: (N, D), on the same device.
        k: Neighbours per query.
        exclude_self: ``queries`` is ``database``; a row is not its own neighbour.
        chunk: Queries per matrix product.

    Returns:
        (Q, k) int64 indices into ``database``.
    """
    out = []
    for start in range(0, len(queries), chunk):
        sims = queries[start : start + chunk] @ database.T  # (q, N)
        if exclude_self:
            rows = torch.arange(sims.shape[0], device=sims.device)
            sims[rows, rows + start] = -float("inf")
        out.append(sims.topk(k, dim=1).indices)
    return torch.cat(out)


def load_dataset(name: str, cfg, device: str) -> tuple[np.ndarray, np.ndarray | None, dict]:
    """The vectors of dataset ``name`` ("synthetic" or "stdlib"), its labels, and a description.

    Args:
        name: Dataset name.
        cfg: The experiment config (its ``synthetic_*``, ``corpus_*``, ``minilm_path``, ``embed_*``, ``cache_dir``).
        device: Where MiniLM runs.
    """
    if name == "synthetic":
        x, y = make_synthetic(
            cfg.synthetic_n,
            cfg.synthetic_dim,
            cfg.synthetic_classes,
            cfg.synthetic_latent_dim,
            cfg.synthetic_latent_scale,
            cfg.synthetic_noise,
            cfg.synthetic_seed,
        )
        return x, y, {"vectors": len(x), "dim": x.shape[1], "classes": cfg.synthetic_classes}
    if name == "stdlib":
        passages = build_corpus(cfg.corpus_root or None, cfg.corpus_min_chars, cfg.corpus_max_chars, cfg.cache_dir)
        info = {"corpus_all": corpus_summary(passages)}
        if 0 < cfg.corpus_max_passages < len(passages):
            keep = np.sort(np.random.default_rng(0).choice(len(passages), cfg.corpus_max_passages, replace=False))
            passages = [passages[i] for i in keep]
        x, embed_info = embed_passages(
            passages,
            cfg.minilm_path or None,
            device,
            cfg.embed_dtype,
            cfg.embed_max_tokens,
            cfg.embed_batch,
            cfg.cache_dir,
        )
        return x, None, info | {"corpus_used": corpus_summary(passages), "dim": x.shape[1], "embedding": embed_info}
    raise ValueError(f"datasets: unknown dataset {name!r}; choose from ['synthetic', 'stdlib']")
