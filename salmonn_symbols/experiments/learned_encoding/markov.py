"""The order-k Markov baseline, fitted on the train split and scored on the very windows the LMs are scored on.

    train segments ─► counts[order o][context, next] for o = 0..k
    test windows (N, L) ─► position j predicted from its last min(k, j) tokens in the window
                           P = (count + 1/2) / (total + A/2)   (Krichevsky-Trofimov)  ─► bits per token

Backing off to a shorter context at a window's start gives the baseline exactly the context the LM has.
"""

from __future__ import annotations

import numpy as np

from .corpora import Corpus, windows

__all__ = ["MarkovBaseline"]

ALPHA = 0.5


class MarkovBaseline:
    """Counts of every context of length 0..order in the train split of a small-alphabet corpus.

    Args:
        corpus: A corpus with a small alphabet (``A ** (order + 1)`` counts): DNA, or a toy for a check.
        order: The longest context.
    """

    def __init__(self, corpus: Corpus, order: int):
        a = corpus.vocab_size
        if a ** (order + 1) > 50_000_000:
            raise ValueError(f"{corpus.name}: a Markov table of order {order} over {a} symbols is too large")
        self.alphabet, self.order = a, order
        data = corpus.splits["train"].astype(np.int64)
        if data.ndim == 2:  # independent sequences: each is a segment
            segments = list(data)
        else:  # no context across a junction of two train regions
            starts = list(corpus.segments.get("train", np.array([0])))
            segments = [data[lo:hi] for lo, hi in zip(starts, [*starts[1:], len(data)], strict=True)]
        self.counts = []
        for o in range(order + 1):
            table = np.zeros(a ** (o + 1), np.float64)
            for seg in segments:
                if len(seg) > o:
                    table += np.bincount(self._index(seg, o), minlength=a ** (o + 1))
            self.counts.append(table.reshape(a**o, a))

    def _index(self, seq: np.ndarray, o: int) -> np.ndarray:
        """Index of (context of length o, next) for every position >= o of a 1-D sequence."""
        idx = np.zeros(len(seq) - o, np.int64)
        for i in range(o + 1):
            idx = idx * self.alphabet + seq[i : len(seq) - o + i]
        return idx

    def bits(self, wins: np.ndarray) -> np.ndarray:
        """Bits of every predicted position (1..L-1) of (N, L) windows, using only context inside the window.

        Returns:
            (N, L - 1) bits.
        """
        n, length = wins.shape
        out = np.empty((n, length - 1))
        for j in range(1, length):
            o = min(self.order, j)
            ctx = np.zeros(n, np.int64)
            for i in range(j - o, j):
                ctx = ctx * self.alphabet + wins[:, i]
            row = self.counts[o][ctx]  # (N, A)
            p = (row[np.arange(n), wins[:, j]] + ALPHA) / (row.sum(axis=1) + ALPHA * self.alphabet)
            out[:, j - 1] = -np.log2(p)
        return out

    def score(self, corpus: Corpus, split: str, seq_len: int, limit: int = 0) -> dict:
        """Held-out bits per token on the same windows `windows(corpus, split, seq_len + 1, limit)` as the LMs."""
        b = self.bits(windows(corpus, split, seq_len + 1, limit))
        return {"order": self.order, "bits": float(b.mean()), "positions": int(b.size)}
