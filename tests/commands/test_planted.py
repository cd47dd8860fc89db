"""The known-answer benchmark of discovery, at CI size: the cycle finds planted symbols and leaves an
untrained base alone."""

from __future__ import annotations

import json

import pytest

from salmonn_symbols.cli import main


@pytest.mark.slow
def test_planted_benchmark_recovers_the_planted_tokens_and_the_control_keeps_its_symbols(tmp_path, capsys):
    out = tmp_path / "planted"
    args = ["bench", "--what", "planted", "--out", str(out), "--labels", "3", "--seeds", "0"]
    args += ["--arms", "planted,untrained", "--train-per-label", "8", "--val-per-label", "8"]
    assert main(args) == 0
    result = json.loads((out / "planted.json").read_text())
    arms = {r["arm"]: r for r in result["records"]}
    planted, untrained = arms["planted"], arms["untrained"]
    assert planted["plant_accuracy"] >= 0.9  # the base answers with the planted words
    assert planted["oracle_rank1"] >= 0.5  # the task loss itself prefers most planted tokens
    assert planted["token_top1"] >= 2 / 3 and planted["word_top1"] >= 2 / 3
    # the control: nothing planted, nothing to find; every symbol is KEPT
    assert untrained["changed"] == 0 and untrained["token_top1"] == 0
    assert "| planted | 1 |" in (out / "planted.md").read_text()
    assert "| untrained | 1 |" in capsys.readouterr().out
