"""Resume never loses a discovery: a run killed at every point of its epoch end, resumed each time, ends bitwise
where an uninterrupted run ends; clean stops on SIGTERM and SIGUSR1; resume and overwrite refusals.

The runs are real ``salmonn-symbols fit`` subprocesses on seeded tones, one thread (multi-threaded CPU reductions
are not bitwise reproducible even between two plain runs). Schedule: 2 cycles of 1 LoRA + 1 MLP epoch, 3 batches
an epoch, a step checkpoint every 2 steps (the mid-epoch kills of earlier tests are covered on the way: each
kill before discovery 1 resumes from step 4):

    epoch 0  cycle 1 LoRA   steps 1-3    step ckpt 2
    epoch 1  cycle 1 MLP    steps 4-6    step ckpt 4 (6 is the epoch's last batch: never a step checkpoint)
             validation ─► discovery 1 ─► epoch-end checkpoint
    epoch 2  cycle 2 LoRA   steps 7-9    step ckpt 8
    epoch 3  cycle 2 MLP    steps 10-12  step ckpt 10; validation ─► discovery 2 ─► checkpoint ─► export
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
TESTS = ROOT / "tests"


@pytest.fixture(scope="module")
def tone_config(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("tones")
    task = make_tone_task(tmp / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["trainer"].update(log_every_n_steps=1, enable_progress_bar=False, enable_model_summary=False)
    cfg["model"]["schedule"] = {"cycles": 2, "lora_epochs": 1, "mlp_epochs": 1}
    cfg["model"]["rescore_samples"] = 2
    cfg["data"].update(tasks=[str(task)], batch_size=4)
    path = tmp / "tones.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _fit(config: Path, run: Path, *extra: str, kill: dict | None = None) -> subprocess.CompletedProcess:
    """``salmonn-symbols fit`` in a subprocess, one thread, optionally with a `killer.KillAt` callback."""
    cmd = [sys.executable, "-m", "salmonn_symbols", "fit", "--config", str(config)]
    if kill is not None:  # a run resumed mid-epoch must also keep the frozen parts in eval mode: probed throughout
        callbacks = [{"class_path": "killer.KillAt", "init_args": kill}, {"class_path": "probes.FrozenPartsInEval"}]
        path = run.parent / f"kill-{kill['point']}.yaml"
        path.write_text(yaml.safe_dump({"trainer": {"callbacks": callbacks}}))
        cmd += ["--config", str(path)]
    cmd += ["--run_dir", str(run), "--checkpoint_every_n_steps", "2", *extra]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600)


def _env(**extra: str) -> dict[str, str]:
    path = os.pathsep.join([str(ROOT), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=path, **extra)


def _final(run: Path) -> tuple[dict, dict, list]:
    from safetensors.torch import load_file

    book = json.loads((run / "symbols_final.json").read_text())
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    losses = [(r["step"], r["train/loss"]) for r in rows if r.get("train/loss")]
    accuracy = [(r["step"], r["val/acc/mean"]) for r in rows if r.get("val/acc/mean")]
    return book, load_file(run / "export" / "trainable.safetensors"), losses + accuracy


@pytest.mark.slow
def test_killed_at_every_point_and_resumed_ends_bitwise_like_an_uninterrupted_run(tmp_path, tone_config):
    ref = _fit(tone_config, tmp_path / "ref")
    assert ref.returncode == 0, ref.stderr[-3000:]
    # a plain run starts without the warnings every run would print (they say nothing about this run)
    noises = ("LightningCLI's args", "No seed found", "litlogger", "in eval mode", "LeafSpec", "deprecated")
    for noise in (*noises, "manual optimization"):
        assert noise not in ref.stderr, noise
    summary = json.loads((tmp_path / "ref" / "summary.json").read_text())  # what the run printed at its end
    assert f"run finished: {tmp_path / 'ref'}  (4 epochs, 12 steps" in ref.stdout and summary["samples_per_sec"] > 0
    run = tmp_path / "run"
    chain = [  # each run is killed (or stopped) at one point and the next one resumes from last.ckpt
        ({"point": "validation", "epoch": 1}, "SIGKILL"),  # after the MLP phase's last step, before discovery 1
        ({"point": "discovery", "cycle": 1}, "SIGKILL"),  # discovery 1's files written, its checkpoint not
        ({"point": "checkpoint", "epoch": 1}, "SIGKILL"),  # while the checkpoint after discovery 1 is assembled
        ({"point": "epoch_start", "epoch": 2}, "SIGKILL"),  # right after that checkpoint: the resume starts there
        ({"point": "step", "step": 7}, "SIGTERM"),  # mid-phase: a clean stop writes last.ckpt at that step
        ({"point": "step", "step": 12}, "SIGUSR1"),  # in the last step: validation stops, its epoch end repeats
        ({"point": "train_end"}, "SIGKILL"),  # after the final checkpoint, before the export
    ]
    stops = {
        "SIGTERM": "stopped cleanly after step 7",
        "SIGUSR1": "stopped cleanly during the validation of epoch 3",
    }
    for i, (kill, sig) in enumerate(chain):
        proc = _fit(tone_config, run, *(["--ckpt_path", "last"] if i else []), kill={**kill, "sig": sig})
        assert proc.returncode == (-9 if sig == "SIGKILL" else 143), (kill, proc.stderr[-3000:])
        assert not (run / "symbols_final.json").exists()
        if sig != "SIGKILL":
            assert f"{sig}: {stops[sig]}" in proc.stdout, proc.stdout[-2000:]
            resume = f"salmonn-symbols fit --config {run / 'config.yaml'} --run_dir {run} --ckpt_path last"
            assert f"resume with: {resume}" in proc.stdout
    # nothing is left to train: the resumed run only exports. Through the launcher, with the run's own config.yaml
    script = [str(ROOT / "scripts" / "train_cycles.sh")]
    done = subprocess.run(
        script, env=_env(RESUME="1", RUN_DIR=str(run), PYTHON=sys.executable), capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "run finished" in done.stdout and (run / "summary.json").exists()
    book_a, weights_a, rows_a = _final(tmp_path / "ref")
    book_b, weights_b, rows_b = _final(run)
    assert book_a == book_b and [h["cycle"] for h in book_b["history"]] == [0, 1, 2]  # no discovery lost or doubled
    assert summary["symbols"] == {lab: [h["mapping"][lab] for h in book_a["history"]] for lab in book_a["labels"]}
    assert weights_a.keys() == weights_b.keys()
    for k in weights_a:
        assert torch.equal(weights_a[k], weights_b[k]), k
    for name in ("cycle_1_symbols.json", "cycle_2_symbols.json", "cycle_1_tokens.json", "cycle_2_tokens.json"):
        a, b = (json.loads((r / "discovery" / name).read_text()) for r in (tmp_path / "ref", run))
        assert a.pop("timestamp") and b.pop("timestamp") and a == b, name
    # metrics.csv kept every step's loss and every validation once, with the uninterrupted run's values
    assert rows_a == rows_b
    # and the phase checks: each epoch once (the killed runs' later records were moved aside)
    checks_a, checks_b = ((r / "phase_checks.jsonl").read_text().splitlines() for r in (tmp_path / "ref", run))
    assert [json.loads(x)["epoch"] for x in checks_b] == [0, 1, 2, 3] and checks_a == checks_b
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == sorted(p.name for p in (tmp_path / "ref" / "checkpoints").iterdir())
    assert "last.ckpt" in names and "cycle1-mlp-end.ckpt" in names


def test_checkpoint_after_discovery_is_the_newest_and_resumes_past_it(tmp_path, tone_config):
    """After every epoch last.ckpt is the state after validation and discovery; a step checkpoint never lands on
    an epoch's last batch (Lightning would resume it as a finished epoch, skipping validation and discovery)."""
    run = tmp_path / "run"
    proc = _fit(tone_config, run, "--checkpoint_every_n_steps", "3", kill={"point": "epoch_start", "epoch": 2})
    assert proc.returncode == -9, proc.stderr[-3000:]
    last = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["global_step"] == 6 and last["sampler"]["at_epoch_end"]
    assert [h["source"] for h in last["symbols"]["history"]] == ["random", "discovered"]
    assert last["symbols"]["history"][1]["cycle"] == 1
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == ["cycle1-lora-end.ckpt", "cycle1-mlp-end.ckpt", "last.ckpt"]  # steps 3 and 6 end epochs
    phase_end = torch.load(run / "checkpoints" / "cycle1-mlp-end.ckpt", weights_only=True)
    assert phase_end["symbols"] == last["symbols"] and phase_end["global_step"] == 6


