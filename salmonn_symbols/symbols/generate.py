"""Random 2-token symbol words ("duh", "kesh", "zolf", ...) for a given tokenizer.

A usable symbol is a lowercase word of 4-5 characters that
  * tokenizes to exactly ``n_tokens`` tokens where symbols are used (after a space, inside a sentence),
  * decodes back to itself,
  * is neither an English word nor an existing single vocabulary token,
  * shares no token id with another symbol, with any label word, or with reserved ids.
The search is seeded and bounded; when it cannot find enough words it says how many it found and why the
others were rejected.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .tokenization import SymbolTokenizer

__all__ = ["SymbolGenerationError", "english_words", "generate_symbols", "random_word"]

_CONSONANTS = "bcdfghjklmnprstvwz"
_VOWELS = "aeiou"
_CLUSTERS = ("bl", "br", "dr", "fl", "fr", "gl", "gr", "kl", "kr", "pl", "pr", "sk", "sl", "sn", "sp", "st", "tr", "zw")
_CODAS = ("sh", "ck", "lf", "nd", "nk", "rk", "rn", "sk", "st", "th", "x", "z", "rb", "lm")
# Pronounceable shapes keep the 2-token rate high: uniform letter strings mostly split into 3+ pieces.
_SHAPES = ("CVCV", "CVCC", "CCVC", "CVVC", "CVCVC", "CCVCV", "CVCCV", "CCVCC")


class SymbolGenerationError(RuntimeError):
    """The tokenizer could not supply the requested number of valid symbols within the search budget."""

    def __init__(self, found: int, requested: int, attempts: int, rejections: Counter):
        self.found, self.requested, self.attempts, self.rejections = found, requested, attempts, rejections
        why = ", ".join(f"{k}={v}" for k, v in rejections.most_common()) or "none"
        super().__init__(
            f"found only {found} of {requested} valid symbol words after {attempts} attempts "
            f"(rejected: {why}); raise max_attempts, allow n_tokens to differ, or use a tokenizer with a "
            f"larger vocabulary"
        )


@lru_cache(maxsize=4)
def english_words(path: str | None = None) -> frozenset[str]:
    """Lower-cased English words used to reject real words; the packaged 4-5 letter SCOWL list by default.

    Args:
        path: Optional text file with one word per line, replacing the packaged list.
    """
    if path is None:
        text = resources.files("salmonn_symbols.assets").joinpath("english_words_4_5.txt").read_text("utf-8")
    else:
        text = Path(path).read_text("utf-8")
    return frozenset(w.strip().lower() for w in text.splitlines() if w.strip())


def random_word(rng: random.Random, style: str = "pronounceable") -> str:
    """Draws one lowercase word of 4 or 5 letters.

    Args:
        rng: Source of randomness.
        style: "pronounceable" (consonant/vowel shapes) or "uniform" (any letters).
    """
    if style == "uniform":
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.choice((4, 5))))
    if style != "pronounceable":
        raise ValueError(f"unknown symbol style {style!r}; expected 'pronounceable' or 'uniform'")
    while True:
        out = []
        for i, c in enumerate(rng.choice(_SHAPES)):
            if c == "V":
                out.append(rng.choice(_VOWELS))
            elif i == 0 and rng.random() < 0.25:
                out.append(rng.choice(_CLUSTERS))
            elif i > 0 and rng.random() < 0.2:
                out.append(rng.choice(_CODAS))
            else:
                out.append(rng.choice(_CONSONANTS))
        word = "".join(out)
        if 4 <= len(word) <= 5:
            return word


def generate_symbols(
    tokenizer: SymbolTokenizer,
    k: int,
    *,
    labels: Iterable[str] = (),
    seed: int = 0,
    n_tokens: int = 2,
    max_attempts: int = 200_000,
    style: str = "pronounceable",
    exclude_words: Iterable[str] = (),
    reserved_ids: Iterable[int] = (),
    word_list: str | None = None,
) -> list[str]:
    """Generates ``k`` distinct symbol words, deterministically for a given seed and tokenizer.

    Args:
        tokenizer: The model's tokenizer, wrapped.
        k: Number of symbols wanted.
        labels: Label words (or phrases); their in-context tokens are never reused by a symbol.
        seed: Seed of the search.
        n_tokens: Exact token count of each symbol in context.
        max_attempts: Upper bound on drawn candidates.
        style: "pronounceable" or "uniform" letter strings.
        exclude_words: Extra words that must not be drawn (e.g. symbols already in use).
        reserved_ids: Token ids no symbol may contain (e.g. tokens of symbols already in use).
        word_list: Optional path to an English word list replacing the packaged one.

    Returns:
        ``k`` symbol words in the order they were found.

    Raises:
        SymbolGenerationError: If fewer than ``k`` words were found in ``max_attempts`` draws.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    rng = random.Random(f"salmonn-symbols:{seed}")
    labels = list(labels)
    english = english_words(word_list)
    banned = {w.lower() for w in exclude_words} | {w.lower() for lab in labels for w in _label_words(lab)}
    used_ids = set(reserved_ids) | tokenizer.special_ids
    for lab in labels:
        used_ids.update(tokenizer.word_ids(lab))
    found: list[str] = []
    rejections: Counter = Counter()
    attempts = 0
    seen: set[str] = set()
    while len(found) < k and attempts < max_attempts:
        attempts += 1
        word = random_word(rng, style)
        reason = _reject_reason(word, tokenizer, seen, banned, english, used_ids, n_tokens)
        seen.add(word)
        if reason:
            rejections[reason] += 1
            continue
        ids = tokenizer.check_word(word).ids
        used_ids.update(ids)
        found.append(word)
    if len(found) < k:
        raise SymbolGenerationError(len(found), k, attempts, rejections)
    return found


def _label_words(label: str) -> Sequence[str]:
    return [label, *label.replace("_", " ").replace("-", " ").split()]


def _reject_reason(
    word: str,
    tokenizer: SymbolTokenizer,
    seen: set[str],
    banned: set[str],
    english: frozenset[str],
    used_ids: set[int],
    n_tokens: int,
) -> str:
    if word in seen:
        return "duplicate"
    if word in banned:
        return "label_or_excluded_word"
    if word in english:
        return "english_word"
    if word in tokenizer.single_token_words:
        return "single_vocab_token"
    check = tokenizer.check_word(word)
    if not check.ok:
        return check.reason
    if len(check.ids) != n_tokens:
        return f"not_{n_tokens}_tokens"
    if used_ids.intersection(check.ids):
        return "shares_token"
    return ""
