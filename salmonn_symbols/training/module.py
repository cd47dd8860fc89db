"""SymbolLitModule: alternating LoRA / symbol-MLP training with discovery, in one ``fit``.

    setup ─► random 2-token symbols (cycle 0, saved before any training)
    every epoch: CycleSchedule.at(epoch) → (cycle, phase)
       LoRA phase: symbols through the frozen MLP (soft by default), only the LoRA optimizer steps
       MLP phase:  symbols through MLP + soft quantization (annealed T), only the MLP optimizer steps
       validation: accuracy / macro-F1 per dataset, soft · hard · original labels
       end of a cycle's last MLP epoch: discovery (fp32, rank 0) ─broadcast─► new symbols; cycle_N_*.json

Both trainable groups keep ``requires_grad=True`` for the whole run, so DDP registers them once and all-reduces
both; freezing is done by not stepping, which leaves the frozen group bitwise unchanged.
"""

from __future__ import annotations

import json
import logging
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ..data.metrics import MetricAccumulator
from ..model.builders import SpeechLLMConfig, build_speech_llm
from ..model.checkpoint import trainable_state_dict
from ..symbols import (
    DiscoveryConfig,
    SymbolBook,
    SymbolTokenizer,
    TemperatureSchedule,
    build_candidate_masks,
    final_mapping,
    load_override,
    run_discovery,
    write_discovery,
)
from .compile import compile_blocks
from .evaluation import EVAL_MODES, gather_accumulator, predict_batch
from .fsdp import SymbolFSDPStrategy, average_gradients, shard_llm
from .schedule import CycleSchedule, PhaseInfo
from .state import digest, rng_state, set_rng_state

__all__ = ["SymbolLitModule"]

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # tokenizers in DataLoader workers

log = logging.getLogger(__name__)


