"""What every companion experiment shares: its command line, presets, seeds, loggers and result files.

    salmonn-symbols experiment NAME [--preset quick|full] [--config FILE.yaml ...] [--key value ...]
        the experiment's typed config (a dataclass) ◄─ preset ◄─ config files ◄─ command-line keys
        ─► Experiment.run(cfg, out_dir) ─► results.json (header: config, git commit, date, versions, device)
                                            figures (PNG), logs/ (CSV; W&B offline when asked)

An experiment is a `salmonn_symbols.experiments.<name>` package whose ``EXPERIMENT`` attribute is an
`Experiment`. It owns its LightningModule and data; it takes the command line, logging and IO from here.
"""

from __future__ import annotations

import dataclasses
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ..io import atomic_write_json

__all__ = [
    "Experiment",
    "environment",
    "git_commit",
    "make_loggers",
    "markdown_table",
    "mean_std",
    "parse_experiment_args",
    "results_header",
    "seed_everything",
    "summarize",
    "write_results",
]


@dataclass
class Experiment:
    """A companion experiment as the command line sees it.

    Attributes:
        name: Command name (``salmonn-symbols experiment <name>``).
        description: One line for ``--help``.
        config_cls: The typed config: a dataclass whose fields are the command's keys.
        run: ``run(cfg, out_dir) -> results``; writes ``results.json`` and figures under ``out_dir``.
        presets: Named overrides of the config defaults; "quick" runs on a CPU in under 2 minutes, "full" is the
            GPU run that the docs report.
        default_preset: The preset used when none is given.
    """

    name: str
    description: str
    config_cls: type
    run: Callable[[Any, Path], Any]
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    default_preset: str = "quick"


def parse_experiment_args(exp: Experiment, argv: Sequence[str]) -> tuple[Any, Path, str]:
    """Parses ``[--preset P] [--config F ...] [--out DIR] [--key value ...]`` into ``(config, out_dir, preset)``.

    Precedence, lowest first: the dataclass defaults, the preset, config files (in order), command-line keys.
    A misspelt key is an error that names it.
    """
    from jsonargparse import ActionConfigFile, ArgumentParser

    argv = list(argv)
    preset = exp.default_preset
    if "--preset" in argv:
        i = argv.index("--preset")
        if i + 1 >= len(argv):
            raise ValueError("--preset needs a name")
        preset = argv[i + 1]
        del argv[i : i + 2]
    if preset not in exp.presets:
        raise ValueError(f"experiment {exp.name}: unknown preset {preset!r}; presets: {sorted(exp.presets)}")
    parser = ArgumentParser(prog=f"salmonn-symbols experiment {exp.name}", description=exp.description)
    parser.add_argument("--config", action=ActionConfigFile, help="YAML of overrides (repeatable)")
    parser.add_argument("--out", type=str | None, default=None, help="output folder")
    parser.add_class_arguments(exp.config_cls, as_group=True)  # keys at the top: --steps 10, "steps: 10"
    # the preset becomes the defaults, so config files and keys on the command line override it
    parser.set_defaults(dict(exp.presets[preset]))
    ns = parser.instantiate(parser.parse_args(argv))
    names = [f.name for f in dataclasses.fields(exp.config_cls)]
    cfg = exp.config_cls(**{k: _value(ns[k]) for k in names})
    out = Path(ns.out or os.path.join("runs", "experiments", exp.name, preset))
    return cfg, out, preset


def _value(v: Any) -> Any:
    """A parsed value as plain Python (jsonargparse keeps nested groups as Namespaces)."""
    from jsonargparse import Namespace

    return v.as_dict() if isinstance(v, Namespace) else v


