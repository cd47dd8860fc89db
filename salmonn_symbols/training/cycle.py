"""The cycle around the training phases: the symbol book, rollback and discovery, and handing the book over.

    setup      random 2-token symbols (cycle 0) ─broadcast from rank 0─► book
    validation every soft accuracy is recorded with the mapping it measured; the best one is remembered
    epoch end  last MLP epoch of cycle c: discovery (verified by the task loss on held-out samples; rank 0, or
               every rank under FSDP) ─broadcast─► book; the symbol MLP starts again from the identity
    rollback   once a discovered mapping has been adapted to (the next LoRA phase, or its own validation when
               none follows): accuracy < best − margin ─► restore the best mapping
    always     after a change (and on resume): the book goes to the model's symbol injector and, as a copy, to
               the datamodule, so the data side sees a new mapping only when it is handed one

Nothing here reaches for the Trainer: the LightningModule passes the model, the datamodule and a broadcast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..model.speech_llm import SpeechLLM
from ..symbols import (
    CandidateMasks,
    DiscoveryConfig,
    HistoryEntry,
    SymbolBook,
    SymbolChange,
    SymbolTokenizer,
    TokenDiscovery,
    final_mapping,
    load_override,
    run_discovery,
    write_discovery,
)

__all__ = ["DiscoveryRecord", "SymbolCycle"]

log = logging.getLogger(__name__)

Broadcast = Callable[[Any], Any]  # rank 0's object on every rank


def _lora(model: SpeechLLM) -> dict[str, torch.Tensor]:
    """What the LoRA phase trains: LoRA, and the speech path's trainable part when it trains."""
    from .step import group_parameters

    trained = {id(p) for p in group_parameters(model, "lora")}
    return {n: p for n, p in model.named_parameters() if id(p) in trained}


@dataclass
class DiscoveryRecord:
    """What one discovery decided, for the callbacks that report it (rank 0 holds the details)."""

    cycle: int
    mapping: dict[str, str]
    changes: list[SymbolChange] | None = None
    tokens: list[TokenDiscovery] | None = None
    files: tuple[Path, ...] = ()


