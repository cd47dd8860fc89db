"""The learned-encoding experiment's typed config and its presets.

Every key is flat (a primitive or a list of primitives) so that presets, YAML files and ``--key value`` all
set it the same way. Paths to data are keys too (``code_root``, ``dna_path``), so a copy carried to another
machine can be pointed at.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["ARMS", "DATASETS", "TOYS", "LearnedEncodingConfig", "PRESETS", "check_config", "encoding_width"]

ARMS = ("full", "joint", "autoencoder", "svd", "random")
TOYS = ("pattern", "context", "compression")
DATASETS = ("code", "dna", *TOYS)


@dataclass
class LearnedEncodingConfig:
    """What to train and on what; defaults are the full (GPU) run, presets override them.

    Attributes:
        datasets: Any of "code" (CPython stdlib, BPE), "dna" (pyrodigal's chromosome) and the toys "pattern",
            "context", "compression".
        arms: Any of "full", "joint", "autoencoder", "svd", "random"; "autoencoder" and "svd" need "full".
        ratios: Compression ratios d/r; r is ``round(d_model / ratio)`` (at least 1).
        tied: Output-layer variants to run: False (own output matrix) and/or True (tied to the input encoding).
        tied_datasets: Datasets that also run the tied variant (when True is in ``tied``); empty means all.
        seeds: One run per seed for every arm × ratio × dataset × variant.
        d_model, n_layers, n_heads, ffn_size: The LLaMA-style model (head width d_model / n_heads).
        seq_len, batch_size, steps: Window length in tokens, windows per step, optimizer steps (every arm).
        lr, warmup_steps, weight_decay: AdamW with linear warm-up then cosine decay to 10% of ``lr``.
        eval_every, val_batches: Validation loss (the training curve) every ``eval_every`` steps on the first
            ``val_batches`` batches of validation windows.
        test_windows: Held-out windows scored at the end (0: the whole test split).
        ae_steps, ae_lr: The autoencoder arm's reconstruction training (full batch over the vocabulary).
        code_root: Folder of ``.py`` files ("" = the running interpreter's standard library).
        code_vocab: Byte-level BPE vocabulary, trained on the train split only.
        code_val_frac, code_test_frac: Fractions of files (by a hash of their path) held out.
        code_train_bytes, code_eval_bytes: Caps on the bytes read per split (0 = no cap); files are taken in
            hashed order so the cap is a random subset of whole files.
        dna_path: FASTA(.gz) of the chromosome ("" = the one in pyrodigal's test data).
        dna_blocks: The genome is cut into this many contiguous blocks; every 10th (from block 4) is
            validation, every 10th (from block 9) test, the rest train.
        markov_order: Order of the Markov baseline fitted on the train split of "dna".
        toy_vocab, toy_sequences: Vocabulary and number of training sequences of the toys.
        workers: Trainings run at once (processes sharing the device); 1 runs in this process.
        time_budget_s: Wall budget of the whole run; trainings that would start too late to finish in it are
            skipped and listed as cut (0: no budget).
        device: "auto", "cpu", "cuda".
        precision: Lightning precision ("auto": bf16-mixed on CUDA, 32-true on CPU).
        wandb: Also log to W&B (offline unless an API key is set).
    """

    datasets: list[str] = field(default_factory=lambda: ["code", "dna"])
    arms: list[str] = field(default_factory=lambda: list(ARMS))
    ratios: list[int] = field(default_factory=lambda: [4, 8, 10, 16, 32, 64])
    tied: list[bool] = field(default_factory=lambda: [False, True])
    tied_datasets: list[str] = field(default_factory=lambda: ["code"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    d_model: int = 256
    n_layers: int = 2
    n_heads: int = 4
    ffn_size: int = 688
    seq_len: int = 256
    batch_size: int = 64
    steps: int = 200
    lr: float = 3e-3
    warmup_steps: int = 20
    weight_decay: float = 0.0
    eval_every: int = 25
    val_batches: int = 2
    test_windows: int = 0
    ae_steps: int = 1000
    ae_lr: float = 3e-3
    code_root: str = ""
    code_vocab: int = 8192
    code_val_frac: float = 0.05
    code_test_frac: float = 0.05
    code_train_bytes: int = 10_000_000
    code_eval_bytes: int = 1_000_000
    dna_path: str = ""
    dna_blocks: int = 40
    markov_order: int = 4
    toy_vocab: int = 50
    toy_sequences: int = 4000
    workers: int = 5
    time_budget_s: float = 330.0
    device: str = "auto"
    precision: str = "auto"
    wandb: bool = False


# The seed's setting: vocabulary 50, width 64 -> 6 (ratio 10), its three toy scenarios, on a CPU.
_TOY = {
    "ratios": [10],
    "tied": [False],
    "d_model": 64,
    "n_layers": 1,
    "n_heads": 2,
    "ffn_size": 172,
    "seq_len": 32,
    "batch_size": 32,
    "steps": 64,
    "lr": 1e-2,
    "warmup_steps": 6,
    "eval_every": 16,
    "val_batches": 1,
    "test_windows": 256,
    "ae_steps": 300,
    "toy_sequences": 3000,
    "workers": 1,
    "time_budget_s": 0.0,
}

PRESETS: dict[str, dict] = {
    # all three toys, the seed's comparison (joint vs autoencoder) with full and random as references; < 2 min
    "quick": _TOY | {"datasets": list(TOYS), "arms": ["full", "joint", "autoencoder", "random"], "seeds": [0, 1]},
    # one toy each, every arm at 10:1 and 32:1, three seeds; about a minute each
    **{toy: _TOY | {"datasets": [toy], "ratios": [10, 32], "seeds": [0, 1, 2]} for toy in TOYS},
    "full": {},
}


def encoding_width(d_model: int, ratio: int) -> int:
    """The code width r for a compression ratio d/r (rounded, at least 1)."""
    return max(1, round(d_model / ratio))


def check_config(cfg: LearnedEncodingConfig) -> None:
    """Raises ValueError naming the first bad field."""
    for name, values, allowed in (("datasets", cfg.datasets, DATASETS), ("arms", cfg.arms, ARMS)):
        bad = [v for v in values if v not in allowed]
        if bad or not values:
            raise ValueError(f"learned-encoding config field {name!r}: {bad or 'empty'}; allowed: {list(allowed)}")
    bad_tied = [d for d in cfg.tied_datasets if d not in DATASETS]
    if bad_tied:
        raise ValueError(f"learned-encoding config field 'tied_datasets': unknown {bad_tied}")
    if {"autoencoder", "svd"} & set(cfg.arms) and "full" not in cfg.arms:
        raise ValueError("learned-encoding config field 'arms': 'autoencoder' and 'svd' need 'full' (they compress it)")
    if not cfg.seeds:
        raise ValueError("learned-encoding config field 'seeds': empty")
    if any(r < 1 for r in cfg.ratios):
        raise ValueError(f"learned-encoding config field 'ratios': every ratio must be >= 1, got {cfg.ratios}")
    if cfg.d_model % cfg.n_heads:
        raise ValueError(f"learned-encoding config field 'd_model': {cfg.d_model} not divisible by n_heads")
    if (cfg.d_model // cfg.n_heads) % 2:
        raise ValueError("learned-encoding config field 'n_heads': head width d_model/n_heads must be even (RoPE)")
    for name in ("steps", "seq_len", "batch_size", "eval_every", "workers", "val_batches", "dna_blocks"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"learned-encoding config field {name!r}: must be >= 1, got {getattr(cfg, name)}")
    if cfg.steps % cfg.eval_every:
        raise ValueError(
            f"learned-encoding config field 'eval_every': {cfg.eval_every} must divide steps ({cfg.steps}) so the "
            "curve ends at the final step"
        )
    if not 0 < cfg.code_val_frac + cfg.code_test_frac < 1:
        raise ValueError("learned-encoding config fields 'code_val_frac' + 'code_test_frac' must be in (0, 1)")
    if cfg.dna_blocks < 10:
        raise ValueError("learned-encoding config field 'dna_blocks': need >= 10 (every 10th block is held out)")
