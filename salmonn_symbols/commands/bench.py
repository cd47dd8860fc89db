"""Benchmark of the symbol core at real vocabulary size: soft quantization (forward + backward through the
symbol MLP), the codebook's fp32 refresh, and discovery's top-k over the full vocabulary.

Prints the figures and writes them to a JSON file. Random weights; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ..io import atomic_write_json
from ..symbols import Codebook, SymbolMLP, soft_quantize, topk_candidates

__all__ = ["add_args", "run", "run_bench"]


def add_args(p: argparse.ArgumentParser) -> None:
    """Adds the benchmark's options to ``p``."""
    p.add_argument(
        "--what",
        choices=["core", "model", "scaling", "planted", "fit"],
        default="core",
        help="core: quantization and discovery at full vocabulary; model: a training step of --size; "
        "scaling: DDP throughput of --size at each count in --devices; planted: the known-answer benchmark of "
        "discovery (plants the right symbols in a tiny base and runs the cycle); fit: the real fit of --config, timed "
        "per phase, uncached and cached, on each device count in --devices (N > 1 through scripts/train_cycles.sh)",
    )
    p.add_argument(
        "--devices", default=None, help="device counts for --what scaling (default 1,2) and fit (default 1), e.g. 1,2"
    )
    p.add_argument("--size", default="tiny", help="model size for --what model (tiny, salmonn-7b, salmonn-13b)")
    p.add_argument(
        "--batch", type=int, default=None, help="batch size per device for --what model (default 8); fit: the config's"
    )
    p.add_argument("--seconds", type=float, default=30.0, help="audio seconds per sample for --what model")
    p.add_argument("--steps", type=int, default=5, help="measured steps for --what model")
    p.add_argument("--warmup", type=int, default=2, help="warm-up steps for --what model")
    p.add_argument(
        "--tokens",
        type=int,
        default=134,
        help="LLM tokens per sample for --what model/scaling (134: the performance note's reference: 88 speech "
        "tokens, the prefix, the instruction and the target)",
    )
    p.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="torch.compile each transformer block (default: on with CUDA, off on the CPU)",
    )
    p.add_argument("--timeout", type=float, default=3600, help="seconds each device count of --what scaling may take")
    p.add_argument(
        "--profile",
        default=None,
        help="--what model: folder for Chrome traces of a step per phase; --what fit: any value adds the per-stage "
        "times of a step and a trace per phase and rank (in <run>/bench/)",
    )
    p.add_argument("--vocab-size", type=int, default=32001, help="rows of the vocabulary (Vicuna: 32001)")
    p.add_argument("--dim", type=int, default=5120, help="embedding width (13B: 5120, 7B: 4096)")
    p.add_argument("--positions", type=int, default=512, help="symbol-token positions per step")
    p.add_argument("--hidden", type=int, default=16, help="symbol MLP width")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"], help="vocabulary dtype")
    p.add_argument("--iters", type=int, default=0, help="measured iterations (0: 20 on GPU, 3 on CPU)")
    p.add_argument("--out", default=None, help="JSON result file (default: runs/bench/<what>.json)")
    from .fit_bench import add_fit_args
    from .planted import add_planted_args

    add_planted_args(p)
    add_fit_args(p)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, iters: int, device: torch.device) -> float:
    fn()  # warm-up
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(iters):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / iters


def run_bench(args: argparse.Namespace) -> dict:
    """Runs the benchmark described by ``args`` (see `add_bench_args`) and returns the figures."""
    args.out = args.out or f"runs/bench/{args.what}.json"
    if args.what == "fit":
        from .fit_bench import run_fit_bench

        return run_fit_bench(args)
    args.batch = args.batch or 8
    args.devices = args.devices or "1,2"
    if args.what == "model":
        from .model_bench import run_model_bench

        return run_model_bench(args)
    if args.what == "scaling":
        from .model_bench import run_scaling_bench

        return run_scaling_bench(args)
    if args.what == "planted":
        from .planted import run_planted_bench

        return run_planted_bench(args)
    device = torch.device(
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[args.dtype]
    iters = args.iters or (20 if device.type == "cuda" else 3)
    g = torch.Generator(device=device).manual_seed(0)
    vocab = torch.randn(args.vocab_size, args.dim, device=device, dtype=dtype, generator=g)
    mlp = SymbolMLP(args.dim, args.hidden).to(device)
    ids = torch.randint(0, args.vocab_size, (args.positions,), device=device, generator=g)
    emb = vocab[ids]
    codebook = Codebook(vocab)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def refresh():
        codebook._key = None
        codebook.vectors  # noqa: B018  (rebuilds the fp32 copy)

    def step():
        mlp.zero_grad(set_to_none=True)
        soft_quantize(mlp(emb), codebook, 0.05).square().mean().backward()

    def discover():
        with torch.no_grad():
            topk_candidates(mlp(emb), codebook, 10)

    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "vocab_size": args.vocab_size,
        "dim": args.dim,
        "positions": args.positions,
        "dtype": args.dtype,
        "iters": iters,
        "codebook_refresh_ms": 1e3 * _time(refresh, iters, device),
        "soft_quantize_fwd_bwd_ms": 1e3 * _time(step, iters, device),
        "discovery_topk_ms": 1e3 * _time(discover, iters, device),
    }
    flops = 3 * 2 * 2 * args.positions * args.vocab_size * args.dim  # cos + mix matmuls, forward and backward
    res["soft_quantize_tflops"] = flops / (res["soft_quantize_fwd_bwd_ms"] / 1e3) / 1e12
    if device.type == "cuda":
        res["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    for k, v in res.items():
        print(f"{k:28s} {v:.3f}" if isinstance(v, float) else f"{k:28s} {v}")
    atomic_write_json(args.out, res)
    print(f"wrote {args.out}")
    return json.loads(json.dumps(res))


def run(args: argparse.Namespace) -> int:
    """Runs ``bench``."""
    run_bench(args)
    return 0
