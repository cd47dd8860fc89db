import json

import pytest
import torch
import torch.nn.functional as F

from salmonn_symbols.symbols import (
    Codebook,
    DiscoveryConfig,
    SymbolBook,
    SymbolMLP,
    build_candidate_masks,
    confidence_band,
    discover_symbols,
    english_words,
    final_mapping,
    load_override,
    run_discovery,
    symbol_token_table,
    validate_discovery_dir,
    write_discovery,
)

LABELS = ["alpha", "beta", "gamma", "delta"]


@pytest.fixture(scope="module")
def words(llama_sym):
    """Real English words that are exactly [word-initial, continuation] tokens in the tiny tokenizer."""
    out = []
    for w in sorted(english_words()):
        ids = llama_sym.word_ids(w)
        if (
            len(ids) == 2
            and llama_sym.round_trip(ids) == w
            and llama_sym.is_word_initial(ids[0])
            and not llama_sym.is_word_initial(ids[1])
        ):
            out.append(w)
    assert len(out) > 50
    return out


@pytest.fixture
def setup(llama_sym, llama_vocab):
    book = SymbolBook.create(LABELS, llama_sym, seed=0)
    masks = build_candidate_masks(llama_sym, llama_vocab.shape[0], LABELS)
    return book, masks, Codebook(llama_vocab)


def _unit(v):
    return F.normalize(v.float(), dim=-1)


