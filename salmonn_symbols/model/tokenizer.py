"""Tokenizers that exist without a download.

* `whisper_gpt2_tokenizer`: GPT-2's byte-level BPE, built from the vocabulary that openai-whisper bundles.
* `build_tiny_llama_tokenizer`: a LLaMA-style SentencePiece BPE ("▁" word starts, byte fallback, <s> </s>),
  trained in a second from the packaged corpus. It is the tokenizer of the ``tiny`` model size.

Both are ordinary ``transformers`` fast tokenizers: ``save_pretrained`` writes a folder that
``AutoTokenizer.from_pretrained`` loads, the same path a real Vicuna tokenizer takes. A Vicuna/LLaMA folder
often holds only the SentencePiece ``tokenizer.model``: reading it needs the ``sentencepiece`` package, which
`load_tokenizer` checks first, so a missing package is named instead of failing deep inside ``transformers``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from importlib import resources

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

__all__ = ["build_tiny_llama_tokenizer", "load_tokenizer", "tiny_corpus", "whisper_gpt2_tokenizer"]

_GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def tiny_corpus() -> list[str]:
    """The packaged training text: a few KB of sentences plus the English word list."""
    assets = resources.files("salmonn_symbols.assets")
    lines = assets.joinpath("tiny_corpus.txt").read_text("utf-8").splitlines()
    words = assets.joinpath("english_words_4_5.txt").read_text("utf-8").split()
    return [ln for ln in lines if ln.strip()] + [" ".join(words[i : i + 16]) for i in range(0, len(words), 16)]


def build_tiny_llama_tokenizer(vocab_size: int = 2000, texts: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """Trains a LLaMA-style BPE tokenizer (deterministic for a given corpus).

    Args:
        vocab_size: Target vocabulary size, special and byte tokens included.
        texts: Training text; the packaged corpus by default.
    """
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True)
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<unk>", "<s>", "</s>", *byte_tokens],
        show_progress=False,
        initial_alphabet=list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"),
    )
    tok.train_from_iterator(list(texts) if texts is not None else tiny_corpus(), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<unk>",
        add_bos_token=False,
        clean_up_tokenization_spaces=False,
    )


def whisper_gpt2_tokenizer() -> PreTrainedTokenizerFast:
    """GPT-2's tokenizer (50257 ids) from the ``gpt2.tiktoken`` file bundled with openai-whisper."""
    import whisper
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = os.path.join(os.path.dirname(whisper.__file__), "assets", "gpt2.tiktoken")
    backend = TikTokenConverter(vocab_file=path, pattern=_GPT2_PATTERN).converted()
    backend.add_special_tokens(["<|endoftext|>"])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<|endoftext|>",
        eos_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        clean_up_tokenization_spaces=False,
    )


# files any HF tokenizer folder has at least one of
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "vocab.txt", "tokenizer_config.json")


def _check_folder(folder: str) -> None:
    """Fails early, naming ``folder``, when it cannot hold a tokenizer that this environment can read."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"tokenizer folder not found: {folder} (expected a local HF tokenizer folder)")
    files = set(os.listdir(folder))
    if not files & set(_TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder}: no tokenizer files (expected one of {', '.join(_TOKENIZER_FILES)})")
    if "tokenizer.model" in files and "tokenizer.json" not in files:
        try:
            import sentencepiece  # noqa: F401
        except ImportError as e:
            raise ImportError(
                f"{folder}: the tokenizer is a SentencePiece tokenizer.model (LLaMA / Vicuna) without a "
                f"tokenizer.json, and reading it needs the sentencepiece package: pip install sentencepiece "
                f"(a dependency of salmonn_symbols)"
            ) from e


def load_tokenizer(spec: str):
    """Loads a tokenizer from a local HF folder, or a built-in one: ``builtin:gpt2`` or ``builtin:tiny``.

    Raises:
        FileNotFoundError: naming the folder when it does not exist or holds no tokenizer files.
        ImportError: naming the folder when its SentencePiece model needs the missing ``sentencepiece``.
    """
    if spec == "builtin:gpt2":
        return whisper_gpt2_tokenizer()
    if spec == "builtin:tiny":
        return build_tiny_llama_tokenizer()
    if spec.startswith("builtin:"):
        raise ValueError(f"unknown built-in tokenizer {spec!r}; expected builtin:gpt2 or builtin:tiny")
    _check_folder(spec)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(spec, local_files_only=True)
