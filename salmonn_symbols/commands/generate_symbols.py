"""``salmonn-symbols generate-symbols``: draw random 2-token symbol words for a label set (cycle 0)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

__all__ = ["add_args", "run"]


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of ``generate-symbols``."""
    p.add_argument("--tokenizer", required=True, help="local HF tokenizer folder, or builtin:gpt2 / builtin:tiny")
    p.add_argument("--labels", nargs="*", help="label words")
    p.add_argument("--labels-file", help="JSON list or one label per line")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-tokens", type=int, default=2)
    p.add_argument("--max-attempts", type=int, default=200_000)
    p.add_argument("--style", choices=["pronounceable", "uniform"], default="pronounceable")
    p.add_argument("--out", help="also write the mapping to this JSON file")


def _labels(args: argparse.Namespace) -> list[str]:
    labels = list(args.labels or [])
    if args.labels_file:
        text = Path(args.labels_file).read_text("utf-8")
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            loaded = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not isinstance(loaded, list) or not all(isinstance(x, str) for x in loaded):
            raise ValueError(f"{args.labels_file}: expected a JSON list of strings or one label per line")
        labels += loaded
    if not labels:
        raise ValueError("give --labels or --labels-file")
    return labels


def run(args: argparse.Namespace) -> int:
    """Prints (and with ``--out`` writes) the mapping and each symbol's token ids."""
    from ..io import atomic_write_json
    from ..model.tokenizer import load_tokenizer
    from ..symbols import SymbolBook, SymbolTokenizer

    tok = SymbolTokenizer(load_tokenizer(args.tokenizer))
    book = SymbolBook.create(
        _labels(args), tok, seed=args.seed, n_tokens=args.n_tokens, max_attempts=args.max_attempts, style=args.style
    )
    out = {"seed": args.seed, "tokenizer": args.tokenizer, "mapping": book.mapping, "token_ids": book.token_ids(tok)}
    if args.out:
        atomic_write_json(args.out, out)
    print(json.dumps(out, indent=2))
    return 0
