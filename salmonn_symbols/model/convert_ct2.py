"""CTranslate2 ``model.bin`` files: a reader, a writer, and a Whisper model mapped onto openai-whisper's checkpoint.

    model.bin (or its parts, concatenated)
      │  read_ct2: header, variables (name, shape, dtype, bytes), aliases; int8/int16 weights de-quantized
      ▼
    CT2Model {"encoder/layer_0/self_attention/linear_0/weight": (3D, D), ...}
      │  whisper_state_dict: q,k,v and k,v split, gamma/beta -> LayerNorm weight/bias, dims from shapes
      ▼
    {"dims": {...}, "model_state_dict": {"encoder.blocks.0.attn.query.weight": (D, D), ...}}   whisper-<size>.pt

The binary layout (CTranslate2 binary versions 4 to 6, little-endian) is::

    u32 version | str spec | u32 revision | u32 n | n x variable | u32 n_aliases | n_aliases x (str alias, str name)
    variable = str name | u8 rank | rank x u32 dim | u8 dtype | u32 n_bytes | bytes
    str      = u16 length (with the trailing NUL) | UTF-8 bytes | NUL

``dtype`` follows CTranslate2's ``DataType`` enum. Nothing here imports ``ctranslate2``.
"""

from __future__ import annotations

import os
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from ..io import atomic_write

__all__ = ["CT2Model", "convert_ct2_whisper", "read_ct2", "whisper_state_dict", "write_ct2"]

# CTranslate2's DataType enum, in order (include/ctranslate2/types.h).
_DTYPES = (torch.float32, torch.int8, torch.int16, torch.int32, torch.float16, torch.bfloat16)
_VERSIONS = (4, 5, 6)  # the binary versions with a dtype id per variable; 6 is what CTranslate2 3.x/4.x write


@dataclass
class CT2Model:
    """The content of a ``model.bin``.

    Attributes:
        spec: Model specification name, e.g. ``"WhisperSpec"``.
        revision: Specification revision.
        variables: Every stored variable by name; int8/int16 weights are already de-quantized to float32 and their
            ``*_scale`` variables removed. Scalars (attributes such as ``num_heads``) are 0-d tensors.
        aliases: Alias name -> name of the variable it shares (e.g. a tied output projection).
        source: What was read, for error messages.
    """

    spec: str
    revision: int
    variables: dict[str, Tensor]
    aliases: dict[str, str] = field(default_factory=dict)
    source: str = "model.bin"

    def scalar(self, name: str) -> int:
        """An integer attribute (a 0-d variable), e.g. ``"encoder/num_heads"``."""
        value = self.variables.get(name)
        if value is None or value.dim() != 0:
            raise ValueError(f"{self.source}: no scalar variable {name!r}")
        return int(value.item())


# ----------------------------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------------------------


class _Cursor:
    """Sequential little-endian reads over the file's bytes; a short read names the file and the offset."""

    def __init__(self, data: bytes, source: str):
        self.data, self.pos, self.source = memoryview(data), 0, source

    def take(self, n: int, what: str) -> memoryview:
        if self.pos + n > len(self.data):
            raise ValueError(
                f"{self.source} is truncated or not a CTranslate2 model: {what} needs {n} bytes at offset "
                f"{self.pos}, the file has {len(self.data)}"
            )
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def unpack(self, fmt: str, what: str) -> tuple:
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))

    def string(self, what: str) -> str:
        (n,) = self.unpack("H", f"{what} length")
        raw = bytes(self.take(n, what))
        if n == 0 or raw[-1] != 0:
            raise ValueError(f"{self.source}: {what} at offset {self.pos - n} is not a NUL-terminated string")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError(f"{self.source}: {what} at offset {self.pos - n} is not UTF-8") from None


def _read_variable(cur: _Cursor) -> tuple[str, Tensor]:
    name = cur.string("variable name")
    (rank,) = cur.unpack("B", f"rank of {name}")
    shape = cur.unpack(f"{rank}I", f"shape of {name}")
    dtype_id, n_bytes = cur.unpack("BI", f"dtype of {name}")
    if dtype_id >= len(_DTYPES):
        raise ValueError(f"{cur.source}: variable {name} has unknown dtype id {dtype_id}")
    dtype = _DTYPES[dtype_id]
    numel = 1
    for d in shape:
        numel *= d
    if n_bytes != numel * dtype.itemsize:
        raise ValueError(f"{cur.source}: variable {name} {tuple(shape)} {dtype} claims {n_bytes} bytes")
    raw = bytearray(cur.take(n_bytes, f"data of {name}"))  # a copy: aligned, writable, owned by the tensor
    tensor = torch.frombuffer(raw, dtype=dtype) if n_bytes else torch.empty(0, dtype=dtype)
    return name, tensor.reshape(shape)


