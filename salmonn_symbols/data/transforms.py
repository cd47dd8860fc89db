"""Symbol substitution and prompts, as data transforms applied at collate time.

    sample (label "anger", text "...")                      current SymbolBook {"anger": "kesh", ...}
        └─► instruction template, "{labels}" → current symbols in a seeded order
        └─► few-shot: "Text: <train transcript>\\nOutput: <symbol>"  (transcripts never substituted)
        └─► target: "kesh"  (multi-label: "kesh, zolf")

Because substitution happens here, from whatever book is current, a new mapping after discovery takes effect
without rebuilding any dataset. The choices are seeded by (seed, epoch, dataset, sample id), so they are the
same on every rank and after a resume.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Mapping, Sequence

from ..symbols.book import SymbolBook
from .manifest import Sample
from .tasks import TaskConfig

__all__ = ["PromptTransform"]


class PromptTransform:
    """Builds (instruction, target) strings for samples.

    Args:
        tasks: dataset name -> task description.
        few_shot_pool: dataset name -> training samples to draw text examples from (never another split).
        book: The current symbol book; None uses the original label words (the reference condition).
        seed: Seed of every random choice.
        few_shot_header: Line introducing the examples.
    """

    def __init__(
        self,
        tasks: Mapping[str, TaskConfig],
        few_shot_pool: Mapping[str, Sequence[Sample]] | None = None,
        book: SymbolBook | None = None,
        seed: int = 0,
        few_shot_header: str = "Here are a few examples:",
    ):
        self.tasks, self.book, self.seed, self.header = dict(tasks), book, seed, few_shot_header
        self.pool = {d: [s for s in samples if s.text] for d, samples in (few_shot_pool or {}).items()}

    def with_book(self, book: SymbolBook | None) -> PromptTransform:
        """The same transform (tasks, few-shot pool, seed) substituting from ``book`` (None: the label words)."""
        new = copy.copy(self)
        new.book = book
        return new

    def _word(self, label: str) -> str:
        return self.book.symbol_for(label) if self.book is not None else label

    def target(self, sample: Sample) -> str:
        """The target text: the symbol of the label, or the symbols of the labels in label-set order."""
        task = self.tasks[sample.dataset]
        if task.multi_label:
            order = {lab: i for i, lab in enumerate(task.labels)}
            return ", ".join(self._word(lab) for lab in sorted(sample.labels, key=order.__getitem__))
        return self._word(sample.labels[0])

    def instruction(self, sample: Sample, epoch: int = 0) -> str:
        """The prompt text after the speech: instruction (with ``{labels}`` filled) and few-shot examples."""
        task = self.tasks[sample.dataset]
        rng = random.Random(f"{self.seed}:{epoch}:{sample.dataset}:{sample.id}")
        text = sample.prompt or rng.choice(task.instructions)
        if "{labels}" in text:
            words = [self._word(lab) for lab in task.labels]
            rng.shuffle(words)
            text = text.replace("{labels}", ", ".join(words))
        shots = self._few_shot(sample, task, rng)
        if shots:
            text += "\n" + self.header + "\n" + "\n".join(shots) + "\nNow the speech."
        return text

    def _few_shot(self, sample: Sample, task: TaskConfig, rng: random.Random) -> list[str]:
        pool = [s for s in self.pool.get(sample.dataset, ()) if s.id != sample.id]
        if task.few_shot <= 0 or not pool:
            return []
        picks = rng.sample(pool, min(task.few_shot, len(pool)))
        return [f"Text: {s.text}\nOutput: {self.target(s)}" for s in picks]

    def __call__(self, sample: Sample, epoch: int = 0) -> tuple[str, str]:
        """``(instruction, target)`` for one sample."""
        return self.instruction(sample, epoch), self.target(sample)
