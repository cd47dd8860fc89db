"""``salmonn-symbols discover``: discovery alone on a training checkpoint, into the next cycle's files.

salmonn-symbols discover --ckpt RUN/checkpoints/last.ckpt [--out DIR] [--override FILE]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

__all__ = ["add_args", "discover_from_checkpoint", "load_run_checkpoint", "run"]


def load_run_checkpoint(path: str | Path) -> dict:
    """A training checkpoint of this framework, loaded with ``weights_only=True``; errors name the file."""
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

    ckpt = load_run_checkpoint(ckpt_path)
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


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of ``discover``."""
    p.add_argument("--ckpt", required=True, help="a checkpoint of a run (checkpoints/*.ckpt)")
    p.add_argument("--out", help="folder for the cycle files (default: <run>/discovery_offline)")
    p.add_argument("--override", help="manual label -> symbol override JSON")


def run(args: argparse.Namespace) -> int:
    """Runs ``discover``."""
    discover_from_checkpoint(args.ckpt, args.out, args.override)
    return 0