def _dequantize(variables: dict[str, Tensor], source: str) -> None:
    """Replaces int8/int16 weights by float32 ``q / scale`` (per row for int8), as CTranslate2 de-quantizes.

    Only ``*weight`` variables are ever quantized (CTranslate2's rule); other integer arrays, such as string
    attributes stored as int8 bytes, are left as they are.
    """
    quantized = [n for n, v in variables.items() if n.endswith("weight") and v.dtype in (torch.int8, torch.int16)]
    for name in quantized:
        scale = variables.pop(f"{name}_scale", None)
        if scale is None:
            raise ValueError(f"{source}: quantized variable {name} has no {name}_scale")
        scale = scale.float()
        q = variables[name].float()
        variables[name] = q / (scale[:, None] if scale.dim() == 1 else scale)


def read_ct2(paths: str | os.PathLike | Sequence[str | os.PathLike]) -> CT2Model:
    """Reads a CTranslate2 ``model.bin`` (or the parts of one split file, in order).

    Args:
        paths: The file, or its parts to concatenate.

    Returns:
        The specification name and revision, every variable (int8/int16 weights de-quantized) and the aliases.

    Raises:
        FileNotFoundError: a file is missing.
        ValueError: the bytes are not a CTranslate2 model of a supported binary version (the message names the
            file, and the offset or variable where reading failed).
    """
    files = [Path(paths)] if isinstance(paths, str | os.PathLike) else [Path(p) for p in paths]
    source = " + ".join(str(p) for p in files)
    for p in files:
        if not p.is_file():
            raise FileNotFoundError(f"CTranslate2 model file not found: {p}")
    cur = _Cursor(b"".join(p.read_bytes() for p in files), source)
    (version,) = cur.unpack("I", "binary version")
    if version not in _VERSIONS:
        raise ValueError(
            f"{source}: CTranslate2 binary version {version} is not supported (expected one of {_VERSIONS})"
        )
    spec = cur.string("spec name")
    (revision,) = cur.unpack("I", "spec revision")
    (n_vars,) = cur.unpack("I", "variable count")
    variables = dict(_read_variable(cur) for _ in range(n_vars))
    (n_alias,) = cur.unpack("I", "alias count")
    aliases = {}
    for _ in range(n_alias):
        alias = cur.string("alias")
        aliases[alias] = cur.string(f"target of alias {alias}")
    if cur.pos != len(cur.data):
        raise ValueError(
            f"{source}: {len(cur.data) - cur.pos} unread bytes after the aliases (a missing or extra part?)"
        )
    _dequantize(variables, source)
    return CT2Model(spec, revision, variables, aliases, source)


# ----------------------------------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------------------------------


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8") + b"\0"
    return struct.pack("<H", len(raw)) + raw


def _pack_variable(name: str, value: Tensor) -> bytes:
    if value.dtype not in _DTYPES:
        raise ValueError(f"variable {name}: dtype {value.dtype} cannot be stored in a CTranslate2 model")
    data = value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
    head = struct.pack(f"<B{value.dim()}I", value.dim(), *value.shape)
    return _pack_string(name) + head + struct.pack("<BI", _DTYPES.index(value.dtype), len(data)) + data


def write_ct2(
    path: str | os.PathLike,
    spec: str,
    revision: int,
    variables: Mapping[str, Tensor],
    aliases: Mapping[str, str] | None = None,
) -> Path:
    """Writes a CTranslate2 ``model.bin`` (binary version 6) atomically, variables in name order as CTranslate2 does.

    Args:
        path: Destination file.
        spec: Specification name, e.g. ``"WhisperSpec"``.
        revision: Specification revision.
        variables: Tensors by name, in any of CTranslate2's dtypes; attributes are 0-d tensors.
        aliases: Alias name -> variable name.

    Returns:
        The path written.
    """
    chunks = [struct.pack("<I", 6), _pack_string(spec), struct.pack("<II", revision, len(variables))]
    chunks += [_pack_variable(name, variables[name]) for name in sorted(variables)]
    chunks.append(struct.pack("<I", len(aliases or {})))
    chunks += [_pack_string(a) + _pack_string(t) for a, t in sorted((aliases or {}).items())]
    return atomic_write(path, lambda f: f.writelines(chunks))