def _toward(vocab, ids, noise=0.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return _unit(vocab[list(ids)] + noise * torch.randn(len(ids), vocab.shape[1], generator=g) / 16)


def _transformed_for(book, sym, vocab, targets: dict[str, list[int]]):
    """Transformed rows: toward ``targets[label]`` where given, else the symbol's own embeddings."""
    rows = []
    for lab in book.labels:
        own = sym.word_ids(book.mapping[lab])
        rows.append(_toward(vocab, targets.get(lab, own)))
    return torch.cat(rows)


def test_untrained_mlp_changes_nothing(setup, llama_sym, llama_vocab):
    book, masks, _ = setup
    tokens, changes = run_discovery(book, llama_sym, SymbolMLP(llama_vocab.shape[1]), llama_vocab, masks)
    assert [c.change_type for c in changes] == ["UNCHANGED"] * 4
    assert final_mapping(changes) == book.mapping
    assert all(abs(t.similarity - 1) < 1e-5 and t.confidence == "high" for t in tokens)


def test_discovers_the_word_the_embeddings_point_to(setup, llama_sym, llama_vocab, words):
    book, masks, cb = setup
    target = llama_sym.word_ids(words[0])
    x = _transformed_for(book, llama_sym, llama_vocab, {"beta": target})
    tokens, changes = discover_symbols(book, llama_sym, x, cb, masks)
    beta = changes[1]
    assert beta.change_type == "CHANGED" and beta.discovered_symbol == words[0]
    assert beta.token_mapping == {
        str(a): b for a, b in zip(llama_sym.word_ids(book.mapping["beta"]), target, strict=True)
    }
    assert beta.confidence == "high" and beta.similarity > 0.99
    beta_tokens = [t for t in tokens if t.label == "beta"]
    assert [t.discovered_token_id for t in beta_tokens] == target
    assert all(t.top_k[0]["token_id"] == t.discovered_token_id and t.margin > 0.3 for t in beta_tokens)
    assert [c.change_type for c in changes if c.original_label != "beta"] == ["UNCHANGED"] * 3


def test_threshold_keeps_previous_tokens(setup, llama_sym, llama_vocab, words):
    book, masks, cb = setup
    g = torch.Generator().manual_seed(5)
    x = _transformed_for(book, llama_sym, llama_vocab, {})
    n = len(llama_sym.word_ids(book.mapping["alpha"]))
    x[:n] = _unit(torch.randn(n, llama_vocab.shape[1], generator=g))  # points nowhere: max cos well below 0.3
    tokens, changes = discover_symbols(book, llama_sym, x, cb, masks)
    assert changes[0].change_type == "KEPT" and changes[0].reason == "below_threshold"
    assert changes[0].discovered_symbol == book.mapping["alpha"]
    assert all(t.discovered_token_id == t.original_token_id and t.confidence == "none" for t in tokens[:n])
    # a stricter threshold keeps even a good match
    x = _transformed_for(book, llama_sym, llama_vocab, {"alpha": llama_sym.word_ids(words[1])})
    x[:n] = _unit(x[:n] + 0.6 * _unit(torch.randn(n, llama_vocab.shape[1], generator=g)))
    _, changes = discover_symbols(book, llama_sym, x, cb, masks, DiscoveryConfig(threshold=0.95))
    assert changes[0].change_type == "KEPT"


def test_partial_token_update(setup, llama_sym, llama_vocab, words):
    """One token above the threshold, one below: only the confident one moves, if the word survives."""
    book, masks, cb = setup
    for w in words:
        new_first = llama_sym.word_ids(w)[0]
        old = llama_sym.word_ids(book.mapping["gamma"])
        mixed = [new_first, old[1]]
        if llama_sym.round_trip(mixed):
            break
    else:
        pytest.skip("no mixed word round-trips in this vocabulary")
    x = _transformed_for(book, llama_sym, llama_vocab, {})
    rows = [i for i, (lab, _, _) in enumerate(symbol_token_table(book, llama_sym)) if lab == "gamma"]
    x[rows[0]] = _toward(llama_vocab, [new_first])[0]
    g = torch.Generator().manual_seed(9)
    x[rows[1]] = _unit(torch.randn(llama_vocab.shape[1], generator=g))
    _, changes = discover_symbols(book, llama_sym, x, cb, masks)
    assert changes[2].change_type == "CHANGED"
    assert llama_sym.word_ids(changes[2].discovered_symbol) == mixed


def test_one_to_one_collision_goes_to_next_best(setup, llama_sym, llama_vocab, words):
    book, masks, cb = setup
    w1, w2 = words[2], words[3]
    a, b = llama_sym.word_ids(w1), llama_sym.word_ids(w2)
    x = _transformed_for(book, llama_sym, llama_vocab, {"alpha": a, "gamma": a})
    rows = {lab: [i for i, (l2, _, _) in enumerate(symbol_token_table(book, llama_sym)) if l2 == lab] for lab in LABELS}
    # gamma points mostly at w1 but also at w2: after the collision, w2 is its best valid choice
    x[rows["gamma"]] = _unit(
        0.8 * llama_vocab[a] / llama_vocab[a].norm(dim=-1, keepdim=True)
        + 0.6 * llama_vocab[b] / llama_vocab[b].norm(dim=-1, keepdim=True)
    )
    _, changes = discover_symbols(book, llama_sym, x, cb, masks)
    got = final_mapping(changes)
    assert got["alpha"] == w1  # the more confident label keeps the contested word
    assert got["gamma"] != w1
    assert len(set(got.values())) == 4
    assert changes[2].candidates[0].symbol == w1  # it was gamma's first choice


def test_round_trip_failures_are_rejected(setup, llama_sym, llama_vocab):
    book, masks, cb = setup
    tok = llama_sym.tokenizer
    # a pair of pieces that re-encodes differently: "▁th" + "e" decodes to "the", which is one token
    ids = [tok.convert_tokens_to_ids("▁th"), tok.convert_tokens_to_ids("e")]
    assert llama_sym.round_trip(ids) is None
    x = _transformed_for(book, llama_sym, llama_vocab, {"delta": ids})
    _, changes = discover_symbols(book, llama_sym, x, cb, masks)
    for c in changes:
        assert llama_sym.round_trip(llama_sym.word_ids(c.discovered_symbol)) == c.discovered_symbol
    assert changes[3].discovered_symbol != "the"


def test_label_words_are_never_discovered(llama_sym, llama_vocab):
    labels = ["there", "about"]  # single-token words in the tiny vocabulary
    book = SymbolBook.create(labels, llama_sym, seed=2)
    masks = build_candidate_masks(llama_sym, llama_vocab.shape[0], labels)
    target = llama_sym.word_ids("there")
    x = torch.cat(
        [_toward(llama_vocab, target + target[:1])[:2], _toward(llama_vocab, llama_sym.word_ids(book.mapping["about"]))]
    )
    tokens, changes = discover_symbols(book, llama_sym, x, Codebook(llama_vocab), masks)
    assert all(t.discovered_token_id not in target for t in tokens)
    assert all(c.discovered_symbol not in labels for c in changes)


def test_stability_rejects_flip_flopping_tokens(setup, llama_sym, llama_vocab, words):
    book, masks, cb = setup
    for cycle, w in enumerate(words[10:13], start=1):
        book.update({"alpha": w}, cycle=cycle, source="discovered")
    x = _transformed_for(book, llama_sym, llama_vocab, {"alpha": llama_sym.word_ids(words[20])})
    _, changes = discover_symbols(book, llama_sym, x, cb, masks, DiscoveryConfig(stability_window=3, max_flips=2))
    assert changes[0].change_type == "KEPT" and "unstable" in changes[0].reason
    _, changes = discover_symbols(book, llama_sym, x, cb, masks, DiscoveryConfig(stability_window=3, max_flips=3))
    assert changes[0].discovered_symbol == words[20]


def test_manual_override(setup, llama_sym, llama_vocab, tmp_path, words):
    book, masks, cb = setup
    path = tmp_path / "override.json"
    path.write_text(json.dumps({"final_mappings": {"delta": words[7]}}))
    override = load_override(path, book, llama_sym)
    x = _transformed_for(book, llama_sym, llama_vocab, {"alpha": llama_sym.word_ids(words[7])})
    _, changes = discover_symbols(book, llama_sym, x, cb, masks, override=override)
    assert changes[3].change_type == "OVERRIDDEN" and changes[3].discovered_symbol == words[7]
    assert changes[0].discovered_symbol != words[7]  # the overridden word is reserved
    path.write_text(json.dumps({"joy": "kesh"}))
    with pytest.raises(ValueError, match=r"override.json: unknown label 'joy'"):
        load_override(path, book, llama_sym)
    path.write_text(json.dumps({"alpha": "two words"}))
    with pytest.raises(ValueError, match="round trip"):
        load_override(path, book, llama_sym)
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"override.json: line 1"):
        load_override(path, book, llama_sym)


