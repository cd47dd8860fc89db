"""The learned-encoding run: data, baselines, the grid of trainings, then results.json / results.md / PNGs.

datasets ─► Corpus per dataset (code: BPE on train files; dna: held-out blocks; toys: exact bounds)
         ─► baselines (order-k Markov on DNA's test windows; toys' exact entropy)
         ─► run_grid (arms × ratios × variants × seeds, budgeted) ─► records
         ─► summaries + checks ─► results.json, results.md, loss_vs_ratio.png, training_curves.png
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from ...io import atomic_write_text
from ..common import results_header, write_results
from .config import LearnedEncodingConfig, check_config
from .corpora import Corpus, code_corpus, dna_corpus
from .markov import MarkovBaseline
from .report import add_derived, checks, figures, markdown, summaries
from .runner import run_grid
from .toys import toy_corpus
from .training import quiet_lightning

__all__ = ["run"]

NAME = "learned-encoding"


def _preset_from_argv() -> str | None:
    """The preset named on this process's command line, when it is this experiment's command."""
    argv = sys.argv
    if NAME not in argv:
        return None
    return argv[argv.index("--preset") + 1] if "--preset" in argv[:-1] else "quick"


def _corpus(name: str, cfg: LearnedEncodingConfig, data_dir: Path) -> Corpus:
    if name == "code":
        return code_corpus(cfg, data_dir)
    if name == "dna":
        return dna_corpus(cfg)
    return toy_corpus(name, cfg)


def prepare(cfg: LearnedEncodingConfig, data_dir: Path) -> tuple[dict[str, Corpus], dict[str, dict]]:
    """Builds every dataset (saved for worker processes when there are several) and its baseline."""
    corpora, baselines = {}, {}
    for name in cfg.datasets:
        t = time.perf_counter()
        corpus = corpora[name] = _corpus(name, cfg, data_dir)
        if cfg.workers > 1:
            corpus.save(data_dir / f"{name}.npz")
        if name == "dna":
            score = MarkovBaseline(corpus, cfg.markov_order).score(corpus, "test", cfg.seq_len, cfg.test_windows)
            baselines[name] = {"name": f"order-{cfg.markov_order} Markov", "kind": "baseline", **score}
        elif corpus.bound_bits is not None:
            baselines[name] = {"name": "exact bound", "kind": "bound", "bits": corpus.bound_bits}
        sizes = {k: len(v) for k, v in corpus.splits.items()}
        extra = f", {baselines[name]['name']} {baselines[name]['bits']:.4f} bits" if name in baselines else ""
        print(f"data {name}: vocab {corpus.vocab_size}, {sizes}{extra} ({time.perf_counter() - t:.1f}s)", flush=True)
    return corpora, baselines


def run(cfg: LearnedEncodingConfig, out_dir: Path) -> dict:
    """Runs the experiment into ``out_dir``; returns what results.json holds."""
    check_config(cfg)
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    quiet_lightning()
    header = results_header(NAME, cfg, _preset_from_argv())
    corpora, baselines = prepare(cfg, out_dir / "data")
    records, cut = run_grid(cfg, corpora, out_dir / "data", out_dir, t0)
    if not records:
        raise RuntimeError("learned-encoding: no training finished (time_budget_s too small?)")
    add_derived(records)
    rows = summaries(records)
    check_rows = checks(rows, baselines, cfg.ratios)
    paths = figures(out_dir, rows, records, baselines, cfg.ratios)
    results = header | {
        "datasets": {name: c.info for name, c in corpora.items()},
        "baselines": baselines,
        "summary": rows,
        "checks": check_rows,
        "cut": cut,
        "figures": [p.name for p in paths],
        "wall_s": time.perf_counter() - t0,
        "records": records,
    }
    write_results(out_dir, results)
    md = markdown(header, rows, baselines, check_rows, cut)
    atomic_write_text(out_dir / "results.md", md)
    print(md[md.index("\n## ") + 1 :])  # the tables and checks, as results.md has them
    print(f"{len(records)} trainings, {len(cut)} cut, {results['wall_s']:.0f}s; results.json, results.md, ", end="")
    print(f"{', '.join(results['figures'])} in {out_dir}")
    return results
