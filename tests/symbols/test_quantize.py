import math

import pytest
import torch
import torch.nn.functional as F

from salmonn_symbols.symbols import (
    Codebook,
    SymbolMLP,
    TemperatureSchedule,
    build_candidate_masks,
    hard_quantize,
    soft_quantize,
    topk_candidates,
)


def _brute_cos(x, V):
    out = torch.empty(x.shape[0], V.shape[0], dtype=torch.float64)
    for n in range(x.shape[0]):
        for v in range(V.shape[0]):
            a, b = x[n].double(), V[v].double()
            out[n, v] = (a @ b) / (a.norm() * b.norm())
    return out


@pytest.fixture
def small():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 8, generator=g), torch.randn(40, 8, generator=g)


def test_soft_quantization_matches_brute_force(small):
    x, V = small
    mask = torch.ones(40, dtype=torch.bool)
    mask[::3] = False
    T = 0.07
    cos = _brute_cos(x, V)
    expected = torch.zeros(5, 8, dtype=torch.float64)
    for n in range(5):
        logits = [math.exp(cos[n, v] / T) if mask[v] else 0.0 for v in range(40)]
        z = sum(logits)
        for v in range(40):
            expected[n] += logits[v] / z * V[v].double()
    got = soft_quantize(x, Codebook(V), T, mask)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, atol=1e-5, rtol=1e-5)


def test_hard_quantization_and_topk_match_brute_force(small):
    x, V = small
    mask = torch.ones(40, dtype=torch.bool)
    mask[5:15] = False
    cos = _brute_cos(x, V).masked_fill(~mask, -2)
    ids, sims, emb = hard_quantize(x, Codebook(V), mask)
    assert ids.tolist() == cos.argmax(-1).tolist()
    torch.testing.assert_close(sims.double(), cos.max(-1).values, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(emb, V[ids])
    top_s, top_i = topk_candidates(x, Codebook(V), 4, mask)
    ref_s, ref_i = cos.topk(4, -1)
    assert top_i.tolist() == ref_i.tolist()
    assert not any(5 <= i < 15 for row in top_i.tolist() for i in row)


def test_per_position_masks(small):
    x, V = small
    initial = torch.zeros(40, dtype=torch.bool)
    initial[:20] = True
    from salmonn_symbols.symbols import CandidateMasks

    masks = CandidateMasks(initial=initial, continuation=~initial)
    per_row = masks.for_positions(torch.tensor([True, False, True, False, True]))
    ids, _, _ = hard_quantize(x, Codebook(V), per_row)
    assert all((i < 20) == first for i, first in zip(ids.tolist(), [True, False, True, False, True], strict=True))


def test_low_temperature_soft_tends_to_hard(small):
    x, V = small
    soft = soft_quantize(x, Codebook(V), 1e-4)
    _, _, hard = hard_quantize(x, Codebook(V))
    torch.testing.assert_close(soft, hard, atol=1e-4, rtol=1e-4)


def test_fp32_under_bf16(small):
    x, V = small
    ref = soft_quantize(x, Codebook(V), 0.1)
    Vb = V.bfloat16()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = soft_quantize(x.bfloat16(), Codebook(Vb), 0.1)
    assert got.dtype == torch.float32
    # only the bf16 rounding of the inputs differs, not the arithmetic
    torch.testing.assert_close(got, soft_quantize(x.bfloat16().float(), Codebook(Vb.float()), 0.1))
    assert (got - ref).abs().max() < 0.05
    with pytest.raises(ValueError, match="temperature"):
        soft_quantize(x, Codebook(V), 0.0)


def test_codebook_refreshes_after_in_place_update():
    emb = torch.nn.Embedding(10, 4)
    cb = Codebook(emb.weight)
    before = cb.vectors.clone()
    assert cb.vectors.data_ptr() == cb.vectors.data_ptr()  # cached
    with torch.no_grad():
        emb.weight.mul_(2)
    torch.testing.assert_close(cb.vectors, before * 2)


def test_mlp_shape_norm_and_residual():
    mlp = SymbolMLP(32, hidden_dim=8)
    kinds = [type(m).__name__ for m in mlp.net]
    assert kinds == ["Linear", "LayerNorm", "GELU", "Dropout", "Linear"]
    assert mlp.net[0].out_features == 8 and mlp.net[3].p == 0.1 and mlp.scale == 0.2
    e = torch.randn(3, 7, 32)
    out = mlp(e)
    assert out.shape == e.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(3, 7))
    torch.testing.assert_close(out, F.normalize(e, dim=-1))  # zero-initialised output layer: identity direction
    mlp = SymbolMLP(32, hidden_dim=16, zero_init_output=False).eval()
    unit = F.normalize(e, dim=-1)
    with torch.no_grad():
        delta = mlp.net(unit)
    torch.testing.assert_close(mlp(e), F.normalize(unit + 0.2 * delta, dim=-1))


def test_mlp_moves_a_direction_the_same_whatever_the_embedding_norm():
    """The residual is added to the unit direction: a small-norm row (tiny models) and a large-norm row move
    alike, so the MLP can reach other tokens at the shipped scale."""
    mlp = SymbolMLP(32, hidden_dim=8, zero_init_output=False).eval()
    e = torch.randn(5, 32)
    torch.testing.assert_close(mlp(0.05 * e), mlp(20 * e))
    cos = (mlp(e) * F.normalize(e, dim=-1)).sum(-1)
    assert (cos < 0.999).all()  # it does move


