"""Known-answer benchmark of discovery: plant the right symbols in a base model, check that the cycle finds them.

salmonn-symbols bench --what planted [--labels 12] [--seeds 0,1,2] [--arms planted,untrained,other]

per seed s
  data    a tone task, one pitch per label (no espeak-ng needed)
  plant   tiny SpeechLLM, speech path frozen; the LLM (every weight) trained to answer the planted 2-token
          word p_c for class c ─► saved as the files `fit` loads (HF LLM folder, Whisper folder, SALMONN .pth)
  oracle  every allowed token at each position of p_c scored by the base's task loss: is p_c's token the
          lowest-loss choice? (the exhaustive scan that shows the benchmark is fair)
  cycle   `salmonn-symbols fit` from random symbols (symbol_seed s), the project's config, on that base
  score   token top-1: the final symbol's token equals p_c's; top-5: p_c's token is among the 5 best of the
          last discovery's search at that position; word top-1: both tokens
controls  "untrained": a base never trained (nothing planted); "other": a base planted with other words.
          Both are scored against p_c, so they show what chance looks like; "other" is also scored against
          its own plant.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import torch

from ..io import atomic_write_json, atomic_write_text

__all__ = ["add_planted_args", "run_planted_bench"]

ARMS = ("planted", "untrained", "other")


def add_planted_args(p: argparse.ArgumentParser) -> None:
    """Options of ``bench --what planted``."""
    g = p.add_argument_group("--what planted")
    g.add_argument("--labels", type=int, default=12, help="labels (one pitch each)")
    g.add_argument("--seeds", default="0,1,2", help="seeds, comma-separated")
    g.add_argument("--arms", default=",".join(ARMS), help="planted, untrained, other")
    g.add_argument("--train-per-label", type=int, default=16, help="training clips per label")
    g.add_argument("--val-per-label", type=int, default=16, help="validation clips per label")
    g.add_argument("--plant-epochs", type=int, default=30, help="epochs of planting")
    g.add_argument("--config", default=None, help="fit config of the cycle (default: configs/tiny.yaml)")
    g.add_argument("--fit-args", default="", help="more fit options for the cycle, e.g. '--model.schedule.cycles 1'")
    g.add_argument("--no-oracle", action="store_true", help="skip the exhaustive scan")


# ---------------------------------------------------------------------------------------------------- planting
def _tiny(seed: int):
    from ..model.builders import SpeechLLMConfig, build_speech_llm

    torch.manual_seed(seed)
    return build_speech_llm(SpeechLLMConfig(use_beats=False))


def _split(task: Path, role: str):
    from ..data.dataset import SpeechDataset
    from ..data.manifest import read_split
    from ..data.tasks import load_task_config

    cfg = load_task_config(task)
    return cfg, SpeechDataset([read_split(cfg, role)[0]], [cfg])


def plant(model, tok, task: Path, book, epochs: int, seed: int) -> float:
    """Trains every LLM weight of ``model`` and its speech path (Q-Former, projection; the encoders stay
    frozen) to answer ``book``'s word for each class; returns the closed-set validation accuracy with those
    words."""
    from ..data.dataset import SpeechCollator
    from ..data.prompt import PromptBuilder
    from ..data.transforms import PromptTransform

    cfg, train = _split(task, "train")
    prompts = PromptBuilder(tok)
    coll = SpeechCollator(prompts, PromptTransform({cfg.name: cfg}, {}, book, seed))
    dev = next(model.parameters()).device
    params = [p for n, p in model.llm.named_parameters() if "lora_" not in n] + model.speech_parameters()
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    items = [train[(0, i, 0)] for i in range(len(train))]
    audio = torch.cat(
        [model.encode_audio(b["wav"].to(dev), b["wav_lengths"].to(dev)) for b in _chunks(coll, items, 64)]
    )
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(items), generator=g).tolist()
        for s in range(0, len(order), 16):
            idx = order[s : s + 16]
            batch = _on(coll([items[i] for i in idx]), model)
            loss = model(batch, symbol_mode="raw", speech=model.speech_from_audio(audio[idx])).loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for p in params:
        p.requires_grad_(False)
    return _accuracy(model.eval(), tok, task, book)


def _chunks(coll, items, n):
    for s in range(0, len(items), n):
        yield coll(items[s : s + n])


def _on(batch: dict, model) -> dict:
    dev = next(model.parameters()).device
    return {k: v.to(dev) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def _accuracy(model, tok, task: Path, book) -> float:
    from ..data.dataset import SpeechCollator
    from ..data.prompt import PromptBuilder
    from ..data.transforms import PromptTransform
    from ..training.evaluation import predict_batch

    cfg, val = _split(task, "validation")
    prompts = PromptBuilder(tok)
    coll = SpeechCollator(prompts, PromptTransform({cfg.name: cfg}, {}, book, 0))
    right = total = 0
    for batch in _chunks(coll, [val[(0, i, 0)] for i in range(len(val))], 32):
        batch = _on(batch, model)
        speech = model.encode_speech(batch["wav"], batch["wav_lengths"])
        # no symbol spans are set on the planting model, so "hard" scores each label's planted word as it is
        preds = predict_batch(model, batch, speech, {cfg.name: cfg}, book, prompts, "hard", 0.1)
        right += sum(p == g for p, g in zip(preds, batch["gold"], strict=True))
        total += len(preds)
    return right / max(1, total)


def save_base(model, tok, folder: Path) -> dict[str, str]:
    """The base in the formats `fit` loads: LLM folder (LoRA removed), Whisper folder, SALMONN checkpoint."""
    from ..model.checkpoint import save_salmonn_checkpoint
    from ..model.whisper import save_whisper_encoder

    folder.mkdir(parents=True, exist_ok=True)
    model.cpu()
    save_salmonn_checkpoint(model, folder / "salmonn.pth")
    save_whisper_encoder(model.whisper, folder / "whisper")
    base = model.llm.unload()
    base.save_pretrained(folder / "llm")
    tok.save_pretrained(folder / "llm")
    return {
        "llm_path": str(folder / "llm"),
        "whisper_path": str(folder / "whisper"),
        "salmonn_ckpt": str(folder / "salmonn.pth"),
    }


# ------------------------------------------------------------------------------------------------------ oracle
def oracle(model, tok, task: Path, book) -> dict[str, list[int]]:
    """Rank (1 = best) of each planted token among every allowed token at its position, by the base's task loss
    on all validation samples of the label, the other position kept at the planted token."""
    from ..data.prompt import PromptBuilder
    from ..data.transforms import PromptTransform
    from ..symbols import SymbolTokenizer, build_candidate_masks
    from ..training.rescoring import TaskLossScorer

    cfg, val = _split(task, "validation")
    sym = SymbolTokenizer(tok)
    masks = build_candidate_masks(sym, model.llm.get_input_embeddings().weight.shape[0], book.labels)
    scorer = TaskLossScorer(
        model, val, PromptTransform({cfg.name: cfg}, {}, book, 0), PromptBuilder(tok), book, 10**6, 256
    )
    ranks: dict[str, list[int]] = {}
    for lab in book.labels:
        ids = tuple(sym.word_ids(book.mapping[lab]))
        others = {t for o in book.labels if o != lab for t in sym.word_ids(book.mapping[o])}
        ranks[lab] = []
        for p in range(len(ids)):
            allowed = (masks.initial if p == 0 else masks.continuation).clone()
            words = [book.mapping[lab]]
            for t in allowed.nonzero().flatten().tolist():
                cand = ids[:p] + (t,) + ids[p + 1 :]
                w = sym.round_trip(cand)
                if t != ids[p] and t not in others and w is not None:
                    words.append(w)
            loss = torch.cat([scorer.losses(lab, words, h) for h in ("search", "confirm")], dim=1).mean(1)
            ranks[lab].append(int((loss < loss[0]).sum()) + 1)
    return ranks


# ------------------------------------------------------------------------------------------------------- cycle
def run_cycle(base: dict[str, str], task: Path, seed: int, run_dir: Path, config: str, extra: list[str]) -> int:
    """`salmonn-symbols fit` on ``base`` from random symbols (``symbol_seed = seed``)."""
    from ..training.cli import run_lightning_cli

    args = ["fit", "--config", config, "--run_dir", str(run_dir), "--data.tasks", json.dumps([str(task)])]
    args += [
        "--trainer.logger",
        json.dumps({"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir)}}),
    ]
    args += ["--trainer.enable_progress_bar", "false", "--model.symbol_seed", str(seed), "--seed_everything", str(seed)]
    args += ["--model.model.use_beats", "false", "--model.model.tokenizer_path", "null"]
    for key, value in base.items():
        args += [f"--model.model.{key}", value]
    return run_lightning_cli(args + extra)


def recovery(run_dir: Path, book, sym) -> dict[str, Any]:
    """How much of ``book`` the final mapping of the run recovered (token/word top-1, token top-5)."""
    final = json.loads((run_dir / "symbols_final.json").read_text())["mapping"]
    last = sorted((run_dir / "discovery").glob("cycle_*_tokens.json"), key=lambda p: int(p.name.split("_")[1]))[-1]
    rows = json.loads(last.read_text())["discoveries"]
    top1 = top5 = words = n = 0
    changed = sum(
        final[lab] != s for lab, s in json.loads((run_dir / "symbols_cycle_0.json").read_text())["mapping"].items()
    )
    for lab in book.labels:
        want, got = sym.word_ids(book.mapping[lab]), sym.word_ids(final[lab])
        words += want == got
        for p, tid in enumerate(want):
            n += 1
            top1 += p < len(got) and got[p] == tid
            row = next((r for r in rows if r["label"] == lab and r["position"] == p), None)
            tried = [x["token_id"] for x in (row or {}).get("search_top", [])][:5] or [got[p] if p < len(got) else -1]
            top5 += tid in tried
    L = len(book.labels)
    return {"token_top1": top1 / n, "token_top5": top5 / n, "word_top1": words / L, "changed": changed / L}


# --------------------------------------------------------------------------------------------------- the bench
def _device(args) -> str:
    """Where planting and the oracle run (``bench --device``); the cycle runs where ``--config`` says."""
    device = getattr(args, "device", "auto")
    return ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device


def _book(labels, sym, seed: int, avoid: set[int]):
    from ..symbols import SymbolBook

    for k in range(100):
        book = SymbolBook.create(labels, sym, seed=seed * 1000 + 17 + k)
        if not {t for s in book.symbols for t in sym.word_ids(s)} & avoid:
            return book
    raise RuntimeError("could not draw planted words disjoint from the start symbols")


def _seed_run(args, seed: int, root: Path, config: str, extra: list[str], done) -> list[dict[str, Any]]:
    from ..data.tones import GREEK, make_tone_task
    from ..symbols import SymbolBook, SymbolTokenizer

    labels = list(GREEK[: args.labels])
    task = make_tone_task(
        root / "data", labels, {"train": args.train_per_label, "validation": args.val_per_label}, seed=seed
    )
    _, tok = _tiny(seed)
    sym = SymbolTokenizer(tok)
    start = SymbolBook.create(labels, sym, seed=seed)  # what fit will draw (symbol_seed = seed)
    used = {t for s in start.symbols for t in sym.word_ids(s)}
    planted = _book(labels, sym, seed, used)
    other = _book(labels, sym, seed + 500, used | {t for s in planted.symbols for t in sym.word_ids(s)})
    out = []
    for arm in [a for a in args.arms.split(",") if a]:
        t0 = time.perf_counter()
        model, tok = _tiny(seed)
        model.to(_device(args))
        record: dict[str, Any] = {"seed": seed, "arm": arm}
        target = {"planted": planted, "other": other}.get(arm)
        if target is not None:
            print(f"seed {seed}, {arm}: planting {dict(target.mapping)}", flush=True)
            record["plant_accuracy"] = plant(model, tok, task, target, args.plant_epochs, seed)
            print(f"  planted: validation accuracy {record['plant_accuracy']:.3f} ({time.perf_counter() - t0:.0f} s)")
            if not args.no_oracle:
                ranks = oracle(model, tok, task, target)
                print(f"  oracle ranks of the planted tokens: {ranks} ({time.perf_counter() - t0:.0f} s)", flush=True)
                flat = [r for rs in ranks.values() for r in rs]
                record["oracle_rank1"] = sum(r == 1 for r in flat) / len(flat)
                record["oracle_ranks"] = ranks
        base = save_base(model, tok, root / arm / "base")
        run = root / arm / "run"
        status = run_cycle(base, task, seed, run, config, extra)
        if status:
            raise RuntimeError(f"the cycle of arm {arm}, seed {seed} failed (exit {status}); see above")
        record |= recovery(run, planted, sym)
        if arm == "other":
            record["own_plant"] = recovery(run, other, sym)
        record["seconds"] = time.perf_counter() - t0
        print(json.dumps({k: v for k, v in record.items() if k != "oracle_ranks"}))
        out.append(record)
        done(record)
    return out


def _summary(records: list[dict[str, Any]]) -> str:
    lines = [
        "| arm | seeds | token top-1 | token top-5 | word top-1 | changed | oracle rank 1 | plant acc |",
        "|" + "---|" * 8,
    ]

    keys = ("token_top1", "token_top5", "word_top1", "changed", "oracle_rank1", "plant_accuracy")

    def ms(vals):
        vals = [v for v in vals if v is not None]
        if not vals:
            return "n/a"
        m = sum(vals) / len(vals)
        s = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return f"{m:.2f} ± {s:.2f}"

    for arm in dict.fromkeys(r["arm"] for r in records):
        rs = [r for r in records if r["arm"] == arm]
        cols = [ms([r.get(k) for r in rs]) for k in keys]
        lines.append(f"| {arm} | {len(rs)} | " + " | ".join(cols) + " |")
    own = [r["own_plant"] for r in records if "own_plant" in r]
    if own:
        cols = [ms([o[k] for o in own]) for k in keys[:3]]
        lines.append(f"| other, against its own plant | {len(own)} | " + " | ".join(cols) + " | | | |")
    return "\n".join(lines)


def run_planted_bench(args: argparse.Namespace) -> dict[str, Any]:
    """Runs the benchmark for every seed and arm; prints the table and writes JSON and markdown."""
    import shlex

    out = Path(args.out).with_suffix("") if args.out.endswith(".json") else Path(args.out)
    config = args.config or str(Path(__file__).resolve().parents[2] / "configs" / "tiny.yaml")
    extra = shlex.split(args.fit_args)
    records: list[dict[str, Any]] = []

    def done(record: dict[str, Any]) -> None:  # each finished arm is written at once: a stopped run keeps it
        records.append(record)
        _write(out, args, config, extra, records)

    for seed in [int(s) for s in str(args.seeds).split(",") if s != ""]:
        _seed_run(args, seed, out / f"seed{seed}", config, extra, done)
    result = _write(out, args, config, extra, records)
    print(result["table"])
    print(f"wrote {out / 'planted.json'}")
    return result


def _write(out: Path, args, config: str, extra: list[str], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Writes ``planted.json`` and ``planted.md`` (the table over ``records``); returns the result."""
    table = _summary(records)
    chance = "chance: one allowed token in several hundred, about 0.002"
    result = {
        "labels": args.labels,
        "config": config,
        "fit_args": extra,
        "records": records,
        "table": table,
        "chance": chance,
    }
    atomic_write_json(out / "planted.json", result)
    atomic_write_text(out / "planted.md", table + "\n\n" + chance + "\n")
    return result
