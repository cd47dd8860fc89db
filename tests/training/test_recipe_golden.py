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
    "losses": [9.461745262145996, 9.89919376373291, 9.636286735534668, 8.970444679260254],
    "mapping": {"alpha": "tabb", "beta": "klore", "gamma": "joum"},
    "weights": {
        "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_A.default.weight": [
            0.8934673047624528,
            2.775496709412182,
            0.10835998505353928,
        ],
        "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": [
            -0.002297773608006537,
            0.06390192024930084,
            -0.010553737170994282,
        ],
        "llm.base_model.model.model.layers.0.self_attn.v_proj.lora_A.default.weight": [
            0.14658015116583556,
            2.5370275849793016,
            -0.05941292271018028,
        ],
        "llm.base_model.model.model.layers.0.self_attn.v_proj.lora_B.default.weight": [
            0.029660438784048893,
            0.059111290941261115,
            0.010870072990655899,
        ],
        "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight": [
            1.837310778151732,
            2.951513722047027,
            -0.07778207212686539,
        ],
        "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight": [
            -0.18047806425602175,
            0.06554223982988104,
            -0.006279477383941412,
        ],
        "llm.base_model.model.model.layers.1.self_attn.v_proj.lora_A.default.weight": [
            -1.1720829125260934,
            2.8513875863678724,
            0.010826614685356617,
        ],
        "llm.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight": [
            0.14713691093129455,
            0.0718702235712587,
            0.007126869633793831,
        ],
        "ln_audio.bias": [-0.01833764254115522, 0.002376367979982115, -0.01380159705877304],
        "ln_audio.weight": [31.968434751033783, 31.940100656538934, 0.9876634478569031],
        "ln_speech.bias": [0.016934128187131137, 0.0028324147269671463, 0.013216822408139706],
        "ln_speech.weight": [32.04751056432724, 32.09738488973949, 1.004689335823059],
        "speech_llama_proj.bias": [-0.8925787883345038, 0.6446459819692812, 0.10101449489593506],
        "speech_llama_proj.weight": [-3.1774672496831045, 21.73012081668584, 0.027177903801202774],
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
            0.06117169087519869,
            0.0032176167547242835,
            -0.006289890967309475,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.value.weight": [
            -19.280688082857523,
            95.77342672677864,
            -0.0031533315777778625,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.LayerNorm.bias": [
            -0.112514250096865,
            0.0035524648044571727,
            -0.0013570942683145404,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.LayerNorm.weight": [
            32.03688991069794,
            32.07665782413628,
            0.9958111643791199,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.dense.bias": [
            -0.021398252458311617,
            0.0030152687582452684,
            0.0011643358739092946,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.dense.weight": [
            -5.6719030406093225,
            89.60287503347593,
            0.39500904083251953,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.key.bias": [
            0.00017266085865230707,
            3.010609747049542e-07,
            0.00010613342601573095,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.key.weight": [
            10.634380036062794,
            187.65386935329425,
            0.22933414578437805,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.query.bias": [
            -0.052419045474380255,
            0.0033410873240646943,
            -0.008809100836515427,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.query.weight": [
            -5.894643594743684,
            93.84474470555557,
            0.24747715890407562,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.value.bias": [
            0.03478096018079668,
            0.0016956349008369872,
            -0.0036466766614466906,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.value.weight": [
            -5.524037356022745,
            188.9337987137248,
            0.3056975305080414,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.LayerNorm.bias": [
            0.0503161390661262,
            0.0023962498206692518,
            0.002912362804636359,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.LayerNorm.weight": [
            31.991487622261047,
            31.985321718120467,
            0.9979901909828186,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.dense.bias": [
            -0.0018597095622681081,
            0.002152838664492727,
            0.007632937747985125,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.dense.weight": [
            4.9855382713722065,
            87.37766031977263,
            -0.15018321573734283,
        ],
        "speech_qformer.qformer.encoder.layer.0.intermediate_query.dense.bias": [
            0.045850886730477214,
            0.006628022449184498,
            0.007199699059128761,
        ],
        "speech_qformer.qformer.encoder.layer.0.intermediate_query.dense.weight": [
            -4.830528217134997,
            179.70091776768953,
            -0.3812694549560547,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.LayerNorm.bias": [
            0.03846934053581208,
            0.003259979887394733,
            0.009275655262172222,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.LayerNorm.weight": [
            31.986856162548065,
            31.976533084614626,
            0.985850989818573,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.dense.bias": [
            0.06842923874501139,
            0.0030817648337242054,
            0.009766597300767899,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.dense.weight": [
            4.860092267394066,
            191.50431486264745,
            -0.14853207767009735,
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
            -0.0019886921800207347,
            0.003692634224308294,
            -0.002830951940268278,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.value.weight": [
            -6.554187719943002,
            88.50056812247985,
            0.8523903489112854,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.LayerNorm.bias": [
            -0.013552259537391365,
            0.0028534022102839904,
            -0.00811793189495802,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.LayerNorm.weight": [
            32.0164800286293,
            32.035209729130244,
            1.0087196826934814,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.dense.bias": [
            0.02441872947383672,
            0.0024000597074610424,
            -0.00867345929145813,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.dense.weight": [
            -4.968583977984963,
            89.57935335217675,
            -0.32401788234710693,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.key.bias": [
            0.00028727230255753966,
            3.368995988347723e-07,
            6.531130202347413e-05,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.key.weight": [
            30.062360767449718,
            188.77704058869395,
            -0.05091552436351776,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.query.bias": [
            -0.006617743754759431,
            0.003119113816204234,
            0.011251390911638737,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.query.weight": [
            14.20813242305303,
            87.1490647362075,
            -0.6038452982902527,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.value.bias": [
            -0.01613794098375365,
            0.003218171686079095,
            0.001988533418625593,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.value.weight": [
            13.589577203529188,
            186.09026672535637,
            0.026650508865714073,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.LayerNorm.bias": [
            0.01477373467059806,
            0.002916987697139863,
            -0.008804863318800926,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.LayerNorm.weight": [
            31.945290625095367,
            31.893096406547027,
            1.005484700202942,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.dense.bias": [
            0.007359495968557894,
            0.0029341742527940256,
            -0.00955573283135891,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.dense.weight": [
            -5.814862194849411,
            97.1575418860964,
            0.23768682777881622,
        ],
        "speech_qformer.qformer.encoder.layer.1.intermediate_query.dense.bias": [
            -0.004328752460423857,
            0.00649717428122553,
            0.0139859514310956,
        ],
        "speech_qformer.qformer.encoder.layer.1.intermediate_query.dense.weight": [
            -8.222963440523017,
            176.00431993141243,
            0.4083421230316162,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.LayerNorm.bias": [
            0.08656975562917069,
            0.0030773776636152587,
            -0.004371790215373039,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.LayerNorm.weight": [
            31.972889304161072,
            31.948818354670983,
            1.002002477645874,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.dense.bias": [
            0.055600738851353526,
            0.0031412394683633196,
            -0.004879112355411053,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.dense.weight": [
            15.457311045611277,
            174.77560719205826,
            -0.2075231820344925,
        ],
        "speech_qformer.qformer.layernorm.bias": [0.08141588151920587, 0.003371745064005586, 0.007218493148684502],
        "speech_qformer.qformer.layernorm.weight": [32.00920921564102, 32.02178581247584, 0.9925578832626343],
        "speech_qformer.query_tokens": [0.435854759067297, 2.8722695825954685, -0.2261189967393875],
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
