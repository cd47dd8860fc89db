"""Metrics: hand-worked single- and multi-label scores, aggregation and the epoch accumulator."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from salmonn_symbols.data.metrics import (
    INVALID,
    MetricAccumulator,
    accuracy,
    aggregate,
    confusion,
    count_invalid_multilabel,
    macro_f1,
    multilabel_macro_f1,
    per_class_f1,
    score,
)

ABC = ["a", "b", "c"]
XYZ = ["x", "y", "z"]

# Multi-label example shared by several tests. Labels x, y, z; z is never gold nor predicted.
ML_GOLDS = [{"x"}, {"x", "y"}, {"y"}, {"x"}]
ML_PREDS = [{"x"}, {"x", "y", "bogus"}, None, {"y"}]
# Binarised predictions (bogus dropped, None -> empty): [{x}, {x, y}, {}, {y}]
# x: gold in samples 0,1,3; predicted in 0,1       -> TP=2 FP=0 FN=1 -> P=1, R=2/3, F1=2*(2/3)/(5/3)=4/5
# y: gold in samples 1,2;   predicted in 1,3       -> TP=1 FP=1 FN=1 -> P=1/2, R=1/2, F1=1/2
# z: never gold, never predicted                   -> TP=FP=FN=0 -> 0 (zero_division=0)
# macro = (4/5 + 1/2 + 0) / 3 = 13/30
ML_F1 = 13 / 30


def test_perfect_score():
    golds = ["a", "b", "c", "a"]
    assert accuracy(golds, golds) == pytest.approx(1.0)
    assert macro_f1(golds, golds, ABC) == pytest.approx(1.0)
    assert score(golds, golds, ABC, multi_label=False) == pytest.approx({"acc": 1.0, "f1": 1.0, "invalid_rate": 0.0})


def test_one_invalid_prediction_adds_invalid_class():
    golds = ["a", "a", "b", "b"]
    preds = ["a", "zzz", "b", "b"]  # "zzz" is out of set -> INVALID
    # a: TP=1 FP=0 FN=1 -> P=1, R=1/2, F1=2/3
    # b: TP=2 FP=0 FN=0 -> F1=1
    # <invalid>: TP=0 FP=1 FN=0 -> F1=0; c: neither gold nor predicted -> not averaged
    # macro = (2/3 + 1 + 0) / 3 = 5/9   (without the INVALID class it would be 5/6)
    f1s = per_class_f1(preds, golds, ABC)
    assert f1s == pytest.approx({INVALID: 0.0, "a": 2 / 3, "b": 1.0})
    assert list(f1s) == sorted(f1s)  # scikit-learn's sorted label order
    assert macro_f1(preds, golds, ABC) == pytest.approx(5 / 9)
    assert accuracy(preds, golds) == pytest.approx(3 / 4)
    assert score(preds, golds, ABC, False) == pytest.approx({"acc": 3 / 4, "f1": 5 / 9, "invalid_rate": 1 / 4})


def test_none_predictions_are_invalid():
    golds = ["a", "b", "c", "c"]
    preds = [None, "b", "c", None]
    # mapped: [<invalid>, b, c, <invalid>]
    # a: TP=0 FN=1 -> 0;  b: TP=1 -> 1;  c: TP=1 FN=1 -> P=1, R=1/2, F1=2/3;  <invalid>: FP=2 -> 0
    # macro = (0 + 1 + 2/3 + 0) / 4 = 5/12;  acc = 2/4
    assert macro_f1(preds, golds, ABC) == pytest.approx(5 / 12)
    assert accuracy(preds, golds) == pytest.approx(1 / 2)
    assert score(preds, golds, ABC, False)["invalid_rate"] == pytest.approx(1 / 2)
    # None and any out-of-set string are the same class.
    assert macro_f1(["q", "b", "c", "r"], golds, ABC) == pytest.approx(5 / 12)


def test_class_never_predicted():
    golds = ["a", "a", "b", "c"]
    preds = ["a", "a", "b", "b"]
    # a: F1=1;  b: TP=1 FP=1 FN=0 -> P=1/2, R=1, F1=2/3;  c: TP=0 FN=1 -> 0
    # macro = (1 + 2/3 + 0) / 3 = 5/9
    assert per_class_f1(preds, golds, ABC) == pytest.approx({"a": 1.0, "b": 2 / 3, "c": 0.0})
    assert macro_f1(preds, golds, ABC) == pytest.approx(5 / 9)
    assert accuracy(preds, golds) == pytest.approx(3 / 4)


def test_class_predicted_but_never_gold():
    labels = ["a", "b", "c", "d"]  # d appears nowhere -> not averaged
    golds = ["a", "a", "a", "b"]
    preds = ["a", "a", "c", "b"]
    # a: TP=2 FP=0 FN=1 -> P=1, R=2/3, F1=4/5;  b: 1;  c: TP=0 FP=1 -> 0
    # macro = (4/5 + 1 + 0) / 3 = 3/5
    assert per_class_f1(preds, golds, labels) == pytest.approx({"a": 0.8, "b": 1.0, "c": 0.0})
    assert macro_f1(preds, golds, labels) == pytest.approx(3 / 5)


def test_confusion():
    table = confusion(["a", None, "zzz", "b"], ["a", "a", "b", "c"], ABC)
    zero = dict.fromkeys([*ABC, INVALID], 0)
    assert table == {
        "a": {**zero, "a": 1, INVALID: 1},
        "b": {**zero, INVALID: 1},
        "c": {**zero, "b": 1},
    }


def test_multilabel_hand_worked():
    # scikit-learn documents zero_division as "the value to return when there is a zero division, i.e. when all
    # predictions and labels are negative", so the all-negative column z contributes exactly 0 to the macro mean.
    assert multilabel_macro_f1(ML_PREDS, ML_GOLDS, XYZ) == pytest.approx(ML_F1)
    # The never-seen column counts: without it the mean would be (4/5 + 1/2) / 2 = 13/20.
    assert multilabel_macro_f1(ML_PREDS, ML_GOLDS, ["x", "y"]) == pytest.approx(13 / 20)
    # Out-of-set labels are ignored by the F1 ...
    clean = [{"x"}, {"x", "y"}, set(), {"y"}]
    assert multilabel_macro_f1(clean, ML_GOLDS, XYZ) == pytest.approx(ML_F1)
    # ... and counted separately: sample 1 ("bogus") and sample 2 (None).
    assert count_invalid_multilabel(ML_PREDS, XYZ) == 2
    assert count_invalid_multilabel(clean, XYZ) == 0
    # Exact-set accuracy: only sample 0 matches (sample 1 has the extra "bogus").
    expected = {"acc": 1 / 4, "f1": ML_F1, "invalid_rate": 2 / 4}
    assert score(ML_PREDS, ML_GOLDS, XYZ, multi_label=True) == pytest.approx(expected)
    # Lists and tuples work as well as sets; order and duplicates do not matter.
    as_lists = [["x"], ("y", "x", "x", "bogus"), None, ["y"]]
    assert score(as_lists, [sorted(g) for g in ML_GOLDS], XYZ, True) == pytest.approx(expected)


def test_input_validation():
    with pytest.raises(ValueError, match=r"3 items but golds has 2"):
        macro_f1(["a", "b", "c"], ["a", "b"], ABC)
    with pytest.raises(ValueError, match=r"1 items but golds has 2"):
        accuracy(["a"], ["a", "b"])
    with pytest.raises(ValueError, match=r"2 items but golds has 1"):
        multilabel_macro_f1([{"x"}, {"y"}], [{"x"}], XYZ)
    with pytest.raises(ValueError, match=r"gold label 'q'"):
        macro_f1(["a", "b"], ["a", "q"], ABC)
    with pytest.raises(ValueError, match=r"gold label 'q'"):
        confusion(["a"], ["q"], ABC)
    with pytest.raises(ValueError, match=r"gold label 'q'"):
        multilabel_macro_f1([{"x"}], [{"x", "q"}], XYZ)
    with pytest.raises(ValueError, match="no samples"):
        score([], [], ABC, False)
    with pytest.raises(ValueError, match="reserved"):
        macro_f1(["a"], ["a"], ["a", INVALID])
    with pytest.raises(TypeError, match="string"):
        multilabel_macro_f1(["x"], [{"x"}], XYZ)
    with pytest.raises(TypeError, match="None"):
        multilabel_macro_f1([{"x"}], [None], XYZ)


def _random_case(seed: int, multi: bool):
    rng = random.Random(seed)
    labels = [f"l{i}" for i in range(rng.randint(2, 6))]
    n = rng.randint(1, 40)
    pool = [*labels, None, "oops"]
    if multi:
        golds = [set(rng.sample(labels, rng.randint(0, len(labels)))) for _ in range(n)]
        preds: list[set[str] | None] = []
        for _ in range(n):
            pred = set(rng.sample(labels, rng.randint(0, len(labels))))
            if rng.random() < 0.2:
                pred.add("oops")  # out of set: ignored by the F1
            preds.append(None if rng.random() < 0.1 else pred)
        return labels, preds, golds
    golds = [rng.choice(labels) for _ in range(n)]
    preds = [rng.choice(pool) for _ in range(n)]
    return labels, preds, golds


@pytest.mark.parametrize("seed", range(20))
def test_single_label_against_numpy_confusion_matrix(seed):
    # An independent formulation (confusion matrix over the inferred sorted classes) of the same definition.
    labels, preds, golds = _random_case(seed, multi=False)
    mapped = [p if p in labels else INVALID for p in preds]
    classes = sorted(set(golds) | set(mapped))
    cm = np.zeros((len(classes), len(classes)))
    for p, g in zip(mapped, golds, strict=True):
        cm[classes.index(g), classes.index(p)] += 1
    tp = np.diag(cm)
    denom = cm.sum(0) + cm.sum(1)  # (TP + FP) + (TP + FN)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    assert macro_f1(preds, golds, labels) == pytest.approx(float(f1.mean()))
    assert accuracy(preds, golds) == pytest.approx(float(tp.sum() / len(golds)))


@pytest.mark.parametrize("seed", range(20))
def test_against_sklearn(seed):
    metrics = pytest.importorskip("sklearn.metrics")
    labels, preds, golds = _random_case(seed, multi=False)
    mapped = [p if p in labels else INVALID for p in preds]
    ref = metrics.f1_score(golds, mapped, average="macro", zero_division=0)
    assert macro_f1(preds, golds, labels) == pytest.approx(ref)
    assert accuracy(preds, golds) == pytest.approx(metrics.accuracy_score(golds, mapped))

    labels, preds, golds = _random_case(seed, multi=True)
    y_true = np.array([[int(lab in g) for lab in labels] for g in golds])
    y_pred = np.array([[int(p is not None and lab in p) for lab in labels] for p in preds])
    ref = metrics.f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert multilabel_macro_f1(preds, golds, labels) == pytest.approx(ref)


def test_aggregate():
    out = aggregate({"vox": {"acc": 0.5, "f1": 0.25}, "hvb": {"acc": 1.0, "f1": 0.75}})
    # mean/acc = (0.5 + 1.0) / 2;  mean/f1 = (0.25 + 0.75) / 2
    assert out == pytest.approx(
        {"vox/acc": 0.5, "vox/f1": 0.25, "hvb/acc": 1.0, "hvb/f1": 0.75, "mean/acc": 0.75, "mean/f1": 0.5}
    )
    assert aggregate({}) == {}
    # Only metrics present in every dataset are averaged.
    assert "mean/extra" not in aggregate({"a": {"f1": 1.0, "extra": 1.0}, "b": {"f1": 0.0}})
    with pytest.raises(ValueError, match="mean"):
        aggregate({"mean": {"f1": 1.0}})


TASKS = {"vox": (ABC, False), "hvb": (XYZ, True), "unused": (["p", "q"], False)}
# vox: the one-invalid example above (acc 3/4, f1 5/9, invalid 1/4); hvb: the multi-label example.
VOX_BATCHES = [(["a", "zzz"], ["a", "a"]), (["b", "b"], ["b", "b"])]
HVB_BATCHES = [(ML_PREDS[:1], ML_GOLDS[:1]), (ML_PREDS[1:3], ML_GOLDS[1:3]), (ML_PREDS[3:], ML_GOLDS[3:])]
EXPECTED = {
    "vox/acc": 3 / 4,
    "vox/f1": 5 / 9,
    "vox/invalid_rate": 1 / 4,
    "hvb/acc": 1 / 4,
    "hvb/f1": ML_F1,
    "hvb/invalid_rate": 1 / 2,
    "mean/acc": (3 / 4 + 1 / 4) / 2,
    "mean/f1": (5 / 9 + 13 / 30) / 2,  # = 89/180
    "mean/invalid_rate": (1 / 4 + 1 / 2) / 2,
}


def _feed(acc: MetricAccumulator, vox=VOX_BATCHES, hvb=HVB_BATCHES) -> MetricAccumulator:
    for p, g in vox:
        acc.update("vox", p, g)
    for p, g in hvb:
        acc.update("hvb", p, g)
    return acc


def test_accumulator_compute_and_reset():
    acc = _feed(MetricAccumulator(TASKS))
    out = acc.compute()
    assert out == pytest.approx(EXPECTED)  # "unused" got no samples and is left out of the means
    assert not any(k.startswith("unused/") for k in out)
    acc.reset()
    assert acc.compute() == {}
    _feed(acc)
    assert acc.compute() == pytest.approx(EXPECTED)


def test_accumulator_state_round_trip():
    acc = _feed(MetricAccumulator(TASKS))
    state = json.loads(json.dumps(acc.state_dict()))  # plain Python types only
    fresh = MetricAccumulator(TASKS)
    fresh.load_state_dict(state)
    assert fresh.compute() == pytest.approx(EXPECTED)
    assert fresh.state_dict() == acc.state_dict()
    # Loading replaces rather than appends (duplicated data would keep the ratios, so compare the state).
    fresh.load_state_dict(state)
    assert fresh.state_dict() == acc.state_dict()
    assert len(fresh.state_dict()["golds"]["vox"]) == 4


def test_accumulator_merge_equals_single():
    rank0 = _feed(MetricAccumulator(TASKS), vox=VOX_BATCHES[:1], hvb=HVB_BATCHES[:2])
    rank1 = _feed(MetricAccumulator(TASKS), vox=VOX_BATCHES[1:], hvb=HVB_BATCHES[2:])
    assert rank0.compute() != pytest.approx(EXPECTED)
    merged = MetricAccumulator(TASKS).merge(rank0).merge(rank1)
    assert merged.compute() == pytest.approx(EXPECTED)
    # The all_gather_object path: merging gathered state dicts.
    gathered = [json.loads(json.dumps(r.state_dict())) for r in (rank0, rank1)]
    total = MetricAccumulator(TASKS)
    for s in gathered:
        total.merge(s)
    assert total.compute() == pytest.approx(EXPECTED)
    with pytest.raises(ValueError, match="configured as"):
        MetricAccumulator(TASKS).merge(MetricAccumulator({"vox": (["a", "b"], False)}))


def test_accumulator_errors():
    acc = MetricAccumulator(TASKS)
    with pytest.raises(KeyError, match=r"'nope'.*\['hvb', 'unused', 'vox'\]"):
        acc.update("nope", ["a"], ["a"])
    with pytest.raises(ValueError, match=r"2 items but golds has 1"):
        acc.update("vox", ["a", "b"], ["a"])
    with pytest.raises(ValueError, match=r"gold label 'q'"):
        acc.update("vox", ["a"], ["q"])
    assert acc.compute() == {}  # failed updates added nothing
