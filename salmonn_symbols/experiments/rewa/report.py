"""What a run reports: the issue's targets checked per seed, results.md tables, and the recall-vs-bytes figure.

records (dataset × seed × method × budget) ─► target_checks: learned − OPQ (paired over seeds),
                                               re-ranked recall at 32 B, train − held-out gap
summary (mean ± std over seeds) ─► report_markdown ─► results.md
                                └► plot_recall    ─► recall_vs_bytes.png (solid: recall@k, dashed: re-ranked)
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from ...io import atomic_write
from ..common import markdown_table, mean_std
from .config import LEARNED

__all__ = ["METRICS", "plot_recall", "report_markdown", "target_checks"]

METRICS = [
    "recall",
    "recall_rerank",
    "train_recall",
    "train_recall_rerank",
    "gap",
    "class_precision",
    "encode_ms_per_1k",
    "search_ms_per_1k",
    "fit_s",
    "train_s",
]
_COLUMNS = ["method", "size", "bytes", "recall", "recall_rerank", "train_recall", "gap"]
_TIMES = ["encode_ms_per_1k", "search_ms_per_1k"]
# one colour per encoder family; the seed's settings share their family's colour with a diamond marker
_COLOURS = {
    "exact": "black",
    "sq_fp16": "dimgray",
    "sq_int8": "darkgray",
    "pq": "tab:red",
    "opq_pq": "tab:purple",
    "binary_rewa": "tab:brown",
    "random_hadamard": "tab:pink",
    "learned_linear": "tab:olive",
    "learned_mlp": "tab:orange",
    "learned_rank": "tab:cyan",
    "learned_rank_pq": "tab:blue",
}


def _by(records: list[dict], dataset: str, method: str, budget) -> dict[int, dict]:
    return {r["seed"]: r for r in records if (r["dataset"], r["method"], r["budget"]) == (dataset, method, budget)}


def target_checks(records: list[dict], cfg) -> list[dict]:
    """The issue's targets, per dataset and learned method, as rows with mean ± std over seeds and met/missed.

    - ``vs_opq``: held-out recall@k of the learned method minus OPQ+PQ at the same bytes (paired by seed),
      target ≥ +0.02 at 32 and 64 bytes;
    - ``rerank_32``: recall@k after re-ranking the top ``rerank_depth``, at 32 bytes, target ≥ 0.95;
    - ``gap``: train-side minus held-out recall@k, worst budget, target < 0.02.
    """
    rows = []
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        for method in [m for m in LEARNED if m in cfg.methods]:
            for budget in (32, 64):
                ours, opq = _by(records, dataset, method, budget), _by(records, dataset, "opq_pq", budget)
                diffs = [ours[s]["recall"] - opq[s]["recall"] for s in ours if s in opq]
                if diffs:
                    rows.append(_row(dataset, method, f"recall − opq_pq @ {budget} B", diffs, 0.02, ">="))
            ours = _by(records, dataset, method, 32)
            if ours:
                rows.append(
                    _row(
                        dataset,
                        method,
                        "re-ranked recall @ 32 B",
                        [r["recall_rerank"] for r in ours.values()],
                        0.95,
                        ">=",
                    )
                )
            worst = []
            for budget in cfg.budgets:
                gaps = [r["gap"] for r in _by(records, dataset, method, budget).values()]
                if gaps:
                    worst.append(mean_std(gaps))
            if worst:
                m, s = max(worst)
                rows.append(
                    {
                        "dataset": dataset,
                        "method": method,
                        "target": "train − held-out gap (worst budget)",
                        "value_mean": m,
                        "value_std": s,
                        "threshold": "< 0.02",
                        "met": m < 0.02,
                    }
                )
    return rows


def _row(dataset: str, method: str, target: str, values: list[float], threshold: float, op: str) -> dict:
    m, s = mean_std(values)
    return {
        "dataset": dataset,
        "method": method,
        "target": target,
        "value_mean": m,
        "value_std": s,
        "threshold": f"{op} {threshold}",
        "met": m >= threshold,
    }


def _sorted(rows: list[dict]) -> list[dict]:
    """Reference methods first, then by budget, the seed's settings last."""

    def key(r):
        seed = r["method"].startswith("seed:")
        return (seed, r["budget"] is not None, r["budget"] or 0, r["bytes"])

    return sorted(rows, key=key)


