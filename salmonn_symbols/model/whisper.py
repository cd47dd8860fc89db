"""SALMONN's frozen Whisper speech encoder (transformers' ``WhisperEncoder``) and its log-mel front end.

    wav (B, S) float, 16 kHz
      │  log_mel: zero-pad / truncate each clip to 30 s, STFT, 80 mel bins, log10, per-clip clamp
      ▼
    mel (B, 80, 3000)                      10 ms per frame
      │  WhisperEncoder: conv1, conv2 (stride 2), + positions, N layers, final LayerNorm
      ▼
    hidden (B, 1500, D)                    20 ms per frame; D = 1280 for large-v2

The encoder is always built or loaded frozen and in eval mode, with SDPA attention. Weights come from a
Hugging Face folder (only the encoder tensors are read) or from an openai-whisper ``.pt`` file (key names are
converted explicitly). Nothing here picks a device or a compute precision: parameters are fp32 as SALMONN keeps
them, and the caller's autocast decides the rest.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import Tensor
from transformers import WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperEncoder
from whisper.audio import HOP_LENGTH, N_FFT, N_SAMPLES, mel_filters

__all__ = [
    "WhisperEncoder",
    "build_whisper_encoder",
    "load_whisper_encoder",
    "log_mel",
    "save_whisper_encoder",
    "whisper_encoder_config",
]

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------------------
# Log-mel front end
# ----------------------------------------------------------------------------------------------------------------


def log_mel(wav: Tensor, n_mels: int = 80, lengths: Tensor | None = None) -> Tensor:
    """Whisper log-mel features of a batch of 16 kHz clips, each padded with zeros or truncated to 30 s.

    Matches ``WhisperFeatureExtractor`` defaults (what SALMONN calls) and
    ``whisper.log_mel_spectrogram(whisper.pad_or_trim(x))`` clip by clip, except that it runs batched on
    ``wav``'s device. The dynamic-range clamp ``max(log_spec, log_spec.max() - 8)`` uses each clip's own maximum,
    so a clip's features do not depend on what it is batched with.

    Args:
        wav: Waveforms, shape (B, S), any float dtype, 16 kHz mono.
        n_mels: Mel bins: 80 (large-v2 and older) or 128 (large-v3).
        lengths: Valid samples per clip, shape (B,). Samples at or after a clip's length are treated as padding
            (set to zero), so right-padding a batch with anything gives the features of each clip alone.

    Returns:
        Log-mel features, shape (B, n_mels, 3000), float32, on ``wav``'s device.
    """
    if wav.dim() != 2:
        raise ValueError(f"log_mel expects wav of shape (B, S), got {tuple(wav.shape)}")
    # fp32 whatever the caller's autocast: the mel matmul in fp16/bf16 loses the small magnitudes that log10 and
    # the per-clip max - 8 clamp then amplify, and the encoder was trained on fp32 features.
    with torch.autocast(device_type=wav.device.type, enabled=False):
        x = wav.float()  # (B, S)
        if lengths is not None:
            if lengths.shape != (x.shape[0],):
                raise ValueError(f"lengths must have shape ({x.shape[0]},), got {tuple(lengths.shape)}")
            valid = torch.arange(x.shape[1], device=x.device) < lengths.to(x.device)[:, None]  # (B, S)
            x = x.masked_fill(~valid, 0.0)
        # Zero-pad or truncate to exactly 30 s, as whisper.pad_or_trim and WhisperFeatureExtractor do.
        x = F.pad(x, (0, max(0, N_SAMPLES - x.shape[1])))[:, :N_SAMPLES]  # (B, 480000)
        window = torch.hann_window(N_FFT, device=x.device)
        stft = torch.stft(x, N_FFT, HOP_LENGTH, window=window, return_complex=True)  # (B, 201, 3001)
        power = stft[..., :-1].abs() ** 2  # (B, 201, 3000): the last frame is dropped, as in openai-whisper
        mel = mel_filters(x.device, n_mels) @ power  # (n_mels, 201) @ (B, 201, 3000) -> (B, n_mels, 3000)
        log_spec = mel.clamp(min=1e-10).log10()
        clip_max = log_spec.amax(dim=(1, 2), keepdim=True)  # (B, 1, 1): per clip, not over the batch
        log_spec = torch.maximum(log_spec, clip_max - 8.0)
        return (log_spec + 4.0) / 4.0


# ----------------------------------------------------------------------------------------------------------------
# Construction
# ----------------------------------------------------------------------------------------------------------------

# Encoder geometry of the named sizes. "tiny" is a random-init test size (not openai's 39M "tiny"): it keeps the
# real 80 mel bins and 1500 positions so that 30 s of audio still gives 1500 frames. Its init is larger than
# Whisper's 0.02: at width 32 that would make the convolutions' output ~30x smaller than the positional table, so
# every clip would give nearly the same features and nothing could be learned from the audio in a CPU demo.
_SIZES: dict[str, dict[str, float]] = {
    "tiny": dict(d_model=32, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=64, init_std=0.5),
    "large-v2": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120),
}


def whisper_encoder_config(size: str) -> WhisperConfig:
    """The ``WhisperConfig`` of a named encoder size.

    Args:
        size: ``"tiny"`` (random-init test size: d_model 32, 2 layers, 2 heads, FFN 64) or ``"large-v2"``
            (d_model 1280, 32 layers, 20 heads, FFN 5120), both with 80 mel bins and 1500 positions.

    Returns:
        A config whose decoder fields are minimal: only the encoder is ever built from it.
    """
    if size not in _SIZES:
        raise ValueError(f"unknown Whisper size {size!r}; known: {sorted(_SIZES)}")
    enc = _SIZES[size]
    return WhisperConfig(
        num_mel_bins=80,
        max_source_positions=1500,
        **enc,
        # The decoder is never instantiated; keep its fields small so a test can still build a full model.
        decoder_layers=1,
        decoder_attention_heads=enc["encoder_attention_heads"],
        decoder_ffn_dim=enc["encoder_ffn_dim"],
    )


def _set_sdpa(config: WhisperConfig) -> WhisperConfig:
    # PreTrainedModel.__init__ validates a preset implementation and keeps it, so this must happen before
    # construction; SDPA is exact attention (same maths as eager) with fused kernels where available.
    config._attn_implementation = "sdpa"
    return config


def _freeze(encoder: WhisperEncoder) -> WhisperEncoder:
    # SALMONN never trains Whisper; eval() also switches off its dropout and layer-drop.
    encoder.requires_grad_(False)
    return encoder.eval()


def build_whisper_encoder(config: WhisperConfig) -> WhisperEncoder:
    """A randomly initialised, frozen ``WhisperEncoder`` in eval mode with SDPA attention.

    Args:
        config: Whisper config, e.g. from :func:`whisper_encoder_config`. Its attention implementation is set to
            SDPA in place.

    Returns:
        The encoder: ``(B, num_mel_bins, 2 * max_source_positions)`` mel -> ``(B, max_source_positions, d_model)``.
    """
    return _freeze(WhisperEncoder(_set_sdpa(config)))


# ----------------------------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------------------------


def load_whisper_encoder(path: str | os.PathLike) -> WhisperEncoder:
    """Loads a frozen Whisper encoder (eval mode, SDPA attention, fp32 parameters on the CPU).

    Args:
        path: Either a Hugging Face folder (``config.json`` plus ``model.safetensors``, a sharded safetensors
            index, ``pytorch_model.bin`` or a sharded ``.bin`` index), from ``WhisperModel`` (``encoder.*`` keys) or
            ``WhisperForConditionalGeneration`` (``model.encoder.*``): only the encoder tensors are read; or an
            openai-whisper checkpoint file ``{'dims': ..., 'model_state_dict': ...}`` such as ``large-v2.pt``.

    Returns:
        The encoder with exactly the checkpoint's weights.

    Raises:
        FileNotFoundError: ``path`` does not exist, or a folder lacks ``config.json``, weights or a shard.
        ValueError: a file cannot be read, or the encoder tensors have missing, unexpected or mis-shaped keys (all
            of them are listed, with the file's name).
    """
    path = Path(path)
    if path.is_dir():
        ckpt = _read_hf_folder(path)
    elif path.is_file():
        ckpt = _read_openai_file(path)
    else:
        raise FileNotFoundError(f"no Whisper checkpoint at {path}")
    return _assemble(ckpt)


@dataclass
class _Checkpoint:
    """Encoder tensors read from a file, before they are checked against the model."""

    config: WhisperConfig
    state: dict[str, Tensor]  # keyed by WhisperEncoder names
    source: Path  # the file named in errors
    prefix: str = ""  # what the file puts before a WhisperEncoder name (HF folders), for errors
    names: dict[str, str] = field(default_factory=dict)  # WhisperEncoder name -> name in the file (openai), for errors
    unknown: list[str] = field(default_factory=list)  # file keys that map to no encoder key

    def file_key(self, key: str) -> str:
        """The name that a WhisperEncoder key has (or would have) in the file."""
        return self.names.get(key, self.prefix + key)


def _assemble(ckpt: _Checkpoint) -> WhisperEncoder:
    """Builds the encoder on the meta device (no wasted random init), checks the tensors, and assigns them."""
    with torch.device("meta"):
        encoder = WhisperEncoder(_set_sdpa(ckpt.config))
    _check_keys(ckpt, {k: tuple(v.shape) for k, v in encoder.state_dict().items()})
    # fp32 as SALMONN keeps Whisper (openai's .pt files are fp16); compute precision is the caller's autocast.
    state = {k: v.to(torch.float32) if v.is_floating_point() else v for k, v in ckpt.state.items()}
    encoder.load_state_dict(state, strict=True, assign=True)  # strict: _check_keys has already matched every key
    # A non-persistent buffer (none in transformers 5.23) would still be on meta: fail here, not in forward.
    if any(t.is_meta for t in [*encoder.parameters(), *encoder.buffers()]):
        raise RuntimeError("WhisperEncoder has tensors that no checkpoint provides; the loader needs updating")
    return _freeze(encoder)


def _check_keys(ckpt: _Checkpoint, expected: Mapping[str, tuple[int, ...]]) -> None:
    """Raises one ValueError that lists every missing, unexpected and mis-shaped key and names the file."""
    state, name = ckpt.state, ckpt.file_key
    missing = [name(k) for k in expected if k not in state]
    unexpected = ckpt.unknown + [name(k) for k in state if k not in expected]
    shapes = [
        f"{name(k)}: file {tuple(v.shape)} vs model {expected[k]}"
        for k, v in state.items()
        if k in expected and tuple(v.shape) != expected[k]
    ]
    groups = (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", shapes))
    problems = [f"{what} ({len(keys)}): {', '.join(sorted(keys))}" for what, keys in groups if keys]
    if problems:
        head = f"Whisper encoder weights in {ckpt.source} do not match the model:"
        raise ValueError("\n  ".join([head, *problems]))


# --- Hugging Face folder -----------------------------------------------------------------------------------------

_HF_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# WhisperForConditionalGeneration nests the encoder under "model."; a bare WhisperModel does not.
_HF_PREFIXES = ("model.encoder.", "encoder.")


def _read_hf_folder(folder: Path) -> _Checkpoint:
    """Reads config.json and the encoder tensors only, keyed by ``WhisperEncoder`` names."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} has no config.json: not a Hugging Face Whisper folder")
    try:
        config = WhisperConfig.from_pretrained(folder, local_files_only=True)
    except Exception as e:  # JSON or field errors: re-raise naming the file
        raise ValueError(f"cannot read Whisper config {folder / 'config.json'}: {e}") from e
    weights = next((folder / n for n in _HF_FILES if (folder / n).is_file()), None)
    if weights is None:
        raise FileNotFoundError(f"{folder} has none of {', '.join(_HF_FILES)}")
    found: dict[str, Tensor] = {}
    n_total = 0
    for file in _weight_files(weights):
        tensors, n = _encoder_tensors(file)
        found.update(tensors)
        n_total += n
    prefix = next((p for p in _HF_PREFIXES if any(k.startswith(p) for k in found)), None)
    if prefix is None:
        raise ValueError(f"no encoder tensors ({' or '.join(p + '*' for p in _HF_PREFIXES)}) in {weights}")
    state = {k.removeprefix(prefix): v for k, v in found.items() if k.startswith(prefix)}
    log.info("Whisper encoder from %s: %d tensors read, %d others skipped", weights, len(state), n_total - len(state))
    return _Checkpoint(config, state, weights, prefix=prefix)


