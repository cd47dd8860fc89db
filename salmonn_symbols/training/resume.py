"""What a checkpoint carries besides the optimizer states, and how a run resumes from it.

    save:   trainable weights only (LoRA, symbol MLP; base weights stay in their own files)
            + symbols (the whole book) + best accuracy + W&B run id + model config
            + RNG states (torch, CUDA, Python, NumPy) + sampler position (epoch, batches consumed, epoch end?)
    load:   weights match this model ─► config check (model fields, label set) ─► book, RNG, sampler restored

    when:   every N steps (never on an epoch's last batch) ─► last.ckpt
            every epoch end, after validation and discovery ─► last.ckpt (+ cycleN-{lora,mlp}-end.ckpt at a
            phase end), so last.ckpt is always the newest state and a resumed run never repeats or skips a
            discovery

Everything is tensors, lists and numbers, so checkpoints load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import random
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..io import atomic_write
from ..model.checkpoint import trainable_state_dict

__all__ = [
    "check_resume_config",
    "load_training_state",
    "rng_state",
    "save_epoch_end",
    "save_training_state",
    "set_rng_state",
]

# model fields a resumed run may change: they do not alter what was learned
IGNORED_ON_RESUME = ("llm_dtype", "gradient_checkpointing", "tokenizer_path")


def rng_state() -> dict[str, Any]:
    """The torch (CPU and CUDA), Python and NumPy generator states, as tensors, lists and numbers."""
    st = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": list(random.getstate()[1]),
        "python_pos": random.getstate()[2],
        "numpy": [st[0], st[1].tolist(), st[2], st[3], st[4]],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restores a `rng_state` snapshot."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    n = state["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), n[2], n[3], n[4]))


def save_training_state(module, checkpoint: dict[str, Any]) -> None:
    """Fills ``checkpoint`` (Lightning's dict) with the trainable weights and the run's state."""
    checkpoint["state_dict"] = {f"model.{k}": v for k, v in trainable_state_dict(module.model).items()}
    cycle = module.cycle.state_dict()
    checkpoint["symbols"] = cycle["symbols"]
    if "initial_lora" in cycle:  # what discovery scores with (resumed runs must not take their own LoRA for it)
        checkpoint["initial_lora"] = cycle["initial_lora"]
    checkpoint["cycle_state"] = {
        "best_soft_acc": cycle["best_soft_acc"],
        "best_index": cycle["best_index"],
        "train_temperature": float(module.train_temperature),
        "wandb_id": module.wandb_id,
        "model_cfg": asdict(module.model_cfg),
    }
    checkpoint["rng"] = rng_state()
    checkpoint["sampler"] = {
        "epoch": module.current_epoch,
        # processed, not completed: a step checkpoint is taken before Lightning marks the batch completed, and a
        # resumed run continues after it
        "batches_done": module.trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        "at_epoch_end": _in_epoch_end(module.trainer),
    }


def _in_epoch_end(trainer) -> bool:
    """Whether the training epoch's batches and validation are done and its end hooks are running."""
    epochs = trainer.fit_loop.epoch_progress.current
    return epochs.processed > epochs.completed


def load_training_state(module, checkpoint: dict[str, Any]) -> dict[str, Any] | None:
    """Checks ``checkpoint`` against ``module`` and restores the book, best accuracy and W&B id; hands the sampler
    position to the datamodule. Returns the RNG state to apply when training starts, or None when it was applied
    here.

    A mid-epoch checkpoint continues inside its epoch, whose data iterator the resumed run re-creates before
    training starts: its RNG state must be applied after that (on train start). An epoch-end checkpoint continues
    with the next epoch, whose iterator the uninterrupted run also created after the checkpoint (it draws a seed
    from the global generator): its RNG state is applied at once, so that draw happens again."""
    own = {f"model.{k}" for k in trainable_state_dict(module.model)}
    missing = sorted(own - set(checkpoint["state_dict"]))
    extra = sorted(set(checkpoint["state_dict"]) - own)
    if missing or extra:
        raise ValueError(f"checkpoint does not match this model: missing {missing[:5]}, unexpected {extra[:5]}")
    dm = getattr(module.trainer, "datamodule", None)
    check_resume_config(checkpoint, asdict(module.model_cfg), dm.labels if dm is not None else None)
    state = checkpoint.get("cycle_state", {})
    module.cycle.load_state_dict(
        {
            "symbols": checkpoint["symbols"],
            "best_soft_acc": state.get("best_soft_acc"),
            "best_index": state.get("best_index"),
        }
    )
    module.train_temperature = state.get("train_temperature", module.train_temperature)
    module.wandb_id = state.get("wandb_id")
    if dm is not None:
        # the position the training step consumed, not what prefetching workers had already drawn
        dm.resume_sampler(checkpoint.get("sampler"))
    if checkpoint.get("sampler", {}).get("at_epoch_end"):
        set_rng_state(checkpoint["rng"])
        return None
    return checkpoint.get("rng")


def check_resume_config(
    checkpoint: dict[str, Any],
    model_cfg: dict[str, Any],
    labels: list[str] | None,
    advice: str = "resume with the run's saved config.yaml, or start a new run_dir",
) -> None:
    """Refuses a resume whose model or label set differs from the checkpoint's in a way that matters; the error
    ends with ``advice`` (what to run instead)."""
    saved = checkpoint.get("cycle_state", {}).get("model_cfg", {})
    diff = [
        f"model.model.{k}: {saved[k]!r} -> {model_cfg.get(k)!r}"
        for k in sorted(saved)
        if k not in IGNORED_ON_RESUME and saved[k] != model_cfg.get(k)
    ]
    old = checkpoint.get("symbols", {}).get("labels")
    if labels is not None and old is not None and list(old) != list(labels):
        diff.append(f"data label set: {old} -> {labels}")
    if diff:
        raise ValueError(
            "cannot resume: the config differs from the checkpoint's in a way that matters:\n  "
            + "\n  ".join(diff)
            + "\n"
            + advice
        )


def save_epoch_end(trainer, folder: Path, cycle: int, phase: str, phase_end: bool) -> Path:
    """Writes ``folder/last.ckpt`` at the end of an epoch and, at the end of a phase, a copy of it named
    ``cycle{cycle}-{phase}-end.ckpt``. Call it after validation and discovery: the checkpoint then holds the
    symbols they chose, and a run resumed from it continues with the next epoch. Returns the last.ckpt path."""
    last = folder / "last.ckpt"
    trainer.save_checkpoint(last, weights_only=False)
    if phase_end and trainer.is_global_zero:
        with open(last, "rb") as src:
            atomic_write(folder / f"cycle{cycle}-{phase}-end.ckpt", lambda f: shutil.copyfileobj(src, f))
    return last
