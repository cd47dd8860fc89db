"""``bench --what fit`` at tiny size on the CPU: the real fit, timed per step, phase and cache setting."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest

from salmonn_symbols.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tone_data import make_tone_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return make_tone_task(tmp_path_factory.mktemp("tones"), {"train": 6, "validation": 1, "test": 1})


def _bench(tmp_path, tones, *extra) -> dict:
    out = tmp_path / "fit.json"
    argv = ["bench", "--what", "fit", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data", str(tones)]
    argv += ["--batch", "4", "--run-dir", str(tmp_path / "runs"), "--out", str(out), *extra]
    argv += ["--fit-args", "--model.rescore false --model.eval_modes [soft]"]
    assert main(argv) == 0
    return json.loads(out.read_text())


def test_fit_bench_times_every_phase_uncached_and_cached_with_profile(tmp_path, tones, capsys):
    res = _bench(tmp_path, tones, "--cache", "off,on", "--profile", "yes")
    assert res["commit"] and res["date"] and "--what fit" in res["command"] and res["device"] == "cpu"
    assert [(r["devices"], r["cache"]) for r in res["runs"]] == [(1, False), (1, True)]
    per_epoch = math.ceil(18 / 4)  # 3 labels × 6 clips, batch 4
    for r in res["runs"]:
        rank = r["ranks"][0]
        for phase in ("lora", "mlp"):
            p = rank["phases"][phase]
            assert p["batches_per_epoch"] == [per_epoch, per_epoch]
            assert p["warmup_first_epoch"] > 0 and p["validation_s"] > 0
        assert rank["discovery_s"] > 0 and rank["start_to_first_step_s"] > rank["build_s"] > 0
        assert "scaling" not in r  # one device: nothing to scale against
    off, on = (r["ranks"][0]["phases"] for r in res["runs"])
    assert off["lora"]["steady"] > 0 and off["lora"]["cached"] is None  # cache off: never a cached epoch
    # the cache starts empty: the first epoch fills it, the later epochs read it
    assert on["lora"]["cache_hit_rate"][0] == 0.0 and on["lora"]["cache_hit_rate"][1] >= 0.95
    assert on["lora"]["cached"] > 0 and on["mlp"]["first_epoch_cached"]
    # the per-stage table: every stage of the one training step, adding up to the step
    stages = res["runs"][0]["stages"][0]["stages_ms"]
    assert set(stages) == {"lora", "mlp"}
    for ms in stages.values():
        for key in ("whisper", "beats", "qformer", "llm forward", "backward", "optimizer"):
            assert ms[key] > 0, key
        parts = sum(v for k, v in ms.items() if k != "step")
        assert parts == pytest.approx(ms["step"], rel=0.05)
    assert len(res["runs"][0]["stages"][0]["traces"]) == 2
    printed = capsys.readouterr().out
    assert "| 1 | on | lora |" in printed and "stages (ms)" in printed


def test_fit_bench_refuses_missing_data_naming_it(tmp_path, capsys):
    argv = ["bench", "--what", "fit", "--config", str(ROOT / "configs" / "tiny.yaml"), "--data", "nope/task.yaml"]
    assert main([*argv, "--out", str(tmp_path / "x.json")]) == 2
    assert "nope/task.yaml" in capsys.readouterr().err


@pytest.mark.slow
def test_two_process_fit_through_train_cycles_has_equal_epochs_of_ceil_n_over_world_batch(tmp_path, tones):
    """2 CPU processes through scripts/train_cycles.sh (GPUS=2): every epoch, on every rank, has the same number
    of batches, ceil(N / (world · batch)); 18 samples in batches of 4 leave a short last round, which is split
    between the ranks rather than dropped."""
    one = {"runs": [{"devices": 1, "cache": True, "total": {"lora": {"cached": 1.0}, "mlp": {"cached": 2.0}}}]}
    (tmp_path / "one.json").write_text(json.dumps(one))  # an earlier 1-device result to scale against
    res = _bench(
        tmp_path, tones, "--devices", "2", "--cache", "on", "--profile", "yes", "--baseline", str(tmp_path / "one.json")
    )
    (run,) = res["runs"]
    assert run["scaling"]["lora"] == pytest.approx(run["total"]["lora"]["cached"])
    assert run["scaling"]["mlp"] == pytest.approx(run["total"]["mlp"]["cached"] / 2)
    assert sorted(s["rank"] for s in run["stages"]) == [0, 1]  # a stage table and traces of each rank
    assert all(set(s["stages_ms"]) == {"lora", "mlp"} and len(s["traces"]) == 2 for s in run["stages"])
    assert run["devices"] == 2 and run["world_size"] == 2 and len(run["ranks"]) == 2
    assert run["fit_command"].startswith("GPUS=2 ") and "train_cycles.sh" in run["fit_command"]
    want = math.ceil(18 / (2 * 4))
    for rank in run["ranks"]:
        assert {p: r["batches_per_epoch"] for p, r in rank["phases"].items()} == {"lora": [want] * 2, "mlp": [want] * 2}
        # every clip was computed on one rank in the first epoch; from the second on it is a hit on both
        assert rank["phases"]["lora"]["cache_hit_rate"][1] == 1.0 and rank["phases"]["lora"]["cached"] > 0
    runs = tmp_path / "runs" / "d2_cache_on" / "bench"
    ranks = [json.loads((runs / f"rank{r}.json").read_text())["epochs"] for r in (0, 1)]
    for e0, e1 in zip(*ranks, strict=True):  # each epoch takes every sample once, over both ranks
        assert sum(e0["samples"]) + sum(e1["samples"]) == 18
