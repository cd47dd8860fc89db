"""Which cycle and phase every epoch belongs to, in one `fit`.

    epoch:  0      1      2      3      4      5      ...   (cycles=2, lora_epochs=1, mlp_epochs=2, final=1)
            LoRA   MLP    MLP*   LoRA   MLP    MLP*   LoRA
            └────── cycle 1 ────┘└───── cycle 2 ─────┘final
    * discovery runs at the end of the last MLP epoch of a cycle; cycle c writes cycle_c_*.json.
    Rollback is checked once a discovered mapping has been adapted to: at the end of the LoRA phase that follows
    a discovery, or right after the discovery (on its own validation) when no LoRA epoch follows it.

One schedule and one fit keep the optimizers, learning-rate schedules and the logger's step axis continuous.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["CycleSchedule", "PhaseInfo"]


@dataclass(frozen=True)
class PhaseInfo:
    """Where an epoch sits in the schedule.

    Attributes:
        cycle: 1-based cycle index (``cycles + 1`` for the final LoRA epochs).
        phase: "lora" or "mlp".
        epoch_in_phase: 0-based epoch inside the phase.
        phase_epochs: Length of the phase in epochs.
        discover_after: Whether discovery runs at the end of this epoch.
        phase_end: Whether this is the last epoch of its phase.
        rollback_check: Whether the rollback check runs at the end of this epoch (the LoRA phase after a
            discovery has ended).
        rollback_after_discovery: Whether it runs right after this epoch's discovery (no LoRA epoch follows).
    """

    cycle: int
    phase: str
    epoch_in_phase: int
    phase_epochs: int
    discover_after: bool
    phase_end: bool
    rollback_check: bool = False
    rollback_after_discovery: bool = False


@dataclass(frozen=True)
class CycleSchedule:
    """Alternating LoRA and MLP phases, then optional final LoRA epochs.

    Attributes:
        cycles: Number of LoRA → MLP → discovery cycles.
        lora_epochs: Epochs of each LoRA phase.
        mlp_epochs: Epochs of each MLP phase.
        final_lora_epochs: LoRA epochs after the last cycle.
    """

    cycles: int = 2
    lora_epochs: int = 1
    mlp_epochs: int = 1
    final_lora_epochs: int = 0

    def __post_init__(self) -> None:
        if self.cycles < 0 or self.lora_epochs < 0 or self.mlp_epochs < 1 or self.final_lora_epochs < 0:
            raise ValueError(f"invalid schedule {self}: need cycles >= 0, mlp_epochs >= 1, others >= 0")
        if self.total_epochs == 0:
            raise ValueError("the schedule has no epochs")

    @property
    def cycle_epochs(self) -> int:
        """Epochs of one cycle."""
        return self.lora_epochs + self.mlp_epochs

    @property
    def total_epochs(self) -> int:
        """Epochs of the whole run (the Trainer's max_epochs)."""
        return self.cycles * self.cycle_epochs + self.final_lora_epochs

    def phase_steps(self, run_steps: float) -> dict[str, int]:
        """Optimizer steps of each phase over the whole run, {"lora": n, "mlp": m}, from the run's total steps
        (every epoch has the same batches, and each step belongs to one phase's optimizer)."""
        per_epoch = math.ceil(run_steps / self.total_epochs)
        lora = self.cycles * self.lora_epochs + self.final_lora_epochs
        return {"lora": lora * per_epoch, "mlp": self.cycles * self.mlp_epochs * per_epoch}

    def at(self, epoch: int) -> PhaseInfo:
        """The phase of ``epoch`` (0-based)."""
        if not 0 <= epoch < self.total_epochs:
            raise ValueError(f"epoch {epoch} is outside the schedule's {self.total_epochs} epochs")
        if epoch >= self.cycles * self.cycle_epochs:
            k = epoch - self.cycles * self.cycle_epochs
            end = k == self.final_lora_epochs - 1
            return PhaseInfo(self.cycles + 1, "lora", k, self.final_lora_epochs, False, end, end and self.cycles > 0)
        cycle, k = divmod(epoch, self.cycle_epochs)
        if k < self.lora_epochs:
            end = k == self.lora_epochs - 1
            return PhaseInfo(cycle + 1, "lora", k, self.lora_epochs, False, end, end and cycle > 0)
        k -= self.lora_epochs
        last = k == self.mlp_epochs - 1
        lora_follows = self.lora_epochs > 0 if cycle + 1 < self.cycles else self.final_lora_epochs > 0
        return PhaseInfo(cycle + 1, "mlp", k, self.mlp_epochs, last, last, False, last and not lora_follows)
