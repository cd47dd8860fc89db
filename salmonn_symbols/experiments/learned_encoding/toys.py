"""The seed's three toy scenarios as sequence sources whose best possible loss is known exactly.

    pattern:     a random pattern of 5 distinct tokens, repeated      ─► copy after the first period
    context:     a context token c, then x ─► pi_c(x) w.p. 0.9        ─► K permutations to learn, 10% noise
    compression: a sparse random first-order Markov chain over V      ─► every token needs its own successors

Each generator returns (S, seq_len + 1) sequences and ``bound_bits``: the exact expected entropy of the next
token, averaged over the ``seq_len`` predicted positions. A model's held-out bits/token cannot be below it
(up to sampling noise), so the gap to it is what each arm still misses. The data are drawn from a generator
seeded by the scenario alone, so every model seed sees the same sequences.
"""

from __future__ import annotations

import math

import numpy as np

from .corpora import Corpus

__all__ = ["TOY_SEEDS", "toy_corpus"]

TOY_SEEDS = {"pattern": 11, "context": 12, "compression": 13}
PERIOD = 5  # the seed's [1, 2, 3, 4, 5] * 4
N_CONTEXTS = 5
NOISE = 0.1
SUCCESSORS = 4
MIX = 0.03  # uniform mass in the chain's rows, so it is ergodic and every transition is possible
EVAL_SEQUENCES = 512


def _h(p: np.ndarray) -> float:
    """Entropy in bits of a probability vector."""
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum())


def pattern(rng: np.random.Generator, vocab: int, n: int, length: int) -> tuple[np.ndarray, float]:
    """Patterns of ``PERIOD`` distinct tokens repeated: position j < PERIOD costs log2(vocab - j), later 0."""
    pats = np.argsort(rng.random((n, vocab)), axis=1)[:, :PERIOD]
    seqs = np.tile(pats, (1, length // PERIOD + 1))[:, :length]
    bound = sum(math.log2(vocab - j) for j in range(1, min(PERIOD, length))) / (length - 1)
    return seqs, bound


def context(rng: np.random.Generator, vocab: int, n: int, length: int) -> tuple[np.ndarray, float]:
    """Token 0 is a context c < N_CONTEXTS; then content tokens follow x ─► pi_c(x) with prob 1 - NOISE."""
    m = vocab - N_CONTEXTS
    perms = np.stack([rng.permutation(m) for _ in range(N_CONTEXTS)]) + N_CONTEXTS  # (K, M) content ids
    seqs = np.empty((n, length), np.int64)
    seqs[:, 0] = rng.integers(0, N_CONTEXTS, n)
    seqs[:, 1] = rng.integers(N_CONTEXTS, vocab, n)
    for j in range(2, length):
        follow = perms[seqs[:, 0], seqs[:, j - 1] - N_CONTEXTS]
        noise = rng.integers(N_CONTEXTS, vocab, n)
        seqs[:, j] = np.where(rng.random(n) < NOISE, noise, follow)
    p_follow = 1 - NOISE + NOISE / m
    step = _h(np.array([p_follow] + [NOISE / m] * (m - 1)))
    bound = (math.log2(m) + (length - 2) * step) / (length - 1)
    return seqs, bound


def compression(rng: np.random.Generator, vocab: int, n: int, length: int) -> tuple[np.ndarray, float]:
    """A stationary Markov chain with ``SUCCESSORS`` likely successors per token; bound = sum_i pi_i H(P_i)."""
    trans = np.full((vocab, vocab), MIX / vocab)
    for i in range(vocab):
        succ = rng.choice(vocab, SUCCESSORS, replace=False)
        trans[i, succ] += (1 - MIX) * rng.dirichlet(np.ones(SUCCESSORS))
    pi = np.full(vocab, 1 / vocab)
    for _ in range(1000):
        pi = pi @ trans
    cum = np.cumsum(trans, axis=1)
    seqs = np.empty((n, length), np.int64)
    seqs[:, 0] = rng.choice(vocab, n, p=pi / pi.sum())
    for j in range(1, length):
        u = rng.random(n)[:, None]
        seqs[:, j] = np.minimum((u > cum[seqs[:, j - 1]]).sum(axis=1), vocab - 1)
    bound = float(sum(pi[i] * _h(trans[i]) for i in range(vocab)))
    return seqs, bound


GENERATORS = {"pattern": pattern, "context": context, "compression": compression}


def toy_corpus(name: str, cfg) -> Corpus:
    """Train/val/test sequences of toy ``name`` (seq_len + 1 tokens each) with their exact bound."""
    if name not in GENERATORS:
        raise ValueError(f"unknown toy {name!r}; toys: {sorted(GENERATORS)}")
    if cfg.toy_vocab <= max(PERIOD, N_CONTEXTS + 1, SUCCESSORS):
        raise ValueError(f"learned-encoding config field 'toy_vocab': {cfg.toy_vocab} is too small for the toys")
    rng = np.random.default_rng(TOY_SEEDS[name])
    length = cfg.seq_len + 1
    seqs, bound = GENERATORS[name](rng, cfg.toy_vocab, cfg.toy_sequences + 2 * EVAL_SEQUENCES, length)
    seqs = seqs.astype(np.int32)
    n = cfg.toy_sequences
    splits = {"train": seqs[:n], "val": seqs[n : n + EVAL_SEQUENCES], "test": seqs[n + EVAL_SEQUENCES :]}
    info = {"sequences": {k: len(v) for k, v in splits.items()}, "length": length, "bound_bits": bound}
    return Corpus(name, "token", cfg.toy_vocab, splits, {}, None, info, bound)
