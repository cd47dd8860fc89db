"""Discovery inside the cycle: verified changes, the discovered mapping validated, the MLP restarted, rollback
for every schedule, soft validation at the training temperature, presets and the cycle-0 symbols."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
import yaml

from salmonn_symbols.cli import main
from salmonn_symbols.data.tones import make_tone_task
from salmonn_symbols.symbols import SymbolBook, SymbolTokenizer
from salmonn_symbols.training.cycle import SymbolCycle
from salmonn_symbols.training.schedule import CycleSchedule

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tones(tmp_path_factory):
    return make_tone_task(tmp_path_factory.mktemp("tones"), per_split={"train": 6, "validation": 6})


def _fit(tmp_path, task, *extra):
    cfg = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    cfg["trainer"] |= {"enable_progress_bar": False, "log_every_n_steps": 1}
    cfg["trainer"]["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "x"}}
    cfg["model"]["schedule"] = {"cycles": 2, "lora_epochs": 1, "mlp_epochs": 1}
    cfg["model"]["rescore_samples"] = 6
    cfg["data"] |= {"tasks": [str(task)], "batch_size": 6}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["fit", "--config", str(path), "--run_dir", str(run), *extra]) == 0
    return run


def test_a_cycle_verifies_validates_and_restarts(tmp_path, tones):
    run = _fit(tmp_path, tones)
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    # the discovered mapping of every cycle is validated right after its discovery, the last one included
    assert sum(bool(r.get("val_discovered/acc/mean")) for r in rows) == 2
    for n in (1, 2):
        data = json.loads((run / "discovery" / f"cycle_{n}_symbols.json").read_text())
        for c in data["symbol_changes"]:
            assert c["current_loss"] is not None
            if c["change_type"] == "CHANGED":  # a change needs evidence beyond its noise
                assert c["delta"] < -2 * c["se"]
            else:
                assert c["discovered_symbol"] == c["current_symbol"]
        sym = [set(json.dumps(c["token_mapping"])) for c in data["symbol_changes"]]
        assert sym  # files carry the token mapping
        final = data["final_mappings"]
    tok = SymbolTokenizer(__import__("salmonn_symbols.model.tokenizer", fromlist=["x"]).load_tokenizer("builtin:tiny"))
    ids = [set(tok.word_ids(w)) for w in final.values()]
    assert all(not (ids[i] & ids[j]) for i in range(len(ids)) for j in range(i + 1, len(ids)))
    # after a discovery the MLP is the identity again: its output layer is zero in the checkpoint taken then
    ckpt = torch.load(run / "checkpoints" / "cycle1-mlp-end.ckpt", weights_only=True)
    assert not ckpt["state_dict"]["model.symbols.mlp.net.4.weight"].any()
    # soft validation used the temperature of the last training step, not the end of the schedule
    last = [float(r["train/temperature"]) for r in rows if r.get("train/temperature") and r["epoch"] == "1"][-1]
    assert ckpt["cycle_state"]["train_temperature"] == pytest.approx(last)
    assert last > 0.01  # not the end of the schedule: the soft condition is not the hard one in disguise


def test_rollback_works_in_two_cycles_and_without_lora_epochs(llama_sym):
    book = SymbolBook.create(["a", "b"], llama_sym, seed=0)
    cycle = SymbolCycle(__import__("salmonn_symbols").symbols.DiscoveryConfig(), rollback_margin=0.1)
    cycle.book = book
    cycle.record(0.9)  # cycle 1's validation counts as the best from the first one on
    assert cycle.best_soft_acc == 0.9 and cycle.best_index == 0
    start = dict(book.mapping)
    book.update({"a": SymbolBook.create(["z"], llama_sym, seed=4).symbols[0]}, 1, "discovered")
    assert cycle.maybe_rollback(2, 0.5) and book.mapping == start  # the first check of a 2-cycle run can fire
    # every schedule has a check after each discovery: in the next LoRA phase, or right after it without one
    for s in (CycleSchedule(2, 1, 1, 0), CycleSchedule(3, 0, 1, 0), CycleSchedule(2, 2, 1, 1)):
        infos = [s.at(e) for e in range(s.total_epochs)]
        checks = [i for i, x in enumerate(infos) if x.rollback_check or x.rollback_after_discovery]
        discoveries = [i for i, x in enumerate(infos) if x.discover_after]
        assert all(any(c >= d for c in checks) for d in discoveries), s


def test_a_preset_plus_overrides_keeps_the_preset(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "tiny.yaml"),
                "--model.model.symbol_hidden",
                "16",
                "--print_config",
            ]
        )
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["model"]
    assert printed["symbol_hidden"] == 16 and printed["qformer_hidden"] == 32 and printed["qformer_heads"] == 2
    with pytest.raises(SystemExit):
        main(
            [
                "fit",
                "--config",
                str(ROOT / "configs" / "salmonn_13b.yaml"),
                "--model.model.lora_r",
                "16",
                "--print_config",
            ]
        )
    printed = yaml.safe_load(capsys.readouterr().out)["model"]["model"]
    assert printed["lora_r"] == 16 and printed["qformer_hidden"] == 768 and printed["llm_size"] == "llama-13b"


def test_the_tiny_speech_path_hears_the_audio():
    from salmonn_symbols.model.builders import SpeechLLMConfig, build_speech_llm

    torch.manual_seed(0)
    model, _ = build_speech_llm(SpeechLLMConfig(use_beats=False))
    t = torch.arange(16000) / 16000
    wav = torch.stack([0.3 * torch.sin(2 * math.pi * f * t) for f in (220.0, 330.0, 495.0)])
    with torch.no_grad():
        speech = model.eval().encode_speech(wav, torch.full((3,), 16000))[:, :3]  # the windows holding audio
    between = speech.std(0).mean() / speech.std()
    assert between > 0.1, f"clips of different pitch give nearly the same speech tokens ({between:.4f})"


def test_cycle_zero_can_start_from_the_label_words_or_a_file(tmp_path, llama_sym):
    cycle = SymbolCycle(__import__("salmonn_symbols").symbols.DiscoveryConfig())
    book = cycle._initial(["alpha", "beta"], llama_sym, 0, 2, "original")
    assert book.mapping == {"alpha": "alpha", "beta": "beta"} and book.history[0].source == "original"
    words = SymbolBook.create(["x", "y"], llama_sym, seed=3).symbols
    path = tmp_path / "start.json"
    path.write_text(json.dumps({"alpha": words[0], "beta": words[1]}))
    book = cycle._initial(["alpha", "beta"], llama_sym, 0, 2, str(path))
    assert book.symbols == words and book.history[0].source == "manual"
    path.write_text(json.dumps({"alpha": words[0]}))
    with pytest.raises(ValueError, match="missing \\['beta'\\]"):
        cycle._initial(["alpha", "beta"], llama_sym, 0, 2, str(path))
