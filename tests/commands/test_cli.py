"""The command line, atomic writes, and the project frame promised by the README."""

import csv
import json
import re
import shutil
import tomllib
from pathlib import Path

import pytest

from salmonn_symbols.cli import main
from salmonn_symbols.io import atomic_write_json, read_json

ROOT = Path(__file__).resolve().parents[2]


def test_generate_symbols_cli(tmp_path, capsys):
    out = tmp_path / "map.json"
    assert (
        main(
            [
                "generate-symbols",
                "--tokenizer",
                "builtin:tiny",
                "--labels",
                "alpha",
                "beta",
                "--seed",
                "3",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed == read_json(out)
    assert set(printed["mapping"]) == {"alpha", "beta"}
    assert all(len(ids) == 2 for ids in printed["token_ids"].values())


def test_generate_symbols_from_a_saved_tokenizer_folder(tmp_path, llama_tok, capsys):
    llama_tok.save_pretrained(tmp_path / "tok")
    labels = tmp_path / "labels.txt"
    labels.write_text("positive\nnegative\n\nneutral\n")
    assert main(["generate-symbols", "--tokenizer", str(tmp_path / "tok"), "--labels-file", str(labels)]) == 0
    assert list(json.loads(capsys.readouterr().out)["mapping"]) == ["positive", "negative", "neutral"]


def test_cli_errors_name_the_problem(tmp_path, capsys):
    assert main(["generate-symbols", "--tokenizer", str(tmp_path / "nope"), "--labels", "a"]) == 2
    assert f"tokenizer folder not found: {tmp_path / 'nope'}" in capsys.readouterr().err
    assert main(["validate-discovery", str(tmp_path)]) == 2
    assert "no cycle_N_tokens.json" in capsys.readouterr().err
    assert (
        main(
            [
                "generate-symbols",
                "--tokenizer",
                "builtin:tiny",
                "--labels",
                *[f"l{i}" for i in range(5)],
                "--max-attempts",
                "3",
            ]
        )
        == 2
    )
    assert re.search(r"found only \d+ of 5 valid symbol words after 3 attempts", capsys.readouterr().err)


SPEAKER_ACC = "val_hard/acc/synth_speaker"


@pytest.mark.skipif(not shutil.which("espeak-ng"), reason="needs espeak-ng")
def test_demo_runs_two_cycles_and_prints_the_evolution(tmp_path, capsys):
    demo = tmp_path / "runs" / "demo"
    (demo / "discovery").mkdir(parents=True)  # an earlier demo run: running the demo again replaces it
    (demo / "discovery" / "cycle_9_symbols.json").write_text("{}")
    assert main(["demo", "--out", str(demo)]) == 0
    out = capsys.readouterr().out
    # the demo learns: with the original label words the tiny model identifies the speaker
    reference = [r for r in csv.DictReader(open(demo / "original" / "metrics.csv")) if r.get(SPEAKER_ACC)]
    assert float(reference[-1][SPEAKER_ACC]) >= 0.9
    assert "speaker identity with the original label words: validation accuracy" in out
    assert "cycle_2_symbols.json" in out and "label" in out and "cycle 2" in out
    assert "validation accuracy" in out and f"run finished: {demo}" in out
    # the README's paths: the run's files directly in runs/demo, and the commands it shows on them
    for name in ("config.yaml", "metrics.csv", "summary.json", "checkpoints/last.ckpt", "export/trainable.safetensors"):
        assert (demo / name).is_file(), name
    assert sorted(p.name for p in (demo / "discovery").iterdir()) == [
        "cycle_1_symbols.json",
        "cycle_1_tokens.json",
        "cycle_2_symbols.json",
        "cycle_2_tokens.json",
    ]
    summary = json.loads((demo / "summary.json").read_text())
    assert summary["samples_per_sec"] > 0 and summary["cycles"] == [0, 1, 2] and len(summary["symbols"]) == 10
    assert main(["validate-discovery", str(demo / "discovery")]) == 0
    assert main(["inspect", str(demo / "discovery"), "--no-png"]) == 0
    assert "cycle 2" in capsys.readouterr().out


def test_bench_reports_measured_figures(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert (
        main(
            [
                "bench",
                "--vocab-size",
                "500",
                "--dim",
                "32",
                "--positions",
                "16",
                "--device",
                "cpu",
                "--iters",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = read_json(out)
    for key in ("codebook_refresh_ms", "soft_quantize_fwd_bwd_ms", "discovery_topk_ms"):
        assert res[key] > 0
    assert "soft_quantize_fwd_bwd_ms" in capsys.readouterr().out


def test_atomic_write_leaves_old_file_on_failure(tmp_path):
    path = tmp_path / "a" / "x.json"
    atomic_write_json(path, {"v": 1})
    with pytest.raises(TypeError):
        atomic_write_json(path, {"v": object()})
    assert read_json(path) == {"v": 1}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_read_json_names_file_and_line(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text('{\n  "a": 1,\n  oops\n}')
    with pytest.raises(ValueError, match=r"bad.json: line 3 column 3"):
        read_json(p)
    p.write_bytes(b"\xff\xfe")
    with pytest.raises(ValueError, match="bad.json: not UTF-8"):
        read_json(p)


def test_project_frame():
    for d in ("salmonn_symbols", "scripts", "configs", "checkpoints", "tests"):
        assert (ROOT / d).is_dir(), d
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = meta["project"]["dependencies"]
    assert "torch==2.11.0" in deps and "torchaudio==2.11.0" in deps
    for name in (
        "lightning",
        "transformers",
        "peft",
        "openai-whisper",
        "wandb",
        "datasets",
        "soundfile",
        "safetensors",
        "sentencepiece",
    ):
        assert any(d.startswith(name) for d in deps), name
    assert meta["project"]["scripts"]["salmonn-symbols"] == "salmonn_symbols.cli:main"
    makefile = (ROOT / "Makefile").read_text()
    for target in ("help", "setup", "demo", "test", "lint", "bench"):
        assert re.search(rf"^{target}:.*##", makefile, re.M), target
    readme = (ROOT / "README.md").read_text()
    assert "make demo" in readme and "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    ignored = (ROOT / ".gitignore").read_text().split()
    assert ".venv/" in ignored and "checkpoints/*" in ignored and "!checkpoints/README.md" in ignored


def test_model_bench_reports_both_phases_with_and_without_cache(tmp_path, capsys):
    out = tmp_path / "m.json"
    assert (
        main(
            [
                "bench",
                "--what",
                "model",
                "--size",
                "tiny",
                "--batch",
                "1",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--device",
                "cpu",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = read_json(out)
    assert [(r["phase"], r["cache"]) for r in res["runs"]] == [
        ("lora", False),
        ("lora", True),
        ("mlp", False),
        ("mlp", True),
    ]
    assert all(r["samples_per_s"] > 0 and r["llm_tokens_per_s"] > 0 for r in res["runs"])
    assert res["tflop_per_sample"]["llm"] > 0 and res["tflop_per_sample"]["whisper"] > 0
    assert "| lora | on |" in capsys.readouterr().out


@pytest.mark.slow
def test_scaling_bench_runs_ddp_at_each_device_count(tmp_path, capsys):
    out = tmp_path / "s.json"
    assert (
        main(
            [
                "bench",
                "--what",
                "scaling",
                "--size",
                "tiny",
                "--devices",
                "1,2",
                "--device",
                "cpu",
                "--timeout",
                "300",
                "--batch",
                "1",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    res = read_json(out)
    assert sorted((r["devices"], r["cache"]) for r in res["runs"]) == [(1, False), (1, True), (2, False), (2, True)]
    assert all(r["samples_per_s"] > 0 for r in res["runs"])
    assert [r["scaling"] for r in res["runs"] if r["devices"] == 1] == [1.0, 1.0]


def test_readme_commands_name_real_commands_and_options():
    """Every ``salmonn-symbols ...`` line of the README names a command that exists, with options it accepts."""
    import argparse
    import importlib
    import shlex

    from salmonn_symbols.cli import COMMANDS

    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    joined = [re.sub(r"\\\n\s*", " ", b) for b in blocks]  # a command continued over lines with "\"
    lines = [ln.split("  #")[0].strip() for b in joined for ln in b.splitlines()]
    commands = [shlex.split(ln) for ln in lines if ln.startswith("salmonn-symbols ")]
    assert len(commands) >= 15
    lightning = {"--config", "--run_dir", "--ckpt_path", "--checkpoint_every_n_steps", "--overwrite"}
    for argv in commands:
        assert argv[1] in COMMANDS, argv
        module = importlib.import_module(COMMANDS[argv[1]][0])
        if hasattr(module, "add_args"):
            parser = argparse.ArgumentParser(prog=argv[1], exit_on_error=False)
            module.add_args(parser)
            parser.parse_args(argv[2:])
        elif argv[1] == "fit":
            keys = [a for a in argv[2:] if a.startswith("--")]
            assert all(k in lightning or k.split(".")[0] in ("--model", "--data", "--trainer") for k in keys), argv
