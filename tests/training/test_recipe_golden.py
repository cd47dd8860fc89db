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
    "losses": [9.62463665008545, 9.86928939819336, 9.623289108276367, 9.13455867767334],
    "mapping": {"alpha": "tabb", "beta": "klore", "gamma": "joum"},
    "weights": {
        "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": [
            0.9838204684201628,
            2.7499099758318564,
            0.10647690296173096,
        ],
        "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": [
            -0.10756403784034774,
            0.06319832202358595,
            -0.010814656503498554,
        ],
        "llm.base_model.model.model.layers.0.self_attn.v_proj.lora_A.default.weight": [
            0.01195395621471107,
            2.5286996549985137,
            -0.05913468077778816,
        ],
        "llm.base_model.model.model.layers.0.self_attn.v_proj.lora_B.default.weight": [
            -0.03794514967012219,
            0.059041125012453476,
            0.011008914560079575,
        ],
        "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight": [
            1.8543203726876527,
            2.9514392100556854,
            -0.07903791218996048,
        ],
        "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight": [
            -0.19620089398813434,
            0.06560523608446159,
            -0.004711853340268135,
        ],
        "llm.base_model.model.model.layers.1.self_attn.v_proj.lora_A.default.weight": [
            -1.1318272207863629,
            2.8578526687741173,
            0.010891575366258621,
        ],
        "llm.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight": [
            0.15370811719913036,
            0.07271433539086151,
            0.016158374026417732,
        ],
        "ln_audio.bias": [-0.07011584937572479, 0.002438054881445665, -0.011483478359878063],
        "ln_audio.weight": [31.9960178732872, 31.994932567990883, 0.9902035593986511],
        "ln_speech.bias": [0.022102704271674156, 0.0023827556184961704, 0.01383276842534542],
        "ln_speech.weight": [32.041821002960205, 32.08664882865031, 1.0131527185440063],
        "speech_llama_proj.bias": [-0.919239868875593, 0.6594791856684246, 0.10062457621097565],
        "speech_llama_proj.weight": [-3.198904448596295, 21.74361761040663, 0.03918352723121643],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.key.bias": [0.0, 0.0, 0.0],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.key.weight": [
            -12.53338323108619,
            89.26271483966893,
            -0.17802497744560242,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.query.bias": [0.0, 0.0, 0.0],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.query.weight": [
            -8.814943347941153,
            92.68562213186269,
            -0.09699494391679764,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.value.bias": [
            0.008889333432307467,
            0.0024211974088129565,
            0.00635638739913702,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.value.weight": [
            -19.381241977214813,
            95.7919130611086,
            -0.015714794397354126,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.LayerNorm.bias": [
            0.04543244151864201,
            0.0015222466631077197,
            0.008357281796634197,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.LayerNorm.weight": [
            31.91725128889084,
            31.837144070928435,
            0.9904588460922241,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.dense.bias": [
            -0.0391367620031815,
            0.00211631283862014,
            0.008810575120151043,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.dense.weight": [
            -5.505252266069874,
            89.48991560361733,
            0.38503244519233704,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.key.bias": [
            -7.327717605676298e-05,
            1.7911771361113122e-07,
            6.798960384912789e-05,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.key.weight": [
            10.848524613073096,
            187.938335216841,
            0.2263212502002716,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.query.bias": [
            -0.06671165762236342,
            0.0021487926867739256,
            0.006916645914316177,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.query.weight": [
            -5.8146887788316235,
            93.58883780228308,
            0.2405078113079071,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.value.bias": [
            -0.05285487731453031,
            0.0022041265569815757,
            -0.014900089241564274,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.value.weight": [
            -5.686005071242107,
            188.99828645202575,
            0.2880615293979645,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.LayerNorm.bias": [
            0.06059150875080377,
            0.0017347258900084163,
            0.00599208939820528,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.LayerNorm.weight": [
            32.02306342124939,
            32.04877341912423,
            1.0012803077697754,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.dense.bias": [
            -0.011330510198604316,
            0.0017766131600131688,
            -0.010184712707996368,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.dense.weight": [
            4.988254574243911,
            87.45593007140573,
            -0.15985698997974396,
        ],
        "speech_qformer.qformer.encoder.layer.0.intermediate_query.dense.bias": [
            0.030722903058631346,
            0.004476783374030353,
            0.004298437852412462,
        ],
        "speech_qformer.qformer.encoder.layer.0.intermediate_query.dense.weight": [
            -5.439485970506212,
            179.49442486593168,
            -0.3779829442501068,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.LayerNorm.bias": [
            -0.01716207480058074,
            0.0026239731650767846,
            0.011738821864128113,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.LayerNorm.weight": [
            31.984897315502167,
            31.972519135062942,
            1.0016850233078003,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.dense.bias": [
            -0.029211845714598894,
            0.0023108495465560277,
            0.010704184882342815,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.dense.weight": [
            4.66314013506053,
            191.51246834557602,
            -0.14976583421230316,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.key.bias": [0.0, 0.0, 0.0],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.key.weight": [
            -7.837044378800783,
            87.17289070910792,
            -0.3114856481552124,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.query.bias": [0.0, 0.0, 0.0],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.query.weight": [
            17.483482646930497,
            97.51992859842815,
            0.1323983371257782,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.value.bias": [
            -0.031241749034961686,
            0.002575083820678935,
            -8.12890357337892e-06,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.value.weight": [
            -6.691248502524104,
            88.51932139211462,
            0.8767594695091248,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.LayerNorm.bias": [
            0.047168903693091124,
            0.002939476380504876,
            -0.014336643740534782,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.LayerNorm.weight": [
            32.023258686065674,
            32.048996266444824,
            1.0012125968933105,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.dense.bias": [
            -0.0034272123593837023,
            0.003176061813586888,
            -0.012945452705025673,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.dense.weight": [
            -4.9916564102168195,
            89.5503295344542,
            -0.3149245083332062,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.key.bias": [
            -0.00014408122115128208,
            1.7260728433700142e-06,
            -0.00014336798631120473,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.key.weight": [
            30.217580046097282,
            188.92042120863465,
            -0.04497691988945007,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.query.bias": [
            -0.06119901209603995,
            0.0022188362535676513,
            0.00913946982473135,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.query.weight": [
            14.289483152329922,
            87.48648064196784,
            -0.5869809985160828,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.value.bias": [
            -0.005694926541764289,
            0.0029004965964170167,
            -0.006550361402332783,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.value.weight": [
            13.51178829203127,
            186.33528138212452,
            0.024625342339277267,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.LayerNorm.bias": [
            -0.017539996188133955,
            0.002808979314795422,
            -0.011824576184153557,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.LayerNorm.weight": [
            31.936797261238098,
            31.87646618533141,
            0.9941771030426025,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.dense.bias": [
            0.02094814192969352,
            0.00289911683759853,
            -0.010521363466978073,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.dense.weight": [
            -6.013411584775895,
            97.07333130666944,
            0.2510209083557129,
        ],
        "speech_qformer.qformer.encoder.layer.1.intermediate_query.dense.bias": [
            -0.032803835230879486,
            0.006006792512937276,
            0.006064617540687323,
        ],
        "speech_qformer.qformer.encoder.layer.1.intermediate_query.dense.weight": [
            -8.918690515332855,
            176.4524086817954,
            0.4165918231010437,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.LayerNorm.bias": [
            0.07681988488184288,
            0.0030898902533146684,
            -0.004449629224836826,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.LayerNorm.weight": [
            31.993649899959564,
            31.990338242216428,
            0.9937165379524231,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.dense.bias": [
            0.04312416922766715,
            0.0029529181433421954,
            -0.006214763503521681,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.dense.weight": [
            14.93098221316177,
            174.81498121296798,
            -0.2041216641664505,
        ],
        "speech_qformer.qformer.layernorm.bias": [-0.021520033827982843, 0.0025438465731519224, -0.005853962153196335],
        "speech_qformer.qformer.layernorm.weight": [31.97486901283264, 31.952304266868538, 1.0056288242340088],
        "speech_qformer.query_tokens": [0.4062601716723293, 2.870035759950915, -0.23780111968517303],
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
