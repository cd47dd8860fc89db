"""Commands that work on a finished (or copied) run: discovery from a checkpoint, and the evolution report.

salmonn-symbols discover --ckpt RUN/checkpoints/last.ckpt [--out DIR] [--override FILE]
salmonn-symbols evaluate --ckpt RUN/checkpoints/last.ckpt --config RUN/config.yaml [--split test]
salmonn-symbols inspect RUN_DIR            # or a folder of cycle_N_*.json copied from a cluster
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from ..io import atomic_write

__all__ = ["discover_from_checkpoint", "inspect_run"]


def _load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if "symbols" not in ckpt or "model_cfg" not in ckpt.get("cycle_state", {}):
        raise ValueError(f"{path}: not a salmonn-symbols training checkpoint (no symbols / model config)")
    return ckpt


def discover_from_checkpoint(
    ckpt_path: str | Path, out: str | Path | None = None, override: str | None = None
) -> tuple[Path, Path]:
    """Rebuilds the model of a checkpoint, runs discovery on its symbol MLP and writes the cycle files.

    The cycle number is the one after the checkpoint's last symbol-book entry. Nothing in the run is changed.
    """
    from ..model.builders import SpeechLLMConfig, build_speech_llm
    from ..symbols import (
        SymbolBook,
        SymbolTokenizer,
        build_candidate_masks,
        load_override,
        run_discovery,
        write_discovery,
    )

    ckpt = _load_checkpoint(ckpt_path)
    cfg = SpeechLLMConfig(**ckpt["cycle_state"]["model_cfg"])
    model, tokenizer = build_speech_llm(cfg)
    own = model.state_dict(keep_vars=True)
    with torch.no_grad():
        for name, value in ckpt["state_dict"].items():
            own[name.removeprefix("model.")].copy_(value)
    book = SymbolBook.from_state_dict(ckpt["symbols"])
    tok = SymbolTokenizer(tokenizer)
    weight = model.llm.get_input_embeddings().weight
    masks = build_candidate_masks(tok, weight.shape[0], book.labels)
    tokens, changes = run_discovery(
        book, tok, model.symbols.mlp, weight, masks, override=load_override(override, book, tok) if override else None
    )
    out = Path(out) if out else Path(ckpt_path).resolve().parent.parent / "discovery_offline"
    paths = write_discovery(out, book.cycle + 1, tokens, changes)
    for p in paths:
        print(f"wrote {p}")
    return paths


def _cycles(folder: Path) -> list[tuple[int, dict]]:
    out = []
    for p in folder.glob("cycle_*_symbols.json"):
        out.append((int(p.name.split("_")[1]), json.loads(p.read_text("utf-8"))))
    return sorted(out, key=lambda x: x[0])


def inspect_run(path: str | Path, png: bool = True) -> Path | None:
    """Prints label → symbol per cycle (with similarity and change type) and writes ``symbol_evolution.png``."""
    path = Path(path)
    folder = path / "discovery" if (path / "discovery").is_dir() else path
    cycles = _cycles(folder)
    if not cycles:
        raise FileNotFoundError(f"{path}: no cycle_N_symbols.json files (looked in {folder})")
    labels = [c["original_label"] for c in cycles[0][1]["symbol_changes"]]
    start = {c["original_label"]: c["current_symbol"] for c in cycles[0][1]["symbol_changes"]}
    rows = [["label", f"cycle {cycles[0][0] - 1}"] + [f"cycle {n}" for n, _ in cycles]]
    for lab in labels:
        row = [lab, start[lab]]
        for _, data in cycles:
            ch = next(c for c in data["symbol_changes"] if c["original_label"] == lab)
            row.append(f"{ch['discovered_symbol']} ({ch['similarity']:.2f} {ch['change_type']})")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)))
    return _plot(folder.parent if folder.name == "discovery" else folder, labels, cycles) if png else None


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


def add_offline_commands(sub: argparse._SubParsersAction) -> None:
    """Registers ``discover``, ``evaluate`` and ``inspect`` on the main parser."""
    d = sub.add_parser("discover", help="run discovery on a training checkpoint")
    d.add_argument("--ckpt", required=True, help="a checkpoint of a run (checkpoints/*.ckpt)")
    d.add_argument("--out", help="folder for the cycle files (default: <run>/discovery_offline)")
    d.add_argument("--override", help="manual label -> symbol override JSON")
    d.set_defaults(func=lambda a: (discover_from_checkpoint(a.ckpt, a.out, a.override), 0)[1])

    e = sub.add_parser("evaluate", help="score a checkpoint on a split (soft, hard and original labels)")
    e.add_argument("--ckpt", required=True, help="a checkpoint of a run")
    e.add_argument("--config", required=True, help="the run's config.yaml")
    e.add_argument("--split", default="test", help="split name of the task YAMLs")
    e.set_defaults(func=_evaluate)

    i = sub.add_parser("inspect", help="print the symbol evolution of a run and write symbol_evolution.png")
    i.add_argument("path", help="a run folder, or a folder of cycle_N_*.json files")
    i.add_argument("--no-png", action="store_true", help="only print the table")
    i.set_defaults(func=lambda a: (inspect_run(a.path, not a.no_png), 0)[1])


def _evaluate(args: argparse.Namespace) -> int:
    from .cli import run_lightning_cli

    return run_lightning_cli(
        [
            "test",
            "--config",
            args.config,
            "--ckpt_path",
            args.ckpt,
            "--data.test_split",
            args.split,
            "--trainer.logger",
            "false",
        ]
    )
