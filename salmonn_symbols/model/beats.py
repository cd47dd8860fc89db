"""BEATs audio encoder (Chen et al. 2022, arXiv:2212.09058), SALMONN's non-speech audio branch.

Our own implementation with the official parameter names, so the official checkpoint
``BEATs_iter3_plus_AS2M_finetuned_on_AS2M_cpt2.pt`` (``{'cfg': dict, 'model': state_dict}``) loads strictly.

    wav (B, S) 16 kHz, padding_mask (B, S)
      │  per sample, on its valid length only, fp32: Kaldi fbank (128 mels) of wav * 2**15, normalised
      ▼
    fbank (B, T, 128), T a multiple of 16 ──► frame mask (B, T) ──► token mask (B, N)
      │  Conv2d 16x16 / stride 16, flattened time-major: token n = (time patch n // 8, mel patch n % 8)
      ▼
    (B, N, 512) ─► LayerNorm ─► Linear ─► (B, N, 768), padded tokens zeroed
      │  x + GELU(weight-normed grouped Conv1d(x)) ─► LayerNorm
      ▼
    12 deep-norm post-LN layers: x = LN(a * x + Attn(x)); x = LN(a * x + FFN(x)), a = (2 * 12) ** (1/4)
      │  Attn = SDPA with a gated relative-position bias (table shared by all layers) + padded keys at -inf
      ▼
    features (B, N, 768), token mask (B, N): N = 1496 for 30 s

Unlike the official code, the fbank of each waveform is computed on its valid samples only and frames past its
last full patch are dropped, so a clip gives the same valid-token features alone or in a padded batch.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from ..io import atomic_write
from .fbank import FRAME_LENGTH, FRAME_SHIFT, NUM_MEL_BINS, batched_fbank

__all__ = ["BEATs", "BEATsConfig", "beats_token_count", "load_beats", "official_state_dict", "save_beats"]

logger = logging.getLogger(__name__)

PATCH = 16  # frames x mel bins per patch: N = (frames // 16) * 8 tokens

# The official pos_conv uses the legacy nn.utils.weight_norm, whose parameters are named weight_g / weight_v.
_LEGACY_TO_MODERN = {
    "encoder.pos_conv.0.weight_g": "encoder.pos_conv.0.parametrizations.weight.original0",
    "encoder.pos_conv.0.weight_v": "encoder.pos_conv.0.parametrizations.weight.original1",
}
_MODERN_TO_LEGACY = {v: k for k, v in _LEGACY_TO_MODERN.items()}
_REL_BIAS_KEY = "encoder.layers.{}.self_attn.relative_attention_bias.weight"


@dataclass
class BEATsConfig:
    """Architecture of BEATs, with the field names of the official ``cfg`` dict.

    Defaults are those of the iter3+ AS2M checkpoints (cpt2 fine-tuned: ``finetuned_model=True``, 527 AudioSet
    classes). Dropouts, layer drop and gradient decay only act in training mode.
    """

    input_patch_size: int = 16
    embed_dim: int = 512  # patch embedding width
    conv_bias: bool = False  # bias of the patch embedding
    encoder_layers: int = 12
    encoder_embed_dim: int = 768
    encoder_ffn_embed_dim: int = 3072
    encoder_attention_heads: int = 12
    activation_fn: str = "gelu"
    layer_wise_gradient_decay_ratio: float = 0.6
    layer_norm_first: bool = False  # pre-LN; the official code forbids it together with deep_norm
    deep_norm: bool = True
    dropout: float = 0.0
    attention_dropout: float = 0.0
    activation_dropout: float = 0.0
    encoder_layerdrop: float = 0.05
    dropout_input: float = 0.0
    conv_pos: int = 128  # kernel size of the convolutional position embedding
    conv_pos_groups: int = 16
    relative_position_embedding: bool = True
    num_buckets: int = 320
    max_distance: int = 800
    gru_rel_pos: bool = True  # gate the relative-position bias by the query
    finetuned_model: bool = True  # holds the AudioSet `predictor` head (unused for features)
    predictor_dropout: float = 0.0
    predictor_class: int = 527

    def __post_init__(self) -> None:
        if self.encoder_embed_dim % self.encoder_attention_heads:
            raise ValueError(f"encoder_embed_dim {self.encoder_embed_dim} not divisible by the number of heads")
        if self.activation_fn not in _ACTIVATIONS:
            raise ValueError(f"activation_fn {self.activation_fn!r} not supported; one of {sorted(_ACTIVATIONS)}")
        if self.deep_norm and self.layer_norm_first:
            raise ValueError("deep_norm and layer_norm_first are exclusive")
        if self.input_patch_size != PATCH:  # the official frame-to-token mask reduction assumes 16x16 patches
            raise ValueError(f"input_patch_size must be {PATCH} (every released BEATs), got {self.input_patch_size}")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BEATsConfig:
        """Builds a config from an official ``cfg`` dict; unknown keys are logged as a warning and ignored."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            logger.warning("BEATs cfg: ignoring unknown keys %s", unknown)
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def tiny(cls) -> BEATsConfig:
        """A ~100 KB model of the same structure (patch 16, 128 mels, so the same token counts) for tests."""
        return cls(
            embed_dim=16,
            encoder_layers=2,
            encoder_embed_dim=32,
            encoder_ffn_embed_dim=64,
            encoder_attention_heads=2,
            conv_pos=16,
            conv_pos_groups=4,
            num_buckets=32,
            max_distance=64,
            predictor_class=5,
        )


