"""Each epoch of a real fit trains on that epoch's whole draw, with DataLoader workers prefetching from the
iterator Lightning makes and drops before the one it trains on."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from salmonn_symbols.cli import main

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tone_data import make_tone_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def test_every_epoch_trains_on_its_own_draw_with_prefetching_workers(tmp_path):
    task = make_tone_task(tmp_path / "data", {"train": 6, "validation": 1, "test": 1})
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["trainer"].update(callbacks=[{"class_path": "probes.EpochData"}], enable_progress_bar=False)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    cfg["model"].update(schedule={"cycles": 1, "lora_epochs": 2, "mlp_epochs": 1}, rescore=False, eval_modes=["soft"])
    # 18 clips in batches of 2: 9 batches an epoch, more than the 2 workers prefetch (4): Lightning's throw-away
    # iterator of each later epoch's loader must not shorten the epoch it trains on
    cfg["data"].update(tasks=[str(task)], batch_size=2, num_workers=2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path), "--run_dir", str(tmp_path / "run")]) == 0
