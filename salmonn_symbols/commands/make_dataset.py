"""``salmonn-symbols make-dataset``: the synthetic espeak-ng speech benchmark (speaker, language, command)."""

from __future__ import annotations

import argparse
import sys

from ..data.synthetic import COMMAND_WORDS, TASKS, make_dataset

__all__ = ["add_args", "run"]


def add_args(parser: argparse.ArgumentParser) -> None:
    """Adds the ``make-dataset`` options to ``parser``.

    Args:
        parser: The subcommand's parser.
    """
    parser.add_argument("--out", default="runs/synth", help="output folder (default: runs/synth)")
    parser.add_argument("--tasks", nargs="+", choices=list(TASKS), default=list(TASKS), help="tasks to build")
    parser.add_argument("--train-per-label", type=int, default=8, help="training clips per label")
    parser.add_argument("--val-per-label", type=int, default=2, help="validation clips per label")
    parser.add_argument("--test-per-label", type=int, default=2, help="test clips per label")
    parser.add_argument("--seed", type=int, default=0, help="seed of sentence choice, pitch and speed")
    parser.add_argument("--workers", type=int, default=2, help="espeak-ng processes run at once")
    parser.add_argument(
        "--n-commands", type=int, default=6, help=f"labels of the command task (2-{len(COMMAND_WORDS)})"
    )
    parser.add_argument("--espeak", default="espeak-ng", help="espeak-ng executable")


def run(args: argparse.Namespace) -> int:
    """Runs ``make-dataset`` with parsed arguments.

    Args:
        args: Namespace from a parser set up by `add_args`.

    Returns:
        0 on success, 1 if espeak-ng is missing or failed (the reason goes to stderr). Bad arguments raise
        ``ValueError``, which the CLI reports with exit status 2.
    """
    try:
        names = ("tasks", "train_per_label", "val_per_label", "test_per_label", "seed", "workers", "espeak")
        make_dataset(args.out, n_commands=args.n_commands, **{k: getattr(args, k) for k in names})
    except RuntimeError as e:
        print(f"salmonn-symbols make-dataset: error: {e}", file=sys.stderr)
        return 1
    return 0
