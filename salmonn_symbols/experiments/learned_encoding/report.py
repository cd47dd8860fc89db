"""From per-seed records to summaries, target checks, results.md and the two figures.

records ─► + steps to 110% of the same seed's final full-arm val loss, gap to the full arm (%)
        ─► summarize by (dataset, variant, arm, ratio): mean ± std over seeds
        ─► checks: joint vs full near 10:1, joint vs every fixed code at every ratio, DNA vs Markov,
                   toys vs their exact bound ─► results.md tables; loss_vs_ratio.png, training_curves.png
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from ...io import atomic_write_bytes
from ..common import markdown_table, summarize

__all__ = ["add_derived", "checks", "figures", "markdown", "summaries"]

METRICS = [
    "test_bits",
    "reached_110",
    "gap_to_full_pct",
    "steps_to_110",
    "embed_params",
    "embed_bytes",
    "train_s",
    "wall_s",
    "energy_kept",
    "reconstruction_rel_error",
]
UNIT_NAME = {"byte": "bits/byte", "base": "bits/base", "token": "bits/token"}
REFERENCE_RATIO = 10  # the seed's claim: 64 -> 6


def add_derived(records: list[dict]) -> None:
    """Adds ``steps_to_110`` and ``gap_to_full_pct`` (vs the same dataset, variant and seed's full arm)."""
    full = {(r["dataset"], r["variant"], r["seed"]): r for r in records if r["arm"] == "full"}
    for r in records:
        ref = full.get((r["dataset"], r["variant"], r["seed"]))
        if ref is None or ref["final_val_loss"] is None:
            r["steps_to_110"] = r["gap_to_full_pct"] = r["reached_110"] = None
            continue
        target = 1.1 * ref["final_val_loss"]
        r["steps_to_110"] = next((step for step, loss in r["val_curve"] if loss <= target), None)
        r["reached_110"] = float(r["steps_to_110"] is not None)
        r["gap_to_full_pct"] = 100 * (r["test_bits"] / ref["test_bits"] - 1)


def summaries(records: list[dict]) -> list[dict]:
    """Mean ± std over seeds per dataset × variant × arm × ratio, in plan order."""
    return summarize(records, ["dataset", "unit", "variant", "arm", "ratio", "r"], METRICS)


def _row(rows: list[dict], **match) -> dict | None:
    return next((r for r in rows if all(r.get(k) == v for k, v in match.items())), None)


def _separated(a: dict, b: dict) -> bool:
    """a's mean + std is below b's mean - std: better beyond both seeds' spreads."""
    return a["test_bits_mean"] + a["test_bits_std"] < b["test_bits_mean"] - b["test_bits_std"]


def checks(rows: list[dict], baselines: dict[str, dict], ratios: list[int]) -> list[dict]:
    """The issue's targets, per dataset and variant, each with its number and met / missed."""
    out = []
    ref_ratio = min(ratios, key=lambda x: abs(x - REFERENCE_RATIO)) if ratios else None
    for ds, var in dict.fromkeys((r["dataset"], r["variant"]) for r in rows):
        full, joint = (
            _row(rows, dataset=ds, variant=var, arm="full"),
            _row(rows, dataset=ds, variant=var, arm="joint", ratio=ref_ratio),
        )
        if full and joint:
            gap = 100 * (joint["test_bits_mean"] / full["test_bits_mean"] - 1)
            out.append(
                {
                    "dataset": ds,
                    "variant": var,
                    "check": f"joint within 2% of full at {ref_ratio}:1",
                    "value": f"{gap:+.2f}%",
                    "met": gap <= 2.0,
                }
            )
        for ratio in ratios:
            j = _row(rows, dataset=ds, variant=var, arm="joint", ratio=ratio)
            others = [r for r in rows if (r["dataset"], r["variant"], r["ratio"]) == (ds, var, ratio)]
            others = [r for r in others if r["arm"] not in ("joint", "full")]
            if j and others:
                beaten = [o["arm"] for o in others if _separated(j, o)]
                out.append(
                    {
                        "dataset": ds,
                        "variant": var,
                        "check": f"joint beats the fixed codes beyond ±std at {ratio}:1",
                        "value": f"beats {beaten or 'none'} of {[o['arm'] for o in others]}",
                        "met": len(beaten) == len(others),
                    }
                )
        base = baselines.get(ds)
        if base:
            out.append(_baseline_check(ds, var, base, [r for r in rows if (r["dataset"], r["variant"]) == (ds, var)]))
    return out


def _baseline_check(ds: str, var: str, base: dict, arms: list[dict]) -> dict:
    """DNA: every arm must be below the Markov baseline. Toys: the gap to the exact bound (no target)."""
    best = min(arms, key=lambda r: r["test_bits_mean"])
    worst = max(arms, key=lambda r: r["test_bits_mean"])
    row = {"dataset": ds, "variant": var}
    if base["kind"] == "baseline":
        return row | {
            "check": f"every arm below the {base['name']} ({base['bits']:.4f})",
            "value": f"worst {worst['arm']} {worst['ratio']}:1 {worst['test_bits_mean']:.4f}",
            "met": worst["test_bits_mean"] < base["bits"],
        }
    gaps = [100 * (r["test_bits_mean"] / base["bits"] - 1) for r in (best, worst)]
    return row | {
        "check": f"gap to the {base['name']} ({base['bits']:.4f})",
        "value": f"best {best['arm']} {gaps[0]:+.1f}%, worst {worst['arm']} {worst['ratio']}:1 {gaps[1]:+.1f}%",
        "met": "no target",
    }


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _pm(row: dict, metric: str, digits: int, sign: str = "") -> str:
    m, sd = row.get(f"{metric}_mean"), row.get(f"{metric}_std")
    if not _finite(m):  # no seed has a value
        return "n/a"
    return f"{m:{sign}.{digits}f} ± {sd:.{digits}f}"


def _display(row: dict) -> dict:
    """One results.md row: mean ± std where seeds differ, plain numbers where they cannot."""
    reached = row.get("reached_110_mean") or 0.0
    steps = _pm(row, "steps_to_110", 0)
    if reached < 1:
        steps = f"{steps} ({round(reached * row['n'])}/{row['n']} reached)"
    fit = ""
    if _finite(row.get("energy_kept_mean")):
        fit = f"energy kept {row['energy_kept_mean']:.3f}"
    elif _finite(row.get("reconstruction_rel_error_mean")):
        fit = f"recon. error {row['reconstruction_rel_error_mean']:.3f}"
    return {
        "arm": row["arm"],
        "d/r": row["ratio"],
        "r": row["r"],
        "held-out": _pm(row, "test_bits", 4),
        "vs full (%)": "" if row["arm"] == "full" else _pm(row, "gap_to_full_pct", 2, "+"),
        "steps to 110%": steps,
        "embedding params": f"{row['embed_params_mean']:,.0f}",
        "embedding KiB": f"{row['embed_bytes_mean'] / 1024:,.1f}",
        "fixed-code fit": fit,
        "train s": f"{row['train_s_mean']:.1f}",
        "seeds": row["n"],
    }


def markdown(header: dict, rows: list[dict], baselines: dict, check_rows: list[dict], cut: list[str]) -> str:
    """results.md: one table per dataset × variant, the baselines, the checks and what was cut."""
    cfg = header["config"]
    lines = [
        f"# learned-encoding ({header['preset']})",
        "",
        f"`{header['command']}` · {header['date']} · commit `{header['git_commit']}`"
        f" · {header['environment']['device']}",
        "",
        f"d={cfg['d_model']}, {cfg['n_layers']} layers, {cfg['steps']} steps × {cfg['batch_size']} windows × "
        f"{cfg['seq_len']} tokens, seeds {cfg['seeds']}; held-out test split, mean ± std over seeds. Steps to 110%: "
        "first validation step within 110% of the same seed's final full-arm validation loss.",
        "",
    ]
    for ds, var in dict.fromkeys((r["dataset"], r["variant"]) for r in rows):
        sub = [_display(r) for r in rows if (r["dataset"], r["variant"]) == (ds, var)]
        unit = UNIT_NAME[next(r["unit"] for r in rows if r["dataset"] == ds)]
        lines += [f"## {ds}, {var} output (held-out {unit})", "", markdown_table(sub, list(sub[0])), ""]
        if ds in baselines:
            b = baselines[ds]
            lines += [f"{b['name']}: {b['bits']:.4f} {unit} on the same test windows.", ""]
    lines += ["## Checks", "", markdown_table(check_rows, ["dataset", "variant", "check", "value", "met"]), ""]
    lines += [f"Cut by the time budget ({len(cut)}): {', '.join(cut) if cut else 'none'}", ""]
    return "\n".join(lines)


def _plot_setup():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


COLORS = {"full": "black", "joint": "tab:blue", "autoencoder": "tab:orange", "svd": "tab:green", "random": "tab:red"}


def figures(out_dir: Path, rows: list[dict], records: list[dict], baselines: dict, ratios: list[int]) -> list[Path]:
    """loss_vs_ratio.png (held-out loss vs d/r per dataset, one line per arm, ±std bars; tied dashed) and
    training_curves.png (validation loss vs step at the ratio nearest 10:1, mean ± std over seeds)."""
    plt = _plot_setup()
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for var, style in (("untied", "-"), ("tied", "--")):
            sub = [r for r in rows if (r["dataset"], r["variant"]) == (ds, var)]
            for arm in COLORS:
                pts = sorted((r for r in sub if r["arm"] == arm), key=lambda r: r["ratio"])
                if arm == "full" and pts:
                    m, s = pts[0]["test_bits_mean"], pts[0]["test_bits_std"]
                    ax.axhline(m, color="black", ls=style, lw=1, label=f"full ({var})")
                    ax.axhspan(m - s, m + s, color="black", alpha=0.08)
                elif pts:
                    ax.errorbar(
                        [p["ratio"] for p in pts],
                        [p["test_bits_mean"] for p in pts],
                        yerr=[p["test_bits_std"] for p in pts],
                        color=COLORS[arm],
                        ls=style,
                        marker="o" if var == "untied" else "s",
                        mfc=COLORS[arm] if var == "untied" else "white",
                        ms=3.5,
                        capsize=2,
                        label=f"{arm} ({var})",
                    )
        if ds in baselines:
            ax.axhline(baselines[ds]["bits"], color="gray", ls=":", label=baselines[ds]["name"])
        unit = UNIT_NAME[next(r["unit"] for r in rows if r["dataset"] == ds)]
        ax.set(xscale="log", xlabel="compression ratio d/r", ylabel=f"held-out {unit}", title=ds)
        ax.set_xticks(ratios, [str(x) for x in ratios])
        ax.minorticks_off()
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    paths = [_save(plt, fig, out_dir / "loss_vs_ratio.png")]
    paths.append(_curves_figure(plt, out_dir, records, datasets, ratios))
    return paths


def _curves_figure(plt, out_dir: Path, records: list[dict], datasets: list[str], ratios: list[int]) -> Path:
    import numpy as np

    ratio = min(ratios, key=lambda x: abs(x - REFERENCE_RATIO)) if ratios else 1
    fig, axes = plt.subplots(1, len(datasets), figsize=(4.6 * len(datasets), 3.6), squeeze=False)
    for ax, ds in zip(axes[0], datasets, strict=True):
        for arm, color in COLORS.items():
            runs = [
                r["val_curve"]
                for r in records
                if (r["dataset"], r["variant"], r["arm"]) == (ds, "untied", arm)
                and r["ratio"] in (ratio, 1)
                and r["val_curve"]
            ]
            n = min((len(c) for c in runs), default=0)
            if not n:
                continue
            steps = [p[0] for p in runs[0][:n]]
            vals = np.array([[p[1] for p in c[:n]] for c in runs])  # (seeds, evals)
            m, s = vals.mean(0), vals.std(0)
            ax.plot(steps, m, color=color, label=arm if arm == "full" else f"{arm} {ratio}:1")
            ax.fill_between(steps, m - s, m + s, color=color, alpha=0.15)
            if arm == "full":
                ax.axhline(1.1 * m[-1], color="black", ls=":", lw=0.8, label="110% of final full")
        ax.set(xlabel="step", ylabel="validation loss (nats/token)", title=f"{ds} (untied)")
        ax.grid(alpha=0.3)
    _legend(fig, axes[0])
    return _save(plt, fig, out_dir / "training_curves.png")


def _legend(fig, axes) -> None:
    """One legend for all panels (each label once), right of them."""
    seen: dict = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(label, handle)
    fig.tight_layout()
    fig.legend(list(seen.values()), list(seen), fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))


def _save(plt, fig, path: Path) -> Path:
    """Writes the figure as PNG atomically and closes it."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=150, bbox_inches="tight")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())
