"""The ``salmonn-symbols`` command: one table of subcommands, each in its own module.

salmonn-symbols fit --config configs/tiny.yaml --run_dir RUN [--key value ...]   train (LightningCLI; fit --help)
salmonn-symbols validate|test --config RUN/config.yaml --ckpt_path CKPT           Lightning's other stages
salmonn-symbols evaluate --ckpt RUN/checkpoints/last.ckpt --config RUN/config.yaml   score a checkpoint
salmonn-symbols discover --ckpt RUN/checkpoints/last.ckpt          discovery alone on a checkpoint
salmonn-symbols inspect RUN                                        evolution table + symbol_evolution.png
salmonn-symbols check-data configs/data/x.yaml                     find every bad sample before training
salmonn-symbols make-dataset --out runs/synth                      synthetic espeak-ng speech benchmark
salmonn-symbols generate-symbols --tokenizer PATH --labels a b c   random 2-token symbols (cycle 0)
salmonn-symbols validate-discovery RUN/discovery                   schema-check cycle_N_*.json files
salmonn-symbols bench [--what model --size salmonn-13b]            time the symbol core or a training step
salmonn-symbols prepare-weights --out checkpoints/small            Whisper + SmolLM2 converted, checked; connector ASR
salmonn-symbols demo [--real]                                      tiny model (--real: Whisper + SmolLM2), 2 cycles
salmonn-symbols experiment NAME --preset quick|full [--key value]  a companion experiment
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["COMMANDS", "main"]

# name -> (module, one-line help). A module either parses its own command line with ``main(argv)`` (the
# LightningCLI stages and the experiments), or gives ``add_args(parser)`` and ``run(args) -> exit status``.
COMMANDS: dict[str, tuple[str, str]] = {
    "fit": ("salmonn_symbols.training.cli", "train every cycle in one run (LightningCLI; fit --help lists the keys)"),
    "validate": ("salmonn_symbols.training.cli", "Lightning's validate stage on a checkpoint"),
    "test": ("salmonn_symbols.training.cli", "Lightning's test stage on a checkpoint"),
    "evaluate": ("salmonn_symbols.commands.evaluate", "score a checkpoint on a split: soft, hard, original labels"),
    "discover": ("salmonn_symbols.commands.discover", "run discovery on a training checkpoint"),
    "inspect": ("salmonn_symbols.commands.inspect_run", "the symbol evolution of a run: table and figure"),
    "check-data": ("salmonn_symbols.commands.check_data", "read every sample and decode every clip; list all problems"),
    "make-dataset": ("salmonn_symbols.commands.make_dataset", "build the synthetic espeak-ng speech benchmark"),
    "generate-symbols": ("salmonn_symbols.commands.generate_symbols", "draw random 2-token symbols for a label set"),
    "validate-discovery": ("salmonn_symbols.commands.validate_discovery", "schema-check cycle_N_*.json files"),
    "bench": ("salmonn_symbols.commands.bench", "time the symbol core, a training step, or DDP scaling"),
    "prepare-weights": (
        "salmonn_symbols.commands.prepare_weights",
        "convert the packaged Whisper and SmolLM2, check them",
    ),
    "demo": ("salmonn_symbols.commands.demo", "synthetic speech + tiny model + 2 full cycles, on CPU"),
    "experiment": ("salmonn_symbols.commands.experiment", "run a companion experiment (experiment --help)"),
}

_PASSES_NAME = ("fit", "validate", "test")  # LightningCLI takes the subcommand itself


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name.ljust(width)}  {text}" for name, (_, text) in COMMANDS.items()]
    return "usage: salmonn-symbols COMMAND [options]   (salmonn-symbols COMMAND --help)\n\ncommands:\n" + "\n".join(
        lines
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``salmonn-symbols``; errors in user input exit with status 2 and a one-line message."""
    from . import __version__
    from .symbols import SymbolGenerationError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"salmonn-symbols {__version__}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"salmonn-symbols: error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[name][0])
    try:
        if hasattr(module, "main"):
            return int(module.main(argv if name in _PASSES_NAME else argv[1:]) or 0)
        parser = argparse.ArgumentParser(prog=f"salmonn-symbols {name}", description=COMMANDS[name][1])
        module.add_args(parser)
        return int(module.run(parser.parse_args(argv[1:])) or 0)
    except (FileNotFoundError, ValueError, KeyError, ImportError, SymbolGenerationError) as e:
        print(f"salmonn-symbols {name}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
