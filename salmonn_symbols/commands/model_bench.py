"""Training-step benchmark of the speech LLM at a named size with random weights, built on the device.

    salmonn-symbols bench --what model --size salmonn-13b --batch 8

Times the training step that ``fit`` runs (`training.step.PhaseStep`: forward, backward, clipping, the non-finite
guard, the active optimizer and its schedule) in the LoRA phase and the MLP phase, each with the speech path
computed and with it served by the `SpeechCache`, over a warm-up and a measured window. Every step copies its
batch from pinned host memory, as the DataLoader hands it over. Prints
samples/s, LLM tokens/s, the encoders' share of the step, peak memory and MFU against 989.4 TFLOP/s and against
a bf16 matmul measured in the same run. ``--profile DIR`` also writes a Chrome trace of each phase and checks
that the step issues the same operators whatever the sequence length (no per-token Python work).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time

import torch

from ..data.prompt import PromptBuilder
from ..io import atomic_write_json
from ..model.builders import SpeechLLMConfig, build_speech_llm
from ..model.qformer import num_windows
from ..symbols import SymbolBook, SymbolTokenizer, build_candidate_masks

__all__ = ["run_model_bench"]


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def _synthetic_batch(
    tok, book: SymbolBook, batch: int, seconds: float, device: torch.device, tokens: int | None = None
) -> dict:
    """A batch of sine clips with a symbol-substituted instruction and symbol targets.

    Args:
        tokens: LLM tokens per sample (prefix + speech + text); the instruction is cut or padded at its start
            to reach it. None keeps the instruction as it is.
    """
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
    out["target_len"] = int((out["labels"] != -100).sum(1).max())  # as the collate function gives it
    if tokens is not None:
        _fit_text(out, tokens - out["prefix_ids"].shape[1] - num_windows(1500))
    return out


def _fit_text(batch: dict, length: int) -> None:
    """Cuts or pads (with a filler token) the start of the text part so that it is ``length`` tokens long."""
    have = batch["text_ids"].shape[1]
    if length < int((batch["labels"][0] != -100).sum()) + 1:
        raise ValueError(f"--tokens leaves {length} text tokens, too few for the target")
    batch["prompt_lengths"] = batch["prompt_lengths"] + (length - have)  # the cut or pad is in the prompt
    for key, fill in (("text_ids", 29), ("text_mask", 1), ("labels", -100)):
        v = batch[key]
        if have >= length:
            batch[key] = v[:, have - length :]
        else:
            pad = torch.full((v.shape[0], length - have), fill, dtype=v.dtype, device=v.device)
            batch[key] = torch.cat([pad, v], dim=1)


def _flops_per_sample(model, tokens: int) -> dict[str, float]:
    """Model FLOPs of one training sample (docs: performance note): frozen encoders run forward only (2·N·T plus
    attention); the frozen LLM runs forward and the input-gradient half of backward (4·N·T)."""

    def encoder(params: int, n_tok: int, layers: int, width: int) -> float:
        return 2 * params * n_tok + 4 * layers * n_tok**2 * width

    w = model.whisper.config
    f_whisper = encoder(
        sum(p.numel() for p in model.whisper.parameters()), w.max_source_positions, w.encoder_layers, w.d_model
    )
    f_beats = 0.0
    if model.beats is not None:
        c = model.beats.cfg
        f_beats = encoder(sum(p.numel() for p in model.beats.parameters()), 1496, c.encoder_layers, c.encoder_embed_dim)
    base = model.llm.get_base_model()
    emb = base.get_input_embeddings().weight.numel()
    n_llm = sum(p.numel() for n, p in base.named_parameters() if "lora_" not in n and p.dim() == 2) - emb
    return {"whisper": f_whisper, "beats": f_beats, "llm": 4.0 * n_llm * tokens}


def _matmul_tflops(device: torch.device) -> float:
    """bf16 8192³ matmul throughput measured now, the practical ceiling for MFU."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192**3 / (time.perf_counter() - t0) / 1e12