def test_resume_from_an_older_checkpoint_moves_the_later_files_aside(tmp_path, tone_config):
    """Resumed from the checkpoint after discovery 1 of a finished run, the files of discovery 2, the final files
    and the later phase checks go to stale/<time>/: the run's files then describe the resumed history only."""
    run = tmp_path / "run"
    assert _fit(tone_config, run).returncode == 0
    before = {p: (run / p).read_bytes() for p in ("discovery/cycle_2_symbols.json", "symbols_final.json")}
    older = run / "checkpoints" / "cycle1-mlp-end.ckpt"  # killed as soon as it resumes, before writing anything
    proc = _fit(tone_config, run, "--ckpt_path", str(older), kill={"point": "epoch_start", "epoch": 2})
    assert proc.returncode == -9, proc.stderr[-3000:]
    assert sorted(p.name for p in (run / "discovery").iterdir()) == ["cycle_1_symbols.json", "cycle_1_tokens.json"]
    assert not any((run / name).exists() for name in ("symbols_final.json", "summary.json", "export"))
    epochs = [json.loads(line)["epoch"] for line in (run / "phase_checks.jsonl").read_text().splitlines()]
    assert epochs == [0, 1]
    (aside,) = (run / "stale").iterdir()
    assert {p: (aside / p).read_bytes() for p in before} == before
    assert (aside / "summary.json").is_file() and (aside / "export" / "trainable.safetensors").is_file()
    assert f"moved to {aside}: discovery/cycle_2_symbols.json" in proc.stderr


