"""The converters on tiny random models written in the real source formats (CTranslate2 model.bin, GGUF), loaded
back through openai-whisper, transformers and the project's own builders."""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
import whisper
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from whisper.model import ModelDimensions, Whisper

from salmonn_symbols.data.prompt import PromptBuilder
from salmonn_symbols.model.builders import SpeechLLMConfig, build_speech_llm
from salmonn_symbols.model.convert_ct2 import convert_ct2_whisper, read_ct2, whisper_state_dict, write_ct2
from salmonn_symbols.model.convert_gguf import convert_gguf_llama
from salmonn_symbols.model.llm import load_llm
from salmonn_symbols.model.tokenizer import tiny_corpus
from salmonn_symbols.model.whisper import load_whisper_encoder, log_mel

DIMS = dict(
    n_mels=80, n_audio_ctx=1500, n_audio_state=32, n_audio_head=2, n_audio_layer=2,
    n_vocab=120, n_text_ctx=16, n_text_state=32, n_text_head=2, n_text_layer=2,
)  # fmt: skip
# openai-whisper vs the project's transformers encoder on the same weights: measured 0.0 on CPU (same SDPA kernel).
TOL_ENCODER = 1e-5


# ----------------------------------------------------------------------------------------------------------------
# CTranslate2: a random openai-whisper model written in CTranslate2's Whisper layout
# ----------------------------------------------------------------------------------------------------------------


def _random_whisper(seed: int = 0) -> Whisper:
    """openai-whisper at tiny dims with every tensor random (LayerNorm gains too, so a gamma/beta swap shows)."""
    torch.manual_seed(seed)
    model = Whisper(ModelDimensions(**DIMS)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.2)
    return model


def _ct2_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CTranslate2's int8 quantization of a weight (per-row scale 127 / max |w|, rounded)."""
    scale = 127.0 / w.abs().amax(dim=1).clamp(min=1e-12)
    return torch.round(w * scale[:, None]).to(torch.int8), scale


def _ct2_whisper_variables(model: Whisper, dtype: str = "float32", key_bias: float = 0.0) -> dict[str, torch.Tensor]:
    """The variables CTranslate2's Whisper converter writes for ``model``: fused projections (zero key bias unless
    ``key_bias`` says otherwise), gamma/beta, int16 head counts; weights in ``dtype`` (float32, float16 or int8)."""
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}

    def put(name, t):
        if dtype == "int8" and name.endswith("weight") and t.dim() == 2 and "embeddings" not in name:
            out[name], out[name + "_scale"] = _ct2_int8(t)
        else:
            out[name] = t.half() if dtype == "float16" else t

    def ln(dst, src):
        put(f"{dst}/gamma", sd[f"{src}.weight"])
        put(f"{dst}/beta", sd[f"{src}.bias"])

    def lin(dst, src):
        put(f"{dst}/weight", sd[f"{src}.weight"])
        put(f"{dst}/bias", sd[f"{src}.bias"])

    def fused(dst, srcs):
        put(f"{dst}/weight", torch.cat([sd[f"{s}.weight"] for s in srcs]))
        zeros = torch.full((DIMS["n_audio_state"],), key_bias)
        put(f"{dst}/bias", torch.cat([sd.get(f"{s}.bias", zeros) for s in srcs]))

    def block(dst, src, cross):
        ln(f"{dst}/self_attention/layer_norm", f"{src}.attn_ln")
        fused(f"{dst}/self_attention/linear_0", [f"{src}.attn.{p}" for p in ("query", "key", "value")])
        lin(f"{dst}/self_attention/linear_1", f"{src}.attn.out")
        if cross:
            ln(f"{dst}/attention/layer_norm", f"{src}.cross_attn_ln")
            lin(f"{dst}/attention/linear_0", f"{src}.cross_attn.query")
            fused(f"{dst}/attention/linear_1", [f"{src}.cross_attn.{p}" for p in ("key", "value")])
            lin(f"{dst}/attention/linear_2", f"{src}.cross_attn.out")
        ln(f"{dst}/ffn/layer_norm", f"{src}.mlp_ln")
        lin(f"{dst}/ffn/linear_0", f"{src}.mlp.0")
        lin(f"{dst}/ffn/linear_1", f"{src}.mlp.2")

    lin("encoder/conv1", "encoder.conv1")
    lin("encoder/conv2", "encoder.conv2")
    put("encoder/position_encodings/encodings", sd["encoder.positional_embedding"])
    for i in range(DIMS["n_audio_layer"]):
        block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    ln("encoder/layer_norm", "encoder.ln_post")
    put("decoder/embeddings/weight", sd["decoder.token_embedding.weight"])
    put("decoder/position_encodings/encodings", sd["decoder.positional_embedding"])
    for i in range(DIMS["n_text_layer"]):
        block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    ln("decoder/layer_norm", "decoder.ln")
    i16 = lambda v: torch.tensor(v, dtype=torch.int16)  # noqa: E731
    i8 = lambda v: torch.tensor(v, dtype=torch.int8)  # noqa: E731
    out |= {"encoder/num_heads": i16(DIMS["n_audio_head"]), "decoder/num_heads": i16(DIMS["n_text_head"])}
    out |= {"decoder/activation": i8(3), "decoder/pre_norm": i8(1), "decoder/alibi": i8(0)}
    out |= {"decoder/alignment_heads": i16(1), "decoder/alignment_layer": i16(-1)}
    return out


