"""Whisper front end and encoder: log-mel parity with WhisperFeatureExtractor and openai-whisper, and loading of
tiny random checkpoints saved in the real formats (HF safetensors / sharded / .bin, openai-whisper .pt)."""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
import whisper
from safetensors.torch import load_file, save_file
from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration, WhisperModel

from salmonn_symbols.model.whisper import (
    build_whisper_encoder,
    load_whisper_encoder,
    log_mel,
    whisper_encoder_config,
)

SR = 16000
D = 32  # d_model of the "tiny" test size

# Measured on CPU (torch 2.11, transformers 5.23): ours vs WhisperFeatureExtractor 1.2e-7 (its torch path, same
# maths) and 4.2e-5 (its numpy path, worst on the 37 s clip); vs openai-whisper 0.0; batched vs alone 0.0.
TOL_HF = 1e-6
TOL_HF_NUMPY = 1e-4
TOL_OPENAI = 1e-6
# openai-whisper's encoder vs transformers' on the same weights (outputs ~N(0, 1) after the final LayerNorm):
# measured max |diff| 0.0 on CPU, as both call the same SDPA kernel; the margin covers other kernels and builds.
TOL_ENCODER = 1e-6


def _clip(seconds: float, amp: float = 0.3, seed: int = 0) -> torch.Tensor:
    """A speech-like test signal: amplitude-modulated harmonics plus noise, (S,) float32."""
    g = torch.Generator().manual_seed(seed)
    n = round(seconds * SR)
    t = torch.arange(n) / SR
    voiced = sum(torch.sin(2 * math.pi * f * t) / k for k, f in enumerate((180.0, 360.0, 540.0, 1300.0), 1))
    envelope = 0.5 + 0.5 * torch.sin(2 * math.pi * 3.0 * t)
    return (amp * (envelope * voiced / 2 + 0.05 * torch.randn(n, generator=g))).float()


CLIP_SECONDS = [0.5, 7.0 + 123 / SR, 30.0, 37.0]  # short, ~7 s (odd length), exactly 30 s, longer than 30 s


# --------------------------------------------------------------------------------------------------------------
# log_mel
# --------------------------------------------------------------------------------------------------------------


def test_log_mel_matches_whisper_feature_extractor_batched():
    clips = [_clip(s, seed=i) for i, s in enumerate(CLIP_SECONDS)]
    fe = WhisperFeatureExtractor()
    ref = fe([c.numpy() for c in clips], sampling_rate=SR, return_tensors="pt").input_features  # (4, 80, 3000)
    lengths = torch.tensor([len(c) for c in clips])
    batch = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)  # (4, 37 s), zero right-padded
    ours = log_mel(batch, lengths=lengths)
    assert ours.shape == ref.shape == (4, 80, 3000)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=0, atol=TOL_HF)


@pytest.mark.parametrize("seconds", CLIP_SECONDS)
def test_log_mel_matches_feature_extractor_numpy_path(seconds):
    # transformers 4.28 (SALMONN's pin) computed features with numpy; the numpy path is still there.
    x = _clip(seconds)
    ref = WhisperFeatureExtractor()._np_extract_fbank_features(whisper.pad_or_trim(x.numpy())[None], "cpu")
    torch.testing.assert_close(log_mel(x[None]), torch.from_numpy(ref), rtol=0, atol=TOL_HF_NUMPY)


@pytest.mark.parametrize("seconds", CLIP_SECONDS)
def test_log_mel_matches_openai_whisper_per_clip(seconds):
    x = _clip(seconds)
    ref = whisper.log_mel_spectrogram(whisper.pad_or_trim(x))  # (80, 3000)
    torch.testing.assert_close(log_mel(x[None])[0], ref, rtol=0, atol=TOL_OPENAI)


def test_log_mel_quiet_clip_batched_with_loud_clip_is_unchanged():
    quiet, loud = _clip(4.0, amp=1e-3, seed=1), _clip(9.0, amp=0.8, seed=2)
    batch = torch.stack([torch.cat([quiet, torch.zeros(len(loud) - len(quiet))]), loud])  # (2, 9 s)
    both = log_mel(batch)
    torch.testing.assert_close(both[0], log_mel(quiet[None])[0], rtol=0, atol=0)
    torch.testing.assert_close(both[1], log_mel(loud[None])[0], rtol=0, atol=0)
    # The coupling this guards against is real: openai's clamp over the whole batch changes the quiet clip.
    coupled = whisper.log_mel_spectrogram(whisper.pad_or_trim(batch))
    assert (coupled[0] - both[0]).abs().max() > 0.5