def test_fit_refuses_to_lose_a_run(tmp_path, tone_config, capsys):
    from salmonn_symbols.cli import main

    run = tmp_path / "run"
    status = main(["fit", "--config", str(tone_config), "--run_dir", str(run), "--ckpt_path", "last"])
    assert status == 2 and f"nothing to resume: {run / 'checkpoints' / 'last.ckpt'} does not exist" in (
        capsys.readouterr().err
    )
    status = main(["fit", "--config", str(tone_config), "--ckpt_path", "last"])
    assert status == 2 and "--ckpt_path last resumes the run in --run_dir" in capsys.readouterr().err
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"a run's checkpoint")
    (run / "discovery").mkdir()
    (run / "speech_cache").mkdir()
    status = main(["fit", "--config", str(tone_config), "--run_dir", str(run)])
    err = capsys.readouterr().err
    assert status == 2 and f"{run} already holds a run (checkpoints/last.ckpt, discovery)" in err
    assert "resume it with --ckpt_path last" in err and (run / "checkpoints" / "last.ckpt").exists()
    status = main(
        ["fit", "--config", str(tone_config), "--run_dir", str(run), "--ckpt_path", "last", "--overwrite", "true"]
    )
    assert status == 2 and "cannot be combined with --ckpt_path" in capsys.readouterr().err
    from salmonn_symbols.training.cli import check_run_dir

    check_run_dir(str(run), None, overwrite=True)  # what --overwrite true does before the new run starts
    assert sorted(p.name for p in run.iterdir()) == ["speech_cache"]  # the cache is keyed by the weights: kept