class SymbolLitModule(L.LightningModule):
    """The symbol-discovery training system.

    Args:
        model: Model paths and shapes (a named size's fields; see `SpeechLLMConfig`).
        schedule: Cycles and phase lengths.
        lora_lr: Learning rate of the LoRA optimizer.
        mlp_lr: Learning rate of the symbol-MLP optimizer.
        lora_weight_decay: AdamW weight decay of LoRA.
        mlp_weight_decay: AdamW weight decay of the MLP.
        warmup_steps: Linear warm-up of each optimizer, counted in its own steps.
        max_grad_norm: Gradient clipping of the active group (0 disables).
        lora_phase_symbols: What symbol positions get in LoRA phases: "soft" (frozen MLP + soft quantization),
            "hard" (frozen MLP + argmax) or "raw" (the symbols' own embeddings).
        temperature: Soft-quantization temperature over each MLP phase.
        symbol_seed: Seed of the random symbols of cycle 0.
        symbol_tokens: Tokens per random symbol.
        discovery: Thresholds and sizes of discovery.
        rescore: Re-score the top-k candidates by task loss on validation data before choosing.
        rescore_samples: Validation samples per label for re-scoring.
        rollback_margin: Restore the previous mapping if the soft validation accuracy of a cycle drops by more
            than this (absolute) below the best so far; negative disables.
        override_file: JSON of label -> symbol applied at every discovery.
        eval_modes: Validation conditions among "soft", "hard", "original".
        verify_groups: After every epoch, check that the frozen group is bitwise unchanged and that all ranks
            hold identical trainable weights (digests are appended to ``phase_checks.jsonl``).
        speech_cache: Compute the frozen speech path once per clip and reuse it in every later epoch and cycle
            (turned off automatically when any speech-path part trains).
        speech_cache_dir: Disk folder of the cache (default: ``<run>/speech_cache``; "none" keeps it in memory).
        compile: ``torch.compile`` each transformer block of the LLM, Whisper and BEATs (see
            `salmonn_symbols.training.compile`); the first steps then include compilation.
        output_dir: Where discovery files go (default: the Trainer's log dir).
    """

    def __init__(
        self,
        model: SpeechLLMConfig | None = None,
        schedule: CycleSchedule | None = None,
        lora_lr: float = 1e-4,
        mlp_lr: float = 1e-3,
        lora_weight_decay: float = 0.01,
        mlp_weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        max_grad_norm: float = 1.0,
        lora_phase_symbols: str = "soft",
        temperature: TemperatureSchedule | None = None,
        symbol_seed: int = 0,
        symbol_tokens: int = 2,
        discovery: DiscoveryConfig | None = None,
        rescore: bool = True,
        rescore_samples: int = 32,
        rollback_margin: float = 0.1,
        override_file: str | None = None,
        eval_modes: list[str] | None = None,
        verify_groups: bool = True,
        speech_cache: bool = True,
        speech_cache_dir: str | None = None,
        compile: bool = False,
        output_dir: str | None = None,
    ):
        super().__init__()
        self.model_cfg = model or SpeechLLMConfig.from_name("tiny")
        self.schedule = schedule or CycleSchedule()
        self.temperature = temperature or TemperatureSchedule()
        self.discovery_cfg = discovery or DiscoveryConfig()
        self.eval_modes = list(eval_modes or EVAL_MODES)
        bad = [m for m in self.eval_modes if m not in EVAL_MODES] + (
            [lora_phase_symbols] if lora_phase_symbols not in ("soft", "hard", "raw") else []
        )
        if bad:
            raise ValueError(
                f"unknown mode(s) {bad}: eval_modes take {list(EVAL_MODES)}, lora_phase_symbols takes soft|hard|raw"
            )
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.model = None
        self.tokenizer = None
        self.book: SymbolBook | None = None
        self.symtok: SymbolTokenizer | None = None
        self.best_soft_acc = -math.inf
        self.wandb_id: str | None = None
        self._accs: dict[str, MetricAccumulator] = {}
        self._skipped: list = []
        self._cache = None
        self._first_bad: torch.Tensor | None = None  # (step, epoch) of the first non-finite loss, -1 if none
        self._last_eval: dict[str, dict[str, float]] = {}

    # ------------------------------------------------------------------------------------------- building
    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model, self.tokenizer = build_speech_llm(self.model_cfg)
        self.symtok = SymbolTokenizer(self.tokenizer)
        if self.hparams.compile:
            compile_blocks(self.model)
        if self.sharded:
            mesh = self.device_mesh["data_parallel"]
            n = shard_llm(self.model, mesh)
            rank_zero_info(f"FSDP: {n} LLM decoder layers sharded over {mesh.size()} ranks")

    @property
    def sharded(self) -> bool:
        """Whether the LLM's frozen blocks are sharded (`SymbolFSDPStrategy`)."""
        return self._trainer is not None and isinstance(self.trainer.strategy, SymbolFSDPStrategy)

    def setup(self, stage: str) -> None:
        self.configure_model()
        dm = self.trainer.datamodule
        if self.book is None:
            book = SymbolBook.create(
                dm.labels, self.symtok, seed=self.hparams.symbol_seed, n_tokens=self.hparams.symbol_tokens
            )
            # every rank draws the same words; rank 0's are broadcast anyway so a tokenizer quirk cannot split them
            self.book = SymbolBook.from_state_dict(self.trainer.strategy.broadcast(book.state_dict(), src=0))
        vocab = self.model.llm.get_input_embeddings().weight.shape[0]
        self.model.symbols.set_candidate_masks(build_candidate_masks(self.symtok, vocab, self.book.labels))
        self._apply_symbols()
        dm.bind(self.tokenizer, self.book)
        out = self.out_dir  # resolved collectively before any rank-0-only write
        if self.trainer.is_global_zero:
            self._write_json("symbols_cycle_0.json", self.book.state_dict())
        log.info("run outputs: %s", out)

    def _apply_symbols(self) -> None:
        self.model.symbols.set_symbols([self.symtok.word_ids(s) for s in self.book.symbols])

    @property
    def out_dir(self) -> Path:
        """Folder of this run's discovery files and exports (resolved in `setup`, on every rank)."""
        if getattr(self, "_out_dir", None) is None:
            # trainer.log_dir broadcasts from rank 0: every rank must ask, never rank 0 alone
            self._out_dir = Path(self.hparams.output_dir or self.trainer.log_dir or self.trainer.default_root_dir)
        return self._out_dir

    def _write_json(self, name: str, obj: Any) -> None:
        from ..io import atomic_write_json

        atomic_write_json(self.out_dir / name, obj)

    # ------------------------------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        h = self.hparams
        # fused: one kernel per step, and it can skip a step on the device (see `_skip_if_not_finite`)
        lora = torch.optim.AdamW(
            self.model.lora_parameters(), lr=h.lora_lr, weight_decay=h.lora_weight_decay, fused=True
        )
        mlp = torch.optim.AdamW(
            self.model.symbol_parameters(), lr=h.mlp_lr, weight_decay=h.mlp_weight_decay, fused=True
        )
        warm = max(1, h.warmup_steps)
        scheds = [torch.optim.lr_scheduler.LambdaLR(o, lambda s: min(1.0, (s + 1) / warm)) for o in (lora, mlp)]
        return [lora, mlp], scheds

    # ------------------------------------------------------------------------------------------- training
    def on_train_epoch_start(self) -> None:
        sampler = self.trainer.datamodule.train_sampler
        if sampler is not None:  # Lightning only sets the epoch of samplers it owns
            sampler.set_epoch(self.current_epoch)
        # Lightning never calls train() during fit: it restores each submodule's own flag after validation. Calling
        # it here applies SpeechLLM's rule that the frozen encoders (and a frozen Q-Former) stay in eval mode, so
        # no dropout or layer drop reaches the speech features or the cache.
        self.model.train()
        info = self.phase()
        log.info("epoch %d: cycle %d, %s phase", self.current_epoch, info.cycle, info.phase)
        self._start_digests = self._digests()

    def _digests(self) -> dict[str, str]:
        return {"lora": digest(self.model.lora_parameters()), "mlp": digest(self.model.symbol_parameters())}

    def _check_groups(self, info: PhaseInfo) -> None:
        """Frozen group bitwise unchanged this epoch, and every rank holding the same weights."""
        end = self._digests()
        frozen = "mlp" if info.phase == "lora" else "lora"
        start = getattr(self, "_start_digests", None) or end
        ranks = [end]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, end)
        record = {"epoch": self.current_epoch, "cycle": info.cycle, "phase": info.phase, "start": start, "ranks": ranks}
        if self.trainer.is_global_zero:
            from ..io import atomic_write_text

            path = self.out_dir / "phase_checks.jsonl"
            old = path.read_text() if path.exists() else ""
            atomic_write_text(path, old + json.dumps(record) + "\n")
        if end[frozen] != start[frozen]:
            raise RuntimeError(f"the frozen {frozen} group changed during a {info.phase} epoch: {record}")
        if any(r != ranks[0] for r in ranks):
            raise RuntimeError(f"trainable weights differ between ranks after epoch {self.current_epoch}: {record}")

    def phase(self) -> PhaseInfo:
        """The cycle and phase of the current epoch."""
        return self.schedule.at(min(self.current_epoch, self.schedule.total_epochs - 1))

    def _temperature(self, info: PhaseInfo, batch_idx: int) -> float:
        n = max(1, self.trainer.num_training_batches * info.phase_epochs)
        return self.temperature((info.epoch_in_phase * self.trainer.num_training_batches + batch_idx) / n)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if "wav" not in batch:  # every sample of the batch was skipped
            self._skipped += batch["skipped"]
            return None
        info = self.phase()
        mode = "soft" if info.phase == "mlp" else self.hparams.lora_phase_symbols
        temp = self._temperature(info, batch_idx)
        self._skipped += batch["skipped"]
        try:
            out = self.model(batch, symbol_mode=mode, temperature=temp, speech=self._cached_speech(batch))
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
        opt_lora, opt_mlp = self.optimizers()
        sched_lora, sched_mlp = self.lr_schedulers()
        active, sched, params = (
            (opt_mlp, sched_mlp, self.model.symbol_parameters())
            if info.phase == "mlp"
            else (opt_lora, sched_lora, self.model.lora_parameters())
        )
        opt_lora.zero_grad(set_to_none=True)
        opt_mlp.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        if self.sharded:  # DDP would have averaged them; under FSDP the replicated groups are ours to reduce
            average_gradients(params)
        if self.hparams.max_grad_norm > 0:
            norm = torch.nn.utils.clip_grad_norm_(params, self.hparams.max_grad_norm)
        else:
            norm = torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])
        self._skip_if_not_finite(active.optimizer, norm)
        active.step()
        sched.step()
        opt_lora.zero_grad(set_to_none=True)
        opt_mlp.zero_grad(set_to_none=True)
        bs = batch["wav"].shape[0]
        self.log("train/loss", out.loss, prog_bar=True, batch_size=bs)
        # the progress bar shows where the run is in the schedule
        self.log_dict(
            {"cycle": float(info.cycle), "mlp_phase": float(info.phase == "mlp")},
            prog_bar=True,
            logger=False,
            batch_size=bs,
        )
        self.log_dict(
            {
                "train/cycle": float(info.cycle),
                "train/phase": float(info.phase == "mlp"),
                "train/temperature": temp,
                "train/skipped": float(len(batch["skipped"])),
            },
            batch_size=bs,
        )
        return loss

    # ---------------------------------------------------------------------------------- non-finite losses
    def _skip_if_not_finite(self, optimizer: torch.optim.Optimizer, grad_norm: torch.Tensor) -> None:
        """Makes the fused optimizer skip this step on the device when the gradients are not finite, and
        remembers the first such step, so the step needs no host sync; `_raise_if_not_finite` reports it.

        The gradients are the same on every rank after DDP's all-reduce, so every rank skips, and later raises,
        together."""
        bad = ~torch.isfinite(grad_norm)
        optimizer.found_inf = bad.float()  # read by fused AdamW: the update and the step count are skipped
        if self._first_bad is None:
            self._first_bad = torch.full((2,), -1, dtype=torch.long, device=grad_norm.device)
        first = bad & (self._first_bad[0] < 0)
        # Python scalars in torch.where: no host-to-device copy
        self._first_bad = torch.stack(
            [
                torch.where(first, self.global_step, self._first_bad[0]),
                torch.where(first, self.current_epoch, self._first_bad[1]),
            ]
        )  # (2,)

    def _raise_if_not_finite(self) -> None:
        if self._first_bad is None:
            return
        step, epoch = self._first_bad.tolist()
        if step < 0:
            return
        info = self.schedule.at(min(epoch, self.schedule.total_epochs - 1))
        raise FloatingPointError(
            f"loss or gradients are not finite at step {step} (cycle {info.cycle}, {info.phase} phase): that "
            f"step was skipped, so nothing was stepped with it, and the run stops here; the last checkpoint in "
            f"{self.out_dir} is intact. Lower lora_lr/mlp_lr or check the data with `salmonn-symbols check-data`."
        )

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if (batch_idx + 1) % max(1, self.trainer.log_every_n_steps) == 0:  # a host sync, so not at every step
            self._raise_if_not_finite()

    # --------------------------------------------------------------------------------------- speech cache
    def _cached_speech(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """Speech embeddings from the cache, or None when caching is off (the model computes them)."""
        if not self.hparams.speech_cache or any(p.requires_grad for p in self.model.speech_parameters()):
            return None
        if self._cache is None:
            from .speech_cache import SpeechCache, speech_fingerprint

            folder = self.hparams.speech_cache_dir or str(self.out_dir / "speech_cache")
            folder = None if folder.lower() == "none" else folder
            fingerprint = speech_fingerprint(self.model, str(self.trainer.precision))
            self._cache = SpeechCache(folder, fingerprint, self.global_rank)
        return self._cache.speech(self.model, batch, batch["audio_keys"])

    def _flush_cache(self) -> None:
        if self._cache is not None:
            self._cache.flush()
            # the share of clips served from the cache since the last flush (one epoch of training or validation)
            rate = self._cache.hits / max(1, self._cache.hits + self._cache.misses)
            self._cache.hits = self._cache.misses = 0
            self.log("train/speech_cache_hit_rate", rate, rank_zero_only=False)

    # ----------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        dm = self.trainer.datamodule
        self._accs = {
            m: MetricAccumulator({t.name: (t.labels, t.multi_label) for t in dm.tasks}) for m in self.eval_modes
        }

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._skipped += batch["skipped"]
        if "wav" not in batch:
            return
        dm = self.trainer.datamodule
        tasks = {t.name: t for t in dm.tasks}
        speech = self._cached_speech(batch)
        if speech is None:
            speech = self.model.encode_speech(batch["wav"], batch["wav_lengths"])
        temp = self.temperature(1.0)
        for mode in self.eval_modes:
            preds = predict_batch(self.model, batch, speech, tasks, self.book, dm.prompts, mode, temp)
            for d in set(batch["datasets"]):
                rows = [r for r, x in enumerate(batch["datasets"]) if x == d]
                self._accs[mode].update(d, [preds[r] for r in rows], [batch["gold"][r] for r in rows])

    def on_validation_epoch_end(self) -> None:
        self._flush_cache()
        self._log_eval("val")

    # test: the same three conditions on the test split, logged as test/...
    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, stage: str) -> None:
        tasks = self.trainer.datamodule.tasks
        metrics: dict[str, float] = {}
        for mode, acc in self._accs.items():
            acc = gather_accumulator(acc, tasks)
            if not any(acc.state_dict()["golds"].values()):
                continue
            values = acc.compute()
            self._last_eval[mode] = values
            prefix = stage if mode == "soft" else f"{stage}_{mode}"
            for key, v in values.items():  # "ds/acc" -> "val/acc/ds"
                ds, metric = key.split("/", 1)
                metrics[f"{prefix}/{metric}/{ds}"] = v
        # identical on every rank (gathered), so no further reduction is needed
        self.log_dict(metrics, prog_bar=False, rank_zero_only=False, sync_dist=False)

    # ----------------------------------------------------------------------------------------- discovery
    def _write_skipped(self) -> None:
        """Gathers the samples skipped on every rank and writes them, with the manifest problems, on rank 0."""
        from ..data.datamodule import write_skipped

        mine = [p.as_dict() for p in self._skipped]
        everyone = [mine]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            everyone = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(everyone, mine)
        problems = [p.as_dict() for p in self.trainer.datamodule.problems] + [p for r in everyone for p in r]
        if problems:
            seen = {json.dumps(p, sort_keys=True): p for p in problems}  # a clip skipped every epoch counts once
            if self.trainer.is_global_zero:
                from ..data.manifest import DataProblem

                write_skipped(
                    self.out_dir / "skipped.jsonl", [DataProblem(p["where"], p["what"], p["id"]) for p in seen.values()]
                )
            self.log("train/skipped_total", float(len(seen)), rank_zero_only=False)

    def on_train_epoch_end(self) -> None:
        self._raise_if_not_finite()
        self._flush_cache()
        self._write_skipped()
        info = self.phase()
        if self.hparams.verify_groups:
            self._check_groups(info)
        if info.phase == "lora" and info.phase_end and info.cycle > 1:
            self._maybe_rollback(info)
        if info.discover_after:
            self._discover(info.cycle)
        if info.phase_end:  # after discovery, so the checkpoint holds the new symbols
            path = self.out_dir / "checkpoints" / f"cycle{info.cycle}-{info.phase}-end.ckpt"
            self.trainer.save_checkpoint(path, weights_only=False)

    def _maybe_rollback(self, info: PhaseInfo) -> None:
        acc = self._last_eval.get("soft", {}).get("mean/acc")
        if acc is None or self.hparams.rollback_margin < 0:
            return
        if acc < self.best_soft_acc - self.hparams.rollback_margin and len(self.book.history) > 1:
            note = f"val/acc/mean {acc:.3f} fell below the best {self.best_soft_acc:.3f} by more than the margin"
            log.warning("cycle %d: rolling back the symbols: %s", info.cycle, note)
            self.book.rollback(cycle=info.cycle, note=note)
            self._apply_symbols()
        self.best_soft_acc = max(self.best_soft_acc, acc)

    def _discover(self, cycle: int) -> None:
        mapping = None
        # re-scoring runs the LLM, whose sharded blocks need every rank: then all ranks discover, rank 0 writes
        if self.trainer.is_global_zero or self.sharded:
            mapping = self._run_discovery_here(cycle)
        mapping = self.trainer.strategy.broadcast(mapping, src=0)
        self.book.update(mapping, cycle=cycle, source="discovered")
        self._apply_symbols()

    def _run_discovery_here(self, cycle: int) -> dict[str, str]:
        dm = self.trainer.datamodule
        override = (
            load_override(self.hparams.override_file, self.book, self.symtok) if self.hparams.override_file else None
        )
        rescore = None
        if self.hparams.rescore:
            from ..data.dataset import SpeechDataset
            from .rescoring import TaskLossRescorer

            val = SpeechDataset(dm.load_split("validation"), dm.tasks, "skip")
            rescore = TaskLossRescorer(
                self.model, val, dm.transform, dm.prompts, self.book, self.hparams.rescore_samples
            )
        weight = self.model.llm.get_input_embeddings().weight
        with torch.autocast(device_type=weight.device.type, enabled=False):  # discovery is fp32 by design
            tokens, changes = run_discovery(
                self.book,
                self.symtok,
                self.model.symbols.mlp,
                weight,
                self.model_masks(),
                self.discovery_cfg,
                override=override,
                rescore=rescore,
            )
        if self.trainer.is_global_zero:
            files = write_discovery(self.out_dir / "discovery", cycle, tokens, changes)
            from .wandb_tables import log_discovery

            log_discovery(self.loggers, cycle, changes, self.book, self._last_eval, self.global_step, files)
        return final_mapping(changes)

    def model_masks(self):
        """The candidate masks the model's quantizers use."""
        from ..symbols import CandidateMasks

        return CandidateMasks(self.model.symbols.mask_initial.cpu(), self.model.symbols.mask_continuation.cpu())

    # ---------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._raise_if_not_finite()  # before anything is written
        if self._cache is not None:
            # rows computed since the last flush go to disk with the checkpoint, so a resumed run reads exactly
            # the rows the interrupted run had, instead of recomputing them in other batch compositions
            self._cache.flush()
        # Base weights are frozen and live in their own files: the checkpoint keeps only what trains.
        checkpoint["state_dict"] = trainable_state_dict(self.model)
        checkpoint["state_dict"] = {f"model.{k}": v for k, v in checkpoint["state_dict"].items()}
        checkpoint["symbols"] = self.book.state_dict()
        checkpoint["cycle_state"] = {
            "best_soft_acc": float(self.best_soft_acc),
            "wandb_id": self.wandb_id,
            "model_cfg": asdict(self.model_cfg),
        }
        checkpoint["rng"] = rng_state()
        checkpoint["sampler"] = {
            "epoch": self.current_epoch,
            # processed, not completed: a step checkpoint is taken before Lightning marks the batch completed,
            # and a resumed run continues after it
            "batches_done": self.trainer.fit_loop.epoch_loop.batch_progress.current.processed,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()
        own = {f"model.{k}" for k in trainable_state_dict(self.model)}
        missing = sorted(own - set(checkpoint["state_dict"]))
        extra = sorted(set(checkpoint["state_dict"]) - own)
        if missing or extra:
            raise ValueError(f"checkpoint does not match this model: missing {missing[:5]}, unexpected {extra[:5]}")
        self.strict_loading = False
        self._check_resume_config(checkpoint)
        if self.book is None:
            self.book = SymbolBook.from_state_dict(checkpoint["symbols"])
        else:
            self.book.load_state_dict(checkpoint["symbols"])
        state = checkpoint.get("cycle_state", {})
        self.best_soft_acc = state.get("best_soft_acc", -math.inf)
        self.wandb_id = state.get("wandb_id")
        self._apply_symbols()
        self._resume_rng = checkpoint.get("rng")
        # the position the training step consumed, not what prefetching workers had already drawn
        self.trainer.datamodule.resume_sampler(checkpoint.get("sampler"))

    def on_fit_start(self) -> None:
        from .wandb_tables import wandb_run

        run = wandb_run(self.loggers) if self.trainer.is_global_zero else None
        if run is not None:
            self.wandb_id = run.id
            cfg = self.out_dir / "config.yaml"
            if cfg.exists():
                run.save(str(cfg), base_path=str(self.out_dir), policy="now")

    _IGNORED_ON_RESUME = ("llm_dtype", "gradient_checkpointing", "tokenizer_path")

    def _check_resume_config(self, checkpoint: dict[str, Any]) -> None:
        """Refuses a resume whose model or label set differs from the checkpoint's in a way that matters."""
        saved = checkpoint.get("cycle_state", {}).get("model_cfg", {})
        now = asdict(self.model_cfg)
        diff = [
            f"model.model.{k}: {saved[k]!r} -> {now.get(k)!r}"
            for k in sorted(saved)
            if k not in self._IGNORED_ON_RESUME and saved[k] != now.get(k)
        ]
        labels = checkpoint.get("symbols", {}).get("labels")
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and labels is not None and list(labels) != dm.labels:
            diff.append(f"data label set: {labels} -> {dm.labels}")
        if diff:
            raise ValueError(
                "cannot resume: the config differs from the checkpoint's in a way that matters:\n  "
                + "\n  ".join(diff)
                + "\nresume with the run's saved config.yaml, or start a new run_dir"
            )

    def on_train_start(self) -> None:
        self.model.train()  # a run resumed mid-epoch gets no on_train_epoch_start for that epoch
        if getattr(self, "_resume_rng", None):
            set_rng_state(self._resume_rng)
        self._resume_rng = None

    def on_train_end(self) -> None:
        if self.trainer.is_global_zero:
            from ..model.checkpoint import save_lora_adapter, save_trainable

            save_trainable(self.model, self.out_dir / "export" / "trainable.safetensors")
            save_lora_adapter(self.model, self.out_dir / "export" / "lora_adapter")
            self._write_json("symbols_final.json", self.book.state_dict())
