"""``salmonn-symbols check-data``: find every data problem before a long GPU job.

Reads every manifest line and decodes every audio file (in worker processes, with a progress bar), prints
each problem as ``file:line: what is wrong``, then the problems by kind and a summary, and exits non-zero if
anything is wrong. ``skipped`` counts what training with ``on_bad_sample: skip`` skips (bad manifest lines and
clips that cannot be decoded: the lines of its ``skipped.jsonl``); ``problems`` adds what stops a run (a task
config that cannot be read, a split with no usable sample).

    target: a task YAML ─► its splits
            a training config (configs/tiny.yaml) ─► every task YAML of its data.tasks ─► their splits
            a JSONL manifest or SALMONN annotation JSON ─► that file
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import yaml

from ..data.audio import SAMPLE_RATE
from ..data.manifest import DataError, DataProblem, EmptySplitError, Sample, problem_kinds, read_split
from ..data.tasks import TaskConfig, load_task_config

__all__ = ["add_args", "check_data", "run"]

_TRAINING_KEYS = {"data", "model", "trainer"}  # top-level keys of a `salmonn-symbols fit` config


def _training_tasks(path: Path) -> list[str] | None:
    """The task YAMLs (``data.tasks``) of a training config, or None when ``path`` is not one."""
    try:
        raw = yaml.safe_load(path.read_text("utf-8")) if path.is_file() else None
    except yaml.YAMLError:
        return None  # load_task_config reports the YAML error with its position
    if not isinstance(raw, dict) or not _TRAINING_KEYS & set(raw):
        return None
    tasks = (raw.get("data") or {}).get("tasks")
    if not tasks:
        raise ValueError(f"{path}: a training config without data.tasks: no task to check")
    return [str(t) for t in tasks]


def _configs(target: str, problems: list[str]) -> list[tuple[TaskConfig, str]]:
    """(task config, split) pairs to check: every split of a task YAML or of every task of a training config,
    or the one manifest given. A task YAML that cannot be read is added to ``problems``."""
    path = Path(target)
    if path.suffix in (".yaml", ".yml"):
        tasks = _training_tasks(path)
        pairs = []
        for task in tasks if tasks is not None else [target]:
            try:
                cfg = load_task_config(task)
            except (DataError, FileNotFoundError, ValueError) as e:
                if tasks is None:
                    raise
                problems.append(f"{path}: data.tasks: {e}")
                continue
            pairs += [(cfg, split) for split in cfg.splits]
        return pairs
    if not path.exists():
        raise FileNotFoundError(f"not found: {path}")
    fmt = "salmonn" if path.suffix == ".json" else "hf" if path.is_dir() else "jsonl"
    if fmt == "hf":
        raise ValueError(f"{path}: an HF dataset needs a task YAML that names its columns")
    # A bare manifest has no label set: take the labels it uses, so only the other checks apply.
    labels = _labels_in(path, fmt)
    cfg = TaskConfig(name="*", labels=labels or ["?"], format=fmt, splits={"data": str(path.resolve())})
    return [(cfg, "data")]


def _labels_in(path: Path, fmt: str) -> list[str]:
    import json

    found: dict[str, None] = {}
    try:
        if fmt == "salmonn":
            rows = json.loads(path.read_text("utf-8")).get("annotation", [])
            items = [r.get("text") for r in rows if isinstance(r, dict)]
        else:
            items = []
            for raw in path.read_bytes().splitlines():
                try:
                    obj = json.loads(raw.decode("utf-8"))
                    items.append(obj.get("label") if isinstance(obj, dict) else None)
                except (UnicodeDecodeError, json.JSONDecodeError):
                    continue
    except (UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        return []
    for it in items:
        for lab in it if isinstance(it, list) else [it]:
            if isinstance(lab, str) and lab:
                found[lab] = None
    return list(found)


def _decode(job: tuple[Sample, TaskConfig]) -> float | DataProblem:
    """Seconds of audio, or the problem, located at the sample's manifest line."""
    from ..data.dataset import SpeechDataset

    sample, cfg = job
    item = SpeechDataset([[sample]], [cfg], on_bad_sample="skip")[(0, 0, 0)]
    if "skipped" in item:
        p = item["skipped"]
        what = p.what + (f" ({p.where})" if p.where != sample.where else "")
        return DataProblem(sample.where, what, sample.id)
    return item["wav"].numel() / SAMPLE_RATE


def check_data(target: str, workers: int = 2, progress: bool = True, out=None) -> int:
    """Checks a task YAML (all its splits), a training config (every task) or a single manifest; returns the
    number of problems (skipped samples and errors)."""
    out = out or sys.stdout  # looked up at call time: sys.stdout may have been replaced since import

    errors: list[str] = []  # what stops a run
    skipped: list[DataProblem] = []  # what a run with on_bad_sample: skip drops
    labels: Counter = Counter()
    seconds, n_samples = 0.0, 0
    for cfg, split in _configs(target, errors):
        try:
            samples, bad = read_split(cfg, split, on_bad_sample="skip")
        except EmptySplitError as e:
            skipped += e.problems
            errors.append(str(e.problem).split("\n")[0])
            continue
        except (DataError, FileNotFoundError) as e:
            errors.append(str(e))
            continue
        skipped += bad
        n_samples += len(samples)
        seconds += _decode_all(samples, cfg, split, workers, progress, skipped)
        for s in samples:
            labels.update(f"{cfg.name}/{split}/{lab}" for lab in s.labels)
    for p in skipped:
        print(p, file=out)
    for e in errors:
        print(e, file=out)
    if skipped:
        print(f"\nskipped samples by kind ({len(skipped)}):", file=out)
        for line in problem_kinds(skipped):
            print(f"  {line}", file=out)
    problems = len(skipped) + len(errors)
    print(
        f"\nsamples: {n_samples}   audio: {seconds / 3600:.3f} h   skipped: {len(skipped)}   problems: {problems}",
        file=out,
    )
    for key, n in sorted(labels.items()):
        print(f"  {key}: {n}", file=out)
    return problems


def _decode_all(
    samples: list[Sample], cfg: TaskConfig, split: str, workers: int, progress: bool, skipped: list[DataProblem]
) -> float:
    """Decodes every sample in worker processes; appends the clips that fail to ``skipped``, returns seconds."""
    from tqdm import tqdm

    seconds = 0.0
    # spawned, not forked: a fork of a process whose OpenMP thread pool has run (any torch op with more than one
    # thread, e.g. a fit earlier in the same process) can hang in the child's first parallel torch op
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, workers), mp_context=ctx) as pool:
        results = pool.map(_decode, [(s, cfg) for s in samples], chunksize=8)
        for res in tqdm(results, total=len(samples), desc=f"{cfg.name}/{split}", disable=not progress, file=sys.stderr):
            if isinstance(res, DataProblem):
                skipped.append(res)
            else:
                seconds += res
    return seconds


def add_args(p: argparse.ArgumentParser) -> None:
    """Adds the options of ``check-data``."""
    p.add_argument(
        "target",
        help="a task YAML (configs/data/*.yaml), a training config (its data.tasks are checked), a JSONL manifest "
        "or a SALMONN annotation JSON",
    )
    p.add_argument("--workers", type=int, default=2, help="decoding processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    """CLI entry: exit status 1 when any problem was found."""
    n = check_data(args.target, args.workers, not args.no_progress)
    return 1 if n else 0
