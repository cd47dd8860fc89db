"""Everything around the research loop, as Lightning callbacks (`SymbolLitModule.configure_callbacks`).

    CycleMetrics     train/cycle, train/phase, train/temperature, train/skipped at every step (and the progress bar)
    NonFiniteCheck   reports the first skipped non-finite step: every logging interval, epoch end, checkpoint
    PhaseIntegrity   frozen group bitwise unchanged each epoch, identical weights on every rank (phase_checks.jsonl)
    SkippedSamples   samples skipped with on_bad_sample: skip, from every rank, once each (skipped.jsonl)
    DiscoveryTables  W&B views of each discovery: symbols, evolution, similarity, accuracy; files saved as copies
                     (no symlinks under <run>/wandb, so the folder syncs from another machine) (rank 0)
    FinalExport      trainable weights, the LoRA as a peft adapter, and the final symbol book (rank 0)

Callbacks read the module through the hook arguments; none of them changes what the module learns.
``on_discovery`` is this project's own hook: the module calls it on every callback that has it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..io import atomic_write, atomic_write_json, atomic_write_text
from .cycle import DiscoveryRecord
from .step import PHASES

__all__ = [
    "CycleMetrics",
    "DiscoveryTables",
    "FinalExport",
    "NonFiniteCheck",
    "PhaseIntegrity",
    "SkippedSamples",
    "digest",
    "notify_discovery",
    "resolve_links",
    "save_copy",
    "wandb_run",
]


def digest(params: list[torch.Tensor]) -> str:
    """A short SHA-256 of the exact values of ``params``: equal digests mean bitwise-equal weights."""
    h = hashlib.sha256()
    for p in params:
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _gather(obj: Any) -> list[Any]:
    """``obj`` from every rank (a list of one outside distributed runs)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        out = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(out, obj)
        return out
    return [obj]


def notify_discovery(trainer, pl_module, record: DiscoveryRecord) -> None:
    """Calls the project's own ``on_discovery`` hook on every callback that has it."""
    for cb in trainer.callbacks:
        if hasattr(cb, "on_discovery"):
            cb.on_discovery(trainer, pl_module, record)


class CycleMetrics(L.Callback):
    """Where each step sits in the schedule, on the same step axis as ``train/loss``."""

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "wav" not in batch:
            return
        info, bs = pl_module.phase(), batch["wav"].shape[0]
        mlp = float(info.phase == "mlp")
        pl_module.log_dict({"cycle": float(info.cycle), "mlp_phase": mlp}, prog_bar=True, logger=False, batch_size=bs)
        active = pl_module.optimizers()[PHASES.index(info.phase)]  # its lr is a Python float: no device sync
        metrics = {
            "train/cycle": float(info.cycle),
            "train/phase": mlp,
            "train/temperature": pl_module.train_temperature,
            "train/lr": active.param_groups[0]["lr"],
        }
        pl_module.log_dict(metrics | {"train/skipped": float(len(batch["skipped"]))}, batch_size=bs)