def _write_ct2_whisper(path: Path, model: Whisper, dtype: str = "float32", key_bias: float = 0.0) -> Path:
    aliases = {"decoder/projection/weight": "decoder/embeddings/weight"}
    return write_ct2(path, "WhisperSpec", 3, _ct2_whisper_variables(model, dtype, key_bias), aliases)


def _is_quantized(openai_name: str, t: torch.Tensor) -> bool:
    """Whether ``_ct2_whisper_variables(dtype="int8")`` stores this tensor as int8: the linear weights."""
    return t.dim() == 2 and openai_name.endswith("weight") and "embedding" not in openai_name


def _expected_state(model: Whisper, dtype: str) -> dict[str, torch.Tensor]:
    """What the converted checkpoint must hold: the model's tensors as the file stored them."""
    sd = {k: v.detach() for k, v in model.state_dict().items()}
    if dtype == "float16":
        return {k: v.half() for k, v in sd.items()}
    if dtype == "int8":
        dequantized = {}
        for k, v in sd.items():
            q, scale = _ct2_int8(v) if _is_quantized(k, v) else (v, None)
            dequantized[k] = v if scale is None else q.float() / scale[:, None]
        return dequantized
    return sd


def test_ct2_binary_round_trip_every_dtype(tmp_path):
    g = torch.Generator().manual_seed(0)
    variables = {
        "a/f32": torch.randn(3, 4, generator=g),
        "a/f16": torch.randn(5, generator=g).half(),
        "a/bf16": torch.randn(2, 3, 2, generator=g).bfloat16(),
        "a/i32": torch.arange(-3, 3, dtype=torch.int32),
        "attr/i8": torch.tensor(-7, dtype=torch.int8),
        "attr/i16": torch.tensor(300, dtype=torch.int16),
        "name/ünïcode": torch.zeros(0),
    }
    write_ct2(tmp_path / "model.bin", "SomeSpec", 7, variables, {"b/alias": "a/f32"})
    m = read_ct2(tmp_path / "model.bin")
    assert (m.spec, m.revision, m.aliases) == ("SomeSpec", 7, {"b/alias": "a/f32"})
    assert sorted(m.variables) == sorted(variables)
    for k, v in variables.items():
        assert m.variables[k].dtype == v.dtype and torch.equal(m.variables[k], v), k
    assert m.scalar("attr/i16") == 300


def test_ct2_int8_weights_are_dequantized(tmp_path):
    w = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    q, scale = _ct2_int8(w)
    text = torch.frombuffer(bytearray(b"gelu"), dtype=torch.int8)  # CTranslate2 stores string attributes so
    write_ct2(tmp_path / "model.bin", "S", 1, {"l/weight": q, "l/weight_scale": scale, "l/act": text})
    m = read_ct2(tmp_path / "model.bin")
    assert sorted(m.variables) == ["l/act", "l/weight"]
    assert torch.equal(m.variables["l/act"], text)
    torch.testing.assert_close(m.variables["l/weight"], q.float() / scale[:, None], rtol=0, atol=0)
    assert (m.variables["l/weight"] - w).abs().max() <= w.abs().max() / 127  # within one quantization step
    write_ct2(tmp_path / "noscale.bin", "S", 1, {"l/weight": q})
    with pytest.raises(ValueError, match=r"noscale.bin: quantized variable l/weight has no l/weight_scale"):
        read_ct2(tmp_path / "noscale.bin")


