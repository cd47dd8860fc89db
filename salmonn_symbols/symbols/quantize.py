"""Soft and hard quantization of transformed symbol embeddings onto the vocabulary.

    transformed (N, D) ──cos──► (N, V) ──mask──► softmax(·/T) @ V ──► soft embedding (N, D)   [training]
                                              └─► argmax / top-k ──► token ids                 [discovery]

V is the LLM's (frozen) input embedding matrix. All of it runs in fp32 and is vectorised over positions.
Gradients reach the transformed embeddings (hence the symbol MLP), never V.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from .tokenization import SymbolTokenizer

__all__ = [
    "CandidateMasks",
    "Codebook",
    "TemperatureSchedule",
    "build_candidate_masks",
    "hard_quantize",
    "soft_quantize",
    "topk_candidates",
    "vocab_cosine",
]

_BYTE_PIECE = re.compile(r"^<0x[0-9A-Fa-f]{2}>$")


class Codebook:
    """An fp32, gradient-free view of an embedding matrix with cached inverse row norms.

    The fp32 copy is made once and rebuilt only when the weight changes (new storage, device or in-place
    update), so a bf16 13B vocabulary (32001 x 5120) costs one 655 MB copy, not one per step.

    Args:
        weight: The embedding matrix, shape (V, D). It is read, never trained through.
    """

    def __init__(self, weight: Tensor):
        self.weight = weight
        self._key: tuple | None = None
        self._vectors: Tensor | None = None
        self._inv_norm: Tensor | None = None

    def _refresh(self) -> None:
        w = self.weight
        key = (w.data_ptr(), w.device, w.dtype, tuple(w.shape), w._version)
        if key != self._key:
            with torch.no_grad():
                self._vectors = w.detach().float()
                self._inv_norm = self._vectors.norm(dim=-1).clamp_min(1e-12).reciprocal()
            self._key = key

    @property
    def vectors(self) -> Tensor:
        """The embedding matrix in fp32, detached, shape (V, D)."""
        self._refresh()
        return self._vectors

    @property
    def inv_norm(self) -> Tensor:
        """1 / ||V_i||, shape (V,)."""
        self._refresh()
        return self._inv_norm

    def __len__(self) -> int:
        return self.weight.shape[0]


def _mask_logits(scores: Tensor, mask: Tensor | None) -> Tensor:
    if mask is None:
        return scores
    if mask.dtype != torch.bool:
        raise TypeError(f"candidate mask must be bool, got {mask.dtype}")
    return scores.masked_fill(~mask.to(scores.device), float("-inf"))


def vocab_cosine(x: Tensor, codebook: Codebook, mask: Tensor | None = None) -> Tensor:
    """Cosine similarity of each row of ``x`` with every vocabulary embedding, fp32.

    Args:
        x: Query vectors, shape (N, D); need not be normalised.
        codebook: The vocabulary.
        mask: Optional bool mask of candidates, shape (V,) or (N, V); excluded entries get -inf.

    Returns:
        Similarities, shape (N, V).
    """
    with torch.autocast(device_type=x.device.type, enabled=False):
        xu = F.normalize(x.float(), dim=-1)  # (N, D)
        cos = (xu @ codebook.vectors.T) * codebook.inv_norm  # (N, V)
    return _mask_logits(cos, mask)


def soft_quantize(x: Tensor, codebook: Codebook, temperature: float, mask: Tensor | None = None) -> Tensor:
    """``softmax(cos(x, V) / T) @ V``: a differentiable mixture of vocabulary embeddings.

    Args:
        x: Transformed symbol embeddings, shape (N, D).
        codebook: The vocabulary.
        temperature: Softmax temperature T > 0 (smaller is closer to the hard argmax).
        mask: Optional candidate mask, shape (V,) or (N, V).

    Returns:
        Soft embeddings, shape (N, D), fp32.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    cos = vocab_cosine(x, codebook, mask)  # (N, V)
    with torch.autocast(device_type=x.device.type, enabled=False):
        weights = torch.softmax(cos / temperature, dim=-1)  # (N, V)
        return weights @ codebook.vectors  # (N, D)


