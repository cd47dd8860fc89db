"""One training: an arm at one code width on one dataset and seed, with Lightning, scored on the test split.

Job ─► fixed codes (autoencoder / svd from the same seed's full table; random) ─► EncodingLM
    ─► Trainer.fit(max_steps, validation every eval_every steps: the curve) ─► Trainer.test (all windows)
    ─► record: held-out bits per unit, embedding sizes, curves, wall time (+ the full arm's table)
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

from ..common import make_loggers, seed_everything
from .arms import fixed_codes
from .config import encoding_width
from .corpora import Corpus, random_starts, windows
from .model import EncodingLM

__all__ = ["Job", "train_job"]


@dataclass(frozen=True)
class Job:
    """One training of the grid. ``ratio`` is None for the full arm (r = d)."""

    dataset: str
    tied: bool
    seed: int
    arm: str
    ratio: int | None = None

    @property
    def variant(self) -> str:
        return "tied" if self.tied else "untied"

    @property
    def key(self) -> str:
        return f"{self.dataset}-{self.variant}-s{self.seed}-{self.arm}" + (f"-x{self.ratio}" if self.ratio else "")

    @property
    def full_key(self) -> str:
        """The key of the full-arm job whose trained table this job compresses."""
        return f"{self.dataset}-{self.variant}-s{self.seed}-full"

    @property
    def needs_full(self) -> bool:
        return self.arm in ("autoencoder", "svd")


class BatchWindows(torch.utils.data.Dataset):
    """Whole batches of windows; item i is batch i, (B, L) int64. ``rows`` selects windows by start or row."""

    def __init__(self, data: np.ndarray, rows: np.ndarray, length: int, batch_size: int):
        self.data, self.rows, self.length, self.bs = data, rows, length, batch_size

    def __len__(self) -> int:
        return (len(self.rows) + self.bs - 1) // self.bs

    def __getitem__(self, i: int) -> torch.Tensor:
        rows = self.rows[i * self.bs : (i + 1) * self.bs]
        if self.data.ndim == 2:
            return torch.from_numpy(self.data[rows, : self.length].astype(np.int64))
        return torch.from_numpy(self.data[rows[:, None] + np.arange(self.length)].astype(np.int64))  # (B, L)


def _loaders(corpus: Corpus, cfg, seed: int) -> tuple:
    """Train (random windows, seeded), validation (evenly spaced windows) and test (all or evenly spaced)."""
    length = cfg.seq_len + 1
    starts = random_starts(corpus, "train", length, cfg.steps * cfg.batch_size, np.random.default_rng(seed))
    train = BatchWindows(corpus.splits["train"], starts, length, cfg.batch_size)
    evals = []
    for split, limit in (("val", cfg.val_batches * cfg.batch_size), ("test", cfg.test_windows)):
        w = windows(corpus, split, length, limit)
        evals.append(BatchWindows(w, np.arange(len(w)), length, cfg.batch_size))
    return tuple(torch.utils.data.DataLoader(d, batch_size=None, shuffle=False) for d in (train, *evals))


class Curves(Callback):
    """Collects (step, mean train loss since the last evaluation) and (step, val loss) during fit."""

    def __init__(self):
        self.train, self.val, self._sum, self._n = [], [], None, 0

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        loss = outputs["loss"].detach()
        self._sum = loss if self._sum is None else self._sum + loss  # no host sync per step
        self._n += 1

    def on_validation_epoch_end(self, trainer, module):
        if self._n:
            self.train.append([trainer.global_step, float(self._sum) / self._n])
            self._sum, self._n = None, 0
        self.val.append([trainer.global_step, float(trainer.callback_metrics["val_loss"])])


def _trainer(cfg, job: Job, out_dir, device: str, gpu: int, callbacks: list) -> L.Trainer:
    precision = cfg.precision if cfg.precision != "auto" else ("bf16-mixed" if device == "cuda" else "32-true")
    return L.Trainer(
        max_steps=cfg.steps,
        accelerator="gpu" if device == "cuda" else "cpu",
        devices=[gpu] if device == "cuda" else 1,
        precision=precision,
        logger=make_loggers(out_dir, job.key, cfg.wandb, project="learned-encoding"),
        callbacks=callbacks,
        val_check_interval=cfg.eval_every,
        check_val_every_n_epoch=None,
        limit_val_batches=cfg.val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=cfg.eval_every,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        deterministic=False,
    )


def quiet_lightning() -> None:
    """Silences Lightning's per-Trainer banners and hints; a grid builds hundreds of Trainers."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*is smaller than the logging interval.*")
    warnings.filterwarnings("ignore", message=".*LeafSpec.*is deprecated.*")  # Lightning vs torch 2.11 pytree


