"""Batch samplers: balanced across datasets, batched by length, sharded across ranks, resumable mid-epoch.

    epoch e ─► per-dataset counts (uniform or temperature-weighted by size)
            ─► seeded draw of samples ─► shuffle ─► mega-batches sorted by length ─► batches ─► shuffle batches
            ─► rank r takes batches r, r + world, ... (every rank ceil(batches / world): a short last round is split
           into one smaller batch per rank, so DDP ranks step together and no sample is dropped)

Each yielded batch is a list of keys ``(dataset index, sample index, epoch)``. Everything is a function of
(seed, epoch), so all ranks agree without communication, and ``state_dict`` (epoch, batches done) is all a
resume needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import torch
from torch.utils.data import Sampler

__all__ = ["BalancedBatchSampler", "ShardedEvalBatchSampler", "dataset_weights"]

Key = tuple[int, int, int]


def dataset_weights(sizes: Sequence[int], mode: str = "uniform", temperature: float = 1.0) -> list[float]:
    """Sampling probability of each dataset.

    Args:
        sizes: Number of samples in each dataset.
        mode: "uniform" (equal share), "temperature" (share ∝ size^(1/T)) or "proportional" (share ∝ size).
        temperature: T for "temperature"; T = 1 is proportional, large T tends to uniform.
    """
    if mode == "uniform":
        raw = [1.0 for _ in sizes]
    elif mode == "proportional":
        raw = [float(n) for n in sizes]
    elif mode == "temperature":
        if temperature <= 0:
            raise ValueError(f"sampling temperature must be > 0, got {temperature}")
        raw = [float(n) ** (1.0 / temperature) for n in sizes]
    else:
        raise ValueError(f"sampling mode must be uniform|temperature|proportional, got {mode!r}")
    total = sum(raw)
    return [r / total for r in raw]


def _counts(total: int, weights: Sequence[float]) -> list[int]:
    """Largest-remainder rounding of ``total * weights``: exact total, deterministic."""
    exact = [total * w for w in weights]
    counts = [math.floor(x) for x in exact]
    order = sorted(range(len(weights)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: total - sum(counts)]:
        counts[i] += 1
    return counts


def _last_round_for_all(batches: list[list[Key]], world: int) -> list[list[Key]]:
    """The batches with a last round of exactly ``world`` batches, so that every rank takes the same number,
    ceil(len / world), and no sample of the epoch is dropped: a last round of fewer batches is split into
    ``world`` smaller ones (a key is repeated only when the round holds fewer keys than ranks)."""
    short = len(batches) % world
    if short == 0:
        return batches
    keys = [k for b in batches[-short:] for k in b]
    keys += keys[: max(0, world - len(keys))]  # at least one key per rank
    cuts = [round(i * len(keys) / world) for i in range(world + 1)]
    return batches[:-short] + [keys[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]


class BalancedBatchSampler(Sampler[list[Key]]):
    """Training batches mixed across datasets.

    Args:
        sizes: Samples per dataset.
        batch_size: Samples per batch (per rank).
        lengths: Optional per-dataset sample lengths (e.g. seconds of audio) for batching by length.
        mode: Dataset weighting, see `dataset_weights`.
        temperature: Temperature for "temperature" weighting.
        epoch_size: Samples drawn per epoch over all ranks (default: the sum of the sizes).
        seed: Seed of all draws.
        rank: This process's rank.
        world_size: Number of processes.
        bucket_batches: Batches per length-sorted mega-batch (1 disables batching by length).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        lengths: Sequence[Sequence[float]] | None = None,
        mode: str = "uniform",
        temperature: float = 1.0,
        epoch_size: int | None = None,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        bucket_batches: int = 50,
    ):
        if batch_size < 1 or not sizes or min(sizes) < 1:
            raise ValueError(f"need batch_size >= 1 and non-empty datasets, got {batch_size}, sizes {list(sizes)}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.sizes, self.batch_size, self.lengths = list(sizes), batch_size, lengths
        self.weights = dataset_weights(self.sizes, mode, temperature)
        self.epoch_size = epoch_size or sum(self.sizes)
        self.seed, self.rank, self.world_size, self.bucket_batches = seed, rank, world_size, bucket_batches
        self.epoch, self.batches_done = 0, 0  # what iterators have handed out (state_dict)
        self._start = (0, 0)  # where every new iterator starts: set by set_epoch, load_state_dict, a finished pass

    def set_epoch(self, epoch: int) -> None:
        """Starts ``epoch``; a resumed position is kept if it belongs to the same epoch."""
        if epoch != self._start[0]:
            self._start = (epoch, 0)
            self.epoch, self.batches_done = epoch, 0

    def _epoch_keys(self, epoch: int) -> list[Key]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        keys: list[Key] = []
        for d, (n, count) in enumerate(zip(self.sizes, _counts(self.epoch_size, self.weights), strict=True)):
            reps = [torch.randperm(n, generator=g) for _ in range(math.ceil(count / n))]
            idx = torch.cat(reps)[:count].tolist() if reps else []
            keys += [(d, i, epoch) for i in idx]
        perm = torch.randperm(len(keys), generator=g).tolist()
        keys = [keys[i] for i in perm]
        if self.lengths is not None and self.bucket_batches > 1:
            span = self.batch_size * self.bucket_batches
            keys = [
                k
                for s in range(0, len(keys), span)
                for k in sorted(keys[s : s + span], key=lambda k: self.lengths[k[0]][k[1]])
            ]
        return keys

    def epoch_batches(self, epoch: int | None = None) -> list[list[Key]]:
        """All of this rank's batches of ``epoch`` (default: the current one)."""
        epoch = self.epoch if epoch is None else epoch
        keys = self._epoch_keys(epoch)
        batches = [keys[s : s + self.batch_size] for s in range(0, len(keys), self.batch_size)]
        g = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        return _last_round_for_all(batches, self.world_size)[self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[Key]]:
        """This epoch's batches from the start position, fixed when the iterator is made: Lightning makes a
        throw-away iterator of each epoch's loader before the one it trains on, and DataLoader workers prefetch
        from both, so what one iterator hands out must not move where the next one starts."""
        epoch, start = self._start
        batches = self.epoch_batches(epoch)
        if start >= len(batches):  # the last pass was stopped right at its end: the next epoch
            epoch, start = epoch + 1, 0
            self._start = (epoch, 0)
            batches = self.epoch_batches(epoch)
        return self._pass(epoch, start, batches)

    def _pass(self, epoch: int, start: int, batches: list[list[Key]]) -> Iterator[list[Key]]:
        for i in range(start, len(batches)):
            self.epoch, self.batches_done = epoch, i + 1
            if i + 1 == len(batches) and self._start == (epoch, start):
                # the last batch handed out: the next iterator takes the next epoch, also when its consumer stops
                # here without exhausting this one (Lightning stops after len() batches)
                self._start = (epoch + 1, 0)
            yield batches[i]
        if self._start == (epoch + 1, 0):
            self.epoch, self.batches_done = epoch + 1, 0

    def __len__(self) -> int:
        return math.ceil(math.ceil(self.epoch_size / self.batch_size) / self.world_size)

    def state_dict(self) -> dict[str, int]:
        """Position to resume from: the epoch and the batches this rank has already taken."""
        return {"epoch": self.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Restores a `state_dict` position: the next iterator starts there."""
        self.epoch, self.batches_done = int(state["epoch"]), int(state["batches_done"])
        self._start = (self.epoch, self.batches_done)


class ShardedEvalBatchSampler(Sampler[list[Key]]):
    """Evaluation batches: every sample exactly once over all ranks, no padding duplicates, sorted by length.

    Args:
        sizes: Samples per dataset.
        batch_size: Samples per batch.
        lengths: Optional per-dataset lengths for batching by length.
        rank: This process's rank.
        world_size: Number of processes.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        batch_size: int,
        lengths: Sequence[Sequence[float]] | None = None,
        rank: int = 0,
        world_size: int = 1,
    ):
        keys = [(d, i, 0) for d, n in enumerate(sizes) for i in range(n)]
        if lengths is not None:
            keys.sort(key=lambda k: (k[0], lengths[k[0]][k[1]]))
        n = len(keys)
        if 0 < n < world_size:
            raise ValueError(
                f"the evaluation split has {n} samples for {world_size} ranks: every rank needs at least one "
                f"(use fewer devices or more validation/test samples)"
            )
        if 0 < math.ceil(n / batch_size) < world_size:
            # fewer full batches than ranks: smaller batches, so that every rank gets one (Lightning needs it)
            cuts = [round(i * n / world_size) for i in range(world_size + 1)]
            batches = [keys[a:b] for a, b in zip(cuts, cuts[1:], strict=False)]
        else:
            batches = [keys[s : s + batch_size] for s in range(0, n, batch_size)]
        self.batches = batches[rank::world_size]

    def __iter__(self) -> Iterator[list[Key]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)
