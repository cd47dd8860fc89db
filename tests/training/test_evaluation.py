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
from salmonn_symbols.model.candidates import pack_candidates
from salmonn_symbols.symbols import SymbolBook, SymbolTokenizer, build_candidate_masks
from salmonn_symbols.training.evaluation import find_labels, gather_accumulator, predict_batch
from salmonn_symbols.training.rescoring import TaskLossScorer


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
        "max_wav_len": batch["max_wav_len"],
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


def _half(val, half):
    """(item, gold) of the scorer's half: alternate samples of each label, labels in task order."""
    out = []
    for lab in ["alpha", "beta", "gamma"]:
        rows = [i for i, s in enumerate(val.samples[0]) if s.labels[0] == lab]
        out += [(val[(0, i, 0)], lab) for i in rows[(0 if half == "search" else 1) :: 2]]
    return out


def _scores(model, prompts, transform, items, words):
    """log p(word + EOS | x) of each word for each item, the prompts made with ``transform``, (n, len(words))."""
    batch = SpeechCollator(prompts, transform)(items)
    sub = {k: batch[k] for k in ("wav", "wav_lengths", "prefix_ids", "max_wav_len")}
    sub |= {"text_ids": batch["prompt_text_ids"], "text_mask": batch["prompt_text_mask"]}
    return model.score_candidates(sub, [prompts.target_ids(w) for w in words], "raw")


def test_scorer_gives_every_word_the_closed_set_task_loss(setup):
    """Every word, the current symbol included, is scored alike (its tokens' own embeddings): per held-out sample
    of the dataset, logsumexp over the labels' words minus the gold label's word."""
    model, tok, sym, cfg, book, prompts, transform, val = setup
    label = cfg.labels[0]
    other = SymbolBook.create(["x", "y"], sym, seed=7).symbols
    scorer = TaskLossScorer(model, val, transform, prompts, book, samples_per_label=4, batch_rows=5, loss="closed_set")
    words = [book.symbol_for(label), other[0], book.symbol_for(cfg.labels[1])]
    for half in ("search", "confirm"):
        losses = scorer.losses(label, words, half)
        pairs = _half(val, half)
        items, golds = [it for it, _ in pairs], [cfg.labels.index(g) for _, g in pairs]
        assert losses.shape == (3, len(items))
        current = _scores(model, prompts, transform, items, book.symbols)  # (n, K)
        for word, got in zip(words[:2], losses[:2], strict=True):
            trial = SymbolBook(labels=book.labels, mapping={**book.mapping, label: word})
            table = current.clone()
            table[:, 0] = _scores(model, prompts, transform.with_book(trial), items, [word])[:, 0]
            want = table.logsumexp(-1) - table[torch.arange(len(items)), golds]
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert torch.isinf(losses[2]).all()  # another label's symbol cannot be used
    generative = TaskLossScorer(model, val, transform, prompts, book, samples_per_label=4, loss="generative")
    mine = [it for it, g in _half(val, "search") if g == label]
    got = generative.losses(label, words[:1], "search")[0]
    want = [model(SpeechCollator(prompts, transform)([it]), symbol_mode="raw").loss for it in mine]
    torch.testing.assert_close(got, torch.stack(want), rtol=1e-4, atol=1e-5)


def test_the_contrastive_loss_is_how_much_more_the_model_says_the_word_for_the_labels_audio(setup):
    """Per sample of the label, paired with a sample of another label: q(w | other) - q(w | own), q the per-token
    probability of saying w (the default loss of discovery)."""
    model, tok, sym, cfg, book, prompts, transform, val = setup
    label = cfg.labels[2]
    word = SymbolBook.create(["x"], sym, seed=11).symbols[0]
    scorer = TaskLossScorer(model, val, transform, prompts, book, samples_per_label=4)
    got = scorer.losses(label, [word, book.symbol_for(cfg.labels[0])], "search")
    trial = transform.with_book(SymbolBook(labels=book.labels, mapping={**book.mapping, label: word}))
    pairs = _half(val, "search")
    own = [it for it, g in pairs if g == label]
    others = [it for lab in cfg.labels if lab != label for it, g in pairs if g == lab][: len(own)]

    def q(item):  # per-token probability of saying the word for this clip
        logp = _scores(model, prompts, trial, [item], [word])[0, 0]
        return torch.exp(logp / len(prompts.target_ids(word)))

    want = torch.stack([q(o) - q(x) for x, o in zip(own, others, strict=True)])
    torch.testing.assert_close(got[0], want, rtol=1e-4, atol=1e-6)
    assert (got[0].abs() <= 1).all() and torch.isinf(got[1]).all()