def test_ct2_split_parts_read_as_one_file(tmp_path):
    full = _write_ct2_whisper(tmp_path / "model.bin", _random_whisper())
    data = full.read_bytes()
    (tmp_path / "p1").write_bytes(data[: len(data) // 2])
    (tmp_path / "p2").write_bytes(data[len(data) // 2 :])
    a, b = read_ct2(full), read_ct2([tmp_path / "p1", tmp_path / "p2"])
    assert a.variables.keys() == b.variables.keys()
    assert all(torch.equal(a.variables[k], b.variables[k]) for k in a.variables)
    with pytest.raises(ValueError, match=r"p1 is truncated"):
        read_ct2(tmp_path / "p1")
    with pytest.raises(ValueError, match=r"p2 \+ .*p1: CTranslate2 binary version"):
        read_ct2([tmp_path / "p2", tmp_path / "p1"])


@pytest.mark.parametrize("dtype", ["float32", "float16", "int8"])
def test_whisper_conversion_reproduces_the_openai_model(tmp_path, dtype):
    model = _random_whisper()
    _write_ct2_whisper(tmp_path / "model.bin", model, dtype)
    dims = convert_ct2_whisper(tmp_path / "model.bin", tmp_path / "w.pt")
    assert dims == DIMS
    ckpt = torch.load(tmp_path / "w.pt", weights_only=True)
    expected = _expected_state(model, dtype)
    assert sorted(ckpt["model_state_dict"]) == sorted(expected)
    for k, v in expected.items():
        got = ckpt["model_state_dict"][k]
        assert got.dtype == v.dtype, k
        torch.testing.assert_close(got, v, rtol=0, atol=0, msg=k)

    # The forward pass of openai-whisper on the converted file is the original model's on the stored weights.
    reference = Whisper(ModelDimensions(**DIMS)).eval()
    reference.load_state_dict(expected, strict=False)
    loaded = whisper.load_model(str(tmp_path / "w.pt"), device="cpu")
    mel = log_mel(torch.randn(1, 16000 * 2) * 0.1)  # (1, 80, 3000)
    tokens = torch.tensor([[1, 5, 7, 9]])
    with torch.no_grad():
        audio = reference.encoder(mel)
        torch.testing.assert_close(loaded.encoder(mel), audio, rtol=0, atol=0)
        torch.testing.assert_close(loaded.decoder(tokens, audio), reference.decoder(tokens, audio), rtol=0, atol=0)
        ours = load_whisper_encoder(tmp_path / "w.pt")(mel).last_hidden_state  # the project's loader
    torch.testing.assert_close(ours, audio, rtol=0, atol=TOL_ENCODER)


def test_dropping_the_key_bias_is_exact(tmp_path):
    """A non-zero key bias (openai-whisper has none) only shifts each query's logits; softmax cancels it."""
    model = _random_whisper(1)
    _write_ct2_whisper(tmp_path / "model.bin", model, key_bias=0.7)
    convert_ct2_whisper(tmp_path / "model.bin", tmp_path / "w.pt")
    with_bias = _random_whisper(1)
    for block in with_bias.encoder.blocks:
        key = torch.nn.Linear(DIMS["n_audio_state"], DIMS["n_audio_state"])
        key.weight.data, key.bias.data = block.attn.key.weight.data, torch.full_like(key.bias, 0.7)
        block.attn.key = key
    mel = log_mel(torch.randn(1, 16000) * 0.1)
    with torch.no_grad():
        got = whisper.load_model(str(tmp_path / "w.pt"), device="cpu").encoder(mel)
        want, without = with_bias.encoder(mel), model.encoder(mel)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    torch.testing.assert_close(want, without, rtol=0, atol=1e-4)


def _edit(variables, edit):
    name, value = edit
    if value is None:
        variables.pop(name)
    else:
        variables[name] = value
    return variables


@pytest.mark.parametrize(
    "edit, message",
    [
        (("encoder/layer_1/ffn/linear_0/bias", None), r"encoder/layer_1/ffn/linear_0/bias is missing"),
        (("encoder/layer_0/extra/weight", torch.zeros(2)), r"no openai-whisper counterpart: encoder/layer_0/extra"),
        (("decoder/activation", torch.tensor(1, dtype=torch.int8)), r"decoder/activation = 1, openai-whisper needs 3"),
        (("decoder/projection/weight", torch.zeros(DIMS["n_vocab"], 32)), r"projection/weight differs"),
        (("encoder/num_heads", None), r"no scalar variable 'encoder/num_heads'"),
    ],
)
def test_bad_whisper_variables_are_named_with_the_file(tmp_path, edit, message):
    variables = _edit(_ct2_whisper_variables(_random_whisper()), edit)
    write_ct2(tmp_path / "bad.bin", "WhisperSpec", 3, variables)
    with pytest.raises(ValueError, match=message) as e:
        whisper_state_dict(read_ct2(tmp_path / "bad.bin"))
    assert "bad.bin" in str(e.value)


def test_unreadable_ct2_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.bin"):
        read_ct2(tmp_path / "nope.bin")
    (tmp_path / "text.bin").write_text("hello, this is not a model")
    with pytest.raises(ValueError, match=r"text.bin: CTranslate2 binary version \d+ is not supported"):
        read_ct2(tmp_path / "text.bin")
    write_ct2(tmp_path / "t.bin", "TransformerSpec", 1, {"x": torch.zeros(1)})
    with pytest.raises(ValueError, match=r"t.bin holds a TransformerSpec, not a CTranslate2 WhisperSpec"):
        whisper_state_dict(read_ct2(tmp_path / "t.bin"))
    good = write_ct2(tmp_path / "g.bin", "S", 1, {"x": torch.zeros(3)}).read_bytes()
    (tmp_path / "long.bin").write_bytes(good + b"\0\0")
    with pytest.raises(ValueError, match=r"long.bin: 2 unread bytes"):
        read_ct2(tmp_path / "long.bin")


# ----------------------------------------------------------------------------------------------------------------
# GGUF: a random LLaMA written the way llama.cpp's converter writes it
# ----------------------------------------------------------------------------------------------------------------

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2, as in SmolLM2


@pytest.fixture(scope="module")
def bpe() -> Tokenizer:
    """A GPT-2-style byte-level BPE (SmolLM2's kind) of 400 tokens, trained on the packaged corpus."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(tiny_corpus(), trainer=trainer)
    return tok


def _random_llama(vocab: int, tied: bool) -> LlamaForCausalLM:
    cfg = LlamaConfig(
        vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=128, rms_norm_eps=1e-5, rope_theta=10000.0,
        bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=tied,
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.1)
    return model


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's q/k row order (rotary halves interleaved per head), as its HF converter writes it."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _gguf_tensors(model: LlamaForCausalLM) -> dict[str, np.ndarray]:
    cfg, sd = model.config, {k: v.numpy() for k, v in model.state_dict().items()}
    out = {"token_embd.weight": sd["model.embed_tokens.weight"], "output_norm.weight": sd["model.norm.weight"]}
    if not cfg.tie_word_embeddings:
        out["output.weight"] = sd["lm_head.weight"]
    names = dict(
        attn_norm="input_layernorm", ffn_norm="post_attention_layernorm", attn_v="self_attn.v_proj",
        attn_output="self_attn.o_proj", ffn_gate="mlp.gate_proj", ffn_up="mlp.up_proj", ffn_down="mlp.down_proj",
    )  # fmt: skip
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        out |= {f"blk.{i}.{g}.weight": sd[f"{p}{h}.weight"] for g, h in names.items()}
        out[f"blk.{i}.attn_q.weight"] = _permute(sd[f"{p}self_attn.q_proj.weight"], cfg.num_attention_heads)
        out[f"blk.{i}.attn_k.weight"] = _permute(sd[f"{p}self_attn.k_proj.weight"], cfg.num_key_value_heads)
    return out


def _write_gguf(path: Path, model: LlamaForCausalLM, bpe: Tokenizer, qtype, arch: str = "llama") -> dict:
    """Writes ``model`` as a GGUF file (matrices in ``qtype``, norms in F32, as llama.cpp quantizes); returns the
    tensors a reader must get back, keyed by GGUF name."""
    cfg = model.config
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    vocab = sorted(bpe.get_vocab().items(), key=lambda kv: kv[1])
    merges = json.loads(bpe.to_str())["model"]["merges"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([3 if t in SPECIALS else 1 for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in merges])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    stored = {}
    for name, t in _gguf_tensors(model).items():
        if t.ndim == 2 and qtype != gguf.GGMLQuantizationType.F32:
            q = gguf.quants.quantize(t, qtype)
            w.add_tensor(name, q, raw_dtype=qtype)
            stored[name] = gguf.quants.dequantize(q, qtype)
        else:
            w.add_tensor(name, t.astype(np.float32))
            stored[name] = t
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return stored


@pytest.mark.parametrize("tied", [True, False])
def test_gguf_f32_conversion_is_exact(tmp_path, bpe, tied):
    model = _random_llama(bpe.get_vocab_size(), tied)
    _write_gguf(tmp_path / "m.gguf", model, bpe, gguf.GGMLQuantizationType.F32)
    out = convert_gguf_llama(tmp_path / "m.gguf", tmp_path / "hf")
    files = {p.name for p in out.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= files
    saved = load_file(out / "model.safetensors")
    expected = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert sorted(saved) == sorted(expected)
    for k, v in expected.items():
        assert saved[k].dtype == torch.float32 and torch.equal(saved[k], v), k

    loaded = load_llm(out)  # the project's loader
    cfg = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in cfg and cfg["tie_word_embeddings"] == tied
    for key in ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers", "vocab_size"):
        assert cfg[key] == getattr(model.config, key), key
    ids = torch.tensor([[1, 40, 41, 200, 7, 99]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, rtol=0, atol=1e-5)
    assert (loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()) == tied

    tok = AutoTokenizer.from_pretrained(out, local_files_only=True)
    text = "The quick brown fox, 2024 times!"
    assert tok(text, add_special_tokens=False).input_ids == bpe.encode(text).ids
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.decode(tok(text).input_ids, skip_special_tokens=True) == text


@pytest.mark.parametrize("qtype", [gguf.GGMLQuantizationType.Q8_0, gguf.GGMLQuantizationType.Q4_1])
def test_gguf_quantized_tensors_are_dequantized_exactly(tmp_path, bpe, qtype):
    model = _random_llama(bpe.get_vocab_size(), tied=True)
    stored = _write_gguf(tmp_path / "m.gguf", model, bpe, qtype)
    saved = load_file(convert_gguf_llama(tmp_path / "m.gguf", tmp_path / "hf") / "model.safetensors")
    n_heads, n_kv = model.config.num_attention_heads, model.config.num_key_value_heads
    q0 = saved["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(q0, _unpermute(stored["blk.0.attn_q.weight"], n_heads))  # llama.cpp's row order undone
    assert not torch.equal(q0, torch.from_numpy(stored["blk.0.attn_q.weight"]))  # and undoing it mattered
    k1 = _unpermute(stored["blk.1.attn_k.weight"], n_kv)
    assert torch.equal(saved["model.layers.1.self_attn.k_proj.weight"], k1)
    assert torch.equal(saved["model.embed_tokens.weight"], torch.from_numpy(stored["token_embd.weight"]))
    assert torch.equal(saved["model.layers.1.mlp.down_proj.weight"], torch.from_numpy(stored["blk.1.ffn_down.weight"]))
    err = (saved["model.layers.1.mlp.down_proj.weight"] - model.model.layers[1].mlp.down_proj.weight).abs().max()
    assert 0 < err < 0.1  # really quantized, and still close to the original


def _unpermute(w: np.ndarray, n_head: int) -> torch.Tensor:
    """The inverse of :func:`_permute`."""
    return torch.from_numpy(
        w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)
    )


def test_bad_gguf_files_are_named(tmp_path, bpe):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        convert_gguf_llama(tmp_path / "nope.gguf", tmp_path / "hf")
    (tmp_path / "junk.gguf").write_bytes(b"GGML" + bytes(100))
    with pytest.raises(ValueError, match=r"junk.gguf is not a readable GGUF file"):
        convert_gguf_llama(tmp_path / "junk.gguf", tmp_path / "hf")
    _write_gguf(
        tmp_path / "g.gguf", _random_llama(bpe.get_vocab_size(), True), bpe, gguf.GGMLQuantizationType.F32, "gpt2"
    )
    with pytest.raises(ValueError, match=r"g.gguf: architecture 'gpt2' is not a LLaMA-family model"):
        convert_gguf_llama(tmp_path / "g.gguf", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_converted_files_build_a_speech_llm(tmp_path, bpe):
    """Both converted formats load through the project's builder (tied embeddings, byte-level BPE) and train."""
    _write_ct2_whisper(tmp_path / "model.bin", _random_whisper(), "float16")
    convert_ct2_whisper(tmp_path / "model.bin", tmp_path / "whisper.pt")
    _write_gguf(tmp_path / "m.gguf", _random_llama(bpe.get_vocab_size(), True), bpe, gguf.GGMLQuantizationType.Q8_0)
    convert_gguf_llama(tmp_path / "m.gguf", tmp_path / "llm")
    cfg = SpeechLLMConfig(
        llm_path=str(tmp_path / "llm"), whisper_path=str(tmp_path / "whisper.pt"), use_beats=False,
        qformer_hidden=32, qformer_heads=2, qformer_intermediate=64, train_speech_path=True,
    )  # fmt: skip
    model, tok = build_speech_llm(cfg)
    assert model.whisper.config.d_model == DIMS["n_audio_state"] and model.beats is None
    pb = PromptBuilder(tok)
    assert pb.prefix[0] == 1 and pb.target_ids("stop")[-1] == 2
    batch = dict(wav=torch.randn(2, 16000) * 0.1, wav_lengths=torch.tensor([16000, 8000]))
    batch |= pb(["Which command?", "Which command?"], ["stop", "go"]).as_dict()
    out = model(batch)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    assert model.speech_qformer.query_tokens.grad.abs().sum() > 0
