"""A GGUF LLaMA-family checkpoint (e.g. SmolLM2-135M-Instruct Q4_1) turned into a plain Hugging Face LLaMA folder.

    model.gguf
      │  header check (gguf.GGUFReader): general.architecture == "llama"
      │  transformers' GGUF loader: de-quantizes every tensor to float32, un-permutes q/k, builds the tokenizer
      ▼
    LlamaForCausalLM (flagged "quantized": save_pretrained refuses it)
      │  state dict -> a fresh LlamaForCausalLM of the same config, without the quantization entry
      ▼
    <out>/  config.json  generation_config.json  model.safetensors (float32)  tokenizer.json  tokenizer_config.json

The weights are saved in float32: Q4_1/Q8_0 values (an fp16 scale times a small integer, plus an fp16 offset) are
exact in float32 but not in bfloat16 or float16. The folder is written next to ``out`` and renamed into place.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig, LlamaConfig, LlamaForCausalLM

from ..io import replace_dir

__all__ = ["convert_gguf_llama", "gguf_architecture"]

_ARCHITECTURES = ("llama",)  # what transformers maps onto LlamaForCausalLM and this converter has been tested on


def gguf_architecture(path: str | os.PathLike) -> str:
    """The ``general.architecture`` of a GGUF file, read from its header.

    Raises:
        FileNotFoundError: no file at ``path``.
        ValueError: the file is not GGUF or has no architecture (naming the file).
    """
    from gguf import GGUFReader

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"GGUF file not found: {path}")
    try:
        field = GGUFReader(path).get_field("general.architecture")
    except Exception as e:  # the reader raises bare ValueErrors, struct or numpy errors on foreign bytes
        raise ValueError(f"{path} is not a readable GGUF file: {e}") from e
    if field is None:
        raise ValueError(f"{path} has no general.architecture field")
    return str(field.contents())


def _plain_config(config: LlamaConfig) -> LlamaConfig:
    """The config without what marks a model as loaded from GGUF (the quantization entry, the GGUF's name)."""
    d = config.to_dict()
    for key in ("quantization_config", "_name_or_path", "_model_name_or_path"):
        d.pop(key, None)
    d["dtype"] = "float32"
    return LlamaConfig.from_dict(d)


def _plain_model(quantized: LlamaForCausalLM, source: Path) -> LlamaForCausalLM:
    """A ``LlamaForCausalLM`` that holds the de-quantized tensors (shared, not copied) and can be saved."""
    config = _plain_config(quantized.config)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    state = quantized.state_dict()
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)  # the tie is restored from the embedding below
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise ValueError(f"{source}: tensors do not fit LlamaForCausalLM: missing {missing}, unexpected {unexpected}")
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id, pad_token_id=config.pad_token_id
    )
    return model.eval()


def convert_gguf_llama(gguf_file: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Converts a GGUF LLaMA checkpoint into an HF folder that ``load_llm`` and ``load_tokenizer`` read.

    Args:
        gguf_file: The ``.gguf`` file (any quantization transformers can de-quantize, e.g. Q4_1, Q8_0, F16, F32).
        out: Destination folder; replaced if it exists.

    Returns:
        The destination folder.

    Raises:
        FileNotFoundError: the GGUF file is missing.
        ValueError: the file is not GGUF, not a LLaMA-family model, or transformers cannot read it (naming the file).
    """
    gguf_file, out = Path(gguf_file), Path(out)
    arch = gguf_architecture(gguf_file)
    if arch not in _ARCHITECTURES:
        raise ValueError(
            f"{gguf_file}: architecture {arch!r} is not a LLaMA-family model ({', '.join(_ARCHITECTURES)})"
        )
    folder, name = gguf_file.parent, gguf_file.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
        quantized = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch.float32, local_files_only=True
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"transformers cannot load {gguf_file}: {e}") from e
    model = _plain_model(quantized, gguf_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would otherwise become the model folder's mode
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