def beats_token_count(num_samples: int) -> int:
    """Number of output tokens N for an unpadded waveform of ``num_samples`` samples (1496 for 30 s)."""
    frames = 0 if num_samples < FRAME_LENGTH else 1 + (num_samples - FRAME_LENGTH) // FRAME_SHIFT
    return (frames // PATCH) * (NUM_MEL_BINS // PATCH)


def _gelu_fp32(x: Tensor) -> Tensor:
    return F.gelu(x.float()).type_as(x)  # the official FFN computes GELU in fp32 even under autocast


_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {
    "gelu": _gelu_fp32,
    "gelu_accurate": partial(F.gelu, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
    "linear": lambda x: x,
}


def _relative_position_bucket(rel: Tensor, num_buckets: int, max_distance: int) -> Tensor:
    """T5-style bidirectional buckets of ``rel = key - query``: exact near 0, log-spaced up to max_distance."""
    half = num_buckets // 2  # one half per direction; keys to the right get the upper half
    exact = half // 2
    dist = rel.abs()
    # Same float op order as the official code so that values at bucket edges fall the same way; the clamp
    # only avoids log(0), whose entries take the exact branch.
    log_scaled = torch.log(dist.clamp(min=1).float() / exact) / math.log(max_distance / exact) * (half - exact)
    far = (exact + log_scaled.long()).clamp(max=half - 1)
    return (rel > 0).long() * half + torch.where(dist < exact, dist, far)


def _reduce_padding_mask(mask: Tensor, length: int) -> Tensor:
    """The official ``forward_padding_mask``: drop the trailing remainder, cut the rest into ``length`` equal
    runs, and call a run padded when all of it is padded. (B, T) -> (B, length)."""
    extra = mask.shape[1] % length
    if extra:
        mask = mask[:, :-extra]
    return mask.view(mask.shape[0], length, -1).all(-1)


class _SelfAttention(nn.Module):
    """Multi-head self-attention with the official (fairseq) parameter names and a gated relative bias."""

    def __init__(self, cfg: BEATsConfig, owns_bias_table: bool) -> None:
        super().__init__()
        d, h = cfg.encoder_embed_dim, cfg.encoder_attention_heads
        self.num_heads, self.head_dim, self.dropout = h, d // h, cfg.attention_dropout
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d, d) for _ in range(4))
        if owns_bias_table:  # layer 0 only; the encoder hands its bias to every layer
            self.relative_attention_bias = nn.Embedding(cfg.num_buckets, h)
        self.grep_linear = nn.Linear(self.head_dim, 8) if cfg.gru_rel_pos else None
        if cfg.gru_rel_pos:
            self.grep_a = nn.Parameter(torch.ones(1, h, 1, 1))

    def forward(self, x: Tensor, key_mask: Tensor | None, pos_bias: Tensor | None) -> Tensor:
        """x (B, N, D); key_mask (B, 1, 1, N) additive, -inf at padded keys; pos_bias (1, H, N, N)."""
        b, n, _ = x.shape
        q, k, v = (
            p(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            for p in (self.q_proj, self.k_proj, self.v_proj)
        )  # (B, H, N, hd) each
        bias = None
        if pos_bias is not None:
            bias = self._gate(q) * pos_bias if self.grep_linear is not None else pos_bias  # (B|1, H, N, N)
        if key_mask is not None:
            bias = key_mask if bias is None else bias + key_mask
        # SDPA's 1/sqrt(hd) scaling equals the official q pre-scaling; its row-max shift is a softmax no-op.
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=None if bias is None else bias.to(q.dtype), dropout_p=self.dropout * self.training
        )  # (B, H, N, hd)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, -1))

    def _gate(self, q: Tensor) -> Tensor:
        """Per-head, per-query scale of the shared bias from the unscaled query (B, H, N, hd) -> (B, H, N, 1)."""
        gate_a, gate_b = torch.sigmoid(self.grep_linear(q).unflatten(-1, (2, 4)).sum(-1)).chunk(2, dim=-1)
        return gate_a * (gate_b * self.grep_a - 1.0) + 2.0


