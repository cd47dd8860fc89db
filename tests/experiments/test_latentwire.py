"""latentwire: the QA task, the PCA wire and snap, batch assembly, and the quick preset end to end on real numbers."""

import json

import pytest
import torch

from salmonn_symbols.experiments import load_experiment
from salmonn_symbols.experiments.common import parse_experiment_args
from salmonn_symbols.experiments.latentwire.adapters import build_adapter
from salmonn_symbols.experiments.latentwire.config import PRESETS, LatentWireConfig, check_config
from salmonn_symbols.experiments.latentwire.evaluate import evaluate_arm, exact_match, token_f1
from salmonn_symbols.experiments.latentwire.llm import FrozenLLM, encode_questions, load_llm
from salmonn_symbols.experiments.latentwire.merge import merge_results
from salmonn_symbols.experiments.latentwire.module import masked_nmse
from salmonn_symbols.experiments.latentwire.run import run, settings
from salmonn_symbols.experiments.latentwire.task import KINDS, build_dataset, load_dataset, save_dataset
from salmonn_symbols.experiments.latentwire.wire import fit_wire

EXP = load_experiment("latentwire")


@pytest.fixture(scope="module")
def dataset():
    return build_dataset(list(KINDS), 1, [0.5, 0.1, 0.4], 0)


@pytest.fixture(scope="module")
def tiny():
    """The quick preset's random 2-layer LLaMA with SmolLM2's tokenizer (read from the packaged GGUF)."""
    model, tok = load_llm(LatentWireConfig(**PRESETS["quick"]))
    return FrozenLLM(model, tok)


def test_task_is_extractive_and_split_by_country(dataset, tmp_path):
    splits = dataset.splits
    entities = {k: {r["entity"] for r in v} for k, v in splits.items()}
    assert not (entities["train"] & entities["test"]) and not (entities["train"] & entities["val"])
    assert {r["kind"] for r in splits["test"]} == set(KINDS) and len(splits["train"]) > 300
    assert all(r["answer"] in r["context"] for rows in splits.values() for r in rows)  # every answer is a span
    countries = {k: {r["answer"] for r in v if r["kind"] == "country"} for k, v in splits.items()}
    assert countries["test"] and not countries["train"] & countries["test"]
    path = save_dataset(dataset, tmp_path / "d.json")
    assert load_dataset(path).splits == splits
    obj = json.loads(path.read_text())
    obj["splits"]["test"][3]["answer"] = ""
    path.write_text(json.dumps(obj))
    with pytest.raises(ValueError, match=r"splits.test\[3\] field 'answer'"):
        load_dataset(path)


def test_answer_metrics():
    assert token_f1("Cairo", "Africa/Cairo") == pytest.approx(2 / 3)  # punctuation splits words
    assert exact_match("The Euro.", "euro") == 1.0 and token_f1("Dollar", "Krone") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0


