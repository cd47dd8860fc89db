"""``make demo``: the symbol-discovery core end to end on the built-in tiny tokenizer.

The training demo (tiny SALMONN on a synthetic espeak-ng speech set) is not yet available; until it is, the demo
shows one cycle of the core with a stand-in objective: the symbol MLP is trained through soft quantization to
move each symbol toward a chosen English word, then discovery maps the symbols and writes the cycle files.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .symbols import (
    Codebook,
    SymbolBook,
    SymbolMLP,
    SymbolTokenizer,
    TemperatureSchedule,
    build_candidate_masks,
    english_words,
    final_mapping,
    run_discovery,
    soft_quantize,
    symbol_token_table,
    validate_discovery_dir,
    write_discovery,
)
from .tokenizer_builders import build_tiny_llama_tokenizer

__all__ = ["run_demo"]


def _two_token_words(tok: SymbolTokenizer, n: int) -> list[str]:
    out = []
    for w in sorted(english_words()):
        ids = tok.word_ids(w)
        if len(ids) == 2 and tok.round_trip(ids) == w and tok.is_word_initial(ids[0]):
            out.append(w)
    return out[:: max(1, len(out) // n)][:n]


def run_demo(out: str | Path = "runs/demo", steps: int = 300) -> int:
    """Runs the core demo and writes ``out/discovery/cycle_1_*.json``; returns an exit status."""
    print("salmonn-symbols demo: the full training demo (tiny SALMONN + synthetic speech) is not yet available.")
    print("Running one cycle of the symbol-discovery core on the built-in tiny tokenizer instead.\n")
    torch.manual_seed(0)
    tok = SymbolTokenizer(build_tiny_llama_tokenizer())
    labels = ["alpha", "beta", "gamma", "delta"]
    book = SymbolBook.create(labels, tok, seed=0)
    print("cycle 0 symbols:", book.mapping)
    print("substitution:   ", book.substitute("Output: alpha (not alphabet), then beta.", labels=labels))

    vocab = torch.randn(tok.vocab_size, 64)
    targets = dict(zip(labels, _two_token_words(tok, len(labels)), strict=True))
    print("stand-in goal:  ", targets)
    table = symbol_token_table(book, tok)
    src = torch.tensor([tid for _, _, tid in table])
    dst = torch.tensor([tok.word_ids(targets[lab])[pos] for lab, pos, _ in table])
    masks = build_candidate_masks(tok, vocab.shape[0], labels)
    per_row = masks.for_positions(torch.tensor([pos == 0 for _, pos, _ in table]))
    mlp = SymbolMLP(64, hidden_dim=16, scale=2.0)
    opt = torch.optim.AdamW(mlp.parameters(), lr=3e-2)
    codebook, temp = Codebook(vocab), TemperatureSchedule(0.1, 0.02)
    for step in range(steps):
        soft = soft_quantize(mlp(vocab[src]), codebook, temp(step / steps), per_row)  # (N, D)
        loss = (soft - vocab[dst]).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  T {temp(step / steps):.3f}")

    tokens, changes = run_discovery(book, tok, mlp, vocab, masks)
    disc = Path(out) / "discovery"
    write_discovery(disc, 1, tokens, changes)
    book.update(final_mapping(changes), cycle=1, source="discovered")
    print("\ncycle 1 symbols:", book.mapping)
    for c in changes:
        print(
            f"  {c.original_label:6s} {c.current_symbol:6s} -> {c.discovered_symbol:8s} {c.change_type:9s} "
            f"sim={c.similarity:.2f} ({c.confidence})"
        )
    for p in validate_discovery_dir(disc):
        print(f"schema ok: {p}")
    return 0
