"""``salmonn-symbols bench --what fit``: the speed of the real ``fit``, as users run it.

    bench --what fit --config configs/salmonn_13b.yaml --devices 1,2 --cache off,on --batch 16
      for each device count × cache setting: one ``fit`` of --config with random weights (the weight paths set to
      null), the --data tasks and a short schedule (1 cycle: --epochs-per-phase LoRA epochs, as many MLP epochs,
      discovery at the end), each epoch --steps-per-phase / --epochs-per-phase batches (0: whole epochs)
          1 device:  `training.cli.run_lightning_cli` in this process
          N devices: GPUS=N scripts/train_cycles.sh, the multi-GPU launcher users run
      `fit_timing.StepTimer` on every rank ─► <run>/bench/rank<R>.json ─► per phase: warm-up (the first 10
      batches, the first epoch, the first epoch after its first 10 batches), steady state uncached, cached epochs
      (speech-cache hit rate ≥ 0.95) apart; validation, discovery, model build, start to first step; samples/s per
      rank and the scaling against 1 device ─► runs/bench/fit.json and a printed table

``--profile`` adds `fit_timing.StageTimer`: the per-stage time of one training step (Whisper, BEATs, Q-Former, LLM
forward, backward, optimizer) and a Chrome trace of one step per phase and rank.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from ..io import atomic_write_json, atomic_write_text

__all__ = ["add_fit_args", "run_fit_bench", "summarize_run"]

ROOT = Path(__file__).resolve().parents[2]
WARMUP_BATCHES = 10
CACHED = 0.95  # an epoch whose speech-cache hit rate reaches this is a cached epoch
RANDOM_WEIGHTS = ("llm_path", "whisper_path", "beats_path", "salmonn_ckpt")


def add_fit_args(p: argparse.ArgumentParser) -> None:
    """Adds the options of ``--what fit`` to ``p``."""
    # --config (default here: configs/salmonn_13b.yaml) and --fit-args are shared with --what planted
    g = p.add_argument_group("--what fit")
    g.add_argument(
        "--data",
        default="runs/synth/speaker/task.yaml",
        help="task YAML(s), comma-separated (salmonn-symbols make-dataset --tasks speaker --train-per-label 128)",
    )
    g.add_argument("--steps-per-phase", type=int, default=0, help="training batches per phase (0: whole epochs)")
    g.add_argument("--epochs-per-phase", type=int, default=2, help="epochs of the LoRA phase and of the MLP phase")
    g.add_argument("--cache", default="off,on", help="speech cache settings to run: off, on or off,on")
    g.add_argument("--run-dir", default="runs/bench/fit", help="folder of the fits' runs")
    g.add_argument("--no-sync", action="store_true", help="no CUDA sync at step boundaries (samples/s only)")
    g.add_argument(
        "--baseline", default=None, help="an earlier bench --what fit JSON whose 1-device runs the scaling uses"
    )


def _git_commit() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "") if head.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _overrides(args: argparse.Namespace, run: Path, cache: bool, t0: float) -> Path:
    """The benchmark's settings as a second config: the timing callbacks (after --config's own), a CSV logger,
    the schedule, the data, batches per epoch."""
    base = yaml.safe_load(Path(args.config).read_text()) or {}
    own = (base.get("trainer") or {}).get("callbacks") or []
    timers = [
        {
            "class_path": "salmonn_symbols.commands.fit_timing.StepTimer",
            "init_args": {"out": str(run / "bench"), "t0": t0, "sync": not args.no_sync},
        }
    ]
    if args.profile:
        timers.append(
            {"class_path": "salmonn_symbols.commands.fit_timing.StageTimer", "init_args": {"out": str(run / "bench")}}
        )
    e = args.epochs_per_phase
    trainer = {
        "callbacks": (own if isinstance(own, list) else [own]) + timers,
        "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run)}},
    }
    if args.steps_per_phase:
        trainer["limit_train_batches"] = max(1, -(-args.steps_per_phase // e))
    model = {
        "schedule": {"cycles": 1, "lora_epochs": e, "mlp_epochs": e, "final_lora_epochs": 0},
        "speech_cache": cache,
        "model": dict.fromkeys(RANDOM_WEIGHTS),
    }
    data = {"tasks": [t for t in args.data.split(",") if t]}
    if args.batch:
        data["batch_size"] = args.batch
    path = run / "bench_overrides.yaml"
    atomic_write_text(path, yaml.safe_dump({"trainer": trainer, "model": model, "data": data}))
    return path


def _fit_command(args: argparse.Namespace, run: Path, overrides: Path) -> list[str]:
    return [
        "--config",
        args.config,
        "--config",
        str(overrides),
        "--run_dir",
        str(run),
        "--checkpoint_every_n_steps",
        "1000000",  # the epoch-end checkpoints only, as a run between its step checkpoints
        *shlex.split(args.fit_args),
    ]


def _run_fit(args: argparse.Namespace, devices: int, cache: bool) -> tuple[Path, list[str]]:
    """Runs one fit; returns its run folder and the command that ran it."""
    run = Path(args.run_dir) / f"d{devices}_cache_{'on' if cache else 'off'}"
    run.mkdir(parents=True, exist_ok=True)
    for old in (run / "bench").glob("*.json"):
        old.unlink()
    shutil.rmtree(run / "speech_cache", ignore_errors=True)  # --overwrite keeps it; the first epoch must fill it
    t0 = time.time()
    fit = _fit_command(args, run, _overrides(args, run, cache, t0))
    if devices == 1:
        from ..training.cli import run_lightning_cli

        cmd = [sys.executable, "-m", "salmonn_symbols", "fit", *fit, "--overwrite", "true"]
        rc = run_lightning_cli(["fit", *fit, "--overwrite", "true"])
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # the next setting builds its own model
    else:
        env = dict(os.environ, GPUS=str(devices), CONFIG=args.config, RUN_DIR=str(run), OVERWRITE="1")
        env["PYTHON"] = sys.executable
        # the script gives --config and --run_dir from CONFIG and RUN_DIR; the overrides follow as extra arguments
        cmd = [str(ROOT / "scripts" / "train_cycles.sh"), *fit[2:4], *fit[6:]]
        rc = subprocess.run(cmd, env=env, timeout=args.timeout).returncode
        cmd = [f"GPUS={devices}", f"CONFIG={args.config}", f"RUN_DIR={run}", "OVERWRITE=1", *cmd]
    if rc != 0:
        raise RuntimeError(f"bench --what fit: the fit in {run} failed with status {rc}: {shlex.join(cmd)}")
    return run, cmd


def _rate(samples: list[int], periods: list[float]) -> float | None:
    return sum(samples) / sum(periods) if periods and sum(periods) > 0 else None


def _mean(xs: list[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def summarize_rank(rank: dict) -> dict:
    """Per phase: samples/s of the warm-up (the first 10 batches of the phase, its first epoch, that epoch after
    its first 10 batches), of the steady state (later epochs, uncached) and of the cached later epochs."""
    out: dict = {}
    for phase in ("lora", "mlp"):
        eps = [e for e in rank["epochs"] if e["phase"] == phase and e["samples"]]
        if not eps:
            continue
        first, later = eps[0], eps[1:]
        cached = [e for e in later if e.get("cache_hit_rate", 0.0) >= CACHED]
        steady = [e for e in later if e.get("cache_hit_rate", 0.0) < CACHED]
        w = WARMUP_BATCHES

        def pooled(es):
            return _rate([s for e in es for s in e["samples"]], [p for e in es for p in e["periods_s"]])

        out[phase] = {
            "batches_per_epoch": [len(e["samples"]) for e in eps],
            "cache_hit_rate": [round(e.get("cache_hit_rate", 0.0), 3) for e in eps],
            "warmup_first10": _rate(first["samples"][:w], first["periods_s"][:w]),
            "warmup_first_epoch": pooled([first]),
            "warmup_after10": _rate(first["samples"][w:], first["periods_s"][w:]),
            "first_epoch_cached": first.get("cache_hit_rate", 0.0) >= CACHED,
            "steady": pooled(steady),
            "cached": pooled(cached),
            "step_ms_steady": 1e3 * _mean([s for e in (steady or cached) for s in e["steps_s"]] or [float("nan")]),
            "validation_s": _mean([e["validation_s"] for e in eps]),
            # from the epoch start to the end of its first step: the loader's start (workers, first batch)
            "first_batch_s_later_epochs": _mean([e["periods_s"][0] for e in later]),
        }
    disc = [e["discovery_s"] for e in rank["epochs"] if "discovery_s" in e]
    return {
        "phases": out,
        "discovery_s": _mean(disc),
        "epoch_end_s": _mean([e["epoch_end_s"] for e in rank["epochs"] if "epoch_end_s" in e]),
        "build_s": rank["build_s"],
        "start_to_first_step_s": rank["start_to_first_step_s"],
        "launch_to_setup_s": rank["launch_to_setup_s"],
    }


def summarize_run(run: Path) -> dict:
    """Every rank's summary of the fit in ``run``, and the ranks together (samples/s summed over ranks)."""
    files = sorted((run / "bench").glob("rank*.json"), key=lambda p: int(p.stem[4:]))
    if not files:
        raise RuntimeError(f"{run / 'bench'} holds no rank*.json: the fit did not reach its end")
    ranks = [json.loads(p.read_text()) for p in files]
    per_rank = [summarize_rank(r) for r in ranks]
    total: dict = {}
    for phase in ("lora", "mlp"):
        have = [r["phases"][phase] for r in per_rank if phase in r["phases"]]
        if have:
            total[phase] = {
                k: sum(h[k] for h in have) if all(h[k] is not None for h in have) else None
                for k in ("warmup_first10", "warmup_first_epoch", "warmup_after10", "steady", "cached")
            }
    stages = sorted((run / "bench").glob("stages_rank*.json"))
    res = {"world_size": ranks[0]["world_size"], "device": ranks[0]["device"], "total": total, "ranks": per_rank}
    if stages:
        res["stages"] = [json.loads(p.read_text()) for p in stages]
    return res


