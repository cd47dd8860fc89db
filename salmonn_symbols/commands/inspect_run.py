"""``salmonn-symbols inspect``: how the symbols of a run evolved, as a table and a figure.

salmonn-symbols inspect RUN_DIR            # or a folder of cycle_N_*.json copied from a cluster
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import atomic_write
from ..symbols import evolution_table, read_cycles

__all__ = ["add_args", "inspect_run", "run"]


def inspect_run(path: str | Path, png: bool = True) -> Path | None:
    """Prints the label × cycle table and writes ``symbol_evolution.png`` beside the discovery files."""
    path = Path(path)
    print(evolution_table(path))
    if not png:
        return None
    cycles = read_cycles(path)
    labels = [c["original_label"] for c in cycles[0][1]["symbol_changes"]]
    return _plot(path, labels, cycles)


def _plot(target: Path, labels: list[str], cycles: list[tuple[int, dict]]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(2.2 + 1.6 * len(cycles), 1.2 + 0.35 * len(labels)))
    xs = [n for n, _ in cycles]
    for lab in labels:
        changes = [next(c for c in d["symbol_changes"] if c["original_label"] == lab) for _, d in cycles]
        ys = [c["similarity"] for c in changes]
        ax.plot(xs, ys, marker="o", label=lab)
        for x, y, c in zip(xs, ys, changes, strict=True):
            ax.annotate(c["discovered_symbol"], (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    ax.set_xlabel("cycle")
    ax.set_ylabel("cosine to the discovered tokens")
    ax.set_xticks(xs)
    ax.set_title("symbol evolution")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    path = atomic_write(target / "symbol_evolution.png", lambda f: fig.savefig(f, format="png", dpi=120))
    plt.close(fig)
    print(f"wrote {path}")
    return path


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of ``inspect``."""
    p.add_argument("path", help="a run folder, or a folder of cycle_N_*.json files")
    p.add_argument("--no-png", action="store_true", help="only print the table")


def run(args: argparse.Namespace) -> int:
    """Runs ``inspect``."""
    inspect_run(args.path, not args.no_png)
    return 0
