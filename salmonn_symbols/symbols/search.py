"""Verified discovery: propose tokens broadly, keep a change only when the task loss says it is real.

    per label, per token position of its symbol
      proposals ── MLP cosine neighbours (the seed's soft-quantization path)
               ├── first-order change of the task loss at the symbol embedding (HotFlip / AutoPrompt)
               └── the model's own likelihood of each token at that target position (LM-BFF label search)
    coordinate search: swap one position at a time, score every valid word by the exact task loss on the
        label's *search* half of the held-out samples, keep the best, repeat (``search_rounds``; GCG-like)
    confirm: the best few words against the current symbol on the *confirm* half, paired per sample:
        Δ = mean(loss_candidate − loss_current), se = std / √n; a word qualifies only if Δ < −z · se, z the
        one-sided normal quantile of min_z's level divided by the number of words confirmed (Bonferroni),
        and Δ < −min_delta (a real but negligible improvement is no reason to change)
    assign: labels in order of confidence (most negative Δ / se first); no token is shared by two labels

Searching and confirming on disjoint samples keeps the winner's curse out of the decision: the best of many
noisy candidates looks better than it is on the samples that picked it, not on fresh ones. Nothing here needs
a model: the `Scorer` protocol gives losses and proposals (`training.rescoring.TaskLossScorer` implements it).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor

__all__ = [
    "PROPOSAL_SOURCES",
    "Evaluated",
    "Scorer",
    "SearchOutcome",
    "allowed_for",
    "assign_labels",
    "confirm",
    "count_flips",
    "search_label",
]

PROPOSAL_SOURCES = ("mlp", "gradient", "likelihood")


class Scorer(Protocol):
    """What the verified search asks of a model and its held-out data."""

    def losses(self, label: str, words: Sequence[str], half: str) -> Tensor:
        """Per-sample task loss of each word put in place of ``label``'s symbol, shape (C, n), on the "search"
        or "confirm" half of the label's held-out samples (the same samples for every word)."""

    def proposals(
        self, label: str, source: str, position: int, ids: tuple[int, ...], allowed: Tensor, k: int
    ) -> list[tuple[int, float]]:
        """Up to ``k`` (token id, score) pairs, best first, for ``position`` of the symbol ``ids`` of ``label``
        (its current symbol, or a candidate of the search, whose earlier tokens condition the proposal) from
        ``source`` ("gradient" or "likelihood"), among the ``allowed`` tokens (bool, (V,)); k < 0: all. A source
        may give nothing for ids that are not the current symbol's."""


@dataclass
class Evaluated:
    """A candidate word and what the task loss said of it.

    Attributes:
        word: The word.
        ids: Its token ids.
        search_loss: Mean task loss on the search half.
        sources: Proposal sources that suggested its changed token(s).
        delta: Mean paired loss difference to the current symbol on the confirm half (negative is better).
        se: Standard error of ``delta``.
    """

    word: str
    ids: tuple[int, ...]
    search_loss: float
    sources: set[str] = field(default_factory=set)
    delta: float | None = None
    se: float | None = None

    @property
    def z(self) -> float:
        """``delta / se`` (−inf for a certain improvement, nan when unconfirmed)."""
        if self.delta is None or self.se is None:
            return math.nan
        return self.delta / self.se if self.se > 0 else (-math.inf if self.delta < 0 else math.inf)


@dataclass
class SearchOutcome:
    """The verified search of one label.

    Attributes:
        current: The current symbol, evaluated the same way as every candidate.
        ranked: Candidates that beat the current symbol on the search half, best first.
        position_ranks: For each position, (token id, search loss) of the tokens tried there, best first.
        evaluations: Candidate words scored.
    """

    current: Evaluated
    ranked: list[Evaluated]
    position_ranks: list[list[tuple[int, float]]]
    evaluations: int


def _ordered(proposals: dict[int, set[str]], ranks: dict[int, int]) -> list[int]:
    """Tokens proposed by more sources first, then by their best rank in any source."""
    return sorted(proposals, key=lambda t: (-len(proposals[t]), ranks.get(t, 1 << 30), t))


Proposer = Callable[[tuple[int, ...]], tuple[list[dict[int, set[str]]], list[dict[int, int]]]]


