"""Builders: the only place that reads model weights from disk.

``SpeechLLMConfig.from_name("tiny" | "small" | "salmonn-7b" | "salmonn-13b")`` names a size;
`build_speech_llm` assembles the model from it. A path left as None means "random init at the named
architecture", so the same classes are built at tiny size for tests and at full size for benchmarks. The
dataclass defaults are the "tiny" preset, so a config that sets a few fields (``--model.model.symbol_hidden 16``)
keeps every other field of that preset.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .beats import BEATs, BEATsConfig, load_beats
from .checkpoint import load_salmonn_checkpoint
from .llm import apply_lora, build_llm, llama_config, load_llm, set_lora_scale
from .qformer import WindowQFormer, qformer_config
from .speech_llm import SpeechLLM
from .tokenizer import load_tokenizer
from .whisper import build_whisper_encoder, load_whisper_encoder, whisper_encoder_config

__all__ = ["SpeechLLMConfig", "build_speech_llm"]

log = logging.getLogger(__name__)
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, None: None}


@dataclass
class SpeechLLMConfig:
    """Where the weights are and what shape the model has.

    Attributes:
        llm_path: Local HF folder of the LLM (Vicuna); None builds a random ``llm_size`` model.
        llm_size: LLaMA architecture for random init: "tiny", "llama-7b" or "llama-13b".
        llm_dtype: dtype the LLM weights load in: "bf16", "fp16", "fp32" or None (as saved).
        tokenizer_path: Tokenizer folder or "builtin:tiny"/"builtin:gpt2"; default: ``llm_path``.
        whisper_path: HF Whisper folder or openai-whisper ``.pt``; None builds a random ``whisper_size`` encoder.
        whisper_size: "tiny" or "large-v2".
        use_beats: Whether the BEATs branch exists (without it the Q-Former encoder width is Whisper's).
        beats_path: Official BEATs ``.pt``; None builds a random ``beats_size`` encoder.
        beats_size: "tiny" or "base" (the iter3+ AS2M architecture).
        salmonn_ckpt: Official SALMONN ``.pth`` with the Q-Former, projection, LayerNorms and LoRA.
        qformer_hidden: Q-Former width.
        qformer_layers: Q-Former layers.
        qformer_heads: Q-Former attention heads.
        qformer_intermediate: Q-Former FFN width.
        qformer_init_std: Q-Former init (BERT's 0.02 at real sizes; larger at test sizes, where 0.02 would let the
            query token's own embedding drown the audio).
        window: Frames per Q-Former window.
        stride: Hop between windows.
        lora_r: LoRA rank.
        lora_alpha: LoRA alpha (scale = alpha / r).
        lora_dropout: LoRA dropout.
        lora_targets: Modules that get LoRA.
        lora_scale: Overrides alpha / r after loading (SALMONN-7B suggests 28 / 8 when quantized).
        symbol_hidden: Symbol MLP width (8 or 16).
        symbol_scale: Symbol MLP residual scale.
        symbol_dropout: Symbol MLP dropout.
        symbol_scope: Symbol occurrences replaced: "prompt", "target" or "both".
        train_speech_path: Train the Q-Former, query, projection and LayerNorms too.
        speech_windows: "all" speech windows of the 30 s input reach the LLM (SALMONN), or only those with
            "audio" (faster for short clips).
        utterance_token: One more speech token before the windows: the clip's mean frame, projected
            (`UtteranceToken`; not in SALMONN, so official checkpoints neither hold nor need it).
        gradient_checkpointing: Non-reentrant activation checkpointing in the LLM.
    """

    llm_path: str | None = None
    llm_size: str = "tiny"
    llm_dtype: str | None = None
    tokenizer_path: str | None = None
    whisper_path: str | None = None
    whisper_size: str = "tiny"
    use_beats: bool = True
    beats_path: str | None = None
    beats_size: str = "tiny"
    salmonn_ckpt: str | None = None
    qformer_hidden: int = 32
    qformer_layers: int = 2
    qformer_heads: int = 2
    qformer_intermediate: int = 64
    qformer_init_std: float = 0.3
    window: int = 17
    stride: int = 17
    lora_r: int = 8
    lora_alpha: float = 32.0
    lora_dropout: float = 0.1
    lora_targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])
    lora_scale: float | None = None
    symbol_hidden: int = 8
    symbol_scale: float = 0.2
    symbol_dropout: float = 0.1
    symbol_scope: str = "both"
    train_speech_path: bool = True
    speech_windows: str = "audio"
    utterance_token: bool = False
    gradient_checkpointing: bool = False

    @classmethod
    def from_name(cls, name: str, **overrides) -> SpeechLLMConfig:
        """A named size with optional field overrides."""
        if name not in _NAMED:
            raise ValueError(f"unknown model size {name!r}; expected one of {sorted(_NAMED)}")
        return replace(_NAMED[name], **overrides)

    def random(self) -> SpeechLLMConfig:
        """The same architecture with every path cleared (random weights)."""
        return replace(self, llm_path=None, whisper_path=None, beats_path=None, salmonn_ckpt=None)


_SALMONN_QFORMER = dict(
    qformer_hidden=768,
    qformer_heads=12,
    qformer_intermediate=3072,
    qformer_init_std=0.02,
    speech_windows="all",
    train_speech_path=False,
)
SMALL_DIR = "checkpoints/small"  # where `salmonn-symbols prepare-weights` writes the converted packaged weights
_NAMED = {
    "tiny": SpeechLLMConfig(),
    # Whisper tiny.en + SmolLM2-135M-Instruct from installed packages; no BEATs (none is packaged). The Q-Former is
    # sized for tiny.en's 384 channels and loaded from the connector pre-training (ASR) of `prepare-weights`.
    # Windows of 8 frames (0.16 s) give a short command word two or three speech tokens instead of one; the
    # utterance token gives the LLM the whole clip's voice (speaker identity, docs/benchmarks.md).
    "small": SpeechLLMConfig(
        llm_path=f"{SMALL_DIR}/smollm2-135m-instruct",
        llm_dtype="fp32",
        whisper_path=f"{SMALL_DIR}/whisper-tiny.en.pt",
        use_beats=False,
        salmonn_ckpt=f"{SMALL_DIR}/salmonn_small.pth",
        qformer_hidden=384,
        qformer_layers=2,
        qformer_heads=6,
        qformer_intermediate=1536,
        qformer_init_std=0.02,
        window=8,
        stride=8,
        lora_r=8,
        lora_alpha=16.0,
        lora_dropout=0.05,
        speech_windows="audio",
        utterance_token=True,
        train_speech_path=True,
    ),
    "salmonn-13b": SpeechLLMConfig(
        llm_path="checkpoints/lmsys/vicuna-13b-v1.1",
        llm_size="llama-13b",
        llm_dtype="bf16",
        whisper_path="checkpoints/openai/whisper-large-v2",
        whisper_size="large-v2",
        beats_path="checkpoints/beats/BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt",
        beats_size="base",
        salmonn_ckpt="checkpoints/salmonn/salmonn_v1.pth",
        **_SALMONN_QFORMER,
    ),
    "salmonn-7b": SpeechLLMConfig(
        llm_path="checkpoints/lmsys/vicuna-7b-v1.5",
        llm_size="llama-7b",
        llm_dtype="bf16",
        whisper_path="checkpoints/openai/whisper-large-v2",
        whisper_size="large-v2",
        beats_path="checkpoints/beats/BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt",
        beats_size="base",
        salmonn_ckpt="checkpoints/salmonn/salmonn_7b_v0.pth",
        **_SALMONN_QFORMER,
    ),
}


def _build_llm(cfg: SpeechLLMConfig, vocab_size: int | None):
    if cfg.llm_path:
        return load_llm(cfg.llm_path, _DTYPES[cfg.llm_dtype])
    overrides = {"vocab_size": vocab_size} if cfg.llm_size == "tiny" and vocab_size else {}
    dtype = _DTYPES[cfg.llm_dtype]
    if dtype is None:
        return build_llm(llama_config(cfg.llm_size, **overrides))
    if torch.get_default_device().type == "cpu":
        return build_llm(llama_config(cfg.llm_size, **overrides)).to(dtype)
    # on an accelerator: created in ``dtype`` (a 13B LLM takes 26 GB there instead of 52 GB in fp32 first)
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        llm = build_llm(llama_config(cfg.llm_size, **overrides))
    finally:
        torch.set_default_dtype(old)
    return llm.to(dtype)  # buffers computed in fp32 (rotary frequencies) as the CPU build has them


def _check_paths(cfg: SpeechLLMConfig) -> None:
    """Fails before any loading, naming the config key of every weight path that does not exist."""
    missing = [
        f"{key} = {path}"
        for key in ("llm_path", "whisper_path", "beats_path", "salmonn_ckpt", "tokenizer_path")
        if (path := getattr(cfg, key)) and not path.startswith("builtin:") and not Path(path).exists()
    ]
    if missing:
        raise FileNotFoundError(
            "model weights not found: " + "; ".join(missing) + ". Put the files where checkpoints/README.md says, "
            "or point the keys (model.model.<key> in a run config) at them; set a key to null for random init."
        )


def build_speech_llm(cfg: SpeechLLMConfig, with_tokenizer: bool = True, device: str | torch.device | None = None):
    """Assembles `SpeechLLM` (and its tokenizer) from ``cfg``, loading every weight that has a path.

    Args:
        cfg: Paths and shapes.
        with_tokenizer: Also build the tokenizer.
        device: Where a model with random weights only (every weight path None) is built: its tensors are created
            and initialised there, so a real size on a GPU takes seconds instead of minutes of CPU initialisation.
            The same seed on the same device type gives the same weights. A model that loads any weights is
            always built on the CPU, as loading expects.

    Returns:
        ``(model, tokenizer)``; ``tokenizer`` is None when ``with_tokenizer`` is False.
    """
    _check_paths(cfg)
    random = not any(getattr(cfg, k) for k in ("llm_path", "whisper_path", "beats_path", "salmonn_ckpt"))
    if device is not None and random and torch.device(device).type != "cpu":
        with torch.device(device):
            return _build(cfg, with_tokenizer)
    return _build(cfg, with_tokenizer)


def _build(cfg: SpeechLLMConfig, with_tokenizer: bool):
    tok_spec = cfg.tokenizer_path or cfg.llm_path or "builtin:tiny"
    tokenizer = load_tokenizer(tok_spec) if with_tokenizer else None
    whisper = (
        load_whisper_encoder(cfg.whisper_path)
        if cfg.whisper_path
        else build_whisper_encoder(whisper_encoder_config(cfg.whisper_size))
    )
    beats = None
    if cfg.use_beats:
        beats = (
            load_beats(cfg.beats_path)
            if cfg.beats_path
            else BEATs(BEATsConfig.tiny() if cfg.beats_size == "tiny" else BEATsConfig())
        )
    width = whisper.config.d_model + (beats.cfg.encoder_embed_dim if beats is not None else 0)
    qformer = WindowQFormer(
        qformer_config(
            width,
            cfg.qformer_hidden,
            cfg.qformer_layers,
            cfg.qformer_heads,
            cfg.qformer_intermediate,
            cfg.qformer_init_std,
        ),
        cfg.window,
        cfg.stride,
    )
    llm = _build_llm(cfg, len(tokenizer) if tokenizer is not None else None)
    if tokenizer is not None:
        llm.generation_config.eos_token_id = tokenizer.eos_token_id
        llm.generation_config.bos_token_id = tokenizer.bos_token_id
        llm.generation_config.pad_token_id = (
            tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        )
    if cfg.gradient_checkpointing:
        # non-reentrant: reentrant checkpointing can leave LoRA untrained or break DDP (peft #301, #313)
        if hasattr(llm, "activation_checkpointing_enable"):  # transformers >= 5.2x
            llm.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            llm.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    llm = apply_lora(llm, cfg.lora_r, cfg.lora_alpha, cfg.lora_dropout, cfg.lora_targets)
    model = SpeechLLM(
        whisper,
        qformer,
        llm,
        beats,
        cfg.symbol_hidden,
        cfg.symbol_scale,
        cfg.symbol_dropout,
        cfg.symbol_scope,
        cfg.train_speech_path,
        cfg.speech_windows,
        cfg.utterance_token,
    )
    if cfg.salmonn_ckpt:
        report = load_salmonn_checkpoint(model, cfg.salmonn_ckpt)
        log.info(
            "loaded %d tensors from %s; dropped known leftovers: %s",
            len(report.loaded),
            cfg.salmonn_ckpt,
            report.dropped,
        )
    if cfg.lora_scale is not None:
        set_lora_scale(model.llm, cfg.lora_scale)
    return model, tokenizer
