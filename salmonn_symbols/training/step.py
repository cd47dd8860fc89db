"""One optimizer step of a phase: the step ``fit`` runs, and the one ``bench`` and the tests measure.

    batch ─► SpeechLLM: symbols soft-quantized through the MLP (MLP phase) or as ``lora_phase_symbols`` (LoRA)
          ─► loss (+ 0·ΣMLP in a LoRA phase without soft symbols, so DDP finds a gradient for every parameter)
          ─► backward ─► [FSDP: one all-reduce of the replicated gradients]
          ─► clip the active group ─► non-finite guard ─► the active optimizer and its LR schedule step

Only the active group's optimizer steps, so the frozen group stays bitwise unchanged. The guard makes fused
AdamW skip a step with non-finite gradients on the device, so the step never waits for the host.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

import torch
from torch import Tensor

from ..model.speech_llm import SpeechLLM, SpeechLLMOutput

__all__ = ["LR_DECAYS", "PHASES", "NonFiniteGuard", "PhaseStep", "group_parameters", "lr_factor", "phase_optimizers"]

PHASES = ("lora", "mlp")


def group_parameters(model: SpeechLLM, phase: str) -> list[Tensor]:
    """The parameters a phase trains: the symbol MLP in an MLP phase; LoRA (and the Q-Former, query, projection
    and LayerNorms when ``train_speech_path`` is set) in a LoRA phase."""
    if phase == "mlp":
        return model.symbol_parameters()
    return model.lora_parameters() + [p for p in model.speech_parameters() if p.requires_grad]


def _lora_groups(model: SpeechLLM, lora_lr: float, speech_lr: float | None) -> list[dict]:
    """The LoRA phase's parameter groups: one, or the trainable speech path apart at its own ``speech_lr``."""
    params = group_parameters(model, "lora")
    speech = {id(p) for p in model.speech_parameters()}
    if speech_lr is None or not any(id(p) in speech for p in params):
        return [{"params": params}]
    return [
        {"params": [p for p in params if id(p) not in speech]},
        {"params": [p for p in params if id(p) in speech], "lr": speech_lr},
    ]


LR_DECAYS = ("none", "linear", "cosine")


def lr_factor(step: int, warmup_steps: int, decay: str = "none", total_steps: int = 0) -> float:
    """The learning-rate multiplier of an optimizer's ``step`` (its own steps, from 0): a linear warm-up over
    ``warmup_steps``, then constant, or a linear or cosine decay that reaches 0 at ``total_steps``."""
    warm = min(1.0, (step + 1) / max(1, warmup_steps))
    if decay == "none" or total_steps <= warmup_steps:
        return warm
    done = min(1.0, max(0.0, (step - warmup_steps) / (total_steps - warmup_steps)))  # of the decay, 0 -> 1
    return warm * (1.0 - done if decay == "linear" else 0.5 * (1.0 + math.cos(math.pi * done)))


def phase_optimizers(
    model: SpeechLLM,
    lora_lr: float,
    mlp_lr: float,
    lora_wd: float,
    mlp_wd: float,
    warmup_steps: int,
    speech_lr: float | None = None,
    decay: str = "none",
    total_steps: Mapping[str, int] | None = None,
) -> tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LambdaLR]]:
    """The LoRA and MLP optimizers (fused AdamW: one kernel per step, and it can skip a non-finite step on the
    device) with learning-rate schedules counted in each optimizer's own steps (`lr_factor`; ``total_steps``
    gives each phase's steps over the run, for a decay). The LoRA optimizer also trains the speech path when it
    is trainable, at ``speech_lr`` when given (else at ``lora_lr``)."""
    if decay not in LR_DECAYS:
        raise ValueError(f"lr_decay must be one of {LR_DECAYS}, got {decay!r}")
    fused = {"fused": True}
    lora = torch.optim.AdamW(_lora_groups(model, lora_lr, speech_lr), lr=lora_lr, weight_decay=lora_wd, **fused)
    mlp = torch.optim.AdamW(group_parameters(model, "mlp"), lr=mlp_lr, weight_decay=mlp_wd, **fused)
    totals = total_steps or {}
    scheds = [
        torch.optim.lr_scheduler.LambdaLR(o, partial(lr_factor, warmup_steps=warmup_steps, decay=decay, total_steps=n))
        for o, n in ((lora, totals.get("lora", 0)), (mlp, totals.get("mlp", 0)))
    ]
    return [lora, mlp], scheds


