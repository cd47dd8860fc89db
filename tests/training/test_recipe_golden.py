"""The recipe pinned: a short tiny fit, seed 0, one thread, must reproduce these numbers.

Any change to the model, the data pipeline, the cycle, discovery or the optimizers that was not meant changes
them. Update ``GOLDEN`` only where an issue asks for a behaviour change, and say so in the commit message.
The run uses the real command (``salmonn-symbols fit``) in a subprocess on a seeded tone dataset, so it needs
no espeak-ng.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tone_data import make_tone_task  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

GOLDEN: dict = {
    "losses": [9.818387031555176, 10.313578605651855, 9.780357360839844, 10.015924453735352],
    "mapping": {"alpha": "lenb", "beta": "oxore", "gamma": "joum"},
    "weights": {
        "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": [
            1.8655427460034844,
            2.6265442746101404,
            -0.02080989070236683,
        ],
        "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": [
            -0.0012958720908500254,
            0.043268667138676796,
            -0.009823714382946491,
        ],
        "llm.base_model.model.model.layers.0.self_attn.v_proj.lora_A.default.weight": [
            -1.159366650506854,
            2.7388052819950395,
            0.08574642241001129,
        ],
        "llm.base_model.model.model.layers.0.self_attn.v_proj.lora_B.default.weight": [
            -0.06404160297825001,
            0.05172426681072229,
            -0.006569174118340015,
        ],
        "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight": [
            0.12833383912220597,
            2.7067094725958603,
            0.051555342972278595,
        ],
        "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight": [
            0.011862693521834444,
            0.04907843841707241,
            0.0024602452758699656,
        ],
        "llm.base_model.model.model.layers.1.self_attn.v_proj.lora_A.default.weight": [
            0.7719650648068637,
            3.0391250215578727,
            0.014754720963537693,
        ],
        "llm.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight": [
            0.1832351828343235,
            0.060718025520289626,
            0.014953015372157097,
        ],
        "symbols.mlp.net.0.bias": [0.14105984941124916, 0.06493315289851505, 0.11872701346874237],
        "symbols.mlp.net.0.weight": [-3.4190422798274085, 2.7308041469118165, 0.06429264694452286],
        "symbols.mlp.net.1.bias": [0.022317502181977034, 0.00037171655789623964, 0.007848212495446205],
        "symbols.mlp.net.1.weight": [8.041943728923798, 8.084249421178232, 1.0079033374786377],
        "symbols.mlp.net.4.bias": [0.07457947405055165, 0.006315367602573136, 0.005871644243597984],
        "symbols.mlp.net.4.weight": [0.16554395307321101, 0.04932870547638793, -0.011776799336075783],
    },
}


def _fingerprint(path: Path) -> dict[str, list[float]]:
    """Per exported tensor: sum, sum of squares and the first element; compared with a tolerance, so the
    check survives CPU kernels that differ in the last bits but not a changed recipe."""
    from safetensors.torch import load_file

    out = {}
    for name, t in sorted(load_file(path).items()):
        t = t.double()
        out[name] = [float(t.sum()), float(t.square().sum()), float(t.flatten()[0])]
    return out


def run_golden(tmp: Path) -> dict:
    """Runs the pinned fit and returns what the test compares."""
    task = make_tone_task(tmp / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["trainer"].update(log_every_n_steps=1, enable_progress_bar=False)
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "x"}}
    cfg["model"]["schedule"] = {"cycles": 2, "lora_epochs": 1, "mlp_epochs": 1}
    cfg["model"]["rescore_samples"] = 2
    cfg["data"].update(tasks=[str(task)], batch_size=4)
    path = tmp / "golden.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONHASHSEED="0")
    cmd = [sys.executable, "-m", "salmonn_symbols", "fit", "--config", str(path), "--run_dir", str(run)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    losses = [float(r["train/loss"]) for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/loss")]
    return {
        "losses": losses[:4],
        "mapping": json.loads((run / "symbols_final.json").read_text())["mapping"],
        "weights": _fingerprint(run / "export" / "trainable.safetensors"),
    }


@pytest.mark.slow
def test_the_recipe_reproduces_its_pinned_numbers(tmp_path):
    got = run_golden(tmp_path)
    torch.testing.assert_close(torch.tensor(got["losses"]), torch.tensor(GOLDEN["losses"]), rtol=1e-4, atol=1e-5)
    assert got["mapping"] == GOLDEN["mapping"]
    assert sorted(got["weights"]) == sorted(GOLDEN["weights"])
    for name, values in got["weights"].items():
        torch.testing.assert_close(
            torch.tensor(values), torch.tensor(GOLDEN["weights"][name]), rtol=1e-4, atol=1e-6, msg=name
        )


if __name__ == "__main__":  # prints the current numbers, to pin them after an intended change
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run_golden(Path(d)), indent=1))
