"""The LLM (LLaMA / Vicuna from transformers) and its LoRA adapter (peft).

This is the only file that touches peft. Base weights stay frozen; only ``lora_A`` / ``lora_B`` train.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

__all__ = [
    "apply_lora",
    "build_llm",
    "llama_config",
    "load_llm",
    "lora_parameters",
    "set_lora_scale",
]

# Named LLaMA shapes. Vicuna-13B v1.1 is LLaMA-1 13B; Vicuna-7B v1.5 is LLaMA-2 7B.
_SIZES: dict[str, dict] = {
    # Larger inits than LLaMA's 0.02: at width 64 with a frozen random head, 0.02 keeps every logit near 1, so the
    # embeddings and the head get 0.3; the blocks get 0.1, enough to pass the input on without the sharp random
    # attention that 0.3 gives (which hides the speech tokens from a LoRA-only fit).
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=1024,
        vocab_size=2000,
        initializer_range=0.1,
        embedding_init=0.3,
    ),
    "llama-7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        max_position_embeddings=4096,
        vocab_size=32000,
    ),
    "llama-13b": dict(
        hidden_size=5120,
        intermediate_size=13824,
        num_hidden_layers=40,
        num_attention_heads=40,
        num_key_value_heads=40,
        max_position_embeddings=2048,
        vocab_size=32000,
    ),
}


def llama_config(size: str, **overrides) -> LlamaConfig:
    """A LLaMA config by name ("tiny", "llama-7b", "llama-13b"); BOS 1, EOS 2, RMSNorm eps 1e-6."""
    if size not in _SIZES:
        raise ValueError(f"unknown LLM size {size!r}; expected one of {sorted(_SIZES)}")
    kwargs = dict(
        _SIZES[size], rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False
    )
    kwargs.update(overrides)
    embedding_init = kwargs.pop("embedding_init", None)
    config = LlamaConfig(**kwargs)
    config.embedding_init = embedding_init  # read by build_llm
    return config


def build_llm(config: LlamaConfig) -> LlamaForCausalLM:
    """A randomly initialised causal LM with SDPA attention; loads nothing. A config with ``embedding_init``
    (the tiny size) draws the embeddings and the head with that std instead of ``initializer_range``."""
    config._attn_implementation = "sdpa"
    model = LlamaForCausalLM(config)
    std = getattr(config, "embedding_init", None)
    if std:
        with torch.no_grad():
            model.get_input_embeddings().weight.normal_(0.0, std)
            model.get_output_embeddings().weight.normal_(0.0, std)
    model.requires_grad_(False)
    return model


def load_llm(path: str | os.PathLike, dtype: torch.dtype | None = None) -> nn.Module:
    """Loads a causal LM from a local HF folder with SDPA attention, frozen.

    Raises:
        FileNotFoundError: naming the folder when it or its ``config.json`` is missing.
    """
    path = Path(path)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"LLM folder not found or without config.json: {path}")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype, attn_implementation="sdpa")
    model.requires_grad_(False)
    return model


def apply_lora(
    llm: nn.Module,
    r: int = 8,
    alpha: float = 32,
    dropout: float = 0.1,
    target_modules: Sequence[str] = ("q_proj", "v_proj"),
) -> PeftModel:
    """Wraps ``llm`` with a LoRA adapter named "default"; only the LoRA weights require grad."""
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=list(target_modules),
        task_type="CAUSAL_LM",
        bias="none",
    )
    return get_peft_model(llm, cfg)


def set_lora_scale(model: nn.Module, scale: float) -> int:
    """Overrides the LoRA scaling (alpha / r) of every adapted layer; returns how many layers changed.

    SALMONN-7B's card lowers alpha at inference (e.g. 28 instead of 32), so scaling is a run-time knob.
    """
    n = 0
    for module in model.modules():
        if isinstance(module, LoraLayer):
            for name in module.scaling:
                module.scaling[name] = float(scale)
            n += 1
    return n


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The LoRA parameters of ``model`` in a stable order."""
    return [p for n, p in model.named_parameters() if "lora_" in n]
