"""Each epoch of a real fit trains on that epoch's draw, also when the DataLoader's workers prefetch a whole epoch
before Lightning sets the sampler's epoch."""

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
    # 18 clips in batches of 8: 3 batches an epoch, fewer than the 2 workers' 4 prefetched ones
    cfg["data"].update(tasks=[str(task)], batch_size=8, num_workers=2)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["fit", "--config", str(path), "--run_dir", str(tmp_path / "run")]) == 0
