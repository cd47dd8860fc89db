"""Callbacks for the resume tests: send a signal to this process at a named point of a real run (SIGKILL by
default: no clean-up runs, as when a machine dies)."""

import os
import signal

from lightning.pytorch.callbacks import Callback


class KillAt(Callback):
    """Sends ``signal`` to this process at one point of the run.

    Args:
        point: "step" (after optimizer step ``step``), "validation" (inside the validation of epoch ``epoch``),
            "discovery" (cycle ``cycle``'s discovery files written, its checkpoint not yet), "checkpoint" (while
            the end-of-epoch checkpoint of ``epoch`` is being assembled, before its file is written) or
            "epoch_start" (start of epoch ``epoch``, after the previous epoch's checkpoint) or "train_end" (after
            the last epoch's checkpoint, before the final export).
        step, epoch, cycle: Where, for the chosen point.
        sig: Signal name: SIGKILL, SIGTERM or SIGUSR1.
    """

    def __init__(self, point: str, step: int = -1, epoch: int = -1, cycle: int = -1, sig: str = "SIGKILL"):
        self.point, self.step, self.epoch, self.cycle = point, step, epoch, cycle
        self.signum = signal.Signals[sig]
        self.sent = False

    def _send(self) -> None:
        if not self.sent:
            self.sent = True
            os.kill(os.getpid(), self.signum)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if self.point == "step" and trainer.global_step == self.step:
            self._send()

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0):
        if self.point == "validation" and trainer.current_epoch == self.epoch:
            self._send()

    def on_discovery(self, trainer, pl_module, record):
        if self.point == "discovery" and record.cycle == self.cycle:
            assert all(os.path.exists(f) for f in record.files)
            self._send()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        epochs = trainer.fit_loop.epoch_progress.current
        at_epoch_end = epochs.processed > epochs.completed
        if self.point == "checkpoint" and at_epoch_end and trainer.current_epoch == self.epoch:
            self._send()

    def on_train_epoch_start(self, trainer, pl_module):
        if self.point == "epoch_start" and trainer.current_epoch == self.epoch:
            self._send()

    def on_train_end(self, trainer, pl_module):
        if self.point == "train_end":
            self._send()
