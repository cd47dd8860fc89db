"""The functions behind the headline metrics: predictions per condition, label finding, the gather across ranks,
and the task-loss re-scorer of discovery. Real tiny model, real collator, seeded tone data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tone_data import make_tone_task  # noqa: E402

from salmonn_symbols.data.dataset import SpeechCollator, SpeechDataset
from salmonn_symbols.data.manifest import read_split
from salmonn_symbols.data.metrics import MetricAccumulator
from salmonn_symbols.data.prompt import PromptBuilder
from salmonn_symbols.data.tasks import TaskConfig, load_task_config
from salmonn_symbols.data.transforms import PromptTransform
from salmonn_symbols.model.builders import SpeechLLMConfig, build_speech_llm
from salmonn_symbols.symbols import SymbolBook, SymbolTokenizer, build_candidate_masks
from salmonn_symbols.training.evaluation import find_labels, gather_accumulator, predict_batch
from salmonn_symbols.training.rescoring import TaskLossRescorer


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    model, tok = build_speech_llm(SpeechLLMConfig.from_name("tiny"))
    for p in model.lora_parameters():  # LoRA B starts at zero; make it matter
        p.data.normal_(std=0.05)
    sym = SymbolTokenizer(tok)
    cfg = load_task_config(make_tone_task(tmp_path_factory.mktemp("tones")))
    book = SymbolBook.create(cfg.labels, sym, seed=0)
    model.symbols.set_symbols([sym.word_ids(s) for s in book.symbols])
    vocab = model.llm.get_input_embeddings().weight.shape[0]
    model.symbols.set_candidate_masks(build_candidate_masks(sym, vocab, book.labels))
    prompts = PromptBuilder(tok)
    transform = PromptTransform({cfg.name: cfg}, {}, book, seed=0)
    val = SpeechDataset(read_split(cfg, "validation")[0:1], [cfg])
    return model.eval(), tok, sym, cfg, book, prompts, transform, val


def _batch(setup, book=None):
    model, _, _, cfg, book0, prompts, transform, val = setup
    coll = SpeechCollator(prompts, transform.with_book(book or book0), transform.with_book(None))
    return coll([val[(0, i, 0)] for i in range(len(val))])


def test_find_labels_whole_words_in_order_without_repeats():
    labels = ["anger", "non-anger", "joy", "joy ride"]
    assert find_labels("joy, then anger and joy again", labels) == ["joy", "anger"]
    assert find_labels("danger and non-anger", labels) == ["non-anger"]  # no part of a word, hyphens glue
    assert find_labels("a joy ride", labels) == ["joy ride"]  # the longest label first
    assert find_labels("nothing here", labels) == []


@pytest.mark.parametrize("mode", ["soft", "hard", "original"])
def test_predict_batch_is_the_argmax_of_the_label_scores(setup, mode):
    model, tok, sym, cfg, book, prompts, _, _ = setup
    batch = _batch(setup)
    speech = model.encode_speech(batch["wav"], batch["wav_lengths"])
    preds = predict_batch(model, batch, speech, {cfg.name: cfg}, book, prompts, mode, 0.05)
    # the same scores, computed by hand: prompt (with or without symbols) + each label's word or symbol + EOS
    key = "orig_prompt_text" if mode == "original" else "prompt_text"
    sub = {
        "prefix_ids": batch["prefix_ids"],
        "text_ids": batch[f"{key}_ids"],
        "text_mask": batch[f"{key}_mask"],
        "labels": torch.full_like(batch[f"{key}_ids"], -100),
    }
    words = cfg.labels if mode == "original" else [book.symbol_for(lab) for lab in cfg.labels]
    symbol_mode = {"soft": "soft", "hard": "hard", "original": "raw"}[mode]
    scores = model.score_candidates(sub, [prompts.target_ids(w) for w in words], symbol_mode, 0.05, speech=speech)
    assert preds == [cfg.labels[j] for j in scores.argmax(-1).tolist()]
    assert len(preds) == len(batch["gold"]) and set(preds) <= set(cfg.labels)


def test_predict_batch_maps_generated_symbols_back_for_multi_label_tasks(setup):
    model, tok, sym, cfg, book, prompts, _, _ = setup
    multi = TaskConfig(name=cfg.name, labels=cfg.labels, multi_label=True)
    batch = _batch(setup)
    speech = model.encode_speech(batch["wav"], batch["wav_lengths"])
    preds = predict_batch(model, batch, speech, {cfg.name: multi}, book, prompts, "hard", 0.05, max_new_tokens=4)
    out = model.generate(
        {k: batch[k] for k in ("prefix_ids", "prompt_text_ids", "prompt_text_mask")}
        | {"text_ids": batch["prompt_text_ids"], "text_mask": batch["prompt_text_mask"]},
        max_new_tokens=4,
        symbol_mode="hard",
        temperature=0.05,
        speech=speech,
    )
    texts = tok.batch_decode(out, skip_special_tokens=True)
    assert preds == [book.decode_prediction(t, multi_label=True) for t in texts]


def _gather_worker(rank: int, world: int, port: int, queue) -> None:
    import os

    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        acc = MetricAccumulator({"d": (["a", "b"], False)})
        acc.update("d", [["a", "b"], ["b", None]][rank], [["a", "a"], ["b", "b"]][rank])  # disjoint shards
        merged = gather_accumulator(acc, [TaskConfig(name="d", labels=["a", "b"])])
        queue.put((rank, merged.compute()))
        dist.barrier()
    finally:
        dist.destroy_process_group()


def test_gather_accumulator_merges_every_ranks_shard():
    import socket

    import torch.multiprocessing as mp

    acc = MetricAccumulator({"d": (["a", "b"], False)})
    acc.update("d", ["a", "b", "b", None], ["a", "a", "b", "b"])
    assert gather_accumulator(acc, []) is acc  # one process: nothing to gather
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_gather_worker, args=(2, port, queue), nprocs=2, join=True, start_method="spawn")
    results = dict(queue.get() for _ in range(2))
    assert results[0] == results[1] == acc.compute()  # every rank sees the metrics of all four samples
    assert results[0]["d/acc"] == 0.5


def test_rescorer_gives_each_candidate_the_task_loss_of_its_substitution(setup):
    model, tok, sym, cfg, book, prompts, transform, val = setup
    label = cfg.labels[0]
    other = SymbolBook.create(["x", "y"], sym, seed=7).symbols
    rescore = TaskLossRescorer(model, val, transform, prompts, book, max_samples=2, batch_size=1)
    losses = rescore(label, [book.symbol_for(label), other[0], book.symbol_for(cfg.labels[1])])
    # by hand: the first two validation clips of the label, the candidate in place of its symbol, hard symbols
    for cand, got in zip([book.symbol_for(label), other[0]], losses[:2], strict=True):
        trial = SymbolBook(labels=book.labels, mapping={**book.mapping, label: cand})
        items = [val[(0, i, 0)] for i, s in enumerate(val.samples[0]) if s.labels[0] == label][:2]
        batch = SpeechCollator(prompts, transform.with_book(trial))(items)
        out = model(batch, symbol_mode="hard")
        assert got == pytest.approx(out.loss.item(), rel=1e-5)
    assert losses[0] != losses[1]
    assert losses[2] == float("inf")  # another label's symbol cannot be used
