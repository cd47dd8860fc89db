"""Shared fixtures: real tokenizers built offline, and a random embedding matrix for them."""

from __future__ import annotations

import pytest
import torch

from salmonn_symbols.model.tokenizer import build_tiny_llama_tokenizer, whisper_gpt2_tokenizer
from salmonn_symbols.symbols import SymbolTokenizer


@pytest.fixture(scope="session")
def llama_tok():
    """LLaMA-style SentencePiece BPE (2000 ids) trained from the packaged corpus."""
    return build_tiny_llama_tokenizer(2000)


@pytest.fixture(scope="session")
def gpt2_tok():
    """GPT-2 byte-level BPE from openai-whisper's bundled vocabulary."""
    return whisper_gpt2_tokenizer()


@pytest.fixture(scope="session")
def llama_sym(llama_tok):
    return SymbolTokenizer(llama_tok)


@pytest.fixture(scope="session")
def gpt2_sym(gpt2_tok):
    return SymbolTokenizer(gpt2_tok)


@pytest.fixture(params=["llama", "gpt2"])
def any_sym(request, llama_sym, gpt2_sym):
    return {"llama": llama_sym, "gpt2": gpt2_sym}[request.param]


@pytest.fixture(scope="session")
def llama_vocab(llama_sym):
    """A random (V, D) embedding matrix for the tiny tokenizer; D is large enough that random rows are
    nearly orthogonal (|cos| < 0.3)."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(llama_sym.vocab_size + 8, 256, generator=g)  # 8 padded rows, as real checkpoints have