def _weight_files(weights: Path) -> list[Path]:
    """The weight files behind a single file or a sharded index (each shard once)."""
    if not weights.name.endswith(".index.json"):
        return [weights]
    try:
        weight_map: dict[str, str] = json.loads(weights.read_text())["weight_map"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"cannot read shard index {weights}: {e}") from e
    return [weights.parent / name for name in sorted(set(weight_map.values()))]


def _encoder_tensors(file: Path) -> tuple[dict[str, Tensor], int]:
    """The tensors of one weight file under an encoder prefix, and how many tensors the file holds in all."""
    if not file.is_file():
        raise FileNotFoundError(f"weight file {file} is missing")
    if file.suffix == ".safetensors":
        try:
            with safe_open(file, framework="pt", device="cpu") as f:  # reads only the requested tensors
                keys = list(f.keys())
                return {k: f.get_tensor(k) for k in keys if k.startswith(_HF_PREFIXES)}, len(keys)
        except Exception as e:  # SafetensorError has no stable import path; re-raise naming the file
            raise ValueError(f"cannot read safetensors file {file}: {e}") from e
    state = _torch_load(file)  # .bin: pickles cannot be read partially
    return {k: v for k, v in state.items() if k.startswith(_HF_PREFIXES)}, len(state)


def _torch_load(file: Path) -> dict:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types; re-raise naming the file
        raise ValueError(f"cannot read torch checkpoint {file}: {e}") from e
    if not isinstance(obj, dict):
        raise ValueError(f"{file} holds a {type(obj).__name__}, not a dict")
    return obj


