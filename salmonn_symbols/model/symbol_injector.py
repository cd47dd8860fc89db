"""Finds the current symbols in token-id sequences and swaps their embeddings.

    ids (B, L) ─span match against the K symbols (no per-token Python)─► row (B, L) ∈ {-1, 0..U-1}
    symbol token embeddings (U, D) ─symbol MLP─► soft / hard quantization ─► replacements (U, D)
    embeds (B, L, D) ─where(row ≥ 0, replacements[row], embeds)─► embeds (B, L, D)

A position is a symbol position only where the whole token span of a current symbol occurs, so a common
sub-word that happens to equal a symbol token elsewhere is left alone. The MLP runs once per distinct symbol
token per call, so the cost does not grow with the number of occurrences and no host sync is needed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..symbols.mlp import SymbolMLP
from ..symbols.quantize import CandidateMasks, Codebook, hard_quantize, soft_quantize

__all__ = ["SYMBOL_MODES", "SymbolInjector"]

SYMBOL_MODES = ("raw", "soft", "hard")


class SymbolInjector(nn.Module):
    """Owns the symbol MLP and the current symbols' token spans.

    Args:
        embed_dim: LLM embedding width D.
        hidden_dim: Symbol MLP bottleneck width.
        scale: Residual scale of the MLP.
        dropout: Dropout inside the MLP.
    """

    def __init__(self, embed_dim: int, hidden_dim: int = 8, scale: float = 0.2, dropout: float = 0.1):
        super().__init__()
        self.mlp = SymbolMLP(embed_dim, hidden_dim, scale, dropout)
        self._lengths: list[int] = []
        self._rows: dict[tuple[int, int], int] = {}
        self._codebook: Codebook | None = None
        self.register_buffer("token_ids", torch.zeros(0, dtype=torch.long), persistent=False)  # (U,)
        self.register_buffer("first_in_word", torch.zeros(0, dtype=torch.bool), persistent=False)  # (U,)
        self.register_buffer("mask_initial", torch.zeros(0, dtype=torch.bool), persistent=False)  # (V,)
        self.register_buffer("mask_continuation", torch.zeros(0, dtype=torch.bool), persistent=False)  # (V,)

    # ------------------------------------------------------------------------------------------ configuration
    def set_symbols(self, spans: list[list[int]]) -> None:
        """Sets the token-id spans of the current symbols (one list of ids per symbol).

        Each (token id, position in word) pair gets one replacement row; the same token at another position is
        another row, because word-initial and continuation positions draw from different candidate sets.
        """
        device = self.token_ids.device
        rows: dict[tuple[int, int], int] = {}
        for span in spans:
            if not span:
                raise ValueError("a symbol needs at least one token id")
            for pos, tid in enumerate(span):
                rows.setdefault((int(tid), pos), len(rows))
        keys = list(rows)
        self.token_ids = torch.tensor([t for t, _ in keys], dtype=torch.long, device=device)
        self.first_in_word = torch.tensor([p == 0 for _, p in keys], dtype=torch.bool, device=device)
        self._rows = rows
        self._lengths = sorted({len(s) for s in spans})
        for n in self._lengths:
            group = [s for s in spans if len(s) == n]
            span_t = torch.tensor(group, dtype=torch.long, device=device)  # (K_n, n)
            row_t = torch.tensor([[rows[(int(t), p)] for p, t in enumerate(s)] for s in group], device=device)
            self.register_buffer(f"spans_{n}", span_t, persistent=False)
            self.register_buffer(f"rows_{n}", row_t, persistent=False)  # (K_n, n)

    def row_of(self, token_id: int, position: int) -> int:
        """The replacement row of ``token_id`` at ``position`` of its word (KeyError if no symbol has it)."""
        return self._rows[(int(token_id), int(position))]

    def set_candidate_masks(self, masks: CandidateMasks) -> None:
        """Sets which vocabulary entries the quantizers may use (see `build_candidate_masks`)."""
        self.mask_initial = masks.initial.to(self.token_ids.device)
        self.mask_continuation = masks.continuation.to(self.token_ids.device)

    @property
    def num_symbols(self) -> int:
        """Number of configured symbol spans."""
        return sum(getattr(self, f"spans_{n}").shape[0] for n in self._lengths)

    # ---------------------------------------------------------------------------------------------- lookup
    def locate(self, ids: Tensor) -> Tensor:
        """Replacement row of every position, -1 where no current symbol's full span covers it.

        Args:
            ids: Token ids, shape (B, L).

        Returns:
            Row indices, shape (B, L), long.
        """
        B, L = ids.shape
        rows = torch.full_like(ids, -1)
        for n in self._lengths:
            if L < n:
                continue
            spans, span_rows = getattr(self, f"spans_{n}"), getattr(self, f"rows_{n}")  # (K, n), (K, n)
            windows = ids.unfold(1, n, 1)  # (B, L-n+1, n)
            hit = (windows[:, :, None, :] == spans[None, None]).all(-1)  # (B, L-n+1, K)
            which = hit.float().argmax(-1)  # (B, L-n+1): the matching symbol (spans are distinct)
            found = hit.any(-1)  # (B, L-n+1)
            for j in range(n):
                row_j = span_rows[:, j][which]  # (B, L-n+1)
                row_j = torch.where(found, row_j, -1)
                row_j = F.pad(row_j, (j, n - 1 - j), value=-1)  # align window start + j to positions
                rows = torch.where(row_j >= 0, row_j, rows)
        return rows

    def token_rows(self, ids: Tensor) -> Tensor:
        """Replacement row of each token by id alone (first matching row), -1 for other tokens.

        Used while generating, where tokens arrive one at a time and spans cannot be matched.
        """
        if self.token_ids.numel() == 0:
            return torch.full_like(ids, -1)
        eq = ids[..., None] == self.token_ids  # (..., U)
        return torch.where(eq.any(-1), eq.float().argmax(-1), -1)

    # ------------------------------------------------------------------------------------------ replacements
    def replacements(self, embedding_weight: Tensor, mode: str, temperature: float) -> Tensor:
        """Embeddings that replace each symbol token row, shape (U, D), fp32.

        Args:
            embedding_weight: The LLM's input embedding matrix (V, D); read, never trained through.
            mode: "soft" (MLP + soft quantization), "hard" (MLP + argmax) or "raw" (the token's own embedding).
            temperature: Soft-quantization temperature.
        """
        if mode not in SYMBOL_MODES:
            raise ValueError(f"symbol mode must be one of {SYMBOL_MODES}, got {mode!r}")
        e = embedding_weight.detach()[self.token_ids]  # (U, D)
        if mode == "raw":
            return e.float()
        if self.mask_initial.numel() == 0:
            raise RuntimeError("set_candidate_masks() must be called before soft or hard symbol modes")
        if self._codebook is None or self._codebook.weight is not embedding_weight:
            self._codebook = Codebook(embedding_weight)
        mask = CandidateMasks(self.mask_initial, self.mask_continuation).for_positions(self.first_in_word)  # (U, V)
        transformed = self.mlp(e)  # (U, D) fp32, unit norm
        if mode == "soft":
            return soft_quantize(transformed, self._codebook, temperature, mask)
        return hard_quantize(transformed, self._codebook, mask)[2]

    def forward(
        self,
        ids: Tensor,
        embeds: Tensor,
        embedding_weight: Tensor,
        mode: str = "soft",
        temperature: float = 0.1,
        where: Tensor | None = None,
        table: Tensor | None = None,
    ) -> Tensor:
        """Replaces the embeddings at symbol positions.

        Args:
            ids: Token ids, shape (B, L).
            embeds: Their embeddings, shape (B, L, D).
            embedding_weight: The LLM input embedding matrix (V, D).
            mode: See `replacements`; "raw" returns ``embeds`` unchanged.
            temperature: Soft-quantization temperature.
            where: Optional bool mask (B, L) limiting which positions may be replaced (prompt, targets, ...).
            table: Replacement rows (U, D) to use instead of ``mode``'s, e.g. the raw rows as a leaf tensor whose
                gradient gives the first-order change of the loss per symbol token (discovery's proposals).

        Returns:
            Embeddings, shape (B, L, D), dtype of ``embeds``.
        """
        if (mode == "raw" and table is None) or not self._lengths:
            return embeds
        rows = self.locate(ids)  # (B, L)
        if where is not None:
            rows = torch.where(where, rows, -1)
        if table is None:
            table = self.replacements(embedding_weight, mode, temperature)
        table = table.to(embeds.dtype)  # (U, D)
        return torch.where((rows >= 0)[..., None], table[rows.clamp_min(0)], embeds)
