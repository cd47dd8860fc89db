import pytest

from salmonn_symbols.model.tokenizer import build_tiny_llama_tokenizer
from salmonn_symbols.symbols import SymbolGenerationError, SymbolTokenizer, english_words, generate_symbols

LABELS = ["alpha", "beta", "gamma", "delta", "anger", "answer_agree", "neutral"]


def test_symbols_are_two_tokens_in_every_context(any_sym):
    symbols = generate_symbols(any_sym, 12, labels=LABELS, seed=3)
    assert len(symbols) == len(set(symbols)) == 12
    for s in symbols:
        assert s.isalpha() and s.islower() and 4 <= len(s) <= 5
        ids = [any_sym.context_ids(s, ctx) for ctx in any_sym.contexts]
        assert all(i == ids[0] for i in ids) and len(ids[0]) == 2, (s, ids)
        # the ids are exactly what the tokenizer produces for the sentence around them
        full = any_sym.tokenizer(f"Output: {s}\n", add_special_tokens=False)["input_ids"]
        assert any(full[j : j + 2] == ids[0] for j in range(len(full) - 1))


def test_symbols_round_trip_and_are_not_words_or_single_tokens(any_sym):
    symbols = generate_symbols(any_sym, 10, labels=LABELS, seed=0)
    english = english_words()
    for s in symbols:
        ids = any_sym.word_ids(s)
        assert any_sym.decode(ids).strip() == s
        assert any_sym.round_trip(ids) == s
        assert s not in english
        assert s not in any_sym.single_token_words


def test_symbols_share_no_token_with_each_other_or_labels(any_sym):
    symbols = generate_symbols(any_sym, 15, labels=LABELS, seed=1)
    label_ids = {i for lab in LABELS for i in any_sym.word_ids(lab)}
    seen: set[int] = set()
    for s in symbols:
        ids = set(any_sym.word_ids(s))
        assert not ids & seen, s
        assert not ids & label_ids, s
        seen |= ids


def test_generation_is_deterministic_under_a_seed(llama_sym):
    a = generate_symbols(llama_sym, 8, labels=LABELS, seed=7)
    b = generate_symbols(SymbolTokenizer(build_tiny_llama_tokenizer(2000)), 8, labels=LABELS, seed=7)
    c = generate_symbols(llama_sym, 8, labels=LABELS, seed=8)
    assert a == b
    assert a != c


def test_reserved_ids_and_excluded_words_are_respected(llama_sym):
    first = generate_symbols(llama_sym, 4, seed=0)
    reserved = {i for s in first for i in llama_sym.word_ids(s)}
    more = generate_symbols(llama_sym, 4, seed=0, exclude_words=first, reserved_ids=reserved)
    assert not set(more) & set(first)
    assert not {i for s in more for i in llama_sym.word_ids(s)} & reserved


def test_impossible_request_says_how_many_were_found():
    # a 300-id vocabulary has almost no merges: few words are exactly two tokens
    small = SymbolTokenizer(build_tiny_llama_tokenizer(300))
    with pytest.raises(SymbolGenerationError, match=r"found only \d+ of 500 valid symbol words after 3000 attempts"):
        generate_symbols(small, 500, seed=0, max_attempts=3000)


def test_rejections_are_counted(llama_sym):
    with pytest.raises(SymbolGenerationError) as info:
        generate_symbols(llama_sym, 10_000, seed=0, max_attempts=2000)
    err = info.value
    assert err.found < 10_000 and err.attempts == 2000
    assert sum(err.rejections.values()) + err.found == 2000
    assert "not_2_tokens" in err.rejections


def test_uniform_style_and_bad_style(llama_sym):
    assert len(generate_symbols(llama_sym, 2, seed=0, style="uniform", max_attempts=100_000)) == 2
    with pytest.raises(ValueError, match="unknown symbol style"):
        generate_symbols(llama_sym, 1, style="fancy")
