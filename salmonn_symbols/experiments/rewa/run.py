"""The rewa experiment end to end: datasets × seeds × methods × byte budgets, held out.

for each dataset (synthetic | stdlib):   vectors (N, D) [+ labels]
  for each seed:
    make_split ─► train part │ held-out queries + database
    exact neighbours within the train part ─► fit_heads (LightningModule; InfoNCE or rank loss)
    for each method × budget: index.fit(train sample) ─► evaluate_side(held-out) and (train side)
summarize over seeds ─► results.json, results.md (tables + targets), recall_vs_bytes.png, logs/
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ...io import atomic_write_text
from ..common import results_header, seed_everything, summarize, write_results
from .config import REFERENCE, RewaConfig, check_dim, validate
from .data import Split, exact_neighbours, load_dataset, make_split
from .encoders import LinearProjection, MLPProjection, RandomHadamard, SignRandomProjection, make_learned
from .evaluate import evaluate_side
from .indexes import CodecIndex, faiss_index, projected_index
from .report import METRICS, plot_recall, report_markdown, target_checks
from .training import fit_heads

__all__ = ["run"]

_SUMMARY_BY = ["dataset", "method", "budget", "bytes", "size"]


class TimeBudget:
    """Stops starting work that, judged by what the same work took for the previous seed, would end more than
    ``seconds`` after the start (0: no limit). What is not started is listed in ``cut``."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds if seconds > 0 else float("inf")
        self.took: dict[str, float] = {}
        self.cut: list[dict] = []

    def allows(self, what: str, plus: str | None = None, **where) -> bool:
        """Whether ``what`` (and then ``plus``) fits in the time left; records a cut when not."""
        need = self.took.get(what, 0.0) + (self.took.get(plus, 0.0) if plus else 0.0)
        if time.perf_counter() + need <= self.end:
            return True
        self.cut.append({"what": what, **where, "needs_s": need})
        print(f"  time budget: not starting {what} {where} (needs ~{need:.0f} s)", flush=True)
        return False


def _device(name: str) -> str:
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {name!r} asked for but no CUDA device is available")
    return name


def _pq_dims(cfg: RewaConfig, dim: int, budget: int) -> int:
    """Output size of the projection that learned_rank_pq quantises at ``budget`` bytes."""
    return min(dim, cfg.pq_proj_factor * budget)


def _learned_plan(cfg: RewaConfig, dim: int, seed: int) -> dict[str, tuple[str, dict]]:
    """Variant -> (loss, heads) of the learned methods asked for, most important first; heads are named by
    output size or role."""
    plan = {}
    s = seed * 1000
    rank_heads = {}
    if "learned_rank" in cfg.methods:
        rank_heads = {str(b): make_learned(cfg.rank_arch, dim, b, cfg.hidden_dim, s + b) for b in cfg.budgets}
    if "learned_rank_pq" in cfg.methods:
        for b in cfg.budgets:
            rank_heads[f"pq{b}"] = make_learned(cfg.rank_arch, dim, _pq_dims(cfg, dim, b), cfg.hidden_dim, s + 500 + b)
    if rank_heads:
        plan["learned_rank"] = ("rank", rank_heads)
    if "learned_mlp" in cfg.methods:
        heads = {str(b): MLPProjection(dim, b, cfg.hidden_dim, s + b) for b in cfg.budgets}
        if cfg.seed_settings:
            heads["seed"] = MLPProjection(dim, cfg.seed_dims, cfg.hidden_dim, s + 999)
        plan["learned_mlp"] = ("infonce", heads)
    if "learned_linear" in cfg.methods:
        plan["learned_linear"] = ("infonce", {str(b): LinearProjection(dim, b, s + b) for b in cfg.budgets})
    return plan


