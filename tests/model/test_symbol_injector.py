"""Prompt assembly and symbol injection (no speech encoders needed)."""

import pytest
import torch

from salmonn_symbols.data.prompt import PromptBuilder
from salmonn_symbols.model.qformer import WindowQFormer, num_windows, qformer_config
from salmonn_symbols.model.symbol_injector import SymbolInjector
from salmonn_symbols.symbols import Codebook, SymbolBook, build_candidate_masks, hard_quantize, soft_quantize


@pytest.fixture(scope="module")
def book(llama_sym):
    return SymbolBook.create(["positive", "negative", "neutral"], llama_sym, seed=0)


def test_prompt_ids_follow_the_official_template(llama_tok):
    pb = PromptBuilder(llama_tok)
    batch = pb(["Describe the speech.", "What is the emotion?"], ["hello there", "anger"])
    ids = lambda s: llama_tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    assert batch.prefix_ids[0].tolist() == [llama_tok.bos_token_id, *ids("USER: <Speech>")]
    assert torch.equal(batch.prefix_ids[0], batch.prefix_ids[1])
    after = ids("</Speech> What is the emotion?\nASSISTANT:")
    n = len(after)
    row = batch.text_ids[1]
    assert row[:n].tolist() == after
    assert row[n : n + len(ids("anger")) + 1].tolist() == ids("anger") + [llama_tok.eos_token_id]
    assert batch.prompt_lengths.tolist() == [len(ids("</Speech> Describe the speech.\nASSISTANT:")), n]


def test_labels_mask_everything_but_target_and_eos(llama_tok):
    pb = PromptBuilder(llama_tok)
    b = pb(["a", "a much longer instruction than the first one"], ["yes", "no"])
    for i in range(2):
        n, length = b.prompt_lengths[i].item(), b.text_mask[i].sum().item()
        assert (b.labels[i, :n] == -100).all() and (b.labels[i, length:] == -100).all()
        assert torch.equal(b.labels[i, n:length], b.text_ids[i, n:length])
        assert b.labels[i, length - 1].item() == llama_tok.eos_token_id
    # right padding only: the mask is 1...1 0...0
    for row in b.text_mask:
        assert row.tolist() == sorted(row.tolist(), reverse=True)
    assert (pb(["x", "yy"]).labels == -100).all()


def test_prompt_ids_with_symbols(llama_tok, llama_sym, book):
    pb = PromptBuilder(llama_tok)
    plain = pb(["Is it positive or negative?"], ["positive"])
    sym = pb([book.substitute("Is it positive or negative?")], [book.encode_target("positive")])
    s_pos = llama_sym.word_ids(book.mapping["positive"])
    s_neg = llama_sym.word_ids(book.mapping["negative"])
    row = sym.text_ids[0].tolist()
    spans = [row[i : i + 2] for i in range(len(row) - 1)]
    assert spans.count(s_pos) == 2 and spans.count(s_neg) == 1  # "positive" in the instruction and the target
    n = sym.prompt_lengths[0].item()
    assert row[n : n + 2] == s_pos and row[n + 2] == llama_tok.eos_token_id
    assert plain.text_ids.shape != sym.text_ids.shape or not torch.equal(plain.text_ids, sym.text_ids)


def test_gpt2_targets_get_the_in_context_ids(gpt2_tok, gpt2_sym):
    pb = PromptBuilder(gpt2_tok)
    b = pb(["q"], ["kesh"])
    n = b.prompt_lengths[0].item()
    assert b.text_ids[0, n : n + 2].tolist() == gpt2_sym.word_ids("kesh")


def test_bad_template():
    with pytest.raises(ValueError, match="SpeechHere"):
        PromptBuilder(None, template="USER: {prompt}")


def _injector(sym, book, vocab, scope_labels):
    inj = SymbolInjector(vocab.shape[1], hidden_dim=8)
    inj.set_symbols([sym.word_ids(s) for s in book.symbols])
    inj.set_candidate_masks(build_candidate_masks(sym, vocab.shape[0], scope_labels))
    return inj