def search_label(
    label: str,
    current: tuple[int, ...],
    current_word: str,
    propose: Proposer,
    validate: Callable[[tuple[int, ...]], str | None],
    scorer: Scorer,
    rounds: int = 2,
    max_evaluations: int = 256,
    beam: int = 8,
) -> SearchOutcome:
    """Search over one label's symbol, every word scored by the task loss on the search half:

    1. a beam over positions: the best ``beam`` tokens proposed for position 0, each extended by the tokens
       proposed for position 1 *given that token* (a continuation depends on its start), and so on;
    2. ``rounds - 1`` passes of single-position swaps around the best word so far, with proposals made for that
       word, as GCG recomputes its candidates at every step.

    Args:
        label: The label.
        current: Token ids of its current symbol.
        current_word: The current symbol.
        propose: ids -> per position, token id -> the sources that proposed it, and token id -> its best rank
            among the sources (orders the work under a budget); the proposals are made for those ids.
        validate: ids -> the word they spell if it may be used (round trip, not a label word, stable), else None.
        scorer: Task losses on held-out samples.
        rounds: The beam pass, then single-position passes; a pass that improves nothing ends the search.
        max_evaluations: Candidate words scored at most.
        beam: Prefixes kept per position in the first pass.
    """
    cur_losses = scorer.losses(label, [current_word], "search")
    cur = Evaluated(current_word, tuple(current), float(cur_losses.mean()) if cur_losses.numel() else math.nan)
    seen: dict[tuple[int, ...], Evaluated] = {cur.ids: cur}
    if math.isnan(cur.search_loss):  # no held-out sample of this label: nothing can be verified
        return SearchOutcome(cur, [], [[(t, math.nan)] for t in current], 0)
    budget = max_evaluations

    def options_at(ids: tuple[int, ...]) -> tuple[list[list[int]], list[dict[int, set[str]]]]:
        proposals, ranks = propose(ids)
        opts = [[ids[p]] + [t for t in _ordered(proposals[p], ranks[p]) if t != ids[p]] for p in range(len(ids))]
        return opts, proposals

    def beam_candidates() -> tuple[list[tuple[int, ...]], list[dict[int, set[str]]]]:
        prefixes: list[tuple[int, tuple[int, ...]]] = [(0, ())]  # (rank sum, tokens so far)
        sources: list[dict[int, set[str]]] = [{} for _ in current]
        for p in range(len(current)):
            grown = []
            for rank, prefix in prefixes[:beam]:
                opts, props = options_at(prefix + tuple(current[p:]))
                for t, s in props[p].items():
                    sources[p].setdefault(t, set()).update(s)
                grown += [(rank + i, prefix + (t,)) for i, t in enumerate(opts[p])]
            prefixes = sorted(grown, key=lambda x: x[0])
        return [ids for _, ids in prefixes], sources

    def evaluate(candidates: list[tuple[int, ...]], proposals, limit: int) -> Evaluated | None:
        nonlocal budget
        trials = []
        for ids in candidates:
            if len(trials) >= min(budget, limit):
                break
            word = validate(ids) if ids not in seen else None
            if word is not None:
                sources = set().union(*(proposals[p].get(t, set()) for p, t in enumerate(ids) if t != current[p]))
                trials.append(Evaluated(word, ids, math.inf, sources))
        if not trials:
            return None
        losses = scorer.losses(label, [t.word for t in trials], "search").mean(1)  # (C,)
        budget -= len(trials)
        for t, loss in zip(trials, losses.tolist(), strict=True):
            t.search_loss = loss
            seen[t.ids] = t
        return min(trials, key=lambda t: t.search_loss)

    best = cur
    candidates, proposals = beam_candidates()
    # the first pass gets its share of the budget, so the swap passes always have some
    share = max(1, max_evaluations // max(1, rounds))
    top = evaluate([ids for ids in candidates if ids != cur.ids], proposals, share)
    if top is not None and top.search_loss < best.search_loss:
        best = top
    for _ in range(max(0, rounds - 1)):
        if budget <= 0:
            break
        options, proposals = options_at(best.ids)
        swaps = [best.ids[:p] + (t,) + best.ids[p + 1 :] for p in range(len(current)) for t in options[p]]
        top = evaluate([ids for ids in swaps if ids not in seen], proposals, budget)
        if top is None or top.search_loss >= best.search_loss:
            break
        best = top
    ranked = sorted((e for e in seen.values() if e.search_loss < cur.search_loss), key=lambda e: e.search_loss)
    position_ranks = []
    for p in range(len(current)):
        by_token: dict[int, float] = {}
        for e in seen.values():
            by_token[e.ids[p]] = min(by_token.get(e.ids[p], math.inf), e.search_loss)
        position_ranks.append(sorted(by_token.items(), key=lambda x: x[1]))
    return SearchOutcome(cur, ranked, position_ranks, max_evaluations - budget)


def confirm(label: str, outcome: SearchOutcome, scorer: Scorer, top: int = 3) -> list[Evaluated]:
    """Scores the best ``top`` candidates against the current symbol on the confirm half, paired per sample,
    and fills their ``delta`` and ``se``; returns them in search order."""
    heads = outcome.ranked[:top]
    if not heads:
        return []
    losses = scorer.losses(label, [outcome.current.word] + [e.word for e in heads], "confirm")  # (1+C, n)
    diff = losses[1:] - losses[:1]  # (C, n): paired, so sample difficulty cancels
    n = diff.shape[1]
    for e, d in zip(heads, diff, strict=True):
        e.delta = float(d.mean())
        e.se = float(d.std(unbiased=True) / math.sqrt(n)) if n > 1 else math.inf
    return heads


def assign_labels(
    confirmed: dict[str, list[Evaluated]],
    current_tokens: dict[str, tuple[int, ...]],
    min_z: float,
    min_delta: float = 0.0,
) -> dict[str, tuple[Evaluated | None, str]]:
    """One-to-one assignment at the token level.

    A label takes its best confirmed word that beats the current symbol by more than z standard errors, where
    z is ``min_z`` for one confirmed word and grows with their number (each is a test: Bonferroni), and by
    more than ``min_delta`` (an improvement too small to matter is not a reason to change), and that
    shares no token with another label's current symbol or with a word already given to another label. Labels
    go in order of their strongest evidence.

    Returns:
        label -> (the chosen word or None, the reason when None).
    """

    from statistics import NormalDist

    level = 1 - NormalDist().cdf(min_z)
    need = {lab: NormalDist().inv_cdf(1 - level / max(1, len(es))) for lab, es in confirmed.items()}

    def qualifies(e: Evaluated, lab: str) -> bool:
        return e.delta is not None and e.se is not None and e.delta < -min_delta and e.delta < -need[lab] * e.se

    order = sorted(confirmed, key=lambda lab: min((e.z for e in confirmed[lab] if qualifies(e, lab)), default=math.inf))
    taken: set[int] = set()
    out: dict[str, tuple[Evaluated | None, str]] = {}
    for lab in order:
        others = {t for other, ids in current_tokens.items() if other != lab for t in ids}
        good = sorted((e for e in confirmed[lab] if qualifies(e, lab)), key=lambda e: e.z)
        pick = next((e for e in good if not (set(e.ids) & (taken | others))), None)
        if pick is not None:
            taken |= set(pick.ids)
            out[lab] = (pick, "")
        elif good:
            out[lab] = (None, "collision: every confirmed candidate shares a token with another label's symbol")
        elif confirmed[lab]:
            best = min(confirmed[lab], key=lambda e: e.z)
            why = f"not significant: Δ={best.delta:+.4f}, se={best.se:.4f} (needs Δ < -{need[lab]:.2f}·se)"
            if best.delta is not None and best.delta < -need[lab] * (best.se or 0.0):
                why = f"too small: Δ={best.delta:+.4f} (needs Δ < -{min_delta:g})"
            out[lab] = (None, why)
        else:
            out[lab] = (None, "no candidate beat the current symbol on the search samples")
    return out


def allowed_for(mask: Tensor, exclude: set[int]) -> Tensor:
    """``mask`` (bool, (V,)) without the ``exclude`` ids."""
    out = mask.clone()
    if exclude:
        ids = torch.tensor(sorted(i for i in exclude if i < out.numel()), dtype=torch.long)
        out[ids] = False
    return out


def count_flips(sequence: list[tuple[int, ...]], window: int) -> int:
    """Largest number of changes at any one token position over the last ``window`` transitions."""
    recent = sequence[-(window + 1) :]
    width = max(len(s) for s in recent)
    return max(
        sum(1 for a, b in zip(recent, recent[1:], strict=False) if (a[p : p + 1] != b[p : p + 1])) for p in range(width)
    )
