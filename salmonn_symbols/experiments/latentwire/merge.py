"""Combines latentwire runs of disjoint seeds into the results one run over all their seeds would have written.

results.json of run A (seeds a), run B (seeds b), ...   (same config but for seeds / time_budget_s)
  ─► checks: same experiment, config, task, LLM and wires (else an error naming the field); no seed trained twice
  ─► records: the deterministic arms once; each seed's records from the run that trained that seed,
      in the order a single run writes them
  ─► the package's own summaries, targets, results.md and figure (report.write_outputs)

``salmonn-symbols experiment latentwire --merge [A/results.json,B/results.json] --out DIR``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..common import results_header
from .config import LatentWireConfig
from .report import summarize_records, targets, write_outputs
from .run import settings

__all__ = ["MERGE_FREE_KEYS", "merge_results", "merge_runs"]

MERGE_FREE_KEYS = ("seeds", "time_budget_s", "merge")  # config keys that may differ between merged runs
_SETTING = ("arm", "adapter", "ratio", "pool", "noise")


def _load(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"latentwire --merge: no such file {path}")
    try:
        res = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"latentwire --merge: {path}: not JSON ({e})") from e
    missing = [k for k in ("experiment", "config", "task", "llm", "wires", "records", "examples") if k not in res]
    if missing:
        raise ValueError(f"latentwire --merge: {path}: missing field(s) {missing}")
    if res["experiment"] != "latentwire":
        raise ValueError(f"latentwire --merge: {path}: field 'experiment' is {res['experiment']!r}, not latentwire")
    return res


def _check_same(runs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> None:
    """Raises ValueError naming the first config key (or task/llm/wire field) in which a run differs."""
    first, name0 = runs[0], names[0]
    for res, name in zip(runs[1:], names[1:], strict=True):
        keys = sorted(set(first["config"]) | set(res["config"]))
        for k in keys:
            if k in MERGE_FREE_KEYS:
                continue
            a, b = first["config"].get(k, "<absent>"), res["config"].get(k, "<absent>")
            if a != b:
                raise ValueError(f"latentwire --merge: config field '{k}' differs: {a!r} in {name0}, {b!r} in {name}")
        for field in ("task", "llm"):
            if first[field] != res[field]:
                raise ValueError(f"latentwire --merge: field '{field}' differs between {name0} and {name}")
        shape = [[(w["ratio"], w["pool"], w["code_dim"]) for w in r["wires"]] for r in (first, res)]
        if shape[0] != shape[1]:
            raise ValueError(f"latentwire --merge: field 'wires' differs between {name0} and {name}")


def _trained(record: Mapping[str, Any]) -> bool:
    return record["arm"].startswith("adapter")


def _owners(runs: Sequence[Mapping[str, Any]], names: Sequence[str]) -> dict[int, int]:
    """seed -> index of the run whose records of that seed are kept: the run that trained it (at most one), else
    the first run that has it."""
    owner: dict[int, int] = {}
    for i, res in enumerate(runs):
        for seed in sorted({r["seed"] for r in res["records"] if _trained(r)}):
            if seed in owner:
                raise ValueError(
                    f"latentwire --merge: seed {seed} was trained in both {names[owner[seed]]} and {names[i]}; "
                    "runs to merge must have disjoint seeds"
                )
            owner[seed] = i
    for i, res in enumerate(runs):
        for seed in sorted({r["seed"] for r in res["records"] if r["seed"] is not None}):
            owner.setdefault(seed, i)
    return owner


def _order(cfg: LatentWireConfig, seeds: list[int]) -> Any:
    """Sort key that puts records in the order a single run over ``seeds`` writes them."""
    fixed, trained = settings(cfg)
    fidx = {tuple(s.record()[k] for k in _SETTING): i for i, s in enumerate(fixed)}
    tidx = {tuple(s.record()[k] for k in _SETTING): i for i, s in enumerate(trained)}
    sidx = {s: i for i, s in enumerate(seeds)}

    def key(r: Mapping[str, Any]) -> tuple:
        s = tuple(r[k] for k in _SETTING)
        if _trained(r):
            return (1, sidx[r["seed"]], tidx.get(s, len(tidx)))
        return (0, fidx.get(s, len(fidx)), -1 if r["seed"] is None else sidx[r["seed"]])

    return key, len(trained)


def _max_diff(kept: Mapping[str, Any], other: Mapping[str, Any]) -> float:
    """Largest difference in a held-out metric between two records of the same setting and seed."""
    diffs = [
        abs(kept[m] - other[m])
        for m in ("em", "f1", "nll", "cosine")
        if isinstance(kept.get(m), float) and isinstance(other.get(m), float)
    ]
    return max(diffs, default=0.0)


def merge_results(runs: Sequence[Mapping[str, Any]], names: Sequence[str], command: str = "") -> dict[str, Any]:
    """The results of one run over the union of the runs' seeds (see the module docstring).

    Args:
        runs: Parsed ``results.json`` of latentwire runs with the same config but for ``MERGE_FREE_KEYS``.
        names: A name per run for messages and provenance (its path).
        command: The merge command line, kept in the merged results.

    Returns:
        The merged results dict (header, records, summary, targets, examples, ``merged_from``).

    Raises:
        ValueError: A config key, task, LLM or wire shape differs (named), or a seed was trained in two runs.
    """
    if len(runs) < 2:
        raise ValueError("latentwire --merge: give at least two results.json files")
    _check_same(runs, names)
    owner = _owners(runs, names)
    order = sorted(range(len(runs)), key=lambda i: min((s for s, o in owner.items() if o == i), default=math.inf))
    seeds = sorted(owner)
    config = dict(runs[0]["config"]) | {"seeds": seeds}
    cfg = LatentWireConfig(**{k: v for k, v in config.items() if k in LatentWireConfig.__dataclass_fields__})
    key, n_trained = _order(cfg, seeds)
    kept: dict[tuple, dict[str, Any]] = {}
    dropped: list[tuple[tuple, Mapping[str, Any]]] = []  # deterministic arms seen again, other runs' noise seeds
    for i in order:
        for r in runs[i]["records"]:
            k = (*(r[f] for f in _SETTING), r["seed"])
            if k in kept or (r["seed"] is not None and owner[r["seed"]] != i):
                dropped.append((k, r))
            else:
                kept[k] = dict(r)
    drift = max((_max_diff(kept[k], r) for k, r in dropped if k in kept), default=0.0)
    records = sorted(kept.values(), key=key)
    per_seed = {s: sum(1 for r in records if _trained(r) and r["seed"] == s) for s in seeds}
    complete = all(n == n_trained for n in per_seed.values())
    examples: dict[str, list] = {}
    for i in order:  # a single run keeps the first seed's examples: here the examples of the lowest seed's run
        for label, ex in runs[i]["examples"].items():
            examples.setdefault(label, ex)
    summary = summarize_records(records)
    first = runs[order[0]]
    commits = list(dict.fromkeys(r.get("git_commit", "unknown") for r in runs))
    return {
        "experiment": "latentwire",
        "preset": first.get("preset"),
        "date": first.get("date"),
        "git_commit": ", ".join(commits),
        "command": command,
        "environment": first.get("environment", {}),
        "config": config,
        "complete": complete,
        "task": first["task"],
        "llm": first["llm"],
        "wires": first["wires"],
        "records": records,
        "summary": summary,
        "targets": targets(summary, cfg.pool_ratio),
        "examples": examples,
        "seconds": sum(r.get("seconds") or 0.0 for r in runs),
        "merged_from": [_provenance(runs[i], names[i], owner, i, per_seed) for i in order],
        "merge_dropped": {"records": len(dropped), "max_metric_difference": drift},
    }


def _provenance(res: Mapping[str, Any], name: str, owner: dict[int, int], i: int, per_seed: dict) -> dict[str, Any]:
    keys = ("date", "git_commit", "command", "complete", "seconds")
    seeds = [s for s, o in sorted(owner.items()) if o == i]
    return (
        {"file": name}
        | {k: res.get(k) for k in keys}
        | {
            "seeds": seeds,
            "trained_records": {str(s): per_seed[s] for s in seeds},
            "device": res.get("environment", {}).get("device"),
        }
    )


def merge_runs(paths: Sequence[str | Path], out_dir: str | Path) -> dict[str, Any]:
    """Reads the runs' ``results.json``, merges them and writes ``results.json``, ``results.md`` and the figure
    under ``out_dir``."""
    runs = [_load(p) for p in paths]
    command = results_header("latentwire", {})["command"]
    merged = merge_results(runs, [str(p) for p in paths], command)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_outputs(out, merged)
    d = merged["merge_dropped"]
    print(
        f"merged {len(runs)} runs, seeds {merged['config']['seeds']}, {len(merged['records'])} records "
        f"({d['records']} duplicate records of other runs' seeds dropped, largest metric difference "
        f"{d['max_metric_difference']:.4f}); complete: {merged['complete']} -> {out}"
    )
    return merged