def _timed(fn, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / steps


def _bench_model(size: str, device: torch.device, dtype: torch.dtype):
    """A named size with random weights built directly on ``device`` in ``dtype``, with 3 symbols set up."""
    cfg = SpeechLLMConfig.from_name(size).random()
    cfg.tokenizer_path = "builtin:tiny"  # ids are all that matter with random weights
    with torch.device(device), _default_dtype(dtype):
        model, tok = build_speech_llm(cfg)
    sym = SymbolTokenizer(tok)
    book = SymbolBook.create(["positive", "negative", "neutral"], sym, seed=0)
    vocab = model.llm.get_input_embeddings().weight.shape[0]
    model.symbols.set_symbols([sym.word_ids(s) for s in book.symbols])
    model.symbols.set_candidate_masks(build_candidate_masks(sym, vocab, book.labels))
    model.symbols.float()  # the symbol MLP trains in fp32
    return model, tok, book


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _pinned(batch: dict) -> dict:
    """The batch in (pinned, on CUDA machines) host memory, as a DataLoader with ``pin_memory`` delivers it."""
    pin = torch.cuda.is_available()
    return {k: (v.cpu().pin_memory() if pin else v.cpu()) if torch.is_tensor(v) else v for k, v in batch.items()}


def _prepare(args: argparse.Namespace, device: torch.device):
    """Model, pinned host batch and a filled speech cache for ``args``; compiled blocks when ``args.compile``."""
    from ..training.compile import compile_blocks
    from ..training.speech_cache import SpeechCache

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, tok, book = _bench_model(args.size, device, dtype)
    if args.compile:
        compile_blocks(model)
    host = _pinned(_synthetic_batch(tok, book, args.batch, args.seconds, device, args.tokens))
    keys = [f"clip{i}" for i in range(args.batch)]
    cache = SpeechCache(None, "bench")
    model.train()
    with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        cache.speech(model, _to_device(host, device), keys)  # fills it: later steps only read
    return model, host, keys, cache, dtype


def _optimizers(model) -> tuple[list, list]:
    """The optimizers and LR schedules of ``fit`` (fused AdamW, no warm-up)."""
    from ..training.step import phase_optimizers

    opts, scheds = phase_optimizers(model, 1e-4, 1e-4, 0.01, 1e-4, 0)
    return dict(zip(("lora", "mlp"), opts, strict=True)), dict(zip(("lora", "mlp"), scheds, strict=True))


def _step_fn(model, host: dict, keys: list[str], cache, device, dtype, opts, phase: str, use_cache: bool, module=None):
    """The training step of ``fit`` (`PhaseStep`: forward, backward, clipping, the non-finite guard, the active
    optimizer and its schedule), fed as ``fit`` feeds it: the batch copied from pinned host memory, the speech
    from the cache or the encoders."""
    from ..training.step import PhaseStep

    autocast = torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda")
    step = PhaseStep(model, *opts)

    def run():
        batch = _to_device(host, device)
        with autocast:
            speech = cache.speech(model, batch, keys) if use_cache else None
            step(batch, phase, 0.1, speech=speech, forward=module)

    return run


def run_model_bench(args: argparse.Namespace) -> dict:
    """Builds ``args.size`` with random weights on the device and times training steps of both phases, with
    and without the speech cache."""
    device = torch.device("cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")
    if args.compile is None:
        args.compile = device.type == "cuda"
    t0 = time.perf_counter()
    model, host, keys, cache, dtype = _prepare(args, device)
    build_s = time.perf_counter() - t0
    opts = _optimizers(model)
    batch = _to_device(host, device)
    autocast = torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda")

    def encode():
        with torch.no_grad(), autocast:
            model.encode_speech(batch["wav"], batch["wav_lengths"])

    tokens = int(batch["prefix_ids"].shape[1] + num_windows(1500) + batch["text_mask"][0].sum())
    flops = _flops_per_sample(model, tokens)
    matmul = _matmul_tflops(device)
    enc_s = _timed(encode, args.steps, args.warmup, device)
    res: dict = {
        "size": args.size,
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
        "batch": args.batch,
        "seconds_audio": args.seconds,
        "tokens_per_sample": tokens,
        "compile": args.compile,
        "build_s": build_s,  # with --compile, includes compiling the encoder blocks
        "encoder_step_s": enc_s,
        "matmul_tflops": matmul,
        "llm_params_b": sum(p.numel() for p in model.llm.parameters()) / 1e9,
        "tflop_per_sample": {k: v / 1e12 for k, v in flops.items()},
        "runs": [],
    }
    for phase in ("lora", "mlp"):
        for use_cache in (False, True):
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            step = _step_fn(model, host, keys, cache, device, dtype, opts, phase, use_cache)
            dt = _timed(step, args.steps, args.warmup, device)
            f = args.batch * (flops["llm"] + (0 if use_cache else flops["whisper"] + flops["beats"]))
            run = {
                "phase": phase,
                "cache": use_cache,
                "step_s": dt,
                "samples_per_s": args.batch / dt,
                "llm_tokens_per_s": args.batch * tokens / dt,
                "encoder_share": 0.0 if use_cache else min(1.0, enc_s / dt),
                "mfu_989": f / dt / 989.4e12,
                "mfu_matmul": f / dt / (matmul * 1e12),
            }
            if device.type == "cuda":
                run["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
            res["runs"].append(run)
    if args.profile:
        res["profile"] = _profile(args, model, host, keys, cache, device, dtype, opts)
    _print(res)
    if args.out:
        atomic_write_json(args.out, res)
    return res


def _profile(args, model, host, keys, cache, device, dtype, opts) -> dict:
    """Chrome traces of one step per phase (cache off) in ``args.profile``, the top device kernels, and the
    operator count of a step at the bench's text length and at twice it: equal counts mean no per-token work."""
    from pathlib import Path

    from torch.profiler import ProfilerActivity, profile

    folder = Path(args.profile)
    folder.mkdir(parents=True, exist_ok=True)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out: dict = {"traces": []}
    for phase in ("lora", "mlp"):
        step = _step_fn(model, host, keys, cache, device, dtype, opts, phase, False)
        with profile(activities=acts) as prof:
            step()
            if device.type == "cuda":
                torch.cuda.synchronize()
        trace = folder / f"step_{phase}.json"
        prof.export_chrome_trace(str(trace))
        out["traces"].append(str(trace))
        if phase == "lora":
            sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
            print(prof.key_averages().table(sort_by=sort, row_limit=15, max_name_column_width=70))
    counts = {}
    for scale in (1, 2):
        longer = dict(host)
        _fit_text(longer, host["text_ids"].shape[1] * scale)
        step = _step_fn(model, longer, keys, cache, device, dtype, opts, "lora", True)
        step()  # compiles the new length first
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        counts[scale] = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    out["aten_ops_per_step"] = {"text_tokens": counts[1], "twice_the_text_tokens": counts[2]}
    print(f"aten ops per step: {counts[1]} at {host['text_ids'].shape[1]} text tokens, {counts[2]} at twice that")
    return out


def _print(res: dict) -> None:
    print(
        f"{res['size']} on {res['device']}, batch {res['batch']}, {res['tokens_per_sample']} LLM tokens/sample, "
        f"compile {res['compile']}, "
        f"bf16 matmul {res['matmul_tflops']:.0f} TFLOP/s, encoders {res['encoder_step_s'] * 1e3:.1f} ms/batch"
    )
    print(
        "| phase | cache | step (ms) | samples/s | LLM tok/s | encoder share | MFU (989.4) | MFU (matmul) | peak GiB |"
    )
    print("|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in res["runs"]:
        print(
            f"| {r['phase']} | {'on' if r['cache'] else 'off'} | {r['step_s'] * 1e3:.1f} | {r['samples_per_s']:.1f} | "
            f"{r['llm_tokens_per_s']:.0f} | {r['encoder_share']:.0%} | {r['mfu_989']:.1%} | {r['mfu_matmul']:.1%} | "
            f"{r.get('peak_memory_gib', float('nan')):.1f} |"
        )


def _ddp_step_times(rank: int, args: argparse.Namespace, device: torch.device) -> dict[bool, float]:
    """Step time of this rank with the speech cache off and on, under DDP; the DDP wrapper dies on return."""
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    cuda = device.type == "cuda"
    torch.manual_seed(0)
    model, host, keys, cache, dtype = _prepare(args, device)
    ddp = DDP(model, device_ids=[rank] if cuda else None)  # registers LoRA + MLP, the trainable groups
    opts = _optimizers(model)
    out = {}
    for use_cache in (False, True):
        step = _step_fn(model, host, keys, cache, device, dtype, opts, "lora", use_cache, module=ddp)
        dist.barrier()
        out[use_cache] = _timed(step, args.steps, args.warmup, device)
    return out


def _scaling_worker(rank: int, world: int, args: argparse.Namespace, port: int, results) -> None:
    import os

    import torch.distributed as dist

    cuda = torch.cuda.is_available() and args.device != "cpu"
    # as Lightning does for its processes: ranks that each take every core slow each other's host work down
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world)
    try:
        device = torch.device("cuda", rank) if cuda else torch.device("cpu")
        if cuda:
            torch.cuda.set_device(device)
        out = _ddp_step_times(rank, args, device)
        times = [None] * world
        dist.all_gather_object(times, out)
        if rank == 0:
            results.put({c: max(t[c] for t in times) for c in (False, True)})  # the slowest rank sets the pace
        # Every collective done and the DDP reducer gone before the group is torn down: gloo's destructor joins
        # its worker thread while holding the GIL, and would wait forever for a work item still releasing a tensor.
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_scaling_bench(args: argparse.Namespace) -> dict:
    """DDP training-step throughput at each device count in ``args.devices`` with the same per-device batch."""
    import socket

    import torch.multiprocessing as mp

    counts = [int(x) for x in str(args.devices).split(",")]
    if args.compile is None:
        args.compile = torch.cuda.is_available() and args.device != "cpu"
    ctx = mp.get_context("spawn")
    res: dict = {"size": args.size, "batch_per_device": args.batch, "runs": []}
    for n in counts:
        with socket.socket() as s:  # a free port for this process group
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        queue = ctx.Queue()
        procs = mp.start_processes(
            _scaling_worker, args=(n, args, port, queue), nprocs=n, join=False, start_method="spawn"
        )
        deadline = time.monotonic() + args.timeout
        while not procs.join(timeout=5):  # re-raises a worker's error
            if time.monotonic() > deadline:
                for p in procs.processes:
                    p.kill()
                raise TimeoutError(f"the {n}-process scaling run took more than --timeout {args.timeout} s")
        times = queue.get()
        for cache, dt in times.items():
            res["runs"].append({"devices": n, "cache": cache, "step_s": dt, "samples_per_s": n * args.batch / dt})
    base = {r["cache"]: r["samples_per_s"] for r in res["runs"] if r["devices"] == counts[0]}
    print(f"{args.size}, batch {args.batch} per device, {args.tokens} LLM tokens/sample, compile {args.compile}")
    print("| devices | cache | step (ms) | samples/s | scaling |")
    print("|--:|---|--:|--:|--:|")
    for r in res["runs"]:
        r["scaling"] = r["samples_per_s"] / base[r["cache"]]
        print(
            f"| {r['devices']} | {'on' if r['cache'] else 'off'} | {r['step_s'] * 1e3:.1f} | "
            f"{r['samples_per_s']:.1f} | {r['scaling']:.2f}x |"
        )
    if args.out:
        atomic_write_json(args.out, res)
    return res
