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
            0.8962488665711135,
            2.778043540499025,
            0.10846319794654846,
        ],
        "llm.base_model.model.model.layers.0.self_attn.q_proj.lora_B.default.weight": [
            0.029848393460270017,
            0.06437587932087412,
            -0.013543625362217426,
        ],
        "llm.base_model.model.model.layers.0.self_attn.v_proj.lora_A.default.weight": [
            0.12169870594516397,
            2.5381676806490656,
            -0.059575945138931274,
        ],
        "llm.base_model.model.model.layers.0.self_attn.v_proj.lora_B.default.weight": [
            0.06314287625718862,
            0.05957176423739341,
            0.012299065478146076,
        ],
        "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_A.default.weight": [
            1.8431570687098429,
            2.950471974617614,
            -0.07741578668355942,
        ],
        "llm.base_model.model.model.layers.1.self_attn.q_proj.lora_B.default.weight": [
            -0.18909693596651778,
            0.06555030966842051,
            -0.005563626531511545,
        ],
        "llm.base_model.model.model.layers.1.self_attn.v_proj.lora_A.default.weight": [
            -1.1739478193921968,
            2.8461543798755806,
            0.010800705291330814,
        ],
        "llm.base_model.model.model.layers.1.self_attn.v_proj.lora_B.default.weight": [
            0.14247636724758195,
            0.07176470850518202,
            0.007169943302869797,
        ],
        "ln_audio.bias": [
            -0.01578257721848786,
            0.002386387598839959,
            -0.012712265364825726,
        ],
        "ln_audio.weight": [
            31.97980374097824,
            31.96291690980252,
            0.9882039427757263,
        ],
        "ln_speech.bias": [
            0.027451297326479107,
            0.002666976566569506,
            0.01202644594013691,
        ],
        "ln_speech.weight": [
            32.05331909656525,
            32.108943188709326,
            1.0045312643051147,
        ],
        "speech_llama_proj.bias": [
            -0.8781956764869392,
            0.6423661497241081,
            0.10078730434179306,
        ],
        "speech_llama_proj.weight": [
            -3.1753778357087867,
            21.732001736492165,
            0.02734176628291607,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.key.bias": [
            0.0,
            0.0,
            0.0,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.key.weight": [
            -12.53338323108619,
            89.26271483966893,
            -0.17802497744560242,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.query.bias": [
            0.0,
            0.0,
            0.0,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.query.weight": [
            -8.814943347941153,
            92.68562213186269,
            -0.09699494391679764,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.value.bias": [
            0.057963224244304,
            0.002604827317385046,
            -0.006074110046029091,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.attention.value.weight": [
            -19.276475191116333,
            95.77804361523849,
            -0.0033505605533719063,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.LayerNorm.bias": [
            -0.08887414747732691,
            0.0033108866281981895,
            0.0012209519045427442,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.LayerNorm.weight": [
            32.037324607372284,
            32.07761776144723,
            0.9931054711341858,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.dense.bias": [
            -0.00762399603263475,
            0.0030044481894873605,
            0.0025499179027974606,
        ],
        "speech_qformer.qformer.encoder.layer.0.attention.output.dense.weight": [
            -5.665162245393731,
            89.61994549993894,
            0.3920707702636719,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.key.bias": [
            0.00016775875656094286,
            1.795174968792145e-07,
            9.258857608074322e-05,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.key.weight": [
            10.624673015525332,
            187.67758902794,
            0.2361157387495041,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.query.bias": [
            -0.05046574235893786,
            0.0032370316711166024,
            -0.005514928605407476,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.query.weight": [
            -5.882474978687242,
            93.86344115175291,
            0.24543121457099915,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.value.bias": [
            0.033779363555368036,
            0.002277648351333295,
            -0.0035358041059225798,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.attention.value.weight": [
            -5.555483722651843,
            189.01896726061108,
            0.3043912351131439,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.LayerNorm.bias": [
            0.04038391768699512,
            0.002655984297643062,
            -7.294974057003856e-05,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.LayerNorm.weight": [
            31.99215543270111,
            31.986993937151922,
            0.9881545901298523,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.dense.bias": [
            -0.01047769479919225,
            0.0024141317813002336,
            0.004997543059289455,
        ],
        "speech_qformer.qformer.encoder.layer.0.crossattention.output.dense.weight": [
            4.937180297449231,
            87.38969963148217,
            -0.15169882774353027,
        ],
        "speech_qformer.qformer.encoder.layer.0.intermediate_query.dense.bias": [
            0.07034418021794409,
            0.0066068529945050025,
            0.00709509989246726,
        ],
        "speech_qformer.qformer.encoder.layer.0.intermediate_query.dense.weight": [
            -4.855782200640533,
            179.79359769506087,
            -0.3815232515335083,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.LayerNorm.bias": [
            0.035834504989907146,
            0.003562217178493407,
            0.013262229040265083,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.LayerNorm.weight": [
            31.98448932170868,
            31.971686842658563,
            0.9922629594802856,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.dense.bias": [
            0.07271230133483186,
            0.003392751573848195,
            0.014049516059458256,
        ],
        "speech_qformer.qformer.encoder.layer.0.output_query.dense.weight": [
            4.861046605132287,
            191.4898277968133,
            -0.14668312668800354,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.key.bias": [
            0.0,
            0.0,
            0.0,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.key.weight": [
            -7.837044378800783,
            87.17289070910792,
            -0.3114856481552124,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.query.bias": [
            0.0,
            0.0,
            0.0,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.query.weight": [
            17.483482646930497,
            97.51992859842815,
            0.1323983371257782,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.value.bias": [
            0.009500759944785386,
            0.0040044868155972935,
            0.003298582276329398,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.attention.value.weight": [
            -6.50026366248494,
            88.4721244664608,
            0.8545747995376587,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.LayerNorm.bias": [
            -0.01919914927566424,
            0.003095513444604184,
            -0.009018220007419586,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.LayerNorm.weight": [
            32.019574999809265,
            32.041350713547615,
            1.0065808296203613,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.dense.bias": [
            0.023407356289681047,
            0.002514978992344718,
            -0.009566308930516243,
        ],
        "speech_qformer.qformer.encoder.layer.1.attention.output.dense.weight": [
            -4.933454152778722,
            89.55147613120283,
            -0.3237427771091461,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.key.bias": [
            0.00031661489219914074,
            1.280644830730987e-07,
            2.2486818124889396e-05,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.key.weight": [
            30.10770927084377,
            188.7582015561635,
            -0.05032162740826607,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.query.bias": [
            -0.031036239699460566,
            0.0033373844334595518,
            0.01084781065583229,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.query.weight": [
            14.175287548307097,
            87.16858755239429,
            -0.6036218404769897,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.value.bias": [
            -0.024673703592270613,
            0.0032647583389252394,
            0.0015972547698765993,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.attention.value.weight": [
            13.593405403895304,
            186.10902590848139,
            0.02650219015777111,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.LayerNorm.bias": [
            -4.45782789029181e-05,
            0.003104222689078503,
            -0.008769175037741661,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.LayerNorm.weight": [
            31.95433360338211,
            31.911107853609085,
            1.0042983293533325,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.dense.bias": [
            0.0050930241122841835,
            0.0030689944457174432,
            -0.008551495149731636,
        ],
        "speech_qformer.qformer.encoder.layer.1.crossattention.output.dense.weight": [
            -5.808231962873833,
            97.1631792119914,
            0.23676595091819763,
        ],
        "speech_qformer.qformer.encoder.layer.1.intermediate_query.dense.bias": [
            -0.0013890423288103193,
            0.006442951982879594,
            0.013984625227749348,
        ],
        "speech_qformer.qformer.encoder.layer.1.intermediate_query.dense.weight": [
            -8.204473914636765,
            176.03858691152647,
            0.4092578589916229,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.LayerNorm.bias": [
            0.08961854345398024,
            0.0031656979817283205,
            -0.004343213513493538,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.LayerNorm.weight": [
            31.98201596736908,
            31.96717483977671,
            1.0016465187072754,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.dense.bias": [
            0.05503922828938812,
            0.0031680879170619984,
            -0.004570805002003908,
        ],
        "speech_qformer.qformer.encoder.layer.1.output_query.dense.weight": [
            15.347407358174678,
            174.8392126457574,
            -0.20745781064033508,
        ],
        "speech_qformer.qformer.layernorm.bias": [
            0.05532753455918282,
            0.0029335931485604304,
            0.005699505098164082,
        ],
        "speech_qformer.qformer.layernorm.weight": [
            32.01192092895508,
            32.02681356354415,
            0.9940702319145203,
        ],
        "speech_qformer.query_tokens": [
            0.42629069834947586,
            2.8733267972845917,
            -0.2272203117609024,
        ],
        "symbols.mlp.net.0.bias": [
            0.24348866939544678,
            0.07163542902521547,
            0.12134812772274017,
        ],
        "symbols.mlp.net.0.weight": [
            -2.4937805384397507,
            2.637466080665588,
            0.028673768043518066,
        ],
        "symbols.mlp.net.1.bias": [
            0.0,
            0.0,
            0.0,
        ],
        "symbols.mlp.net.1.weight": [
            8.0,
            8.0,
            1.0,
        ],
        "symbols.mlp.net.4.bias": [
            0.0,
            0.0,
            0.0,
        ],
        "symbols.mlp.net.4.weight": [
            0.0,
            0.0,
            0.0,
        ],
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
