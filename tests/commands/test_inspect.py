"""The published figure: label × cycle with the discovered word, its change type and evidence, and accuracy per
mapping."""

from __future__ import annotations

import matplotlib.pyplot as plt

from salmonn_symbols.commands.inspect_run import COLOURS, evolution_figure


def _change(label, current, found, kind, delta=None, se=None):
    return {
        "original_label": label,
        "current_symbol": current,
        "discovered_symbol": found,
        "change_type": kind,
        "delta": delta,
        "se": se,
        "similarity": 0.5,
        "confidence": "medium",
    }


def test_the_figure_shows_every_label_and_cycle_with_change_types_and_accuracy_per_mapping():
    cycles = [
        (
            1,
            {
                "symbol_changes": [
                    _change("alpha", "duh", "kesh", "CHANGED", -0.8, 0.1),
                    _change("beta", "mol", "mol", "KEPT"),
                ]
            },
        ),
        (
            2,
            {
                "symbol_changes": [
                    _change("alpha", "kesh", "kesh", "KEPT"),
                    _change("beta", "mol", "tir", "CHANGED", -0.5, 0.1),
                ]
            },
        ),
    ]
    accuracy = {
        "soft": {0: 0.4, 1: 0.7},
        "hard": {0: 0.35, 1: 0.65},
        "original": {0: 0.9, 1: 0.9},
        "discovered": {1: 0.6, 2: 0.7},
    }
    fig = evolution_figure(cycles, accuracy)
    grid, acc = fig.axes
    texts = [t.get_text() for t in grid.texts]
    # cycle 0 (the start symbols) and both discoveries, each label's word in each
    assert [t.get_text() for t in grid.get_xticklabels()] == ["cycle 0", "cycle 1", "cycle 2"]
    assert {"duh", "kesh", "mol", "tir"} <= set(texts)
    assert "Δ-0.80±0.10" in texts and "Δ-0.50±0.10" in texts  # the evidence of each change
    colours = {tuple(p.get_facecolor()) for p in grid.patches}
    assert len(colours) >= 3  # start, changed and kept cells differ
    legend = [t.get_text() for t in grid.get_legend().get_texts()]
    assert legend == [k.lower() for k in COLOURS]
    # accuracy per mapping in every condition
    assert sorted(line.get_label() for line in acc.lines) == ["discovered", "hard", "original", "soft"]
    soft = next(line for line in acc.lines if line.get_label() == "soft")
    assert list(soft.get_ydata()) == [0.4, 0.7]
    plt.close(fig)