# --- openai-whisper .pt ------------------------------------------------------------------------------------------

# openai-whisper encoder names -> transformers WhisperEncoder names. openai's attn.key has no bias, and neither
# has HF's k_proj, so there is deliberately no "attn.key.bias" entry: a file with one fails as unexpected.
_OPENAI_TOP = {
    "encoder.conv1.weight": "conv1.weight",
    "encoder.conv1.bias": "conv1.bias",
    "encoder.conv2.weight": "conv2.weight",
    "encoder.conv2.bias": "conv2.bias",
    "encoder.positional_embedding": "embed_positions.weight",
    "encoder.ln_post.weight": "layer_norm.weight",
    "encoder.ln_post.bias": "layer_norm.bias",
}
_OPENAI_BLOCK = {
    "attn.query.weight": "self_attn.q_proj.weight",
    "attn.query.bias": "self_attn.q_proj.bias",
    "attn.key.weight": "self_attn.k_proj.weight",
    "attn.value.weight": "self_attn.v_proj.weight",
    "attn.value.bias": "self_attn.v_proj.bias",
    "attn.out.weight": "self_attn.out_proj.weight",
    "attn.out.bias": "self_attn.out_proj.bias",
    "attn_ln.weight": "self_attn_layer_norm.weight",
    "attn_ln.bias": "self_attn_layer_norm.bias",
    "mlp.0.weight": "fc1.weight",
    "mlp.0.bias": "fc1.bias",
    "mlp.2.weight": "fc2.weight",
    "mlp.2.bias": "fc2.bias",
    "mlp_ln.weight": "final_layer_norm.weight",
    "mlp_ln.bias": "final_layer_norm.bias",
}


