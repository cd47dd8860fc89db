"""rewa: encoders, corpus, MiniLM embeddings and the quick preset's held-out numbers."""

import json
import os

import faiss
import numpy as np
import pytest
import torch

from salmonn_symbols.experiments import load_experiment
from salmonn_symbols.experiments.common import parse_experiment_args
from salmonn_symbols.experiments.rewa.config import RewaConfig, check_dim, validate
from salmonn_symbols.experiments.rewa.corpus import build_corpus, extract_passages
from salmonn_symbols.experiments.rewa.data import make_split
from salmonn_symbols.experiments.rewa.encoders import RandomHadamard, SignRandomProjection
from salmonn_symbols.experiments.rewa.evaluate import recall_at_k, rerank
from salmonn_symbols.experiments.rewa.run import TimeBudget
from salmonn_symbols.experiments.rewa.training import rank_distillation

EXP = load_experiment("rewa")


# ------------------------------------------------------------------------------------------------ encoders
def test_hadamard_is_orthogonal_at_full_size_and_binary_codes_count_hamming_bits():
    x = torch.nn.functional.normalize(torch.randn(50, 64, generator=torch.Generator().manual_seed(0)), dim=-1)
    full = RandomHadamard(64, 64, seed=3)
    assert torch.allclose(full.proj @ full.proj.T, torch.eye(64), atol=1e-5)  # an orthogonal map at m = n
    assert torch.allclose(full(x) @ full(x).T, x @ x.T, atol=1e-5)
    enc = SignRandomProjection(64, 32, seed=1)
    codes = enc.pack(x.numpy())
    assert codes.shape == (50, 4) and codes.dtype == np.uint8
    index = faiss.IndexBinaryFlat(32)
    index.add(codes)
    dist, ids = index.search(codes[:5], 3)
    bits = enc(x).numpy()
    manual = (bits[:5, None, :] != bits[None, :, :]).sum(-1)  # (5, 50) differing signs
    assert (dist == np.take_along_axis(manual, ids, 1)).all() and (dist[:, 0] == 0).all()


def test_rank_loss_is_zero_for_the_teacher_itself_and_grows_when_the_order_is_broken():
    g = torch.Generator().manual_seed(0)
    teacher = torch.rand(8, 20, generator=g)
    mask = torch.zeros(8, 20, dtype=torch.bool)
    mask[:, 0] = True
    same = rank_distillation(teacher, teacher, mask, 0.05, torch.tensor(20.0))
    shuffled = rank_distillation(teacher, teacher[:, torch.randperm(20, generator=g)], mask, 0.05, torch.tensor(20.0))
    assert same.abs() < 1e-5 and shuffled > 0.5


def test_recall_and_rerank_on_known_ids():
    truth = np.array([[0, 1], [2, 3]])
    assert recall_at_k(np.array([[1, 5, 0], [9, 8, 2]]), truth) == pytest.approx(0.25)
    db = np.eye(4, dtype=np.float32)
    queries = np.array([[0.1, 0.9, 0, 0], [0, 0, 0.2, 0.8]], dtype=np.float32)
    assert rerank(np.array([[0, 1, -1], [2, 3, 0]]), queries, db, 1).tolist() == [[1], [3]]


# ------------------------------------------------------------------------------------------------ data
def test_split_keeps_held_out_queries_and_database_out_of_training():
    x = np.random.default_rng(0).standard_normal((1000, 8)).astype(np.float32)
    s = make_split(x, None, 0.5, 100, seed=4)
    held = set(s.queries) | set(s.database)
    assert not held & set(s.train) and len(held) == 500
    assert set(s.train_queries) | set(s.train_database) <= set(s.train)
    assert len(s.train_database) == len(s.database) and not set(s.train_queries) & set(s.train_database)
    with pytest.raises(ValueError, match="n_queries"):
        make_split(x, None, 0.1, 60, seed=0)


def test_corpus_extracts_prose_and_deduplicates(tmp_path):
    src = '''"""A module that reads configuration files and returns their sections."""
# Comment paragraphs are joined across lines when they
# continue the same thought for several lines.
x = 1
HELP = "Print the names of the sections found in the configuration file."
HEX = "0x1f 0x2e 0x3d 0x4c 0x5b 0x6a 0x79 0x88 0x97 0xa6"
def f():
    """Short."""
'''
    found = extract_passages(src)
    kinds = {k for k, _ in found}
    assert kinds == {"docstring", "comment", "string"} and len(found) == 3
    assert (
        "comment",
        "Comment paragraphs are joined across lines when they continue the same thought for several lines.",
    ) in found
    (tmp_path / "a.py").write_text(src)
    (tmp_path / "b.py").write_text(src.replace("x = 1", "y = 2"))  # the same passages again
    cache = tmp_path / "cache"
    passages = build_corpus(tmp_path, cache_dir=cache)
    assert len(passages) == 3 and len(list(cache.glob("corpus_*.json"))) == 1
    assert build_corpus(tmp_path, cache_dir=cache) == passages
    with pytest.raises(FileNotFoundError, match="corpus_root"):
        build_corpus(tmp_path / "missing")


