"""The training system end to end at tiny size: cycles, discovery files, frozen groups, checkpoints, DDP."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from salmonn_symbols.cli import main
from salmonn_symbols.symbols import validate_discovery_dir
from salmonn_symbols.training.schedule import CycleSchedule
from salmonn_symbols.training.step import lr_factor, phase_optimizers

ROOT = Path(__file__).resolve().parents[2]


def test_schedule():
    s = CycleSchedule(cycles=2, lora_epochs=1, mlp_epochs=2, final_lora_epochs=1)
    assert s.total_epochs == 7
    got = [(i.cycle, i.phase, i.discover_after, i.phase_end) for i in map(s.at, range(7))]
    assert got == [
        (1, "lora", False, True),
        (1, "mlp", False, False),
        (1, "mlp", True, True),
        (2, "lora", False, True),
        (2, "mlp", False, False),
        (2, "mlp", True, True),
        (3, "lora", False, True),
    ]
    with pytest.raises(ValueError):
        s.at(7)
    with pytest.raises(ValueError):
        CycleSchedule(mlp_epochs=0)
    assert s.phase_steps(7 * 10) == {"lora": 30, "mlp": 40}  # 3 LoRA and 4 MLP epochs of 10 batches


def test_learning_rate_warm_up_and_decay():
    assert [lr_factor(k, 4) for k in (0, 3, 50)] == [0.25, 1.0, 1.0]  # warm-up, then constant
    lin = [lr_factor(k, 2, "linear", 10) for k in range(11)]
    assert lin[:3] == [0.5, 1.0, 1.0] and lin[6] == 0.5 and lin[10] == 0.0 and lr_factor(12, 2, "linear", 10) == 0
    cos = [lr_factor(k, 0, "cosine", 10) for k in range(11)]
    assert cos[0] == 1.0 and abs(cos[5] - 0.5) < 1e-12 and cos[10] < 1e-12 and cos == sorted(cos, reverse=True)
    with pytest.raises(ValueError, match="lr_decay"):
        phase_optimizers(torch.nn.Module(), 1e-3, 1e-3, 0.0, 0.0, 0, decay="exp")


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """The synthetic espeak-ng speaker and command tasks (tests that use them are skipped without espeak-ng)."""
    import shutil

    from salmonn_symbols.data.synthetic import make_dataset

    if not shutil.which("espeak-ng"):
        pytest.skip("needs espeak-ng (`make setup` installs it)")

    out = tmp_path_factory.mktemp("synth")
    return make_dataset(out, tasks=("speaker", "command"), train_per_label=3, val_per_label=1, test_per_label=1)


def _config(tmp_path, synth, **model):
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["trainer"]["default_root_dir"] = str(tmp_path)
    cfg["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path)
    cfg["trainer"]["enable_progress_bar"] = False
    cfg["data"]["tasks"] = [str(p) for p in synth.values()]
    cfg["model"]["schedule"] = {"cycles": 2, "lora_epochs": 1, "mlp_epochs": 1}
    cfg["model"].update(model)
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _run_dir(tmp_path):
    return sorted((tmp_path / "logs").glob("version_*"))[-1]


def test_fit_runs_cycles_and_writes_everything(tmp_path, synth):
    probe = tmp_path / "probe.yaml"  # frozen parts must be in eval mode at every training step
    probes = [{"class_path": "probes.FrozenPartsInEval"}, {"class_path": "probes.BookHandedOver"}]
    probe.write_text(yaml.safe_dump({"trainer": {"callbacks": probes}}))
    assert main(["fit", "--config", str(_config(tmp_path, synth)), "--config", str(probe)]) == 0
    run = _run_dir(tmp_path)
    # cycle 0 was saved before training, then one discovery per cycle, schema-valid
    start = json.loads((run / "symbols_cycle_0.json").read_text())
    assert set(start["mapping"]) == {
        "alpha",
        "beta",
        "gamma",
        "delta",
        "stop",
        "play",
        "pause",
        "louder",
        "quieter",
        "next",
    }
    files = validate_discovery_dir(run / "discovery")
    assert sorted(p.name for p in files) == [
        "cycle_1_symbols.json",
        "cycle_1_tokens.json",
        "cycle_2_symbols.json",
        "cycle_2_tokens.json",
    ]
    c1 = json.loads((run / "discovery" / "cycle_1_symbols.json").read_text())
    c2 = json.loads((run / "discovery" / "cycle_2_symbols.json").read_text())
    assert {c["original_label"]: c["current_symbol"] for c in c1["symbol_changes"]} == start["mapping"]
    assert {c["original_label"]: c["current_symbol"] for c in c2["symbol_changes"]} == c1["final_mappings"]
    final = json.loads((run / "symbols_final.json").read_text())
    assert final["mapping"] == c2["final_mappings"] and len(final["history"]) == 3
    # frozen groups bitwise unchanged, the active group moved
    checks = [json.loads(x) for x in (run / "phase_checks.jsonl").read_text().splitlines()]
    assert [c["phase"] for c in checks] == ["lora", "mlp", "lora", "mlp"]
    for c in checks:
        end = c["ranks"][0]
        frozen, active = ("mlp", "lora") if c["phase"] == "lora" else ("lora", "mlp")
        assert end[frozen] == c["start"][frozen] and end[active] != c["start"][active]
    # metrics in original labels, three ways, with cycle and phase
    header = (run / "metrics.csv").read_text().splitlines()[0].split(",")
    for key in (
        "train/loss",
        "train/cycle",
        "train/phase",
        "val/acc/mean",
        "val/f1/synth_speaker",
        "val_hard/acc/mean",
        "val_original/acc/mean",
    ):
        assert key in header, key
    # resolved config, exports
    assert (run / "config.yaml").exists()
    assert (run / "export" / "trainable.safetensors").exists()
    assert (run / "export" / "lora_adapter" / "adapter_config.json").exists()


def test_checkpoints_hold_trainable_state_only_and_load_weights_only(tmp_path, synth):
    assert (
        main(
            [
                "fit",
                "--config",
                str(_config(tmp_path, synth)),
                "--model.schedule.cycles",
                "1",
                "--model.rescore",
                "false",
                "--model.lr_decay",
                "linear",
                "--trainer.log_every_n_steps",
                "1",
            ]
        )
        == 0
    )
    run = _run_dir(tmp_path)
    # each optimizer's learning rate decays over its own phase's steps, to 0 at its last step of the run
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r.get("train/lr")]
    for phase in ("0.0", "1.0"):
        lrs = [float(r["train/lr"]) for r in rows if r["train/phase"] == phase]
        assert len(lrs) >= 2 and lrs[0] > 0 and lrs[-1] == 0 and lrs == sorted(lrs, reverse=True), (phase, lrs)
    names = sorted(p.name for p in (run / "checkpoints").glob("*.ckpt"))
    assert {"cycle1-lora-end.ckpt", "cycle1-mlp-end.ckpt", "last.ckpt"} <= set(names)
    ckpt = torch.load(run / "checkpoints" / "cycle1-mlp-end.ckpt", weights_only=True)
    keys = list(ckpt["state_dict"])
    speech = ("model.ln_speech.", "model.ln_audio.", "model.speech_qformer.", "model.speech_llama_proj.")
    assert keys and all("lora_" in k or k.startswith(("model.symbols.mlp.", *speech)) for k in keys)
    assert not any(k.startswith(("model.whisper.", "model.beats.")) for k in keys)  # the encoders never train
    assert len(ckpt["optimizer_states"]) == 2 and len(ckpt["lr_schedulers"]) == 2
    assert ckpt["symbols"]["history"][-1]["source"] == "discovered"
    assert {"torch", "python", "numpy"} <= set(ckpt["rng"]) and "batches_done" in ckpt["sampler"]
    assert ckpt["cycle_state"]["model_cfg"]["llm_size"] == "tiny"


def test_config_typo_names_the_key(tmp_path, synth, capsys):
    with pytest.raises(SystemExit):
        main(["fit", "--config", str(_config(tmp_path, synth)), "--model.lora_lrr", "1e-3"])
    assert "lora_lrr" in capsys.readouterr().err


def _multi_process_run(tmp_path, synth, n, *strategy):
    """An n-process CPU fit; checks one set of discovery files and identical, phase-respecting weights."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        "-m",
        "salmonn_symbols",
        "fit",
        "--config",
        str(_config(tmp_path, synth)),
        "--trainer.devices",
        str(n),
        *strategy,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = sorted((tmp_path / "logs").glob("version_*"))
    assert len(runs) == 1  # one run folder, one set of files
    run = runs[0]
    assert sorted(p.name for p in (run / "discovery").iterdir()) == [
        "cycle_1_symbols.json",
        "cycle_1_tokens.json",
        "cycle_2_symbols.json",
        "cycle_2_tokens.json",
    ]
    checks = [json.loads(x) for x in (run / "phase_checks.jsonl").read_text().splitlines()]
    assert len(checks) == 4
    for c in checks:
        assert len(c["ranks"]) == n and all(r == c["ranks"][0] for r in c["ranks"])  # identical on every rank
        frozen = "mlp" if c["phase"] == "lora" else "lora"
        assert c["ranks"][0][frozen] == c["start"][frozen]
    return run, proc