def _openai_key_map(n_layer: int) -> dict[str, str]:
    """Every encoder key of an openai-whisper model with ``n_layer`` audio blocks, mapped to its HF name."""
    blocks = {f"encoder.blocks.{i}.{o}": f"layers.{i}.{h}" for i in range(n_layer) for o, h in _OPENAI_BLOCK.items()}
    return _OPENAI_TOP | blocks


def _is_openai_leftover(key: str) -> bool:
    # The text decoder, and the alignment-heads mask that some openai checkpoints carry: not part of the encoder.
    return key.startswith("decoder.") or key == "alignment_heads"


def _config_from_dims(dims: Mapping[str, int]) -> WhisperConfig:
    """The HF config of an openai ``ModelDimensions`` dict (the decoder fields only for the record)."""
    return WhisperConfig(
        num_mel_bins=dims["n_mels"],
        max_source_positions=dims["n_audio_ctx"],
        d_model=dims["n_audio_state"],
        encoder_attention_heads=dims["n_audio_head"],
        encoder_layers=dims["n_audio_layer"],
        encoder_ffn_dim=4 * dims["n_audio_state"],  # openai's MLP is always 4x wide
        vocab_size=dims.get("n_vocab", 51865),
        max_target_positions=dims.get("n_text_ctx", 448),
        decoder_attention_heads=dims.get("n_text_head", dims["n_audio_head"]),
        decoder_layers=dims.get("n_text_layer", dims["n_audio_layer"]),
        decoder_ffn_dim=4 * dims.get("n_text_state", dims["n_audio_state"]),
    )


