"""The cycle around the training phases: the symbol book, rollback and discovery, and handing the book over.

    setup      random 2-token symbols (cycle 0) ─broadcast from rank 0─► book
    epoch end  last LoRA epoch of cycle c ≥ 2: soft val accuracy < best − margin ─► restore the last mapping
               last MLP epoch of cycle c: discovery (fp32 on rank 0; every rank under FSDP) ─broadcast─► book
    always     after a change (and on resume): the book goes to the model's symbol injector and, as a copy, to
               the datamodule, so the data side sees a new mapping only when it is handed one

Nothing here reaches for the Trainer: the LightningModule passes the model, the datamodule and a broadcast.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..model.speech_llm import SpeechLLM
from ..symbols import (
    CandidateMasks,
    DiscoveryConfig,
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
        rescore: Re-score the top candidates by task loss on validation data.
        rescore_samples: Validation samples per label for re-scoring.
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
    ):
        self.discovery, self.rescore, self.rescore_samples = discovery, rescore, rescore_samples
        self.rollback_margin, self.override_file = rollback_margin, override_file
        self.book: SymbolBook | None = None
        self.best_soft_acc = -math.inf

    # ------------------------------------------------------------------------------------------------ book
    def start(self, labels: list[str], tokenizer: SymbolTokenizer, seed: int, n_tokens: int, broadcast: Broadcast):
        """Draws the random symbols of cycle 0 (once; a resumed book is kept)."""
        if self.book is None:
            book = SymbolBook.create(labels, tokenizer, seed=seed, n_tokens=n_tokens)
            # every rank draws the same words; rank 0's are broadcast anyway so a tokenizer quirk cannot split them
            self.book = SymbolBook.from_state_dict(broadcast(book.state_dict()))
        return self.book

    def hand_over(self, model: SpeechLLM, tokenizer: SymbolTokenizer, datamodule: Any) -> None:
        """Gives the current mapping to the model (symbol token spans) and a copy of the book to the data side."""
        model.symbols.set_symbols([tokenizer.word_ids(s) for s in self.book.symbols])
        if datamodule is not None and getattr(datamodule, "transform", None) is not None:
            datamodule.set_book(SymbolBook.from_state_dict(self.book.state_dict()))

    # -------------------------------------------------------------------------------------------- rollback
    def maybe_rollback(self, cycle: int, soft_acc: float | None) -> bool:
        """Restores the previous mapping when ``soft_acc`` fell more than the margin below the best so far."""
        if soft_acc is None or self.rollback_margin < 0:
            return False
        rolled = False
        if soft_acc < self.best_soft_acc - self.rollback_margin and len(self.book.history) > 1:
            note = f"val/acc/mean {soft_acc:.3f} fell below the best {self.best_soft_acc:.3f} by more than the margin"
            log.warning("cycle %d: rolling back the symbols: %s", cycle, note)
            self.book.rollback(cycle=cycle, note=note)
            rolled = True
        self.best_soft_acc = max(self.best_soft_acc, soft_acc)
        return rolled

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
        rescore = None
        if self.rescore:
            from ..data.dataset import SpeechDataset
            from .rescoring import TaskLossRescorer

            val = SpeechDataset(datamodule.load_split("validation"), datamodule.tasks, "skip")
            rescore = TaskLossRescorer(
                model, val, datamodule.transform, datamodule.prompts, self.book, self.rescore_samples
            )
        weight = model.llm.get_input_embeddings().weight
        masks = CandidateMasks(model.symbols.mask_initial.cpu(), model.symbols.mask_continuation.cpu())
        with torch.autocast(device_type=weight.device.type, enabled=False):  # discovery is fp32 by design
            tokens, changes = run_discovery(
                self.book,
                tokenizer,
                model.symbols.mlp,
                weight,
                masks,
                self.discovery,
                override=override,
                rescore=rescore,
            )
        files = write_discovery(out_dir / "discovery", cycle, tokens, changes) if write_here else ()
        return DiscoveryRecord(cycle, final_mapping(changes), changes, tokens, tuple(files))

    # ----------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """Plain-type state for checkpoints."""
        return {"symbols": self.book.state_dict(), "best_soft_acc": float(self.best_soft_acc)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores `state_dict` output (the book is replaced in place when one exists)."""
        if self.book is None:
            self.book = SymbolBook.from_state_dict(state["symbols"])
        else:
            self.book.load_state_dict(state["symbols"])
        best = state.get("best_soft_acc")
        self.best_soft_acc = -math.inf if best is None else float(best)