class _EncoderLayer(nn.Module):
    """Transformer layer: deep-norm post-LN (the checkpoint) or pre-LN (``layer_norm_first``)."""

    def __init__(self, cfg: BEATsConfig, owns_bias_table: bool) -> None:
        super().__init__()
        d = cfg.encoder_embed_dim
        self.self_attn = _SelfAttention(cfg, owns_bias_table)
        self.self_attn_layer_norm = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, cfg.encoder_ffn_embed_dim)
        self.fc2 = nn.Linear(cfg.encoder_ffn_embed_dim, d)
        self.final_layer_norm = nn.LayerNorm(d)
        self.activation = _ACTIVATIONS[cfg.activation_fn]
        self.pre_norm = cfg.layer_norm_first
        # DeepNet: up-weighting the residual by (2 * layers)^(1/4) keeps post-LN updates bounded in deep stacks.
        self.alpha = (2 * cfg.encoder_layers) ** 0.25 if cfg.deep_norm else 1.0
        self.dropout, self.activation_dropout = nn.Dropout(cfg.dropout), nn.Dropout(cfg.activation_dropout)

    def _ffn(self, x: Tensor) -> Tensor:
        return self.dropout(self.fc2(self.activation_dropout(self.activation(self.fc1(x)))))

    def forward(self, x: Tensor, key_mask: Tensor | None, pos_bias: Tensor | None) -> Tensor:
        if self.pre_norm:
            x = x + self.dropout(self.self_attn(self.self_attn_layer_norm(x), key_mask, pos_bias))
            return x + self._ffn(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.alpha + self.dropout(self.self_attn(x, key_mask, pos_bias)))
        return self.final_layer_norm(x * self.alpha + self._ffn(x))  # (B, N, D)


