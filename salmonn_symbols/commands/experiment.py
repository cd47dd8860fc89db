"""``salmonn-symbols experiment NAME``: the companion experiments (each parses its own keys)."""

from __future__ import annotations

__all__ = ["main"]


def main(argv: list[str]) -> int:
    """Lists the experiments, or runs one with ``--preset``, ``--config`` and ``--key value`` options."""
    from ..experiments import EXPERIMENTS, load_experiment
    from ..experiments.common import parse_experiment_args

    if not argv or argv[0].startswith("-"):
        print("usage: salmonn-symbols experiment NAME [--preset quick|full] [--config FILE] [--key value ...]")
        print("experiments: " + (", ".join(sorted(EXPERIMENTS)) or "none installed"))
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    name, rest = argv[0], argv[1:]
    exp = load_experiment(name)
    if "-h" in rest or "--help" in rest:
        print(f"presets: {', '.join(sorted(exp.presets))} (default {exp.default_preset})")
    cfg, out, preset = parse_experiment_args(exp, rest)
    out.mkdir(parents=True, exist_ok=True)
    print(f"experiment {name}, preset {preset} -> {out}")
    exp.run(cfg, out)
    print(f"results: {out / 'results.json'}")
    return 0
