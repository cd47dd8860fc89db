"""How a tokenizer splits a word *where symbols are used*: after a space, inside a sentence.

A symbol such as "kesh" appears in prompts ("Output: kesh") and in targets. Its token ids must be the same in
every such context, because the model finds symbol positions by token-id spans. `SymbolTokenizer` computes
those in-context ids once for any HF tokenizer (SentencePiece, byte-level BPE or WordPiece), checks that they
are stable across contexts and decode back to the word, and tells word-initial pieces from continuations.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

__all__ = ["DEFAULT_CONTEXTS", "PieceScheme", "SymbolTokenizer", "WordCheck"]

# (prefix, suffix) pairs around " {word}". The ids of the word must be identical in all of them.
DEFAULT_CONTEXTS: tuple[tuple[str, str], ...] = (
    ("Output:", ""),
    ("Output:", "\n"),
    ("The answer is", "."),
    ("Options: yes,", ", no"),
    ("Here it is", " and more"),
)


class PieceScheme:
    """How a tokenizer marks word boundaries in its pieces."""

    SENTENCEPIECE = "sentencepiece"  # "▁word" starts a word
    BYTE_BPE = "byte_bpe"  # "Ġword" starts a word
    WORDPIECE = "wordpiece"  # "##ing" continues a word
    NONE = "none"  # no marker: every piece may start a word


@dataclass(frozen=True)
class WordCheck:
    """Result of checking a word against the in-context tokenization rules.

    Attributes:
        ok: Whether every rule holds.
        ids: The word's token ids in context (empty when the contexts disagree).
        reason: Short machine-readable reason when ``ok`` is false.
    """

    ok: bool
    ids: tuple[int, ...]
    reason: str = ""


class SymbolTokenizer:
    """Wraps an HF tokenizer with the in-context views that symbols need.

    Args:
        tokenizer: Any ``transformers`` tokenizer (``PreTrainedTokenizerBase``).
        contexts: (prefix, suffix) pairs the word is placed between, after a space.
    """

    def __init__(self, tokenizer, contexts: Sequence[tuple[str, str]] = DEFAULT_CONTEXTS):
        if not contexts:
            raise ValueError("SymbolTokenizer needs at least one (prefix, suffix) context")
        self.tokenizer = tokenizer
        self.contexts = tuple(contexts)
        self._prefix_ids = {p: self._encode(p) for p, _ in self.contexts}

    # ----------------------------------------------------------------------------------------------- encoding
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def decode(self, ids: Iterable[int]) -> str:
        """Decodes ids without special tokens and without clean-up of spaces."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=False, clean_up_tokenization_spaces=False)

    def context_ids(self, word: str, context: tuple[str, str] | None = None) -> list[int] | None:
        """Token ids of ``" " + word`` inside ``context``, or None if the word merges with its neighbours."""
        prefix, suffix = context or self.contexts[0]
        p = self._prefix_ids[prefix] if prefix in self._prefix_ids else self._encode(prefix)
        bare = self._encode(f"{prefix} {word}")
        if bare[: len(p)] != p or len(bare) == len(p):
            return None
        ids = bare[len(p) :]
        if suffix:
            full = self._encode(f"{prefix} {word}{suffix}")
            if full[: len(bare)] != bare:
                return None
        return ids

    def word_ids(self, word: str) -> list[int]:
        """The ids of ``word`` in the first context, with no checks; used for label words and phrases."""
        ids = self.context_ids(word, (self.contexts[0][0], ""))
        if ids is None:  # the word merged into the prefix: fall back to its ids after a lone space
            ids = self._encode(f" {word}")
        return ids

    def check_word(self, word: str) -> WordCheck:
        """Checks that ``word`` has the same ids in every context and decodes back to itself."""
        first: list[int] | None = None
        for ctx in self.contexts:
            ids = self.context_ids(word, ctx)
            if ids is None:
                return WordCheck(False, (), "merges_with_context")
            if first is None:
                first = ids
            elif ids != first:
                return WordCheck(False, (), "context_dependent")
        assert first is not None
        if self.decode(first).strip() != word:
            return WordCheck(False, tuple(first), "no_round_trip")
        return WordCheck(True, tuple(first))

    def round_trip(self, ids: Sequence[int]) -> str | None:
        """Decodes ``ids`` to a single word and re-encodes it; returns the word if the ids come back unchanged."""
        text = self.decode(ids).strip()
        if not text or any(ch.isspace() for ch in text):
            return None
        check = self.check_word(text)
        return text if check.ok and list(check.ids) == list(ids) else None

    # -------------------------------------------------------------------------------------------- vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of ids the tokenizer can produce, added tokens included."""
        return len(self.tokenizer)

    @cached_property
    def pieces(self) -> list[str]:
        """The raw piece string of every id (``convert_ids_to_tokens``), '' for unused ids."""
        toks = self.tokenizer.convert_ids_to_tokens(list(range(self.vocab_size)))
        return [t if isinstance(t, str) else "" for t in toks]

    @cached_property
    def texts(self) -> list[str]:
        """The decoded text of every id on its own."""
        return self.tokenizer.batch_decode(
            [[i] for i in range(self.vocab_size)], skip_special_tokens=False, clean_up_tokenization_spaces=False
        )

    @cached_property
    def scheme(self) -> str:
        """The word-boundary marker convention of this tokenizer (a `PieceScheme` value)."""
        pieces = self.pieces
        n = max(1, len(pieces))
        if sum(p.startswith("▁") for p in pieces) > 0.05 * n:
            return PieceScheme.SENTENCEPIECE
        if sum(p.startswith("Ġ") for p in pieces) > 0.05 * n:
            return PieceScheme.BYTE_BPE
        if sum(p.startswith("##") for p in pieces) > 0.05 * n:
            return PieceScheme.WORDPIECE
        return PieceScheme.NONE

    def is_word_initial(self, token_id: int) -> bool:
        """Whether a piece starts a word (always true when the tokenizer marks nothing)."""
        piece = self.pieces[token_id]
        if self.scheme == PieceScheme.SENTENCEPIECE:
            return piece.startswith("▁")
        if self.scheme == PieceScheme.BYTE_BPE:
            return piece.startswith("Ġ")
        if self.scheme == PieceScheme.WORDPIECE:
            return not piece.startswith("##")
        return True

    @cached_property
    def single_token_words(self) -> frozenset[str]:
        """Lower-cased stripped text of every piece: words that already exist as one vocabulary token."""
        return frozenset(t.strip().lower() for t in self.texts if t.strip())

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids of special and added tokens."""
        ids = set(self.tokenizer.all_special_ids)
        ids.update(getattr(self.tokenizer, "added_tokens_decoder", {}).keys())
        return frozenset(i for i in ids if i is not None)