class _Encoder(nn.Module):
    """Convolutional position embedding, then the transformer layers."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.encoder_embed_dim
        conv = nn.Conv1d(d, d, kernel_size=cfg.conv_pos, padding=cfg.conv_pos // 2, groups=cfg.conv_pos_groups)
        # dim=2: one magnitude g per kernel tap, g of shape (1, 1, K), as the official legacy weight_norm(dim=2).
        self.pos_conv = nn.Sequential(weight_norm(conv, name="weight", dim=2), nn.GELU())
        self.layer_norm = nn.LayerNorm(d)
        self.layers = nn.ModuleList(
            _EncoderLayer(cfg, owns_bias_table=i == 0 and cfg.relative_position_embedding)
            for i in range(cfg.encoder_layers)
        )
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: Tensor, padding_mask: Tensor) -> Tensor:
        """x (B, N, D), padding_mask (B, N) bool -> (B, N, D)."""
        x = x.masked_fill(padding_mask[..., None], 0.0)  # so the conv sees padding as its own zero padding
        # An even kernel with padding k // 2 gives N + 1 outputs; keeping the first N is fairseq's SamePad.
        x = x + self._pos_embedding(x.transpose(1, 2))[..., : x.shape[1]].transpose(1, 2).to(x.dtype)  # (B, N, D)
        if not self.cfg.layer_norm_first:
            x = self.layer_norm(x)
        x = self.dropout(x)
        # -inf on padded keys (every row keeps >= 1 valid key, so softmax stays finite). Built even when nothing
        # is padded: an all-zero mask costs nothing next to the position bias, and asking would sync the host.
        key_mask = torch.zeros(padding_mask.shape, dtype=torch.float32, device=x.device)
        key_mask = key_mask.masked_fill(padding_mask, float("-inf"))[:, None, None, :]  # (B, 1, 1, N)
        pos_bias = self._position_bias(x.shape[1])
        decay = self.cfg.layer_wise_gradient_decay_ratio
        for layer in self.layers:
            if decay != 1.0 and x.requires_grad:  # official layer-wise gradient decay: scale grads flowing back
                x.register_hook(lambda grad: grad * decay)
            if self.training and torch.rand(()).item() < self.cfg.encoder_layerdrop:
                continue
            x = layer(x, key_mask, pos_bias)
        return self.layer_norm(x) if self.cfg.layer_norm_first else x

    def _pos_embedding(self, x: Tensor) -> Tensor:
        """The grouped positional conv and GELU in fp32, (B, D, N) -> (B, D, N + 1).

        fp32 whatever the autocast or parameter dtype: cuDNN's bf16 kernels for this 128-tap, 16-group conv run
        about 9x slower than its fp32 ones on an H100, and fp32 is also what the checkpoint was trained with.
        """
        conv = self.pos_conv[0]
        with torch.autocast(device_type=x.device.type, enabled=False):
            bias = None if conv.bias is None else conv.bias.float()
            y = F.conv1d(x.float(), conv.weight.float(), bias, padding=conv.padding, groups=conv.groups)
            return self.pos_conv[1](y)

    def _position_bias(self, n: int) -> Tensor | None:
        """Bias (1, H, N, N) from layer 0's bucket table, shared by all layers as in the official model."""
        if not self.cfg.relative_position_embedding:
            return None
        table = self.layers[0].self_attn.relative_attention_bias
        pos = torch.arange(n, device=table.weight.device)
        buckets = _relative_position_bucket(pos[None, :] - pos[:, None], self.cfg.num_buckets, self.cfg.max_distance)
        return table(buckets).permute(2, 0, 1).unsqueeze(0)  # (N, N, H) -> (1, H, N, N)


