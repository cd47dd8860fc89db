"""Validation in original labels, three ways: current symbols through the MLP (soft), the discovered hard
tokens, and the original label words (the reference).

Single-label datasets are scored closed-set (the log-likelihood of every label's word, argmax); multi-label
datasets generate text, which the symbol book maps back to labels. Metrics come from `data.metrics`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from ..data.metrics import MetricAccumulator
from ..data.prompt import PromptBuilder
from ..data.tasks import TaskConfig
from ..model.speech_llm import SpeechLLM
from ..symbols.book import SymbolBook

__all__ = ["EVAL_MODES", "Evaluator", "check_modes", "find_labels", "gather_accumulator", "predict_batch"]

# mode -> (symbol embeddings at symbol positions, whether the prompt uses symbols)
EVAL_MODES = {"soft": ("soft", True), "hard": ("hard", True), "original": ("raw", False)}


def check_modes(eval_modes: Sequence[str], lora_phase_symbols: str) -> list[str]:
    """The evaluation conditions, checked, with the LoRA phase's symbol mode; a ValueError names bad ones."""
    bad = [m for m in eval_modes if m not in EVAL_MODES]
    bad += [lora_phase_symbols] if lora_phase_symbols not in ("soft", "hard", "raw") else []
    if bad:
        raise ValueError(
            f"unknown mode(s) {bad}: eval_modes take {list(EVAL_MODES)}, lora_phase_symbols takes soft|hard|raw"
        )
    return list(eval_modes)


def _subset(batch: dict[str, Any], rows: list[int], original: bool) -> dict[str, Any]:
    idx = torch.tensor(rows, device=batch["wav"].device)
    key = "orig_prompt_text" if original else "prompt_text"
    return {
        "prefix_ids": batch["prefix_ids"][idx],
        "text_ids": batch[f"{key}_ids"][idx],
        "text_mask": batch[f"{key}_mask"][idx],
        "labels": torch.full_like(batch[f"{key}_ids"][idx], -100),
        "max_wav_len": batch.get("max_wav_len"),
    }


@torch.no_grad()
def predict_batch(
    model: SpeechLLM,
    batch: dict[str, Any],
    speech: torch.Tensor,
    tasks: dict[str, TaskConfig],
    book: SymbolBook,
    prompts: PromptBuilder,
    mode: str,
    temperature: float,
    max_new_tokens: int = 16,
) -> list[Any]:
    """Predicted original label (or label list) for every row of ``batch``; None when the output is invalid."""
    symbol_mode, use_symbols = EVAL_MODES[mode]
    preds: list[Any] = [None] * len(batch["ids"])
    by_dataset: dict[str, list[int]] = {}
    for r, d in enumerate(batch["datasets"]):
        by_dataset.setdefault(d, []).append(r)
    for d, rows in by_dataset.items():
        task = tasks[d]
        sub = _subset(batch, rows, not use_symbols)
        sp = speech[torch.tensor(rows, device=speech.device)]
        if not task.multi_label:
            cands = [prompts.target_ids(book.symbol_for(lab) if use_symbols else lab) for lab in task.labels]
            scores = model.score_candidates(sub, cands, symbol_mode, temperature, speech=sp)  # (b, C)
            for r, j in zip(rows, scores.argmax(-1).tolist(), strict=True):
                preds[r] = task.labels[j]
        else:
            out = model.generate(
                sub, max_new_tokens=max_new_tokens, symbol_mode=symbol_mode, temperature=temperature, speech=sp
            )
            texts = prompts.tokenizer.batch_decode(out, skip_special_tokens=True)
            for r, text in zip(rows, texts, strict=True):
                found = (
                    book.decode_prediction(text, multi_label=True) if use_symbols else find_labels(text, task.labels)
                )
                preds[r] = [lab for lab in found if lab in task.labels]
    return preds


def find_labels(text: str, labels: Sequence[str]) -> list[str]:
    """Labels occurring in ``text`` as whole words, in order of appearance, without repeats."""
    alts = "|".join(re.escape(lab) for lab in sorted(labels, key=len, reverse=True))
    found: list[str] = []
    for m in re.finditer(rf"(?<![\w-])(?:{alts})(?![\w-])", text):
        if m.group(0) not in found:
            found.append(m.group(0))
    return found


def gather_accumulator(acc: MetricAccumulator, tasks: Sequence[TaskConfig]) -> MetricAccumulator:
    """Merges the accumulators of every rank (each rank scored a disjoint shard)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return acc
    states: list[Any] = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(states, acc.state_dict())
    merged = MetricAccumulator({t.name: (t.labels, t.multi_label) for t in tasks})
    for s in states:
        merged.merge(s)
    return merged


class Evaluator:
    """One evaluation epoch: predictions of every condition accumulated per dataset, then metrics to log.

    Args:
        tasks: The configured datasets.
        modes: Conditions among `EVAL_MODES`.
    """

    def __init__(self, tasks: Sequence[TaskConfig], modes: Sequence[str]):
        self.tasks, self.modes = list(tasks), list(modes)
        self.accs = {m: MetricAccumulator({t.name: (t.labels, t.multi_label) for t in self.tasks}) for m in self.modes}

    def update(
        self,
        model: SpeechLLM,
        batch: dict[str, Any],
        speech: torch.Tensor,
        book: SymbolBook,
        prompts: PromptBuilder,
        temperature: float,
    ) -> None:
        """Scores one batch in every condition."""
        tasks = {t.name: t for t in self.tasks}
        for mode in self.modes:
            preds = predict_batch(model, batch, speech, tasks, book, prompts, mode, temperature)
            for d in set(batch["datasets"]):
                rows = [r for r, x in enumerate(batch["datasets"]) if x == d]
                self.accs[mode].update(d, [preds[r] for r in rows], [batch["gold"][r] for r in rows])

    def compute(
        self, stage: str, prefixes: dict[str, str] | None = None
    ) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        """Metrics gathered over every rank: ``({"val/acc/ds": v, "val_hard/f1/mean": v, ...}, {mode: values})``;
        identical on every rank, so they need no further reduction. ``prefixes`` renames a mode's metrics."""
        metrics: dict[str, float] = {}
        by_mode: dict[str, dict[str, float]] = {}
        for mode, acc in self.accs.items():
            acc = gather_accumulator(acc, self.tasks)
            if not any(acc.state_dict()["golds"].values()):
                continue
            values = by_mode[mode] = acc.compute()
            prefix = (prefixes or {}).get(mode) or (stage if mode == "soft" else f"{stage}_{mode}")
            for key, v in values.items():  # "ds/acc" -> "val/acc/ds"
                ds, metric = key.split("/", 1)
                metrics[f"{prefix}/{metric}/{ds}"] = v
        return metrics, by_mode