def test_locate_finds_whole_spans_only(llama_sym, book, llama_vocab):
    inj = _injector(llama_sym, book, llama_vocab, book.labels)
    a, b = llama_sym.word_ids(book.mapping["positive"]), llama_sym.word_ids(book.mapping["neutral"])
    other = [5, 6, 7]
    ids = torch.tensor([other + a + other + b + [8, 8, 8], a[:1] + other + a[1:] + other + a[:1] + a[:1] + other])
    rows = inj.locate(ids)
    sym_pos = (rows >= 0).nonzero().tolist()
    assert sym_pos == [[0, 3], [0, 4], [0, 8], [0, 9]]  # lone first or second tokens are not symbols
    # rows at the same (token, position) are the same row
    assert inj.token_ids[rows[0, 3]] == a[0] and inj.token_ids[rows[0, 4]] == a[1]
    assert inj.first_in_word[rows[0, 3]] and not inj.first_in_word[rows[0, 4]]


def test_injection_matches_per_position_reference(llama_sym, book, llama_vocab):
    torch.manual_seed(0)
    inj = _injector(llama_sym, book, llama_vocab, book.labels).eval()
    inj.mlp.net[-1].weight.data.normal_(std=0.5)
    emb = torch.nn.Embedding.from_pretrained(llama_vocab)
    a = llama_sym.word_ids(book.mapping["negative"])
    ids = torch.tensor([[9, *a, 11, 12, *a], [*a, 13, 14, 15, 16, 17]])
    base = emb(ids)
    masks = build_candidate_masks(llama_sym, llama_vocab.shape[0], book.labels)
    for mode in ("soft", "hard"):
        out = inj(ids, base, emb.weight, mode, temperature=0.05)
        for bi, pi in [(0, 1), (0, 2), (0, 5), (0, 6), (1, 0), (1, 1)]:
            tid = ids[bi, pi].item()
            mask = masks.initial if tid == a[0] else masks.continuation
            x = inj.mlp(llama_vocab[tid][None])
            ref = (
                soft_quantize(x, Codebook(llama_vocab), 0.05, mask)
                if mode == "soft"
                else hard_quantize(x, Codebook(llama_vocab), mask)[2]
            )
            torch.testing.assert_close(out[bi, pi], ref[0])
        untouched = torch.ones_like(ids, dtype=torch.bool)
        untouched[0, [1, 2, 5, 6]] = False
        untouched[1, [0, 1]] = False
        assert torch.equal(out[untouched], base[untouched])
    assert torch.equal(inj(ids, base, emb.weight, "raw"), base)
    where = torch.zeros_like(ids, dtype=torch.bool)
    where[0, 5:] = True  # only the second occurrence in row 0
    out = inj(ids, base, emb.weight, "soft", 0.05, where)
    assert torch.equal(out[0, :5], base[0, :5]) and not torch.equal(out[0, 5:7], base[0, 5:7])
    with pytest.raises(ValueError, match="symbol mode"):
        inj(ids, base, emb.weight, "fuzzy")


def test_qformer_windows_and_order():
    cfg = qformer_config(encoder_width=24, hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32)
    qf = WindowQFormer(cfg).eval()
    assert num_windows(1500) == 88
    x = torch.randn(2, 1500, 24)
    out = qf(x)
    assert out.shape == (2, 88, 16)
    # window 5 sees frames 85..101 only: changing frame 90 changes output 5 and nothing else
    y = x.clone()
    y[1, 90] += 1.0
    diff = (qf(y) - out).abs().amax(-1)
    assert diff[0].max() == 0 and diff[1, 5] > 0 and diff[1].clone().index_fill_(0, torch.tensor([5]), 0).max() == 0
    # the last 4 frames (29.92 s - 30 s) are not seen
    y = x.clone()
    y[:, 1496:] += 1.0
    assert torch.equal(qf(y), out)
