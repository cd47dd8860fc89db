"""Task descriptions: one YAML per dataset under ``configs/data/``.

    name: slue_voxceleb            # dataset name used in metrics (val/slue_voxceleb/f1)
    task: sentiment
    labels: [positive, negative, neutral]     # the "original symbols"
    multi_label: false
    instructions: ["What is the sentiment of the speaker? Options: {labels}."]
    few_shot: 3                    # text examples from the training split put into the prompt
    format: jsonl                  # jsonl | salmonn | hf
    splits: {train: train.jsonl, validation: dev.jsonl}     # relative to this file
    columns: {audio: audio, label: sentiment, text: normalized_text, id: id}   # hf only
    label_aliases: {Positive: positive}   # raw label -> label

Every unknown key is an error that names the file and the key, so a typo never silently falls back to a
default.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

__all__ = ["DataConfigError", "TaskConfig", "load_task_config"]

_FORMATS = ("jsonl", "salmonn", "hf")
_COLUMNS = ("audio", "label", "text", "id", "prompt", "task")


class DataConfigError(ValueError):
    """A task description or data config is invalid; the message names the file and the field."""


@dataclass
class TaskConfig:
    """One dataset and its task.

    Attributes:
        name: Dataset name, unique across the configured datasets.
        labels: The original label set.
        task: Task name (free text, e.g. "sentiment").
        multi_label: Whether a sample has a list of labels.
        instructions: Instruction templates; ``{labels}`` becomes the current symbols in a seeded order.
        few_shot: Number of text examples (from the training split) in each prompt.
        format: "jsonl" manifests, "salmonn" annotation JSON, or "hf" datasets (save_to_disk folder or files).
        splits: split name -> path (relative paths are relative to the YAML file).
        columns: For "hf": column names of audio, label, text, id (and optional prompt, task).
        label_separator: For "hf" and "salmonn" multi-label string labels: the separator between labels.
        label_aliases: Raw label -> label, applied before validation (e.g. {"Positive": "positive"}).
        source: The YAML file this came from (for error messages).
    """

    name: str
    labels: list[str]
    task: str = ""
    multi_label: bool = False
    instructions: list[str] = field(default_factory=lambda: ["What is the label of this audio? Options: {labels}."])
    few_shot: int = 0
    format: str = "jsonl"
    splits: dict[str, str] = field(default_factory=dict)
    columns: dict[str, str] = field(default_factory=dict)
    label_separator: str = ","
    label_aliases: dict[str, str] = field(default_factory=dict)
    source: str = ""

    def split_path(self, split: str) -> Path:
        """Absolute path of ``split``; raises `DataConfigError` if the split is not configured."""
        if split not in self.splits:
            raise DataConfigError(
                f"{self.source or self.name}: dataset {self.name!r} has no split {split!r}; "
                f"configured splits: {sorted(self.splits)}"
            )
        p = Path(self.splits[split])
        return p if p.is_absolute() or not self.source else Path(self.source).parent / p


def _fail(src: str, msg: str) -> None:
    raise DataConfigError(f"{src}: {msg}")


def _check(cfg: TaskConfig, src: str) -> TaskConfig:
    if not isinstance(cfg.name, str) or not cfg.name.strip():
        _fail(src, "field 'name' must be a non-empty string")
    if not isinstance(cfg.labels, list) or not cfg.labels or not all(isinstance(x, str) and x for x in cfg.labels):
        _fail(src, "field 'labels' must be a non-empty list of strings")
    dupes = sorted({x for x in cfg.labels if cfg.labels.count(x) > 1})
    if dupes:
        _fail(src, f"field 'labels' repeats {dupes}")
    if cfg.format not in _FORMATS:
        _fail(src, f"field 'format' must be one of {list(_FORMATS)}, got {cfg.format!r}")
    if (
        not isinstance(cfg.instructions, list)
        or not cfg.instructions
        or not all(isinstance(x, str) and x.strip() for x in cfg.instructions)
    ):
        _fail(src, "field 'instructions' must be a non-empty list of strings")
    if not isinstance(cfg.few_shot, int) or cfg.few_shot < 0:
        _fail(src, f"field 'few_shot' must be an integer >= 0, got {cfg.few_shot!r}")
    if not isinstance(cfg.splits, dict) or not cfg.splits:
        _fail(src, "field 'splits' must map split names to paths")
    bad_alias = sorted(v for v in cfg.label_aliases.values() if v not in cfg.labels)
    if bad_alias:
        _fail(src, f"field 'label_aliases' maps to label(s) {bad_alias} that are not in 'labels'")
    bad_cols = sorted(set(cfg.columns) - set(_COLUMNS))
    if bad_cols:
        _fail(src, f"field 'columns' has unknown key(s) {bad_cols}; allowed: {list(_COLUMNS)}")
    if cfg.format == "hf":
        missing = [c for c in ("audio", "label") if c not in cfg.columns]
        if missing:
            _fail(src, f"format 'hf' needs columns {missing} in field 'columns'")
    return cfg


def load_task_config(path: str | os.PathLike) -> TaskConfig:
    """Reads and validates a task YAML.

    Raises:
        DataConfigError: naming the file and the offending field (unknown keys included).
        FileNotFoundError: if the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task config not found: {path}")
    try:
        raw: Any = yaml.safe_load(path.read_text("utf-8"))
    except yaml.YAMLError as e:
        raise DataConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise DataConfigError(f"{path}: expected a mapping of fields")
    known = {f.name for f in fields(TaskConfig)} - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise DataConfigError(f"{path}: unknown field(s) {unknown}; known fields: {sorted(known)}")
    for req in ("name", "labels"):
        if req not in raw:
            raise DataConfigError(f"{path}: missing required field {req!r}")
    return _check(TaskConfig(**raw, source=str(path)), str(path))
