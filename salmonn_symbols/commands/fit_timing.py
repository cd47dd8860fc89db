"""Callbacks of ``bench --what fit``: the real ``fit`` timed from inside, on every rank.

    StepTimer    setup ─► fit start (model built, on the device, wrapped) ─► every training step (CUDA sync at its
                 start and end) ─► validation ─► epoch end ─► discovery ─► <out>/rank<R>.json
    StageTimer   (``--profile``) at a few steps of each phase: a timestamp, after a CUDA sync, at each stage boundary
                 of the one training step (`training.step.PhaseStep`), seen through module and optimizer hooks:
                 Whisper · BEATs · Q-Former · LLM forward · loss · backward · clip and guard · optimizer; and a
                 Chrome trace of one step per phase and rank (`torch.profiler`)

Both only observe: the step, the data and the schedule are those of ``fit``.
"""

from __future__ import annotations

import time
from pathlib import Path

import lightning as L
import torch

from ..io import atomic_write_json

__all__ = ["STAGES", "StageTimer", "StepTimer"]


def _now(sync: bool) -> float:
    if sync and torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class StepTimer(L.Callback):
    """Times every training step, each validation and each discovery; writes ``<out>/rank<R>.json`` at the end.

    Args:
        out: Folder of the per-rank files.
        t0: Wall-clock time (``time.time()``) at which the benchmark launched the fit: the start of the
            time to the first step.
        sync: Synchronise with the GPU at every step boundary, so each step's time is its own.
    """

    def __init__(self, out: str, t0: float | None = None, sync: bool = True):
        self.out, self.t0, self.sync = out, t0 if t0 is not None else time.time(), sync
        self.epochs: list[dict] = []
        self.marks: dict[str, float] = {}  # wall-clock times of the run's milestones
        self._last = self._b0 = self._end = 0.0

    def setup(self, trainer, pl_module, stage: str) -> None:
        self.marks["setup"] = time.time()  # before the LightningModule builds the model

    def on_fit_start(self, trainer, pl_module) -> None:
        _now(self.sync)
        self.marks["fit_start"] = time.time()  # built, moved to the device, wrapped by the strategy

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        info = pl_module.phase()
        rec = {"epoch": trainer.current_epoch, "cycle": info.cycle, "phase": info.phase}
        rec.update(steps_s=[], periods_s=[], samples=[], validation_s=0.0)
        if self.epochs and self._end:
            self.epochs[-1]["epoch_end_s"] = _now(self.sync) - self._end  # discovery, checkpoint, new loaders
        self.epochs.append(rec)
        self._last = _now(self.sync)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self._b0 = _now(self.sync)
        if "first_step" not in self.marks:
            self.marks["first_step"] = time.time()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        t = _now(self.sync)
        rec = self.epochs[-1]
        rec["steps_s"].append(t - self._b0)  # the step alone
        rec["periods_s"].append(t - self._last)  # the step and the wait for its batch
        rec["samples"].append(int(batch["wav"].shape[0]) if "wav" in batch else 0)
        self._last = t

    def on_validation_start(self, trainer, pl_module) -> None:
        self._v0 = _now(self.sync)

    def on_validation_end(self, trainer, pl_module) -> None:
        if self.epochs and not trainer.sanity_checking:
            self.epochs[-1]["validation_s"] += _now(self.sync) - self._v0

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._end = _now(self.sync)  # the LightningModule's epoch end (discovery, checkpoint) runs after this hook
        rate = trainer.callback_metrics.get("train/speech_cache_hit_rate")
        rec = self.epochs[-1]
        rec["cache_hit_rate"] = float(rate) if rate is not None and pl_module.hparams.speech_cache else 0.0
        rec["discover_after"] = pl_module.phase().discover_after

    def on_discovery(self, trainer, pl_module, record) -> None:
        self.epochs[-1]["discovery_s"] = _now(self.sync) - self._end

    def on_train_end(self, trainer, pl_module) -> None:
        if self.epochs and self._end:
            self.epochs[-1]["epoch_end_s"] = _now(self.sync) - self._end

    def on_fit_end(self, trainer, pl_module) -> None:
        res = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "launch_to_setup_s": self.marks.get("setup", self.t0) - self.t0,  # imports, config, process start
            "build_s": self.marks.get("fit_start", 0.0) - self.marks.get("setup", 0.0),
            "start_to_first_step_s": self.marks.get("first_step", self.t0) - self.t0,
            "epochs": self.epochs,
        }
        atomic_write_json(Path(self.out) / f"rank{trainer.global_rank}.json", res)