@pytest.mark.slow
def test_two_process_ddp(tmp_path, synth):
    _multi_process_run(tmp_path, synth, 2, "--trainer.strategy", "ddp")


@pytest.mark.slow
def test_four_process_ddp(tmp_path, synth):
    """More ranks than some validation splits have batches: every rank still validates, the cycle completes."""
    _multi_process_run(tmp_path, synth, 4, "--trainer.strategy", "ddp")


@pytest.mark.slow
def test_two_process_fsdp_shards_the_llm_and_keeps_the_trainable_groups_whole(tmp_path, synth):
    run, proc = _multi_process_run(tmp_path, synth, 2, "--trainer.strategy", "symbol_fsdp")
    assert "FSDP: 2 LLM decoder layers sharded over 2 ranks" in proc.stderr
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    keys = set(ckpt["state_dict"])
    speech = ("model.ln_speech.", "model.ln_audio.", "model.speech_qformer.", "model.speech_llama_proj.")
    assert keys and all(".lora_" in k or k.startswith(("model.symbols.", *speech)) for k in keys)  # trainable only
    assert all(not type(v).__name__ == "DTensor" for v in ckpt["state_dict"].values())
    # the FSDP checkpoint resumes under DDP and the reverse: it is the same file
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "salmonn_symbols", "validate", "--config", str(_config(tmp_path, synth))]
    proc = subprocess.run(
        [*cmd, "--ckpt_path", str(run / "checkpoints" / "last.ckpt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_wandb_offline_logs_tables_and_files(tmp_path, synth, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    run = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "--config",
                str(_config(tmp_path, synth)),
                "--trainer.logger",
                "null",
                "--run_dir",
                str(run),
                "--model.rescore",
                "false",
            ]
        )
        == 0
    )
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    tables = {p.name.split("_")[0] for p in (offline[0] / "files" / "media" / "table" / "discovery").iterdir()}
    assert {"symbols", "evolution", "similarity", "accuracy"} <= tables
    saved = {p.name for p in (offline[0] / "files").rglob("*.json*")} | {
        p.name for p in (offline[0] / "files").rglob("*.yaml")
    }
    assert {"cycle_1_symbols.json", "cycle_2_tokens.json", "config.yaml"} <= saved
    # copies, not links: the run folder syncs from another machine
    links = [Path(d) / n for d, dirs, names in os.walk(run / "wandb") for n in dirs + names]
    assert [p for p in links if p.is_symlink()] == []
    for name in ("discovery/cycle_1_symbols.json", "discovery/cycle_2_tokens.json", "config.yaml"):
        assert (offline[0] / "files" / name).read_bytes() == (run / name).read_bytes(), name
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["cycle_state"]["wandb_id"] == offline[0].name.split("-")[-1]