def test_confidence_bands():
    cfg = DiscoveryConfig()
    assert [confidence_band(s, cfg) for s in (0.1, 0.3, 0.49, 0.5, 0.8, 0.81)] == [
        "none",
        "low",
        "low",
        "medium",
        "medium",
        "high",
    ]


def test_written_files_are_schema_valid_and_atomic(setup, llama_sym, llama_vocab, words, tmp_path):
    book, masks, cb = setup
    x = _transformed_for(book, llama_sym, llama_vocab, {"beta": llama_sym.word_ids(words[0])})
    tokens, changes = discover_symbols(book, llama_sym, x, cb, masks)
    tok_path, sym_path = write_discovery(tmp_path / "discovery", 1, tokens, changes)
    assert sorted(p.name for p in (tmp_path / "discovery").iterdir()) == ["cycle_1_symbols.json", "cycle_1_tokens.json"]
    assert validate_discovery_dir(tmp_path / "discovery") == [sym_path, tok_path]
    tok, sym = json.loads(tok_path.read_text()), json.loads(sym_path.read_text())
    assert tok["total_tokens"] == 8 and tok["changed_tokens"] == 2
    assert sym["total_symbols"] == 4 and sym["changed_symbols"] == 1
    assert sym["final_mappings"]["beta"] == words[0]
    seed_fields = {"original_token_id", "original_text", "discovered_token_id", "discovered_text", "similarity"}
    assert seed_fields <= set(tok["discoveries"][0])
    assert {"original_label", "current_symbol", "discovered_symbol", "change_type", "token_mapping"} <= set(
        sym["symbol_changes"][0]
    )
    # a file with a wrong field fails validation, naming the file and the field
    bad = dict(sym)
    bad["symbol_changes"] = [dict(sym["symbol_changes"][0], change_type="MAYBE")]
    sym_path.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"cycle_1_symbols.json: symbol_changes/0/change_type"):
        validate_discovery_dir(tmp_path / "discovery")


def test_discovery_is_fp32_with_bf16_vocab(setup, llama_sym, llama_vocab, words):
    book, masks, _ = setup
    x = _transformed_for(book, llama_sym, llama_vocab, {"beta": llama_sym.word_ids(words[0])})
    _, ref = discover_symbols(book, llama_sym, x, Codebook(llama_vocab.bfloat16().float()), masks)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, got = discover_symbols(book, llama_sym, x.bfloat16(), Codebook(llama_vocab.bfloat16()), masks)
    assert final_mapping(got) == final_mapping(ref)
    assert all(abs(a.similarity - b.similarity) < 1e-2 for a, b in zip(got, ref, strict=True))
