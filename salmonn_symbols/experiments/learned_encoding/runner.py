"""The grid: which trainings, in which order, on how many processes at once, within the wall budget.

    plan(cfg) ─► [every full arm first] + per (variant, dataset, seed): ratio × arm          (priority order)
    run_grid: while jobs remain: start the first ready job (autoencoder / svd wait for their full table)
              on a free worker unless it would end past time_budget_s ─► record, print one line
              workers = 1: in this process; > 1: spawned processes sharing the device (GPUs round-robin)

Trainings cut by the budget, or never ready because their full arm was cut, are returned by key, so the
results say plainly what did not run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .config import LearnedEncodingConfig
from .corpora import Corpus
from .training import Job, quiet_lightning, train_job

__all__ = ["plan", "run_grid"]

_STATE: dict = {}  # per process: config, corpora, device, GPU index, output folder


def plan(cfg: LearnedEncodingConfig) -> list[Job]:
    """Every training of the grid in priority order: what is cut by the budget comes from the end."""
    variants = [
        (ds, t) for t in cfg.tied for ds in cfg.datasets if not t or not cfg.tied_datasets or ds in cfg.tied_datasets
    ]
    jobs = [Job(ds, t, s, "full") for ds, t in variants for s in cfg.seeds] if "full" in cfg.arms else []
    for ds, t in variants:
        for s in cfg.seeds:
            jobs += [Job(ds, t, s, arm, ratio) for ratio in cfg.ratios for arm in cfg.arms if arm != "full"]
    return jobs


def resolve_device(device: str) -> str:
    """The device to train on: "auto" is CUDA when available."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"learned-encoding config field 'device': {device!r}; use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("learned-encoding config field 'device': cuda asked for but not available")
    return device


def _init_worker(cfg_dict: dict, data_dir: str, out_dir: str, device: str, counter, corpora=None) -> None:
    """Per process: config, corpora (loaded from ``data_dir`` when not given), its GPU, quiet Lightning."""
    import torch

    quiet_lightning()
    with counter.get_lock():
        rank = counter.value
        counter.value += 1
    if corpora is None:  # a spawned worker: one CPU thread each, the device does the work
        torch.set_num_threads(1 if device == "cuda" else max(1, (os.cpu_count() or 1) // cfg_dict["workers"]))
        corpora = {name: Corpus.load(Path(data_dir) / f"{name}.npz") for name in cfg_dict["datasets"]}
    gpu = rank % max(1, torch.cuda.device_count()) if device == "cuda" else 0
    torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast (the autoencoder)
    _STATE.update(cfg=LearnedEncodingConfig(**cfg_dict), corpora=corpora, device=device, gpu=gpu, out=out_dir)


def _work(job: Job, table: np.ndarray | None) -> tuple[dict, np.ndarray | None]:
    s = _STATE
    return train_job(job, s["cfg"], s["corpora"][job.dataset], s["out"], table, s["device"], s["gpu"])


class _InlineExecutor:
    """The executor interface for workers = 1: runs each job at submit, in this process."""

    def submit(self, fn, *args) -> Future:
        fut: Future = Future()
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # handed to the caller through the future, as a pool would
            fut.set_exception(e)
        return fut

    def shutdown(self, wait: bool = True, cancel_futures: bool = False) -> None:
        pass


def run_grid(
    cfg: LearnedEncodingConfig, corpora: dict[str, Corpus], data_dir: Path, out_dir: Path, t_start: float
) -> tuple[list[dict], list[str]]:
    """Runs the planned jobs; returns the records (in plan order) and the keys of the jobs that were cut.

    Args:
        cfg: The experiment config.
        corpora: Datasets by name (used in-process; workers load ``data_dir/<name>.npz``).
        data_dir: Where the corpora were saved for the workers.
        out_dir: Run folder (logs).
        t_start: ``time.perf_counter()`` at the start of the run; ``time_budget_s`` counts from it.
    """
    device = resolve_device(cfg.device)
    jobs = plan(cfg)
    ctx = mp.get_context("spawn")
    counter = ctx.Value("i", 0)
    args = (asdict(cfg), str(data_dir), str(out_dir), device, counter)
    if cfg.workers == 1:
        _init_worker(*args, corpora=corpora)
        pool = _InlineExecutor()
    else:
        pool = ProcessPoolExecutor(cfg.workers, mp_context=ctx, initializer=_init_worker, initargs=args)
    try:
        records, cut = _schedule(jobs, pool, cfg, t_start)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    order = {j.key: i for i, j in enumerate(jobs)}
    return sorted(records, key=lambda r: order[r["key"]]), cut


def _schedule(jobs: list[Job], pool, cfg: LearnedEncodingConfig, t_start: float) -> tuple[list[dict], list[str]]:
    pending, running = list(jobs), {}
    tables: dict[str, np.ndarray] = {}
    records, cut, durations = [], [], []
    while pending or running:
        for job in list(pending):
            if len(running) >= cfg.workers:
                break
            if job.needs_full and job.full_key not in tables:
                if job.full_key in cut:
                    pending.remove(job)
                    cut.append(job.key)
                continue
            if _too_late(cfg, durations, t_start):
                cut += [j.key for j in pending]
                pending.clear()
                break
            pending.remove(job)
            running[pool.submit(_work, job, tables.get(job.full_key) if job.needs_full else None)] = job
        if not running:
            if pending:  # only jobs waiting on a full arm that will not come
                cut += [j.key for j in pending]
            break
        done, _ = wait(list(running), return_when=FIRST_COMPLETED)
        for fut in done:
            job = running.pop(fut)
            try:
                record, table = fut.result()
            except Exception as e:
                raise RuntimeError(f"learned-encoding training {job.key} failed: {e}") from e
            if table is not None:
                tables[job.key] = table
            durations.append(record["wall_s"])
            records.append(record)
            _print_record(record, time.perf_counter() - t_start)
    return records, cut


def _too_late(cfg: LearnedEncodingConfig, durations: list[float], t_start: float) -> bool:
    """Whether a job started now would end past the budget (by the mean duration so far, with 25% margin)."""
    if cfg.time_budget_s <= 0 or not durations:
        return False
    expected = 1.25 * sum(durations) / len(durations)
    return time.perf_counter() - t_start + expected > cfg.time_budget_s


def _print_record(r: dict, elapsed: float) -> None:
    print(
        f"[{elapsed:6.0f}s] {r['key']:<34} r={r['r']:<4} held-out {r['test_bits']:.4f} bits/{r['unit']}"
        f"  embedding {r['embed_params']:>9,} params  ({r['wall_s']:.1f}s)",
        flush=True,
    )
