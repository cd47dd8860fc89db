"""Discovery: turn the trained symbol MLP (and, given a scorer, the task loss) into the next cycle's symbols.

    symbol tokens ─► MLP ─► cos(·, V) over candidates ─► top-k per token (threshold 0.3, else keep the token)
    with a `Scorer` (the default in training): verified search (`search.py`)
        MLP neighbours + loss-gradient + likelihood proposals ─► coordinate search on held-out samples
        ─► confirmed on other samples: a symbol changes only if Δloss < −min_z · se ─► token-level one-to-one
    without one: the seed's hard argmax
        per label: candidate words from the top-k beams, best mean similarity first
        ─► one-to-one assignment across labels (collision → next-best candidate; none left → keep symbol)
    both: decode → encode round trip, never a label word, stability (a position may not flip too often),
        manual override ─► cycle_N_tokens.json + cycle_N_symbols.json

All of it runs on plain tensors and a tokenizer; nothing here needs SALMONN or a Trainer.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor

from ..io import read_json
from .book import SymbolBook
from .quantize import CandidateMasks, Codebook, vocab_cosine
from .records import Candidate, DiscoveryConfig, SymbolChange, TokenDiscovery, confidence_band
from .search import Scorer, count_flips
from .tokenization import SymbolTokenizer
from .verified import verified_changes

__all__ = [
    "Candidate",
    "DiscoveryConfig",
    "SymbolChange",
    "TokenDiscovery",
    "confidence_band",
    "discover_symbols",
    "final_mapping",
    "load_override",
    "run_discovery",
    "symbol_token_table",
    "transform_symbol_tokens",
]


def symbol_token_table(book: SymbolBook, tokenizer: SymbolTokenizer) -> list[tuple[str, int, int]]:
    """(label, position in word, token id) for every token of every current symbol, in label order."""
    return [(lab, pos, tid) for lab, ids in book.token_ids(tokenizer).items() for pos, tid in enumerate(ids)]


def transform_symbol_tokens(mlp: torch.nn.Module, embedding_weight: Tensor, token_ids: Sequence[int]) -> Tensor:
    """Runs the symbol MLP in eval mode (no dropout) on the embeddings of ``token_ids``; returns (N, D) fp32."""
    was_training = mlp.training
    mlp.eval()
    try:
        with torch.no_grad():
            ids = torch.as_tensor(list(token_ids), dtype=torch.long, device=embedding_weight.device)
            return mlp(embedding_weight[ids]).float()
    finally:
        mlp.train(was_training)


def load_override(path: str | Path, book: SymbolBook, tokenizer: SymbolTokenizer) -> dict[str, str]:
    """Reads a manual override file: ``{"label": "symbol"}`` or any JSON with a ``final_mappings`` object.

    Raises:
        ValueError: naming the file and the offending label or symbol.
    """
    data = read_json(path)
    if isinstance(data, dict) and isinstance(data.get("final_mappings"), dict):
        data = data["final_mappings"]
    if not isinstance(data, dict):
        raise ValueError(f"{path}: override must be a JSON object of label -> symbol")
    out: dict[str, str] = {}
    for lab, sym in data.items():
        if lab not in book.mapping:
            raise ValueError(f"{path}: unknown label {lab!r}; known labels: {book.labels}")
        if not isinstance(sym, str) or tokenizer.round_trip(tokenizer.word_ids(sym)) != sym:
            raise ValueError(f"{path}: label {lab!r}: symbol {sym!r} does not survive a decode/encode round trip")
        out[lab] = sym
    dupes = sorted({s for s in out.values() if list(out.values()).count(s) > 1})
    if dupes:
        raise ValueError(f"{path}: several labels are overridden to the same symbol(s) {dupes}")
    return out


def discover_symbols(
    book: SymbolBook,
    tokenizer: SymbolTokenizer,
    transformed: Tensor,
    codebook: Codebook,
    masks: CandidateMasks,
    cfg: DiscoveryConfig | None = None,
    *,
    override: Mapping[str, str] | None = None,
    scorer: Scorer | None = None,
) -> tuple[list[TokenDiscovery], list[SymbolChange]]:
    """Maps every symbol token to a vocabulary token and every label to its next symbol.

    Args:
        book: Current labels and symbols (with history, for the stability check). Not modified.
        tokenizer: The model's tokenizer, wrapped.
        transformed: MLP-transformed embeddings of the symbol tokens, shape (N, D), in the order of
            `symbol_token_table`.
        codebook: The vocabulary embeddings.
        masks: Candidate masks for word-initial and continuation positions.
        cfg: Thresholds and sizes.
        override: label -> symbol replacing discovery for those labels (see `load_override`).
        scorer: Task losses and proposals on held-out data; with one, the verified search decides (see
            `search.py`), without one the MLP's hard argmax does.

    Returns:
        Token-level and symbol-level outcomes. ``{c.original_label: c.discovered_symbol}`` is the new mapping.
    """
    cfg = cfg or DiscoveryConfig()
    table = symbol_token_table(book, tokenizer)
    if transformed.shape[0] != len(table):
        raise ValueError(f"transformed has {transformed.shape[0]} rows but the symbols have {len(table)} tokens")
    first = torch.tensor([pos == 0 for _, pos, _ in table])
    cos_all = vocab_cosine(transformed.detach(), codebook)  # (N, V), unmasked
    cand_mask = masks.for_positions(first).to(cos_all.device)
    top_sims, top_ids = cos_all.masked_fill(~cand_mask, float("-inf")).topk(cfg.top_k, dim=-1)  # (N, k)
    cos_all, top_sims, top_ids = cos_all.cpu(), top_sims.cpu().tolist(), top_ids.cpu().tolist()

    if scorer is not None:
        masks = masks.to("cpu")
        changes, extras = verified_changes(
            book, tokenizer, table, top_sims, top_ids, cos_all, masks, cfg, scorer, dict(override or {})
        )
        return _token_discoveries(table, changes, top_sims, top_ids, cos_all, tokenizer, cfg, extras), changes
    rows: dict[str, list[int]] = {}
    for row, (lab, _, _) in enumerate(table):
        rows.setdefault(lab, []).append(row)
    candidates: dict[str, list[Candidate]] = {}
    reasons: dict[str, str] = {}
    for lab in book.labels:
        candidates[lab], reasons[lab] = _label_candidates(
            lab, rows[lab], table, top_sims, top_ids, cos_all, book, tokenizer, cfg
        )
    chosen = _assign(book, candidates, dict(override or {}))
    changes = [
        _symbol_change(lab, chosen[lab], candidates[lab], reasons[lab], book, override or {}) for lab in book.labels
    ]
    tokens = _token_discoveries(table, changes, top_sims, top_ids, cos_all, tokenizer, cfg)
    return tokens, changes


def _label_candidates(lab, rows, table, top_sims, top_ids, cos_all, book, tokenizer, cfg):
    current_ids = tuple(table[r][2] for r in rows)
    options: list[list[tuple[int, float]]] = []
    below = 0
    for r in rows:
        opts = [(i, s) for i, s in zip(top_ids[r], top_sims[r], strict=True) if s >= cfg.threshold]
        if not opts:  # fallback: this token keeps its previous value
            below += 1
            opts = [(table[r][2], float(cos_all[r, table[r][2]]))]
        options.append(opts)
    history = [tuple(tokenizer.word_ids(s)) for s in book.symbol_history(lab)]
    label_words = {w.casefold() for w in book.labels}
    out: list[Candidate] = []
    rejected: dict[str, int] = {}
    for score, ids in _beam(options, cfg.max_candidates * 4):
        if ids == current_ids:
            out.append(Candidate(book.mapping[lab], ids, score))
        else:
            word = tokenizer.round_trip(ids)
            why = (
                "round_trip"
                if word is None
                else "label_word"
                if word.casefold() in label_words
                else "unstable"
                if count_flips(history + [ids], cfg.stability_window) > cfg.max_flips
                else ""
            )
            if why:
                rejected[why] = rejected.get(why, 0) + 1
                continue
            out.append(Candidate(word, ids, score))
        if len(out) >= cfg.max_candidates:
            break
    if below == len(rows):
        reason = "below_threshold"
    elif not out:
        reason = "no_valid_candidate(" + ",".join(f"{k}={v}" for k, v in sorted(rejected.items())) + ")"
    else:
        reason = ""
    return out, reason


def _beam(options: list[list[tuple[int, float]]], width: int) -> list[tuple[float, tuple[int, ...]]]:
    """Token sequences from per-position options, best mean similarity first (a beam over positions)."""
    beams: list[tuple[float, tuple[int, ...]]] = [(0.0, ())]
    for opts in options:
        beams = heapq.nlargest(
            width, ((s + sim, ids + (i,)) for s, ids in beams for i, sim in opts), key=lambda b: b[0]
        )
    n = max(1, len(options))
    return [(s / n, ids) for s, ids in beams]


def _assign(book: SymbolBook, candidates: dict[str, list[Candidate]], override: dict[str, str]) -> dict:
    """Greedy one-to-one assignment, most confident label first; returns label -> Candidate | str | None."""
    chosen: dict[str, Candidate | str | None] = dict(override)
    # Every current and overridden symbol stays reserved for its own label, so a fallback never collides.
    reserved = {s: lab for lab, s in book.mapping.items()} | {s: lab for lab, s in override.items()}
    taken = set(override.values())
    order = sorted(
        (lab for lab in book.labels if lab not in override),
        key=lambda lab: -(candidates[lab][0].score if candidates[lab] else float("-inf")),
    )
    for lab in order:
        pick = next((c for c in candidates[lab] if c.symbol not in taken and reserved.get(c.symbol, lab) == lab), None)
        chosen[lab] = pick
        taken.add(pick.symbol if pick else book.mapping[lab])
    return chosen


def _symbol_change(lab, pick, cands, reason, book, override) -> SymbolChange:
    current = book.mapping[lab]
    margin = None
    if lab in override:
        sym, kind, why = override[lab], "OVERRIDDEN", "manual override"
    elif pick is None:
        sym, kind = current, "KEPT"
        why = reason or "collision: every valid candidate was taken by another label"
    else:
        sym, why = pick.symbol, ""
        kind = "UNCHANGED" if sym == current else "CHANGED"
        if reason == "below_threshold":  # every token fell back to its previous value
            kind, why = "KEPT", reason
        others = [c.score for c in cands if c is not pick]
        margin = float(pick.score - max(others)) if others else None
    # similarity and confidence are filled from the final tokens in _token_discoveries
    return SymbolChange(lab, current, sym, kind, {}, 0.0, margin, "none", why, cands)


def _token_discoveries(table, changes, top_sims, top_ids, cos_all, tokenizer, cfg, extras=None) -> list[TokenDiscovery]:
    by_label = {c.original_label: c for c in changes}
    new_ids = {c.original_label: tokenizer.word_ids(c.discovered_symbol) for c in changes}
    out = []
    for row, (lab, pos, tid) in enumerate(table):
        ids = new_ids[lab]
        new = ids[pos] if pos < len(ids) else tid
        by_label[lab].token_mapping[str(tid)] = int(new)
        sims = [s for s in top_sims[row] if s != float("-inf")]
        sim = float(cos_all[row, new])
        out.append(
            TokenDiscovery(
                label=lab,
                position=pos,
                original_token_id=int(tid),
                original_text=tokenizer.texts[tid].strip(),
                discovered_token_id=int(new),
                discovered_text=tokenizer.texts[new].strip(),
                similarity=sim,
                margin=(sims[0] - sims[1]) if len(sims) > 1 else None,
                confidence=confidence_band(sim, cfg),
                top_k=[
                    {"token_id": int(i), "text": tokenizer.texts[i].strip(), "similarity": float(s)}
                    for i, s in zip(top_ids[row], top_sims[row], strict=True)
                    if s != float("-inf")
                ],
                search_top=(extras or {}).get(row, ([], []))[0],
                proposed_by=(extras or {}).get(row, ([], []))[1],
            )
        )
    for change in changes:
        sims = [t.similarity for t in out if t.label == change.original_label]
        change.similarity = sum(sims) / len(sims)
        change.confidence = confidence_band(change.similarity, cfg)
    return out


def run_discovery(
    book: SymbolBook,
    tokenizer: SymbolTokenizer,
    mlp: torch.nn.Module,
    embedding_weight: Tensor,
    masks: CandidateMasks,
    cfg: DiscoveryConfig | None = None,
    *,
    override: Mapping[str, str] | None = None,
    scorer: Scorer | None = None,
) -> tuple[list[TokenDiscovery], list[SymbolChange]]:
    """Transforms the current symbol tokens with ``mlp`` (eval mode, fp32) and runs `discover_symbols`.

    Args:
        book: Current labels and symbols.
        tokenizer: The model's tokenizer, wrapped.
        mlp: The trained symbol MLP.
        embedding_weight: The LLM's input embedding matrix, shape (V, D).
        masks: Candidate masks.
        cfg: Thresholds and sizes.
        override: Manual label -> symbol overrides.
        scorer: Task losses and proposals for the verified search (see `discover_symbols`).
    """
    table = symbol_token_table(book, tokenizer)
    transformed = transform_symbol_tokens(mlp, embedding_weight, [tid for _, _, tid in table])  # (N, D)
    return discover_symbols(
        book, tokenizer, transformed, Codebook(embedding_weight), masks, cfg, override=override, scorer=scorer
    )


def final_mapping(changes: Sequence[SymbolChange]) -> dict[str, str]:
    """label -> symbol after discovery."""
    return {c.original_label: c.discovered_symbol for c in changes}
