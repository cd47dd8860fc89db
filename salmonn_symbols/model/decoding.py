"""Running the LLM's decoder blocks directly: right-padded rows, masked trees and kept prompts, no host syncs."""

from __future__ import annotations

import contextlib

import torch
from torch import Tensor, nn

from .candidates import PromptKV

__all__ = ["decode", "has_blocks", "left_align", "target_window"]


def has_blocks(decoder: nn.Module) -> bool:
    """Whether ``decoder`` has the LLaMA rotary/layers/norm layout `decode` calls directly."""
    return all(hasattr(decoder, a) for a in ("rotary_emb", "layers", "norm"))


def decode(
    decoder: nn.Module,
    embeds: Tensor,
    positions: Tensor | None = None,
    mask: Tensor | None = None,
    kv: PromptKV | None = None,
) -> Tensor:
    """Runs a LLaMA-style decoder over right-padded rows, without a KV cache unless ``kv`` is given.

    Every row is right-padded, so under causal attention no real token ever sees a pad and no mask is needed:
    SDPA stays on its ``is_causal`` path. The decoder's own ``forward`` would build a mask or, without one, scan
    the position ids for packed sequences, and both read device values on the host; calling the blocks directly
    keeps the step free of host syncs. Decoders without the rotary/layers/norm layout run their own forward.

    Args:
        decoder: The LLM's decoder.
        embeds: Input embeddings, shape (B, T, H).
        positions: Rotary positions (B, T); default 0 … T-1.
        mask: Boolean attention mask (B, 1, T, T), True where a query may attend a key (the candidate tree of
            `score_candidates`); default causal.
        kv: Keys and values to store (a prompt's pass) or to attend to (a continuation's, with ``mask`` over
            the stored keys and its own).
    """
    if not has_blocks(decoder):
        return decoder(inputs_embeds=embeds, use_cache=False).last_hidden_state
    if positions is None:
        positions = torch.arange(embeds.shape[1], device=embeds.device)[None]  # (1, T)
    rotary = decoder.rotary_emb(embeds, position_ids=positions)  # (cos, sin), each (B or 1, T, head_dim)
    # Compiled blocks (model.compile) would specialise on the kept keys' layer index, one graph per layer: the
    # few passes with kept keys (discovery's probes) run eagerly instead.
    stance = torch.compiler.set_stance("force_eager") if kv is not None else contextlib.nullcontext()
    hidden = embeds
    with stance:
        for layer in decoder.layers:
            hidden = layer(
                hidden, attention_mask=mask, position_embeddings=rotary, position_ids=positions, past_key_values=kv
            )
    return decoder.norm(hidden)  # (B, T, H)


def target_window(text_hidden: Tensor, batch: dict) -> tuple[Tensor, Tensor]:
    """The hidden states and labels of each row's target tokens, (B, W, H) and (B, W), W = ``target_len``.

    Targets follow each row's prompt (``prompt_lengths``), so a gather with per-row offsets finds them without
    a host sync. Without ``target_len`` every text position is kept.
    """
    W, labels = batch.get("target_len"), batch["labels"]
    if not W or "prompt_lengths" not in batch:
        return text_hidden, labels
    L = labels.shape[1]
    pos = batch["prompt_lengths"][:, None] + torch.arange(W, device=labels.device)[None]  # (B, W)
    inside = pos < L
    pos = pos.clamp_max(L - 1)
    hidden = text_hidden.gather(1, pos[..., None].expand(-1, -1, text_hidden.shape[-1]))  # (B, W, H)
    return hidden, torch.where(inside, labels.gather(1, pos), -100)


def left_align(embeds: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Moves each row's right padding to the left, without a host sync."""
    T = mask.shape[1]
    shift = T - mask.sum(1, keepdim=True)  # (B, 1) pads per row
    idx = (torch.arange(T, device=mask.device)[None] - shift) % T  # (B, T)
    return embeds.gather(1, idx[..., None].expand_as(embeds)), mask.gather(1, idx)