def test_minilm_embeddings_match_between_fp32_and_fp16_copy_and_are_cached(tmp_path):
    from salmonn_symbols.experiments.rewa.embed import embed_passages, write_fp16_copy

    texts = [
        "Return the number of items in a container.",
        "Count how many elements a sequence holds.",
        "Open the network socket and bind it to a port.",
    ]
    a, info = embed_passages(texts, None, "cpu", cache_dir=tmp_path)
    assert a.shape == (3, 384) and not info["cached"]
    assert np.allclose(np.linalg.norm(a, axis=1), 1, atol=1e-5)
    assert a[0] @ a[1] > a[0] @ a[2] + 0.2  # paraphrases closer than an unrelated sentence
    again, info = embed_passages(texts, None, "cpu", cache_dir=tmp_path)
    assert info["cached"] and np.array_equal(again, a)
    half = write_fp16_copy(tmp_path / "fp16")
    b, _ = embed_passages(texts, half, "cpu")
    assert (a * b).sum(1).min() > 0.999
    with pytest.raises(FileNotFoundError, match="minilm_path"):
        embed_passages(texts, tmp_path / "nowhere", "cpu")


# ------------------------------------------------------------------------------------------------ config
def test_config_errors_name_the_key():
    for bad, key in (({"methods": ["lsh"]}, "methods"), ({"datasets": ["msmarco"]}, "datasets"), ({"k": 0}, "k")):
        with pytest.raises(ValueError, match=key):
            validate(RewaConfig(**bad))
    with pytest.raises(ValueError, match="budgets"):
        check_dim(RewaConfig(budgets=[1000]), 768, "synthetic")
    with pytest.raises(ValueError, match="divisible"):
        check_dim(RewaConfig(budgets=[40]), 768, "synthetic")


def test_time_budget_cuts_work_that_took_too_long_before():
    clock = TimeBudget(60)
    assert clock.allows("seed", dataset="d", seed=0)  # nothing measured yet
    clock.took |= {"seed": 50.0, "learned_mlp": 45.0, "indexes": 20.0}
    assert clock.allows("seed", dataset="d", seed=1) and not clock.allows("learned_mlp", "indexes", dataset="d", seed=1)
    clock.took["seed"] = 100.0
    assert not clock.allows("seed", dataset="d", seed=2)
    assert [c["what"] for c in clock.cut] == ["learned_mlp", "seed"] and clock.cut[1]["seed"] == 2
    assert TimeBudget(0).allows("seed", dataset="d", seed=0)  # 0: no limit


# ------------------------------------------------------------------------------------------------ quick preset
@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    out = tmp_path_factory.mktemp("rewa")
    cfg, out, _ = parse_experiment_args(EXP, ["--preset", "quick", "--out", str(out), "--seeds", "[0, 1]"])
    results = EXP.run(cfg, out)
    return results, out


def _mean(results, method, budget):
    rows = [r for r in results["summary"] if r["method"] == method and r["budget"] == budget]
    assert len(rows) == 1, (method, budget)
    return rows[0]


def test_quick_preset_learned_beats_random_projection_held_out(quick):
    results, _ = quick
    for b in (16, 32, 64):
        learned, random = _mean(results, "learned_rank", b), _mean(results, "random_hadamard", b)
        assert learned["recall_mean"] > random["recall_mean"] + 0.05, b
        assert learned["n"] == 2
    assert _mean(results, "pq", 64)["recall_mean"] > _mean(results, "pq", 16)["recall_mean"]
    assert _mean(results, "exact", None)["recall_mean"] == 1.0


def test_quick_preset_class_hits_are_not_neighbour_recall(quick):
    """The seed's encoder finds the query's class almost always, but not its exact neighbours."""
    results, _ = quick
    seed_mlp = _mean(results, "seed:learned_mlp", None)
    assert seed_mlp["class_precision_mean"] > 0.95 and seed_mlp["recall_mean"] < 0.9
    assert _mean(results, "seed:binary_rewa", None)["recall_mean"] < _mean(results, "binary_rewa", 16)["recall_mean"]


def test_quick_preset_writes_every_record_and_the_report(quick):
    results, out = quick
    saved = json.loads((out / "results.json").read_text())
    assert saved["git_commit"] and saved["config"]["seeds"] == [0, 1]
    methods = {r["method"] for r in saved["records"]}
    assert {"pq", "opq_pq", "binary_rewa", "learned_rank_pq", "seed:learned_mlp"} <= methods
    assert len(saved["records"]) == 2 * (3 + 3 * 8 + 3)  # seeds × (reference + budgets × methods + seed sizes)
    for r in saved["records"]:
        assert r["recall_rerank"] >= r["recall"] - 1e-9 and 0 <= r["recall"] <= 1
    md = (out / "results.md").read_text()
    assert "| learned_rank_pq |" in md and "targets" in md
    assert (out / "recall_vs_bytes.png").stat().st_size > 20_000
    assert any(p.name == "metrics.csv" for p in (out / "logs").rglob("*")), os.listdir(out / "logs")