def test_pca_wire_snap_and_pooling():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(500, 32, generator=g)
    msgs = [table[torch.randint(0, 500, (int(n),), generator=g)] for n in torch.randint(5, 12, (60,), generator=g)]
    emb = torch.nn.utils.rnn.pad_sequence(msgs[:4], batch_first=True)  # (4, L, 32)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(m), dtype=torch.bool) for m in msgs[:4]], batch_first=True)
    exact = fit_wire(msgs, 1, 1, "mean")  # all 32 directions: the PCA inverse is exact
    codes, _ = exact.encode(emb, mask)
    assert torch.allclose(exact.decode(codes, emb.shape[1])[mask], emb[mask], atol=1e-4)
    assert torch.allclose(exact.components @ exact.components.T, torch.eye(32), atol=1e-4)
    w8 = fit_wire(msgs, 8, 1, "mean")
    codes, _ = w8.encode(emb, mask)
    pca = w8.decode(codes, emb.shape[1])[mask]
    cos = torch.nn.functional.cosine_similarity(pca, emb[mask]).mean()
    assert 0.2 < cos < 0.9 and 0 < w8.explained < 0.5  # 4 of 32 dims of isotropic rows keep little
    w8.set_vocabulary(table)
    assert torch.equal(w8.snap(codes, table)[mask], emb[mask])  # the trap: 4 numbers name a row of 500
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training and evaluation may run under bf16 autocast
        assert torch.equal(w8.encode(emb, mask)[0], codes)  # the wire itself stays float32
    noisy = w8.snap(w8.add_noise(codes, 1.0, torch.Generator().manual_seed(1)), table)[mask]
    assert (noisy != emb[mask]).any(1).float().mean() > 0.2
    pooled = fit_wire(msgs, 1, 4, "mean")  # 4:1 mean pooling, all directions: each window decodes to its mean
    codes, gmask = pooled.encode(emb, mask)
    assert codes.shape[1] == -(-emb.shape[1] // 4) and gmask.sum() == sum(-(-len(m) // 4) for m in msgs[:4])
    n = len(msgs[0])
    last = msgs[0][4 * ((n - 1) // 4) :].mean(0)  # the partial last window is the mean of its real tokens
    assert torch.allclose(pooled.decode(codes, emb.shape[1])[0, n - 1], last, atol=1e-4)
    concat = fit_wire(msgs, 1, 2, "concat")  # 2:1 concatenation at ratio 1 keeps 32 of 64 dims: lossy
    c2, _ = concat.encode(emb, mask)
    assert c2.shape[-1] == 32 and concat.explained < 0.9


@pytest.mark.parametrize(("kind", "k"), [("linear", 1), ("mlp", 1), ("transformer", 1), ("transformer", 4)])
def test_adapters_start_as_the_pca_inverse_and_learn(kind, k):
    g = torch.Generator().manual_seed(0)
    msgs = [torch.randn(int(n), 32, generator=g) for n in torch.randint(5, 12, (40,), generator=g)]
    wire = fit_wire(msgs, 4, k, "mean")
    emb = torch.nn.utils.rnn.pad_sequence(msgs[:8], batch_first=True)  # (8, L, 32)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones(len(m), dtype=torch.bool) for m in msgs[:8]], batch_first=True)
    codes, gmask = wire.encode(emb, mask)
    adapter = build_adapter(wire, kind, 32, 1, 4)
    out = adapter(wire, codes, gmask, emb.shape[1])
    assert out.shape == emb.shape and torch.equal(out, wire.decode(codes, emb.shape[1]))
    opt = torch.optim.Adam(adapter.parameters(), lr=1e-2)
    before = masked_nmse(out, emb, mask, wire.token_var).item()
    for _ in range(30):
        loss = masked_nmse(adapter(wire, codes, gmask, emb.shape[1]), emb, mask, wire.token_var)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.9 * before  # it fits the eight messages it sees


def test_batches_score_and_generate_as_single_questions(tiny, dataset):
    items = encode_questions(tiny.tok, dataset, dataset.splits["test"][:6])
    assert len({len(e.prefix) + len(e.message) for e in items}) > 1  # left padding is exercised
    emb, mask = tiny.message_batch(items)
    nll, n = tiny.answer_nll(tiny.assemble(items, emb, with_answer=True))
    alone = [tiny.answer_nll(tiny.assemble([e], tiny.message_batch([e])[0], with_answer=True)) for e in items]
    assert torch.allclose(nll, torch.cat([a[0] for a in alone]), rtol=1e-4, atol=1e-4)
    assert n.tolist() == [len(e.answer) for e in items]  # every answer token and the end of turn, nothing else
    batch = tiny.generate(tiny.assemble(items, emb, with_answer=False), 4)
    single = [tiny.generate(tiny.assemble([e], tiny.message_batch([e])[0], with_answer=False), 4)[0] for e in items]
    assert batch == single


def test_config_keys_are_checked_by_name(tmp_path):
    cfg, _, _ = parse_experiment_args(EXP, ["--preset", "full", "--config", "configs/experiments/latentwire.yaml"])
    check_config(cfg)
    assert cfg.llm == "pretrained" and cfg.ratios == [8, 16, 32, 64] and cfg.time_budget_s > 0
    with pytest.raises(ValueError, match="data_file"):
        check_config(LatentWireConfig(data_file=str(tmp_path / "missing.json")))
    with pytest.raises(ValueError, match="token_adapters"):
        check_config(LatentWireConfig(token_adapters=["lstm"]))
    with pytest.raises(FileNotFoundError, match="gguf_file"):
        load_llm(LatentWireConfig(gguf_file="nope.gguf"))


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """The quick preset with the MLP as the only per-token adapter (for time), reading the task back from an
    exported file as the GPU run does."""
    out = tmp_path_factory.mktemp("latentwire")
    data = out / "data.json"
    cfg, _, _ = parse_experiment_args(EXP, ["--export_data", str(data)])
    run(cfg, out)
    keys = ["--data_file", str(data), "--token_adapters", "[mlp]"]
    cfg, _, _ = parse_experiment_args(EXP, keys)
    return cfg, run(cfg, out), out


def test_quick_records_every_arm_setting_and_seed(quick):
    cfg, res, out = quick
    fixed, trained = settings(cfg)
    expected = sum(len(cfg.seeds) if s.noise > 0 else 1 for s in fixed) + len(trained) * len(cfg.seeds)
    assert len(res["records"]) == expected and res["complete"] and res["git_commit"] and res["config"]["seeds"]
    saved = json.loads((out / "results.json").read_text())
    assert saved["records"] == json.loads(json.dumps(saved["records"]))
    assert saved["task"]["questions"]["test"] == 48
    md = (out / "results.md").read_text()
    assert "## Targets" in md and "## Sequence pooling" in md and "## Example generations" in md
    assert (out / "f1_vs_compression.png").stat().st_size > 20_000
    assert (out / "logs" / "adapter_mse_ce-mlp-r8-k1-n0-s1" / "metrics.csv").read_text().count("\n") > 3


def _row(res, **where):
    rows = [r for r in res["summary"] if all(r[k] == v for k, v in where.items())]
    assert len(rows) == 1, where
    return rows[0]


def test_quick_snap_is_lossless_and_pca_is_not(quick):
    _, res, _ = quick
    full = _row(res, arm="full")
    for ratio in (8, 32):
        snap = _row(res, arm="snap", ratio=ratio, noise=0.0)
        assert snap["cosine_mean"] > 0.9999 and abs(snap["nll_mean"] - full["nll_mean"]) < 1e-5
        assert res["examples"][f"snap-r{ratio}-k1-n0"] == res["examples"]["full-r1-k1-n0"]
    pca8, pca32 = _row(res, arm="pca", ratio=8, pool=1, noise=0.0), _row(res, arm="pca", ratio=32, pool=1, noise=0.0)
    assert 1 > pca8["cosine_mean"] > pca32["cosine_mean"] > 0 and pca8["nmse_mean"] < pca32["nmse_mean"]
    assert _row(res, arm="snap", ratio=8, noise=1.0)["cosine_mean"] < 0.9  # noise breaks snapping
    assert _row(res, arm="pca", ratio=8, pool=4)["cosine_mean"] < pca8["cosine_mean"]  # 4 tokens per vector


def test_quick_answer_ce_lowers_held_out_nll(quick):
    _, res, _ = quick
    for ratio in (8, 32):
        mse = _row(res, arm="adapter_mse", adapter="mlp", ratio=ratio, pool=1, noise=0.0)
        ce = _row(res, arm="adapter_mse_ce", adapter="mlp", ratio=ratio, pool=1, noise=0.0)
        assert ce["nll_mean"] < mse["nll_mean"] - 0.01 and mse["n"] == 2
    tf = _row(res, arm="adapter_mse_ce", adapter="transformer", ratio=8, pool=4)
    assert tf["nll_mean"] < _row(res, arm="pca", ratio=8, pool=4)["nll_mean"]


def test_evaluation_of_the_full_arm_is_deterministic(tiny, dataset):
    items = encode_questions(tiny.tok, dataset, dataset.splits["test"][:8])
    a, _ = evaluate_arm(tiny, items, lambda e, m, g: e, 0.01, 8, 3)
    b, _ = evaluate_arm(tiny, items, lambda e, m, g: e, 0.01, 3, 3)  # other batch size, same numbers
    assert a["nll"] == pytest.approx(b["nll"], abs=1e-4) and a["cosine"] == pytest.approx(1.0)
    assert a["f1"] == b["f1"] and a["nmse"] == 0.0


@pytest.mark.slow
def test_smollm2_answers_and_snaps_back_from_64x(tmp_path):
    """The GPU run's path on the CPU: SmolLM2-135M-Instruct from the packaged GGUF, the task read back from a
    file, bf16 autocast; the real model answers held-out questions and snapping 9 numbers per token keeps them."""
    data = tmp_path / "data.json"
    cfg, _, _ = parse_experiment_args(EXP, ["--preset", "full", "--export_data", str(data)])
    run(cfg, tmp_path)
    keys = ["--preset", "full", "--data_file", str(data), "--max_train", "64", "--max_test", "8", "--ratios", "[64]"]
    keys += ["--arms", "[full, snap, pca]", "--pools", "[]", "--noise_levels", "[]", "--eval_batch_size", "8"]
    cfg, _, _ = parse_experiment_args(EXP, keys)
    res = run(cfg, tmp_path)
    full, snap, pca = (_row(res, arm=a) for a in ("full", "snap", "pca"))
    assert res["llm"]["dim"] == 576 and res["config"]["precision"] == "bf16-mixed"
    assert full["f1_mean"] >= 0.5 and snap["f1_mean"] == full["f1_mean"] and snap["cosine_mean"] > 0.9999
    assert res["examples"]["snap-r64-k1-n0"] == res["examples"]["full-r1-k1-n0"]
    assert pca["cosine_mean"] < 0.8 and pca["nll_mean"] > full["nll_mean"] + 1  # the PCA inverse alone fails at 64x


SMALL = ["--arms", "[full, snap, adapter_mse]", "--ratios", "[8]", "--token_adapters", "[linear]", "--pools", "[]"]
SMALL += ["--noise_levels", "[1.0]", "--noise_adapters", "[linear]", "--steps", "3", "--max_train", "32"]
SMALL += ["--max_test", "16", "--max_val", "0", "--n_examples", "1"]


def test_merging_runs_of_disjoint_seeds_gives_the_single_run(tmp_path):
    """Seeds 0 and 1 run apart and merged print the tables that one run over seeds 0 and 1 prints."""
    outs = {}
    for name, seeds in (("both", "[0, 1]"), ("s0", "[0]"), ("s1", "[1]")):
        cfg, _, _ = parse_experiment_args(EXP, [*SMALL, "--seeds", seeds])
        outs[name] = tmp_path / name
        EXP.run(cfg, outs[name])
    parts = [str(outs[n] / "results.json") for n in ("s1", "s0")]  # any order
    cfg, _, _ = parse_experiment_args(EXP, ["--merge", f"[{parts[0]}, {parts[1]}]"])
    merged = EXP.run(cfg, tmp_path / "merged")
    single = json.loads((outs["both"] / "results.json").read_text())
    assert merged["config"]["seeds"] == [0, 1] and merged["complete"]
    assert merged["merge_dropped"]["records"] == 2  # the deterministic arms, measured by both runs
    assert [r["seed"] for r in merged["records"]] == [r["seed"] for r in single["records"]]
    for a, b in zip(merged["summary"], single["summary"], strict=True):
        assert {k: a[k] for k in ("arm", "adapter", "ratio", "noise", "n")} == {
            k: b[k] for k in ("arm", "adapter", "ratio", "noise", "n")
        }
        for m in ("f1_mean", "f1_std", "nll_mean", "nll_std", "cosine_mean"):
            assert a[m] == pytest.approx(b[m], abs=1e-5), (a["arm"], m)
    tables = lambda path: path.read_text().split("## Reference", 1)[1].split("## Example", 1)[0]  # noqa: E731
    assert tables(tmp_path / "merged" / "results.md") == tables(outs["both"] / "results.md")
    assert "seeds [1] from" in (tmp_path / "merged" / "results.md").read_text()


def test_merge_refuses_overlapping_seeds_and_other_configs(tmp_path):
    cfg, _, _ = parse_experiment_args(EXP, [*SMALL, "--seeds", "[0]", "--arms", "[full, adapter_mse]"])
    res = EXP.run(cfg, tmp_path / "a")
    other = json.loads(json.dumps(res)) | {"config": res["config"] | {"seeds": [5], "time_budget_s": 9.0}}
    with pytest.raises(ValueError, match="seed 0 was trained in both"):
        merge_results([res, other], ["a", "b"])
    for key, value in (("lr", 0.5), ("ratios", [16])):
        changed = other | {"config": other["config"] | {key: value}}
        with pytest.raises(ValueError, match=f"config field '{key}' differs"):
            merge_results([res, changed], ["a", "b"])
    with pytest.raises(ValueError, match="field 'task' differs"):
        merge_results([res, other | {"task": {}}], ["a", "b"])
    with pytest.raises(FileNotFoundError, match="no such file"):
        EXP.run(LatentWireConfig(merge=[str(tmp_path / "a" / "results.json"), "missing.json"]), tmp_path / "m")