def hard_quantize(x: Tensor, codebook: Codebook, mask: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Argmax of cosine similarity over the (masked) vocabulary.

    Returns:
        ``(ids, similarities, embeddings)`` with shapes (N,), (N,) and (N, D); embeddings are fp32 rows of V.
    """
    with torch.no_grad():
        sims, ids = vocab_cosine(x, codebook, mask).max(dim=-1)  # (N,), (N,)
    return ids, sims, codebook.vectors[ids]


def topk_candidates(x: Tensor, codebook: Codebook, k: int, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The ``k`` most similar candidate tokens of each row.

    Returns:
        ``(similarities, ids)``, each shape (N, k), best first. When fewer than ``k`` candidates are allowed,
        the tail has similarity -inf.
    """
    with torch.no_grad():
        cos = vocab_cosine(x, codebook, mask)
        return cos.topk(min(k, cos.shape[-1]), dim=-1)


@dataclass
class CandidateMasks:
    """Which vocabulary entries a symbol token may become.

    Attributes:
        initial: Candidates for the first token of a word, bool (V,).
        continuation: Candidates for later tokens of a word, bool (V,).
    """

    initial: Tensor
    continuation: Tensor

    def for_positions(self, first_in_word: Tensor) -> Tensor:
        """Per-row masks for rows that are (True) or are not (False) the first token of their word; (N, V)."""
        first = first_in_word.to(self.initial.device).bool()[:, None]  # (N, 1)
        return torch.where(first, self.initial[None], self.continuation[None])

    def to(self, device: torch.device | str) -> CandidateMasks:
        """Moves both masks to ``device``."""
        return CandidateMasks(self.initial.to(device), self.continuation.to(device))


def build_candidate_masks(
    tokenizer: SymbolTokenizer,
    vocab_size: int | None = None,
    exclude_words: Iterable[str] = (),
    *,
    ascii_only: bool = True,
    lowercase_only: bool = True,
    blocklist: Iterable[str] = (),
) -> CandidateMasks:
    """Builds the candidate masks: alphabetic, non-special, non-byte tokens that are not label words.

    Args:
        tokenizer: The model's tokenizer, wrapped.
        vocab_size: Rows of the embedding matrix (may exceed the tokenizer's size; extra rows are excluded).
        exclude_words: Words whose tokens may not be chosen (the original labels and their parts).
        ascii_only: Keep only ASCII letters.
        lowercase_only: Keep only lower-case pieces, so discovered symbols are lower-case words like the random
            ones.
        blocklist: Further token texts (stripped, case-insensitive) to exclude.

    Returns:
        Masks for word-initial and continuation positions. When the tokenizer marks no word boundaries both
        masks are the same.
    """
    n = vocab_size if vocab_size is not None else tokenizer.vocab_size
    banned = {w.lower() for w in blocklist}
    for w in exclude_words:
        banned.add(w.lower())
        banned.update(p.lower() for p in w.replace("_", " ").replace("-", " ").split())
    valid = torch.zeros(n, dtype=torch.bool)
    initial = torch.zeros(n, dtype=torch.bool)
    specials = tokenizer.special_ids
    for i in range(min(n, tokenizer.vocab_size)):
        text = tokenizer.texts[i].strip()
        if i in specials or _BYTE_PIECE.match(tokenizer.pieces[i]) or not text or "\ufffd" in text:
            continue
        if not text.isalpha() or (ascii_only and not text.isascii()) or text.lower() in banned:
            continue
        if lowercase_only and not text.islower():
            continue
        valid[i] = True
        initial[i] = tokenizer.is_word_initial(i)
    if tokenizer.scheme == "none":
        masks = CandidateMasks(initial=valid.clone(), continuation=valid.clone())
    else:
        masks = CandidateMasks(initial=initial, continuation=valid & ~initial)
    # An empty mask would turn the softmax into NaN; checked here once rather than in every step.
    for name, m in (("word-initial", masks.initial), ("continuation", masks.continuation)):
        if not bool(m.any()):
            raise ValueError(f"no {name} candidate token is left in the vocabulary after filtering")
    return masks


@dataclass
class TemperatureSchedule:
    """Soft-quantization temperature as a function of training progress in [0, 1].

    Attributes:
        start: Temperature at progress 0.
        end: Temperature at progress 1 (ignored for "constant").
        kind: "constant", "linear", "cosine" or "exponential" (geometric) interpolation.
    """

    start: float = 0.1
    end: float = 0.01
    kind: str = "exponential"

    def __post_init__(self) -> None:
        if self.kind not in ("constant", "linear", "cosine", "exponential"):
            raise ValueError(f"temperature schedule kind must be constant|linear|cosine|exponential, got {self.kind!r}")
        if self.start <= 0 or (self.kind != "constant" and self.end <= 0):
            raise ValueError(f"temperatures must be > 0, got start={self.start} end={self.end}")

    def __call__(self, progress: float) -> float:
        p = min(max(float(progress), 0.0), 1.0)
        if self.kind == "constant":
            return self.start
        if self.kind == "linear":
            return self.start + (self.end - self.start) * p
        if self.kind == "cosine":
            return self.end + (self.start - self.end) * 0.5 * (1 + math.cos(math.pi * p))
        return self.start * (self.end / self.start) ** p
