"""Official SALMONN checkpoints in, trainable state out.

The official ``salmonn_v1.pth`` / ``salmonn_7b_v0.pth`` hold ``{'model': state_dict}`` with only the parts SALMONN
trained: the Q-Former, its query, ``ln_speech``/``ln_audio``, the projection and the LoRA weights. They load
through an explicit key map; every key is accounted for:

    speech_query_tokens                          → speech_qformer.query_tokens
    speech_Qformer.bert.embeddings.LayerNorm.*   → speech_qformer.qformer.layernorm.*
    speech_Qformer.bert.encoder.layer.N.{attention,crossattention}.self.*
                                                 → speech_qformer.qformer.encoder.layer.N.{…}.attention.*
    speech_Qformer.bert.encoder.*                → speech_qformer.qformer.encoder.*
    ln_speech.*, ln_audio.*, speech_llama_proj.*             → same names
    llama_model.base_model.model.….lora_{A,B}.default.weight → llm.base_model.model.….lora_{A,B}.default.weight
    dropped as known leftovers: Q-Former position_ids, rotary_emb.inv_freq, BEATs relative-bias aliases
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import Tensor

from ..io import atomic_write_bytes
from .speech_llm import SpeechLLM

__all__ = [
    "LoadReport",
    "load_salmonn_checkpoint",
    "load_trainable",
    "map_salmonn_key",
    "official_state_dict",
    "save_lora_adapter",
    "save_salmonn_checkpoint",
    "save_trainable",
    "trainable_state_dict",
]

_LEFTOVERS = (
    re.compile(r"^speech_Qformer\.bert\.embeddings\.position_ids$"),
    re.compile(r"\.rotary_emb\.inv_freq$"),
    re.compile(r"^beats\.encoder\.layers\.([1-9]\d*)\.self_attn\.relative_attention_bias\.weight$"),
)
_RENAMES = (
    (re.compile(r"^speech_query_tokens$"), "speech_qformer.query_tokens"),
    (
        re.compile(r"^speech_Qformer\.bert\.embeddings\.LayerNorm\.(weight|bias)$"),
        r"speech_qformer.qformer.layernorm.\1",
    ),
    (
        re.compile(r"^speech_Qformer\.bert\.encoder\.layer\.(\d+)\.(attention|crossattention)\.self\.(.+)$"),
        r"speech_qformer.qformer.encoder.layer.\1.\2.attention.\3",
    ),
    (re.compile(r"^speech_Qformer\.bert\.encoder\.(.+)$"), r"speech_qformer.qformer.encoder.\1"),
    (re.compile(r"^(ln_speech|ln_audio|speech_llama_proj)\.(weight|bias)$"), r"\1.\2"),
    (re.compile(r"^llama_model\.(base_model\.model\..+\.lora_[AB]\.default\.weight)$"), r"llm.\1"),
)


def map_salmonn_key(key: str) -> str | None:
    """Our parameter name for an official key; None for a known leftover; raises KeyError if unknown."""
    if any(p.search(key) for p in _LEFTOVERS):
        return None
    for pattern, repl in _RENAMES:
        if pattern.match(key):
            return pattern.sub(repl, key)
    raise KeyError(key)


# our name -> official name: the inverse of _RENAMES, for writing files that the official code (and ours) reads
_OFFICIAL = (
    (re.compile(r"^speech_qformer\.query_tokens$"), "speech_query_tokens"),
    (
        re.compile(r"^speech_qformer\.qformer\.layernorm\.(weight|bias)$"),
        r"speech_Qformer.bert.embeddings.LayerNorm.\1",
    ),
    (
        re.compile(r"^speech_qformer\.qformer\.encoder\.layer\.(\d+)\.(attention|crossattention)\.attention\.(.+)$"),
        r"speech_Qformer.bert.encoder.layer.\1.\2.self.\3",
    ),
    (re.compile(r"^speech_qformer\.qformer\.encoder\.(.+)$"), r"speech_Qformer.bert.encoder.\1"),
    (re.compile(r"^(ln_speech|ln_audio|speech_llama_proj)\.(weight|bias)$"), r"\1.\2"),
    (re.compile(r"^llm\.(base_model\.model\..+\.lora_[AB]\.default\.weight)$"), r"llama_model.\1"),
)


def official_state_dict(model: SpeechLLM) -> dict[str, Tensor]:
    """What the official ``salmonn_v1.pth`` holds, from ``model``: Q-Former, query, LayerNorms, projection and
    LoRA, under the official names, detached on the CPU (`load_salmonn_checkpoint` reads it back exactly)."""
    out = {}
    for name, value in model.state_dict().items():
        if name in _expected_keys(model):
            pattern, repl = next(pr for pr in _OFFICIAL if pr[0].match(name))
            out[pattern.sub(repl, name)] = value.detach().cpu().contiguous()
    return out


def save_salmonn_checkpoint(model: SpeechLLM, path: str | os.PathLike) -> Path:
    """Writes `official_state_dict` in the official layout ``{"model": state_dict}``, atomically."""
    from ..io import atomic_write

    state = {"model": official_state_dict(model)}
    return atomic_write(path, lambda f: torch.save(state, f))


@dataclass
class LoadReport:
    """What a checkpoint load did."""

    loaded: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)


def _expected_keys(model: SpeechLLM) -> set[str]:
    prefixes = ("speech_qformer.", "speech_llama_proj.", "ln_speech.", "ln_audio.")
    return {k for k in model.state_dict() if k.startswith(prefixes) or (k.startswith("llm.") and "lora_" in k)}


def _torch_load(path: Path) -> dict:
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights_only errors all mean the same thing to the user
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {e})") from None


def load_salmonn_checkpoint(model: SpeechLLM, path: str | os.PathLike) -> LoadReport:
    """Loads an official SALMONN ``.pth`` into ``model`` through the key map.

    Raises:
        ValueError: listing every unknown key, missing key and shape mismatch, with the file name.
    """
    path = Path(path)
    ckpt = _torch_load(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("model"), dict):
        raise ValueError(f"{path}: expected a dict with a 'model' state dict (the official SALMONN layout)")
    own = model.state_dict()
    expected = _expected_keys(model)
    report, mapped, unknown, shapes = LoadReport(), {}, [], []
    for key, value in ckpt["model"].items():
        try:
            name = map_salmonn_key(key)
        except KeyError:
            unknown.append(key)
            continue
        if name is None:
            report.dropped.append(key)
        elif name not in expected:
            unknown.append(f"{key} (-> {name}, not in this model)")
        elif tuple(value.shape) != tuple(own[name].shape):
            shapes.append(f"{key}: checkpoint {tuple(value.shape)} vs model {tuple(own[name].shape)}")
        else:
            mapped[name] = value
    missing = sorted(expected - set(mapped) - {s.split(":")[0] for s in shapes})
    if unknown or missing or shapes:
        raise ValueError(
            f"{path}: checkpoint does not match the model:\n  unexpected keys: {unknown}\n  missing keys: {missing}"
            f"\n  shape mismatches: {shapes}"
        )
    _copy_into(model, mapped)
    report.loaded = sorted(mapped)
    return report


def _copy_into(model: torch.nn.Module, tensors: dict[str, Tensor]) -> None:
    own = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in tensors.items():
            own[name].copy_(value.to(own[name].dtype))


# ------------------------------------------------------------------------------------------ trainable state
def trainable_state_dict(model: SpeechLLM, include_speech: bool | None = None) -> dict[str, Tensor]:
    """LoRA, symbol MLP and (when trained, or asked for) the speech path, detached on CPU."""
    if include_speech is None:
        include_speech = any(p.requires_grad for p in model.speech_parameters())
    keep = ("symbols.mlp.",) + (tuple(f"{n}." for n in model.speech_modules()) if include_speech else ())
    return {
        k: v.detach().cpu().contiguous()
        for k, v in model.state_dict().items()
        if k.startswith(keep) or (k.startswith("llm.") and "lora_" in k)
    }


def save_trainable(model: SpeechLLM, path: str | os.PathLike, include_speech: bool | None = None) -> Path:
    """Writes the trainable state as one safetensors file, atomically."""
    state = trainable_state_dict(model, include_speech)
    return atomic_write_bytes(path, save(state, metadata={"format": "salmonn_symbols/trainable"}))


def load_trainable(model: SpeechLLM, path: str | os.PathLike) -> list[str]:
    """Loads a `save_trainable` file; every tensor must match a parameter of ``model`` by name and shape."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"trainable-state file not found: {path}")
    state = load_file(path)
    own = model.state_dict()
    bad = [k for k in state if k not in own]
    shapes = [
        f"{k}: {tuple(v.shape)} vs {tuple(own[k].shape)}"
        for k, v in state.items()
        if k in own and v.shape != own[k].shape
    ]
    missing = [k for k in trainable_state_dict(model, include_speech=False) if k not in state]
    if bad or shapes or missing:
        raise ValueError(f"{path}: unexpected keys {bad}; missing keys {missing}; shape mismatches {shapes}")
    _copy_into(model, state)
    return sorted(state)


def save_lora_adapter(model: SpeechLLM, folder: str | os.PathLike) -> Path:
    """Writes the LoRA adapter as a peft folder (``PeftModel.from_pretrained`` loads it), replaced atomically."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        model.llm.save_pretrained(tmp)
        old = folder.with_name(f".{folder.name}.old")
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
