"""Data side: task configs, every input format, bad input, transforms, sampling, collation, check-data."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from salmonn_symbols.cli import main
from salmonn_symbols.data.audio import load_audio
from salmonn_symbols.data.datamodule import SymbolDataModule, write_skipped
from salmonn_symbols.data.dataset import SpeechCollator, SpeechDataset
from salmonn_symbols.data.manifest import DataError, read_split
from salmonn_symbols.data.prompt import PromptBuilder
from salmonn_symbols.data.sampler import BalancedBatchSampler, ShardedEvalBatchSampler, dataset_weights
from salmonn_symbols.data.tasks import DataConfigError, TaskConfig, load_task_config
from salmonn_symbols.data.transforms import PromptTransform
from salmonn_symbols.symbols import SymbolBook

SR = 16000
LABELS = ["anger", "joy", "neutral"]


def _wav(path, seconds=1.5, sr=SR, freq=220.0, channels=1, value=None):
    t = np.arange(int(seconds * sr)) / sr
    x = 0.3 * np.sin(2 * np.pi * freq * t).astype(np.float32)
    if value is not None:
        x[:] = value
    if channels > 1:
        x = np.stack([x] * channels, axis=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, sr, subtype="FLOAT")
    return path


def _task(tmp_path, rows_by_split, name="emo", **extra):
    for split, rows in rows_by_split.items():
        with open(tmp_path / f"{split}.jsonl", "w") as f:
            for r in rows:
                f.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    cfg = dict(
        name=name,
        task="emotion",
        labels=LABELS,
        instructions=["Emotion? Options: {labels}."],
        few_shot=0,
        splits={s: f"{s}.jsonl" for s in rows_by_split},
    )
    cfg.update(extra)
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / f"{name}.yaml"


def _rows(tmp_path, n=6, prefix="s", split="train"):
    rows = []
    for i in range(n):
        _wav(tmp_path / "audio" / f"{prefix}{i}.wav", seconds=1 + 0.2 * i, freq=200 + 50 * i)
        rows.append(
            {
                "id": f"{prefix}{i}",
                "audio": f"audio/{prefix}{i}.wav",
                "task": "emotion",
                "label": LABELS[i % 3],
                "text": f"transcript {i} with anger inside",
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------ configs
def test_task_config_typo_and_missing_fields(tmp_path):
    p = tmp_path / "t.yaml"
    p.write_text(yaml.safe_dump({"name": "x", "labels": ["a"], "splits": {"train": "t.jsonl"}, "few_shots": 2}))
    with pytest.raises(DataConfigError, match=r"t.yaml: unknown field\(s\) \['few_shots'\]"):
        load_task_config(p)
    p.write_text(yaml.safe_dump({"labels": ["a"], "splits": {"train": "t.jsonl"}}))
    with pytest.raises(DataConfigError, match="missing required field 'name'"):
        load_task_config(p)
    p.write_text(yaml.safe_dump({"name": "x", "labels": ["a", "a"], "splits": {"train": "t"}}))
    with pytest.raises(DataConfigError, match=r"field 'labels' repeats \['a'\]"):
        load_task_config(p)
    p.write_text(yaml.safe_dump({"name": "x", "labels": ["a"], "splits": {"train": "t"}, "format": "csv"}))
    with pytest.raises(DataConfigError, match="field 'format'"):
        load_task_config(p)
    p.write_text(yaml.safe_dump({"name": "x", "labels": ["a"], "splits": {"train": "t"}, "format": "hf"}))
    with pytest.raises(DataConfigError, match="needs columns"):
        load_task_config(p)


def test_unconfigured_dataset_and_split(tmp_path):
    dm = SymbolDataModule([str(_task(tmp_path, {"train": _rows(tmp_path)}))])
    with pytest.raises(DataConfigError, match="dataset 'meld' is not configured"):
        dm.task("meld")
    with pytest.raises(DataConfigError, match="has no split 'validation'"):
        dm.load_split("validation")
    with pytest.raises(DataConfigError, match="configured twice"):
        SymbolDataModule([str(tmp_path / "emo.yaml")] * 2)


# ------------------------------------------------------------------------------------------------- formats
def test_jsonl_manifest(tmp_path):
    cfg = load_task_config(_task(tmp_path, {"train": _rows(tmp_path)}))
    samples, problems = read_split(cfg, "train")
    assert len(samples) == 6 and not problems
    s = samples[1]
    assert s.id == "s1" and s.label == "joy" and s.dataset == "emo" and s.where.endswith("train.jsonl:2")
    assert s.audio == str(tmp_path / "audio" / "s1.wav")


def test_salmonn_annotation(tmp_path):
    _wav(tmp_path / "a.wav")
    ann = {
        "annotation": [
            {"path": str(tmp_path / "a.wav"), "text": "joy", "task": "emotion", "Q": "Which?"},
            {"path": "a.wav", "text": "anger", "task": "emotion"},
        ]
    }
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    cfg = TaskConfig(
        name="emo", labels=LABELS, format="salmonn", splits={"train": "ann.json"}, source=str(tmp_path / "x.yaml")
    )
    samples, _ = read_split(cfg, "train")
    assert [s.label for s in samples] == ["joy", "anger"] and samples[0].prompt == "Which?"
    assert samples[1].audio == str(tmp_path / "a.wav")


def test_hf_datasets_saved_to_disk_and_data_files(tmp_path):
    import datasets

    for i in range(3):
        _wav(tmp_path / f"h{i}.wav", seconds=1.2)
    ds = datasets.Dataset.from_dict(
        {
            "uid": ["a", "b", "c"],
            "emotion": ["joy", "anger", "neutral"],
            "file": [str(tmp_path / f"h{i}.wav") for i in range(3)],
            "words": ["x", "y", "z"],
        }
    )
    ds.save_to_disk(str(tmp_path / "hf_paths"))
    cfg = TaskConfig(
        name="emo",
        labels=LABELS,
        format="hf",
        splits={"train": str(tmp_path / "hf_paths")},
        columns={"audio": "file", "label": "emotion", "id": "uid", "text": "words"},
    )
    samples, _ = read_split(cfg, "train")
    assert [(s.id, s.label, s.text) for s in samples] == [("a", "joy", "x"), ("b", "anger", "y"), ("c", "neutral", "z")]
    # an Audio column holding the encoded bytes: the waveform comes out of the dataset itself
    import io

    blobs = []
    for k in (1, 2):
        buf = io.BytesIO()
        sf.write(buf, np.sin(np.arange(8000 * k) / 10).astype(np.float32), 8000, format="WAV")
        blobs.append({"bytes": buf.getvalue(), "path": None})
    dec = datasets.Dataset.from_dict({"emotion": ["joy", "anger"], "audio": blobs})
    dec.cast_column("audio", datasets.Audio()).save_to_disk(str(tmp_path / "hf_audio"))
    cfg2 = TaskConfig(
        name="emo",
        labels=LABELS,
        format="hf",
        splits={"train": str(tmp_path / "hf_audio")},
        columns={"audio": "audio", "label": "emotion"},
    )
    samples2, _ = read_split(cfg2, "train")
    assert [s.id for s in samples2] == ["emo-0", "emo-1"]
    item = SpeechDataset([samples2], [cfg2])[(0, 1, 0)]
    assert item["wav"].numel() == 2 * SR  # 2 s at 8 kHz resampled to 16 kHz
    # local data files through the datasets library
    (tmp_path / "rows.json").write_text(
        "\n".join(json.dumps({"uid": f"r{i}", "emotion": "joy", "file": f"h{i}.wav"}) for i in range(3))
    )
    cfg3 = TaskConfig(
        name="emo",
        labels=LABELS,
        format="hf",
        splits={"train": str(tmp_path / "rows.json")},
        columns={"audio": "file", "label": "emotion", "id": "uid"},
    )
    assert [s.audio for s in read_split(cfg3, "train")[0]] == [str(tmp_path / f"h{i}.wav") for i in range(3)]


# ---------------------------------------------------------------------------------------------- bad input
BAD_LINES = [
    (b"\xff\xfe not utf8", "line is not UTF-8 text"),
    (b"{not json", "line is not valid JSON"),
    (b"[1, 2]", "line is not a JSON object"),
    (json.dumps({"id": "x", "audio": "audio/s0.wav"}).encode(), r"missing required field\(s\) \['label'\]"),
    (json.dumps({"id": "x", "audio": "audio/s0.wav", "label": "rage"}).encode(), r"label\(s\) \['rage'\] not in"),
    (json.dumps({"id": "s0", "audio": "audio/s0.wav", "label": "joy"}).encode(), r"duplicate id 's0' \(first at"),
    (json.dumps({"id": "x", "audio": "audio/nope.wav", "label": "joy"}).encode(), "audio file not found"),
    (
        json.dumps({"id": "x", "audio": "audio/s0.wav", "label": "joy", "dataset": "meld"}).encode(),
        "dataset 'meld' is not configured",
    ),
]


@pytest.mark.parametrize("line,msg", BAD_LINES)
def test_bad_manifest_lines_name_file_and_line(tmp_path, line, msg):
    rows = _rows(tmp_path, 3)
    path = _task(tmp_path, {"train": rows})
    with open(tmp_path / "train.jsonl", "ab") as f:
        f.write(line + b"\n")
    cfg = load_task_config(path)
    with pytest.raises(DataError, match=rf"train.jsonl:4: .*{msg}"):
        read_split(cfg, "train")
    samples, problems = read_split(cfg, "train", on_bad_sample="skip")
    assert len(samples) == 3 and len(problems) == 1 and problems[0].where.endswith("train.jsonl:4")


def test_empty_split(tmp_path):
    cfg = load_task_config(_task(tmp_path, {"train": []}))
    with pytest.raises(DataError, match="split 'train' of dataset 'emo' has no usable samples"):
        read_split(cfg, "train")


@pytest.mark.parametrize(
    "kind,msg",
    [
        ("corrupt", "cannot decode audio"),
        ("zeros", "audio is all zeros"),
        ("nan", "NaN samples"),
        ("empty", "audio is empty|cannot decode"),
        ("missing", "audio file not found"),
    ],
)
def test_bad_audio_names_file_and_sample(tmp_path, kind, msg):
    p = tmp_path / "x.wav"
    if kind == "corrupt":
        p.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunkjunk")
    elif kind == "zeros":
        _wav(p, value=0.0)
    elif kind == "nan":
        _wav(p, value=np.nan)
    elif kind == "empty":
        sf.write(p, np.zeros(0, dtype=np.float32), SR)
    with pytest.raises(DataError, match=msg) as info:
        load_audio(str(p), "sample-7")
    assert info.value.problem.sample_id == "sample-7" and "x.wav" in str(info.value)


def test_audio_processing(tmp_path):
    stereo = load_audio(str(_wav(tmp_path / "st.wav", seconds=2, sr=44100, channels=2)))
    assert stereo.shape == (2 * SR,) and stereo.dtype == torch.float32
    assert load_audio(str(_wav(tmp_path / "short.wav", seconds=0.3))).numel() == SR  # padded to 1 s
    assert load_audio(str(_wav(tmp_path / "long.wav", seconds=31))).numel() == 30 * SR  # truncated


def test_skip_mode_counts_and_writes_skipped(tmp_path):
    rows = _rows(tmp_path, 4)
    _wav(tmp_path / "audio" / "z.wav", value=0.0)
    rows.append({"id": "z", "audio": "audio/z.wav", "label": "joy"})
    rows.append("{oops")
    dm = SymbolDataModule([str(_task(tmp_path, {"train": rows}))], on_bad_sample="skip", batch_size=8, num_workers=0)
    samples = dm.load_split("train")
    assert len(samples[0]) == 5 and len(dm.problems) == 1  # the bad line at read time
    ds = SpeechDataset(samples, dm.tasks, on_bad_sample="skip")
    item = ds[(0, 4, 0)]  # the all-zero clip at decode time
    assert item["skipped"].what == "audio is all zeros"
    path = write_skipped(tmp_path / "run" / "skipped.jsonl", dm.problems + [item["skipped"]])
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert len(lines) == 2 and lines[1]["id"] == "z" and lines[0]["where"].endswith("train.jsonl:6")
    with pytest.raises(DataError, match="z.wav"):
        SpeechDataset(samples, dm.tasks, on_bad_sample="error")[(0, 4, 0)]


# ------------------------------------------------------------------------------------- transforms, collate
@pytest.fixture
def book():
    return SymbolBook(labels=LABELS, mapping={"anger": "kesh", "joy": "zolf", "neutral": "plix"})


def test_transform_substitutes_targets_and_few_shot_outputs_only(tmp_path, book):
    cfg = load_task_config(
        _task(tmp_path, {"train": _rows(tmp_path)}, few_shot=2, instructions=["Is it anger? Options: {labels}."])
    )
    train = read_split(cfg, "train")[0]
    tf = PromptTransform({"emo": cfg}, {"emo": train}, book, seed=3)
    instr, target = tf(train[0], epoch=0)
    assert target == "kesh"
    assert instr.startswith("Is it anger? Options: ")  # the word in the instruction is text, not a label
    listed = instr.split("Options: ")[1].split(".")[0].split(", ")
    assert sorted(listed) == ["kesh", "plix", "zolf"]
    assert "with anger inside" in instr  # transcripts are never substituted
    outputs = [ln.split("Output: ")[1] for ln in instr.splitlines() if ln.startswith("Output: ")]
    assert len(outputs) == 2 and set(outputs) <= {"kesh", "zolf", "plix"}
    assert "transcript 0 " not in instr  # the sample itself is never its own example
    assert tf(train[0], epoch=0) == (instr, target)  # seeded: the same on every rank and after a resume
    assert len({tf(train[0], epoch=e)[0] for e in range(6)}) > 1  # but a new draw each epoch
    book.update({"anger": "voice"}, cycle=1, source="discovered")  # takes effect without rebuilding anything
    assert tf(train[0], 0)[1] == "voice"
    assert PromptTransform({"emo": cfg}, {"emo": train}, None)(train[0])[1] == "anger"


def test_multilabel_targets(tmp_path):
    cfg = TaskConfig(name="hvb", labels=["question", "answer", "thanks"], multi_label=True, splits={"t": "x"})
    b = SymbolBook(labels=cfg.labels, mapping={"question": "kesh", "answer": "zolf", "thanks": "plix"})
    from salmonn_symbols.data.manifest import Sample

    s = Sample(id="1", audio="", dataset="hvb", label=["thanks", "question"])
    assert PromptTransform({"hvb": cfg}, {}, b).target(s) == "kesh, plix"


def test_few_shot_comes_from_train_only(tmp_path, book):
    rows = {"train": _rows(tmp_path, 6, "t"), "validation": _rows(tmp_path, 3, "v")}
    dm = SymbolDataModule([str(_task(tmp_path, rows, few_shot=3))], num_workers=0)
    from salmonn_symbols.model.tokenizer import build_tiny_llama_tokenizer

    dm.bind(build_tiny_llama_tokenizer(), book)
    val = dm.load_split("validation")[0]
    for s in val:
        instr = dm.transform.instruction(s)
        assert "transcript" in instr
        texts = [ln for ln in instr.splitlines() if ln.startswith("Text: ")]
        assert texts and all(t[len("Text: ") :] in {r["text"] for r in rows["train"]} for t in texts)


def test_data_few_shot_overrides_every_task(tmp_path, book):
    rows = {"train": _rows(tmp_path, 6, "t"), "validation": _rows(tmp_path, 3, "v")}
    path = str(_task(tmp_path, rows, few_shot=3))
    from salmonn_symbols.model.tokenizer import build_tiny_llama_tokenizer

    for n in (0, 1):
        dm = SymbolDataModule([path], num_workers=0, few_shot=n)
        dm.bind(build_tiny_llama_tokenizer(), book)
        instr = dm.transform.instruction(dm.load_split("validation")[0][0])
        assert sum(ln.startswith("Text: ") for ln in instr.splitlines()) == n
    with pytest.raises(DataConfigError, match="data.few_shot must be an integer >= 0"):
        SymbolDataModule([path], num_workers=0, few_shot=-1)


def test_collate_builds_model_batches(tmp_path, book, llama_tok):
    cfg = load_task_config(_task(tmp_path, {"train": _rows(tmp_path)}))
    samples = read_split(cfg, "train")[0]
    ds = SpeechDataset([samples], [cfg])
    coll = SpeechCollator(PromptBuilder(llama_tok), PromptTransform({"emo": cfg}, {}, book))
    batch = coll([ds[(0, i, 0)] for i in (0, 3, 5)])
    assert batch["wav"].shape == (3, int(2.0 * SR)) and batch["wav_lengths"].tolist() == [SR, int(1.6 * SR), 2 * SR]
    assert batch["ids"] == ["s0", "s3", "s5"] and batch["gold"] == ["anger", "anger", "neutral"]
    assert batch["targets"] == ["kesh", "kesh", "plix"]
    assert batch["text_ids"].shape == batch["labels"].shape == batch["text_mask"].shape
    assert batch["prompt_text_ids"].shape[1] < batch["text_ids"].shape[1]
    assert coll([{"skipped": "x", "sample": None}])["skipped"] == ["x"]


# ------------------------------------------------------------------------------------------------ sampling
def test_dataset_weights():
    assert dataset_weights([100, 300], "uniform") == [0.5, 0.5]
    assert dataset_weights([100, 300], "proportional") == [0.25, 0.75]
    w = dataset_weights([100, 400], "temperature", 2.0)  # sqrt: 10 vs 20
    assert w == pytest.approx([1 / 3, 2 / 3])


@pytest.mark.parametrize(
    "mode,expect", [("uniform", [0.5, 0.5]), ("proportional", [0.2, 0.8]), ("temperature", [1 / 3, 2 / 3])]
)
def test_balanced_proportions_and_determinism(mode, expect):
    s = BalancedBatchSampler(
        [50, 200], batch_size=10, mode=mode, temperature=2.0, epoch_size=600, seed=1, bucket_batches=1
    )
    keys = [k for b in s for k in b]
    assert len(keys) == 600
    share = [sum(k[0] == d for k in keys) / 600 for d in range(2)]
    assert share == pytest.approx(expect, abs=1 / 600)
    s2 = BalancedBatchSampler(
        [50, 200], batch_size=10, mode=mode, temperature=2.0, epoch_size=600, seed=1, bucket_batches=1
    )
    assert [k for b in s2 for k in b] == keys
    s2.set_epoch(1)
    assert [k for b in s2 for k in b] != keys
    # within one epoch a dataset is drawn without replacement until it is exhausted
    small = [k[1] for k in keys if k[0] == 0]
    assert len(set(small[:50])) == min(50, len(small)) or len(set(small)) == 50


def test_ddp_shards_are_disjoint_complete_and_step_together():
    world = 3
    samplers = [BalancedBatchSampler([40, 40], 4, seed=2, rank=r, world_size=world, bucket_batches=1) for r in range(3)]
    batches = [list(s) for s in samplers]
    # every rank the same number of batches, ceil(80 / (3 · 4)) = 7, as its len() says: DDP ranks step together
    assert [len(b) for b in batches] == [len(s) for s in samplers] == [7, 7, 7]
    flat = [k for b in batches for batch in b for k in batch]
    assert len(flat) == len(set(flat)) == 80  # disjoint and complete: the short last round is split, not dropped


@pytest.mark.parametrize("n,batch,world", [(36, 4, 2), (32, 4, 2), (5, 4, 4), (17, 4, 2), (512, 16, 2), (30, 8, 1)])
def test_every_rank_gets_ceil_n_over_world_batch_batches_every_epoch(n, batch, world):
    samplers = [BalancedBatchSampler([n], batch, seed=0, rank=r, world_size=world) for r in range(world)]
    for epoch in range(3):
        for s in samplers:
            s.set_epoch(epoch)
        got = [list(s) for s in samplers]
        assert [len(b) for b in got] == [len(s) for s in samplers] == [math.ceil(n / (world * batch))] * world
        assert sorted(k[1] for b in got for batch_ in b for k in batch_) == list(range(n))  # each sample once
    ev = [ShardedEvalBatchSampler([7, 5], 2, rank=r, world_size=world) for r in range(world)]
    got = sorted(k for s in ev for b in s for k in b)
    assert got == sorted((d, i, 0) for d, n in enumerate([7, 5]) for i in range(n))  # complete, no duplicates


def test_eval_sampler_gives_every_rank_a_batch_when_batches_are_fewer_than_ranks():
    ev = [ShardedEvalBatchSampler([3, 2], 8, rank=r, world_size=4) for r in range(4)]
    assert all(len(s) == 1 for s in ev)  # one 8-batch would leave three ranks with nothing to validate
    got = sorted(k for s in ev for b in s for k in b)
    assert got == sorted((d, i, 0) for d, n in enumerate([3, 2]) for i in range(n))
    with pytest.raises(ValueError, match="3 samples for 4 ranks"):
        ShardedEvalBatchSampler([3], 8, rank=0, world_size=4)


def test_mid_epoch_resume():
    full = BalancedBatchSampler([30, 30], 4, seed=5, bucket_batches=1)
    all_batches = list(full)
    part = BalancedBatchSampler([30, 30], 4, seed=5, bucket_batches=1)
    it = iter(part)
    first = [next(it) for _ in range(5)]
    state = part.state_dict()
    assert state == {"epoch": 0, "batches_done": 5}
    resumed = BalancedBatchSampler([30, 30], 4, seed=5, bucket_batches=1)
    resumed.load_state_dict(state)
    assert first + list(resumed) == all_batches
    assert resumed.state_dict() == {"epoch": 1, "batches_done": 0}


def test_batches_by_length_reduce_padding():
    lengths = [[float(x) for x in torch.randperm(200).tolist()]]
    spread = lambda s: sum(max(lengths[0][k[1]] for k in b) - min(lengths[0][k[1]] for k in b) for b in s)  # noqa
    assert (
        spread(BalancedBatchSampler([200], 8, lengths, bucket_batches=25))
        < spread(BalancedBatchSampler([200], 8, lengths, bucket_batches=1)) / 5
    )


# ------------------------------------------------------------------------------------------------ check-data
def test_check_data_reports_every_problem(tmp_path, capsys):
    rows = _rows(tmp_path, 3)
    _wav(tmp_path / "audio" / "nan.wav", value=np.nan)
    rows += [
        {"id": "n", "audio": "audio/nan.wav", "label": "joy"},
        "{bad",
        {"id": "q", "audio": "audio/s0.wav", "label": "rage"},
    ]
    path = _task(tmp_path, {"train": rows})
    assert main(["check-data", str(path), "--workers", "1", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert "train.jsonl:5: line is not valid JSON" in out
    assert "train.jsonl:6: label(s) ['rage'] not in" in out
    assert "train.jsonl:4: audio has" in out and "NaN" in out
    assert "samples: 4" in out and "emo/train/anger: 1" in out
    good = _task(tmp_path / "ok", {"train": _rows(tmp_path / "ok", 3)}) if (tmp_path / "ok").mkdir() is None else None
    assert main(["check-data", str(good), "--no-progress"]) == 0
    assert main(["check-data", str(tmp_path / "ok" / "train.jsonl"), "--no-progress"]) == 0
    assert "problems: 0" in capsys.readouterr().out


def test_a_split_with_no_usable_sample_names_its_reasons_by_kind(tmp_path, capsys):
    rows = [{"id": f"m{i}", "audio": f"audio/gone{i}.wav", "label": "joy"} for i in range(4)] + ["{bad"]
    path = _task(tmp_path, {"train": rows})
    with pytest.raises(DataError) as info:
        read_split(load_task_config(path), "train", on_bad_sample="skip")
    first = ", ".join(f"{tmp_path / 'train.jsonl'}:{n}" for n in (1, 2, 3))
    assert f"has no usable samples (5 skipped):\n  4 × audio file not found ({first}, ...)" in str(info.value)
    assert f"\n  1 × line is not valid JSON ({tmp_path / 'train.jsonl'}:5)" in str(info.value)
    assert main(["check-data", str(path), "--workers", "1", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"4 × audio file not found ({first}, ...)" in out and "1 × line is not valid JSON" in out
    assert "samples: 0" in out and "skipped: 5   problems: 6" in out  # every bad line, and the empty split
    assert f"{tmp_path / 'train.jsonl'}:4: audio file not found" in out


def test_check_data_on_a_training_config_checks_every_task(tmp_path, capsys):
    good = _task(tmp_path, {"train": _rows(tmp_path, 3)})
    missing = tmp_path / "gone" / "task.yaml"
    config = tmp_path / "train.yaml"  # what `salmonn-symbols fit --config` reads
    config.write_text(yaml.safe_dump({"trainer": {"max_epochs": 1}, "data": {"tasks": [str(good), str(missing)]}}))
    assert main(["check-data", str(config), "--workers", "1", "--no-progress"]) == 1
    out = capsys.readouterr().out
    assert f"{config}: data.tasks: task config not found: {missing}" in out
    assert "samples: 3" in out and "problems: 1" in out and "emo/train/anger: 1" in out
    config.write_text(yaml.safe_dump({"model": {}, "data": {"batch_size": 2}}))
    assert main(["check-data", str(config)]) == 2
    assert f"{config}: a training config without data.tasks" in capsys.readouterr().err


def test_label_aliases_and_shipped_task_configs(tmp_path):
    from pathlib import Path

    rows = _rows(tmp_path, 3)
    rows[0]["label"] = "Anger"
    cfg = load_task_config(_task(tmp_path, {"train": rows}, label_aliases={"Anger": "anger"}))
    assert read_split(cfg, "train")[0][0].label == "anger"
    with pytest.raises(DataConfigError, match="label_aliases"):
        load_task_config(_task(tmp_path, {"train": rows}, label_aliases={"Anger": "rage"}))
    shipped = sorted((Path(__file__).parents[2] / "configs" / "data").glob("*.yaml"))
    assert len(shipped) >= 4
    for p in shipped:
        cfg = load_task_config(p)
        assert cfg.labels and cfg.splits


def test_sampler_continues_when_a_pass_stops_at_its_end():
    s = BalancedBatchSampler([16, 24], 8, seed=0)
    first = []
    it = iter(s)
    for _ in range(len(s)):  # a consumer that stops after len() batches never exhausts the generator
        first.append(next(it))
    second = list(s)
    assert len(second) == len(s) and second != first and s.state_dict() == {"epoch": 2, "batches_done": 0}


def test_the_book_is_handed_over_and_kept_loaders_follow_it(tmp_path, book, llama_tok):
    """The data side substitutes from the book it was handed; with persistent workers its loaders are kept
    between epochs until a new book arrives."""
    task = _task(tmp_path, {"train": _rows(tmp_path), "validation": _rows(tmp_path, 3, "v")})
    dm = SymbolDataModule([str(task)], batch_size=2, num_workers=1, persistent_workers=True, pin_memory=False)
    dm.setup("fit")
    dm.bind(llama_tok, book)
    loader = dm.train_dataloader()
    assert dm.train_dataloader() is loader and dm.val_dataloader() is dm.val_dataloader()
    assert next(iter(loader))["targets"][0] in {"kesh", "zolf", "plix"}
    new = SymbolBook(labels=LABELS, mapping={"anger": "vox", "joy": "lumo", "neutral": "tesk"})
    dm.set_book(new)
    assert dm.book is new and dm.train_dataloader() is not loader
    assert {t for b in dm.train_dataloader() for t in b["targets"]} <= {"vox", "lumo", "tesk"}
    plain = SymbolDataModule([str(task)], batch_size=2, num_workers=0, pin_memory=False)
    plain.setup("fit")
    plain.bind(llama_tok, book)
    assert plain.train_dataloader() is not plain.train_dataloader()  # made anew each epoch without workers