# (stage, the mark it starts at, the mark it ends at); a stage whose marks were not seen is left out
STAGES = (
    ("log-mel, cache lookup", "batch_start", "whisper_start"),
    ("whisper", "whisper_start", "whisper_end"),
    ("beats", "beats_start", "beats_end"),
    ("qformer", "qformer_start", "qformer_end"),
    ("projection, symbols", "qformer_end", "llm_start"),
    ("llm forward", "llm_start", "llm_end"),  # the decoder's blocks and the LM head
    ("loss", "llm_end", "backward_start"),
    ("backward", "backward_start", "backward_end"),
    ("clip, guard", "backward_end", "optimizer_start"),
    ("optimizer", "optimizer_start", "optimizer_end"),
    ("schedule, logging", "optimizer_end", "batch_end"),
)


class StageTimer(L.Callback):
    """Where one training step's time goes, per phase: stage times (ms, each after a CUDA sync) at steps
    ``at``..``at + steps - 1`` of every epoch after the first of its phase (whose steps compile), and a Chrome
    trace of step ``at - 1`` of the first such epoch.

    Args:
        out: Folder of ``stages_rank<R>.json`` and the traces.
        at: First timed step of an epoch (at least 1).
        steps: Timed steps per epoch.
    """

    def __init__(self, out: str, at: int = 1, steps: int = 3):
        self.out, self.at, self.steps = out, max(1, at), steps
        self.samples: dict[str, list[dict[str, float]]] = {}
        self.traces: list[str] = []
        self._marks: dict[str, float] | None = None
        self._seen: set[str] = set()
        self._prof = None
        self._hooks: list = []

    def _mark(self, name: str) -> None:
        if self._marks is not None:
            self._marks[name] = _now(True)

    def on_train_start(self, trainer, pl_module) -> None:
        model = pl_module.model
        base = model.llm.get_base_model()
        decoder = base.get_decoder()
        first = getattr(decoder, "rotary_emb", decoder)  # the decoder's blocks are called one by one
        parts = {"whisper": (model.whisper,) * 2, "beats": (model.beats,) * 2}
        parts.update(qformer=(model.speech_qformer,) * 2, llm=(first, base.get_output_embeddings()))
        for name, (start, end) in parts.items():
            if start is not None:
                self._hooks.append(start.register_forward_pre_hook(lambda *a, n=name: self._mark(f"{n}_start")))
                self._hooks.append(end.register_forward_hook(lambda *a, n=name: self._mark(f"{n}_end")))
        for opt in trainer.optimizers:
            self._hooks.append(opt.register_step_post_hook(lambda *a: self._mark("optimizer_end")))

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._phase = pl_module.phase().phase
        self._warm = self._phase in self._seen  # the first epoch of a phase compiles its graphs
        self._seen.add(self._phase)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if not self._warm:
            return
        if batch_idx == self.at - 1 and not any(self._phase in t for t in self.traces):
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
            self._prof = profile(activities=acts)
            self._prof.__enter__()
        elif self.at <= batch_idx < self.at + self.steps:
            self._marks = {}
            self._mark("batch_start")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        self._mark("backward_start")

    def on_after_backward(self, trainer, pl_module) -> None:
        self._mark("backward_end")

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        self._mark("optimizer_start")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._prof is not None:
            _now(True)
            self._prof.__exit__(None, None, None)
            path = Path(self.out) / f"trace_{self._phase}_rank{trainer.global_rank}.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            self._prof.export_chrome_trace(str(path))
            self.traces.append(str(path))
            self._prof = None
        if self._marks is None:
            return
        self._mark("batch_end")
        m, self._marks = self._marks, None
        if "whisper_start" not in m:  # the speech came from the cache
            m["whisper_start"] = m.get("llm_start", m["batch_start"])
        stages = {s: 1e3 * (m[b] - m[a]) for s, a, b in STAGES if a in m and b in m}
        stages["step"] = 1e3 * (m["batch_end"] - m["batch_start"])
        self.samples.setdefault(self._phase, []).append(stages)

    def on_fit_end(self, trainer, pl_module) -> None:
        for h in self._hooks:
            h.remove()
        mean = {
            phase: {k: sum(s.get(k, 0.0) for s in rows) / len(rows) for k in rows[0]}
            for phase, rows in self.samples.items()
            if rows
        }
        res = {"rank": trainer.global_rank, "stages_ms": mean, "samples": self.samples, "traces": self.traces}
        atomic_write_json(Path(self.out) / f"stages_rank{trainer.global_rank}.json", res)
