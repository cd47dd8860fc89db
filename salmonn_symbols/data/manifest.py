"""Reading samples: JSONL manifests, SALMONN annotation JSON, and HF datasets, with errors that say where.

Every problem is a `DataProblem` with a location (``file:line`` or ``file:sample-id``). With
``on_bad_sample="error"`` the first problem raises `DataError`; with ``"skip"`` the sample is dropped and the
problem is kept in the returned list, so the caller can count, log and write it to ``skipped.jsonl``.
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tasks import TaskConfig

__all__ = ["DataError", "DataProblem", "EmptySplitError", "Sample", "problem_kinds", "read_split"]


@dataclass
class DataProblem:
    """One bad input: where it is and what is wrong."""

    where: str
    what: str
    sample_id: str | None = None

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"

    def as_dict(self) -> dict[str, Any]:
        """Plain form, one line of ``skipped.jsonl``."""
        return {"where": self.where, "what": self.what, "id": self.sample_id}


class DataError(ValueError):
    """Bad input data; the message is ``file:line: what is wrong``."""

    def __init__(self, problem: DataProblem):
        self.problem = problem
        super().__init__(str(problem))


class EmptySplitError(DataError):
    """A split with no usable sample; ``problems`` holds why each of its lines was skipped."""

    def __init__(self, problem: DataProblem, problems: Sequence[DataProblem]):
        self.problems = list(problems)
        super().__init__(problem)


def _kind(what: str) -> str:
    """What is wrong, without the values that differ between samples (names, numbers, lists, details)."""
    head = re.split(r": | \(", what, maxsplit=1)[0]
    return re.sub(r"'[^']*'|\[[^\]]*\]|\b\d+\b", "…", head)


def problem_kinds(problems: Sequence[DataProblem], examples: int = 3) -> list[str]:
    """One line per kind of problem, most frequent first: ``12 × audio file not found (file:3, file:4, ...)``."""
    groups: dict[str, list[str]] = defaultdict(list)
    for p in problems:
        groups[_kind(p.what)].append(p.where)
    lines = []
    for kind, wheres in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        more = ", ..." if len(wheres) > examples else ""
        lines.append(f"{len(wheres)} × {kind} ({', '.join(wheres[:examples])}{more})")
    return lines


@dataclass
class Sample:
    """One speech sample of one dataset.

    Attributes:
        id: Unique id within the dataset.
        audio: Absolute audio path, or the HF dataset folder when ``audio_index`` is set.
        dataset: Dataset name.
        label: Original label, or a list of labels for multi-label tasks.
        task: Task name.
        text: Transcript, if any (used for few-shot examples).
        prompt: Per-sample instruction, overriding the task's templates.
        where: ``file:line`` of the sample's source.
        audio_index: Row of the HF dataset whose audio column holds the decoded waveform.
    """

    id: str
    audio: str
    dataset: str
    label: str | list[str]
    task: str = ""
    text: str = ""
    prompt: str = ""
    where: str = ""
    audio_index: int | None = None

    @property
    def labels(self) -> list[str]:
        """The label(s) as a list."""
        return list(self.label) if isinstance(self.label, list) else [self.label]


def read_split(cfg: TaskConfig, split: str, on_bad_sample: str = "error") -> tuple[list[Sample], list[DataProblem]]:
    """Reads one split of one dataset and validates every sample.

    Args:
        cfg: The dataset's task description.
        split: Split name ("train", "validation", "test", ...).
        on_bad_sample: "error" raises on the first problem; "skip" drops bad samples and returns the problems.

    Returns:
        ``(samples, problems)``.

    Raises:
        DataError: In "error" mode, for the first problem. In both modes, for an empty split.
    """
    if on_bad_sample not in ("error", "skip"):
        raise ValueError(f"on_bad_sample must be 'error' or 'skip', got {on_bad_sample!r}")
    path = cfg.split_path(split)
    if not path.exists():
        raise FileNotFoundError(f"{cfg.source or cfg.name}: split {split!r} of {cfg.name!r}: file not found: {path}")
    reader = {"jsonl": _jsonl_rows, "salmonn": _salmonn_rows, "hf": _hf_rows}[cfg.format]
    samples, problems, seen = [], [], {}
    for where, row in reader(path, cfg):
        try:
            if isinstance(row, DataProblem):
                raise DataError(row)
            s = _sample(row, cfg, path, where)
            if s.id in seen:
                raise DataError(DataProblem(where, f"duplicate id {s.id!r} (first at {seen[s.id]})", s.id))
            seen[s.id] = where
            samples.append(s)
        except DataError as e:
            if on_bad_sample == "error":
                raise
            problems.append(e.problem)
    if not samples:
        why = "".join(f"\n  {line}" for line in problem_kinds(problems))
        msg = f"split {split!r} of dataset {cfg.name!r} has no usable samples"
        raise EmptySplitError(
            DataProblem(str(path), msg + (f" ({len(problems)} skipped):{why}" if why else "")), problems
        )
    return samples, problems


def _jsonl_rows(path: Path, cfg: TaskConfig):
    with open(path, "rb") as f:
        for n, raw in enumerate(f, start=1):
            where = f"{path}:{n}"
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                yield where, DataProblem(where, "line is not UTF-8 text")
                continue
            except json.JSONDecodeError as e:
                yield where, DataProblem(where, f"line is not valid JSON ({e.msg} at column {e.colno})")
                continue
            yield where, obj if isinstance(obj, dict) else DataProblem(where, "line is not a JSON object")


def _salmonn_rows(path: Path, cfg: TaskConfig):
    try:
        data = json.loads(path.read_text("utf-8"))
    except UnicodeDecodeError:
        yield str(path), DataProblem(str(path), "file is not UTF-8 text")
        return
    except json.JSONDecodeError as e:
        yield f"{path}:{e.lineno}", DataProblem(f"{path}:{e.lineno}", f"invalid JSON: {e.msg}")
        return
    items = data.get("annotation") if isinstance(data, dict) else None
    if not isinstance(items, list):
        yield str(path), DataProblem(str(path), 'expected {"annotation": [...]} (SALMONN annotation format)')
        return
    for i, item in enumerate(items):
        where = f"{path}:annotation[{i}]"
        if not isinstance(item, dict):
            yield where, DataProblem(where, "annotation entry is not an object")
            continue
        # SALMONN's layout: path, text (the target), task, Q (question); the target is our label
        row = {
            "id": item.get("id", f"{path.stem}-{i}"),
            "audio": item.get("path"),
            "label": item.get("text"),
            "task": item.get("task", ""),
            "prompt": item.get("Q", ""),
        }
        if cfg.multi_label and isinstance(row["label"], str):
            row["label"] = [x.strip() for x in row["label"].split(cfg.label_separator) if x.strip()]
        yield where, row


def _hf_rows(path: Path, cfg: TaskConfig):
    import datasets

    try:
        ds = (
            datasets.load_from_disk(str(path))
            if path.is_dir()
            else datasets.load_dataset(
                path.suffix.lstrip(".").replace("jsonl", "json"), data_files=str(path), split="train"
            )
        )
    except Exception as e:  # datasets raises many types for unreadable folders
        yield str(path), DataProblem(str(path), f"cannot open HF dataset ({type(e).__name__}: {e})")
        return
    if isinstance(ds, datasets.DatasetDict):
        yield str(path), DataProblem(str(path), f"expected one split, found a DatasetDict {list(ds)}")
        return
    cols = cfg.columns
    missing = [c for c in cols.values() if c not in ds.column_names]
    if missing:
        yield str(path), DataProblem(str(path), f"column(s) {missing} not in the dataset; it has {ds.column_names}")
        return
    if isinstance(ds.features[cols["audio"]], datasets.Audio):
        # Read the stored bytes ourselves (soundfile) rather than through datasets' own audio decoder.
        ds = ds.cast_column(cols["audio"], datasets.Audio(decode=False))
    for i, item in enumerate(ds):
        row = {k: item.get(v) for k, v in cols.items() if k != "audio"}
        row.setdefault("id", f"{cfg.name}-{i}")
        row["id"] = row["id"] if row["id"] is not None else f"{cfg.name}-{i}"
        audio = item[cols["audio"]]
        if isinstance(audio, dict):  # an Audio feature: a file path, or bytes kept inside the dataset
            if audio.get("bytes") is None and audio.get("path"):
                row["audio"] = audio["path"]
            else:
                row["audio"], row["_audio_index"] = str(path), i
        else:
            row["audio"] = audio
        if cfg.multi_label and isinstance(row.get("label"), str):
            row["label"] = [x.strip() for x in row["label"].split(cfg.label_separator) if x.strip()]
        yield f"{path}:row {i}", row


def _sample(row: dict, cfg: TaskConfig, path: Path, where: str) -> Sample:
    sid = row.get("id")
    missing = [k for k in ("id", "audio", "label") if row.get(k) in (None, "")]
    if missing:
        raise DataError(DataProblem(where, f"missing required field(s) {missing}", str(sid) if sid else None))
    sid = str(sid)
    if cfg.label_aliases:
        alias = cfg.label_aliases
        row["label"] = (
            [alias.get(x, x) for x in row["label"]]
            if isinstance(row["label"], list)
            else alias.get(row["label"], row["label"])
        )
    labels = row["label"] if isinstance(row["label"], list) else [row["label"]]
    if not cfg.multi_label and isinstance(row["label"], list):
        raise DataError(DataProblem(where, f"dataset {cfg.name!r} is single-label but label is a list", sid))
    unknown = [lab for lab in labels if lab not in cfg.labels]
    if unknown or not labels:
        raise DataError(
            DataProblem(where, f"label(s) {unknown or labels} not in the label set of {cfg.name!r}: {cfg.labels}", sid)
        )
    dataset = row.get("dataset") or cfg.name
    if dataset != cfg.name:
        raise DataError(DataProblem(where, f"dataset {dataset!r} is not configured here (expected {cfg.name!r})", sid))
    audio = str(row["audio"])
    if row.get("_audio_index") is None:
        audio = audio if os.path.isabs(audio) else str((path.parent if path.is_file() else path) / audio)
        if not os.path.isfile(audio):
            raise DataError(DataProblem(where, f"audio file not found: {audio}", sid))
    return Sample(
        id=sid,
        audio=audio,
        dataset=cfg.name,
        label=row["label"],
        task=row.get("task") or cfg.task,
        text=str(row.get("text") or ""),
        prompt=str(row.get("prompt") or ""),
        where=where,
        audio_index=row.get("_audio_index"),
    )