def test_log_mel_lengths_mask_nonzero_padding():
    a, b = _clip(2.0, seed=3), _clip(5.0, seed=4)
    batch = torch.randn(2, len(b))  # garbage everywhere, then the clips on the left
    batch[0, : len(a)], batch[1] = a, b
    out = log_mel(batch, lengths=torch.tensor([len(a), len(b)]))
    torch.testing.assert_close(out[0], log_mel(a[None])[0], rtol=0, atol=0)
    torch.testing.assert_close(out[1], log_mel(b[None])[0], rtol=0, atol=0)
    assert (log_mel(batch)[0] - out[0]).abs().max() > 0.1  # without lengths the garbage would count


def test_log_mel_ignores_autocast_and_input_dtype():
    x = _clip(3.0)[None]
    ref = log_mel(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = log_mel(x)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    assert log_mel(x.double()).dtype == torch.float32


def test_log_mel_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\(B, S\)"):
        log_mel(torch.zeros(SR))
    with pytest.raises(ValueError, match="lengths"):
        log_mel(torch.zeros(2, SR), lengths=torch.tensor([SR]))


# --------------------------------------------------------------------------------------------------------------
# Construction
# --------------------------------------------------------------------------------------------------------------


def _assert_frozen_sdpa(enc) -> None:
    assert enc.config._attn_implementation == "sdpa"
    assert all(layer.self_attn.config._attn_implementation == "sdpa" for layer in enc.layers)
    assert not enc.training and not any(m.training for m in enc.modules())
    assert not any(p.requires_grad for p in enc.parameters())


def test_configs():
    tiny, large = whisper_encoder_config("tiny"), whisper_encoder_config("large-v2")
    assert (tiny.d_model, tiny.encoder_layers, tiny.encoder_attention_heads, tiny.encoder_ffn_dim) == (D, 2, 2, 64)
    assert (large.d_model, large.encoder_layers, large.encoder_attention_heads, large.encoder_ffn_dim) == (
        1280,
        32,
        20,
        5120,
    )
    for cfg in (tiny, large):
        assert (cfg.num_mel_bins, cfg.max_source_positions) == (80, 1500)
    with pytest.raises(ValueError, match="unknown Whisper size"):
        whisper_encoder_config("huge")


def test_large_v2_encoder_parameter_count():
    with torch.device("meta"):  # shapes only, no 2.5 GB allocation
        enc = build_whisper_encoder(whisper_encoder_config("large-v2"))
    d, f, n = 1280, 5120, 32
    per_layer = (4 * d * d + 3 * d) + 2 * (2 * d) + (d * f + f) + (f * d + d)  # attention (k no bias), 2 LN, MLP
    expected = (80 * d * 3 + d) + (d * d * 3 + d) + 1500 * d + n * per_layer + 2 * d
    assert sum(p.numel() for p in enc.parameters()) == expected == 636_784_640
    _assert_frozen_sdpa(enc)


def test_build_tiny_encoder_runs_frozen_with_sdpa():
    enc = build_whisper_encoder(whisper_encoder_config("tiny"))
    _assert_frozen_sdpa(enc)
    mel = log_mel(torch.stack([_clip(1.0, seed=5), _clip(1.0, seed=6)]))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], acc_events=True) as prof:
        out = enc(mel).last_hidden_state
    assert out.shape == (2, 1500, D)
    assert "aten::scaled_dot_product_attention" in {e.key for e in prof.key_averages()}


# --------------------------------------------------------------------------------------------------------------
# Loading: Hugging Face folders
# --------------------------------------------------------------------------------------------------------------


