"""Scoring several candidate answers after one prompt: the rows the LLM sees.

Closed-set scoring asks how likely each label's word (or symbol) + EOS is after a prompt. Two layouts:

    packed  B·C rows, each the whole prompt followed by one candidate (`pack_candidates`); the prompt is computed
            C times. Any decoder runs it.
    tree    B rows, each the prompt once followed by every candidate (`candidate_tree`):

                [BOS … speech … prompt text ‖ pads] [cand 1] [cand 2] … [cand C]
                 positions 0 … n-1                    n …      n …        n …

            a candidate attends to the real prompt and to its own earlier tokens only, and its positions continue
            right after the prompt, so every candidate gets exactly the attention (and rotary positions) of its
            own packed row, at about 1/C of the cost when the prompt is much longer than the candidates.
    cached  the prompt's pass once, keeping every layer's keys and values (`PromptKV`); then any number of short
            continuations, each attending the real prompt and itself (`continuation_layout`), for answers that
            are asked one at a time (discovery's likelihood probes).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["CandidateTree", "PromptKV", "candidate_tree", "continuation_layout", "pack_candidates"]


def _candidate_table(candidates: list[list[int]], device) -> Tensor:
    """(C, Lc) token ids, -100 past each candidate's end."""
    cand = torch.full((len(candidates), max(len(c) for c in candidates)), -100, dtype=torch.long, device=device)
    for i, c in enumerate(candidates):
        cand[i, : len(c)] = torch.tensor(c, device=device)
    return cand


def pack_candidates(batch: dict[str, Tensor], candidates: list[list[int]]) -> dict[str, Tensor]:
    """B·C rows: each prompt followed by each candidate, right-padded; labels mark the candidate tokens."""
    text, tmask = batch["text_ids"], batch["text_mask"]
    B, C = text.shape[0], len(candidates)
    lengths = tmask.sum(1)  # (B,)
    cand = _candidate_table(candidates, text.device)
    L = text.shape[1] + cand.shape[1]
    pos = torch.arange(L, device=text.device)[None]  # (1, L)
    start = lengths.repeat_interleave(C)[:, None]  # (B·C, 1)
    cand_rows = cand.repeat(B, 1)  # (B·C, Lc)
    rel = (pos - start).clamp(0, cand.shape[1] - 1)
    in_cand = (pos >= start) & (cand_rows.gather(1, rel) != -100) & (pos - start < cand.shape[1])
    base = F.pad(text.repeat_interleave(C, 0), (0, cand.shape[1]), value=0)
    ids = torch.where(in_cand, cand_rows.gather(1, rel), base)
    mask = torch.where(in_cand, 1, F.pad(tmask.repeat_interleave(C, 0), (0, cand.shape[1])))
    labels = torch.where(in_cand, ids, -100)
    out = dict(prefix_ids=batch["prefix_ids"].repeat_interleave(C, 0), text_ids=ids, text_mask=mask, labels=labels)
    # every candidate starts right after its row's prompt: the logits are needed there only
    out |= {"prompt_lengths": lengths.repeat_interleave(C), "target_len": cand.shape[1]}
    return out | ({"max_wav_len": batch["max_wav_len"]} if "max_wav_len" in batch else {})


