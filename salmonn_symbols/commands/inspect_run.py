"""``salmonn-symbols inspect``: how the symbols of a run evolved, as a table and a figure.

salmonn-symbols inspect RUN_DIR            # or a folder of cycle_N_*.json copied from a cluster

    symbol_evolution.png
      top     label × cycle grid: each cell the symbol, coloured by change type (CHANGED / KEPT / UNCHANGED /
              OVERRIDDEN; cycle 0 is the start), with the evidence of the decision under it (Δ task loss ± se,
              or the cosine confidence band when discovery was not verified)
      bottom  validation accuracy per cycle: soft, hard and original labels, and the discovered mapping right
              after its discovery (from metrics.csv, when the run has one)
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

from ..io import atomic_write
from ..symbols import evolution_table, read_cycles

__all__ = ["add_args", "cycle_accuracy", "evolution_figure", "inspect_run", "last_metric", "print_cycles", "run"]

COLOURS = {"start": "#e8e8e8", "CHANGED": "#9fd89f", "KEPT": "#f6cf8a", "UNCHANGED": "#d7dce3", "OVERRIDDEN": "#a9c8f0"}
CONDITIONS = {"val/acc/mean": "soft", "val_hard/acc/mean": "hard", "val_original/acc/mean": "original"}


def inspect_run(path: str | Path, png: bool = True, table: bool = True) -> Path | None:
    """Prints the label × cycle table and writes ``symbol_evolution.png`` beside the discovery files."""
    path = Path(path)
    if table:
        print(evolution_table(path))
    if not png:
        return None
    run = path.parent if path.name == "discovery" else path
    return _plot(path, read_cycles(path), cycle_accuracy(run))


def cycle_accuracy(run: Path) -> dict[str, dict[int, float]]:
    """condition -> mapping -> mean validation accuracy, from ``metrics.csv`` and the epoch → cycle record in
    ``phase_checks.jsonl``. A mapping is named by the cycle that discovered it (0: the start): soft, hard and
    original are the last validation of the cycle that trained with it (cycle c trains with mapping c - 1);
    ``discovered`` is the validation right after its discovery."""
    import json

    metrics, checks = run / "metrics.csv", run / "phase_checks.jsonl"
    if not metrics.is_file() or not checks.is_file():
        return {}
    cycle_of = {}
    for line in checks.read_text().splitlines():
        rec = json.loads(line)
        cycle_of[int(rec["epoch"])] = int(rec["cycle"])
    out: dict[str, dict[int, float]] = {}
    with open(metrics, newline="") as f:
        for row in csv.DictReader(f):
            epoch = int(float(row["epoch"])) if row.get("epoch") else None
            if epoch not in cycle_of:
                continue
            for key, name in (*CONDITIONS.items(), ("val_discovered/acc/mean", "discovered")):
                if row.get(key):
                    mapping = cycle_of[epoch] - (name != "discovered")
                    out.setdefault(name, {})[mapping] = float(row[key])  # later rows win
    return out


def last_metric(run: Path, key: str) -> float | None:
    """The last logged value of ``key`` in ``run/metrics.csv`` (None if never logged)."""
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get(key)]
    return float(rows[-1][key]) if rows else None


def print_cycles(run: Path) -> None:
    """Prints the validation accuracy of each mapping, the evolution table, and writes symbol_evolution.png."""
    import json

    acc = cycle_accuracy(run)
    mappings = sorted({m for series in acc.values() for m in series})
    print("\nvalidation accuracy with each mapping (mean over datasets):")
    print("  mapping            soft   hard   original   right after its discovery")
    for m in mappings:
        name = "random start" if m == 0 else f"cycle {m} discovery"

        def cell(cond: str, m: int = m) -> str:
            v = acc.get(cond, {}).get(m)
            return f"{v:.3f}" if v is not None else "  -  "

        print(f"  {name:18s} {cell('soft')}  {cell('hard')}  {cell('original')}      {cell('discovered')}")
    print("\nsymbol evolution (label -> symbol per cycle, with the evidence of each decision):")
    print(evolution_table(run))
    for f in sorted((run / "discovery").glob("cycle_*_symbols.json"), key=lambda p: int(p.name.split("_")[1])):
        data = json.loads(f.read_text())
        kinds = [c["change_type"] for c in data["symbol_changes"]]
        counts = ", ".join(f"{k}={kinds.count(k)}" for k in sorted(set(kinds)))
        print(f"  {f.name}: {data['changed_symbols']}/{data['total_symbols']} changed ({counts})")
    inspect_run(run, png=True, table=False)


def _evidence(change: dict) -> str:
    if change.get("delta") is not None and change.get("se") is not None:
        return f"Δ{change['delta']:+.2f}±{change['se']:.2f}"
    return f"cos {change['similarity']:.2f} {change['confidence']}"


def _plot(target: Path, cycles: list[tuple[int, dict]], accuracy: dict[str, dict[int, float]]) -> Path:
    import matplotlib.pyplot as plt

    fig = evolution_figure(cycles, accuracy)
    folder = target if target.name == "discovery" or not (target / "discovery").is_dir() else target
    path = atomic_write(folder / "symbol_evolution.png", lambda f: fig.savefig(f, format="png", dpi=130))
    plt.close(fig)
    print(f"wrote {path}")
    return path


def evolution_figure(cycles: list[tuple[int, dict]], accuracy: dict[str, dict[int, float]]):
    """The label × cycle grid (start symbols, then each discovery's word, coloured by change type, with its
    evidence) above the validation accuracy per mapping (soft, hard, original, right after discovery)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch, Rectangle

    first = cycles[0][1]["symbol_changes"]
    labels = [c["original_label"] for c in first]
    cols = [cycles[0][0] - 1] + [n for n, _ in cycles]
    height = 1.6 + 0.42 * len(labels) + (2.2 if accuracy else 0)
    fig = plt.figure(figsize=(2.0 + 1.45 * len(cols), height))
    grid = fig.add_axes([0.14, (2.6 / height) if accuracy else 0.12, 0.84, 1 - (3.2 / height if accuracy else 0.25)])
    for i, lab in enumerate(labels):
        y = len(labels) - 1 - i
        start = next(c["current_symbol"] for c in first if c["original_label"] == lab)
        cells = [(start, "start", "")]
        for _, data in cycles:
            ch = next(c for c in data["symbol_changes"] if c["original_label"] == lab)
            cells.append((ch["discovered_symbol"], ch["change_type"], _evidence(ch)))
        for x, (word, kind, note) in enumerate(cells):
            grid.add_patch(Rectangle((x, y), 0.96, 0.92, color=COLOURS.get(kind, "white")))
            grid.text(x + 0.48, y + 0.58, word, ha="center", va="center", fontsize=9, weight="bold")
            grid.text(x + 0.48, y + 0.22, note, ha="center", va="center", fontsize=6.5, color="#333333")
    grid.set_xlim(0, len(cols))
    grid.set_ylim(0, len(labels))
    grid.set_xticks([x + 0.48 for x in range(len(cols))], [f"cycle {c}" for c in cols])
    grid.set_yticks([len(labels) - 1 - i + 0.46 for i in range(len(labels))], labels)
    grid.tick_params(length=0)
    for side in grid.spines.values():
        side.set_visible(False)
    grid.set_title("symbol per label and cycle (colour: change type; Δ: task-loss change ± s.e.)", fontsize=9)
    grid.legend(
        handles=[Patch(color=c, label=k.lower()) for k, c in COLOURS.items()],
        fontsize=7,
        ncol=5,
        loc="upper center",
        bbox_to_anchor=(0.5, -0.08 if not accuracy else -0.12),
        frameon=False,
    )
    if accuracy:
        ax = fig.add_axes([0.14, 0.35 / height + 0.02, 0.84, 1.55 / height])
        for name, style in (("soft", "o-"), ("hard", "s-"), ("original", "^--"), ("discovered", "d:")):
            series = accuracy.get(name, {})
            if series:
                xs = sorted(series)
                xs = [x for x in xs if x in cols]
                ax.plot([cols.index(x) + 0.48 for x in xs], [series[x] for x in xs], style, label=name)
        ax.set_xlim(0, len(cols))
        ax.set_ylim(0, 1.02)
        ax.set_xticks([x + 0.48 for x in range(len(cols))], [f"cycle {c}" for c in cols])
        ax.set_ylabel("val accuracy\nwith this mapping", fontsize=8)
        ax.legend(fontsize=7, ncol=4, loc="lower right")
        ax.grid(alpha=0.3)
    return fig


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of ``inspect``."""
    p.add_argument("path", help="a run folder, or a folder of cycle_N_*.json files")
    p.add_argument("--no-png", action="store_true", help="only print the table")


def run(args: argparse.Namespace) -> int:
    """Runs ``inspect``."""
    inspect_run(args.path, not args.no_png)
    return 0