# ----------------------------------------------------------------------------------------------------------------
# Whisper -> openai-whisper
# ----------------------------------------------------------------------------------------------------------------

# Attributes whose values openai-whisper's architecture fixes: pre-norm blocks, GELU (CTranslate2's
# ActivationType 3), learned absolute positions, no embedding scale. A file with other values is another model.
_FIXED_ATTRIBUTES = {
    "decoder/pre_norm": 1,
    "decoder/activation": 3,
    "decoder/alibi": 0,
    "decoder/scale_embeddings": 0,
    "decoder/start_from_zero_embedding": 0,
}
# Read for the record or for dims, or not needed: alignment heads are a decoding-time setting, and the output
# projection is tied to the token embedding in openai-whisper (checked below when it is not an alias).
_IGNORED = {"encoder/num_heads", "decoder/num_heads", "decoder/alignment_heads", "decoder/alignment_layer"}
_LN = {"gamma": "weight", "beta": "bias"}


def _split(t: Tensor, n: int, name: str, source: str) -> list[Tensor]:
    if t.shape[0] % n:
        raise ValueError(f"{source}: {name} {tuple(t.shape)} cannot hold {n} stacked projections")
    return list(t.chunk(n, dim=0))


class _Mapper:
    """Consumes CTranslate2 variables into an openai-whisper state dict, remembering what it used."""

    def __init__(self, model: CT2Model):
        self.model, self.used, self.out = model, set(), {}

    def get(self, name: str) -> Tensor:
        if name not in self.model.variables:
            raise ValueError(f"{self.model.source}: Whisper variable {name} is missing")
        self.used.add(name)
        return self.model.variables[name]

    def copy(self, src: str, dst: str) -> None:
        self.out[dst] = self.get(src)

    def layer_norm(self, src: str, dst: str) -> None:
        for ct2, pt in _LN.items():
            self.copy(f"{src}/{ct2}", f"{dst}.{pt}")

    def linear(self, src: str, dst: str) -> None:
        self.copy(f"{src}/weight", f"{dst}.weight")
        self.copy(f"{src}/bias", f"{dst}.bias")

    def stacked(self, src: str, dsts: Sequence[str]) -> None:
        """Splits a fused projection; the key's bias is dropped (openai's key has none)."""
        weights = _split(self.get(f"{src}/weight"), len(dsts), f"{src}/weight", self.model.source)
        biases = _split(self.get(f"{src}/bias"), len(dsts), f"{src}/bias", self.model.source)
        for dst, w, b in zip(dsts, weights, biases, strict=True):
            self.out[f"{dst}.weight"] = w.clone()
            # A key bias adds q.b to every logit of a query's row, which softmax cancels, so dropping it is exact;
            # CTranslate2's converter stores zeros there anyway.
            if not dst.endswith(".key"):
                self.out[f"{dst}.bias"] = b.clone()

    def block(self, src: str, dst: str, cross: bool) -> None:
        self.layer_norm(f"{src}/self_attention/layer_norm", f"{dst}.attn_ln")
        self.stacked(f"{src}/self_attention/linear_0", [f"{dst}.attn.{p}" for p in ("query", "key", "value")])
        self.linear(f"{src}/self_attention/linear_1", f"{dst}.attn.out")
        if cross:
            self.layer_norm(f"{src}/attention/layer_norm", f"{dst}.cross_attn_ln")
            self.linear(f"{src}/attention/linear_0", f"{dst}.cross_attn.query")
            self.stacked(f"{src}/attention/linear_1", [f"{dst}.cross_attn.{p}" for p in ("key", "value")])
            self.linear(f"{src}/attention/linear_2", f"{dst}.cross_attn.out")
        self.layer_norm(f"{src}/ffn/layer_norm", f"{dst}.mlp_ln")
        self.linear(f"{src}/ffn/linear_0", f"{dst}.mlp.0")
        self.linear(f"{src}/ffn/linear_1", f"{dst}.mlp.2")


