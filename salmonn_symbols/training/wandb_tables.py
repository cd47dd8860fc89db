"""W&B views of discovery (rank 0 only). The JSON files stay the source of truth.

At each discovery: a new per-cycle ``symbols`` table, a fresh ``evolution`` table with every cycle so far (a
logged table object never updates, so it is rebuilt each time), a similarity-per-label line chart, a bar chart
of validation accuracy for soft / hard / original labels, and the discovery JSONs as run files.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from ..symbols.book import SymbolBook
from ..symbols.discovery import SymbolChange

__all__ = ["log_discovery", "wandb_run"]

_SIM_HISTORY: dict[str, list[tuple[int, float]]] = {}


def _wandb_logger(logger):
    from lightning.pytorch.loggers import WandbLogger

    loggers = logger if isinstance(logger, Sequence) else [logger] if logger is not None else []
    return next((lg for lg in loggers if isinstance(lg, WandbLogger)), None)


def wandb_run(logger):
    """The W&B run of the first WandbLogger among ``logger``, or None."""
    wb = _wandb_logger(logger)
    return wb.experiment if wb is not None else None


def log_discovery(
    logger,
    cycle: int,
    changes: Sequence[SymbolChange],
    book: SymbolBook,
    last_eval: Mapping[str, Mapping[str, float]],
    step: int,
    files: Sequence[Path] = (),
) -> bool:
    """Logs the discovery views to W&B if a WandbLogger is attached; returns whether it did."""
    wb = _wandb_logger(logger)
    if wb is None:
        return False
    import wandb

    run = wb.experiment
    symbols = wandb.Table(columns=["cycle", "label", "symbol", "token_ids", "similarity", "margin", "change_type"])
    for c in changes:
        symbols.add_data(
            cycle,
            c.original_label,
            c.discovered_symbol,
            str(list(c.token_mapping.values())),
            c.similarity,
            c.margin,
            c.change_type,
        )
        _SIM_HISTORY.setdefault(c.original_label, []).append((cycle, c.similarity))
    evolution = wandb.Table(columns=["cycle", "source", "label", "symbol"])
    for h in book.history + [
        type(book.history[0])(
            cycle=cycle, source="discovered", mapping={c.original_label: c.discovered_symbol for c in changes}
        )
    ]:
        for lab, sym in h.mapping.items():
            evolution.add_data(h.cycle, h.source, lab, sym)
    labels = list(_SIM_HISTORY)
    sim_chart = wandb.plot.line_series(
        xs=[[x for x, _ in _SIM_HISTORY[lab]] for lab in labels],
        ys=[[y for _, y in _SIM_HISTORY[lab]] for lab in labels],
        keys=labels,
        title="similarity per label",
        xname="cycle",
    )
    acc = wandb.Table(columns=["condition", "mean accuracy"])
    for mode in ("soft", "hard", "original"):
        if "mean/acc" in last_eval.get(mode, {}):
            acc.add_data(mode, last_eval[mode]["mean/acc"])
    run.log(
        {
            f"discovery/symbols_cycle_{cycle}": symbols,
            "discovery/evolution": evolution,
            "discovery/similarity": sim_chart,
            "discovery/accuracy": wandb.plot.bar(acc, "condition", "mean accuracy", title=f"accuracy, cycle {cycle}"),
            "trainer/global_step": step,
        }
    )
    for f in files:
        run.save(str(f), base_path=str(Path(f).parent.parent), policy="now")
    return True
