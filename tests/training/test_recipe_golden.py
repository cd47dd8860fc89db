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
    "losses": [10.191540718078613, 10.363027572631836, 9.974778175354004, 9.840713500976562],
    "mapping": {"alpha": "tabb", "beta": "klore", "gamma": "joum"},
    "weights": {
        "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": [
            1.7413798345951363,
            2.725927412210302,
            -0.010104915127158165,
        ],
        "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": [
            -0.11164057499263436,
            0.06274533768428806,
            0.010657836683094501,
        ],
        "llm.base_model.model.model.layers.0.self_attn.v_proj.lora_A.default.weight": [
            -1.683368232974317,
            2.757438008528335,
            0.08648605644702911,
        ],
        "llm.base_model.model.model.layers.0.self_attn.v_proj.lora_B.default.weight": [
            -0.05934296868508682,
            0.054382737175041065,
            0.011262711137533188,
        ],
        "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight": [
            -0.015657717478461564,
            2.7701393606276112,
            0.035444535315036774,
        ],
        "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight": [
            -0.42486423725495115,
            0.05734440951209631,
            -0.003824158338829875,
        ],
        "llm.base_model.model.model.layers.1.self_attn.v_proj.lora_A.default.weight": [
            0.5641732559306547,
            3.0061571213158134,
            0.01401479821652174,
        ],
        "llm.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight": [
            0.06952625607664231,
            0.05170446250615389,
            0.012982375919818878,
        ],
        "symbols.mlp.net.0.bias": [0.24348866939544678, 0.07163542902521547, 0.12134812772274017],
        "symbols.mlp.net.0.weight": [-2.4937805384397507, 2.637466080665588, 0.028673768043518066],
        "symbols.mlp.net.1.bias": [0.0, 0.0, 0.0],
        "symbols.mlp.net.1.weight": [8.0, 8.0, 1.0],
        "symbols.mlp.net.4.bias": [0.0, 0.0, 0.0],
        "symbols.mlp.net.4.weight": [0.0, 0.0, 0.0],
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
