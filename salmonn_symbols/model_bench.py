"""Training-step benchmark of the speech LLM at a named size with random weights, built on the device.

    salmonn-symbols bench --what model --size salmonn-13b --batch 8

Times forward + backward + optimizer step (LoRA phase: LoRA steps, symbols through the frozen MLP with soft
quantization) over a warm-up and a measured window, and prints samples/s, step time and peak memory.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch

from .io import atomic_write_json
from .model.builders import SpeechLLMConfig, build_speech_llm
from .model.prompt import PromptBuilder
from .symbols import SymbolBook, SymbolTokenizer, build_candidate_masks

__all__ = ["run_model_bench"]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _synthetic_batch(tok, book: SymbolBook, batch: int, seconds: float, device: torch.device) -> dict:
    pb = PromptBuilder(tok)
    instr = book.substitute(
        "Listen to the speech and classify its sentiment: positive, negative or neutral. Answer with one word."
    )
    targets = [book.encode_target(book.labels[i % len(book.labels)]) for i in range(batch)]
    n = int(seconds * 16000)
    t = torch.arange(n, device=device) / 16000
    wav = 0.1 * torch.sin(2 * math.pi * 220 * t)[None].repeat(batch, 1)
    out = dict(wav=wav, wav_lengths=torch.full((batch,), n, device=device))
    out.update({k: v.to(device) for k, v in pb([instr] * batch, targets).as_dict().items()})
    return out


def run_model_bench(args: argparse.Namespace) -> dict:
    """Builds ``args.size`` with random weights on the device and times training steps."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cfg = SpeechLLMConfig.from_name(args.size).random()
    cfg.tokenizer_path = "builtin:tiny"  # ids are all that matter with random weights
    t0 = time.perf_counter()
    with torch.device(device), _default_dtype(dtype):
        model, tok = build_speech_llm(cfg)
    build_s = time.perf_counter() - t0
    sym = SymbolTokenizer(tok)
    book = SymbolBook.create(["positive", "negative", "neutral"], sym, seed=0)
    vocab = model.llm.get_input_embeddings().weight.shape[0]
    model.symbols.set_symbols([sym.word_ids(s) for s in book.symbols])
    model.symbols.set_candidate_masks(build_candidate_masks(sym, vocab, book.labels))
    model.symbols.float()
    batch = _synthetic_batch(tok, book, args.batch, args.seconds, device)
    opt = torch.optim.AdamW(model.lora_parameters(), lr=1e-4, fused=device.type == "cuda")
    model.train()

    def step():
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            out = model(batch, symbol_mode="soft", temperature=0.1)
        out.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss

    for _ in range(args.warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / args.steps
    res = {
        "size": args.size,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "batch": args.batch,
        "seconds_audio": args.seconds,
        "build_s": build_s,
        "step_s": dt,
        "samples_per_s": args.batch / dt,
        "loss": loss.item(),
        "llm_params_b": sum(p.numel() for p in model.llm.parameters()) / 1e9,
        "tokens_per_sample": int(batch["prefix_ids"].shape[1] + 88 + batch["text_mask"][0].sum()),
    }
    if device.type == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    for k, v in res.items():
        print(f"{k:20s} {v:.4g}" if isinstance(v, float) else f"{k:20s} {v}")
    if args.out:
        atomic_write_json(args.out, res)
    return res
