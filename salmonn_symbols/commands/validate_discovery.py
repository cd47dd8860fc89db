"""``salmonn-symbols validate-discovery``: schema-check every ``cycle_N_*.json`` file of a discovery folder."""

from __future__ import annotations

import argparse

__all__ = ["add_args", "run"]


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of ``validate-discovery``."""
    p.add_argument("path", help="a run's discovery/ folder")


def run(args: argparse.Namespace) -> int:
    """Prints each valid file; the first invalid one is an error naming the file and the JSON path."""
    from ..symbols import validate_discovery_dir

    for p in validate_discovery_dir(args.path):
        print(f"ok  {p}")
    return 0
