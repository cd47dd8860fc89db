"""Step-efficiency features at tiny size: per-block compile, no per-token work, sync-free non-finite skipping."""

import argparse

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from salmonn_symbols.commands.model_bench import _fit_text, _optimizers, _prepare, _step_fn
from salmonn_symbols.training.compile import compile_blocks


@pytest.fixture()
def tiny():
    torch.manual_seed(0)
    args = argparse.Namespace(size="tiny", batch=2, seconds=3.0, tokens=134, compile=False)
    model, host, keys, cache, dtype = _prepare(args, torch.device("cpu"))
    return model.eval(), host


@pytest.mark.slow
def test_compiled_blocks_match_eager(tiny):
    model, batch = tiny
    eager = model(batch, "soft", 0.1)
    n = compile_blocks(model)
    assert n == 2 + 2 + 2  # LLaMA, Whisper and BEATs layers of the tiny size
    compiled = model(batch, "soft", 0.1)
    assert torch.allclose(compiled.logits, eager.logits, atol=1e-4, rtol=1e-4)
    compiled.loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.symbol_parameters())
    state = model.state_dict()
    assert not any("_orig_mod" in k for k in state)  # checkpoints keep their names
    with pytest.raises(ValueError, match="unknown compile part"):
        compile_blocks(model, ("llm", "qformer"))


@pytest.mark.slow
def test_compiled_blocks_score_trees_and_kept_prompts_as_eager(tiny):
    """The masked passes of validation (candidate tree) and of discovery's probes (kept keys and values) run
    through compiled blocks as they do eagerly."""
    model, batch = tiny
    prompt = {k: batch[k] for k in ("prefix_ids", "text_ids", "text_mask")}
    prompt |= {"labels": torch.full_like(batch["text_ids"], -100)}
    speech = model.encode_speech(batch["wav"], batch["wav_lengths"])
    cands = [[5, 6, 2], [7, 2]]

    def scores():
        with torch.no_grad():
            return model.score_candidates(prompt, cands, "soft", 0.1, speech=speech)

    def kept():
        with torch.no_grad():
            state = model.encode_prompt(prompt, speech)
            return model.continue_prompt(state, [5, 6]), model.continue_prompt(state, [7])

    eager = [scores(), *kept()]
    compile_blocks(model, ("llm",))
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got = [scores()]
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > graphs  # the tree runs compiled
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    got += kept()
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs  # kept keys run eagerly
    for g, want in zip(got, eager, strict=True):
        torch.testing.assert_close(g, want, atol=1e-4, rtol=1e-4)


def test_step_does_no_per_token_work(tiny):
    """A step at twice the text length issues the same operators (layout copies aside): nothing loops over
    tokens in Python, in symbol injection, soft quantization, prompt assembly or the loss."""
    model, host = tiny
    model.train()
    opts = _optimizers(model)
    from salmonn_symbols.training.speech_cache import SpeechCache

    counts, extra = [], host["text_ids"].shape[1]
    for scale in (1, 2):
        batch = dict(host)
        _fit_text(batch, host["text_ids"].shape[1] * scale)
        cache = SpeechCache(None, "t")
        step = _step_fn(model, batch, ["a", "b"], cache, torch.device("cpu"), torch.float32, opts, "lora", False)
        step()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step()
        counts.append(sum(e.count for e in prof.key_averages() if e.key.startswith("aten::")))
    assert abs(counts[1] - counts[0]) < extra, counts


def test_fused_adamw_skips_a_non_finite_step_on_the_device():
    """The training step's non-finite guard: found_inf makes fused AdamW leave weights and state untouched."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.tensor([1.0, float("nan"), 1.0])
    norm = torch.nn.utils.clip_grad_norm_([p], 1.0)
    opt.found_inf = (~torch.isfinite(norm)).float()
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and opt.state[p]["step"].item() == 0
    p.grad = torch.ones(3)
    opt.found_inf = (~torch.isfinite(torch.nn.utils.clip_grad_norm_([p], 1.0))).float()
    opt.step()
    assert (p.detach() < 1).all() and opt.state[p]["step"].item() == 1


def test_the_training_guard_skips_and_then_reports_the_first_bad_step(tmp_path):
    from types import SimpleNamespace

    from salmonn_symbols.training.callbacks import NonFiniteCheck
    from salmonn_symbols.training.schedule import CycleSchedule
    from salmonn_symbols.training.step import NonFiniteGuard

    guard = NonFiniteGuard()
    module = SimpleNamespace(guard=guard, schedule=CycleSchedule(), out_dir=tmp_path)  # what the check reads
    check = NonFiniteCheck()
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    p.grad = torch.ones(3)
    guard.mark(opt, torch.nn.utils.clip_grad_norm_([p], 1.0), step=0, epoch=0)
    opt.step()
    check.check(None, module)  # a finite step: nothing to report
    stepped = p.detach().clone()
    p.grad = torch.full((3,), float("inf"))
    guard.mark(opt, torch.nn.utils.clip_grad_norm_([p], 1.0), step=3, epoch=1)
    opt.step()
    assert torch.equal(p.detach(), stepped)
    guard.mark(opt, torch.nn.utils.clip_grad_norm_([p], 1.0), step=5, epoch=2)
    assert guard.first_bad() == (3, 1)  # the first bad step is the one reported
    with pytest.raises(FloatingPointError, match="not finite at step 3 .cycle 1, mlp phase"):
        check.check(None, module)


def test_speech_lr_puts_a_trainable_speech_path_in_its_own_group():
    from salmonn_symbols.model.builders import SpeechLLMConfig, build_speech_llm
    from salmonn_symbols.training.step import phase_optimizers

    model, _ = build_speech_llm(SpeechLLMConfig.from_name("tiny", train_speech_path=True))
    speech = {id(p) for p in model.speech_parameters()}
    (lora, _), _ = phase_optimizers(model, 3e-4, 1e-3, 0.01, 1e-4, 0, speech_lr=2e-3)
    assert [g["lr"] for g in lora.param_groups] == [3e-4, 2e-3]
    assert all(id(p) not in speech for p in lora.param_groups[0]["params"])
    assert {id(p) for p in lora.param_groups[1]["params"]} == speech
    # without speech_lr, or with the speech path frozen: one group at lora_lr (checkpoints keep their layout)
    (one, _), _ = phase_optimizers(model, 3e-4, 1e-3, 0.01, 1e-4, 0)
    assert [g["lr"] for g in one.param_groups] == [3e-4]
    frozen, _ = build_speech_llm(SpeechLLMConfig.from_name("tiny", train_speech_path=False))
    (f, _), _ = phase_optimizers(frozen, 3e-4, 1e-3, 0.01, 1e-4, 0, speech_lr=2e-3)
    assert [g["lr"] for g in f.param_groups] == [3e-4]
