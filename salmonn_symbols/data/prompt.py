"""SALMONN's prompt format, tokenized into the tensors `SpeechLLM` consumes.

    "USER: <Speech><SpeechHere></Speech> {prompt}\\nASSISTANT:" + " {target}</s>"
        split at <SpeechHere>:  before = "USER: <Speech>"          after = "</Speech> {prompt}\\nASSISTANT:"
    sequence = [BOS] + ids(before) + <88 speech embeddings> + ids(after) + ids(target) + [EOS]
               └── prefix_ids ──┘                          └──────────── text_ids ────────────┘

The two halves are tokenized separately, as the official code does. ``after`` and the target are packed
together and right-padded, so no padding sits inside a sequence. This runs on the data side (collate), never
inside ``forward``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["SALMONN_TEMPLATE", "PromptBatch", "PromptBuilder"]

SALMONN_TEMPLATE = "USER: <Speech><SpeechHere></Speech> {prompt}\nASSISTANT:"
_SPEECH = "<SpeechHere>"


@dataclass
class PromptBatch:
    """Token tensors of a batch.

    Attributes:
        prefix_ids: BOS + ids of the text before the speech, shape (B, P); identical rows.
        text_ids: ids of the text after the speech, then of the target and EOS, right-padded, shape (B, L).
        text_mask: 1 where ``text_ids`` is real, shape (B, L).
        labels: Target ids where ``text_ids`` is target or EOS, else -100, shape (B, L).
        prompt_lengths: Number of prompt (non-target) tokens in each row of ``text_ids``, shape (B,).
    """

    prefix_ids: Tensor
    text_ids: Tensor
    text_mask: Tensor
    labels: Tensor
    prompt_lengths: Tensor

    def as_dict(self) -> dict[str, Tensor]:
        """The fields as a dict (what a collate function returns)."""
        return dict(
            prefix_ids=self.prefix_ids,
            text_ids=self.text_ids,
            text_mask=self.text_mask,
            labels=self.labels,
            prompt_lengths=self.prompt_lengths,
        )


class PromptBuilder:
    """Tokenizes prompts and targets in SALMONN's format.

    Args:
        tokenizer: The LLM's HF tokenizer.
        template: A template with one ``<SpeechHere>`` and one ``{prompt}``.
        max_target_tokens: Targets are truncated to this many tokens (EOS excluded), as SALMONN's max_txt_len.
    """

    def __init__(self, tokenizer, template: str = SALMONN_TEMPLATE, max_target_tokens: int = 300):
        if template.count(_SPEECH) != 1 or "{prompt}" not in template:
            raise ValueError(f"template needs exactly one {_SPEECH} and a {{prompt}} field: {template!r}")
        self.tokenizer, self.template, self.max_target_tokens = tokenizer, template, max_target_tokens
        self.before, self.after = template.split(_SPEECH)
        if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
            raise ValueError("the tokenizer needs BOS and EOS tokens")
        self.bos_id, self.eos_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.prefix = [self.bos_id, *self._ids(self.before)]
        # SentencePiece puts a word-start marker on the first piece of any text; byte-level BPE needs the space.
        pieces = tokenizer.convert_ids_to_tokens(self._ids("hello"))
        self._target_space = "" if pieces and pieces[0].startswith("▁") else " "

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prompt_ids(self, prompt: str) -> list[int]:
        """Ids of the text after the speech for one instruction."""
        return self._ids(self.after.format(prompt=prompt.strip()))

    def target_ids(self, target: str) -> list[int]:
        """Ids of one target, truncated, with EOS appended."""
        return self._ids(self._target_space + target)[: self.max_target_tokens] + [self.eos_id]

    def __call__(self, prompts: Sequence[str], targets: Sequence[str] | None = None) -> PromptBatch:
        """Tokenizes a batch. Without targets (generation, scoring) ``labels`` is all -100."""
        if targets is not None and len(targets) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(targets)} targets")
        rows, n_prompt = [], []
        for i, p in enumerate(prompts):
            ids = self.prompt_ids(p)
            n_prompt.append(len(ids))
            rows.append(ids + (self.target_ids(targets[i]) if targets is not None else []))
        L = max(len(r) for r in rows)
        text = torch.full((len(rows), L), self.pad_id, dtype=torch.long)
        labels = torch.full((len(rows), L), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), L), dtype=torch.long)
        for i, (r, n) in enumerate(zip(rows, n_prompt, strict=True)):
            text[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
            labels[i, n : len(r)] = torch.tensor(r[n:], dtype=torch.long)
        prefix = torch.tensor([self.prefix] * len(rows), dtype=torch.long)
        return PromptBatch(prefix, text, mask, labels, torch.tensor(n_prompt, dtype=torch.long))
