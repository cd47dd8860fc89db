"""How a run checkpoints, stops, resumes its logs and reports, as Lightning callbacks.

    StepCheckpoint  last.ckpt every N optimizer steps, never on an epoch's last batch
    GracefulStop    SIGTERM / SIGUSR1 ─► finish the step (or the epoch end) in progress ─► last.ckpt ─► stop;
                    SIGUSR1 on SLURM also requeues the job, which resumes from that checkpoint
    KeptMetrics     a resumed run keeps the metrics.csv rows logged up to its checkpoint
    InitialSymbols  symbols_cycle_0.json, written by a fresh run only
    StaleFiles      a resumed run moves files written after its checkpoint to stale/<time>/ (one history)
    RunSummary      train/samples_per_sec every epoch; at the end: files, symbols per cycle, accuracy, skipped
                    samples, time (printed and written to summary.json)

The epoch-end checkpoint itself is written by the module, after validation and discovery (`resume.save_epoch_end`).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException

from ..io import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

__all__ = [
    "GracefulStop",
    "InitialSymbols",
    "KeptMetrics",
    "RunSummary",
    "StaleFiles",
    "StepCheckpoint",
    "resume_command",
]


def resume_command(run_dir: Path) -> str:
    """The command line that continues the run in ``run_dir`` (a run started without ``--run_dir`` too)."""
    return f"salmonn-symbols fit --config {run_dir / 'config.yaml'} --run_dir {run_dir} --ckpt_path last"


class StepCheckpoint(ModelCheckpoint):
    """Lightning's step checkpoint (``step-N.ckpt`` and ``last.ckpt`` every ``every_n_train_steps``) in the run's
    ``checkpoints/`` folder, skipped on an epoch's last batch: Lightning resumes a checkpoint taken there as a
    finished epoch, so the epoch's validation and discovery would never run. The epoch-end checkpoint, written
    right after them, takes its place."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        if self.dirpath is None:  # the folder the module writes its epoch-end checkpoints to, whatever the logger
            self.dirpath = str(pl_module.out_dir / "checkpoints")
        super().setup(trainer, pl_module, stage)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx + 1 < trainer.num_training_batches:
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)


def _requeue() -> bool:
    """``scontrol requeue`` of this SLURM job (array jobs included); False outside SLURM or on failure."""
    job = os.environ.get("SLURM_JOB_ID")
    if os.environ.get("SLURM_ARRAY_JOB_ID"):
        job = f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    if not job:
        return False
    try:
        return subprocess.call(["scontrol", "requeue", job]) == 0
    except OSError:
        return False


class GracefulStop(L.Callback):
    """A clean stop on SIGTERM (``kill``, a scheduler's preemption) or SIGUSR1 (SLURM's warning before the time
    limit: ``sbatch --signal=SIGUSR1@300``).

    Lightning's SIGTERM handler, registered just before training starts, marks the trainer; its loops then stop
    after the batch in progress, or after the epoch end (validation, discovery, the epoch-end checkpoint) when
    the signal came during the epoch-end work. Lightning also stops a validation in progress: then no checkpoint
    is written (one there would resume past the validation and its discovery), and the resumed run repeats the
    epoch's tail from the checkpoint before. SIGUSR1 takes the same path, in place of Lightning's SLURM handler,
    which would save a checkpoint from inside the signal handler wherever the step happens to be. A stop
    mid-epoch writes ``last.ckpt`` at that batch boundary. The process then exits with status 143.
    """

    def __init__(self) -> None:
        self.signum: int | None = None

    def on_train_start(self, trainer, pl_module) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        lightning_handler = signal.getsignal(signal.SIGTERM)

        def stop(signum, frame) -> None:
            self.signum = self.signum or signum
            if callable(lightning_handler):
                lightning_handler(signal.SIGTERM, frame)

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGUSR1, stop)  # Lightning restores the previous handlers at teardown

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != "fit":
            return
        last = pl_module.out_dir / "checkpoints" / "last.ckpt"
        done, n = trainer.fit_loop.epoch_loop.batch_progress.current.completed, trainer.num_training_batches
        epochs, epoch = trainer.fit_loop.epoch_progress.current, trainer.current_epoch
        if 0 < done < n:
            trainer.save_checkpoint(last, weights_only=False)
            where = f"after step {trainer.global_step}; {last} holds this state"
        elif done == n and epochs.processed < epochs.started:
            # Lightning stops validation at the signal; a checkpoint here would resume past it and its discovery
            where = (
                f"during the validation of epoch {epoch}; {last} holds the state before it, so the resumed run "
                f"repeats that epoch's last steps, its validation and what follows"
            )
        else:
            where = f"at the end of epoch {epoch - 1}; {last} holds this state"
        if trainer.is_global_zero:
            name = signal.Signals(self.signum or signal.SIGTERM).name
            requeued = name == "SIGUSR1" and _requeue()
            print(
                f"\n{name}: stopped cleanly {where}"
                + ("; the SLURM job was requeued and resumes from it" if requeued else "")
                + f".\nresume with: {resume_command(pl_module.out_dir)}",
                flush=True,
            )


