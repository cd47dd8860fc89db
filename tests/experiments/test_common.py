"""The shared experiment command line: preset < config file < keys, typo errors, JSON-safe results."""

import json
from dataclasses import dataclass, field

import pytest

from salmonn_symbols.experiments.common import (
    Experiment,
    markdown_table,
    mean_std,
    parse_experiment_args,
    summarize,
    write_results,
)


@dataclass
class ToyConfig:
    steps: int = 100
    lr: float = 1e-3
    ratios: list[int] = field(default_factory=lambda: [4, 8])
    device: str = "cpu"


TOY = Experiment("toy", "a toy", ToyConfig, lambda cfg, out: None, {"quick": {"steps": 5}, "full": {"steps": 500}})


def test_precedence_preset_then_config_then_keys(tmp_path):
    cfg, out, preset = parse_experiment_args(TOY, [])
    assert (cfg.steps, preset) == (5, "quick") and out.parts[-2:] == ("toy", "quick")
    cfg, _, _ = parse_experiment_args(TOY, ["--preset", "full"])
    assert cfg.steps == 500 and cfg.lr == 1e-3
    yml = tmp_path / "c.yaml"
    yml.write_text("lr: 0.5\nratios: [16]\n")
    cfg, out, _ = parse_experiment_args(TOY, ["--preset", "full", "--config", str(yml), "--steps", "7", "--out", "x"])
    assert (cfg.steps, cfg.lr, cfg.ratios, str(out)) == (7, 0.5, [16], "x")


def test_unknown_key_and_preset_are_named(capsys):
    with pytest.raises(SystemExit):
        parse_experiment_args(TOY, ["--stepz", "3"])
    assert "stepz" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        parse_experiment_args(TOY, ["--preset", "huge"])


def test_results_are_strict_json_and_summaries_aggregate_seeds(tmp_path):
    import numpy as np

    path = write_results(tmp_path, {"x": np.float32(0.5), "bad": float("nan"), "rows": [(1, 2)]})
    assert json.loads(path.read_text()) == {"x": 0.5, "bad": None, "rows": [[1, 2]]}
    rows = [{"arm": "a", "seed": s, "loss": v} for s, v in enumerate((1.0, 2.0, 3.0))] + [
        {"arm": "b", "seed": 0, "loss": 5.0}
    ]
    table = summarize(rows, ["arm"], ["loss"])
    assert table[0]["loss_mean"] == 2.0 and table[0]["loss_std"] == 1.0 and table[0]["n"] == 3
    assert table[1]["loss_std"] == 0.0
    assert "| a | 2.000 ± 1.000 |" in markdown_table(table, ["arm", "loss"])
    assert mean_std([]) != mean_std([])  # NaN for no values