def _train_learned(
    dataset: str, split: Split, seed: int, cfg: RewaConfig, device: str, out_dir: Path, clock: TimeBudget
) -> tuple:
    """Trains every learned variant on the train part (the InfoNCE ones only while the time budget allows);
    returns (variant -> head name -> module, seconds)."""
    from ..common import make_loggers

    dim = split.vectors.shape[1]
    plan = _learned_plan(cfg, dim, seed)
    if not plan:
        return {}, {}
    train = torch.from_numpy(split.vectors[split.train]).to(device)  # (Nt, D)
    neighbours = exact_neighbours(train, train, cfg.mine_k, exclude_self=True).cpu()  # (Nt, mine_k)
    labels = None if split.labels is None else split.labels[split.train]
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    trained, seconds = {}, {}
    for variant, (loss, heads) in plan.items():
        if variant != "learned_rank" and not clock.allows(variant, "indexes", dataset=dataset, seed=seed):
            continue
        seed_everything(seed)
        loggers = make_loggers(out_dir, f"{dataset}_{variant}_seed{seed}", cfg.wandb)
        trained[variant], seconds[variant] = fit_heads(
            heads, train, neighbours, labels, loss, cfg, seed, accelerator, loggers
        )
        for logger in loggers:
            if hasattr(logger, "experiment") and hasattr(logger.experiment, "finish"):
                logger.experiment.finish()  # one W&B run per trained variant
        clock.took[variant] = seconds[variant]
    return trained, seconds


def _indexes(cfg: RewaConfig, dim: int, seed: int, learned: dict, train_s: dict):
    """Yields (index, budget, train seconds) for every method × budget asked for."""
    for name in REFERENCE:
        if name in cfg.methods:
            yield faiss_index(name, dim, None), None, 0.0
    for b in cfg.budgets:
        for name in ("pq", "opq_pq"):
            if name in cfg.methods:
                yield faiss_index(name, dim, b, cfg.opq_iters, cfg.kmeans_iters), b, 0.0
        if "binary_rewa" in cfg.methods:
            yield projected_index("binary_rewa", SignRandomProjection(dim, 8 * b, seed), 8 * b, "binary"), b, 0.0
        if "random_hadamard" in cfg.methods:
            yield projected_index("random_hadamard", RandomHadamard(dim, b, seed), b, "int8"), b, 0.0
        for name in ("learned_linear", "learned_mlp", "learned_rank"):
            if name in cfg.methods and name in learned:
                yield projected_index(name, learned[name][str(b)], b, "int8"), b, train_s[name]
        if "learned_rank_pq" in cfg.methods:
            head, p = learned["learned_rank"][f"pq{b}"], _pq_dims(cfg, dim, b)
            yield projected_index("learned_rank_pq", head, p, "pq", b, cfg.kmeans_iters), b, train_s["learned_rank"]
    if cfg.seed_settings:
        yield from _seed_indexes(cfg, dim, seed, learned, train_s)


def _seed_indexes(cfg: RewaConfig, dim: int, seed: int, learned: dict, train_s: dict):
    """The seed's own sizes: 16-bit binary codes, and 256-dim float32 Hadamard / learned MLP projections."""
    if "binary_rewa" in cfg.methods:
        enc = SignRandomProjection(dim, cfg.seed_bits, seed)
        yield projected_index("seed:binary_rewa", enc, cfg.seed_bits, "binary"), None, 0.0
    if "random_hadamard" in cfg.methods:
        enc = RandomHadamard(dim, cfg.seed_dims, seed)
        yield projected_index("seed:random_hadamard", enc, cfg.seed_dims, "float32"), None, 0.0
    if "learned_mlp" in cfg.methods and "learned_mlp" in learned:
        head = learned["learned_mlp"]["seed"]
        yield projected_index("seed:learned_mlp", head, cfg.seed_dims, "float32"), None, train_s["learned_mlp"]


def _truth(split: Split, queries: np.ndarray, database: np.ndarray, k: int) -> np.ndarray:
    q, db = torch.from_numpy(split.vectors[queries]), torch.from_numpy(split.vectors[database])
    return exact_neighbours(q, db, k).numpy()


def _score(index: CodecIndex, split: Split, cfg: RewaConfig, truths: dict) -> dict:
    """Held-out and train-side metrics of one fitted index."""
    x, y = split.vectors, split.labels
    out = {}
    for side, (q, db) in {
        "": (split.queries, split.database),
        "train_": (split.train_queries, split.train_database),
    }.items():
        labels = (None, None) if y is None else (y[q], y[db])
        res = evaluate_side(index, x[q], x[db], truths[side], cfg.rerank_depth, *labels)
        out |= {f"{side}{k}": v for k, v in res.items()}
    out["gap"] = out["train_recall"] - out["recall"]
    return out