class SymbolCycle:
    """The symbol side of the training cycles.

    Args:
        discovery: Thresholds and sizes of discovery.
        rescore: Verify discovery by the task loss on validation data (`TaskLossScorer`); without it the MLP's hard
            argmax decides.
        rescore_samples: Validation samples per label for the verified search (half search, half confirmation).
        rescore_lora: Which LoRA weights the verified search scores with: "initial" (those the run started from:
            the loaded SALMONN LoRA, or a fresh one that changes nothing; with ``train_speech_path`` also the
            speech path's), so every word is judged by the same pretrained model and the current symbol gets no
            head start from having been trained on; or "current" (as adapted to the current symbols).
        rollback_margin: Restore the previous mapping if soft validation accuracy falls more than this below the
            best so far; negative disables.
        override_file: JSON of label -> symbol applied at every discovery.
    """

    def __init__(
        self,
        discovery: DiscoveryConfig,
        rescore: bool = True,
        rescore_samples: int = 32,
        rollback_margin: float = 0.1,
        override_file: str | None = None,
        rescore_lora: str = "initial",
    ):
        if rescore_lora not in ("initial", "current"):
            raise ValueError(f"rescore_lora must be 'initial' or 'current', got {rescore_lora!r}")
        self.rescore_lora = rescore_lora
        self.initial_lora: dict[str, torch.Tensor] | None = None
        self.discovery, self.rescore, self.rescore_samples = discovery, rescore, rescore_samples
        self.rollback_margin, self.override_file = rollback_margin, override_file
        self.book: SymbolBook | None = None
        self.best_soft_acc = -math.inf
        self.best_index = 0  # history entry of the mapping that reached best_soft_acc

    # ------------------------------------------------------------------------------------------------ book
    def start(
        self,
        labels: list[str],
        tokenizer: SymbolTokenizer,
        seed: int,
        n_tokens: int,
        broadcast: Broadcast,
        initial: str = "random",
    ) -> SymbolBook:
        """The symbols of cycle 0 (once; a resumed book is kept): random 2-token words, the original label words
        themselves (``initial="original"``), or a mapping from a JSON file (label -> symbol)."""
        if self.book is None:
            book = self._initial(labels, tokenizer, seed, n_tokens, initial)
            # every rank draws the same words; rank 0's are broadcast anyway so a tokenizer quirk cannot split them
            self.book = SymbolBook.from_state_dict(broadcast(book.state_dict()))
        return self.book

    @staticmethod
    def _initial(labels: list[str], tokenizer: SymbolTokenizer, seed: int, n_tokens: int, initial: str) -> SymbolBook:
        if initial == "random":
            return SymbolBook.create(labels, tokenizer, seed=seed, n_tokens=n_tokens)
        if initial == "original":
            mapping = {lab: lab for lab in labels}
            return SymbolBook(labels, mapping, [HistoryEntry(0, "original", dict(mapping))])
        book = SymbolBook.create(labels, tokenizer, seed=seed, n_tokens=n_tokens)
        mapping = load_override(initial, book, tokenizer)  # the same checks as an override file
        missing = [lab for lab in labels if lab not in mapping]
        if missing:
            raise ValueError(f"{initial}: initial_symbols must give every label a symbol; missing {missing}")
        return SymbolBook(labels, mapping, [HistoryEntry(0, "manual", dict(mapping))])

    def hand_over(self, model: SpeechLLM, tokenizer: SymbolTokenizer, datamodule: Any) -> None:
        """Gives the current mapping to the model (symbol token spans) and a copy of the book to the data side."""
        model.symbols.set_symbols([tokenizer.word_ids(s) for s in self.book.symbols])
        if datamodule is not None and getattr(datamodule, "transform", None) is not None:
            datamodule.set_book(SymbolBook.from_state_dict(self.book.state_dict()))

    # -------------------------------------------------------------------------------------------- rollback
    def record(self, soft_acc: float | None) -> None:
        """Remembers ``soft_acc`` of the current mapping if it is the best so far."""
        if soft_acc is not None and soft_acc > self.best_soft_acc:
            self.best_soft_acc, self.best_index = soft_acc, len(self.book.history) - 1

    def maybe_rollback(self, cycle: int, soft_acc: float | None) -> bool:
        """Restores the best mapping when ``soft_acc`` of the current one fell more than the margin below the best
        accuracy so far (and the best was another mapping)."""
        if soft_acc is None or self.rollback_margin < 0:
            return False
        current = len(self.book.history) - 1
        best_mapping = self.book.history[self.best_index].mapping
        if soft_acc < self.best_soft_acc - self.rollback_margin and best_mapping != self.book.mapping:
            note = f"val/acc/mean {soft_acc:.3f} fell below the best {self.best_soft_acc:.3f} by more than the margin"
            log.warning("cycle %d: rolling back the symbols to history entry %d: %s", cycle, self.best_index, note)
            self.book.rollback(self.best_index, cycle=cycle, note=note)
            self.best_index = len(self.book.history) - 1
            return True
        self.record(soft_acc)
        return current != len(self.book.history) - 1

    # ------------------------------------------------------------------------------------------- discovery
    def discover(
        self,
        cycle: int,
        model: SpeechLLM,
        tokenizer: SymbolTokenizer,
        datamodule: Any,
        broadcast: Broadcast,
        run_here: bool,
        write_here: bool,
        out_dir: Path,
    ) -> DiscoveryRecord:
        """Runs discovery where ``run_here`` (rank 0, or every rank when the LLM is sharded), writes the cycle
        files where ``write_here`` (rank 0), broadcasts the mapping and makes it current."""
        record = self._run(cycle, model, tokenizer, datamodule, write_here, out_dir) if run_here else None
        mapping = broadcast(record.mapping if record is not None else None)
        self.book.update(mapping, cycle=cycle, source="discovered")
        return record if record is not None else DiscoveryRecord(cycle, mapping)

    def _run(self, cycle, model, tokenizer, datamodule, write_here: bool, out_dir: Path) -> DiscoveryRecord:
        override = load_override(self.override_file, self.book, tokenizer) if self.override_file else None
        scorer = None
        if self.rescore:
            from ..data.dataset import SpeechDataset
            from .rescoring import TaskLossScorer

            val = SpeechDataset(datamodule.load_split("validation"), datamodule.tasks, "skip")
            loss = self.discovery.task_loss
            scorer = TaskLossScorer(
                model, val, datamodule.transform, datamodule.prompts, self.book, self.rescore_samples, loss=loss
            )
        weight = model.llm.get_input_embeddings().weight
        masks = CandidateMasks(model.symbols.mask_initial.cpu(), model.symbols.mask_continuation.cpu())
        # discovery is fp32 by design
        with torch.autocast(device_type=weight.device.type, enabled=False), self.scoring_lora(model):
            tokens, changes = run_discovery(
                self.book,
                tokenizer,
                model.symbols.mlp,
                weight,
                masks,
                self.discovery,
                override=override,
                scorer=scorer,
            )
        files = write_discovery(out_dir / "discovery", cycle, tokens, changes) if write_here else ()
        return DiscoveryRecord(cycle, final_mapping(changes), changes, tokens, tuple(files))

    def snapshot_lora(self, model: SpeechLLM) -> None:
        """Remembers the LoRA weights the run starts from (once; a resumed run keeps the checkpoint's)."""
        if self.initial_lora is None:
            self.initial_lora = {n: p.detach().cpu().clone() for n, p in _lora(model).items()}

    @contextmanager
    def scoring_lora(self, model: SpeechLLM) -> Iterator[None]:
        """The LoRA weights discovery scores with, for the duration of the block (bitwise restored after)."""
        if self.rescore_lora != "initial" or not self.initial_lora:
            yield
            return
        params = _lora(model)
        saved = {n: p.detach().clone() for n, p in params.items()}
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(self.initial_lora[n])
        try:
            yield
        finally:
            with torch.no_grad():
                for n, p in params.items():
                    p.copy_(saved[n])

    @staticmethod
    def restart_mlp(model: SpeechLLM, optimizer: torch.optim.Optimizer, seed: int, cycle: int) -> None:
        """The symbol MLP back to the identity and its optimizer state cleared, after a discovery: the same draw
        on every rank (seeded by the run's seed and the cycle), and no momentum from the old move."""
        model.symbols.mlp.reset_parameters(torch.Generator().manual_seed(seed * 1000 + cycle))
        optimizer.state.clear()

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain-type state for checkpoints."""
        state = {"symbols": self.book.state_dict(), "best_soft_acc": float(self.best_soft_acc)}
        state["best_index"] = self.best_index
        return state | ({"initial_lora": self.initial_lora} if self.initial_lora is not None else {})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict` output (the book is replaced in place when one exists)."""
        if self.book is None:
            self.book = SymbolBook.from_state_dict(state["symbols"])
        else:
            self.book.load_state_dict(state["symbols"])
        best = state.get("best_soft_acc")
        self.best_soft_acc = -math.inf if best is None else float(best)
        self.best_index = int(state.get("best_index") or 0)
        if state.get("initial_lora") is not None:
            self.initial_lora = dict(state["initial_lora"])