class KeptMetrics(L.Callback):
    """A resumed run keeps the ``metrics.csv`` rows its checkpoint had logged.

    Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, before any hook runs, so `put_aside`
    (called by ``fit --ckpt_path`` before the Trainer exists) renames the file aside first. When the checkpoint
    is loaded, the rows before the first step the resumed run logs come back into ``metrics.csv``; those after it
    are dropped, as the resumed run logs them again. Logs are flushed with every checkpoint and once more right
    after it, so that the rows of the checkpointed state are on disk when a run is killed.
    """

    ASIDE = ".metrics.csv.resumed"

    def __init__(self) -> None:
        self._flush_next = False

    @classmethod
    def put_aside(cls, log_dir: str | Path) -> None:
        """Moves ``log_dir/metrics.csv`` aside, unless an earlier resume that stopped before loading its
        checkpoint already did (that copy holds the history)."""
        path, aside = Path(log_dir) / "metrics.csv", Path(log_dir) / cls.ASIDE
        if path.is_file() and not aside.exists():
            os.replace(path, aside)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._flush(trainer)
        self._flush_next = True  # the rows Lightning logs right after a checkpoint belong to its state as well

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        if self._flush_next:
            self._flush(trainer)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self._flush_next:
            self._flush(trainer)

    def _flush(self, trainer) -> None:
        self._flush_next = False
        for lg in trainer.loggers:
            lg.save()

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        loops = checkpoint.get("loops", {}).get("fit_loop")
        if not trainer.is_global_zero or loops is None or trainer.state.fn != "fit":
            return
        first = loops["epoch_loop.state_dict"]["_batches_that_stepped"]
        done = loops["epoch_loop.batch_progress"]["total"]
        first += done["completed"] == done["processed"] - 1  # saved at a batch end, before Lightning counted it
        for lg in trainer.loggers:
            if isinstance(lg, CSVLogger) and (Path(lg.log_dir) / self.ASIDE).is_file():
                self._restore(lg, first)

    def _restore(self, logger: CSVLogger, first_step: int) -> None:
        aside = Path(logger.log_dir) / self.ASIDE
        with open(aside, newline="") as f:
            reader = csv.DictReader(f)
            rows = [r for r in reader if r.get("step") and int(r["step"]) < first_step]
            keys = list(reader.fieldnames or [])
        writer = logger.experiment
        writer.metrics_keys = sorted(set(writer.metrics_keys) | set(keys))  # new keys rewrite the header
        text = io.StringIO()
        out = csv.DictWriter(text, fieldnames=writer.metrics_keys)
        out.writeheader()
        out.writerows(rows)
        atomic_write_text(Path(logger.log_dir) / "metrics.csv", text.getvalue())
        aside.unlink()


class InitialSymbols(L.Callback):
    """Writes ``symbols_cycle_0.json``, the symbols the run starts from, when a fresh run starts training (rank 0).
    A resumed run leaves the file alone: its checkpoint's book holds cycle 0, and a changed ``symbol_seed`` must
    not rewrite the run's history."""

    def __init__(self) -> None:
        self._resumed = False

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        self._resumed = True

    def on_train_start(self, trainer, pl_module) -> None:
        if not self._resumed and trainer.is_global_zero:
            atomic_write_json(pl_module.out_dir / "symbols_cycle_0.json", pl_module.cycle.book.state_dict())


