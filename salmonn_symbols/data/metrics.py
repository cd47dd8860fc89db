"""Pure-Python metrics shared by training-time validation and offline evaluation.

Predictions arrive already mapped from symbols back to the original labels; a prediction that could not be mapped
is ``None``. Scores reproduce the original research evaluation (scikit-learn ``f1_score(average="macro")``, see
``notes/salmonn_reference.md`` §4.7) without depending on scikit-learn:

* single-label tasks: accuracy and macro-F1 where every unmappable prediction becomes the extra class `INVALID`;
* multi-label tasks: exact-set accuracy and macro-F1 over the binarised label columns.

`MetricAccumulator` collects per-dataset predictions over a validation epoch and keeps them as plain lists, so
distributed ranks can exchange them with ``torch.distributed.all_gather_object`` and `MetricAccumulator.merge`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from typing import Any

__all__ = [
    "INVALID",
    "MetricAccumulator",
    "accuracy",
    "aggregate",
    "confusion",
    "count_invalid_multilabel",
    "macro_f1",
    "multilabel_macro_f1",
    "per_class_f1",
    "score",
]

INVALID = "<invalid>"


def _check_lengths(preds: Sequence[Any], golds: Sequence[Any]) -> None:
    if len(preds) != len(golds):
        raise ValueError(f"preds has {len(preds)} items but golds has {len(golds)}")
    if not golds:
        raise ValueError("no samples: preds and golds are empty")


def _label_set(labels: Sequence[str]) -> set[str]:
    if INVALID in labels:
        raise ValueError(f"{INVALID!r} is reserved for invalid predictions and cannot be a label")
    return set(labels)


def _check_golds(golds: Sequence[str], label_set: set[str], labels: Sequence[str]) -> None:
    # Gold labels are validated when manifests load, so an unknown one here is a programming error.
    for g in golds:
        if g not in label_set:
            raise ValueError(f"gold label {g!r} is not in labels {list(labels)}")


def _as_set(x: Collection[str] | None, what: str) -> set[str] | None:
    # A bare string is a Collection[str] too; iterating its characters would silently produce nonsense.
    if isinstance(x, str):
        raise TypeError(f"multi-label {what} must be collections of labels, got the string {x!r}")
    return None if x is None else set(x)


def _gold_set(g: Collection[str]) -> set[str]:
    s = _as_set(g, "golds")
    if s is None:
        raise TypeError("multi-label golds must be collections of labels, got None")
    return s


def _f1(tp: int, fp: int, fn: int) -> float:
    # 2TP / (2TP + FP + FN) equals 2PR / (P + R) whenever P + R > 0, and is 0 exactly when P + R = 0 or when
    # TP = FP = FN = 0 (scikit-learn with zero_division=0). Integer counts avoid rounding in P and R.
    denom = 2 * tp + fp + fn
    return 2 * tp / denom if denom else 0.0


def accuracy(preds: Sequence[str | None], golds: Sequence[str]) -> float:
    """Fraction of predictions equal to the gold label; ``None`` or out-of-set predictions are simply wrong.

    Raises:
        ValueError: If the lengths differ (the message names both) or there are no samples.
    """
    _check_lengths(preds, golds)
    return sum(p == g for p, g in zip(preds, golds, strict=True)) / len(golds)


def per_class_f1(preds: Sequence[str | None], golds: Sequence[str], labels: Sequence[str]) -> dict[str, float]:
    """Per-class F1 of a single-label task, over the classes present in the data.

    Predictions that are ``None`` or not in ``labels`` become the class `INVALID`. The classes are those that occur
    in ``golds`` or in the mapped predictions, in sorted order (scikit-learn's inferred ``unique_labels``); a label
    that occurs in neither is absent. F1 = 2PR/(P+R), and 0 when P+R = 0.

    Raises:
        ValueError: On length mismatch, no samples, a gold label outside ``labels``, or `INVALID` in ``labels``.
    """
    _check_lengths(preds, golds)
    label_set = _label_set(labels)
    _check_golds(golds, label_set, labels)
    mapped = [p if p in label_set else INVALID for p in preds]
    tp: dict[str, int] = {}
    fp: dict[str, int] = {}
    fn: dict[str, int] = {}
    for p, g in zip(mapped, golds, strict=True):
        if p == g:
            tp[g] = tp.get(g, 0) + 1
        else:
            fp[p] = fp.get(p, 0) + 1
            fn[g] = fn.get(g, 0) + 1
    classes = sorted(set(golds) | set(mapped))
    return {c: _f1(tp.get(c, 0), fp.get(c, 0), fn.get(c, 0)) for c in classes}


def macro_f1(preds: Sequence[str | None], golds: Sequence[str], labels: Sequence[str]) -> float:
    """Macro-F1 of a single-label task with invalid predictions as an extra class.

    Reproduces the original evaluation, i.e. scikit-learn's
    ``f1_score(y_true, y_pred, average="macro", zero_division=0)`` with labels inferred from the data:
    predictions that are ``None`` or not in ``labels`` are replaced by `INVALID`; the unweighted mean is taken over
    every class that appears in ``golds`` or in the mapped predictions. Consequences:

    * an invalid prediction adds the class `INVALID`, whose F1 is always 0 (it is never gold), so it both lowers
      the recall of the gold class and adds a zero term to the average;
    * a label never gold but predicted enters the average with F1 = 0;
    * a label neither gold nor predicted is left out (it does not count as 0).

    Args:
        preds: Predicted labels, ``None`` where a prediction could not be mapped back.
        golds: Gold labels, all in ``labels``.
        labels: The task's label set.

    Returns:
        The macro-F1 in [0, 1].

    Raises:
        ValueError: On length mismatch, no samples, a gold label outside ``labels``, or `INVALID` in ``labels``.
    """
    f1s = per_class_f1(preds, golds, labels)
    return sum(f1s.values()) / len(f1s)


def count_invalid_multilabel(preds: Sequence[Collection[str] | None], labels: Sequence[str]) -> int:
    """Number of multi-label predictions that are ``None`` or contain at least one label outside ``labels``."""
    label_set = _label_set(labels)
    sets = [_as_set(p, "predictions") for p in preds]
    return sum(p is None or not p <= label_set for p in sets)


def multilabel_macro_f1(
    preds: Sequence[Collection[str] | None], golds: Sequence[Collection[str]], labels: Sequence[str]
) -> float:
    """Macro-F1 over the binarised label columns of a multi-label task.

    Each sample is binarised over ``labels`` (one column per label, the original MultiLabelBinarizer step);
    predicted labels outside ``labels`` are dropped (count them with `count_invalid_multilabel`) and ``None``
    becomes the empty set. The result equals scikit-learn's ``f1_score(Y_true, Y_pred, average="macro",
    zero_division=0)`` over all columns: a label that is never true nor predicted has TP = FP = FN = 0 and
    contributes F1 = 0 to the mean.

    Raises:
        ValueError: On length mismatch, no samples, a gold label outside ``labels``, or `INVALID` in ``labels``.
        TypeError: If a prediction or gold is a bare string instead of a collection of labels.
    """
    _check_lengths(preds, golds)
    label_set = _label_set(labels)
    gold_sets = [_gold_set(g) for g in golds]
    for g in gold_sets:
        _check_golds(sorted(g), label_set, labels)
    pred_sets = [(_as_set(p, "predictions") or set()) & label_set for p in preds]
    tp: Counter[str] = Counter()
    fp: Counter[str] = Counter()
    fn: Counter[str] = Counter()
    for p, g in zip(pred_sets, gold_sets, strict=True):
        tp.update(p & g)
        fp.update(p - g)
        fn.update(g - p)
    # Every column counts, including labels never seen (they score 0, as in scikit-learn with zero_division=0).
    return sum(_f1(tp[lab], fp[lab], fn[lab]) for lab in labels) / len(labels)


def confusion(preds: Sequence[str | None], golds: Sequence[str], labels: Sequence[str]) -> dict[str, dict[str, int]]:
    """Single-label confusion counts ``{gold: {predicted: count}}``.

    Rows are all ``labels``; columns are all ``labels`` plus `INVALID` (for ``None`` and out-of-set predictions),
    zero-filled so the table has a fixed shape.

    Raises:
        ValueError: On length mismatch, no samples, a gold label outside ``labels``, or `INVALID` in ``labels``.
    """
    _check_lengths(preds, golds)
    label_set = _label_set(labels)
    _check_golds(golds, label_set, labels)
    table = {g: dict.fromkeys([*labels, INVALID], 0) for g in labels}
    for p, g in zip(preds, golds, strict=True):
        table[g][p if p in label_set else INVALID] += 1
    return table


def score(preds: Sequence[Any], golds: Sequence[Any], labels: Sequence[str], multi_label: bool) -> dict[str, float]:
    """Scores of one dataset: ``{"acc", "f1", "invalid_rate"}``.

    Single-label: `accuracy`, `macro_f1`, and the fraction of predictions that are ``None`` or out of set.
    Multi-label: exact-set accuracy (the raw predicted set, out-of-set labels included, must equal the gold set;
    ``None`` is wrong), `multilabel_macro_f1`, and the fraction of samples counted by `count_invalid_multilabel`.
    """
    if multi_label:
        f1 = multilabel_macro_f1(preds, golds, labels)  # validates lengths, golds and types first
        acc = sum(p is not None and set(p) == set(g) for p, g in zip(preds, golds, strict=True)) / len(golds)
        return {"acc": acc, "f1": f1, "invalid_rate": count_invalid_multilabel(preds, labels) / len(golds)}
    f1 = macro_f1(preds, golds, labels)
    label_set = set(labels)
    invalid = sum(p not in label_set for p in preds)
    return {"acc": accuracy(preds, golds), "f1": f1, "invalid_rate": invalid / len(golds)}


def aggregate(per_dataset: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Flatten per-dataset scores to ``"<dataset>/<metric>"`` keys plus unweighted means ``"mean/<metric>"``.

    A ``mean/`` key is produced for every metric present in all datasets (so ``mean/acc``, ``mean/f1`` and
    ``mean/invalid_rate`` for `score` outputs); each dataset counts once regardless of its size. Keys are meant to
    be logged as ``val/<key>``. An empty mapping gives an empty dict.

    Raises:
        ValueError: If a dataset is named ``"mean"``, which would collide with the means.
    """
    if "mean" in per_dataset:
        raise ValueError("a dataset named 'mean' would collide with the aggregated 'mean/<metric>' keys")
    out = {f"{ds}/{k}": float(v) for ds, scores in per_dataset.items() for k, v in scores.items()}
    if per_dataset:
        common = [k for k in next(iter(per_dataset.values())) if all(k in s for s in per_dataset.values())]
        for k in common:
            out[f"mean/{k}"] = sum(float(s[k]) for s in per_dataset.values()) / len(per_dataset)
    return out


