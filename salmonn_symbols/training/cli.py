"""``salmonn-symbols fit|validate|test --config configs/<name>.yaml [overrides]`` through LightningCLI.

The config mirrors the typed ``__init__`` arguments of `SymbolLitModule` and `SymbolDataModule`; a misspelt
key is an error that names it. Every run saves its resolved config (``config.yaml``) in its log folder.

    fit --run_dir R                   a new run in R; refused if R already holds one (unless --overwrite true)
    fit --run_dir R --ckpt_path last  continue from R/checkpoints/last.ckpt; refused if there is none
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_only

from ..data.datamodule import SymbolDataModule
from ..io import atomic_write
from .lifecycle import KeptMetrics, StepCheckpoint, resume_command
from .module import SymbolLitModule
from .resume import check_resume_config
from .schedule import CycleSchedule

__all__ = [
    "RUN_OUTPUTS",
    "AtomicCheckpointIO",
    "SymbolCLI",
    "check_accelerator",
    "check_run_dir",
    "main",
    "run_lightning_cli",
]

# what a fit writes into its run folder; --overwrite deletes these (the speech cache stays: it is keyed by weights)
RUN_OUTPUTS = (
    "checkpoints",
    "discovery",
    "export",
    "wandb",
    "config.yaml",
    "hparams.yaml",
    "metrics.csv",
    "phase_checks.jsonl",
    "skipped.jsonl",
    "stale",
    "summary.json",
    "symbols_cycle_0.json",
    "symbols_final.json",
    "symbol_evolution.png",
)


def check_run_dir(run_dir: str | None, ckpt_path: str | None, overwrite: bool) -> None:
    """Refuses a fit that would lose a run: ``--ckpt_path last`` with nothing to resume, or a new run written over
    one that exists. With ``overwrite`` the old run's files are deleted first (rank 0).

    Raises:
        ValueError: naming the run folder and the command that does what was probably meant.
    """
    if ckpt_path == "last" and not run_dir:
        raise ValueError("--ckpt_path last resumes the run in --run_dir: give the same --run_dir as the first run")
    if ckpt_path and overwrite:
        raise ValueError("--overwrite true starts the run again: it cannot be combined with --ckpt_path")
    if not run_dir:
        return
    run = Path(run_dir)
    last = run / "checkpoints" / "last.ckpt"
    if ckpt_path == "last" and not last.is_file():
        raise ValueError(
            f"nothing to resume: {last} does not exist (the run stopped before its first checkpoint, or "
            f"--run_dir is not the run's folder); start it again with --overwrite true"
        )
    if ckpt_path:
        return
    found = [p for p in ("checkpoints/last.ckpt", "symbols_cycle_0.json", "discovery") if (run / p).exists()]
    if found and not overwrite:
        raise ValueError(
            f"{run} already holds a run ({', '.join(found)}): resume it with --ckpt_path last, start it again "
            f"with --overwrite true (its checkpoints and discovery files are deleted), or choose another --run_dir"
        )
    if found and rank_zero_only.rank == 0:
        for name in RUN_OUTPUTS:
            path = run / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


def check_accelerator(accelerator: Any, configs: list | None) -> None:
    """Refuses a GPU config on a machine without a CUDA device, in one line that says how to run on the CPU.

    Raises:
        ValueError: naming the config and the options that run it on the CPU.
    """
    if not isinstance(accelerator, str) or accelerator not in ("gpu", "cuda") or torch.cuda.is_available():
        return
    names = ", ".join(str(getattr(c, "relative", c)) for c in configs or []) or "the config"
    raise ValueError(
        f"{names} asks for trainer.accelerator: {accelerator}, but this machine has no CUDA device; to run it on the "
        f"CPU add --trainer.accelerator cpu --trainer.precision 32 (configs/tiny.yaml is the CPU-sized preset)"
    )


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
            help="save checkpoints/last.ckpt every N optimizer steps (every epoch end saves too)",
        )
        parser.add_argument(
            "--overwrite",
            type=bool,
            default=False,
            help="start a new run in a --run_dir that holds one, deleting its checkpoints and discovery files",
        )

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        sub = self.config.get("subcommand")
        cfg = self.config[sub] if sub else self.config
        check_accelerator(cfg.trainer.accelerator, cfg.get("config"))  # before anything runs or prints

    def before_instantiate_classes(self) -> None:
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        s = cfg.model.schedule
        sched = CycleSchedule(**vars(s)) if s is not None else CycleSchedule()
        cfg.trainer.max_epochs = sched.total_epochs  # the schedule decides the length of the run
        if cfg.trainer.logger is None or cfg.trainer.logger is True:
            cfg.trainer.logger = _default_wandb(cfg.get("run_dir") or cfg.trainer.default_root_dir or "runs")
        if self.subcommand == "fit":
            check_run_dir(cfg.get("run_dir"), cfg.get("ckpt_path"), cfg.get("overwrite"))
            cfg.overwrite = False  # the saved config.yaml must never delete this run when it is used again
        if cfg.get("run_dir"):
            self._use_run_dir(cfg, cfg.run_dir)
        if cfg.get("ckpt_path"):
            self._resume_wandb(cfg)

    def before_fit(self) -> None:
        """Refuses a resume that does not match its checkpoint before the Trainer writes anything (config.yaml,
        metrics.csv, symbols, logs), so a refused resume leaves the run as it was; then keeps its metrics.csv."""
        cfg = self.config.fit
        path = _checkpoint_file(cfg)
        if path is None:
            return
        run = Path(cfg.get("run_dir") or path.parent.parent)
        command = resume_command(run)
        if cfg.ckpt_path != "last":
            command = command.replace("--ckpt_path last", f"--ckpt_path {path}")
        advice = (
            f"to continue the run unchanged: {command}\n"
            "to train with the change: start a new run (the same command with another --run_dir, no --ckpt_path)"
        )
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        check_resume_config(checkpoint, asdict(self.model.model_cfg), self.datamodule.labels, advice)
        if cfg.get("run_dir") and rank_zero_only.rank == 0:
            KeptMetrics.put_aside(cfg.run_dir)  # before Lightning's CSVLogger deletes it

    @staticmethod
    def _resume_wandb(cfg) -> None:
        """Continues the same W&B run (one monotonic step axis) when resuming from a checkpoint."""
        path = _checkpoint_file(cfg)
        if path is None:
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
        ckpt = StepCheckpoint(
            dirpath=os.path.join(run_dir, "checkpoints") if run_dir else None,
            filename="step-{step}",
            auto_insert_metric_name=False,  # step-400.ckpt, not step-step=400.ckpt
            every_n_train_steps=every,
            save_last=True,
            save_top_k=1,
            enable_version_counter=False,  # last.ckpt is also written at every epoch end: replace it, never add -v1
        )
        trainer_cfg = (self.config_init[self.subcommand] if self.subcommand else self.config_init)["trainer"]
        # appended to the configured lists: passing them as kwargs would replace the user's callbacks
        cbs = trainer_cfg.get("callbacks") or []
        trainer_cfg["callbacks"] = (list(cbs) if isinstance(cbs, list) else [cbs]) + [ckpt]
        plugins = trainer_cfg.get("plugins") or []
        trainer_cfg["plugins"] = (list(plugins) if isinstance(plugins, list) else [plugins]) + [AtomicCheckpointIO()]
        return super().instantiate_trainer(**kwargs)


def _checkpoint_file(cfg) -> Path | None:
    """The checkpoint file ``--ckpt_path`` names (``last``: the run folder's last.ckpt), or None."""
    path = cfg.get("ckpt_path")
    if path == "last" and cfg.get("run_dir"):
        path = os.path.join(cfg.run_dir, "checkpoints", "last.ckpt")
    return Path(path) if path and os.path.isfile(path) else None


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


class _NoTip(logging.Filter):
    """Drops Lightning's advertisement for its cloud logger, printed at every start."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in record.getMessage()


_NO_TIP = _NoTip()  # one instance: adding it again is a no-op


def _quiet() -> None:
    """Silences the warnings every run would print that say nothing about this run."""
    # we pass the arguments ourselves (the same ones sys.argv holds), so `salmonn-symbols fit` and Python agree
    warnings.filterwarnings("ignore", message="LightningCLI's args parameter is intended")
    # the frozen speech encoders stay in eval mode on purpose (no dropout or layer drop in cached features)
    warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode at the start of training")
    # a resumed run writes into its own folder on purpose; KeptMetrics keeps the metrics.csv history
    warnings.filterwarnings("ignore", message=r"(Experiment logs|Checkpoint) directory .* exists and is not empty")
    # step checkpoints hold the state after the step on purpose: a resumed run continues with the next batch
    warnings.filterwarnings("ignore", message="Using ModelCheckpoint with manual optimization and every_n_train_steps")
    # deprecations inside transformers/peft and Lightning that their next releases fix
    warnings.filterwarnings("ignore", message=r"`is_gradient_checkpointing` is deprecated", category=FutureWarning)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_NO_TIP)


def run_lightning_cli(args: list[str]) -> int:
    """Runs a LightningCLI subcommand; a user-facing error prints one message and returns status 2, a clean
    stop on SIGTERM or SIGUSR1 (see `GracefulStop`) returns 143."""
    from ..symbols import SymbolGenerationError

    _quiet()
    try:
        _run(args)
    except (
        FileNotFoundError,
        ValueError,
        ImportError,
        SymbolGenerationError,
        FloatingPointError,
        torch.OutOfMemoryError,
        MisconfigurationException,  # a Trainer setting this machine cannot honour (devices, accelerator)
    ) as e:
        print(f"salmonn-symbols {args[0]}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    except SIGTERMException:
        return 143
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
        seed_everything_default=0,  # what LightningCLI's default does, without its warning
        trainer_defaults={
            "use_distributed_sampler": False,  # the batch samplers shard by rank themselves
            "reload_dataloaders_every_n_epochs": 1,
            "num_sanity_val_steps": 0,
        },
    )
