"""Task-loss re-scoring of discovery candidates on held-out data (as AutoPrompt / LM-BFF label search do).

For a label and its top candidate words, each candidate is put in place of the label's symbol (prompt and
target) for up to ``max_samples`` validation samples of that label; the mean target loss ranks the candidates.
Speech embeddings are computed once per sample and reused for every candidate.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..data.dataset import SpeechCollator, SpeechDataset
from ..data.prompt import PromptBuilder
from ..data.transforms import PromptTransform
from ..model.speech_llm import SpeechLLM
from ..symbols.book import SymbolBook

__all__ = ["TaskLossRescorer"]


class TaskLossRescorer:
    """Callable ``(label, candidates) -> losses`` for `discover_symbols`.

    Args:
        model: The speech LLM (unwrapped: it runs on one rank only).
        dataset: Validation samples.
        transform: The training transform (tasks, few-shot pool, seed); its book is not changed.
        prompts: Prompt tokenizer.
        book: The current symbols.
        max_samples: Validation samples per label.
        batch_size: Rows per forward.
    """

    def __init__(
        self,
        model: SpeechLLM,
        dataset: SpeechDataset,
        transform: PromptTransform,
        prompts: PromptBuilder,
        book: SymbolBook,
        max_samples: int = 32,
        batch_size: int = 8,
    ):
        self.model, self.dataset, self.transform, self.prompts = model, dataset, transform, prompts
        self.book, self.max_samples, self.batch_size = book, max_samples, batch_size
        self._items: dict[str, list[dict]] = {}
        self._speech: dict[str, torch.Tensor] = {}

    def _label_items(self, label: str) -> list[dict]:
        if label not in self._items:
            keys = [
                (d, i, 0)
                for d, group in enumerate(self.dataset.samples)
                for i, s in enumerate(group)
                if label in s.labels
            ][: self.max_samples]
            items = [it for it in (self.dataset[k] for k in keys) if "skipped" not in it]
            self._items[label] = items
        return self._items[label]

    @torch.no_grad()
    def _speech_of(self, label: str, items: list[dict]) -> torch.Tensor:
        if label not in self._speech:
            device = next(self.model.parameters()).device
            chunks = []
            for s in range(0, len(items), self.batch_size):
                part = SpeechCollator(self.prompts, self.transform)(items[s : s + self.batch_size])
                chunks.append(self.model.encode_speech(part["wav"].to(device), part["wav_lengths"].to(device)))
            self._speech[label] = torch.cat(chunks)
        return self._speech[label]

    @torch.no_grad()
    def __call__(self, label: str, candidates: Sequence[str]) -> list[float]:
        items = self._label_items(label)
        if not items:
            return [0.0] * len(candidates)
        speech = self._speech_of(label, items)
        device = speech.device
        losses = []
        for cand in candidates:
            try:
                trial = SymbolBook(labels=self.book.labels, mapping={**self.book.mapping, label: cand})
            except ValueError:  # the word is another label's symbol: it cannot be used
                losses.append(float("inf"))
                continue
            collate = SpeechCollator(self.prompts, self.transform.with_book(trial))
            total, count = 0.0, 0
            for s in range(0, len(items), self.batch_size):
                batch = collate(items[s : s + self.batch_size])
                batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
                out = self.model(batch, symbol_mode="hard", speech=speech[s : s + self.batch_size])
                n = int(out.n_targets)
                total, count = total + out.loss.item() * n, count + n
            losses.append(total / max(count, 1))
        return losses