class NonFiniteGuard:
    """Remembers the first step whose gradients were not finite, without a host sync.

    `mark` runs inside the step; `first_bad` reads the record (a host sync) at a logging interval, an epoch end
    or before a checkpoint. After DDP's all-reduce the gradients are the same on every rank, so every rank
    skips, and later reports, the same step.
    """

    def __init__(self) -> None:
        self._first: Tensor | None = None  # (2,): step and epoch of the first bad step, -1 if none

    def mark(self, optimizer: torch.optim.Optimizer, grad_norm: Tensor, step: int, epoch: int) -> None:
        """Makes the fused ``optimizer`` skip this step on the device if ``grad_norm`` is not finite."""
        bad = ~torch.isfinite(grad_norm)
        if optimizer.defaults.get("fused"):
            optimizer.found_inf = bad.float()  # read by fused AdamW: the update and the step count are skipped
        if self._first is None:
            self._first = torch.full((2,), -1, dtype=torch.long, device=grad_norm.device)
        first = bad & (self._first[0] < 0)
        # Python scalars in torch.where: no host-to-device copy
        self._first = torch.stack(
            [torch.where(first, step, self._first[0]), torch.where(first, epoch, self._first[1])]
        )  # (2,)

    def first_bad(self) -> tuple[int, int] | None:
        """(step, epoch) of the first non-finite step so far, or None; reading it syncs with the device."""
        if self._first is None:
            return None
        step, epoch = self._first.tolist()
        return None if step < 0 else (step, epoch)


class PhaseStep:
    """The training step of both phases.

    Args:
        model: The speech LLM.
        optimizers: "lora" and "mlp" optimizers (Lightning's wrappers in ``fit``, plain ones in ``bench``).
        schedulers: Their LR schedulers, same keys.
        max_grad_norm: Clipping of the active group (0 disables clipping; the norm is still checked).
        lora_phase_symbols: What symbol positions get in LoRA phases: "soft", "hard" or "raw".
        guard: The non-finite guard; a new one when None.
        reduce_gradients: Called on the active group's parameters after backward (FSDP's replicated groups).
    """

    def __init__(
        self,
        model: SpeechLLM,
        optimizers: Mapping[str, Any],
        schedulers: Mapping[str, Any],
        max_grad_norm: float = 1.0,
        lora_phase_symbols: str = "soft",
        guard: NonFiniteGuard | None = None,
        reduce_gradients: Callable[[list[Tensor]], None] | None = None,
    ):
        self.model, self.optimizers, self.schedulers = model, dict(optimizers), dict(schedulers)
        self.max_grad_norm, self.lora_phase_symbols = max_grad_norm, lora_phase_symbols
        self.guard = guard or NonFiniteGuard()
        self.reduce_gradients = reduce_gradients

    @classmethod
    def of(cls, model: SpeechLLM, optimizers, schedulers, *args) -> PhaseStep:
        """A step over ``[lora, mlp]`` optimizer and scheduler lists (what ``configure_optimizers`` returns)."""
        names = ("lora", "mlp")
        return cls(model, dict(zip(names, optimizers, strict=True)), dict(zip(names, schedulers, strict=True)), *args)

    def params(self, phase: str) -> list[Tensor]:
        """The trainable group of ``phase``."""
        return group_parameters(self.model, phase)

    def __call__(
        self,
        batch: dict[str, Any],
        phase: str,
        temperature: float,
        *,
        speech: Tensor | None = None,
        forward: Callable[..., SpeechLLMOutput] | None = None,
        backward: Callable[[Tensor], None] | None = None,
        step: int = 0,
        epoch: int = 0,
    ) -> SpeechLLMOutput:
        """Runs forward, backward and the active group's optimizer step.

        Args:
            batch: A collated batch on the device.
            phase: "lora" or "mlp".
            temperature: Soft-quantization temperature.
            speech: Precomputed speech embeddings (the speech cache), or None to encode ``batch["wav"]``.
            forward: The module to call (a DDP wrapper in the scaling bench); default the model.
            backward: How to back-propagate (Lightning's ``manual_backward`` in ``fit``); default
                ``loss.backward()``.
            step, epoch: Where the run is, recorded by the guard for its message.

        Returns:
            The model output; ``loss`` is the task loss.
        """
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        mode = "soft" if phase == "mlp" else self.lora_phase_symbols
        try:
            out = (forward or self.model)(batch, symbol_mode=mode, temperature=temperature, speech=speech)
        except torch.OutOfMemoryError as e:
            raise torch.OutOfMemoryError(
                f"GPU out of memory at batch size {batch['wav'].shape[0]}: lower data.batch_size, or set "
                f"model.model.gradient_checkpointing: true (the checkpoints written so far are intact). {e}"
            ) from None
        loss = out.loss
        if mode != "soft":
            # keeps the MLP in the graph with a zero gradient, so DDP's reducer finds a gradient for every
            # parameter it registered; the MLP optimizer does not step in this phase anyway
            loss = loss + 0.0 * sum(p.sum() for p in self.model.symbol_parameters())
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        (backward or Tensor.backward)(loss)
        params = self.params(phase)
        if self.reduce_gradients is not None:
            self.reduce_gradients(params)
        if self.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        active = self.optimizers[phase]
        self.guard.mark(getattr(active, "optimizer", active), norm, step, epoch)
        active.step()
        self.schedulers[phase].step()
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        return out