# ------------------------------------------------------------------------------------------------ provenance
def git_commit(path: str | os.PathLike | None = None) -> str:
    """The commit of the repository holding ``path`` (default: this package), with "+dirty" if it has local
    changes; "unknown" outside a git checkout."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=where, capture_output=True, text=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def environment() -> dict[str, Any]:
    """Python, torch and device of this run."""
    import torch

    env = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform()}
    if torch.cuda.is_available():
        env["device"] = torch.cuda.get_device_name()
        env["gpus"] = torch.cuda.device_count()
    else:
        env["device"] = "cpu"
        env["threads"] = torch.get_num_threads()
    return env


def results_header(name: str, cfg: Any, preset: str | None = None) -> dict[str, Any]:
    """The first fields of every ``results.json``: what ran, with which config, on which commit and machine."""
    config = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    return {
        "experiment": name,
        "preset": preset,
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_commit": git_commit(),
        "command": " ".join(["salmonn-symbols", *sys.argv[1:]]) if sys.argv else "",
        "environment": environment(),
        "config": config,
    }


def write_results(out_dir: str | os.PathLike, results: Mapping[str, Any], name: str = "results.json") -> Path:
    """Writes ``results`` atomically as ``out_dir/name`` and returns the path."""
    return atomic_write_json(Path(out_dir) / name, _plain(results))


def _plain(obj: Any) -> Any:
    """JSON-safe copy: numpy and torch scalars to floats, NaN and inf to None (strict JSON has neither)."""
    if isinstance(obj, Mapping):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item) and getattr(obj, "ndim", 0) == 0:
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


# ----------------------------------------------------------------------------------------- seeds and logs
def seed_everything(seed: int) -> None:
    """Seeds Python, NumPy and torch (and DataLoader workers), without Lightning's log line."""
    import logging

    import lightning as L

    logging.getLogger("lightning.fabric.utilities.seed").setLevel(logging.WARNING)
    L.seed_everything(seed, workers=True, verbose=False)


def make_loggers(out_dir: str | os.PathLike, run_name: str, wandb: bool = False, project: str | None = None) -> list:
    """A CSV logger under ``out_dir/logs/<run_name>`` and, when ``wandb``, a W&B logger (offline unless an API
    key is set), as ``fit`` logs; pass the list to ``lightning.Trainer(logger=...)``."""
    from lightning.pytorch.loggers import CSVLogger

    out = [CSVLogger(str(Path(out_dir) / "logs"), name=run_name, version="")]
    if wandb:
        from lightning.pytorch.loggers import WandbLogger

        online = bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "online"
        out.append(
            WandbLogger(
                project=project or os.environ.get("WANDB_PROJECT", "salmonn-symbols-experiments"),
                name=run_name,
                save_dir=str(out_dir),
                offline=not online,
            )
        )
    return out


# ------------------------------------------------------------------------------------------------ summaries
def mean_std(values: Iterable[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value); NaN for no values."""
    xs = [float(v) for v in values]
    if not xs:
        return float("nan"), float("nan")
    m = sum(xs) / len(xs)
    if len(xs) == 1:
        return m, 0.0
    return m, math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def summarize(records: Sequence[Mapping[str, Any]], by: Sequence[str], metrics: Sequence[str]) -> list[dict]:
    """Groups ``records`` (one per seed) by the ``by`` keys and gives ``<metric>_mean``/``<metric>_std`` and
    ``n`` per group, in first-seen order."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for r in records:
        groups.setdefault(tuple(r[k] for k in by), []).append(r)
    out = []
    for key, rows in groups.items():
        row: dict[str, Any] = dict(zip(by, key, strict=True)) | {"n": len(rows)}
        for m in metrics:
            vals = [r[m] for r in rows if r.get(m) is not None]
            row[f"{m}_mean"], row[f"{m}_std"] = mean_std(vals)
        out.append(row)
    return out


def markdown_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], digits: int = 3) -> str:
    """A GitHub table of ``rows``; ``x_mean``/``x_std`` pairs named as column ``x`` print as "m ± s"."""

    def cell(row: Mapping[str, Any], col: str) -> str:
        if col not in row and f"{col}_mean" in row:
            m, s = row[f"{col}_mean"], row.get(f"{col}_std")
            if m is None or (isinstance(m, float) and math.isnan(m)):
                return "n/a"
            return f"{m:.{digits}f} ± {s:.{digits}f}" if s is not None else f"{m:.{digits}f}"
        v = row.get(col, "")
        return f"{v:.{digits}f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(r, c) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