def test_word_evaluations_run_each_clips_speech_once(setup, monkeypatch):
    """The verified search's word evaluations share each clip's [prefix ‖ speech] across the words: one head pass
    per chunk of clips, and the scores of full teacher-forced passes over every word's rows."""
    model, tok, sym, cfg, book, prompts, transform, val = setup
    label = cfg.labels[0]
    scorer = TaskLossScorer(model, val, transform, prompts, book, samples_per_label=4, batch_rows=4)
    pool = scorer._pools_of(label)[0]
    rows = pool.rows("search")
    words = SymbolBook.create(["x", "y", "z"], sym, seed=5).symbols
    packed = []
    for w in words:
        trial = SymbolBook(labels=book.labels, mapping={**book.mapping, label: w})
        packed.append(pack_candidates(scorer._prompts(pool, rows, trial), [prompts.target_ids(w)]))
    speech = scorer._speech(pool)[torch.tensor(rows)]
    heads = []
    monkeypatch.setattr(model, "encode_head", lambda *a, _f=model.encode_head: heads.append(1) or _f(*a))
    for per_row in ("logp", "ce"):
        heads.clear()
        got = scorer._after_speech(packed, speech, per_row)  # (3, n)
        assert got.shape == (3, len(rows)) and len(heads) == -(-len(rows) // 4)
        want = scorer._run(packed, speech.repeat(3, 1, 1), per_row).view(3, -1)
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(got[0], got[1])  # the words' texts differ, and so do their scores


def test_scored_speech_has_no_dropout_in_training_mode(setup):
    """Discovery runs while the model is in training mode: the clips' speech it scores is the eval-mode speech."""
    model, tok, sym, cfg, book, prompts, transform, val = setup
    scorer = TaskLossScorer(model, val, transform, prompts, book, samples_per_label=4)
    pool = scorer._pools_of(cfg.labels[0])[0]
    batch = SpeechCollator(prompts, transform)(pool.items)
    with torch.no_grad():
        want = model.encode_speech(batch["wav"], batch["wav_lengths"])
        model.train()
        try:
            assert model.speech_qformer.training  # the speech path trains: its dropout is live
            assert not torch.allclose(model.encode_speech(batch["wav"], batch["wav_lengths"]), want)
            got = scorer._speech(pool)
            assert model.speech_qformer.training
        finally:
            model.eval()
    torch.testing.assert_close(got, want)


def test_likelihood_probes_of_other_words_run_the_prompts_once(setup):
    """A probe of a word that is not the current symbol reuses one pass over the search half's prompts and runs
    only the word's tokens: the proposals of a full teacher-forced pass over prompt + word + EOS."""
    model, tok, sym, cfg, book, prompts, transform, val = setup
    label = cfg.labels[0]
    ids = tuple(sym.word_ids(SymbolBook.create(["x"], sym, seed=11).symbols[0]))
    assert len(ids) == 2 and ids != tuple(sym.word_ids(book.symbol_for(label)))
    scorer = TaskLossScorer(model, val, transform, prompts, book, samples_per_label=4)
    allowed = torch.ones(model.llm.get_input_embeddings().weight.shape[0], dtype=torch.bool)
    pairs = _half(val, "search")
    batch = SpeechCollator(prompts, transform)([it for it, _ in pairs])
    prompt = {"prefix_ids": batch["prefix_ids"], "text_ids": batch["prompt_text_ids"]}
    prompt |= {"text_mask": batch["prompt_text_mask"], "max_wav_len": batch["max_wav_len"]}
    packed = pack_candidates(prompt, [list(ids) + [prompts.eos_id]])
    with torch.no_grad():
        speech = model.encode_speech(batch["wav"], batch["wav_lengths"])
        prob = model(packed, symbol_mode="raw", speech=speech).logits.float().softmax(-1)  # (n, W, V)
    own = torch.tensor([g == label for _, g in pairs])
    first = (prob[own, 0].mean(0) - prob[~own, 0].mean(0)).topk(5).indices.tolist()
    second = prob[own, 1].mean(0).topk(5).indices.tolist()
    assert [t for t, _ in scorer.proposals(label, "likelihood", 0, ids, allowed, 5)] == first
    assert [t for t, _ in scorer.proposals(label, "likelihood", 1, ids, allowed, 5)] == second
    assert len(scorer._prompt_states) == 1  # the prompts' pass, kept


def test_scorer_proposals_are_the_contrastive_likelihood_and_the_first_order_loss_change(setup):
    model, tok, sym, cfg, book, prompts, transform, val = setup
    label = cfg.labels[1]
    word = book.symbol_for(label)
    current = tuple(sym.word_ids(word))
    scorer = TaskLossScorer(model, val, transform, prompts, book, samples_per_label=4)
    allowed = torch.ones(model.llm.get_input_embeddings().weight.shape[0], dtype=torch.bool)
    pairs = _half(val, "search")
    batch = SpeechCollator(prompts, transform)([it for it, _ in pairs])
    own = torch.tensor([g == label for _, g in pairs])
    # likelihood: mean probability at the symbol's first target position on the label's samples, minus the same
    # on the other labels' samples
    full = {k: v for k, v in batch.items() if k != "target_len"}  # logits at every text position
    out = model(full, symbol_mode="raw")
    prob = out.logits.float().softmax(-1)[torch.arange(len(pairs)), batch["prompt_lengths"]]  # (n, V)
    want = (prob[own].mean(0) - prob[~own].mean(0)).topk(5).indices.tolist()
    assert [t for t, _ in scorer.proposals(label, "likelihood", 0, current, allowed, 5)] == want
    # gradient: -(v - e)·dL/de at the symbol's second token on the label's samples, e its own embedding
    weight = model.llm.get_input_embeddings().weight.detach()
    mine = SpeechCollator(prompts, transform)([it for it, g in pairs if g == label])
    e = weight[current[1]].clone().requires_grad_(True)
    table = weight[model.symbols.token_ids].clone()
    row = model.symbols.row_of(current[1], 1)
    loss = model(mine, symbol_mode="raw", symbol_table=torch.cat([table[:row], e[None], table[row + 1 :]])).loss
    (g,) = torch.autograd.grad(loss, e)
    want = (-(weight - weight[current[1]]) @ g).topk(5).indices.tolist()
    assert [t for t, _ in scorer.proposals(label, "gradient", 1, current, allowed, 5)] == want
    masked = allowed.clone()
    masked[want[0]] = False
    assert want[0] not in [t for t, _ in scorer.proposals(label, "gradient", 1, current, masked, 5)]
    assert scorer.proposals(label, "gradient", 1, (current[0], 7), allowed, 5) == []  # the current symbol only
