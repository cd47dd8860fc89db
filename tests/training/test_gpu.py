"""CUDA checks (run with `pytest -m gpu` on a GPU machine): bf16 training step and no host syncs."""

import pytest
import torch

from salmonn_symbols.data.prompt import PromptBuilder
from salmonn_symbols.model.builders import SpeechLLMConfig, build_speech_llm
from salmonn_symbols.symbols import SymbolBook, SymbolTokenizer, build_candidate_masks

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    with torch.device("cuda"):
        model, tok = build_speech_llm(SpeechLLMConfig.from_name("tiny"))
    sym = SymbolTokenizer(tok)
    book = SymbolBook.create(["positive", "negative", "neutral"], sym, seed=0)
    model.symbols.set_symbols([sym.word_ids(s) for s in book.symbols])
    model.symbols.set_candidate_masks(build_candidate_masks(sym, len(tok), book.labels))
    pb = PromptBuilder(tok)
    batch = pb([book.substitute("positive or negative or neutral?")] * 2, ["positive", "neutral"]).as_dict()
    batch = {k: v.cuda() for k, v in batch.items()}
    batch["wav"] = 0.1 * torch.randn(2, 16000 * 5, device="cuda")
    batch["wav_lengths"] = torch.tensor([16000 * 5, 16000 * 3], device="cuda")
    return model.train(), book, batch


def test_bf16_step_matches_fp32(setup):
    model, _, batch = setup
    with torch.autocast("cuda", dtype=torch.bfloat16):
        bf = model(batch, "soft", 0.1)
    fp = model(batch, "soft", 0.1)
    assert bf.logits.dtype == torch.bfloat16 and torch.isfinite(bf.loss)
    assert abs(bf.loss.item() - fp.loss.item()) < 0.05 * fp.loss.item()
    bf.loss.backward()
    assert model.symbols.mlp.net[-1].weight.grad.abs().sum() > 0


def test_llm_forward_makes_no_host_sync(setup):
    model, _, batch = setup
    with torch.no_grad():
        speech = model.encode_speech(batch["wav"], batch["wav_lengths"])
    model(batch, "soft", 0.1, speech=speech)  # warm-up: codebook cache, kernels
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(batch, "soft", 0.1, speech=speech)
        out.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_speech_encoders_make_no_host_sync(setup):
    model, _, batch = setup
    with torch.no_grad():
        model.encode_speech(batch["wav"], batch["wav_lengths"])  # warm-up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            model.encode_speech(batch["wav"], batch["wav_lengths"])
    finally:
        torch.cuda.set_sync_debug_mode("default")


def test_cached_step_with_clipping_and_the_finite_guard_makes_no_host_sync(setup):
    """The training step that fit runs (PhaseStep): speech rows from the pinned cache, forward, backward,
    clipping, the on-device non-finite skip, the fused optimizer step and its LR schedule."""
    from salmonn_symbols.training.speech_cache import SpeechCache
    from salmonn_symbols.training.step import PhaseStep, phase_optimizers

    model, _, batch = setup
    cache, keys = SpeechCache(None, "gpu-test"), ["a", "b"]
    opts, scheds = phase_optimizers(model, 1e-4, 1e-3, 0.01, 1e-4, 0)
    names = ("lora", "mlp")
    phase_step = PhaseStep(model, dict(zip(names, opts, strict=True)), dict(zip(names, scheds, strict=True)))
    guard = phase_step.guard

    def step():
        with torch.autocast("cuda", dtype=torch.bfloat16):
            phase_step(batch, "lora", 0.1, speech=cache.speech(model, batch, keys))

    step()  # fills the cache and warms up
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert cache.hits == 2
    assert guard.first_bad() is None  # finite throughout: nothing to report


def test_compiled_blocks_match_eager_on_the_gpu(setup):
    from salmonn_symbols.training.compile import compile_blocks

    model, _, batch = setup
    model.eval()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(batch, "soft", 0.1).logits.float()
        compile_blocks(model)
        compiled = model(batch, "soft", 0.1).logits.float()
    model.train()
    assert (compiled - eager).abs().max() < 0.05 * eager.abs().max()
