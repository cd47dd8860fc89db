"""The rewa experiment's keys, presets and their checks."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["LEARNED", "METHODS", "PRESETS", "REFERENCE", "RewaConfig", "check_dim", "validate"]

REFERENCE = ["exact", "sq_fp16", "sq_int8"]  # fixed size (a function of D), no budget
LEARNED = ["learned_linear", "learned_mlp", "learned_rank", "learned_rank_pq"]
METHODS = [*REFERENCE, "pq", "opq_pq", "binary_rewa", "random_hadamard", *LEARNED]
DATASETS = ["synthetic", "stdlib"]


@dataclass
class RewaConfig:
    """Keys of ``salmonn-symbols experiment rewa`` (flat; every path is a key).

    Data: ``datasets`` from "synthetic" (the seed's labelled 50-class set) and "stdlib" (MiniLM embeddings of
    prose passages of the standard library under ``corpus_root``). Each seed splits a dataset into a train
    part and a held-out part (``n_queries`` queries + a database); everything trainable sees the train part
    only. Methods are compared at each of ``budgets`` bytes per stored vector; ``seed_settings`` adds the
    seed's own sizes (``seed_bits``-bit codes, ``seed_dims``-dim float32 projections). learned_rank_pq projects
    to ``pq_proj_factor`` × budget dims (at most D) and product-quantises that with one byte per sub-vector.
    """

    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    device: str = "auto"
    wandb: bool = False
    datasets: list[str] = field(default_factory=lambda: ["synthetic"])
    methods: list[str] = field(default_factory=lambda: list(METHODS))
    budgets: list[int] = field(default_factory=lambda: [16, 32, 64])
    seed_settings: bool = True
    seed_bits: int = 16
    seed_dims: int = 256
    k: int = 10
    rerank_depth: int = 100
    n_queries: int = 1000
    heldout_fraction: float = 0.5
    # the synthetic set
    synthetic_n: int = 10000
    synthetic_dim: int = 768
    synthetic_classes: int = 50
    synthetic_latent_dim: int = 32
    synthetic_latent_scale: float = 0.15
    synthetic_noise: float = 0.02
    synthetic_seed: int = 1234
    # the text corpus and its embeddings
    corpus_root: str = ""
    corpus_min_chars: int = 40
    corpus_max_chars: int = 1000
    corpus_max_passages: int = 0
    minilm_path: str = ""
    embed_dtype: str = "auto"
    embed_max_tokens: int = 256
    embed_batch: int = 256
    cache_dir: str = "runs/experiments/rewa/cache"
    # training the learned projections
    steps: int = 1500
    batch_size: int = 512
    lr: float = 2e-3
    weight_decay: float = 1e-4
    temperature: float = 0.05
    teacher_temperature: float = 0.05
    hidden_dim: int = 512
    mine_k: int = 20
    positive_k: int = 3
    rank_per_anchor: int = 4
    rank_arch: str = "linear"
    pq_proj_factor: int = 4
    # FAISS
    opq_iters: int = 20
    kmeans_iters: int = 25
    faiss_train_max: int = 50000
    threads: int = 0
    # 0: no limit; else seeds, and the InfoNCE variants within a seed, that would end past it are not started
    time_budget_s: float = 0.0


PRESETS: dict[str, dict] = {
    # CPU, under 2 minutes: the seed's synthetic set (768 dims, 50 classes), held out; one thread, because
    # FAISS's OpenMP threads stall on a busy 2-core machine
    "quick": {
        "datasets": ["synthetic"],
        "synthetic_n": 3000,
        "n_queries": 150,
        "steps": 80,
        "batch_size": 128,
        "opq_iters": 2,
        "kmeans_iters": 10,
        "faiss_train_max": 1500,
        "threads": 1,
    },
    # the GPU run: MiniLM embeddings of the stdlib's prose (about 38k passages); the time budget keeps it
    # inside 6 minutes on a shared GPU by dropping a last seed, or the InfoNCE variants of it, if need be
    "full": {
        "datasets": ["stdlib"],
        "heldout_fraction": 0.4,
        "n_queries": 1000,
        "steps": 1500,
        "batch_size": 1024,
        "opq_iters": 10,
        "faiss_train_max": 10000,
        "time_budget_s": 320,
    },
}


def validate(cfg: RewaConfig) -> None:
    """Raises ValueError naming the key whose value cannot work."""
    for name in cfg.datasets:
        if name not in DATASETS:
            raise ValueError(f"datasets: unknown dataset {name!r}; choose from {DATASETS}")
    for name in cfg.methods:
        if name not in METHODS:
            raise ValueError(f"methods: unknown method {name!r}; choose from {METHODS}")
    if not cfg.seeds:
        raise ValueError("seeds: give at least one seed")
    for b in cfg.budgets:
        if b < 1:
            raise ValueError(f"budgets: bytes per vector must be positive, got {b}")
    checks = {
        "k": cfg.k >= 1,
        "rerank_depth": cfg.rerank_depth >= cfg.k,
        "steps": cfg.steps >= 1,
        "batch_size": cfg.batch_size >= 2,
        "mine_k": cfg.mine_k >= max(cfg.positive_k, 1),
        "positive_k": cfg.positive_k >= 1,
        "rank_per_anchor": cfg.rank_per_anchor >= 1,
        "seed_bits": cfg.seed_bits % 8 == 0 and cfg.seed_bits > 0,
        "faiss_train_max": cfg.faiss_train_max >= 256,
        "embed_dtype": cfg.embed_dtype in ("auto", "float16", "float32"),
        "rank_arch": cfg.rank_arch in ("linear", "mlp"),
        "pq_proj_factor": cfg.pq_proj_factor >= 1,
        "opq_iters": cfg.opq_iters >= 1,
        "kmeans_iters": cfg.kmeans_iters >= 1,
    }
    for key, ok in checks.items():
        if not ok:
            raise ValueError(f"{key}: invalid value {getattr(cfg, key)!r}")


def check_dim(cfg: RewaConfig, dim: int, dataset: str) -> None:
    """Budgets and PQ splits that the dataset's dimension ``dim`` allows; errors name the key."""
    for b in cfg.budgets:
        if b > dim:
            raise ValueError(f"budgets: {b} bytes exceeds the {dim} dims of dataset {dataset!r}")
        for method in ("pq", "opq_pq", "learned_rank_pq"):
            if method in cfg.methods and dim % b:
                raise ValueError(f"budgets: {method} needs the {dim} dims of {dataset!r} divisible by {b} bytes")
