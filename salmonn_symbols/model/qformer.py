"""Window-level Q-Former: one query token per 17-frame window of the fused speech features.

    fused (B, T=1500, C=2048) ─unfold─► windows (B·L, 17, C)         L = 88 for 30 s
        query (1, 1, 768) ─expand─► (B·L, 1, 768) ─Blip2QFormerModel(cross-attends the window)─► (B·L, 1, 768)
        ─reshape─► (B, L, 768)

The Q-Former is transformers' ``Blip2QFormerModel`` (every layer cross-attends; no text input), so its
parameter names are those of the official checkpoint after the renames in `salmonn_symbols.model.checkpoint`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from transformers import Blip2QFormerConfig, Blip2QFormerModel

__all__ = ["WindowQFormer", "qformer_config", "num_windows"]


def qformer_config(
    encoder_width: int,
    hidden_size: int = 768,
    num_layers: int = 2,
    num_heads: int = 12,
    intermediate_size: int = 3072,
    init_std: float = 0.02,
) -> Blip2QFormerConfig:
    """The SALMONN Q-Former configuration: BERT-base width, cross-attention in every layer, eps 1e-12.

    ``init_std`` is BERT's 0.02 for real sizes; a random test size needs more for its cross-attention to carry
    the audio past the query token's own embedding."""
    return Blip2QFormerConfig(
        hidden_size=hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        intermediate_size=intermediate_size,
        hidden_act="gelu",
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.1,
        layer_norm_eps=1e-12,
        cross_attention_frequency=1,
        encoder_hidden_size=encoder_width,
        use_qformer_text_input=False,
        initializer_range=init_std,
    )


def num_windows(frames: int, window: int = 17, stride: int = 17) -> int:
    """Number of windows ``unfold`` makes over ``frames`` frames (88 for 1500 frames)."""
    return (frames - window) // stride + 1


class WindowQFormer(nn.Module):
    """Query tokens cross-attending fixed windows of the fused encoder output.

    Args:
        config: A Q-Former configuration (see `qformer_config`).
        window: Frames per window (17 frames = 0.34 s of Whisper output).
        stride: Hop between windows.
        num_query: Query tokens per window.
    """

    def __init__(self, config: Blip2QFormerConfig, window: int = 17, stride: int = 17, num_query: int = 1):
        super().__init__()
        self.window, self.stride, self.num_query = window, stride, num_query
        self.qformer = Blip2QFormerModel(config)
        self.query_tokens = nn.Parameter(torch.zeros(1, num_query, config.hidden_size))
        nn.init.normal_(self.query_tokens, std=config.initializer_range)

    def forward(self, fused: Tensor) -> Tensor:
        """Runs the Q-Former over every window.

        Args:
            fused: Fused encoder features, shape (B, T, C).

        Returns:
            Query outputs, shape (B, L * num_query, hidden), windows in time order.
        """
        B, T, C = fused.shape
        windows = fused.unfold(1, self.window, self.stride)  # (B, L, C, window)
        L = windows.shape[1]
        windows = windows.permute(0, 1, 3, 2).reshape(B * L, self.window, C)  # (B·L, window, C)
        query = self.query_tokens.expand(B * L, -1, -1)  # (B·L, Q, hidden)
        out = self.qformer(query_embeds=query, encoder_hidden_states=windows).last_hidden_state  # (B·L, Q, hidden)
        return out.reshape(B, L * self.num_query, -1)


class UtteranceToken(nn.Module):
    """One token for the whole clip: the mean of its own frames, a linear map and a LayerNorm.

    A window Q-Former sees 0.16-0.34 s at a time, while a voice is a property of the whole clip; a linear probe
    on pooled Whisper features separates speakers that the window tokens, after speech-recognition pre-training,
    barely tell apart. The token goes before the window tokens (through the same projection to the LLM).

    Args:
        width: Channels of the fused encoder frames.
        hidden: Output width (the Q-Former's, so the projection to the LLM is shared).
    """

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(width, hidden)
        self.norm = nn.LayerNorm(hidden, eps=1e-12)

    def forward(self, fused: Tensor, frames: Tensor | None = None) -> Tensor:
        """``fused`` (B, T, C) and each row's valid frame count ``frames`` (B,) (None: all T) -> (B, 1, hidden)."""
        if frames is None:
            pooled = fused.mean(1)  # (B, C)
        else:
            valid = torch.arange(fused.shape[1], device=fused.device)[None] < frames.clamp(1, fused.shape[1])[:, None]
            w = valid.to(fused.dtype)[..., None]  # (B, T, 1)
            pooled = (fused * w).sum(1) / w.sum(1)  # (B, C): padding frames never count
        return self.norm(self.proj(pooled))[:, None]
