"""The symbol book: original labels, their current symbols, and the history across cycles.

    labels ──(random, cycle 0)──► symbols ──(discovery, cycle 1)──► symbols ──► ...
      "anger" ─────────────────► "kesh" ─────────────────────────► "voice"

The book substitutes labels by symbols in text by whole words only ("anger" never hits "danger"), maps
predictions back to labels, and gives the token ids of every symbol. It holds plain Python types only, so it
goes into checkpoints that load with ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .tokenization import SymbolTokenizer

__all__ = ["HistoryEntry", "SymbolBook", "UnknownLabelError"]

# Hyphens and word characters glue words together ("non-neutral" is one word); apostrophes do not ("anger's").
_WORD_CHAR = r"[\w-]"


class UnknownLabelError(KeyError):
    """A label is not in the book's label set."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown label"


@dataclass
class HistoryEntry:
    """One mapping in the history of the book.

    Attributes:
        cycle: Training cycle that produced the mapping (0 for the random start).
        source: "random", "discovered", "override", "rollback" or "manual".
        mapping: label -> symbol.
        note: Free text, e.g. why a rollback happened.
    """

    cycle: int
    source: str
    mapping: dict[str, str]
    note: str = ""


@dataclass
class SymbolBook:
    """Labels, current symbols and history.

    Args:
        labels: The original label strings, in a fixed order.
        mapping: label -> current symbol. Every label needs a symbol and symbols must be distinct.
        history: Earlier mappings; a fresh book records ``mapping`` as its cycle-0 entry.
        ignore_case: Whether substitution and prediction decoding ignore case.
    """

    labels: list[str]
    mapping: dict[str, str]
    history: list[HistoryEntry] = field(default_factory=list)
    ignore_case: bool = False

    def __post_init__(self) -> None:
        self.labels = list(self.labels)
        self.mapping = dict(self.mapping)
        self.history = [h if isinstance(h, HistoryEntry) else HistoryEntry(**h) for h in self.history]
        self._validate(self.mapping)
        if not self.history:
            self.history.append(HistoryEntry(cycle=0, source="random", mapping=dict(self.mapping)))

    # ------------------------------------------------------------------------------------------------ create
    @classmethod
    def create(
        cls,
        labels: Sequence[str],
        tokenizer: SymbolTokenizer,
        *,
        seed: int = 0,
        ignore_case: bool = False,
        **generate_kwargs: Any,
    ) -> SymbolBook:
        """Draws random symbols for ``labels`` (cycle 0).

        Args:
            labels: Original labels; duplicates are removed, order is kept.
            tokenizer: The model's tokenizer, wrapped.
            seed: Seed of the symbol search.
            ignore_case: See class args.
            **generate_kwargs: Passed to `generate_symbols` (n_tokens, max_attempts, style, ...).
        """
        from .generate import generate_symbols

        labels = list(dict.fromkeys(labels))
        symbols = generate_symbols(tokenizer, len(labels), labels=labels, seed=seed, **generate_kwargs)
        return cls(labels=labels, mapping=dict(zip(labels, symbols, strict=True)), ignore_case=ignore_case)

    def _validate(self, mapping: Mapping[str, str]) -> None:
        if len(set(self.labels)) != len(self.labels):
            raise ValueError(f"duplicate labels in {self.labels}")
        missing = [lab for lab in self.labels if lab not in mapping]
        extra = [lab for lab in mapping if lab not in self.labels]
        if missing or extra:
            raise ValueError(f"mapping must cover exactly the labels: missing {missing}, unknown {extra}")
        symbols = [mapping[lab] for lab in self.labels]
        dupes = sorted({s for s in symbols if symbols.count(s) > 1})
        if dupes:
            raise ValueError(f"two labels share the symbol(s) {dupes}: the mapping must be one-to-one")
        bad = [s for s in symbols if not s or s != s.strip() or any(c.isspace() for c in s)]
        if bad:
            raise ValueError(f"symbols must be single words without spaces, got {bad}")

    # ------------------------------------------------------------------------------------------------ lookup
    @property
    def symbols(self) -> list[str]:
        """Current symbols in label order."""
        return [self.mapping[lab] for lab in self.labels]

    @property
    def cycle(self) -> int:
        """Cycle of the latest history entry."""
        return self.history[-1].cycle

    def symbol_for(self, label: str) -> str:
        """The current symbol of ``label``; raises `UnknownLabelError` naming the label and the label set."""
        try:
            return self.mapping[label]
        except KeyError:
            raise UnknownLabelError(f"unknown label {label!r}; known labels: {self.labels}") from None

    def label_for(self, symbol: str) -> str | None:
        """The label whose current symbol is ``symbol`` (case-folded if ``ignore_case``), else None."""
        key = symbol.casefold() if self.ignore_case else symbol
        for lab, sym in self.mapping.items():
            if (sym.casefold() if self.ignore_case else sym) == key:
                return lab
        return None

    def encode_target(self, label: str | Sequence[str], sep: str = ", ") -> str:
        """Target text for a label, or for a list of labels (multi-label), in current symbols."""
        if isinstance(label, str):
            return self.symbol_for(label)
        return sep.join(self.symbol_for(lab) for lab in label)

    def token_ids(self, tokenizer: SymbolTokenizer) -> dict[str, list[int]]:
        """label -> in-context token ids of its current symbol."""
        return {lab: tokenizer.word_ids(self.mapping[lab]) for lab in self.labels}

    # ---------------------------------------------------------------------------------------- substitution
    def _pattern(self, words: Iterable[str]) -> re.Pattern[str]:
        words = sorted(set(words), key=len, reverse=True)  # longest first: "answer agree" before "answer"
        alts = "|".join(r"\s+".join(re.escape(part) for part in w.split()) for w in words)
        flags = re.IGNORECASE if self.ignore_case else 0
        return re.compile(rf"(?<!{_WORD_CHAR})(?:{alts})(?!{_WORD_CHAR})", flags)

    def substitute(self, text: str, labels: Iterable[str] | None = None) -> str:
        """Replaces whole-word occurrences of labels by their symbols in one pass.

        Args:
            text: Input text.
            labels: Which labels to replace (all when None). Pass only what the caller means to replace: a label
                word inside an instruction is text, not a label.
        """
        chosen = self.labels if labels is None else [lab for lab in labels]
        for lab in chosen:
            self.symbol_for(lab)
        if not chosen or not text:
            return text
        lookup = {self._norm(lab): lab for lab in chosen}
        return self._pattern(chosen).sub(lambda m: self.mapping[lookup[self._norm(m.group(0))]], text)

    def _norm(self, s: str) -> str:
        s = " ".join(s.split())
        return s.casefold() if self.ignore_case else s

    def decode_prediction(self, text: str, multi_label: bool = False) -> str | list[str] | None:
        """Maps generated text back to label(s).

        Single-label: the label whose symbol the text is (after stripping spaces and punctuation), otherwise the
        first symbol occurring as a whole word; None if no symbol occurs (an "invalid" prediction).
        Multi-label: every label whose symbol occurs as a whole word, in order of appearance, without repeats.
        """
        if not multi_label:
            stripped = text.strip().strip(".,;:!?\"'()[]").strip()
            exact = self.label_for(stripped)
            if exact is not None:
                return exact
        found: list[str] = []
        for m in self._pattern(self.symbols).finditer(text):
            lab = self.label_for(" ".join(m.group(0).split()))
            if lab is not None and lab not in found:
                found.append(lab)
        if multi_label:
            return found
        return found[0] if found else None

    # -------------------------------------------------------------------------------------------- history
    def update(self, mapping: Mapping[str, str], cycle: int, source: str, note: str = "") -> None:
        """Makes ``mapping`` (complete, or partial: missing labels keep their symbol) current and records it."""
        unknown = [lab for lab in mapping if lab not in self.mapping]
        if unknown:
            raise UnknownLabelError(f"unknown label(s) {unknown}; known labels: {self.labels}")
        new = {**self.mapping, **mapping}
        self._validate(new)
        self.mapping = new
        self.history.append(HistoryEntry(cycle=cycle, source=source, mapping=dict(new), note=note))

    def rollback(self, to_index: int = -2, *, cycle: int | None = None, note: str = "") -> None:
        """Restores the mapping of an earlier history entry and records the rollback as a new entry.

        Args:
            to_index: History index to restore (default: the entry before the current one).
            cycle: Cycle number for the new entry (default: the current cycle).
            note: Why the rollback happened.
        """
        target = self.history[to_index]
        self.update(target.mapping, self.cycle if cycle is None else cycle, "rollback", note)

    def symbol_history(self, label: str) -> list[str]:
        """The symbol of ``label`` in every history entry."""
        self.symbol_for(label)
        return [h.mapping[label] for h in self.history]

    # ------------------------------------------------------------------------------------------ persistence
    def state_dict(self) -> dict[str, Any]:
        """Plain-type state (safe for ``weights_only=True`` checkpoints and JSON)."""
        return {
            "labels": list(self.labels),
            "mapping": dict(self.mapping),
            "history": [asdict(h) for h in self.history],
            "ignore_case": self.ignore_case,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replaces this book's content in place (objects holding a reference to it see the change)."""
        other = SymbolBook.from_state_dict(state)
        self.labels, self.mapping, self.history = other.labels, other.mapping, other.history
        self.ignore_case = other.ignore_case

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> SymbolBook:
        """Rebuilds a book from `state_dict` output."""
        return cls(
            labels=state["labels"],
            mapping=state["mapping"],
            history=[HistoryEntry(**h) for h in state["history"]],
            ignore_case=bool(state.get("ignore_case", False)),
        )