def test_mlp_reset_is_the_identity_and_the_same_on_every_rank():
    mlp = SymbolMLP(32, hidden_dim=8)
    with torch.no_grad():
        for p in mlp.parameters():
            p.add_(torch.randn_like(p))
    e = torch.randn(4, 32)
    assert not torch.allclose(mlp.eval()(e), F.normalize(e, dim=-1))
    mlp.reset_parameters(torch.Generator().manual_seed(3))
    torch.testing.assert_close(mlp(e), F.normalize(e, dim=-1))
    other = SymbolMLP(32, hidden_dim=8)
    other.reset_parameters(torch.Generator().manual_seed(3))
    assert all(torch.equal(a, b) for a, b in zip(mlp.state_dict().values(), other.state_dict().values(), strict=True))


def test_mlp_is_fp32_under_autocast_and_with_bf16_weights():
    mlp = SymbolMLP(16, zero_init_output=False).eval()
    e = torch.randn(4, 16)
    ref = mlp(e)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert mlp(e).dtype == torch.float32
        torch.testing.assert_close(mlp(e), ref)


@pytest.mark.parametrize("zero_init", [False, True])
def test_gradients_reach_the_mlp_not_the_vocabulary(zero_init):
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 16)  # requires_grad=True, as an LLM embedding would if unfrozen
    mlp = SymbolMLP(16, zero_init_output=zero_init)
    ids = torch.tensor([3, 7, 7, 11])
    out = soft_quantize(mlp(emb.weight[ids].detach()), Codebook(emb.weight), 0.05)
    target = torch.randn_like(out)
    ((out - target) ** 2).sum().backward()
    assert emb.weight.grad is None
    last = mlp.net[-1].weight.grad
    assert last is not None and last.abs().sum() > 0
    first = mlp.net[0].weight.grad
    assert first is not None and ((first.abs().sum() > 0) != zero_init)


def test_candidate_masks(llama_sym):
    labels = ["anger", "neutral", "answer_agree"]
    masks = build_candidate_masks(llama_sym, llama_sym.vocab_size + 4, labels)
    assert masks.initial.shape == (llama_sym.vocab_size + 4,)
    assert not masks.initial[-4:].any() and not masks.continuation[-4:].any()
    for i in llama_sym.special_ids:
        assert not masks.initial[i] and not masks.continuation[i]
    for i, piece in enumerate(llama_sym.pieces):
        text = llama_sym.texts[i].strip()
        if piece.startswith("<0x"):
            assert not masks.initial[i] and not masks.continuation[i]
        if masks.initial[i]:
            assert piece.startswith("▁") and text.isalpha() and text.isascii()
            assert text.lower() not in {"anger", "neutral", "answer", "agree", "answer_agree"}
        if masks.continuation[i]:
            assert not piece.startswith("▁") and text.isalpha()
    assert not (masks.initial & masks.continuation).any()
    banned = [i for i, t in enumerate(llama_sym.texts) if t.strip().lower() in ("answer", "agree", "anger")]
    assert banned and not any(masks.initial[i] or masks.continuation[i] for i in banned)
    assert masks.initial.sum() > 100 and masks.continuation.sum() > 100


def test_candidate_masks_gpt2(gpt2_sym):
    masks = build_candidate_masks(gpt2_sym, exclude_words=["voice"])
    i = gpt2_sym.tokenizer.convert_tokens_to_ids("Ġvoice")
    j = gpt2_sym.tokenizer.convert_tokens_to_ids("Ġspeaker")
    assert not masks.initial[i] and masks.initial[j] and not masks.continuation[j]
    assert not masks.initial[gpt2_sym.tokenizer.convert_tokens_to_ids("Ġ123")]


def test_temperature_schedule():
    assert TemperatureSchedule(0.5, kind="constant")(0.7) == 0.5
    lin = TemperatureSchedule(1.0, 0.0 + 0.1, "linear")
    assert lin(0) == 1.0 and abs(lin(0.5) - 0.55) < 1e-9 and abs(lin(2.0) - 0.1) < 1e-9
    exp = TemperatureSchedule(0.1, 0.001, "exponential")
    assert abs(exp(0.5) - 0.01) < 1e-12
    cos = TemperatureSchedule(1.0, 0.2, "cosine")
    assert abs(cos(0) - 1.0) < 1e-12 and abs(cos(1) - 0.2) < 1e-12 and abs(cos(0.5) - 0.6) < 1e-12
    with pytest.raises(ValueError):
        TemperatureSchedule(0.1, 0.01, "step")
    with pytest.raises(ValueError):
        TemperatureSchedule(-1.0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_mlp_reset_on_the_gpu_draws_what_the_cpu_draws():
    # the cycle restarts the MLP with a seeded CPU generator on every rank, whatever device the MLP lives on
    cpu, gpu = SymbolMLP(32, hidden_dim=8, zero_init_output=False), SymbolMLP(32, hidden_dim=8).cuda()
    gpu.zero_init_output = False
    cpu.reset_parameters(torch.Generator().manual_seed(5))
    gpu.reset_parameters(torch.Generator().manual_seed(5))
    for a, b in zip(cpu.state_dict().values(), gpu.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b.cpu())
