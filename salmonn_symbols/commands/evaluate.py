"""``salmonn-symbols evaluate``: score a checkpoint on a split, in soft, hard and original labels.

salmonn-symbols evaluate --ckpt RUN/checkpoints/last.ckpt --config RUN/config.yaml [--split test]
"""

from __future__ import annotations

import argparse

__all__ = ["add_args", "run"]


def add_args(p: argparse.ArgumentParser) -> None:
    """Options of ``evaluate``."""
    p.add_argument("--ckpt", required=True, help="a checkpoint of a run")
    p.add_argument("--config", required=True, help="the run's config.yaml")
    p.add_argument("--split", default="test", help="split name of the task YAMLs")


def run(args: argparse.Namespace) -> int:
    """Runs Lightning's test stage on the checkpoint (the run's config is never rewritten)."""
    from ..training.cli import run_lightning_cli

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
