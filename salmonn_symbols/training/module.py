"""SymbolLitModule: the research loop of alternating LoRA / symbol-MLP training with discovery, in one ``fit``.

    setup ─► random 2-token symbols (cycle 0; a fresh run saves them before training) ─► model + datamodule
    every epoch: CycleSchedule.at(epoch) → (cycle, phase)
       training_step: one PhaseStep; only the active group's optimizer steps
          LoRA phase: symbols through the frozen MLP (soft by default)
          MLP phase:  symbols through MLP + soft quantization (annealed T)
       validation: accuracy / macro-F1 per dataset, soft (at the training temperature) · hard · original labels
       epoch end: rollback check · discovery after a cycle's last MLP epoch, the MLP back to the identity, and a
                  validation of the discovered mapping (val_discovered/...) · checkpoint (last.ckpt;
                  cycleN-{lora,mlp}-end.ckpt at a phase end), always after validation and discovery

Both trainable groups keep ``requires_grad=True`` for the whole run (DDP registers them once); freezing is done by
not stepping. The symbols live in `SymbolCycle`, checkpoints in `resume`, the rest in `callbacks` and `lifecycle`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_info

from ..model.builders import SpeechLLMConfig, build_speech_llm
from ..symbols import DiscoveryConfig, SymbolTokenizer, TemperatureSchedule, build_candidate_masks
from .callbacks import (
    CycleMetrics,
    DiscoveryTables,
    FinalExport,
    NonFiniteCheck,
    PhaseIntegrity,
    SkippedSamples,
    notify_discovery,
)
from .compile import compile_blocks
from .cycle import SymbolCycle
from .evaluation import EVAL_MODES, Evaluator, check_modes
from .fsdp import SymbolFSDPStrategy, average_gradients, shard_llm
from .lifecycle import GracefulStop, InitialSymbols, KeptMetrics, RunSummary, StaleFiles
from .resume import load_training_state, save_epoch_end, save_training_state, set_rng_state
from .schedule import CycleSchedule, PhaseInfo
from .speech_cache import RunSpeechCache
from .step import NonFiniteGuard, PhaseStep, phase_optimizers

__all__ = ["SymbolLitModule"]

log = logging.getLogger(__name__)


class SymbolLitModule(L.LightningModule):
    """The symbol-discovery training system.

    Args:
        model: Model paths and shapes (a named size's fields; see `SpeechLLMConfig`).
        schedule: Cycles and phase lengths.
        lora_lr: Learning rate of the LoRA optimizer.
        speech_lr: Learning rate of a trainable speech path (default: ``lora_lr``).
        mlp_lr: Learning rate of the symbol-MLP optimizer.
        lora_weight_decay: AdamW weight decay of LoRA.
        mlp_weight_decay: AdamW weight decay of the MLP.
        warmup_steps: Linear warm-up of each optimizer, counted in its own steps.
        lr_decay: After the warm-up: "none" (constant), "linear" or "cosine" to 0 at the optimizer's last step.
        max_grad_norm: Gradient clipping of the active group (0 disables).
        lora_phase_symbols: What symbol positions get in LoRA phases: "soft" (frozen MLP + soft quantization),
            "hard" (frozen MLP + argmax) or "raw" (the symbols' own embeddings).
        temperature: Soft-quantization temperature over each MLP phase.
        symbol_seed: Seed of the random symbols of cycle 0.
        initial_symbols: Symbols of cycle 0: "random" (2-token words), "original" (the label words themselves,
            the reference arm) or a JSON file of label -> symbol.
        symbol_tokens: Tokens per random symbol.
        discovery: Thresholds and sizes of discovery.
        rescore: Re-score the top-k candidates by task loss on validation data before choosing.
        rescore_samples: Validation samples per label for re-scoring.
        rescore_lora: LoRA weights discovery scores with: "initial" (the run's starting LoRA) or "current".
        rollback_margin: Restore the best mapping so far if the soft validation accuracy of an adapted discovered
            mapping drops by more than this (absolute) below the best; negative disables.
        reset_mlp: Start the symbol MLP again from the identity after each discovery (and its optimizer state), so
            the next cycle moves the new tokens instead of applying the old move to them.
        validate_discovered: Validate each discovered mapping right after its discovery (hard symbols), logged
            as ``val_discovered/...``.
        override_file: JSON of label -> symbol applied at every discovery.
        eval_modes: Validation conditions among "soft", "hard", "original".
        verify_groups: After every epoch, check that the frozen group is bitwise unchanged and that all ranks
            hold identical trainable weights (digests are appended to ``phase_checks.jsonl``).
        speech_cache: Compute the frozen speech path once per clip and reuse it in every later epoch and cycle
            (only the frozen encoders' frames while the speech path trains).
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
        speech_lr: float | None = None,
        mlp_lr: float = 1e-3,
        lora_weight_decay: float = 0.01,
        mlp_weight_decay: float = 1e-4,
        warmup_steps: int = 0,
        lr_decay: str = "none",
        max_grad_norm: float = 1.0,
        lora_phase_symbols: str = "soft",
        temperature: TemperatureSchedule | None = None,
        symbol_seed: int = 0,
        initial_symbols: str = "random",
        symbol_tokens: int = 2,
        discovery: DiscoveryConfig | None = None,
        rescore: bool = True,
        rescore_samples: int = 32,
        rescore_lora: str = "initial",
        rollback_margin: float = 0.1,
        reset_mlp: bool = True,
        validate_discovered: bool = True,
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
        self.eval_modes = check_modes(eval_modes or list(EVAL_MODES), lora_phase_symbols)
        self.save_hyperparameters()
        self.automatic_optimization = False
        disc = discovery or DiscoveryConfig()
        self.cycle = SymbolCycle(disc, rescore, rescore_samples, rollback_margin, override_file, rescore_lora)
        self.guard = NonFiniteGuard()
        self.model, self.tokenizer = None, None
        self.symtok: SymbolTokenizer | None = None
        self.wandb_id: str | None = None
        self.last_eval: dict[str, dict[str, float]] = {}  # mode -> metrics of the latest evaluation
        self._eval: Evaluator | None = None
        self._cache = None
        self._step: PhaseStep | None = None
        self._resume_rng = None
        self.train_temperature = self.temperature(1.0)  # the last training step's; soft validation uses it

    # ------------------------------------------------------------------------------------------- building
    def configure_model(self) -> None:
        if self.model is not None:
            return
        device = self.trainer.strategy.root_device if self._trainer is not None else None  # random weights: built there
        self.model, self.tokenizer = build_speech_llm(self.model_cfg, device=device)
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
        h = self.hparams
        book = self.cycle.start(
            dm.labels, self.symtok, h.symbol_seed, h.symbol_tokens, self._broadcast, h.initial_symbols
        )
        vocab = self.model.llm.get_input_embeddings().weight.shape[0]
        self.model.symbols.set_candidate_masks(build_candidate_masks(self.symtok, vocab, book.labels))
        dm.bind(self.tokenizer, book)
        self.cycle.hand_over(self.model, self.symtok, dm)
        self.cycle.snapshot_lora(self.model)
        out = self.out_dir  # resolved collectively before any rank-0-only write
        log.info("run outputs: %s", out)

    def _broadcast(self, obj: Any) -> Any:
        return self.trainer.strategy.broadcast(obj, src=0)

    @property
    def out_dir(self) -> Path:
        """Folder of this run's discovery files and exports (resolved in `setup`, on every rank)."""
        if getattr(self, "_out_dir", None) is None:
            # trainer.log_dir broadcasts from rank 0: every rank must ask, never rank 0 alone
            self._out_dir = Path(self.hparams.output_dir or self.trainer.log_dir or self.trainer.default_root_dir)
        return self._out_dir

    def configure_callbacks(self) -> list[L.Callback]:
        callbacks = [CycleMetrics(), NonFiniteCheck(), SkippedSamples(), DiscoveryTables(), FinalExport()]
        callbacks += [GracefulStop(), KeptMetrics(), InitialSymbols(), StaleFiles(), RunSummary()]
        return callbacks + ([PhaseIntegrity()] if self.hparams.verify_groups else [])

    # ------------------------------------------------------------------------------------------ optimizers
    def configure_optimizers(self):
        h = self.hparams
        steps = self.schedule.phase_steps(self.trainer.estimated_stepping_batches) if h.lr_decay != "none" else None
        wd = (h.lora_weight_decay, h.mlp_weight_decay)
        return phase_optimizers(self.model, h.lora_lr, h.mlp_lr, *wd, h.warmup_steps, h.speech_lr, h.lr_decay, steps)

    def phase_step(self) -> PhaseStep:
        """The training step, bound to this run's optimizers and schedulers."""
        if self._step is None:
            h = self.hparams
            reduce = average_gradients if self.sharded else None  # DDP averages them; under FSDP we reduce them
            opts, scheds = self.optimizers(), self.lr_schedulers()
            self._step = PhaseStep.of(
                self.model, opts, scheds, h.max_grad_norm, h.lora_phase_symbols, self.guard, reduce
            )
        return self._step

    # ------------------------------------------------------------------------------------------- training
    def on_train_start(self) -> None:
        self.model.train()  # a run resumed mid-epoch gets no on_train_epoch_start for that epoch
        if self._resume_rng:
            set_rng_state(self._resume_rng)
        self._resume_rng = None

    def on_train_epoch_start(self) -> None:
        sampler = self.trainer.datamodule.train_sampler
        if sampler is not None:  # Lightning only sets the epoch of samplers it owns
            sampler.set_epoch(self.current_epoch)
        # Lightning never calls train() during fit (it restores each submodule's flag after validation); calling it
        # applies SpeechLLM's rule that frozen encoders (and a frozen Q-Former) stay in eval mode: no dropout.
        self.model.train()
        log.info("epoch %d: cycle %d, %s phase", self.current_epoch, self.phase().cycle, self.phase().phase)

    def phase(self) -> PhaseInfo:
        """The cycle and phase of the current epoch."""
        return self.schedule.at(min(self.current_epoch, self.schedule.total_epochs - 1))

    def _temperature(self, info: PhaseInfo, batch_idx: int) -> float:
        n = max(1, self.trainer.num_training_batches * info.phase_epochs)
        return self.temperature((info.epoch_in_phase * self.trainer.num_training_batches + batch_idx) / n)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor | None:
        if "wav" not in batch:  # every sample of the batch was skipped
            return None
        info = self.phase()
        temp = self.train_temperature = self._temperature(info, batch_idx)
        speech = self._cached_speech(batch)
        step, epoch = self.global_step, self.current_epoch
        out = self.phase_step()(
            batch, info.phase, temp, speech=speech, backward=self.manual_backward, step=step, epoch=epoch
        )
        self.log("train/loss", out.loss, prog_bar=True, batch_size=batch["wav"].shape[0])
        return out.loss

    # ----------------------------------------------------------------------------------- speech features
    def _cached_speech(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """Speech embeddings from the cache, or None when caching is off (the model computes them)."""
        if self._cache is None:
            h = self.hparams
            self._cache = RunSpeechCache(h.speech_cache, h.speech_cache_dir, self.out_dir, str(self.trainer.precision))
        return self._cache.speech(self.model, batch, self.global_rank)

    def _flush_cache(self) -> None:
        rate = self._cache.flush() if self._cache is not None else None
        if rate is not None:  # the share of clips served from the cache since the last flush
            self.log("train/speech_cache_hit_rate", rate, rank_zero_only=False)

    # ----------------------------------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._eval = Evaluator(self.trainer.datamodule.tasks, self.eval_modes)

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        if "wav" not in batch:
            return
        speech = self._cached_speech(batch)
        if speech is None:
            speech = self.model.encode_speech(batch["wav"], batch["wav_lengths"])
        prompts, temp = self.trainer.datamodule.prompts, self.train_temperature
        self._eval.update(self.model, batch, speech, self.cycle.book, prompts, temp)

    def on_validation_epoch_end(self) -> None:
        self._flush_cache()
        self._log_eval("val")
        if not self.trainer.sanity_checking and self.trainer.state.fn == "fit":
            self.cycle.record(self.last_eval.get("soft", {}).get("mean/acc"))

    # test: the same three conditions on the test split, logged as test/...
    def on_test_epoch_start(self) -> None:
        self.on_validation_epoch_start()

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.validation_step(batch, batch_idx)

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")

    def _log_eval(self, stage: str, prefixes: dict[str, str] | None = None) -> dict[str, dict[str, float]]:
        metrics, by_mode = self._eval.compute(stage, prefixes)
        self.last_eval.update({prefixes.get(m, m) if prefixes else m: v for m, v in by_mode.items()})
        self.log_dict(metrics, prog_bar=False, rank_zero_only=False, sync_dist=False)  # already gathered
        return by_mode

    @torch.no_grad()
    def _validate_discovered(self) -> float | None:
        """Validates the just-discovered mapping in hard symbols (``val_discovered/...``); returns its accuracy."""
        self._eval = Evaluator(self.trainer.datamodule.tasks, ["hard"])
        self.model.eval()
        with self.trainer.precision_plugin.forward_context():
            for i, batch in enumerate(self.trainer.datamodule.val_dataloader()):
                self.validation_step(self.trainer.strategy.batch_to_device(batch), i)
        self.model.train()
        self._flush_cache()
        return self._log_eval("val", {"hard": "val_discovered"}).get("hard", {}).get("mean/acc")

    # ---------------------------------------------------------------------------------- the cycle's turns
    def on_train_epoch_end(self) -> None:
        # in this order: the epoch's training, its validation (Lightning ran it after the last batch), rollback,
        # discovery, then the checkpoint, which therefore holds what they decided
        self._flush_cache()
        info = self.phase()
        dm, acc = self.trainer.datamodule, self.last_eval.get("soft", {}).get("mean/acc")
        if info.rollback_check and self.cycle.maybe_rollback(info.cycle, acc):
            self.cycle.hand_over(self.model, self.symtok, dm)
        if info.discover_after:
            # re-scoring runs the LLM, whose sharded blocks need every rank: then all ranks discover; rank 0 writes
            here, zero = self.trainer.is_global_zero or self.sharded, self.trainer.is_global_zero
            record = self.cycle.discover(
                info.cycle, self.model, self.symtok, dm, self._broadcast, here, zero, self.out_dir
            )
            if self.hparams.reset_mlp:
                self.cycle.restart_mlp(self.model, self.optimizers()[1].optimizer, self.hparams.symbol_seed, info.cycle)
            self.cycle.hand_over(self.model, self.symtok, dm)
            notify_discovery(self.trainer, self, record)
            acc = self._validate_discovered() if self.hparams.validate_discovered else None
            self.cycle.record(acc)
            if info.rollback_after_discovery and self.cycle.maybe_rollback(info.cycle, acc):
                self.cycle.hand_over(self.model, self.symtok, dm)
        save_epoch_end(self.trainer, self.out_dir / "checkpoints", info.cycle, info.phase, info.phase_end)

    # ---------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self._cache is not None:
            # rows computed since the last flush go to disk with the checkpoint, so a resumed run reads exactly
            # the rows the interrupted run had, instead of recomputing them in other batch compositions
            self._cache.flush(rate=False)
        save_training_state(self, checkpoint)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.configure_model()
        self.strict_loading = False  # the checkpoint holds the trainable groups only
        self._resume_rng = load_training_state(self, checkpoint)
        self.cycle.hand_over(self.model, self.symtok, getattr(self.trainer, "datamodule", None))
