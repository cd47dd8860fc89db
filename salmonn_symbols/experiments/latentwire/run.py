"""One latentwire run: every arm × compression × seed on the held-out split, then the result files.

task (packages or data_file) ─► frozen LLM + tokenizer ─► encoded train / val / test questions
full embeddings (the reference, first) ─► zero-training arms: snap, PCA only (per ratio, pool, noise)
for seed: for trained setting: fit WireModule (Lightning) ─► evaluate on test
─► results.json (header, task, wires, every record, summaries, targets, examples), results.md, PNG
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from ..common import make_loggers, results_header, seed_everything
from .adapters import build_adapter
from .config import LatentWireConfig, check_config
from .evaluate import evaluate_arm
from .llm import Encoded, FrozenLLM, encode_questions, load_llm
from .module import WireModule, question_loader
from .report import summarize_records, targets, write_outputs
from .task import QADataset, build_dataset, cap, load_dataset, save_dataset
from .wire import Wire, fit_wire

__all__ = ["Setting", "run", "settings"]


@dataclass(frozen=True)
class Setting:
    """One arm at one wire setting: ``ratio`` per wire vector, ``pool`` tokens per vector, ``noise`` level."""

    arm: str
    adapter: str
    ratio: int
    pool: int
    noise: float

    def label(self) -> str:
        arm = self.arm if self.adapter == "-" else f"{self.arm}-{self.adapter}"
        return f"{arm}-r{self.ratio}-k{self.pool}-n{self.noise:g}"

    def record(self) -> dict[str, Any]:
        keys = {"arm": self.arm, "adapter": self.adapter, "ratio": self.ratio, "pool": self.pool}
        return keys | {"noise": self.noise, "total_ratio": self.ratio * self.pool}


def settings(cfg: LatentWireConfig) -> tuple[list[Setting], list[Setting]]:
    """(zero-training settings, trained settings) of the config, reference first."""
    arms, fixed, trained = set(cfg.arms), [], []
    if "full" in arms:
        fixed.append(Setting("full", "-", 1, 1, 0.0))
    wires = [(r, 1, 0.0) for r in cfg.ratios] + [(cfg.pool_ratio, k, 0.0) for k in cfg.pools]
    wires += [(cfg.noise_ratio, 1, n) for n in cfg.noise_levels]
    for ratio, k, noise in wires:
        fixed += [Setting(a, "-", ratio, k, noise) for a in ("snap", "pca") if a in arms and (a == "pca" or k == 1)]
        kinds = cfg.token_adapters if (k == 1 and noise == 0) else ["transformer"] if k > 1 else cfg.noise_adapters
        trained += [
            Setting(a, kind, ratio, k, noise) for kind in kinds for a in ("adapter_mse", "adapter_mse_ce") if a in arms
        ]
    return fixed, trained


def _device(cfg: LatentWireConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("latentwire config: device='cuda' but no CUDA device is visible")
    return torch.device(cfg.device)


def _dataset(cfg: LatentWireConfig) -> QADataset:
    if cfg.data_file:
        return load_dataset(cfg.data_file)
    return build_dataset(cfg.kinds, cfg.cities_per_country, cfg.split_fractions, cfg.split_seed)


def _fixed_reconstruct(s: Setting, wire: Wire | None, table: torch.Tensor) -> Callable:
    """The reconstruction of a zero-training arm."""
    if s.arm == "full":
        return lambda emb, mask, gen: emb

    def rec(emb: torch.Tensor, mask: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        codes, _ = wire.encode(emb, mask)
        codes = wire.add_noise(codes, s.noise, gen)
        return wire.snap(codes, table) if s.arm == "snap" else wire.decode(codes, emb.shape[1])

    return rec


def _train(
    cfg: LatentWireConfig, s: Setting, seed: int, wire: Wire, llm: FrozenLLM, data: dict, out: Path
) -> tuple[WireModule, dict[str, Any]]:
    """Fits the adapter of trained setting ``s`` with ``seed``; returns the module (on the LLM's device)."""
    seed_everything(seed)
    adapter = build_adapter(wire, s.adapter, cfg.hidden, cfg.layers, cfg.heads)
    ce = cfg.ce_weight if s.arm == "adapter_mse_ce" else 0.0
    mse = cfg.mse_weight if (ce > 0 or cfg.mse_weight > 0) else 1.0  # the MSE-only arm always has an MSE
    module = WireModule(wire, adapter, llm, mse, ce, s.noise, cfg.lr, cfg.weight_decay, cfg.steps)
    val = question_loader(data["val"], cfg.eval_batch_size, None) if data["val"] else None
    loggers = make_loggers(out, f"{s.label()}-s{seed}", wandb=cfg.wandb, project="latentwire")
    trainer = L.Trainer(
        max_steps=cfg.steps,
        accelerator="gpu" if llm.device.type == "cuda" else "cpu",
        devices=1,
        precision=cfg.precision,
        logger=loggers,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        check_val_every_n_epoch=None,
        val_check_interval=cfg.steps if val else None,
        limit_val_batches=None if val else 0,
        log_every_n_steps=max(1, cfg.steps // 20),
    )
    start = time.perf_counter()
    module.train()  # a wire shared with an evaluated arm may be in eval mode
    trainer.fit(module, question_loader(data["train"], cfg.batch_size, seed), val)
    info = {"train_seconds": time.perf_counter() - start}
    for logger in loggers[1:]:  # W&B: one run per arm and seed, not one run for the whole experiment
        logger.experiment.finish()
    info |= {k.replace("/", "_"): float(v) for k, v in trainer.callback_metrics.items()}
    module.to(llm.device).eval()  # Lightning's teardown leaves the module on the CPU
    return module, info


class _Run:
    """The state of one run: the LLM, encoded questions, fitted wires, records so far."""

    def __init__(self, cfg: LatentWireConfig, ds: QADataset, out_dir: Path, header: dict[str, Any]) -> None:
        self.cfg, self.ds, self.out, self.header = cfg, ds, out_dir, header
        self.t0 = time.perf_counter()
        self.device = _device(cfg)
        model, tok = load_llm(cfg)
        self.llm = FrozenLLM(model.to(self.device), tok)
        rows = {"train": cap(ds.splits["train"], cfg.max_train, cfg.split_seed)}
        rows["val"] = cap(ds.splits["val"], cfg.max_val, 0) if cfg.max_val else []
        rows["test"] = cap(ds.splits["test"], cfg.max_test, cfg.split_seed)
        self.data: dict[str, list[Encoded]] = {k: encode_questions(tok, ds, v) for k, v in rows.items()}
        with torch.no_grad():
            self.train_msgs = [self.llm.embed(e.message) for e in self.data["train"]]  # each (L_i, D)
            self.token_var = torch.cat(self.train_msgs).double().var(0).mean().item()  # the unit of the nMSE
        self.wires: dict[tuple[int, int], Wire] = {}
        self.records: list[dict[str, Any]] = []
        self.examples: dict[str, list[dict[str, str]]] = {}
        sizes = ", ".join(f"{k} {len(v)}" for k, v in self.data.items())
        print(
            f"{type(model).__name__} ready on {self.device} in {time.perf_counter() - self.t0:.1f}s; questions {sizes}"
        )

    def wire(self, ratio: int, k: int) -> Wire:
        """The wire of (ratio, k), fitted on the training messages at first use."""
        if (ratio, k) not in self.wires:
            wire = fit_wire(self.train_msgs, ratio, k, self.cfg.pool_mode if k > 1 else "mean").to(self.device)
            if k == 1:
                wire.set_vocabulary(self.llm.table)
            self.wires[ratio, k] = wire
        return self.wires[ratio, k].to(self.device)

    def evaluate(self, s: Setting, rec: Callable, seed: int | None, extra: dict[str, Any]) -> None:
        """Scores ``rec`` on the test questions and keeps the record (and the first seed's examples)."""
        cfg = self.cfg
        metrics, ex = evaluate_arm(
            self.llm,
            self.data["test"],
            rec,
            self.token_var,
            cfg.eval_batch_size,
            cfg.max_new_tokens,
            cfg.precision,
            seed or 0,
            cfg.n_examples,
        )
        self.records.append(s.record() | {"seed": seed} | metrics | extra)
        self.examples.setdefault(s.label(), ex)
        took = f"train {extra['train_seconds']:.1f}s, " if extra else ""
        print(
            f"{s.label():42s} seed {seed}: EM {metrics['em']:.3f} F1 {metrics['f1']:.3f} NLL {metrics['nll']:.3f} "
            f"cos {metrics['cosine']:.3f} ({took}eval {metrics['eval_seconds']:.1f}s)"
        )

    def write(self, complete: bool) -> dict[str, Any]:
        """Writes results.json, results.md and the figure from the records so far."""
        summary = summarize_records(self.records)
        table = self.llm.table
        results = self.header | {
            "complete": complete,
            "task": {"builder": self.ds.builder, "split_unit": "country"}
            | {"questions": {k: len(v) for k, v in self.data.items()}},
            "llm": {"name": type(self.llm.model).__name__, "dim": table.shape[1], "vocab": table.shape[0]},
            "wires": [
                {"ratio": r, "pool": k, "code_dim": w.code_dim, "explained_variance": w.explained}
                for (r, k), w in self.wires.items()
            ],
            "records": self.records,
            "summary": summary,
            "targets": targets(summary, self.cfg.pool_ratio),
            "examples": self.examples,
            "seconds": time.perf_counter() - self.t0,
        }
        write_outputs(self.out, results)
        return results


def run(cfg: LatentWireConfig, out_dir: Path, preset: str | None = None) -> dict[str, Any]:
    """Runs the experiment and writes ``results.json``, ``results.md`` and ``f1_vs_compression.png`` (rewritten
    after each seed, so a run stopped early keeps what it measured; ``complete`` says which)."""
    check_config(cfg)
    for name in ("lightning.pytorch", "lightning.fabric"):  # one Trainer per arm: keep its banner out of the log
        logging.getLogger(name).setLevel(logging.WARNING)
    ds = _dataset(cfg)
    if cfg.export_data:
        path = save_dataset(ds, cfg.export_data)
        print(f"dataset written to {path}: " + ", ".join(f"{k} {len(v)}" for k, v in ds.splits.items()))
        return {"dataset": str(path)}
    r = _Run(cfg, ds, Path(out_dir), results_header("latentwire", cfg, preset))
    fixed, trained = settings(cfg)
    for s in fixed:
        wire = None if s.arm == "full" else r.wire(s.ratio, s.pool)
        for seed in cfg.seeds if s.noise > 0 else [None]:  # noise-free zero-training arms are deterministic
            r.evaluate(s, _fixed_reconstruct(s, wire, r.llm.table), seed, {})
    results = r.write(complete=not trained)
    for i, seed in enumerate(cfg.seeds if trained else []):
        start = time.perf_counter()
        for j, s in enumerate(trained):
            if cfg.time_budget_s and time.perf_counter() - r.t0 > cfg.time_budget_s:
                print(f"time budget: seed {seed} stopped before {len(trained) - j} of its settings")
                return r.write(complete=False)
            module, info = _train(cfg, s, seed, r.wire(s.ratio, s.pool), r.llm, r.data, r.out)
            r.evaluate(s, lambda emb, mask, gen, m=module: m.reconstruct(emb, mask, gen), seed, info)
        results = r.write(complete=i == len(cfg.seeds) - 1)
        spent, took = time.perf_counter() - r.t0, time.perf_counter() - start
        if cfg.time_budget_s and i + 1 < len(cfg.seeds) and spent + took > cfg.time_budget_s:
            print(f"time budget: stopping after {i + 1} seed(s) ({spent:.0f}s spent, {took:.0f}s per seed)")
            break
    print(f"done in {results['seconds']:.0f}s")
    return results
