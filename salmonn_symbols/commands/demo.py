"""``make demo``: the whole system on a fresh machine, on CPU, in a few minutes.

    1. the synthetic espeak-ng speech benchmark: speaker identity (4 voices) and spoken commands (6 words)
    2. the reference: the tiny model answering with the original label words ("alpha", ...), no symbols
    3. symbol discovery: random 2-token symbols, 2 cycles of LoRA phase -> MLP phase -> discovery
    4. per cycle: the mapping and its validation accuracy (soft, hard, original labels, and the discovered
       mapping right after its discovery), the symbol evolution, and symbol_evolution.png

Everything lands in one folder (``runs/demo`` by default): ``synth/`` (the data), the discovery run itself
(``config.yaml``, ``metrics.csv``, ``discovery/``, ``checkpoints/``, ``export/``, ``summary.json``) and the
reference run in ``original/``; running the demo again starts both runs again.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from .inspect_run import last_metric, print_cycles

__all__ = ["add_args", "run", "run_demo"]

_TINY = Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml"
REFERENCE_EPOCHS = 40


def _fit(run_dir: Path, tasks: list[Path], *extra: str) -> int:
    from ..training.cli import run_lightning_cli

    args = ["fit", "--config", str(_TINY), "--run_dir", str(run_dir), "--overwrite", "true"]
    return run_lightning_cli(args + ["--data.tasks", json.dumps([str(p) for p in tasks]), *extra])


def _reference(out: Path, speaker: Path) -> int:
    schedule = {"cycles": 0, "lora_epochs": 1, "mlp_epochs": 1, "final_lora_epochs": REFERENCE_EPOCHS}
    status = _fit(
        out / "original",
        [speaker],
        "--model.initial_symbols=original",
        f"--model.schedule={json.dumps(schedule)}",
        "--model.eval_modes=[hard]",
        "--model.rescore=false",
    )
    if not status:
        acc = last_metric(out / "original", "val_hard/acc/synth_speaker")
        print(f"   speaker identity with the original label words: validation accuracy {acc:.3f}")
    return status


def run_demo(out: str | Path = "runs/demo") -> int:
    """Runs the demo under ``out``; returns an exit status."""
    from ..data.synthetic import make_dataset

    out = Path(out)
    t0 = time.perf_counter()
    print("== 1/4 synthetic speech benchmark (espeak-ng): speaker identity and spoken commands")
    yamls = make_dataset(
        out / "synth", tasks=("speaker", "command"), train_per_label=64, val_per_label=16, test_per_label=4
    )
    print(f"== 2/4 reference: the tiny model answering with the original label words, {REFERENCE_EPOCHS} epochs")
    status = _reference(out, yamls["speaker"])
    if status:
        return status
    print("== 3/4 symbol discovery: random 2-token symbols, 2 cycles of LoRA phase -> MLP phase -> discovery")
    status = _fit(out, list(yamls.values()))
    if status:
        return status
    print(f"== 4/4 results in {out}")
    print_cycles(out)
    print(f"\ndemo finished in {time.perf_counter() - t0:.0f} s; inspect it again with: salmonn-symbols inspect {out}")
    return 0


def add_args(p) -> None:
    """Options of ``demo``."""
    p.add_argument("--out", default=None, help="the run folder (default runs/demo, runs/demo-real with --real)")
    p.add_argument(
        "--real", action="store_true", help="real pretrained Whisper tiny.en + SmolLM2-135M (see demo_real.py)"
    )
    p.add_argument("--weights", default="checkpoints/small", help="with --real: prepare-weights' folder")
    p.add_argument("--accelerator", default="cpu", help="with --real: cpu or gpu (one device)")
    p.add_argument("--task", default=None, help="with --real: an existing command task YAML (no espeak-ng needed)")


def run(args) -> int:
    """Runs the demo."""
    if args.real:
        from .demo_real import run_demo_real

        return run_demo_real(args.out or "runs/demo-real", args.weights, args.accelerator, args.task)
    return run_demo(args.out or "runs/demo")