def _read_openai_file(file: Path) -> _Checkpoint:
    """Reads an openai-whisper checkpoint and renames its encoder tensors to ``WhisperEncoder`` names."""
    ckpt = _torch_load(file)
    if not isinstance(ckpt.get("dims"), dict) or not isinstance(ckpt.get("model_state_dict"), dict):
        raise ValueError(f"{file} is not an openai-whisper checkpoint: needs 'dims' and 'model_state_dict' dicts")
    dims, sd = ckpt["dims"], ckpt["model_state_dict"]
    try:
        config = _config_from_dims(dims)
    except KeyError as e:
        raise ValueError(f"{file}: 'dims' lacks {e}") from e
    key_map = _openai_key_map(dims["n_audio_layer"])
    state = {key_map[k]: v for k, v in sd.items() if k in key_map}
    leftovers = sorted(k for k in sd if k not in key_map and _is_openai_leftover(k))
    unknown = sorted(k for k in sd if k not in key_map and not _is_openai_leftover(k))
    if leftovers:
        n_dec = sum(k.startswith("decoder.") for k in leftovers)
        others = [k for k in leftovers if not k.startswith("decoder.")]
        log.info("Whisper encoder from %s: dropped %d decoder.* tensors and %s", file, n_dec, others or "nothing else")
        log.debug("dropped keys: %s", leftovers)
    return _Checkpoint(config, state, file, names={h: o for o, h in key_map.items()}, unknown=unknown)


def save_whisper_encoder(encoder: WhisperEncoder, folder: str | os.PathLike) -> Path:
    """Writes ``encoder`` as a Hugging Face Whisper folder (``config.json`` and ``model.safetensors`` with
    ``encoder.*`` tensors) that `load_whisper_encoder` reads back exactly; the folder is replaced atomically."""
    import tempfile

    from safetensors.torch import save_file

    from ..io import replace_dir

    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    encoder.config.save_pretrained(tmp)
    state = {f"encoder.{k}": v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    save_file(state, tmp / "model.safetensors", metadata={"format": "pt"})
    return replace_dir(tmp, folder)