def _perturb_(model: torch.nn.Module, seed: int) -> None:
    """Random offsets on every tensor, so that LayerNorm ones, zero biases and sinusoids all become distinct and a
    wrong key mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point() and not t.is_sparse:
                t.add_(0.1 * torch.randn(t.shape, generator=g))


@pytest.fixture(scope="module")
def mel():
    clips = [_clip(2.0, seed=7), _clip(31.0, seed=8)]
    batch = torch.nn.utils.rnn.pad_sequence(clips, batch_first=True)
    return log_mel(batch, lengths=torch.tensor([len(c) for c in clips]))  # (2, 80, 3000)


@pytest.fixture(scope="module")
def hf_model():
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(whisper_encoder_config("tiny")).eval()
    _perturb_(model, seed=1)
    return model


@pytest.fixture(scope="module")
def hf_dir(hf_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("hf_single")
    hf_model.save_pretrained(path)
    return path


def _save_bin(model, path: Path, shards: int = 1) -> Path:
    # transformers 5 only writes safetensors; this is the layout that save_pretrained(safe_serialization=False)
    # produced before (and that .bin-only repos such as Vicuna-13B v1.1 still ship).
    path.mkdir()
    model.config.save_pretrained(path)
    sd = model.state_dict()
    if shards == 1:
        torch.save(sd, path / "pytorch_model.bin")
        return path
    keys, weight_map = list(sd), {}
    for i in range(shards):
        name = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = keys[i::shards]
        torch.save({k: sd[k] for k in part}, path / name)
        weight_map |= dict.fromkeys(part, name)
    (path / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return path


def _layout(kind: str, hf_model, hf_dir: Path, tmp: Path) -> Path:
    if kind == "safetensors":
        return hf_dir
    if kind == "sharded":
        hf_model.save_pretrained(tmp / "sharded", max_shard_size="50KB")
        assert (tmp / "sharded" / "model.safetensors.index.json").is_file()
        assert len(list((tmp / "sharded").glob("model-*.safetensors"))) > 2
        return tmp / "sharded"
    return _save_bin(hf_model, tmp / kind, shards=2 if kind == "bin-sharded" else 1)


@pytest.mark.parametrize("kind", ["safetensors", "sharded", "bin", "bin-sharded"])
def test_load_hf_folder_matches_original_encoder(kind, hf_model, hf_dir, mel, tmp_path):
    enc = load_whisper_encoder(_layout(kind, hf_model, hf_dir, tmp_path))
    _assert_frozen_sdpa(enc)
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in enc.parameters())
    with torch.no_grad():
        ref = hf_model.model.encoder(mel).last_hidden_state
    out = enc(mel).last_hidden_state
    assert out.shape == (2, 1500, D)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    ref_sd = hf_model.model.encoder.state_dict()
    assert all(torch.equal(v, ref_sd[k]) for k, v in enc.state_dict().items())


def test_load_bare_whisper_model_folder(mel, tmp_path):
    torch.manual_seed(1)
    model = WhisperModel(whisper_encoder_config("tiny")).eval()
    _perturb_(model, seed=2)
    model.save_pretrained(tmp_path)
    assert any(k.startswith("encoder.") for k in load_file(tmp_path / "model.safetensors"))
    with torch.no_grad():
        ref = model.encoder(mel).last_hidden_state
    torch.testing.assert_close(load_whisper_encoder(tmp_path)(mel).last_hidden_state, ref, rtol=0, atol=0)


def _copy_with_state(hf_dir: Path, tmp: Path, edit) -> Path:
    """A copy of the single-file HF folder whose model.safetensors went through ``edit(state_dict)``."""
    out = tmp / "edited"
    shutil.copytree(hf_dir, out)
    sd = load_file(hf_dir / "model.safetensors")
    edit(sd)
    save_file(sd, out / "model.safetensors", metadata={"format": "pt"})
    return out


def test_hf_renamed_and_missing_keys_are_listed(hf_dir, tmp_path):
    def edit(sd):
        sd["model.encoder.layers.0.fc_1.weight"] = sd.pop("model.encoder.layers.0.fc1.weight")
        del sd["model.encoder.layer_norm.bias"]

    path = _copy_with_state(hf_dir, tmp_path, edit)
    with pytest.raises(ValueError) as err:
        load_whisper_encoder(path)
    msg = str(err.value)
    assert str(path / "model.safetensors") in msg
    assert "missing keys (2): model.encoder.layer_norm.bias, model.encoder.layers.0.fc1.weight" in msg
    assert "unexpected keys (1): model.encoder.layers.0.fc_1.weight" in msg


def test_hf_config_shape_mismatch_is_listed(hf_dir, tmp_path):
    path = tmp_path / "bad_config"
    shutil.copytree(hf_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["encoder_ffn_dim"] = 48  # the weights were saved with 64
    (path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"shape mismatches \(6\)") as err:
        load_whisper_encoder(path)
    assert "model.encoder.layers.1.fc2.weight: file (32, 64) vs model (32, 48)" in str(err.value)
    assert str(path / "model.safetensors") in str(err.value)


def test_hf_folder_errors_name_the_path(hf_model, hf_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path / "nope"))):
        load_whisper_encoder(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"{re.escape(str(tmp_path / 'empty'))} has no config\.json"):
        load_whisper_encoder(tmp_path / "empty")
    # Corrupt safetensors: the file cut in half.
    cut = tmp_path / "cut"
    shutil.copytree(hf_dir, cut)
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(str(cut / "model.safetensors"))):
        load_whisper_encoder(cut)
    # A shard named in the index is gone.
    hf_model.save_pretrained(tmp_path / "sharded", max_shard_size="50KB")
    gone = sorted((tmp_path / "sharded").glob("model-*.safetensors"))[0]
    gone.unlink()
    with pytest.raises(FileNotFoundError, match=re.escape(str(gone))):
        load_whisper_encoder(tmp_path / "sharded")


# --------------------------------------------------------------------------------------------------------------
# Loading: openai-whisper .pt
# --------------------------------------------------------------------------------------------------------------

DIMS = whisper.model.ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=D,
    n_audio_head=2,
    n_audio_layer=2,
    n_vocab=64,
    n_text_ctx=16,
    n_text_state=D,
    n_text_head=2,
    n_text_layer=1,
)


@pytest.fixture(scope="module")
def openai_model():
    torch.manual_seed(2)
    model = whisper.model.Whisper(DIMS).eval()
    _perturb_(model, seed=3)
    return model


def _openai_state(model) -> dict[str, torch.Tensor]:
    sd = dict(model.state_dict())
    sd["alignment_heads"] = model.alignment_heads  # non-persistent today; some released files carry it
    return sd


def _save_openai(sd: dict, path: Path, dims=DIMS) -> Path:
    torch.save({"dims": asdict(dims), "model_state_dict": sd}, path)
    return path


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")  # the sparse alignment_heads buffer
def test_load_openai_checkpoint_matches_openai_encoder(openai_model, mel, tmp_path):
    sd = _openai_state(openai_model)
    assert "encoder.blocks.0.attn.key.bias" not in sd  # openai's key projection has no bias ...
    enc = load_whisper_encoder(_save_openai(sd, tmp_path / "tiny.pt"))
    assert enc.layers[0].self_attn.k_proj.bias is None  # ... and neither has HF's k_proj
    _assert_frozen_sdpa(enc)
    with torch.no_grad():
        ref = openai_model.encoder(mel)
    out = enc(mel).last_hidden_state
    assert out.shape == ref.shape == (2, 1500, D)
    torch.testing.assert_close(out, ref, rtol=0, atol=TOL_ENCODER)


def test_load_openai_fp16_checkpoint_gives_fp32_parameters(openai_model, tmp_path):
    # The released large-v2.pt stores fp16 tensors; SALMONN keeps Whisper's parameters in fp32.
    sd = {k: v.half() for k, v in openai_model.state_dict().items()}
    enc = load_whisper_encoder(_save_openai(sd, tmp_path / "half.pt"))
    assert all(p.dtype == torch.float32 for p in enc.parameters())
    assert torch.equal(enc.conv1.weight, sd["encoder.conv1.weight"].float())
    assert torch.equal(enc.embed_positions.weight, sd["encoder.positional_embedding"].float())


def test_openai_corruptions_are_all_listed(openai_model, tmp_path):
    sd = dict(openai_model.state_dict())
    sd["encoder.blocks.1.mlp.zero.weight"] = sd.pop("encoder.blocks.1.mlp.0.weight")  # renamed
    del sd["encoder.ln_post.bias"]  # missing
    sd["encoder.positional_embedding"] = torch.zeros(1499, D)  # wrong shape
    sd["encoder.blocks.0.attn.key.bias"] = torch.zeros(D)  # a bias HF's k_proj cannot hold
    path = _save_openai(sd, tmp_path / "broken.pt")
    with pytest.raises(ValueError) as err:
        load_whisper_encoder(path)
    msg = str(err.value)
    assert str(path) in msg
    assert "missing keys (2): encoder.blocks.1.mlp.0.weight, encoder.ln_post.bias" in msg
    assert "unexpected keys (2): encoder.blocks.0.attn.key.bias, encoder.blocks.1.mlp.zero.weight" in msg
    assert "shape mismatches (1): encoder.positional_embedding: file (1499, 32) vs model (1500, 32)" in msg
    assert "decoder." not in msg  # the decoder is a known leftover, not an error


@pytest.mark.parametrize(
    "case, match",
    [
        ("extra block", r"unexpected keys \(15\): encoder\.blocks\.2\."),
        ("dims", r"'dims' lacks 'n_audio_layer'"),
        ("plain state dict", r"is not an openai-whisper checkpoint"),
        ("garbage", r"cannot read torch checkpoint"),
    ],
)
def test_openai_bad_files_name_the_file(case, match, openai_model, tmp_path):
    path = tmp_path / "bad.pt"
    sd = dict(openai_model.state_dict())
    if case == "extra block":  # a 3-block file declared as 2 blocks
        _save_openai(sd | {k.replace("blocks.1.", "blocks.2."): v for k, v in sd.items() if ".blocks.1." in k}, path)
    elif case == "dims":
        dims = asdict(DIMS)
        del dims["n_audio_layer"]
        torch.save({"dims": dims, "model_state_dict": sd}, path)
    elif case == "plain state dict":
        torch.save(sd, path)
    else:
        path.write_bytes(b"not a zip file at all" * 10)
    with pytest.raises(ValueError, match=match) as err:
        load_whisper_encoder(path)
    assert str(path) in str(err.value)
