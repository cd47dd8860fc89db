"""``make demo``: the whole system on a fresh machine, on CPU, in a few minutes.

1. make the synthetic espeak-ng speech benchmark (speaker identity + spoken command)
2. build the tiny SALMONN model
3. run 2 full cycles (LoRA phase, MLP phase, discovery) with ``configs/tiny.yaml``
4. write the discovery JSONs
5. print how the symbols evolved, with validation accuracy

Everything lands in one run folder (``runs/demo`` by default): ``synth/`` (the data), ``config.yaml``,
``metrics.csv``, ``discovery/``, ``checkpoints/``, ``export/``; running the demo again starts that run again.
"""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path

__all__ = ["add_args", "run", "run_demo"]

_TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"


def _evolution(run: Path) -> None:
    from ..symbols import evolution_table

    print("\nsymbol evolution (label -> symbol per cycle, with similarity and change type):")
    print(evolution_table(run))
    for f in sorted((run / "discovery").glob("cycle_*_symbols.json")):
        data = json.loads(f.read_text())
        kinds = [c["change_type"] for c in data["symbol_changes"]]
        print(
            f"  {f.name}: {data['changed_symbols']}/{data['total_symbols']} changed "
            f"({', '.join(f'{k}={kinds.count(k)}' for k in sorted(set(kinds)))})"
        )


def _accuracy(run: Path) -> None:
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    print("\nvalidation accuracy (mean over datasets), soft / hard / original labels:")
    for r in rows:
        if r.get("val/acc/mean"):
            print(
                f"  epoch {r['epoch']}: {float(r['val/acc/mean']):.3f} / {float(r['val_hard/acc/mean']):.3f} / "
                f"{float(r['val_original/acc/mean']):.3f}"
            )


def run_demo(out: str | Path = "runs/demo") -> int:
    """Runs the demo under ``out``; returns an exit status."""
    from ..data.synthetic import make_dataset
    from ..training.cli import run_lightning_cli

    out = Path(out)
    t0 = time.perf_counter()
    print("== 1/5 synthetic speech benchmark (espeak-ng)")
    yamls = make_dataset(
        out / "synth", tasks=("speaker", "command"), train_per_label=6, val_per_label=2, test_per_label=2
    )
    print("== 2-4/5 tiny SALMONN, 2 cycles of LoRA phase -> MLP phase -> discovery")
    args = [
        "fit",
        "--config",
        str(_TINY),
        "--run_dir",
        str(out),
        "--overwrite",
        "true",
        "--data.tasks",
        json.dumps([str(p) for p in yamls.values()]),
    ]
    status = run_lightning_cli(args)
    if status:
        return status
    print(f"== 5/5 results in {out}")
    _evolution(out)
    _accuracy(out)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; discovery files: {out / 'discovery'}")
    return 0


def add_args(p) -> None:
    """Options of ``demo``."""
    p.add_argument("--out", default="runs/demo", help="the run folder (a previous demo run in it is replaced)")


def run(args) -> int:
    """Runs the demo."""
    return run_demo(args.out)