class NonFiniteCheck(L.Callback):
    """Raises `FloatingPointError` naming the first step whose gradients were not finite (that step was skipped
    on the device). Reading the record is a host sync, so it happens only every ``log_every_n_steps``, at epoch
    end and before a checkpoint is written, never inside the step."""

    def check(self, trainer, pl_module) -> None:
        bad = pl_module.guard.first_bad()
        if bad is None:
            return
        step, epoch = bad
        info = pl_module.schedule.at(min(epoch, pl_module.schedule.total_epochs - 1))
        raise FloatingPointError(
            f"loss or gradients are not finite at step {step} (cycle {info.cycle}, {info.phase} phase): that "
            f"step was skipped, so nothing was stepped with it, and the run stops here; the last checkpoint in "
            f"{pl_module.out_dir} is intact. Lower lora_lr/mlp_lr or check the data with `salmonn-symbols check-data`."
        )

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (batch_idx + 1) % max(1, trainer.log_every_n_steps) == 0:
            self.check(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self.check(trainer, pl_module)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        self.check(trainer, pl_module)  # before anything is written


class PhaseIntegrity(L.Callback):
    """After every training epoch: the frozen group is bitwise unchanged, and every rank holds the same
    trainable weights. Digests of both groups on every rank go to ``phase_checks.jsonl``."""

    def __init__(self) -> None:
        self._start: dict[str, str] | None = None

    @staticmethod
    def _digests(pl_module) -> dict[str, str]:
        from .step import group_parameters

        return {g: digest(group_parameters(pl_module.model, g)) for g in ("lora", "mlp")}

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start = self._digests(pl_module)

    def state_dict(self) -> dict[str, Any]:
        return {"start": self._start}  # a run resumed mid-epoch checks against its epoch's true start

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._start = state_dict.get("start")

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        info = pl_module.phase()
        end = self._digests(pl_module)
        start = self._start or end
        ranks = _gather(end)
        record = {
            "epoch": trainer.current_epoch,
            "cycle": info.cycle,
            "phase": info.phase,
            "start": start,
            "ranks": ranks,
        }
        if trainer.is_global_zero:
            path = pl_module.out_dir / "phase_checks.jsonl"
            old = path.read_text() if path.exists() else ""
            atomic_write_text(path, old + json.dumps(record) + "\n")
        frozen = "mlp" if info.phase == "lora" else "lora"
        if end[frozen] != start[frozen]:
            raise RuntimeError(f"the frozen {frozen} group changed during a {info.phase} epoch: {record}")
        if any(r != ranks[0] for r in ranks):
            raise RuntimeError(f"trainable weights differ between ranks after epoch {trainer.current_epoch}: {record}")


class SkippedSamples(L.Callback):
    """Collects the samples skipped in training and evaluation batches (``data.on_bad_sample: skip``) and, after
    every training epoch, writes them with the manifest problems to ``skipped.jsonl`` on rank 0, each once."""

    def __init__(self) -> None:
        self._skipped: list = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._skipped += batch["skipped"]

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._skipped += batch["skipped"]

    def on_test_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._skipped += batch["skipped"]

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        from ..data.datamodule import write_skipped
        from ..data.manifest import DataProblem

        mine = [p.as_dict() for p in self._skipped]
        problems = [p.as_dict() for p in trainer.datamodule.problems] + [p for r in _gather(mine) for p in r]
        if not problems:
            return
        seen = {json.dumps(p, sort_keys=True): p for p in problems}  # a clip skipped every epoch counts once
        if trainer.is_global_zero:
            rows = [DataProblem(p["where"], p["what"], p["id"]) for p in seen.values()]
            write_skipped(pl_module.out_dir / "skipped.jsonl", rows)
        pl_module.log("train/skipped_total", float(len(seen)), rank_zero_only=False)


def _wandb_logger(loggers):
    from lightning.pytorch.loggers import WandbLogger

    loggers = loggers if isinstance(loggers, Sequence) else [loggers] if loggers is not None else []
    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)


def wandb_run(loggers):
    """The W&B run of the first WandbLogger among ``loggers``, or None."""
    wb = _wandb_logger(loggers)
    return wb.experiment if wb is not None else None


