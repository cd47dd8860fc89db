"""The frozen speech-path cache: identical outputs, disk round trip, invalidation."""

import pytest
import torch

from salmonn_symbols.data.audio import audio_key
from salmonn_symbols.data.prompt import PromptBuilder
from salmonn_symbols.model.builders import SpeechLLMConfig, build_speech_llm
from salmonn_symbols.training.speech_cache import SpeechCache, speech_fingerprint


@pytest.fixture(scope="module")
def model_and_batch():
    torch.manual_seed(0)
    # a frozen speech path: the cache holds its output (`fit` caches the encoders' frames when it trains)
    model, tok = build_speech_llm(SpeechLLMConfig.from_name("tiny", train_speech_path=False))
    n = [16000 * 2, 16000 * 3]
    wav = torch.zeros(2, max(n))
    for i, k in enumerate(n):
        wav[i, :k] = torch.sin(torch.arange(k) * (0.05 + 0.02 * i))
    batch = dict(wav=wav, wav_lengths=torch.tensor(n), **PromptBuilder(tok)(["a", "b"], ["x", "y"]).as_dict())
    keys = [audio_key(wav[i, :k]) for i, k in enumerate(n)]
    return model.train(), batch, keys


def test_cached_and_uncached_outputs_are_identical(model_and_batch, tmp_path):
    model, batch, keys = model_and_batch
    cache = SpeechCache(tmp_path, speech_fingerprint(model, "32"))
    plain = model(batch, "raw")
    first = model(batch, "raw", speech=cache.speech(model, batch, keys))
    second = model(batch, "raw", speech=cache.speech(model, batch, keys))
    assert torch.equal(plain.logits, first.logits) and torch.equal(first.logits, second.logits)
    assert (cache.hits, cache.misses) == (2, 2)


def test_disk_round_trip_and_partial_hits(model_and_batch, tmp_path):
    model, batch, keys = model_and_batch
    fp = speech_fingerprint(model, "32")
    cache = SpeechCache(tmp_path, fp, rank=1)
    one = {k: v[:1] if torch.is_tensor(v) else v for k, v in batch.items()}
    cache.speech(model, one, keys[:1])
    shard = cache.flush()
    assert shard.parent == tmp_path / fp and shard.name.startswith("rank1-")
    assert cache.flush() is None  # nothing new
    again = SpeechCache(tmp_path, fp, rank=0)
    assert len(again) == 1
    out = again.speech(model, batch, keys)  # one row from disk, one computed
    assert (again.hits, again.misses) == (1, 1)
    # rows computed in a batch of one vs two differ only by float rounding
    torch.testing.assert_close(out, model.encode_speech(batch["wav"], batch["wav_lengths"]), rtol=1e-5, atol=1e-5)


def test_fingerprint_changes_with_any_speech_weight_or_dtype(model_and_batch):
    model, _, _ = model_and_batch
    fp = speech_fingerprint(model, "32")
    assert speech_fingerprint(model, "32") == fp and speech_fingerprint(model, "bf16-mixed") != fp
    for param in (
        model.speech_qformer.query_tokens,
        model.whisper.conv1.weight,
        model.beats.post_extract_proj.bias,
        model.ln_audio.weight,
    ):
        saved = param.detach().clone()
        with torch.no_grad():
            param.add_(1e-3)
        try:
            assert speech_fingerprint(model, "32") != fp
        finally:
            with torch.no_grad():
                param.copy_(saved)
    saved = model.symbols.mlp.net[0].weight.detach().clone()
    with torch.no_grad():  # LoRA and the symbol MLP are not part of the speech path
        model.symbols.mlp.net[0].weight.add_(1.0)
    assert speech_fingerprint(model, "32") == fp
    with torch.no_grad():
        model.symbols.mlp.net[0].weight.copy_(saved)


def test_audio_key_is_content_based():
    a = torch.randn(16000)
    assert audio_key(a) == audio_key(a.clone()) and audio_key(a) != audio_key(a + 1e-6)


def test_a_flush_reads_the_rows_other_ranks_computed(model_and_batch, tmp_path):
    """Under DDP each rank computes its own batches' clips; after the next flush they are hits on every rank."""
    model, batch, keys = model_and_batch
    fp = speech_fingerprint(model, "32")
    rank0, rank1 = SpeechCache(tmp_path, fp, rank=0), SpeechCache(tmp_path, fp, rank=1)
    rows = [{k: v[i : i + 1] if torch.is_tensor(v) else v for k, v in batch.items()} for i in range(2)]
    first = rank0.speech(model, rows[0], keys[:1])  # each rank meets one clip
    rank1.speech(model, rows[1], keys[1:])
    assert rank0.flush() is not None and rank1.flush() is not None  # rank 1 reads rank 0's shard here
    assert rank0.flush() is None and len(rank0) == len(rank1) == 2  # rank 0 reads rank 1's on its next flush
    rank1.hits = rank1.misses = 0
    assert torch.equal(rank1.speech(model, rows[0], keys[:1]), first)  # rank 0's row, bit for bit
    assert (rank1.hits, rank1.misses) == (1, 0)
