"""The verified search on a scorer whose answer is known: a table of per-sample task losses.

The symbol core needs no model: a `Scorer` gives task losses and proposals. Here it reads them from a table
built so that the right word is known, with per-sample noise drawn from a seeded generator.
"""

from __future__ import annotations

import pytest
import torch

from salmonn_symbols.symbols import (
    Codebook,
    DiscoveryConfig,
    SymbolBook,
    SymbolMLP,
    build_candidate_masks,
    english_words,
    run_discovery,
    validate_report,
)
from salmonn_symbols.symbols.report import symbols_report, tokens_report

LABELS = ["alpha", "beta", "gamma", "delta"]


@pytest.fixture(scope="module")
def words(llama_sym):
    """English words that are exactly [word-initial, continuation] tokens of the tiny tokenizer."""
    out = []
    for w in sorted(english_words()):
        ids = llama_sym.word_ids(w)
        if len(ids) == 2 and llama_sym.round_trip(ids) == w and llama_sym.is_word_initial(ids[0]):
            if not llama_sym.is_word_initial(ids[1]):
                out.append(w)
    return out


class TableScorer:
    """Per-sample loss = base(word) + shared per-sample difficulty + independent noise; proposals rank the
    tokens of the best words first (a good proposer) after ``junk`` random tokens."""

    def __init__(self, tok, book, base: dict[str, dict[str, float]], n=16, noise=0.05, seed=0, junk=0):
        self.tok, self.book, self.base, self.n, self.noise = tok, book, base, n, noise
        self.g = torch.Generator().manual_seed(seed)
        self.difficulty = {lab: torch.rand(2, n, generator=self.g) for lab in book.labels}
        self.junk, self.calls = junk, 0

    def _base(self, label: str, word: str) -> float:
        if word == self.book.mapping[label]:
            return self.base[label].get(word, 1.0)
        return self.base[label].get(word, 2.0 + 0.001 * (hash(word) % 100))

    def losses(self, label, words, half):
        self.calls += len(words)
        h = 0 if half == "search" else 1
        out = [self._base(label, w) + self.difficulty[label][h] for w in words]
        return torch.stack(out) + self.noise * torch.randn(len(words), self.n, generator=self.g)

    def proposals(self, label, source, position, ids, allowed, k):
        good = sorted(self.base[label], key=self.base[label].get)
        toks = [self.tok.word_ids(w)[position] for w in good if w != self.book.mapping[label]]
        rnd = torch.randperm(allowed.numel(), generator=self.g)[: self.junk].tolist()
        out = [t for t in rnd + toks if allowed[t]]
        return [(t, 0.0) for t in dict.fromkeys(out)][: (k if k >= 0 else None)]


@pytest.fixture
def setup(llama_sym, llama_vocab):
    book = SymbolBook.create(LABELS, llama_sym, seed=0)
    masks = build_candidate_masks(llama_sym, llama_vocab.shape[0], LABELS)
    return book, masks


def _run(book, sym, vocab, masks, scorer, **cfg):
    cfg = DiscoveryConfig(**{"proposals": ["gradient", "likelihood"], **cfg})
    return run_discovery(book, sym, SymbolMLP(vocab.shape[1]), vocab, masks, cfg, scorer=scorer)


def test_a_clearly_better_word_is_found_and_confirmed(setup, llama_sym, llama_vocab, words):
    book, masks = setup
    scorer = TableScorer(llama_sym, book, {"beta": {words[3]: 0.2}, "alpha": {}, "gamma": {}, "delta": {}})
    tokens, changes = _run(book, llama_sym, llama_vocab, masks, scorer)
    beta = changes[1]
    assert beta.change_type == "CHANGED" and beta.discovered_symbol == words[3]
    assert beta.delta == pytest.approx(-0.8, abs=0.05) and beta.se < 0.05
    assert [c.change_type for c in changes if c.original_label != "beta"] == ["UNCHANGED"] * 3
    beta_rows = [t for t in tokens if t.label == "beta"]
    assert [t.discovered_token_id for t in beta_rows] == llama_sym.word_ids(words[3])
    assert all(t.search_top[0]["token_id"] == t.discovered_token_id for t in beta_rows)
    assert beta_rows[0].proposed_by == ["gradient", "likelihood"]
    validate_report(tokens_report(tokens, 1), "tokens")
    validate_report(symbols_report(changes, 1), "symbols")