@dataclass
class CandidateTree:
    """The tree layout of B prompts and C candidates.

    Attributes:
        batch: The prompt batch with every candidate appended to ``text_ids`` (labels mark candidate tokens, so
            symbol injection treats them as answers), shape (B, L + C·Lc).
        candidates: Candidate token ids, shape (C, Lc), -100 past a candidate's end.
    """

    batch: dict[str, Tensor]
    candidates: Tensor

    def layout(self, seq_len: int) -> tuple[Tensor, Tensor, Tensor]:
        """Positions, attention mask and logit sources of rows of ``seq_len`` = S + C·Lc embeddings, where the
        first S are [prefix ‖ speech ‖ prompt text ‖ pads].

        Returns:
            ``positions`` (B, T); ``mask`` (B, 1, T, T), True where query t may attend key s; ``source`` (B, C·Lc),
            the index whose hidden state predicts each candidate token.
        """
        C, Lc = self.candidates.shape
        text_mask = self.batch["text_mask"]
        device = text_mask.device
        S = seq_len - C * Lc
        L = text_mask.shape[1] - C * Lc
        n = S - L + text_mask[:, :L].sum(1)  # (B,) real prompt length: prefix + speech + prompt text
        idx = torch.arange(seq_len, device=device)  # (T,)
        is_cand = idx >= S
        j = torch.where(is_cand, (idx - S) % Lc, 0)  # (T,) token index inside its candidate
        group = torch.where(is_cand, (idx - S) // Lc, -1)  # (T,) which candidate, -1 for the prompt part
        positions = torch.where(is_cand[None], n[:, None] + j[None], idx[None])  # (B, T)
        causal = idx[None, :] <= idx[:, None]  # (T, T) [query, key]
        own = causal & (group[:, None] == group[None, :])  # a candidate's own earlier tokens
        prompt_key = idx[None, None, :] < n[:, None, None]  # (B, 1, T) the real prompt
        mask = torch.where(is_cand[None, :, None], prompt_key | own[None], causal[None])  # (B, T, T)
        first = (n - 1)[:, None].expand(-1, C)  # (B, C) the prompt's last token predicts token 0
        later = S + torch.arange(C, device=device)[:, None] * Lc + torch.arange(Lc - 1, device=device)[None]
        source = torch.cat([first[..., None], later[None].expand(n.shape[0], -1, -1)], dim=-1)  # (B, C, Lc)
        return positions, mask[:, None], source.flatten(1)


def candidate_tree(batch: dict[str, Tensor], candidates: list[list[int]]) -> CandidateTree:
    """B rows: each prompt (``prefix_ids``, ``text_ids`` right-padded to L, ``text_mask``) once, then all C
    candidates, each padded to the longest (Lc tokens)."""
    text, tmask = batch["text_ids"], batch["text_mask"]
    B = text.shape[0]
    cand = _candidate_table(candidates, text.device)  # (C, Lc)
    flat = cand.flatten()[None].expand(B, -1)  # (B, C·Lc)
    ids = torch.cat([text, flat.clamp_min(0)], dim=1)  # past-end slots hold token 0; nothing reads them
    labels = torch.cat([torch.full_like(text, -100), flat], dim=1)
    mask = torch.cat([tmask, torch.ones_like(flat)], dim=1)
    out = dict(prefix_ids=batch["prefix_ids"], text_ids=ids, text_mask=mask, labels=labels)
    if "max_wav_len" in batch:
        out["max_wav_len"] = batch["max_wav_len"]
    return CandidateTree(out, cand)


class PromptKV:
    """Every layer's keys and values of a batch of prompts, as a LLaMA attention layer hands them to its
    ``past_key_values.update``: stored during the prompt's pass; once ``frozen``, a later pass attends to them
    and to its own keys without extending them, so any number of continuations can follow the same prompt."""

    def __init__(self):
        self.keys: list[Tensor] = []
        self.values: list[Tensor] = []
        self.frozen = False

    def update(self, key: Tensor, value: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        """(B, kv_heads, T, d) keys and values of a layer -> those the layer attends to."""
        if not self.frozen:
            self.keys.append(key)
            self.values.append(value)
            return key, value
        return torch.cat([self.keys[layer_idx], key], 2), torch.cat([self.values[layer_idx], value], 2)


def continuation_layout(prompt_lengths: Tensor, seq_len: int, length: int) -> tuple[Tensor, Tensor]:
    """Positions and attention mask of ``length`` tokens that follow right-padded prompts of ``seq_len``
    embeddings whose first ``prompt_lengths`` (B,) are real.

    Returns:
        ``positions`` (B, length), continuing each prompt; ``mask`` (B, 1, length, seq_len + length), True on the
        real prompt and on the continuation's own tokens up to the query.
    """
    device = prompt_lengths.device
    j = torch.arange(length, device=device)
    positions = prompt_lengths[:, None] + j[None]  # (B, La)
    prompt = torch.arange(seq_len, device=device)[None, None] < prompt_lengths[:, None, None]  # (B, 1, S)
    own = (j[None, :] <= j[:, None])[None].expand(prompt_lengths.shape[0], -1, -1)  # (B, La, La)
    mask = torch.cat([prompt.expand(-1, length, -1), own], dim=-1)  # (B, La, S + La)
    return positions, mask[:, None]
