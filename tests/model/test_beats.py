"""BEATs encoder: token count and order, the official checkpoint layout and strict loading, padding, precision."""

from __future__ import annotations

import logging
import warnings
from dataclasses import asdict

import pytest
import torch
from torch import nn

from salmonn_symbols.model.beats import (
    BEATs,
    BEATsConfig,
    _relative_position_bucket,
    beats_token_count,
    load_beats,
    official_state_dict,
    save_beats,
)

SR = 16_000
POS_CONV = "encoder.pos_conv.0."


def _wav(num_samples: int, batch: int = 1, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(batch, num_samples, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def model() -> BEATs:
    torch.manual_seed(0)
    return BEATs(BEATsConfig.tiny()).eval()


@pytest.fixture(scope="module")
def ckpt_path(model, tmp_path_factory):
    return save_beats(model, tmp_path_factory.mktemp("beats") / "beats_tiny.pt")


def _official_shapes() -> dict[str, tuple[int, ...]]:
    """Keys of the real iter3+ AS2M cpt2 checkpoint (reference notes 2.7), plus the layer 1..11 copies of the shared
    relative-bias table that the official module's state_dict() emits and its strict load_state_dict requires."""
    shapes = {
        "patch_embedding.weight": (512, 1, 16, 16),
        "layer_norm.weight": (512,),
        "layer_norm.bias": (512,),
        "post_extract_proj.weight": (768, 512),
        "post_extract_proj.bias": (768,),
        POS_CONV + "weight_g": (1, 1, 128),
        POS_CONV + "weight_v": (768, 48, 128),
        POS_CONV + "bias": (768,),
        "encoder.layer_norm.weight": (768,),
        "encoder.layer_norm.bias": (768,),
        "predictor.weight": (527, 768),
        "predictor.bias": (527,),
    }
    for i in range(12):
        p = f"encoder.layers.{i}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            shapes |= {f"{p}self_attn.{proj}.weight": (768, 768), f"{p}self_attn.{proj}.bias": (768,)}
        for norm in ("self_attn_layer_norm", "final_layer_norm"):
            shapes |= {f"{p}{norm}.weight": (768,), f"{p}{norm}.bias": (768,)}
        shapes |= {
            f"{p}self_attn.grep_linear.weight": (8, 64),
            f"{p}self_attn.grep_linear.bias": (8,),
            f"{p}self_attn.grep_a": (1, 12, 1, 1),
            f"{p}self_attn.relative_attention_bias.weight": (320, 12),  # layers 1..11: aliases of layer 0
            f"{p}fc1.weight": (3072, 768),
            f"{p}fc1.bias": (3072,),
            f"{p}fc2.weight": (768, 3072),
            f"{p}fc2.bias": (768,),
        }
    return shapes


def test_full_size_model_has_the_official_names_and_shapes():
    cfg = BEATsConfig()
    real = {
        "input_patch_size": 16, "embed_dim": 512, "encoder_layers": 12, "encoder_embed_dim": 768,
        "encoder_ffn_embed_dim": 3072, "encoder_attention_heads": 12, "conv_pos": 128, "conv_pos_groups": 16,
        "relative_position_embedding": True, "num_buckets": 320, "max_distance": 800, "gru_rel_pos": True,
        "deep_norm": True, "layer_norm_first": False, "finetuned_model": True, "predictor_class": 527,
    }  # fmt: skip
    assert {k: v for k, v in asdict(cfg).items() if k in real} == real
    with torch.device("meta"):  # shapes only: no 90M-parameter allocation
        big = BEATs(cfg)
    assert {k: tuple(v.shape) for k, v in official_state_dict(big).items()} == _official_shapes()
    own = [k for k in big.state_dict() if "relative_attention_bias" in k]
    assert own == ["encoder.layers.0.self_attn.relative_attention_bias.weight"]  # one table, shared


def test_from_dict_keeps_known_keys_and_logs_unknown(caplog):
    with caplog.at_level(logging.WARNING, logger="salmonn_symbols.model.beats"):
        cfg = BEATsConfig.from_dict({"encoder_layers": 3, "max_distance": 64, "fairseq_only_knob": 1})
    assert (cfg.encoder_layers, cfg.max_distance, cfg.embed_dim) == (3, 64, 512)
    assert "fairseq_only_knob" in caplog.text
    with pytest.raises(ValueError, match="activation_fn"):
        BEATsConfig.from_dict({"activation_fn": "swiglu"})
    with pytest.raises(ValueError, match="input_patch_size"):
        BEATsConfig.from_dict({"input_patch_size": 8})


def test_relative_position_buckets_follow_the_t5_scheme():
    rel = torch.tensor([0, -1, 1, -79, 79, -80, 80, -160, -799, -800, -5000, 5000])  # key - query
    # 160 buckets a side: |d| < 80 exact, then 80 + floor(80 * log(|d| / 80) / log(800 / 80)) capped at 159;
    # keys to the right get +160.
    expected = [0, 1, 161, 79, 239, 80, 240, 104, 159, 159, 159, 319]
    assert _relative_position_bucket(rel, num_buckets=320, max_distance=800).tolist() == expected


def test_attention_matches_the_official_formulation():
    """SDPA with an additive mask equals the official maths: q pre-scaled by 1 / (32 sqrt(hd)), row max
    subtracted, times 32, padded keys at -inf, query-gated relative bias added, softmax."""
    torch.manual_seed(1)
    model = BEATs(BEATsConfig.tiny()).eval()
    attn = model.encoder.layers[1].self_attn  # borrows layer 0's bias table
    b, n, h, hd = 2, 40, attn.num_heads, attn.head_dim
    x = torch.randn(b, n, h * hd)
    pad = torch.zeros(b, n, dtype=torch.bool)
    pad[1, 29:] = True
    pos_bias = model.encoder._position_bias(n)  # (1, H, N, N)
    with torch.no_grad():
        got = attn(x, torch.zeros(b, 1, 1, n).masked_fill(pad[:, None, None], float("-inf")), pos_bias)
        q, k, v = (p(x).view(b, n, h, hd).transpose(1, 2) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
        w = (q * hd**-0.5 / 32) @ k.transpose(-1, -2)
        w = ((w - w.amax(-1, keepdim=True)) * 32).masked_fill(pad[:, None, None], float("-inf"))
        gate_a, gate_b = torch.sigmoid(attn.grep_linear(q).view(b, h, n, 2, 4).sum(-1)).chunk(2, dim=-1)
        w = w + (gate_a * (gate_b * attn.grep_a - 1.0) + 2.0) * pos_bias
        expected = attn.out_proj((w.softmax(-1) @ v).transpose(1, 2).reshape(b, n, h * hd))
    assert pos_bias.abs().max() > 0.5  # the bias is large enough to matter
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_token_count_for_30_s_and_shorter_clips(model):
    assert [beats_token_count(n) for n in (480_000, 160_000, 2800, 2799, 0)] == [1496, 496, 8, 0, 0]
    with torch.no_grad():
        feats, mask = model(_wav(30 * SR))
        short, short_mask = model(_wav(10 * SR))
    assert feats.shape == (1, 1496, 32) and mask.shape == (1, 1496) and not mask.any()
    assert short.shape == (1, 496, 32) and not short_mask.any()
    assert torch.isfinite(feats).all()


def test_tokens_are_time_major_frequency_minor(model):
    seen = {}
    hooks = [
        model.patch_embedding.register_forward_hook(lambda m, i, o: seen.update(conv=o)),
        model.layer_norm.register_forward_pre_hook(lambda m, i: seen.update(tokens=i[0])),
    ]
    try:
        with torch.no_grad():
            model(_wav(2 * SR))
    finally:
        for h in hooks:
            h.remove()
    conv, tokens = seen["conv"], seen["tokens"]  # (1, C, T_p, 8), (1, N, C)
    t_p, n_freq = conv.shape[2:]
    assert n_freq == 8 and tokens.shape[1] == t_p * 8 == beats_token_count(2 * SR)
    for n in range(tokens.shape[1]):
        assert torch.equal(tokens[0, n], conv[0, :, n // 8, n % 8]), n
    assert not torch.equal(tokens[0, 1], conv[0, :, 1, 0])  # would hold for frequency-major order


def test_save_writes_the_official_layout_and_load_reproduces_outputs(model, ckpt_path):
    raw = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert set(raw) == {"cfg", "model"} and raw["cfg"] == asdict(model.cfg)
    keys = set(raw["model"])
    assert {POS_CONV + "weight_g", POS_CONV + "weight_v", POS_CONV + "bias"} <= keys
    assert not any("parametrizations" in k for k in keys)
    assert "encoder.layers.1.self_attn.relative_attention_bias.weight" in keys  # as the official state_dict has
    loaded = load_beats(ckpt_path)
    assert not loaded.training
    wav = _wav(3 * SR, batch=2)
    with torch.no_grad():
        assert torch.equal(loaded(wav)[0], model(wav)[0])


def test_state_dict_with_old_weight_norm_names_loads(model, tmp_path):
    d, kernel, groups = model.cfg.encoder_embed_dim, model.cfg.conv_pos, model.cfg.conv_pos_groups
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the deprecated API is the point of this test
        legacy = nn.utils.weight_norm(nn.Conv1d(d, d, kernel, padding=kernel // 2, groups=groups), name="weight", dim=2)
    with torch.no_grad():
        legacy.weight_g.uniform_(0.5, 2.0)
    state = {k: v for k, v in model.state_dict().items() if not k.startswith(POS_CONV)}  # no aliases either
    state |= {POS_CONV + k: v for k, v in legacy.state_dict().items()}
    assert {POS_CONV + "weight_g", POS_CONV + "weight_v"} <= set(state)
    torch.save({"cfg": asdict(model.cfg), "model": state}, tmp_path / "legacy.pt")
    loaded = load_beats(tmp_path / "legacy.pt")
    x = torch.randn(2, d, 40)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encoder.pos_conv[0](x), legacy(x), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(loaded.encoder.pos_conv[0].weight, legacy.weight, rtol=1e-6, atol=1e-7)


def _rename(sd):
    sd["encoder.layers.0.fc_1.weight"] = sd.pop("encoder.layers.0.fc1.weight")


def _alias_differs(sd):
    key = "encoder.layers.1.self_attn.relative_attention_bias.weight"
    sd[key] = sd[key] + 1.0


CORRUPTIONS = {
    "renamed": (_rename, ["encoder.layers.0.fc1.weight", "encoder.layers.0.fc_1.weight"]),
    "missing": (lambda sd: sd.pop("predictor.bias"), ["missing keys", "predictor.bias"]),
    "missing_legacy_g": (lambda sd: sd.pop(POS_CONV + "weight_g"), ["missing keys", POS_CONV + "weight_g"]),
    "extra": (lambda sd: sd.update({"encoder.rotary.inv_freq": torch.ones(4)}), ["encoder.rotary.inv_freq"]),
    "wrong_shape": (
        lambda sd: sd.update({"post_extract_proj.weight": torch.zeros(3, 3)}),
        ["post_extract_proj.weight", "(3, 3)", "(32, 16)"],
    ),
    "legacy_and_modern_name": (
        lambda sd: sd.update({POS_CONV + "parametrizations.weight.original0": sd[POS_CONV + "weight_g"]}),
        [POS_CONV + "parametrizations.weight.original0"],
    ),
    "alias_differs": (_alias_differs, ["encoder.layers.1.self_attn.relative_attention_bias.weight"]),
    "non_tensor": (lambda sd: sd.update({"layer_norm.bias": [0.0] * 16}), ["layer_norm.bias", "list"]),
}


@pytest.mark.parametrize("case", CORRUPTIONS)
def test_corrupt_state_dict_raises_with_file_and_keys(case, ckpt_path, tmp_path):
    payload = torch.load(ckpt_path, weights_only=True)
    mutate, expected = CORRUPTIONS[case]
    mutate(payload["model"])
    path = tmp_path / f"{case}.pt"
    torch.save(payload, path)
    with pytest.raises(ValueError) as err:
        load_beats(path)
    for text in [str(path), *expected]:
        assert text in str(err.value)


def test_cfg_that_does_not_fit_the_weights_lists_every_missing_layer(ckpt_path, tmp_path):
    payload = torch.load(ckpt_path, weights_only=True)
    payload["cfg"]["encoder_layers"] = 3
    torch.save(payload, tmp_path / "deeper.pt")
    with pytest.raises(ValueError) as err:
        load_beats(tmp_path / "deeper.pt")
    assert "encoder.layers.2.fc1.weight" in str(err.value) and "encoder.layers.2.fc2.bias" in str(err.value)


def _write_no_cfg(path, sd):
    torch.save({"model": sd}, path)


def _write_tensor(path, sd):
    torch.save(torch.zeros(3), path)


def _write_text(path, sd):
    path.write_text("not a checkpoint\n")


def _write_truncated(path, sd):
    torch.save({"cfg": {}, "model": sd}, path)
    path.write_bytes(path.read_bytes()[:2000])


def _write_bad_cfg(path, sd):
    torch.save({"cfg": {"activation_fn": "swiglu"}, "model": sd}, path)


@pytest.mark.parametrize(
    ("writer", "expected"),
    [
        (_write_no_cfg, "'cfg'"),
        (_write_tensor, "'cfg'"),
        (_write_text, "not a readable torch checkpoint"),
        (_write_truncated, "not a readable torch checkpoint"),
        (_write_bad_cfg, "invalid BEATs cfg"),
    ],
)
def test_bad_files_raise_with_the_file_name(writer, expected, model, tmp_path):
    path = tmp_path / "bad.pt"
    writer(path, official_state_dict(model))
    with pytest.raises(ValueError) as err:
        load_beats(path)
    assert str(path) in str(err.value) and expected in str(err.value)


def test_missing_file_raises_with_the_file_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        load_beats(tmp_path / "nowhere.pt")


def test_padded_batch_matches_single_runs_and_masks_padding(model):
    lengths = [80_000, 37_123, 52_000]
    wav = _wav(max(lengths), batch=3, seed=1)  # noise in the padded tail: it must not leak into valid tokens
    padding_mask = torch.arange(max(lengths))[None] >= torch.tensor(lengths)[:, None]
    fbank, frame_mask = model.preprocess(wav, padding_mask)  # (3, T, 128), (3, T)
    kaldi_frames = torch.tensor([1 + (n - 400) // 160 for n in lengths])  # 25 ms windows, 10 ms hop
    assert torch.equal((~frame_mask).sum(1), kaldi_frames // 16 * 16)  # cut to whole patches
    assert fbank[frame_mask].eq(0).all() and fbank[~frame_mask].ne(0).all()  # padded frames are zero
    with torch.no_grad():
        feats, mask = model(wav, padding_mask)
        unmasked, _ = model(wav)
        for i, n in enumerate(lengths):
            alone, alone_mask = model(wav[i : i + 1, :n])
            valid = beats_token_count(n)
            assert alone.shape[1] == valid and not alone_mask.any()
            assert torch.equal(mask[i], torch.arange(feats.shape[1]) >= valid)
            torch.testing.assert_close(feats[i, :valid], alone[0], rtol=1e-5, atol=1e-5)
    assert feats.shape[1] == beats_token_count(max(lengths))
    assert (unmasked[1, : beats_token_count(lengths[1])] - feats[1, : beats_token_count(lengths[1])]).abs().max() > 1e-3


def test_bad_padding_masks_and_short_clips_are_rejected(model):
    wav = _wav(8000, batch=2)
    holes = torch.zeros(2, 8000, dtype=torch.bool)
    holes[0, 100:200] = True  # not right padding
    with pytest.raises(ValueError, match="pad on the right"):
        model(wav, holes)
    with pytest.raises(ValueError, match="bool"):
        model(wav, holes.float())
    with pytest.raises(ValueError, match="2800"):
        model(_wav(2799))
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        model(_wav(8000)[0])


def test_fbank_is_fp32_under_bf16_autocast(model):
    wav = _wav(3 * SR, batch=2)
    fbank, frame_mask = model.preprocess(wav)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fbank_amp, _ = model.preprocess(wav)
        feats_amp, _ = model(wav)
    assert fbank.dtype == fbank_amp.dtype == torch.float32
    assert torch.equal(fbank_amp, fbank)  # in bf16 the log-mels would move by ~0.07
    assert fbank.shape == (2, 288, 128) and not frame_mask.any()  # 298 frames cut to 18 full patches
    with torch.no_grad():
        feats, _ = model(wav)
    assert torch.isfinite(feats_amp).all()
    assert torch.nn.functional.cosine_similarity(feats_amp.float(), feats, dim=-1).min() > 0.98


def test_eval_forward_under_no_grad_is_deterministic(ckpt_path):
    loaded = load_beats(ckpt_path)
    wav = _wav(4 * SR, batch=2, seed=3)
    with torch.no_grad():
        first, mask_a = loaded(wav)
        second, mask_b = loaded(wav)
    assert not first.requires_grad
    assert torch.equal(first, second) and torch.equal(mask_a, mask_b)


def test_batched_fbank_equals_kaldi_per_clip():
    import torchaudio.compliance.kaldi as kaldi

    from salmonn_symbols.model.fbank import batched_fbank as _batched_fbank

    g = torch.Generator().manual_seed(0)
    wav = torch.randn(3, 16000 * 3, generator=g) * torch.tensor([[0.1], [0.01], [0.5]])
    got = _batched_fbank(wav)  # (3, T, 128)
    for i in range(3):
        ref = kaldi.fbank(
            wav[i : i + 1] * 2**15, num_mel_bins=128, sample_frequency=16000, frame_length=25, frame_shift=10
        )
        torch.testing.assert_close(got[i], (ref - 15.41663) / (2 * 6.55582), rtol=0, atol=1e-6)