class DiscoveryTables(L.Callback):
    """W&B views of discovery (rank 0 only; the JSON files stay the source of truth).

    At each discovery: a new per-cycle ``symbols`` table, a fresh ``evolution`` table with every cycle so far (a
    logged table object never updates, so it is rebuilt each time), a similarity-per-label line chart, a bar
    chart of validation accuracy for soft / hard / original labels, and the discovery JSONs as run files. At the
    start of training the resolved config is saved with the run. Saved files are copies in the run's ``files/``
    folder, and at the end of the fit W&B's own links are replaced by copies: the run folder stays whole when it
    is copied to the machine that syncs it.
    """

    def __init__(self) -> None:
        self._similarity: dict[str, list[tuple[int, float]]] = {}

    def on_fit_start(self, trainer, pl_module) -> None:
        run = wandb_run(trainer.loggers) if trainer.is_global_zero else None
        if run is not None:
            pl_module.wandb_id = run.id
            cfg = pl_module.out_dir / "config.yaml"
            if cfg.exists():
                save_copy(run, cfg, pl_module.out_dir)

    def on_fit_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero and wandb_run(trainer.loggers) is not None:
            resolve_links(pl_module.out_dir / "wandb")

    def on_discovery(self, trainer, pl_module, record: DiscoveryRecord) -> None:
        if not trainer.is_global_zero or record.changes is None:
            return
        wb = _wandb_logger(trainer.loggers)
        if wb is None:
            return
        import wandb

        changes, cycle = record.changes, record.cycle
        symbols = wandb.Table(columns=["cycle", "label", "symbol", "token_ids", "similarity", "margin", "change_type"])
        for c in changes:
            ids = str(list(c.token_mapping.values()))
            symbols.add_data(cycle, c.original_label, c.discovered_symbol, ids, c.similarity, c.margin, c.change_type)
            self._similarity.setdefault(c.original_label, []).append((cycle, c.similarity))
        evolution = wandb.Table(columns=["cycle", "source", "label", "symbol"])
        for h in pl_module.cycle.book.history:
            for lab, sym in h.mapping.items():
                evolution.add_data(h.cycle, h.source, lab, sym)
        labels = list(self._similarity)
        sim_chart = wandb.plot.line_series(
            xs=[[x for x, _ in self._similarity[lab]] for lab in labels],
            ys=[[y for _, y in self._similarity[lab]] for lab in labels],
            keys=labels,
            title="similarity per label",
            xname="cycle",
        )
        acc = wandb.Table(columns=["condition", "mean accuracy"])
        for mode in ("soft", "hard", "original"):
            if "mean/acc" in pl_module.last_eval.get(mode, {}):
                acc.add_data(mode, pl_module.last_eval[mode]["mean/acc"])
        wb.experiment.log(
            {
                f"discovery/symbols_cycle_{cycle}": symbols,
                "discovery/evolution": evolution,
                "discovery/similarity": sim_chart,
                "discovery/accuracy": wandb.plot.bar(
                    acc, "condition", "mean accuracy", title=f"accuracy, cycle {cycle}"
                ),
                "trainer/global_step": trainer.global_step,
            }
        )
        for f in record.files:
            save_copy(wb.experiment, Path(f), Path(f).parent.parent)


def save_copy(run, path: Path, base: Path) -> Path:
    """Copies ``path`` into the W&B run's ``files/`` folder (at its place relative to ``base``) and saves it with
    the run. ``run.save`` of the file itself would link it with an absolute symlink in offline mode, which breaks
    when the run folder is copied to the machine that syncs it."""
    files = Path(run.dir)
    dest = files / path.relative_to(base)
    atomic_write(dest, lambda f: f.write(path.read_bytes()))
    run.save(str(dest), base_path=str(files), policy="now")  # already in place: recorded, not linked
    return dest


def resolve_links(folder: Path) -> None:
    """Replaces every symlink under ``folder`` with a copy of the file it points to (W&B links its debug logs, one
    of them into ``~/.cache``), and drops links to folders (``latest-run``), so the folder can be copied as is."""
    links = [Path(d) / n for d, dirs, names in os.walk(folder) for n in dirs + names if (Path(d) / n).is_symlink()]
    for link in links:
        target = link.resolve()
        link.unlink()
        if target.is_file():
            atomic_write(link, lambda f, t=target: f.write(t.read_bytes()))


class FinalExport(L.Callback):
    """At the end of training (rank 0): ``export/trainable.safetensors``, ``export/lora_adapter/`` (a peft
    adapter folder) and ``symbols_final.json``. A run stopped after its last epoch-end checkpoint but before this
    ran resumes with nothing left to train, and Lightning then skips ``on_train_end``: the export runs at the end
    of that fit instead."""

    def __init__(self) -> None:
        self._done = False

    def on_train_end(self, trainer, pl_module) -> None:
        self._export(trainer, pl_module)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not self._done:
            self._export(trainer, pl_module)

    def _export(self, trainer, pl_module) -> None:
        self._done = True
        if not trainer.is_global_zero:
            return
        from ..model.checkpoint import save_lora_adapter, save_trainable

        out = pl_module.out_dir
        save_trainable(pl_module.model, out / "export" / "trainable.safetensors")
        save_lora_adapter(pl_module.model, out / "export" / "lora_adapter")
        atomic_write_json(out / "symbols_final.json", pl_module.cycle.book.state_dict())
