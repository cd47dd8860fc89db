"""``make demo-real``: discovery on real pretrained models (Whisper tiny.en + SmolLM2-135M-Instruct), on CPU.

    0. the weights, if missing: ``prepare-weights`` (conversion, checks, connector pre-training)
    1. the synthetic espeak-ng command task (stop, play, pause, louder, quieter, next)
    2. the reference: the small preset answering with the original label words (``initial_symbols=original``)
    3. discovery from random 2-token symbols, 2 cycles (configs/small.yaml)
    4. per cycle: validation accuracy with the original label words, with the random start, with the discovered
       symbols (soft, hard); and for each label the rank of its own word's first token among the discovery's
       candidates (``search_top`` of ``cycle_N_tokens.json``, the verified search's best tokens by task loss;
       else the MLP's cosine neighbours ``top_k``; else "not proposed")

A pretrained LLM knows that a clip saying "stop" is answered by "stop": that is the known answer this yardstick
checks discovery against, on models nobody here trained.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

__all__ = ["own_word_ranks", "run_demo_real"]

_SMALL = Path(__file__).resolve().parents[2] / "configs" / "small.yaml"
# The preset learns the command task in about 130 LoRA steps of batch 8 (configs/small.yaml): 12 steps per epoch
# here, so 11 epochs for the reference and 7 per cycle for the discovery run (the second cycle starts from the
# first one's LoRA and speech path). After 10 epochs the reference stands at 0.89-0.92, after 11 at 1.00
# (docs/benchmarks.md).
REFERENCE_EPOCHS = 11
# No few-shot text examples in the prompts: rows of about 60 LLM positions instead of 95, 1.5x faster steps on
# CPU; the words are learnt faster without them, the random symbols more slowly (docs/benchmarks.md).
FEW_SHOT = 0
TRAIN_PER_LABEL, VAL_PER_LABEL = 16, 6
SCHEDULE = {"cycles": 2, "lora_epochs": 7, "mlp_epochs": 1}
# The verified search scores at most 12 candidate words per label and discovery here (the preset's 24 on a real
# run): the word evaluations were about 90 of a discovery's 150 s on 2 CPU cores.
EVALUATIONS = 12


def _fit(run_dir: Path, tasks: list[Path], weights: Path, accelerator: str, *extra: str) -> int:
    from ..training.cli import run_lightning_cli

    args = ["fit", "--config", str(_SMALL), "--run_dir", str(run_dir), "--overwrite", "true"]
    args += ["--trainer.accelerator", accelerator, "--trainer.devices", "1"]
    args += ["--data.tasks", json.dumps([str(p) for p in tasks]), "--data.few_shot", str(FEW_SHOT)]
    args += ["--trainer.enable_progress_bar", "false"]
    args += ["--model.speech_cache_dir", str(run_dir.parent / "speech_cache")]  # one cache for both runs
    for key, name in (("llm_path", "smollm2-135m-instruct"), ("whisper_path", "whisper-tiny.en.pt")):
        args += [f"--model.model.{key}", str(weights / name)]
    args += ["--model.model.salmonn_ckpt", str(weights / "salmonn_small.pth")]
    return run_lightning_cli(args + list(extra))


def _weights(weights: Path) -> None:
    from .prepare_weights import prepare_weights

    need = ("whisper-tiny.en.pt", "smollm2-135m-instruct", "salmonn_small.pth")
    if all((weights / n).exists() for n in need):
        print(f"   weights found in {weights}")
        return
    prepare_weights(weights)


def own_word_ranks(run: Path, tokenizer) -> dict[int, dict[str, str]]:
    """cycle -> label -> where the first token of the label's own word ranks among that cycle's candidates."""
    from ..symbols import SymbolTokenizer

    sym = SymbolTokenizer(tokenizer)
    out: dict[int, dict[str, str]] = {}
    for f in sorted((run / "discovery").glob("cycle_*_tokens.json"), key=lambda p: int(p.name.split("_")[1])):
        data = json.loads(f.read_text())
        cycle = int(data["cycle"])
        for d in data["discoveries"]:
            if d["position"] != 0:
                continue
            own = sym.word_ids(d["label"])[0]
            searched = [e["token_id"] for e in d.get("search_top", [])]
            neighbours = [e["token_id"] for e in d.get("top_k", [])]
            if own in searched:
                cell = f"search #{searched.index(own) + 1}"
            elif own in neighbours:
                cell = f"cosine #{neighbours.index(own) + 1}"
            else:
                cell = "not proposed"
            chosen = d["discovered_text"] or "?"
            out.setdefault(cycle, {})[d["label"]] = f"{cell} (chose {chosen!r})"
    return out


def _report(out: Path, reference: float | None, weights: Path) -> None:
    from ..model.tokenizer import load_tokenizer
    from .inspect_run import print_cycles

    ref = f"{reference:.3f}" if reference is not None else "-"
    print(f"\nreference arm (LoRA trained and scored with the original label words): validation accuracy {ref}")
    # rows: the random start (mapping 0) and each cycle's discovery; original = the label words on the same LoRA
    print_cycles(out)
    ranks = own_word_ranks(out, load_tokenizer(str(weights / "smollm2-135m-instruct")))
    print("\nrank of each label's own word (its first token) among the discovery's candidates at position 0:")
    for c, by_label in sorted(ranks.items()):
        for lab, text in by_label.items():
            print(f"  cycle {c}  {lab:8s} {text}")


def run_demo_real(
    out: str | Path = "runs/demo-real",
    weights: str | Path = "checkpoints/small",
    accelerator: str = "cpu",
    task: str | Path | None = None,
) -> int:
    """Runs the real-model demo under ``out``; returns an exit status.

    Args:
        out: The demo's folder.
        weights: ``prepare-weights``' folder (made there when missing).
        accelerator: Lightning accelerator of both runs ("cpu", "gpu"; one device).
        task: An existing command task YAML to use instead of synthesising one (a machine without espeak-ng).
    """
    from ..data.synthetic import make_dataset
    from .inspect_run import last_metric

    out, weights, t0 = Path(out), Path(weights), time.perf_counter()
    print(f"== 0/4 real pretrained weights ({weights})")
    _weights(weights)
    t1 = time.perf_counter()
    if task is None:
        print("== 1/4 synthetic spoken commands (espeak-ng)")
        sizes = dict(train_per_label=TRAIN_PER_LABEL, val_per_label=VAL_PER_LABEL, test_per_label=2)
        task = make_dataset(out / "synth", tasks=("command",), **sizes)["command"]
    else:
        print(f"== 1/4 spoken commands from {task}")
    tasks = [Path(task)]
    print(f"== 2/4 reference: the original label words, {REFERENCE_EPOCHS} LoRA epochs")
    schedule = {"cycles": 0, "final_lora_epochs": REFERENCE_EPOCHS}
    ref_args = ("--model.initial_symbols=original", f"--model.schedule={json.dumps(schedule)}")
    # the demo prints one validation per run (reference) and per cycle: validating after every epoch (36 clips,
    # three conditions in the discovery run) would add about 2.5 minutes on 2 CPU cores
    ref_args += (
        "--model.eval_modes=[hard]",
        "--model.rescore=false",
        f"--trainer.check_val_every_n_epoch={REFERENCE_EPOCHS}",
    )
    status = _fit(out / "original", tasks, weights, accelerator, *ref_args)
    if status:
        return status
    reference = last_metric(out / "original", "val_hard/acc/mean")
    print("== 3/4 discovery: random 2-token symbols, 2 cycles")
    per_cycle = SCHEDULE["lora_epochs"] + SCHEDULE["mlp_epochs"]  # validates the last epoch of each cycle
    status = _fit(
        out / "discovery-run",
        tasks,
        weights,
        accelerator,
        f"--model.schedule={json.dumps(SCHEDULE)}",
        f"--trainer.check_val_every_n_epoch={per_cycle}",
        f"--model.discovery.max_evaluations={EVALUATIONS}",
    )
    if status:
        return status
    print(f"== 4/4 results in {out}")
    _report(out / "discovery-run", reference, weights)
    print(f"\ndemo-real finished in {time.perf_counter() - t1:.0f} s (set-up {t1 - t0:.0f} s)")
    return 0
