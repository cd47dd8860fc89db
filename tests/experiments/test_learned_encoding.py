"""learned-encoding on real data at tiny sizes: exact toy bounds, the DNA Markov baseline, the stdlib split and
BPE byte accounting, joint vs random codes on a toy with a known answer, and the whole grid through workers."""

import json
import sysconfig
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from salmonn_symbols.experiments import load_experiment
from salmonn_symbols.experiments.common import parse_experiment_args
from salmonn_symbols.experiments.learned_encoding.config import PRESETS, LearnedEncodingConfig, check_config
from salmonn_symbols.experiments.learned_encoding.corpora import _split_of, code_corpus, dna_corpus, windows
from salmonn_symbols.experiments.learned_encoding.experiment import run
from salmonn_symbols.experiments.learned_encoding.markov import MarkovBaseline
from salmonn_symbols.experiments.learned_encoding.toys import toy_corpus

QUICK = LearnedEncodingConfig(**PRESETS["quick"])


def test_toy_bounds_match_the_data():
    """A first-order Markov chain fitted on the chain toy's train split scores its exact bound on test, and the
    pattern toy's bound is the closed form (copying after the first period)."""
    chain = toy_corpus("compression", QUICK)
    fitted = MarkovBaseline(chain, order=1).score(chain, "test", QUICK.seq_len)["bits"]
    assert fitted == pytest.approx(chain.bound_bits, rel=0.03)
    assert MarkovBaseline(chain, order=0).score(chain, "test", QUICK.seq_len)["bits"] > chain.bound_bits + 1.0
    pattern = toy_corpus("pattern", QUICK)
    expected = sum(np.log2(QUICK.toy_vocab - j) for j in range(1, 5)) / QUICK.seq_len
    assert pattern.bound_bits == pytest.approx(expected)
    seqs = pattern.splits["test"]
    assert (seqs[:, 5:] == seqs[:, :-5]).all() and all(len(set(s[:5])) == 5 for s in seqs)


def test_dna_blocks_are_held_out_and_markov_is_near_two_bits():
    dna = dna_corpus(QUICK)
    info = dna.info
    assert info["train_bases"] + info["val_bases"] + info["test_bases"] == info["bases"] > 2_000_000
    assert info["test_regions"] == info["val_regions"] == QUICK.dna_blocks // 10
    bits = [MarkovBaseline(dna, k).score(dna, "test", 256)["bits"] for k in (0, 4)]
    assert 1.9 < bits[1] < bits[0] < 2.0  # GC-rich genome: below 2 bits, and context helps
    w = windows(dna, "test", 257)
    assert w.shape[1] == 257 and w.max() <= 4 and len(w) * 257 <= info["test_bases"]


def test_code_split_by_file_and_bits_per_byte_denominator(tmp_path):
    root = Path(sysconfig.get_paths()["stdlib"])
    rels = [p.relative_to(root).as_posix() for p in sorted(root.glob("*.py"))]
    splits = {r: _split_of(r, 0.05, 0.05)[0] for r in rels}
    assert splits == {r: _split_of(r, 0.05, 0.05)[0] for r in rels}  # a pure function of the path
    assert set(splits.values()) == {"train", "val", "test"}
    cfg = replace(QUICK, code_vocab=600, code_train_bytes=200_000, code_eval_bytes=40_000)
    code = code_corpus(cfg, tmp_path)
    assert code.vocab_size == 600 and (tmp_path / "code_tokenizer.json").exists()
    for s in ("train", "val", "test"):  # unit_len counts every byte of the split's text exactly once
        assert code.unit_len[code.splits[s]].sum() == code.info[f"{s}_bytes"]
    assert 2.0 < code.info["bytes_per_token_test"] < 6.0


def test_joint_code_beats_a_random_code_on_the_markov_toy(tmp_path):
    """At r = 2 (d = 64, 32:1) on the sparse Markov chain, every token needs its own successors: a code learned
    with the model separates them, a fixed random one must be untangled by the network."""
    cfg = replace(QUICK, datasets=["compression"], arms=["joint", "random"], ratios=[32], seeds=[0, 1])
    res = run(cfg, tmp_path)
    bits = {(r["arm"], r["seed"]): r["test_bits"] for r in res["records"]}
    bound = res["baselines"]["compression"]["bits"]
    for seed in (0, 1):
        assert bits["joint", seed] < bits["random", seed] - 0.05
        assert bits["joint", seed] > bound - 0.05  # nothing beats the exact entropy
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["git_commit"] and len(saved["records"]) == 4 and saved["cut"] == []
    assert (tmp_path / "loss_vs_ratio.png").stat().st_size > 10_000
    assert "## compression, untied output" in (tmp_path / "results.md").read_text()


def test_full_structure_through_worker_processes(tmp_path):
    """The full preset's grid (code + DNA, all arms, tied on code) at tiny sizes, trained by 2 spawned workers."""
    cfg, _, _ = parse_experiment_args(load_experiment("learned-encoding"), ["--preset", "full"])
    cfg = replace(cfg, d_model=32, n_layers=1, n_heads=2, ffn_size=48, seq_len=32, batch_size=4, steps=4,
                  warmup_steps=1, eval_every=2, val_batches=1, test_windows=8, ae_steps=5, ratios=[8], seeds=[0],
                  code_vocab=400, code_train_bytes=60_000, code_eval_bytes=15_000, workers=2, device="cpu")  # fmt: skip
    res = run(cfg, tmp_path)
    recs = {r["key"]: r for r in res["records"]}
    assert len(recs) == 15 and res["cut"] == []
    v = res["datasets"]["code"]["vocab_size"]
    assert recs["code-untied-s0-full"]["embed_params"] == v * 32
    assert recs["code-tied-s0-joint-x8"]["embed_params"] == v * 4 + 4 * 32
    assert 0 < recs["code-untied-s0-svd-x8"]["energy_kept"] <= 1
    assert 0.5 < recs["dna-untied-s0-svd-x8"]["energy_kept"] <= 1  # rank 4 of a 5-symbol table
    assert all(r["steps"] == 4 and len(r["val_curve"]) == 2 for r in recs.values())
    md = (tmp_path / "results.md").read_text()
    assert "## code, tied output" in md and "order-4 Markov" in md
    assert (tmp_path / "logs" / "dna-untied-s0-random-x8" / "metrics.csv").exists()


def test_time_budget_cuts_the_tail_and_dependents(tmp_path):
    cfg = replace(QUICK, datasets=["pattern"], arms=["full", "svd"], seeds=[0, 1], steps=3, eval_every=3,
                  time_budget_s=1e-3)  # fmt: skip
    res = run(cfg, tmp_path)
    assert [r["key"] for r in res["records"]] == ["pattern-untied-s0-full"]
    assert set(res["cut"]) == {"pattern-untied-s1-full", "pattern-untied-s0-svd-x10", "pattern-untied-s1-svd-x10"}
    assert "Cut by the time budget (3)" in (tmp_path / "results.md").read_text()


def test_bad_config_names_the_field():
    with pytest.raises(ValueError, match="'arms'"):
        check_config(replace(QUICK, arms=["full", "pca"]))
    with pytest.raises(ValueError, match="'arms'.*need 'full'"):
        check_config(replace(QUICK, arms=["svd"]))
    with pytest.raises(ValueError, match="'eval_every'"):
        check_config(replace(QUICK, steps=50, eval_every=16))
    with pytest.raises(ValueError, match="dna_path"):
        dna_corpus(replace(QUICK, dna_path="/nonexistent/genome.fna.gz"))
