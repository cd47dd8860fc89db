"""``salmonn-symbols fit|validate|test --config configs/<name>.yaml [overrides]`` through LightningCLI.

The config mirrors the typed ``__init__`` arguments of `SymbolLitModule` and `SymbolDataModule`; a misspelt
key is an error that names it. Every run saves its resolved config (``config.yaml``) in its log folder.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from ..data.datamodule import SymbolDataModule
from ..io import atomic_write
from .module import SymbolLitModule
from .schedule import CycleSchedule

__all__ = ["AtomicCheckpointIO", "SymbolCLI", "main", "run_lightning_cli"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to a temporary file in the same folder, then renames it into place."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options=None) -> None:
        atomic_write(path, lambda f: torch.save(checkpoint, f))

    def load_checkpoint(self, path: str | os.PathLike, map_location=None, weights_only: bool | None = None):
        # Our checkpoints hold plain types only, so they always load with weights_only=True.
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


class FitConfigCallback(SaveConfigCallback):
    """Saves the resolved config of a ``fit`` only: evaluating a run must not overwrite the config it trained with."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


class SymbolCLI(LightningCLI):
    """LightningCLI with the framework's defaults: one fit for all cycles, our samplers, atomic checkpoints."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--run_dir",
            type=str | None,
            default=None,
            help="one folder for the whole run (logs, checkpoints, discovery files, config); "
            "needed to resume with --ckpt_path last",
        )
        parser.add_argument(
            "--checkpoint_every_n_steps",
            type=int,
            default=200,
            help="save checkpoints/last.ckpt every N optimizer steps (phase ends always save)",
        )

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        s = cfg.model.schedule
        sched = CycleSchedule(**vars(s)) if s is not None else CycleSchedule()
        cfg.trainer.max_epochs = sched.total_epochs  # the schedule decides the length of the run
        if cfg.trainer.logger is None or cfg.trainer.logger is True:
            cfg.trainer.logger = _default_wandb(cfg.get("run_dir") or cfg.trainer.default_root_dir or "runs")
        if cfg.get("run_dir"):
            self._use_run_dir(cfg, cfg.run_dir)
        if cfg.get("ckpt_path"):
            self._resume_wandb(cfg)
        elif cfg.get("ckpt_path") == "last":
            raise ValueError("--ckpt_path last resumes the run in --run_dir: give the same --run_dir as the first run")

    @staticmethod
    def _resume_wandb(cfg) -> None:
        """Continues the same W&B run (one monotonic step axis) when resuming from a checkpoint."""
        path = cfg.ckpt_path
        if path == "last" and cfg.get("run_dir"):
            path = os.path.join(cfg.run_dir, "checkpoints", "last.ckpt")
        if not os.path.isfile(path):
            return
        wandb_id = torch.load(path, map_location="cpu", weights_only=True).get("cycle_state", {}).get("wandb_id")
        logger = cfg.trainer.logger
        for lg in logger if isinstance(logger, list) else [logger]:
            if wandb_id and getattr(lg, "class_path", "").endswith("WandbLogger"):
                lg.init_args.id, lg.init_args.resume = wandb_id, "allow"

    @staticmethod
    def _use_run_dir(cfg, run_dir: str) -> None:
        cfg.model.output_dir = run_dir
        cfg.trainer.default_root_dir = run_dir
        logger = cfg.trainer.logger
        for lg in logger if isinstance(logger, list) else [logger]:
            path = getattr(lg, "class_path", "") or ""
            if path.endswith("CSVLogger"):
                lg.init_args.save_dir, lg.init_args.name, lg.init_args.version = run_dir, "", ""
            elif path.endswith("WandbLogger"):
                lg.init_args.save_dir = run_dir

    def instantiate_trainer(self, **kwargs: Any):
        every = self.config[self.subcommand].checkpoint_every_n_steps if self.subcommand else 200
        run_dir = self.config[self.subcommand].get("run_dir") if self.subcommand else None
        ckpt = ModelCheckpoint(
            dirpath=os.path.join(run_dir, "checkpoints") if run_dir else None,
            filename="step-{step}",
            every_n_train_steps=every,
            save_last=True,
            save_top_k=1,
        )
        trainer_cfg = (self.config_init[self.subcommand] if self.subcommand else self.config_init)["trainer"]
        # appended to the configured lists: passing them as kwargs would replace the user's callbacks
        cbs = trainer_cfg.get("callbacks") or []
        trainer_cfg["callbacks"] = (list(cbs) if isinstance(cbs, list) else [cbs]) + [ckpt]
        plugins = trainer_cfg.get("plugins") or []
        trainer_cfg["plugins"] = (list(plugins) if isinstance(plugins, list) else [plugins]) + [AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)


def _default_wandb(save_dir: str):
    """W&B, offline unless an API key is configured (``wandb sync <run>/wandb/offline-run-*`` uploads it)."""
    from jsonargparse import Namespace

    online = bool(os.environ.get("WANDB_API_KEY")) or os.environ.get("WANDB_MODE") == "online"
    return Namespace(
        class_path="lightning.pytorch.loggers.WandbLogger",
        init_args=Namespace(
            project=os.environ.get("WANDB_PROJECT", "salmonn-symbols"), save_dir=save_dir, offline=not online
        ),
    )


def run_lightning_cli(args: list[str]) -> int:
    """Runs a LightningCLI subcommand; a user-facing error prints one message and returns status 2."""
    from ..symbols import SymbolGenerationError

    try:
        _run(args)
    except (FileNotFoundError, ValueError, SymbolGenerationError, FloatingPointError, torch.OutOfMemoryError) as e:
        print(f"salmonn-symbols {args[0]}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str]) -> int:
    """``salmonn-symbols fit|validate|test ...``."""
    return run_lightning_cli(argv)


def _run(args: list[str]) -> None:
    SymbolCLI(
        SymbolLitModule,
        SymbolDataModule,
        args=args,
        save_config_callback=FitConfigCallback,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "use_distributed_sampler": False,  # the batch samplers shard by rank themselves
            "reload_dataloaders_every_n_epochs": 1,
            "num_sanity_val_steps": 0,
        },
    )