def _fmt(x, spec: str = ".1f") -> str:
    return "—" if x is None else format(x, spec)


def print_table(res: dict) -> None:
    """The figures as markdown tables: samples/s (all ranks together) per phase, then the times around steps."""
    print(f"bench --what fit: {res['config']}, {res['device']}, commit {res['commit']}, {res['date']}")
    print(
        "| devices | cache | phase | first 10 | first epoch | first epoch after 10 | steady | cached "
        "| after 10 / later | scaling |"
    )
    print("|--:|---|---|--:|--:|--:|--:|--:|--:|--:|")
    for r in res["runs"]:
        for phase, t in r["total"].items():
            sc = r.get("scaling", {}).get(phase)
            later = t["steady"] or t["cached"]  # the warm-up target: the first epoch after 10 batches vs later ones
            ratio = t["warmup_after10"] / later if t["warmup_after10"] and later else None
            print(
                f"| {r['devices']} | {'on' if r['cache'] else 'off'} | {phase} | {_fmt(t['warmup_first10'])} | "
                f"{_fmt(t['warmup_first_epoch'])} | {_fmt(t['warmup_after10'])} | {_fmt(t['steady'])} | "
                f"{_fmt(t['cached'])} | {_fmt(ratio, '.0%')} | {_fmt(sc, '.2f') + 'x' if sc else '—'} |"
            )
    print(
        "| devices | cache | build (s) | start to first step (s) | validation (s) | discovery (s) | epoch end (s) "
        "| first batch of an epoch (s) | batches/epoch |"
    )
    print("|--:|---|--:|--:|--:|--:|--:|--:|---|")
    for r in res["runs"]:
        r0 = r["ranks"][0]
        val = _mean([p["validation_s"] for p in r0["phases"].values()])
        counts = {ph: p["batches_per_epoch"] for ph, p in r0["phases"].items()}
        first = _mean(
            [p["first_batch_s_later_epochs"] for p in r0["phases"].values() if p["first_batch_s_later_epochs"]]
        )
        print(
            f"| {r['devices']} | {'on' if r['cache'] else 'off'} | {_fmt(r0['build_s'])} | "
            f"{_fmt(r0['start_to_first_step_s'])} | {_fmt(val, '.2f')} | {_fmt(r0['discovery_s'], '.2f')} | "
            f"{_fmt(r0['epoch_end_s'], '.2f')} | {_fmt(first, '.2f')} | {counts} |"
        )
    for r in res["runs"]:
        for st in r.get("stages", []):
            for phase, ms in st["stages_ms"].items():
                parts = ", ".join(f"{k} {v:.1f}" for k, v in ms.items())
                print(f"stages (ms), {r['devices']} device(s), cache {r['cache']}, rank {st['rank']}, {phase}: {parts}")