def report_markdown(summary: list[dict], targets: list[dict], datasets: dict, cfg, header: dict) -> str:
    """results.md: one table per dataset (mean ± std over seeds) and the targets."""
    k, depth = cfg.k, cfg.rerank_depth
    lines = [
        "# rewa: compressed retrieval, held out",
        "",
        f"command `{header['command']}`, date {header['date']}, commit `{header['git_commit']}`, "
        f"device {header['environment'].get('device')}, seeds {cfg.seeds}.",
        f"recall = recall@{k} against the exact cosine top-{k} on held-out queries; recall_rerank = after "
        f"re-ranking the top {depth} with the full vectors; train_recall = the same on a same-sized query/database "
        "pair from the train part; gap = train_recall − recall; times per 1000 vectors (encode) or queries (search).",
    ]
    for dataset, info in datasets.items():
        rows = _sorted([r for r in summary if r["dataset"] == dataset])
        cols = _COLUMNS + (["class_precision"] if dataset == "synthetic" else []) + _TIMES
        lines += ["", f"## {dataset}", "", f"split sizes (per seed): {info.get('split_sizes')}", ""]
        lines.append(markdown_table(rows, cols))
        trows = [t for t in targets if t["dataset"] == dataset]
        if trows:
            lines += ["", f"### {dataset}: targets", ""]
            trows = [t | {"met": "met" if t["met"] else "missed"} for t in trows]
            lines.append(markdown_table(trows, ["method", "target", "value", "threshold", "met"]))
    cut = header.get("cut") or []
    lines += [
        "",
        f"Not started for the time budget ({cfg.time_budget_s:g} s): "
        + (", ".join(f"{c['what']} ({c['dataset']}, seed {c['seed']})" for c in cut) or "none"),
    ]
    return "\n".join(lines) + "\n"


def plot_recall(summary: list[dict], k: int, path: str | Path) -> Path:
    """recall@k vs bytes per vector, one panel per dataset, one line per method (error bars: std over seeds);
    dashed: after re-ranking; single-size methods (reference, the seed's settings) as markers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(dict.fromkeys(r["dataset"] for r in summary))
    fig, axes = plt.subplots(1, len(datasets), figsize=(9.5 * len(datasets), 5.5), squeeze=False)
    for ax, dataset in zip(axes[0], datasets, strict=True):
        lines = defaultdict(list)
        for r in summary:
            if r["dataset"] == dataset:
                lines[r["method"]].append(r)
        for method, rows in lines.items():
            rows = sorted(rows, key=lambda r: r["bytes"])
            x = [r["bytes"] for r in rows]
            family = method.removeprefix("seed:")
            marker = "D" if method.startswith("seed:") else ("o" if len(rows) > 1 else "s")
            style = {"marker": marker, "color": _COLOURS.get(family, "gray"), "capsize": 3}
            ax.errorbar(x, [r["recall_mean"] for r in rows], [r["recall_std"] for r in rows], label=method, **style)
            ax.errorbar(
                x,
                [r["recall_rerank_mean"] for r in rows],
                [r["recall_rerank_std"] for r in rows],
                linestyle="--",
                alpha=0.7,
                **style | {"marker": "x"},
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("bytes per stored vector")
        ax.set_ylabel(f"held-out recall@{k} (dashed: re-ranked)")
        ax.set_ylim(0, 1.02)
        ax.set_title(dataset)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()

    def write(f):
        fig.savefig(f, format="png", dpi=120)

    out = atomic_write(path, write)
    plt.close(fig)
    return out