class BEATs(nn.Module):
    """BEATs encoder: 16 kHz waveforms to patch-token features. Random init; load weights with `load_beats`."""

    def __init__(self, cfg: BEATsConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_embedding = nn.Conv2d(1, cfg.embed_dim, kernel_size=PATCH, stride=PATCH, bias=cfg.conv_bias)
        self.layer_norm = nn.LayerNorm(cfg.embed_dim)
        self.post_extract_proj = (
            nn.Linear(cfg.embed_dim, cfg.encoder_embed_dim) if cfg.embed_dim != cfg.encoder_embed_dim else None
        )
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.encoder = _Encoder(cfg)
        # Kept so the fine-tuned checkpoint loads strictly; SALMONN uses the features, not the AudioSet logits.
        self.predictor = nn.Linear(cfg.encoder_embed_dim, cfg.predictor_class) if cfg.finetuned_model else None

    min_samples = FRAME_LENGTH + FRAME_SHIFT * (PATCH - 1)  # 2800 samples (0.175 s) fill one time patch

    def preprocess(
        self, wav: Tensor, padding_mask: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Normalised Kaldi fbank of each waveform's valid samples, in fp32 whatever the autocast state.

        The whole batch is framed at once: a frame only reads its own 25 ms, so every valid frame equals what
        Kaldi's fbank gives for the clip alone (bit for bit in fp32), and no per-clip loop or host sync is needed.

        Args:
            wav: (B, S) float waveforms at 16 kHz.
            padding_mask: (B, S) bool, True at padded samples; padding must be on the right.
            lengths: (B,) valid samples per clip, trusted as given (no checks, no host sync); overrides
                ``padding_mask``.

        Returns:
            fbank (B, T, 128) fp32, zero past each clip, with T cut to a multiple of the patch size (the patch
            conv ignores the remainder anyway), and the frame mask (B, T) bool, True at padded frames.
        """
        if lengths is None:
            lengths = torch.tensor(self._valid_lengths(wav, padding_mask), device=wav.device)
        # Autocast would run the fbank's FFT power and mel matmul in bf16/fp16 and shift the log-mels the
        # checkpoint was trained on; the official code computes them in fp32.
        with torch.autocast(device_type=wav.device.type, enabled=False):
            fbank = batched_fbank(wav)  # (B, T, 128)
        T = fbank.shape[1] // PATCH * PATCH
        fbank = fbank[:, :T]
        frames = ((lengths - FRAME_LENGTH).clamp_min(0) // FRAME_SHIFT + 1) // PATCH * PATCH  # (B,) whole patches
        mask = torch.arange(T, device=wav.device) >= frames[:, None]  # (B, T)
        return fbank.masked_fill(mask[..., None], 0.0), mask

    def _valid_lengths(self, wav: Tensor, padding_mask: Tensor | None) -> list[int]:
        if wav.dim() != 2:
            raise ValueError(f"wav must be (B, S), got shape {tuple(wav.shape)}")
        if padding_mask is None:
            lengths = [wav.shape[1]] * wav.shape[0]
        else:
            if padding_mask.shape != wav.shape or padding_mask.dtype != torch.bool:
                got = f"{padding_mask.dtype} {tuple(padding_mask.shape)}"
                raise ValueError(f"padding_mask must be bool of shape {tuple(wav.shape)}, got {got}")
            valid = (~padding_mask).sum(1)  # (B,)
            if not torch.equal(torch.arange(wav.shape[1], device=wav.device) >= valid[:, None], padding_mask):
                raise ValueError("padding_mask must pad on the right: False for every sample, then True")
            lengths = valid.tolist()
        if min(lengths) < self.min_samples:
            raise ValueError(f"BEATs needs >= {self.min_samples} valid samples per waveform, got {lengths}")
        return lengths

    def forward(
        self, wav: Tensor, padding_mask: Tensor | None = None, lengths: Tensor | None = None
    ) -> tuple[Tensor, Tensor]:
        """Encodes waveforms into patch tokens.

        Args:
            wav: (B, S) float waveforms, 16 kHz mono.
            padding_mask: (B, S) bool, True at padded samples (right padding), or None.
            lengths: (B,) valid samples per clip, trusted as given; avoids the checks' host syncs.

        Returns:
            features (B, N, encoder_embed_dim) with N = time patches x 8, time-major; padded tokens hold
            unmasked garbage, as in the official model. Token mask (B, N) bool, True at padded tokens.
        """
        fbank, frame_mask = self.preprocess(wav, padding_mask, lengths)  # (B, T, 128), (B, T)
        x = self.patch_embedding(fbank.unsqueeze(1))  # (B, C, T / 16, 8)
        x = self.layer_norm(x.flatten(2).transpose(1, 2))  # (B, N, C); token n = (time n // 8, mel n % 8)
        # T = 16 * N / 8, so each token gets 2 frames of its own time patch: exact at patch granularity.
        token_mask = _reduce_padding_mask(frame_mask, x.shape[1])  # (B, N)
        if self.post_extract_proj is not None:
            x = self.post_extract_proj(x)  # (B, N, D)
        return self.encoder(self.dropout_input(x), token_mask), token_mask


def official_state_dict(model: BEATs) -> dict[str, Tensor]:
    """The model's weights under the official names: legacy ``weight_g``/``weight_v`` for the position conv,
    and layers 1.. carrying the shared relative-bias table again, as the official module's state_dict does."""
    state = {_MODERN_TO_LEGACY.get(k, k): v for k, v in model.state_dict().items()}
    table = state.get(_REL_BIAS_KEY.format(0))
    if table is not None:  # the same tensor object, so torch.save stores it once
        state.update({_REL_BIAS_KEY.format(i): table for i in range(1, model.cfg.encoder_layers)})
    return state


def save_beats(model: BEATs, path: str | os.PathLike) -> Path:
    """Writes ``{'cfg': dict, 'model': official_state_dict(model)}`` atomically, the official file layout."""
    payload = {"cfg": asdict(model.cfg), "model": official_state_dict(model)}
    return atomic_write(path, lambda f: torch.save(payload, f))


def _read_checkpoint(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: BEATs checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle, zip and weights-only errors all mean: not a usable torch file
        first_line = (str(e).splitlines() or [""])[0]
        raise ValueError(f"{path}: not a readable torch checkpoint ({type(e).__name__}: {first_line})") from e
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("cfg"), dict) or not isinstance(ckpt.get("model"), dict):
        found = sorted(map(str, ckpt)) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected a dict with a 'cfg' dict and a 'model' state dict, found {found}")
    if extra := sorted(set(ckpt) - {"cfg", "model"}):
        logger.warning("%s: ignoring top-level keys %s", path, extra)
    return ckpt


def _match_state_dict(state: dict[str, Any], model: BEATs, path: Path) -> dict[str, Tensor]:
    """Maps official names to the model's and checks every key; raises ValueError listing all mismatches."""
    expected = model.state_dict()
    cfg = model.cfg
    shared = cfg.encoder_layers if cfg.relative_position_embedding else 1  # layers 1.. may repeat layer 0's table
    aliases = {_REL_BIAS_KEY.format(i) for i in range(1, shared)}
    mapped: dict[str, Tensor] = {}
    unexpected: list[str] = []
    shapes: dict[str, str] = {}
    found_aliases: dict[str, Any] = {}
    for key, value in state.items():
        name = _LEGACY_TO_MODERN.get(key, key)
        if key in aliases:
            found_aliases[key] = value
        elif name not in expected or name in mapped or name in shapes:  # unknown, or given under both names
            unexpected.append(key)
        elif not isinstance(value, Tensor) or value.shape != expected[name].shape:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            shapes[name] = f"{key}: file {got} vs model {tuple(expected[name].shape)}"
        else:
            mapped[name] = value
    table = mapped.get(_REL_BIAS_KEY.format(0))
    problems = {
        "missing keys": [_MODERN_TO_LEGACY.get(k, k) for k in expected if k not in mapped and k not in shapes],
        "unexpected keys": unexpected,
        "shape mismatches": list(shapes.values()),
        "aliases differing from layer 0": [k for k, v in found_aliases.items() if not _equal(v, table)],
    }
    if any(problems.values()):
        detail = "; ".join(f"{what}: {items}" for what, items in problems.items() if items)
        raise ValueError(f"{path}: checkpoint does not match BEATs built from its cfg; {detail}")
    return mapped


def _equal(a: Any, b: Tensor | None) -> bool:
    return isinstance(a, Tensor) and b is not None and a.shape == b.shape and torch.equal(a, b)


def load_beats(path: str | os.PathLike) -> BEATs:
    """Loads an official BEATs checkpoint (``{'cfg', 'model'}``) strictly and returns the model in eval mode.

    Legacy ``weight_g``/``weight_v`` names are mapped, and layer 1.. copies of the shared relative-bias table
    are accepted only if equal to layer 0's. Missing, unexpected or mis-shaped keys raise ``ValueError``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not a torch checkpoint, wrong layout, bad cfg, or a state dict that does not match.
    """
    path = Path(path)
    ckpt = _read_checkpoint(path)
    try:
        cfg = BEATsConfig.from_dict(ckpt["cfg"])
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: invalid BEATs cfg: {e}") from e
    logger.info("%s: BEATs cfg %s", path, asdict(cfg))
    model = BEATs(cfg)
    model.load_state_dict(_match_state_dict(ckpt["model"], model, path), strict=True)
    return model.eval()