def _scaling(runs: list[dict], baseline: list[dict]) -> None:
    """Each run's samples/s (all ranks, steady state, cached epochs where the cache is on) against 1 device (a run
    of ``runs`` or else of ``baseline``)."""
    for r in runs:
        base = next((b for b in runs + baseline if b["devices"] == 1 and b["cache"] == r["cache"]), None)
        if base is None or r["devices"] == 1:
            continue
        key = "cached" if r["cache"] else "steady"
        r["scaling"] = {
            ph: t[key] / base["total"][ph][key]
            for ph, t in r["total"].items()
            if t[key] and base["total"].get(ph, {}).get(key)
        }


def _command(args: argparse.Namespace) -> str:
    """The command line that repeats this benchmark (every option it reads, defaults included)."""
    opts = ["--config", args.config, "--data", args.data, "--devices", str(args.devices or "1"), "--cache", args.cache]
    opts += ["--steps-per-phase", str(args.steps_per_phase), "--epochs-per-phase", str(args.epochs_per_phase)]
    opts += ["--run-dir", args.run_dir, "--out", args.out]
    opts += (["--batch", str(args.batch)] if args.batch else []) + (["--profile", args.profile] if args.profile else [])
    opts += (["--fit-args", args.fit_args] if args.fit_args else []) + (["--no-sync"] if args.no_sync else [])
    opts += ["--baseline", args.baseline] if args.baseline else []
    return shlex.join(["salmonn-symbols", "bench", "--what", "fit", *opts])


