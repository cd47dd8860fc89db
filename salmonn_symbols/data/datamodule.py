"""LightningDataModule over one or more task descriptions.

The model's tokenizer and the first symbol book are bound with `bind` (the LightningModule does it in
``setup``); after every discovery, rollback and resume the training cycle hands the new book over with
`set_book`. Loaders made after that substitute the new symbols. Loaders are made again for every epoch unless
``persistent_workers`` is set: then they are kept (with their worker processes) until the book changes.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

from ..io import atomic_write_text
from ..symbols.book import SymbolBook
from .dataset import SpeechCollator, SpeechDataset
from .manifest import DataProblem, Sample, read_split
from .prompt import PromptBuilder
from .sampler import BalancedBatchSampler, ShardedEvalBatchSampler
from .tasks import DataConfigError, TaskConfig, load_task_config
from .transforms import PromptTransform

__all__ = ["SymbolDataModule", "write_skipped"]

log = logging.getLogger(__name__)


def write_skipped(path: str | Path, problems: list[DataProblem]) -> Path:
    """Writes skipped samples as JSON lines, atomically (rank 0 only)."""
    import json

    text = "".join(json.dumps(p.as_dict(), ensure_ascii=False) + "\n" for p in problems)
    return atomic_write_text(path, text)


class SymbolDataModule(L.LightningDataModule):
    """Speech-understanding datasets with symbol substitution.

    Args:
        tasks: Paths of task YAMLs (``configs/data/*.yaml``); dataset names must be unique.
        batch_size: Training batch size per process.
        eval_batch_size: Validation/test batch size per process (default: ``batch_size``).
        num_workers: DataLoader worker processes.
        sampling: Dataset balance: "uniform", "temperature" or "proportional".
        sampling_temperature: T of temperature sampling (share ∝ size^(1/T)).
        epoch_size: Training samples per epoch over all processes (default: all training samples once).
        bucket_batches: Batches per length-sorted bucket (1 turns batching by length off).
        on_bad_sample: "error" stops at the first bad sample; "skip" drops it, counts it and writes it to
            ``skipped.jsonl``.
        seed: Seed of sampling, instructions and few-shot examples.
        train_split: Split name used for training (and the only source of few-shot examples).
        val_split: Split name used for validation.
        test_split: Split name used for testing.
        pin_memory: Pin host memory for faster copies to the GPU.
        persistent_workers: Keep the DataLoader workers alive between epochs (until the symbols change).
        few_shot: Text examples per prompt for every task, in place of each task YAML's ``few_shot`` (an
            ablation without editing the YAMLs; None keeps the YAMLs').
    """

    def __init__(
        self,
        tasks: list[str],
        batch_size: int = 8,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        sampling: str = "uniform",
        sampling_temperature: float = 2.0,
        epoch_size: int | None = None,
        bucket_batches: int = 50,
        on_bad_sample: str = "error",
        seed: int = 0,
        train_split: str = "train",
        val_split: str = "validation",
        test_split: str = "test",
        pin_memory: bool = True,
        persistent_workers: bool = False,
        few_shot: int | None = None,
    ):
        super().__init__()
        if not tasks:
            raise DataConfigError("data.tasks: give at least one task YAML")
        if on_bad_sample not in ("error", "skip"):
            raise DataConfigError(f"data.on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
        self.task_paths, self.batch_size = list(tasks), batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.sampling, self.sampling_temperature = num_workers, sampling, sampling_temperature
        self.epoch_size, self.bucket_batches, self.on_bad_sample = epoch_size, bucket_batches, on_bad_sample
        self.seed, self.pin_memory, self.persistent_workers = seed, pin_memory, persistent_workers
        self._loaders: dict[str, DataLoader] = {}
        self.split_names = {"train": train_split, "validation": val_split, "test": test_split}
        self.tasks: list[TaskConfig] = [load_task_config(p) for p in self.task_paths]
        if few_shot is not None:
            if isinstance(few_shot, bool) or not isinstance(few_shot, int) or few_shot < 0:
                raise DataConfigError(f"data.few_shot must be an integer >= 0 or null, got {few_shot!r}")
            self.tasks = [dataclasses.replace(t, few_shot=few_shot) for t in self.tasks]
        names = [t.name for t in self.tasks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise DataConfigError(f"data.tasks: dataset name(s) {dupes} configured twice")
        self.splits: dict[str, list[list[Sample]]] = {}
        self.problems: list[DataProblem] = []
        self.prompts: PromptBuilder | None = None
        self.transform: PromptTransform | None = None
        self.train_sampler: BalancedBatchSampler | None = None

    # ---------------------------------------------------------------------------------------------- setup
    @property
    def labels(self) -> list[str]:
        """Every label of every dataset, each once, in configuration order."""
        return list(dict.fromkeys(lab for t in self.tasks for lab in t.labels))

    def task(self, name: str) -> TaskConfig:
        """The task description of dataset ``name``."""
        for t in self.tasks:
            if t.name == name:
                return t
        raise DataConfigError(f"dataset {name!r} is not configured; configured: {[t.name for t in self.tasks]}")

    def load_split(self, role: str) -> list[list[Sample]]:
        """Reads the ``role`` split ("train", "validation", "test") of every dataset (cached)."""
        if role not in self.splits:
            out = []
            for t in self.tasks:
                samples, problems = read_split(t, self.split_names[role], self.on_bad_sample)
                if problems:
                    # clips that cannot be decoded are found later, as batches meet them: the run summary and
                    # skipped.jsonl give the total
                    log.warning("%s/%s: skipped %d bad manifest lines", t.name, role, len(problems))
                self.problems += problems
                out.append(samples)
            self.splits[role] = out
        return self.splits[role]

    def bind(self, tokenizer, book: SymbolBook | None) -> None:
        """Attaches the model's tokenizer and the symbol book used for substitution."""
        self.prompts = PromptBuilder(tokenizer)
        pool = {t.name: s for t, s in zip(self.tasks, self.load_split("train"), strict=True)}
        self.transform = PromptTransform({t.name: t for t in self.tasks}, pool, book, self.seed)

    @property
    def book(self) -> SymbolBook | None:
        """The symbol book the data side substitutes from (None: the original label words)."""
        return self.transform.book if self.transform is not None else None

    def set_book(self, book: SymbolBook | None) -> None:
        """Switches the substitution to ``book`` (None: the original label words) for the loaders made from now on."""
        if self.transform is None:
            raise RuntimeError("bind() the tokenizer before set_book()")
        self.transform = self.transform.with_book(book)
        self._loaders.clear()  # kept loaders (persistent workers) hold the old book

    def setup(self, stage: str | None = None) -> None:
        self.load_split("train" if stage in (None, "fit") else "test")
        if stage in (None, "fit", "validate"):
            self.load_split("validation")

    # ------------------------------------------------------------------------------------------ loaders
    def _lengths(self, samples: list[list[Sample]]) -> list[list[float]]:
        # The LLM's padding follows the prompt length, which is mostly a property of the dataset's task.
        return [[d * 1e4 + len(s.prompt) + len(str(s.label)) for s in group] for d, group in enumerate(samples)]

    def _loader(self, dataset: SpeechDataset, sampler: Any, with_original: bool = False) -> DataLoader:
        if self.prompts is None or self.transform is None:
            raise RuntimeError("SymbolDataModule.bind(tokenizer, book) must be called before using the loaders")
        # evaluation also scores the original label words (the reference condition)
        original = self.transform.with_book(None) if with_original else None
        return DataLoader(
            dataset,
            batch_sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=SpeechCollator(self.prompts, self.transform, original),
            pin_memory=self.pin_memory,
            persistent_workers=self.persistent_workers and self.num_workers > 0,
        )

    def _kept(self, role: str, make) -> DataLoader:
        """The loader of ``role``: kept between epochs with persistent workers, made anew otherwise."""
        if not (self.persistent_workers and self.num_workers > 0):
            return make()
        if role not in self._loaders:
            self._loaders[role] = make()
        return self._loaders[role]

    def _rank_world(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        return (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)

    def train_dataloader(self) -> DataLoader:
        return self._kept("train", self._train_loader)

    def _train_loader(self) -> DataLoader:
        samples = self.load_split("train")
        rank, world = self._rank_world()
        if self.train_sampler is None:
            self.train_sampler = BalancedBatchSampler(
                [len(s) for s in samples],
                self.batch_size,
                self._lengths(samples),
                self.sampling,
                self.sampling_temperature,
                self.epoch_size,
                self.seed,
                rank,
                world,
                self.bucket_batches,
            )
            if getattr(self, "_resume_sampler", None):
                self.train_sampler.load_state_dict(self._resume_sampler)
                self._resume_sampler = None
        return self._loader(SpeechDataset(samples, self.tasks, self.on_bad_sample), self.train_sampler)

    def _eval_loader(self, role: str) -> DataLoader:
        samples = self.load_split(role)
        rank, world = self._rank_world()
        sampler = ShardedEvalBatchSampler(
            [len(s) for s in samples], self.eval_batch_size, self._lengths(samples), rank, world
        )
        return self._loader(SpeechDataset(samples, self.tasks, self.on_bad_sample), sampler, with_original=True)

    def val_dataloader(self) -> DataLoader:
        return self._kept("validation", lambda: self._eval_loader("validation"))

    def test_dataloader(self) -> DataLoader:
        return self._kept("test", lambda: self._eval_loader("test"))

    def resume_sampler(self, state: dict[str, int] | None) -> None:
        """Resumes the training sampler at ``state`` (epoch and batches consumed) when it is next created."""
        self._resume_sampler = state
        if self.train_sampler is not None and state:
            self.train_sampler.load_state_dict(state)
            self._resume_sampler = None
