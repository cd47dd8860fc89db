"""Map-style dataset over several datasets' samples, and the collate function that builds model batches.

keys (dataset, index, epoch) ─► SpeechDataset ─► {wav (S,), sample, epoch} | {skipped: DataProblem}
list of items ─► SpeechCollator ─► wav (B, S), wav_lengths (B,), PromptBatch tensors (with and without
                                    targets), ids, datasets, gold labels, skipped problems
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from .audio import AudioStats, audio_key, load_audio, prepare_waveform
from .manifest import DataError, DataProblem, Sample
from .prompt import PromptBuilder
from .tasks import TaskConfig
from .transforms import PromptTransform

__all__ = ["SpeechCollator", "SpeechDataset"]


class SpeechDataset(Dataset):
    """Samples of several datasets, indexed by ``(dataset index, sample index, epoch)`` keys.

    Args:
        samples: One list of samples per dataset.
        tasks: The matching task descriptions (needed for HF datasets with decoded audio columns).
        on_bad_sample: "error" raises on an undecodable clip; "skip" returns a skip record instead.
    """

    def __init__(
        self,
        samples: Sequence[Sequence[Sample]],
        tasks: Sequence[TaskConfig] | None = None,
        on_bad_sample: str = "error",
    ):
        self.samples = [list(s) for s in samples]
        self.tasks = list(tasks) if tasks is not None else None
        self.on_bad_sample = on_bad_sample
        self.stats = AudioStats()
        self._hf: dict[int, Any] = {}

    def __len__(self) -> int:
        return sum(len(s) for s in self.samples)

    def sizes(self) -> list[int]:
        """Samples per dataset."""
        return [len(s) for s in self.samples]

    def _hf_audio(self, d: int, sample: Sample) -> torch.Tensor:
        import io

        import datasets
        import soundfile as sf

        if d not in self._hf:
            col = self.tasks[d].columns["audio"]
            ds = datasets.load_from_disk(sample.audio)
            self._hf[d] = (ds.cast_column(col, datasets.Audio(decode=False)), col)
        ds, col = self._hf[d]
        try:
            wav, sr = sf.read(io.BytesIO(ds[sample.audio_index][col]["bytes"]), dtype="float32")
        except (sf.LibsndfileError, RuntimeError, TypeError) as e:
            raise DataError(DataProblem(sample.where, f"cannot decode audio ({e})", sample.id)) from None
        return prepare_waveform(wav, sr, sample.where, sample.id, self.stats)

    def __getitem__(self, key: tuple[int, int, int]) -> dict[str, Any]:
        d, i, epoch = key
        sample = self.samples[d][i]
        try:
            if sample.audio_index is not None:
                wav = self._hf_audio(d, sample)
            else:
                wav = load_audio(sample.audio, sample.id, self.stats)
        except DataError as e:
            if self.on_bad_sample == "error":
                raise DataError(
                    type(e.problem)(f"{sample.where} ({e.problem.where})", e.problem.what, sample.id)
                ) from None
            return {"skipped": e.problem, "sample": sample}
        return {"wav": wav, "sample": sample, "epoch": epoch}


class SpeechCollator:
    """Pads audio and tokenizes prompts and targets with the current symbols.

    Args:
        prompts: SALMONN prompt tokenizer.
        transform: Symbol and prompt transform (holds the current symbol book).
        original: Optional transform with the original label words; its prompts are added as
            ``orig_prompt_text_ids`` / ``orig_prompt_text_mask`` (the reference condition of evaluation).
    """

    def __init__(self, prompts: PromptBuilder, transform: PromptTransform, original: PromptTransform | None = None):
        self.prompts, self.transform, self.original = prompts, transform, original

    def __call__(self, items: Sequence[dict[str, Any]]) -> dict[str, Any]:
        skipped = [it["skipped"] for it in items if "skipped" in it]
        items = [it for it in items if "skipped" not in it]
        batch: dict[str, Any] = {"skipped": skipped}
        if not items:
            return batch
        samples = [it["sample"] for it in items]
        texts = [self.transform(s, it["epoch"]) for s, it in zip(samples, items, strict=True)]
        lengths = torch.tensor([it["wav"].numel() for it in items])
        wav = torch.zeros(len(items), int(lengths.max()))
        for r, it in enumerate(items):
            wav[r, : it["wav"].numel()] = it["wav"]
        train = self.prompts([t[0] for t in texts], [t[1] for t in texts])
        prompt_only = self.prompts([t[0] for t in texts])
        batch.update(train.as_dict())
        batch["target_len"] = int((train.labels != -100).sum(1).max())  # logits are needed at the targets only
        batch.update(
            wav=wav,
            wav_lengths=lengths,
            max_wav_len=int(lengths.max()),  # a plain int: the model trims speech windows without a device sync
            prompt_text_ids=prompt_only.text_ids,
            prompt_text_mask=prompt_only.text_mask,
            ids=[s.id for s in samples],
            datasets=[s.dataset for s in samples],
            gold=[s.label for s in samples],
            targets=[t[1] for t in texts],
            audio_keys=[audio_key(it["wav"]) for it in items],  # hashed here, in the workers, not in the step
        )
        if self.original is not None:
            eps = [it["epoch"] for it in items]
            orig = self.prompts([self.original.instruction(s, e) for s, e in zip(samples, eps, strict=True)])
            batch.update(orig_prompt_text_ids=orig.text_ids, orig_prompt_text_mask=orig.text_mask)
        return batch