class StaleFiles(L.Callback):
    """A resumed run moves aside what the interrupted run wrote after the restored checkpoint, so that the run's
    files describe one history: discovery files of cycles the checkpoint's book has not discovered, the final
    files (``symbols_final.json``, ``summary.json``, ``export/``, ``symbol_evolution.png``; kept when the
    checkpoint is the run's last state) and the ``phase_checks.jsonl`` records of the epochs trained again.
    They go to ``<run>/stale/<time>/`` on rank 0, and the log names them."""

    FINAL = ("symbols_final.json", "summary.json", "export", "symbol_evolution.png")

    def on_load_checkpoint(self, trainer, pl_module, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn != "fit" or not trainer.is_global_zero:
            return
        run, sampler = pl_module.out_dir, checkpoint.get("sampler", {})
        first = sampler.get("epoch", 0) + bool(sampler.get("at_epoch_end"))  # the first epoch trained again
        aside = run / "stale" / time.strftime("%Y%m%d-%H%M%S")
        moved = self._move(run, aside, checkpoint.get("symbols", {}).get("history", []), first >= trainer.max_epochs)
        if self._trim_phase_checks(run, aside, first):
            moved.append(f"phase_checks.jsonl (records of epoch >= {first})")
        if moved:
            log.warning("resumed from a checkpoint older than these files; moved to %s: %s", aside, ", ".join(moved))

    def _move(self, run: Path, aside: Path, history: list[dict[str, Any]], finished: bool) -> list[str]:
        found = {h.get("cycle") for h in history if h.get("source") == "discovered"}
        stale = [p for p in sorted((run / "discovery").glob("cycle_*_*.json")) if _cycle_of(p.name) not in found]
        stale += [] if finished else [run / name for name in self.FINAL if (run / name).exists()]
        for path in stale:
            dest = aside / path.relative_to(run)
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
        return [str(p.relative_to(run)) for p in stale]

    @staticmethod
    def _trim_phase_checks(run: Path, aside: Path, first: int) -> bool:
        path = run / "phase_checks.jsonl"
        if not path.is_file():
            return False
        lines = path.read_text().splitlines(keepends=True)
        kept = [line for line in lines if json.loads(line)["epoch"] < first]
        if len(kept) == len(lines):
            return False
        aside.mkdir(parents=True, exist_ok=True)
        os.replace(path, aside / path.name)
        atomic_write_text(path, "".join(kept))
        return True


def _cycle_of(name: str) -> int | None:
    """N of a discovery file ``cycle_N_{tokens,symbols}.json``."""
    part = name.split("_")[1]
    return int(part) if part.isdigit() else None


class RunSummary(L.Callback):
    """Throughput and the end-of-run report.

    Every training epoch logs ``train/samples_per_sec``: samples of all ranks per second of training batches
    (validation and the epoch-end work excluded). At the end of a fit, rank 0 prints where the run's files are,
    each label's symbol per cycle, the last validation accuracy with soft, hard and original labels, and the
    steps, time and throughput, and writes the same to ``summary.json``.
    """

    def __init__(self) -> None:
        self._fit_start = time.perf_counter()
        self._samples, self._seconds = 0, 0.0
        self._epoch_start: float | None = None
        self._epoch_samples, self._last_batch_end = 0, None

    def on_fit_start(self, trainer, pl_module) -> None:
        self._fit_start = time.perf_counter()

    def on_train_start(self, trainer, pl_module) -> None:
        self._start_epoch()  # a run resumed mid-epoch gets no on_train_epoch_start for it

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._start_epoch()

    def _start_epoch(self) -> None:
        self._epoch_start, self._epoch_samples, self._last_batch_end = time.perf_counter(), 0, None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if "wav" in batch:
            self._epoch_samples += batch["wav"].shape[0] * trainer.world_size  # equal batch counts on every rank
        self._last_batch_end = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if self._last_batch_end is None or self._epoch_start is None:
            return
        seconds = max(self._last_batch_end - self._epoch_start, 1e-9)
        self._samples += self._epoch_samples
        self._seconds += seconds
        pl_module.log("train/samples_per_sec", self._epoch_samples / seconds, rank_zero_only=True)

    def on_fit_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        summary = self.summary(trainer, pl_module)
        atomic_write_json(pl_module.out_dir / "summary.json", summary)
        print(format_summary(summary), flush=True)

    def summary(self, trainer, pl_module) -> dict[str, Any]:
        """The run's report as plain types."""
        out = pl_module.out_dir
        book = pl_module.cycle.book
        symbols = {lab: [h.mapping.get(lab) for h in book.history] for lab in book.labels}
        files = [
            name
            for name in ("config.yaml", "metrics.csv", "discovery", "checkpoints/last.ckpt", "export", "wandb")
            if (out / name).exists()
        ]
        return {
            "run_dir": str(out),
            "epochs": trainer.current_epoch,
            "steps": trainer.global_step,
            "seconds": round(time.perf_counter() - self._fit_start, 1),
            "samples_per_sec": round(self._samples / self._seconds, 2) if self._seconds else None,
            "cycles": [h.cycle for h in book.history],
            "symbols": symbols,
            "accuracy": {m: pl_module.last_eval[m].get("mean/acc") for m in pl_module.last_eval},
            "skipped": _lines(out / "skipped.jsonl"),  # what check-data counts as skipped, each sample once
            "files": files,
        }


def _lines(path: Path) -> int:
    """Non-empty lines of a text file (0 when it does not exist)."""
    return sum(1 for line in path.read_text().splitlines() if line.strip()) if path.is_file() else 0


def format_summary(s: dict[str, Any]) -> str:
    """The printed form of `RunSummary.summary`."""
    run = Path(s["run_dir"])
    rate = f", {s['samples_per_sec']} samples/s" if s["samples_per_sec"] else ""
    lines = [f"\nrun finished: {run}  ({s['epochs']} epochs, {s['steps']} steps, {s['seconds']:.0f} s{rate})"]
    width = max((len(lab) for lab in s["symbols"]), default=5)
    lines.append(f"symbols, cycle {' -> '.join(map(str, s['cycles']))}:")
    lines += [f"  {lab.ljust(width)}  {' -> '.join(map(str, syms))}" for lab, syms in s["symbols"].items()]
    if s["accuracy"]:
        acc = "  ".join(f"{m} {v:.3f}" for m, v in s["accuracy"].items() if v is not None)
        lines.append(f"validation accuracy (mean over datasets), last evaluation: {acc}")
    if s.get("skipped"):
        lines.append(f"skipped: {s['skipped']} bad samples (on_bad_sample: skip), listed in {run / 'skipped.jsonl'}")
    lines.append(f"files: {', '.join(s['files'])} (and summary.json) in {run}")
    lines.append(f"next: salmonn-symbols inspect {run}")
    return "\n".join(lines)