def train_job(
    job: Job, cfg, corpus: Corpus, out_dir, table: np.ndarray | None = None, device: str = "cpu", gpu: int = 0
) -> tuple[dict, np.ndarray | None]:
    """Trains and tests one job.

    Args:
        job: What to train.
        cfg: The experiment config.
        corpus: The job's dataset.
        out_dir: Run folder (logs go to ``logs/<job.key>``).
        table: The same seed's trained full-arm (V, d) table, for the autoencoder and svd arms.
        device: "cpu" or "cuda"; gpu: the CUDA device index.

    Returns:
        The record (held-out metrics, sizes, curves, times) and, for the full arm, its trained (V, d) table.
    """
    t0 = time.perf_counter()
    r = None if job.arm == "full" else encoding_width(cfg.d_model, job.ratio)
    codes, diag = None, {}
    if job.arm not in ("full", "joint"):
        full = torch.from_numpy(table) if table is not None else None
        dev = f"cuda:{gpu}" if device == "cuda" else "cpu"
        codes, diag = fixed_codes(job.arm, r, corpus.vocab_size, full, job.seed, cfg.ae_steps, cfg.ae_lr, dev)
    seed_everything(job.seed)  # after the codes: every arm of a seed starts from the same body and data order
    unit_len = torch.from_numpy(np.asarray(corpus.unit_len, np.float32)) if corpus.unit_len is not None else None
    model = EncodingLM(
        corpus.vocab_size,
        cfg.d_model,
        cfg.n_layers,
        cfg.n_heads,
        cfg.ffn_size,
        cfg.seq_len,
        r=r,
        codes=codes,
        tied=job.tied,
        unit_len=unit_len,
        lr=cfg.lr,
        warmup_steps=cfg.warmup_steps,
        steps=cfg.steps,
        weight_decay=cfg.weight_decay,
        seed=job.seed,
    )
    train, val, test = _loaders(corpus, cfg, job.seed)
    curves = Curves()
    trainer = _trainer(cfg, job, out_dir, device, gpu, [curves])
    t_fit = time.perf_counter()
    trainer.fit(model, train, val)
    train_s = time.perf_counter() - t_fit
    trainer.test(model, test, verbose=False)
    result = model.test_result()
    for logger in trainer.loggers:
        logger.log_metrics({f"test_{corpus.unit}_bits": result["test_bits"]}, step=trainer.global_step)
        logger.finalize("success")
    if cfg.wandb:  # one W&B run per training: the next WandbLogger would otherwise join this one
        import wandb

        wandb.finish()
    record = {
        "key": job.key,
        "dataset": job.dataset,
        "unit": corpus.unit,
        "variant": job.variant,
        "tied": job.tied,
        "seed": job.seed,
        "arm": job.arm,
        "ratio": job.ratio or 1,
        "r": r or cfg.d_model,
        **model.encoder.sizes(),
        **result,
        **diag,
        "final_val_loss": curves.val[-1][1] if curves.val else None,
        "val_curve": curves.val,
        "train_curve": curves.train,
        "train_s": train_s,
        "wall_s": time.perf_counter() - t0,
        "steps": trainer.global_step,
    }
    full_table = model.encoder.weight().detach().float().cpu().numpy() if job.arm == "full" else None
    return record, full_table
