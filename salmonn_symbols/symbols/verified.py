"""Discovery with a scorer: the verified search of `search.py` applied to every label of a book.

per label (overridden labels skip the search)
    per position: allowed = candidate mask − tokens of every other label's symbol
        proposals = MLP cosine top-k (≥ threshold) ∪ scorer's gradient top-k ∪ scorer's likelihood top-k
    search_label ─► confirm ─┐
assign_labels (token-level one-to-one, strongest evidence first) ─► SymbolChange per label
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

from .book import SymbolBook
from .quantize import CandidateMasks
from .records import Candidate, DiscoveryConfig, SymbolChange
from .search import Evaluated, Scorer, SearchOutcome, allowed_for, assign_labels, confirm, count_flips, search_label
from .tokenization import SymbolTokenizer

__all__ = ["verified_changes"]

Extras = dict[int, tuple[list[dict[str, Any]], list[str]]]  # row -> (search_top, proposed_by)


def _proposer(lab, rows, reserved, masks, top_sims, top_ids, cfg, scorer):
    """ids -> per position of ``lab``'s symbol: token -> sources, and token -> best rank. The MLP's neighbours
    belong to the current symbol's rows; the scorer's sources are asked for each ids anew."""
    others = {t for other, ids in reserved.items() if other != lab for t in ids}
    allowed = [allowed_for(masks.initial if p == 0 else masks.continuation, others) for p in range(len(rows))]
    k = cfg.proposals_per_source
    mlp = []
    for p, r in enumerate(rows):
        near = [t for t, s in zip(top_ids[r], top_sims[r], strict=True) if s >= cfg.threshold and allowed[p][t]]
        mlp.append(near[: len(near) if k < 0 else k] if "mlp" in cfg.proposals else [])
    cache: dict[tuple[int, ...], tuple[list, list]] = {}

    def propose(ids: tuple[int, ...]):
        if ids not in cache:
            proposals, ranks = [], []
            for p in range(len(rows)):
                ranked = [("mlp", mlp[p])]
                for source in ("gradient", "likelihood"):
                    if source in cfg.proposals:
                        ranked.append((source, [t for t, _ in scorer.proposals(lab, source, p, ids, allowed[p], k)]))
                prop: dict[int, set[str]] = {}
                rank: dict[int, int] = {}
                for source, toks in ranked:
                    for i, tid in enumerate(toks):
                        prop.setdefault(int(tid), set()).add(source)
                        rank[int(tid)] = min(rank.get(int(tid), i), i)
                proposals.append(prop)
                ranks.append(rank)
            cache[ids] = (proposals, ranks)
        return cache[ids]

    propose.cache = cache
    return propose


def _validator(lab: str, book: SymbolBook, tokenizer: SymbolTokenizer, cfg: DiscoveryConfig):
    history = [tuple(tokenizer.word_ids(s)) for s in book.symbol_history(lab)]
    label_words = {w.casefold() for w in book.labels}

    def validate(ids: tuple[int, ...]) -> str | None:
        word = tokenizer.round_trip(ids)
        if word is None or word.casefold() in label_words:
            return None
        if count_flips(history + [ids], cfg.stability_window) > cfg.max_flips:
            return None
        return word

    return validate


def _mean_cos(cos_all: Tensor, rows: list[int], ids: tuple[int, ...]) -> float:
    return float(sum(cos_all[r, t] for r, t in zip(rows, ids, strict=False)) / max(1, len(rows)))


def _change(lab, book, cos_all, rows, outcome: SearchOutcome, confirmed: list[Evaluated], pick, why, cfg):
    cands = [Candidate(e.word, e.ids, _mean_cos(cos_all, rows, e.ids), e.search_loss) for e in outcome.ranked]
    current = book.mapping[lab]
    cur_loss = outcome.current.search_loss
    if pick is not None:
        others = [e.search_loss for e in outcome.ranked if e is not pick] + [cur_loss]
        margin = min(others) - pick.search_loss
        return SymbolChange(
            lab, current, pick.word, "CHANGED", {}, 0.0, margin, "none", "", cands, pick.delta, pick.se, cur_loss
        )
    best = min(confirmed, key=lambda e: e.z, default=None)
    kind = "KEPT" if outcome.ranked else "UNCHANGED"
    delta, se = (best.delta, best.se) if best is not None else (None, None)
    return SymbolChange(lab, current, current, kind, {}, 0.0, None, "none", why, cands, delta, se, cur_loss)


def verified_changes(
    book: SymbolBook,
    tokenizer: SymbolTokenizer,
    table: list[tuple[str, int, int]],
    top_sims: list[list[float]],
    top_ids: list[list[int]],
    cos_all: Tensor,
    masks: CandidateMasks,
    cfg: DiscoveryConfig,
    scorer: Scorer,
    override: Mapping[str, str],
) -> tuple[list[SymbolChange], Extras]:
    """Decides every label's next symbol by the verified search.

    Args:
        book: Current labels and symbols (with history). Not modified.
        tokenizer: The model's tokenizer, wrapped.
        table: `symbol_token_table` rows (label, position, token id).
        top_sims, top_ids: The MLP's cosine top-k per row.
        cos_all: Cosine of every row to every vocabulary entry, (N, V).
        masks: Candidate masks.
        cfg: Discovery settings.
        scorer: Task losses and proposals on held-out data.
        override: label -> forced symbol.

    Returns:
        The symbol changes in label order, and per table row the search ranking at its position and the sources
        that proposed the token it received.
    """
    rows: dict[str, list[int]] = {}
    for row, (lab, _, _) in enumerate(table):
        rows.setdefault(lab, []).append(row)
    current = {lab: tuple(table[r][2] for r in rows[lab]) for lab in book.labels}
    reserved = {
        lab: tuple(tokenizer.word_ids(override[lab])) if lab in override else current[lab] for lab in book.labels
    }
    outcomes: dict[str, SearchOutcome] = {}
    confirmed: dict[str, list[Evaluated]] = {}
    proposers = {}
    for lab in book.labels:
        if lab in override:
            continue
        propose = proposers[lab] = _proposer(lab, rows[lab], reserved, masks, top_sims, top_ids, cfg, scorer)
        validate = _validator(lab, book, tokenizer, cfg)
        outcomes[lab] = search_label(
            lab, current[lab], book.mapping[lab], propose, validate, scorer, cfg.search_rounds, cfg.max_evaluations
        )
        confirmed[lab] = confirm(lab, outcomes[lab], scorer, cfg.confirm_top)
    decisions = assign_labels(confirmed, reserved, cfg.min_z, cfg.min_delta)
    changes, extras = [], {}
    for lab in book.labels:
        if lab in override:
            changes.append(
                SymbolChange(
                    lab, book.mapping[lab], override[lab], "OVERRIDDEN", {}, 0.0, None, "none", "manual override"
                )
            )
            continue
        pick, why = decisions[lab]
        changes.append(_change(lab, book, cos_all, rows[lab], outcomes[lab], confirmed[lab], pick, why, cfg))
        new_ids = pick.ids if pick is not None else current[lab]
        for p, r in enumerate(rows[lab]):
            top = [
                {"token_id": int(t), "text": tokenizer.texts[t].strip(), "loss": float(loss)}
                for t, loss in outcomes[lab].position_ranks[p][:5]
            ]
            sources = set().union(*(props[p].get(new_ids[p], set()) for props, _ in proposers[lab].cache.values()))
            by = sorted(sources) if new_ids[p] != current[lab][p] else []
            extras[r] = (top, by)
    return changes, extras