def test_skip_mode_counts_each_bad_sample_once_everywhere(tmp_path, synth, capsys):
    """Bad manifest lines and clips that cannot be decoded: check-data, skipped.jsonl and the run summary give
    the same count."""
    import shutil

    import numpy as np
    import soundfile as sf

    copy = tmp_path / "synth"
    shutil.copytree(Path(synth["speaker"]).parent.parent, copy)
    manifest = copy / "speaker" / "train.jsonl"
    first, second = (json.loads(x) for x in manifest.read_text().splitlines()[:2])
    sf.write(copy / "speaker" / first["audio"], np.zeros(16000, dtype=np.float32), 16000)  # an all-zero clip
    (copy / "speaker" / second["audio"]).write_bytes(b"RIFF, but not audio")  # a clip that cannot be decoded
    gone = {**first, "id": "gone", "audio": "audio/gone.wav"}
    manifest.write_text(manifest.read_text() + "{not json\n" + json.dumps(gone) + "\n")  # two bad lines
    task = copy / "speaker" / "task.yaml"
    assert main(["check-data", str(task), "--workers", "1", "--no-progress"]) == 1
    assert "skipped: 4   problems: 4" in capsys.readouterr().out
    cfg = _config(tmp_path, {k: copy / k / "task.yaml" for k in synth})
    run = tmp_path / "run"
    args = ["--data.on_bad_sample", "skip", "--run_dir", str(run), "--model.schedule.cycles", "1"]
    assert main(["fit", "--config", str(cfg), *args, "--model.rescore", "false"]) == 0
    lines = [json.loads(x) for x in (run / "skipped.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and {first["id"], second["id"], "gone"} <= {x["id"] for x in lines}
    assert [x["what"] for x in lines if x["id"] == first["id"]] == ["audio is all zeros"]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped"] == 4 and summary["samples_per_sec"] > 0
    rates = [
        r["train/samples_per_sec"] for r in csv.DictReader(open(run / "metrics.csv")) if r["train/samples_per_sec"]
    ]
    assert len(rates) == 2 and all(float(r) > 0 for r in rates)  # one per epoch, under the name
    assert f"skipped: 4 bad samples (on_bad_sample: skip), listed in {run / 'skipped.jsonl'}" in capsys.readouterr().out


def test_shipped_configs_parse_and_missing_weights_name_the_key(tmp_path, synth, capsys):
    for name in ("tiny", "salmonn_13b", "salmonn_7b"):
        with pytest.raises(SystemExit) as info:
            main(["fit", "--config", str(ROOT / "configs" / f"{name}.yaml"), "--print_config"])
        assert info.value.code == 0
    capsys.readouterr()
    status = main(
        [
            "fit",
            "--config",
            str(ROOT / "configs" / "salmonn_13b.yaml"),
            "--trainer.default_root_dir",
            str(tmp_path),
            "--trainer.accelerator",
            "cpu",
            "--trainer.precision",
            "32",
            "--trainer.logger",
            "false",
            "--data.num_workers",
            "0",
            "--data.tasks",
            json.dumps([str(p) for p in synth.values()]),
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and "llm_path = checkpoints/lmsys/vicuna-13b-v1.1" in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without a CUDA device")
def test_gpu_preset_without_a_gpu_says_so_in_one_line(tmp_path, capsys):
    run = tmp_path / "run"
    status = main(["fit", "--config", str(ROOT / "configs" / "salmonn_13b.yaml"), "--run_dir", str(run)])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert "salmonn_13b.yaml asks for trainer.accelerator: gpu, but this machine has no CUDA device" in err
    assert "add --trainer.accelerator cpu --trainer.precision 32" in err and not run.exists()


def test_resume_with_a_different_model_is_refused(tmp_path, synth, capsys):
    run = tmp_path / "run"
    cfg = str(_config(tmp_path, synth))
    assert (
        main(
            ["fit", "--config", cfg, "--run_dir", str(run), "--model.schedule.cycles", "1", "--model.rescore", "false"]
        )
        == 0
    )
    capsys.readouterr()
    before = _tree(run)
    status = main(
        [
            "fit",
            "--config",
            cfg,
            "--run_dir",
            str(run),
            "--ckpt_path",
            "last",
            "--model.model.lora_r",
            "4",
            "--model.schedule.cycles",
            "2",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and "model.model.lora_r: 8 -> 4" in err
    assert _tree(run) == before  # refused before anything was written: metrics, config, symbols, checkpoints
    advised = err.split("to continue the run unchanged: ")[1].splitlines()[0].split()
    assert advised[:2] == ["salmonn-symbols", "fit"] and main(advised[1:]) == 0  # the advice, followed literally
    after = _tree(run)  # a resumed run leaves the symbols it started from alone
    assert after["symbols_cycle_0.json"] == before["symbols_cycle_0.json"]
    assert "lora_r: 4" not in (run / "config.yaml").read_text()


def _tree(root: Path) -> dict[str, tuple[str, int]]:
    """Every file under ``root``: its SHA-256 and modification time."""
    import hashlib

    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_inspect_discover_and_evaluate_on_a_finished_run(tmp_path, synth, capsys):
    run = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "--config",
                str(_config(tmp_path, synth)),
                "--run_dir",
                str(run),
                "--model.schedule.cycles",
                "1",
                "--model.rescore",
                "false",
            ]
        )
        == 0
    )
    capsys.readouterr()
    # inspect works on the run folder and on a bare copy of its JSONs
    assert main(["inspect", str(run)]) == 0
    out = capsys.readouterr().out
    assert "cycle 0" in out and "cycle 1" in out and "alpha" in out
    png = (run / "symbol_evolution.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    import shutil

    shutil.copytree(run / "discovery", tmp_path / "copied")
    assert main(["inspect", str(tmp_path / "copied")]) == 0 and (tmp_path / "copied" / "symbol_evolution.png").exists()
    # discovery alone on a checkpoint: the next cycle's files, schema-valid, nothing in the run changed
    before = sorted(p.name for p in (run / "discovery").iterdir())
    assert main(["discover", "--ckpt", str(run / "checkpoints" / "last.ckpt"), "--out", str(tmp_path / "d")]) == 0
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["cycle_2_symbols.json", "cycle_2_tokens.json"]
    validate_discovery_dir(tmp_path / "d")
    assert sorted(p.name for p in (run / "discovery").iterdir()) == before
    # evaluate a checkpoint on the test split, in original labels, three ways
    capsys.readouterr()
    config_before = (run / "config.yaml").read_text()
    assert (
        main(
            [
                "evaluate",
                "--ckpt",
                str(run / "checkpoints" / "last.ckpt"),
                "--config",
                str(run / "config.yaml"),
                "--split",
                "test",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "test/acc/mean" in out and "test_original/acc/mean" in out and "test_hard/f1/mean" in out
    assert (run / "config.yaml").read_text() == config_before  # evaluating never rewrites the run's config


def test_checkpoints_keep_every_trained_parameter(tmp_path, synth):
    """A run's checkpoint holds every parameter that trains (LoRA, symbol MLP, the speech path with its optional
    utterance token): `evaluate` and resume rebuild the model from the config and load only these."""
    import torch

    from salmonn_symbols.model.builders import SpeechLLMConfig, build_speech_llm

    run = tmp_path / "run"
    args = ["fit", "--config", str(_config(tmp_path, synth)), "--run_dir", str(run)]
    args += ["--model.model.utterance_token", "true", "--model.schedule", "{cycles: 0, final_lora_epochs: 1}"]
    assert main(args) == 0
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["state_dict"]
    model, _ = build_speech_llm(SpeechLLMConfig.from_name("tiny", utterance_token=True))
    ids = {id(p) for p in model.lora_parameters() + model.speech_parameters() + model.symbol_parameters()}
    names = {f"model.{n}" for n, p in model.named_parameters() if id(p) in ids}
    assert "model.speech_utterance.proj.weight" in names and names <= set(saved)
    trained = saved["model.speech_utterance.proj.weight"]
    assert not torch.equal(trained, model.speech_utterance.proj.weight.detach())


def test_nan_loss_stops_with_a_message_and_keeps_the_checkpoints(tmp_path, synth, capsys):
    run = tmp_path / "run"
    status = main(
        [
            "fit",
            "--config",
            str(_config(tmp_path, synth)),
            "--run_dir",
            str(run),
            "--model.lora_lr",
            "1e30",
            "--model.max_grad_norm",
            "0",
            "--checkpoint_every_n_steps",
            "1",
            "--model.rescore",
            "false",
        ]
    )
    err = capsys.readouterr().err
    assert status == 2 and "FloatingPointError: loss or gradients are not finite at step" in err
    assert "nothing was stepped" in err
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)  # the last good state is intact
    assert all(torch.isfinite(v).all() for v in last["state_dict"].values())


def test_speech_cache_fills_once_and_caches_the_encoders_when_the_speech_path_trains(tmp_path, synth):
    import csv

    run = tmp_path / "run"
    assert (
        main(
            [
                "fit",
                "--config",
                str(_config(tmp_path, synth)),
                "--run_dir",
                str(run),
                "--model.rescore",
                "false",
                "--model.schedule.cycles",
                "1",
                "--model.model.train_speech_path",
                "false",
            ]
        )
        == 0
    )
    shards = list((run / "speech_cache").glob("*/rank0-*.safetensors"))
    assert shards, "the cache writes its rows to disk"
    rates = [
        float(r["train/speech_cache_hit_rate"])
        for r in csv.DictReader(open(run / "metrics.csv"))
        if r.get("train/speech_cache_hit_rate")
    ]
    assert rates[0] < 0.5 and max(rates) > 0.9  # the first pass computes, later passes reuse
    run2 = tmp_path / "run2"
    assert (
        main(
            [
                "fit",
                "--config",
                str(_config(tmp_path, synth)),
                "--run_dir",
                str(run2),
                "--model.rescore",
                "false",
                "--model.schedule.cycles",
                "1",
                "--model.model.train_speech_path",
                "true",
            ]
        )
        == 0
    )
    # while the Q-Former trains, the cache holds the frozen encoders' frames (another fingerprint) and is reused
    folders = {p.name for p in (run / "speech_cache").iterdir()} & {p.name for p in (run2 / "speech_cache").iterdir()}
    assert not folders
    rates = [
        float(r["train/speech_cache_hit_rate"])
        for r in csv.DictReader(open(run2 / "metrics.csv"))
        if r.get("train/speech_cache_hit_rate")
    ]
    assert rates[0] < 0.5 and max(rates) > 0.9
    from safetensors import safe_open

    shard = next((run2 / "speech_cache").glob("*/rank0-*.safetensors"))
    with safe_open(shard, framework="pt") as f:
        assert f.get_tensor(next(iter(f.keys()))).shape[0] == 1500  # encoder frames, not 88 speech tokens


def test_rollback_restores_the_last_good_mapping():
    from salmonn_symbols.data.datamodule import SymbolDataModule
    from salmonn_symbols.symbols import SymbolBook
    from salmonn_symbols.training.module import SymbolLitModule

    module = SymbolLitModule(rollback_margin=0.1)
    module.configure_model()
    cycle = module.cycle
    cycle.book = SymbolBook.create(["alpha", "beta"], module.symtok, seed=0)
    start = dict(cycle.book.mapping)
    cycle.book.update({"alpha": SymbolBook.create(["x"], module.symtok, seed=5).mapping["x"]}, 1, "discovered")
    cycle.best_soft_acc = 0.8
    assert not cycle.maybe_rollback(2, 0.75)  # within the margin: keep the discovered symbols
    assert cycle.book.history[-1].source == "discovered"
    assert cycle.maybe_rollback(2, 0.5)  # dropped by more than the margin: roll back
    assert cycle.book.mapping == start and cycle.book.history[-1].source == "rollback"
    assert cycle.best_soft_acc == 0.8
    # the restored mapping is handed to the model and, as a copy, to the data side
    dm = SymbolDataModule.__new__(SymbolDataModule)
    dm.transform, dm._loaders = None, {}
    from salmonn_symbols.data.transforms import PromptTransform

    dm.transform = PromptTransform({}, None, None, 0)
    cycle.hand_over(module.model, module.symtok, dm)
    spans = [module.symtok.word_ids(s) for s in cycle.book.symbols]
    assert module.model.symbols.token_ids.tolist() == [t for s in spans for t in s]
    assert dm.book.mapping == cycle.book.mapping and dm.book is not cycle.book