def _n_layers(model: CT2Model, stack: str) -> int:
    pattern = re.compile(rf"{stack}/layer_(\d+)/")
    ids = {int(m.group(1)) for n in model.variables if (m := pattern.match(n))}
    if ids != set(range(len(ids))):
        raise ValueError(f"{model.source}: {stack} layers {sorted(ids)} are not numbered 0..N-1")
    return len(ids)


def _check_attributes(model: CT2Model) -> None:
    if model.spec != "WhisperSpec":
        raise ValueError(f"{model.source} holds a {model.spec}, not a CTranslate2 WhisperSpec model")
    for name, expected in _FIXED_ATTRIBUTES.items():
        if name in model.variables and model.scalar(name) != expected:
            raise ValueError(f"{model.source}: {name} = {model.scalar(name)}, openai-whisper needs {expected}")
    proj = model.variables.get("decoder/projection/weight")
    if proj is not None and not torch.equal(proj, model.variables["decoder/embeddings/weight"]):
        raise ValueError(f"{model.source}: decoder/projection/weight differs from the token embedding (untied)")


def _dims(m: _Mapper, n_enc: int, n_dec: int) -> dict[str, int]:
    model, state = m.model, m.out
    emb = state["decoder.token_embedding.weight"]  # (n_vocab, D)
    return dict(
        n_mels=state["encoder.conv1.weight"].shape[1],
        n_audio_ctx=state["encoder.positional_embedding"].shape[0],
        n_audio_state=state["encoder.positional_embedding"].shape[1],
        n_audio_head=model.scalar("encoder/num_heads"),
        n_audio_layer=n_enc,
        n_vocab=emb.shape[0],
        n_text_ctx=state["decoder.positional_embedding"].shape[0],
        n_text_state=emb.shape[1],
        n_text_head=model.scalar("decoder/num_heads"),
        n_text_layer=n_dec,
    )


def whisper_state_dict(model: CT2Model) -> dict:
    """Maps a CTranslate2 Whisper model onto an openai-whisper checkpoint.

    float16 tensors stay float16 (as in openai's own ``.pt`` files); every other float (float32, bfloat16, or
    de-quantized int8/int16) is stored as float32.

    Args:
        model: A ``WhisperSpec`` model from :func:`read_ct2`.

    Returns:
        ``{"dims": ModelDimensions fields, "model_state_dict": openai-whisper names -> tensors}``.

    Raises:
        ValueError: the model is not a Whisper model, or has missing or unexpected variables (named, with the file).
    """
    _check_attributes(model)
    n_enc, n_dec = _n_layers(model, "encoder"), _n_layers(model, "decoder")
    m = _Mapper(model)
    for conv in ("conv1", "conv2"):
        m.linear(f"encoder/{conv}", f"encoder.{conv}")
    m.copy("encoder/position_encodings/encodings", "encoder.positional_embedding")
    for i in range(n_enc):
        m.block(f"encoder/layer_{i}", f"encoder.blocks.{i}", cross=False)
    m.layer_norm("encoder/layer_norm", "encoder.ln_post")
    m.copy("decoder/embeddings/weight", "decoder.token_embedding.weight")
    m.copy("decoder/position_encodings/encodings", "decoder.positional_embedding")
    for i in range(n_dec):
        m.block(f"decoder/layer_{i}", f"decoder.blocks.{i}", cross=True)
    m.layer_norm("decoder/layer_norm", "decoder.ln")
    left = sorted(set(model.variables) - m.used - _IGNORED - set(_FIXED_ATTRIBUTES) - {"decoder/projection/weight"})
    if left:
        raise ValueError(f"{model.source}: variables with no openai-whisper counterpart: {', '.join(left)}")
    state = {k: v if v.dtype == torch.float16 else v.float() for k, v in m.out.items()}
    return {"dims": _dims(m, n_enc, n_dec), "model_state_dict": state}


def convert_ct2_whisper(src: str | os.PathLike | Sequence[str | os.PathLike], out: str | os.PathLike) -> dict:
    """Converts a CTranslate2 Whisper ``model.bin`` (or its parts) into an openai-whisper ``.pt``, atomically.

    Returns:
        The checkpoint's ``dims``.
    """
    ckpt = whisper_state_dict(read_ct2(src))
    atomic_write(out, lambda f: torch.save(ckpt, f))
    return ckpt["dims"]