def test_launcher_resumes_requeued_jobs_and_refuses_an_empty_resume(tmp_path):
    """scripts/train_cycles.sh builds the fit command (DRY_RUN=1 prints it): RESUME=1 with the run's config,
    a requeued SLURM job resumes (or starts again when it had no checkpoint yet), SIGUSR1 ahead of the limit."""
    run, tiny = tmp_path / "run", str(ROOT / "configs" / "tiny.yaml")
    proc = _launch(tmp_path, RESUME="1", RUN_DIR=str(run))
    assert proc.returncode == 1 and f"RESUME=1 but {run}/checkpoints/last.ckpt does not exist" in proc.stderr
    new = _launch(tmp_path, CONFIG=tiny, RUN_DIR=str(run)).stdout
    assert new.split()[1:] == [
        "-m",
        "salmonn_symbols",
        "fit",
        "--config",
        tiny,
        "--run_dir",
        str(run),
        "--trainer.max_steps",
        "9",
    ]
    requeued = _launch(tmp_path, SLURM_JOB_ID="7", SLURM_RESTART_COUNT="1", CONFIG=tiny, RUN_DIR=str(run)).stdout
    assert requeued.startswith("srun ") and "--overwrite true" in requeued  # stopped before its first checkpoint
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    (run / "config.yaml").write_text("{}")
    env = dict(SLURM_JOB_ID="7", SLURM_RESTART_COUNT="1", CONFIG=tiny, RUN_DIR=str(run), OVERWRITE="1")
    requeued = _launch(tmp_path, **env).stdout
    assert "--ckpt_path last" in requeued and "--overwrite" not in requeued  # a requeue never starts over
    resumed = _launch(tmp_path, RESUME="1", RUN_DIR=str(run)).stdout
    assert f"fit --config {run}/config.yaml --run_dir {run} --ckpt_path last" in resumed
    submitted = _launch(tmp_path, SLURM="1", PARTITION="gpu", CONFIG=tiny, RUN_DIR=str(run)).stdout
    assert submitted.startswith("sbatch ") and "--signal=SIGUSR1@300 --requeue" in submitted


@pytest.mark.parametrize(
    "env,message",
    [
        ({"GPUS": "abc"}, "GPUS=abc: expected a whole number of at least 1"),
        ({"GPUS": "0"}, "GPUS=0: expected a whole number of at least 1"),
        ({"GPUS": "-2"}, "GPUS=-2: expected a whole number of at least 1"),
        ({"GPUS_PER_NODE": "two"}, "GPUS=two: expected"),
        ({"NODES": "1.5"}, "NODES=1.5: expected a whole number of at least 1"),
        ({"CONFIG": "configs/tyni.yaml"}, "CONFIG=configs/tyni.yaml: no such file"),
        ({"CONFIG": ""}, "CONFIG is not set: name a training config"),
        ({"CONFIG": "."}, "CONFIG=.: no such file"),
    ],
)
def test_launcher_refuses_bad_settings(tmp_path, env, message):
    settings = {"CONFIG": str(ROOT / "configs" / "tiny.yaml"), "RUN_DIR": str(tmp_path / "run"), **env}
    proc = _launch(tmp_path, **settings)
    assert proc.returncode == 1 and proc.stdout == "" and f"train_cycles.sh: {message}" in proc.stderr


def _launch(cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """scripts/train_cycles.sh with DRY_RUN=1 (it prints the command) outside SLURM, with ``env`` set."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM", "GPUS", "NODES", "CONFIG"))}
    return subprocess.run(
        [str(ROOT / "scripts" / "train_cycles.sh"), "--trainer.max_steps", "9"],
        env={**clean, "DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        cwd=cwd,
    )