class MetricAccumulator:
    """Collects predictions per dataset over an epoch and scores them with `score` and `aggregate`.

    Args:
        tasks: ``{dataset: (labels, multi_label)}``.

    The state is plain Python (lists of strings, ``None`` and sorted lists of strings), so on several ranks each
    rank updates its own accumulator and, at epoch end::

        states = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(states, acc.state_dict())
        total = MetricAccumulator(tasks)
        for s in states:
            total.merge(s)
        metrics = total.compute()

    Note that a ``DistributedSampler`` pads the last batch with repeated samples, which are then counted twice.
    """

    def __init__(self, tasks: Mapping[str, tuple[Sequence[str], bool]]) -> None:
        self.tasks = {ds: (list(labels), bool(multi)) for ds, (labels, multi) in tasks.items()}
        for labels, _ in self.tasks.values():
            _label_set(labels)
        self.reset()

    def _task(self, dataset: str) -> tuple[list[str], bool]:
        if dataset not in self.tasks:
            raise KeyError(f"unknown dataset {dataset!r}; configured datasets: {sorted(self.tasks)}")
        return self.tasks[dataset]

    def reset(self) -> None:
        """Forget all collected predictions."""
        self.preds: dict[str, list[Any]] = {ds: [] for ds in self.tasks}
        self.golds: dict[str, list[Any]] = {ds: [] for ds in self.tasks}

    def update(self, dataset: str, preds: Sequence[Any], golds: Sequence[Any]) -> None:
        """Add one batch of mapped predictions and gold labels of ``dataset``.

        Raises:
            KeyError: If ``dataset`` is not configured.
            ValueError: On length mismatch or a gold label outside the dataset's labels (checked now, not at
                `compute`, so the error points at the offending batch).
        """
        labels, multi = self._task(dataset)
        if len(preds) != len(golds):
            raise ValueError(f"preds has {len(preds)} items but golds has {len(golds)}")
        if not golds:
            return
        if multi:
            p_norm = [None if (s := _as_set(p, "predictions")) is None else sorted(s) for p in preds]
            g_norm = [sorted(_gold_set(g)) for g in golds]
            for g in g_norm:
                _check_golds(g, set(labels), labels)
        else:
            p_norm, g_norm = list(preds), list(golds)
            _check_golds(g_norm, set(labels), labels)
        self.preds[dataset].extend(p_norm)
        self.golds[dataset].extend(g_norm)

    def compute(self) -> dict[str, float]:
        """Aggregated scores of all datasets that received at least one sample (others are left out)."""
        per_dataset = {
            ds: score(self.preds[ds], self.golds[ds], labels, multi)
            for ds, (labels, multi) in self.tasks.items()
            if self.golds[ds]
        }
        return aggregate(per_dataset)

    def state_dict(self) -> dict[str, dict[str, list[Any]]]:
        """Plain-Python copy of the collected predictions: ``{"preds": {ds: [...]}, "golds": {ds: [...]}}``."""
        return {
            "preds": {ds: [list(p) if isinstance(p, list) else p for p in v] for ds, v in self.preds.items()},
            "golds": {ds: [list(g) if isinstance(g, list) else g for g in v] for ds, v in self.golds.items()},
        }

    def load_state_dict(self, state: Mapping[str, Mapping[str, Sequence[Any]]]) -> None:
        """Replace the collected predictions with those of ``state`` (from `state_dict`)."""
        self.reset()
        self.merge(state)

    def merge(self, other: MetricAccumulator | Mapping[str, Mapping[str, Sequence[Any]]]) -> MetricAccumulator:
        """Append the predictions of another accumulator or of a `state_dict` (e.g. from another rank).

        Returns:
            ``self``, for chaining.

        Raises:
            KeyError: If ``other`` holds a dataset that is not configured here.
            ValueError: If ``other`` is an accumulator configured with different labels for a dataset.
        """
        if isinstance(other, MetricAccumulator):
            for ds, task in other.tasks.items():
                if ds in self.tasks and self.tasks[ds] != task:
                    raise ValueError(f"dataset {ds!r} is configured as {task} there but {self.tasks[ds]} here")
            other = other.state_dict()
        for ds in other["golds"]:
            self.update(ds, other["preds"][ds], other["golds"][ds])
        return self
