"""Random-weight models built on their target device: the same model as the CPU build, with every tensor there."""

from __future__ import annotations

import torch

from salmonn_symbols.model import builders
from salmonn_symbols.model.builders import SpeechLLMConfig, build_speech_llm


def _tensors(model) -> dict[str, torch.Tensor]:
    return dict(model.named_parameters()) | dict(model.named_buffers())


def test_a_real_size_built_on_another_device_has_the_cpu_builds_structure_and_dtypes():
    cfg = SpeechLLMConfig.from_name("salmonn-13b").random()
    cfg.tokenizer_path = "builtin:tiny"
    meta, _ = build_speech_llm(cfg, with_tokenizer=False, device="meta")  # no memory, no init: seconds
    tensors = _tensors(meta)
    assert sum(p.numel() for p in meta.parameters()) > 13e9
    assert [n for n, t in tensors.items() if t.device.type != "meta"] == []  # nothing left behind on the CPU
    tiny = SpeechLLMConfig.from_name("tiny")
    on_meta, cpu = (_tensors(build_speech_llm(tiny, device=d)[0]) for d in ("meta", "cpu"))
    assert {n: (t.shape, t.dtype) for n, t in on_meta.items()} == {n: (t.shape, t.dtype) for n, t in cpu.items()}
    assert {n for n, t in on_meta.items() if t.requires_grad} == {n for n, t in cpu.items() if t.requires_grad}
    # an LLM in bf16 is created in bf16 on the device (no fp32 copy first), with the CPU build's dtypes throughout
    half = SpeechLLMConfig.from_name("tiny", llm_dtype="bf16")
    on_meta, cpu = (_tensors(build_speech_llm(half, device=d)[0]) for d in ("meta", "cpu"))
    assert {n: (t.shape, t.dtype) for n, t in on_meta.items()} == {n: (t.shape, t.dtype) for n, t in cpu.items()}
    assert cpu["llm.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"].dtype == torch.bfloat16


def test_building_inside_a_device_context_initialises_as_the_cpu_build():
    """The device path runs the same init code: inside a device context (here the CPU's, the one this machine has)
    the same seed gives bitwise the same weights, so nothing is skipped or left uninitialised."""
    cfg = SpeechLLMConfig.from_name("tiny")
    torch.manual_seed(0)
    plain, _ = build_speech_llm(cfg)
    torch.manual_seed(0)
    with torch.device("cpu"):
        ctx, _ = builders._build(cfg, True)
    a, b = _tensors(plain), _tensors(ctx)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and the init statistics are the model's own, not zeros or leftovers of torch.empty
    w = b["llm.base_model.model.model.layers.0.self_attn.q_proj.base_layer.weight"]
    assert 0.05 < w.std().item() < 0.2  # the tiny LLM's initializer_range 0.1
    torch.manual_seed(0)
    again, _ = build_speech_llm(cfg, device="cpu")
    assert all(torch.equal(a[k], v) for k, v in _tensors(again).items())  # the CPU build is unchanged