def test_noise_alone_never_changes_a_symbol(setup, llama_sym, llama_vocab, words):
    """Forty words as good as the current one: the best of them on the search samples is only lucky, and the
    confirm samples say so."""
    book, masks = setup
    flat = {lab: {w: 1.0 for w in words[10 * i : 10 * i + 10]} for i, lab in enumerate(LABELS)}
    scorer = TableScorer(llama_sym, book, flat, noise=0.3, seed=1)
    _, changes = _run(book, llama_sym, llama_vocab, masks, scorer)
    assert [c.discovered_symbol for c in changes] == book.symbols
    assert all(c.change_type in ("KEPT", "UNCHANGED") for c in changes)
    assert any(c.change_type == "KEPT" and "not significant" in c.reason for c in changes)


def test_a_real_but_negligible_improvement_never_changes_a_symbol(setup, llama_sym, llama_vocab, words):
    """A random model's faint audio-dependent token statistics: a word 0.002 better than the current symbol on
    every sample (so with almost no noise, highly significant) is not worth a change; 0.05 better is."""
    book, masks = setup
    used = {t for w in book.symbols for t in llama_sym.word_ids(w)}
    better = []
    for w in words:  # one word per label that collides with no symbol and no other pick
        ids = set(llama_sym.word_ids(w))
        if len(better) < len(LABELS) and not ids & used:
            better.append(w)
            used |= ids
    for gain, changed in ((0.002, False), (0.05, True)):
        base = {lab: {w: 1.0 - gain} for lab, w in zip(LABELS, better, strict=True)}
        _, changes = _run(book, llama_sym, llama_vocab, masks, TableScorer(llama_sym, book, base, noise=1e-5, seed=2))
        assert [c.discovered_symbol for c in changes] == (better if changed else book.symbols)
        assert changed or all("too small" in c.reason for c in changes)


def test_coordinate_search_combines_the_best_token_of_each_position(setup, llama_sym, llama_vocab, words):
    """The best word is reachable only by changing both tokens; the second round finds it."""
    book, masks = setup
    target = words[5]
    first, second = llama_sym.word_ids(target)
    half_first = next(w for w in words if llama_sym.word_ids(w)[0] == first and w != target)
    base = {"alpha": {target: 0.1, half_first: 0.6}, "beta": {}, "gamma": {}, "delta": {}}
    scorer = TableScorer(llama_sym, book, base)
    _, changes = _run(book, llama_sym, llama_vocab, masks, scorer)
    assert changes[0].discovered_symbol == target


def test_no_two_labels_share_a_token(setup, llama_sym, llama_vocab, words):
    book, masks = setup
    a = words[7]
    clash = next(w for w in words if llama_sym.word_ids(w)[1] == llama_sym.word_ids(a)[1] and w != a)
    base = {"alpha": {a: 0.1}, "beta": {clash: 0.3}, "gamma": {}, "delta": {}}
    scorer = TableScorer(llama_sym, book, base)
    _, changes = _run(book, llama_sym, llama_vocab, masks, scorer)
    assert changes[0].discovered_symbol == a  # the stronger evidence goes first
    assert changes[1].discovered_symbol != clash
    ids = [set(llama_sym.word_ids(c.discovered_symbol)) for c in changes]
    assert all(not (ids[i] & ids[j]) for i in range(4) for j in range(i + 1, 4))


def test_too_few_held_out_samples_keep_the_symbol(setup, llama_sym, llama_vocab, words):
    book, masks = setup
    scorer = TableScorer(llama_sym, book, {"beta": {words[3]: 0.2}, "alpha": {}, "gamma": {}, "delta": {}}, n=1)
    _, changes = _run(book, llama_sym, llama_vocab, masks, scorer)
    assert changes[1].change_type == "KEPT" and changes[1].discovered_symbol == book.mapping["beta"]


def test_the_budget_bounds_the_evaluations(setup, llama_sym, llama_vocab, words):
    book, masks = setup
    base = {lab: {} for lab in LABELS}
    scorer = TableScorer(llama_sym, book, base, junk=200)
    _run(book, llama_sym, llama_vocab, masks, scorer, proposals_per_source=-1, max_evaluations=30, confirm_top=3)
    # per label: the current word, at most 30 candidates, then the confirm pass (current + up to 3)
    assert scorer.calls <= 4 * (1 + 30 + 4)
    wide = TableScorer(llama_sym, book, base, junk=200)
    _run(book, llama_sym, llama_vocab, masks, wide, proposals_per_source=-1, max_evaluations=1000)
    assert wide.calls > scorer.calls


def test_codebook_is_built_from_the_embedding(llama_vocab):
    assert len(Codebook(llama_vocab)) == llama_vocab.shape[0]