def run_fit_bench(args: argparse.Namespace) -> dict:
    """Runs ``bench --what fit`` (see the module's docstring) and returns its figures."""
    args.config = args.config or "configs/salmonn_13b.yaml"
    counts = [int(x) for x in str(args.devices or "1").split(",")]
    caches = [{"off": False, "on": True}[c.strip()] for c in args.cache.split(",")]
    for t in args.data.split(","):
        if t and not Path(t).is_file():
            raise FileNotFoundError(
                f"--data {t}: no such task YAML; build the synthetic speaker set with `salmonn-symbols make-dataset "
                f"--out runs/synth --tasks speaker --train-per-label 128` or name another task"
            )
    res: dict = {
        "what": "fit",
        "config": args.config,
        "command": _command(args),
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "runs": [],
    }
    for n in counts:
        for cache in caches:
            run, cmd = _run_fit(args, n, cache)
            res["runs"].append({"devices": n, "cache": cache, "fit_command": shlex.join(cmd), **summarize_run(run)})
    baseline = json.loads(Path(args.baseline).read_text())["runs"] if args.baseline else []
    _scaling(res["runs"], baseline)
    if args.baseline:
        res["baseline"] = args.baseline
    print_table(res)
    atomic_write_json(args.out, res)
    print(f"wrote {args.out}")
    return res