def run_seed(
    dataset: str,
    vectors: np.ndarray,
    labels,
    seed: int,
    cfg: RewaConfig,
    device: str,
    out_dir: Path,
    clock: TimeBudget,
) -> list:
    """Every method × budget on one seed's split of one dataset; one record each."""
    seed_everything(seed)
    split = make_split(vectors, labels, cfg.heldout_fraction, cfg.n_queries, seed)
    t0 = time.perf_counter()
    learned, train_s = _train_learned(dataset, split, seed, cfg, device, out_dir, clock)
    t1 = time.perf_counter()
    print(f"  {dataset} seed {seed}: trained {sorted(train_s)} in {time.perf_counter() - t0:.1f} s", flush=True)
    rng = np.random.default_rng(seed)
    fit_rows = split.train[rng.permutation(len(split.train))[: cfg.faiss_train_max]]
    truths = {
        "": _truth(split, split.queries, split.database, cfg.k),
        "train_": _truth(split, split.train_queries, split.train_database, cfg.k),
    }
    records = []
    for index, nbytes, seconds in _indexes(cfg, vectors.shape[1], seed, learned, train_s):
        fit_s = index.fit(vectors[fit_rows])
        row = {"dataset": dataset, "seed": seed, "method": index.name, "size": index.size}
        row |= {"budget": nbytes, "bytes": index.bytes_per_vector, "fit_s": fit_s, "train_s": seconds}
        row |= _score(index, split, cfg, truths)
        records.append(row)
        print(
            f"  {dataset} seed {seed} {index.name:<22} {index.bytes_per_vector:>7g} B  recall@{cfg.k} "
            f"{row['recall']:.3f}  reranked {row['recall_rerank']:.3f}  train {row['train_recall']:.3f}",
            flush=True,
        )
    clock.took["indexes"] = time.perf_counter() - t1
    clock.took["seed"] = time.perf_counter() - t0 - sum(v for k, v in train_s.items() if k != "learned_rank")
    fit_s = sum(r["fit_s"] for r in records)
    print(
        f"  {dataset} seed {seed}: {time.perf_counter() - t0:.1f} s in all, {fit_s:.1f} s fitting indexes", flush=True
    )
    return records


def run(cfg: RewaConfig, out_dir: Path) -> dict:
    """Runs the experiment and writes results.json, results.md and recall_vs_bytes.png under ``out_dir``."""
    import faiss

    validate(cfg)
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
        faiss.omp_set_num_threads(cfg.threads)
    device = _device(cfg.device)
    out_dir = Path(out_dir)
    start = time.perf_counter()
    clock = TimeBudget(cfg.time_budget_s)
    records, datasets = [], {}
    for name in cfg.datasets:
        t0 = time.perf_counter()
        vectors, labels, info = load_dataset(name, cfg, device)
        check_dim(cfg, vectors.shape[1], name)
        datasets[name] = info | {"load_s": time.perf_counter() - t0}
        print(
            f"dataset {name}: {vectors.shape[0]} vectors of {vectors.shape[1]} dims ({datasets[name]['load_s']:.1f} s)"
        )
        clock.took.pop("seed", None)  # a new dataset: no estimate yet
        for seed in cfg.seeds:
            if clock.allows("seed", dataset=name, seed=seed):
                records += run_seed(name, vectors, labels, seed, cfg, device, out_dir, clock)
        datasets[name]["split_sizes"] = make_split(vectors, labels, cfg.heldout_fraction, cfg.n_queries, 0).sizes()
    summary = summarize(records, _SUMMARY_BY, METRICS)
    targets = target_checks(records, cfg)
    results = results_header("rewa", cfg) | {
        "datasets": datasets,
        "records": records,
        "summary": summary,
        "targets": targets,
        "cut": clock.cut,
        "wall_s": time.perf_counter() - start,
    }
    write_results(out_dir, results)
    markdown = report_markdown(summary, targets, datasets, cfg, results)
    atomic_write_text(out_dir / "results.md", markdown)
    plot_recall(summary, cfg.k, out_dir / "recall_vs_bytes.png")
    print(markdown)
    print(f"wall time {results['wall_s']:.0f} s")
    return results
