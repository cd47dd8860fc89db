"""Training the learned projections: a LightningModule over the train part's vectors only.

train vectors (Nt, D) ─► exact top-k neighbours within the train part (Nt, k)
BatchSampler (seeded, endless) ─► index batches
    "infonce": anchors + one positive each (a class mate when there are labels, else one of the anchor's
               top-positive_k neighbours); every other positive in the batch is a negative
    "rank":    anchors + rank_per_anchor of each anchor's top-k neighbours; the loss is
               KL( softmax(full cosines / τ_t) ‖ softmax(projected cosines · s) ) per anchor over the batch,
               so the projection keeps the full model's neighbour order (s is learned per head)
ProjectionTrainer: several independent heads (one per output size) trained side by side on the same
batches; their losses add, their parameters are disjoint, so each trains as it would alone.
"""

from __future__ import annotations

import logging
import math
import time
import warnings

import lightning as L
import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, IterableDataset

__all__ = ["BatchSampler", "ProjectionTrainer", "fit_heads"]


class BatchSampler(IterableDataset):
    """Endless batches of row indices into the train vectors.

    Args:
        neighbours: (Nt, k) int64 exact neighbours of each train row within the train rows.
        labels: (Nt,) class ids, or None.
        loss: "infonce" or "rank".
        batch_size: Anchors per batch.
        positive_k: InfoNCE positives are drawn from the first ``positive_k`` neighbours (without labels).
        rank_per_anchor: Neighbours drawn per anchor for the rank loss.
        seed: Seed of the draws.
    """

    def __init__(
        self, neighbours, labels, loss: str, batch_size: int, positive_k: int, rank_per_anchor: int, seed: int
    ):
        self.neighbours = torch.as_tensor(neighbours).cpu()
        self.labels = None if labels is None else torch.as_tensor(labels)
        self.loss, self.batch_size, self.seed = loss, batch_size, seed
        self.positive_k = min(positive_k, self.neighbours.shape[1])
        self.rank_per_anchor = min(rank_per_anchor, self.neighbours.shape[1])
        if self.labels is not None:  # rows grouped by class, for drawing a class mate in O(1)
            self.by_class = torch.argsort(self.labels, stable=True)
            counts = torch.bincount(self.labels)
            self.class_start = torch.cumsum(counts, 0) - counts
            self.class_count = counts

    def _class_mates(self, anchors: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        y = self.labels[anchors]
        offset = (torch.rand(len(anchors), generator=g) * self.class_count[y]).long()
        return self.by_class[self.class_start[y] + offset]

    def __iter__(self):
        g = torch.Generator().manual_seed(self.seed)
        n = len(self.neighbours)
        while True:
            anchors = torch.randint(0, n, (self.batch_size,), generator=g)
            if self.loss == "infonce":
                if self.labels is not None:
                    positives = self._class_mates(anchors, g)  # itself, with probability 1 / class size
                else:
                    pick = torch.randint(0, self.positive_k, (self.batch_size,), generator=g)
                    positives = self.neighbours[anchors, pick]
                yield {"anchors": anchors, "others": positives}
            else:
                pick = torch.rand(self.batch_size, self.neighbours.shape[1], generator=g).argsort(1)
                near = self.neighbours[anchors[:, None], pick[:, : self.rank_per_anchor]]  # (B, r)
                yield {"anchors": anchors, "others": torch.cat([anchors, near.reshape(-1)])}


def info_nce(za: torch.Tensor, zp: torch.Tensor, temperature: float) -> torch.Tensor:
    """Symmetric InfoNCE with in-batch negatives; za, zp: (B, m) unit rows, row i of each a positive pair."""
    logits = za @ zp.T / temperature  # (B, B)
    target = torch.arange(len(za), device=za.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


def rank_distillation(
    teacher: torch.Tensor,
    student: torch.Tensor,
    self_mask: torch.Tensor,
    teacher_temperature: float,
    scale: torch.Tensor,
) -> torch.Tensor:
    """KL from the full-precision neighbour distribution to the projected one, per anchor.

    Args:
        teacher: (B, C) full-precision cosines of each anchor to the candidates.
        student: (B, C) projected cosines.
        self_mask: (B, C) true where the candidate is the anchor itself (left out).
        teacher_temperature: τ_t; small values weigh the top of the ranking.
        scale: Learned inverse temperature of the student.
    """
    # a large finite logit rather than -inf keeps 0·log 0 out of the sum (no NaN in values or gradients)
    t = (teacher / teacher_temperature).masked_fill(self_mask, -1e4)
    s = (student * scale).masked_fill(self_mask, -1e4)
    log_p = F.log_softmax(t, dim=1)
    return (log_p.exp() * (log_p - F.log_softmax(s, dim=1))).sum(1).mean()


class ProjectionTrainer(L.LightningModule):
    """Trains independent projection heads on the same batches (AdamW, cosine schedule).

    Args:
        heads: Name -> projection module (D -> m).
        vectors: (Nt, D) train vectors; kept on the module's device.
        loss: "infonce" or "rank".
        steps: Optimiser steps (for the schedule).
        lr: Peak learning rate.
        weight_decay: AdamW weight decay.
        temperature: InfoNCE temperature, and the initial student temperature of the rank loss.
        teacher_temperature: τ_t of the rank loss.
    """

    def __init__(
        self,
        heads: dict[str, nn.Module],
        vectors: torch.Tensor,
        loss: str,
        steps: int,
        lr: float,
        weight_decay: float,
        temperature: float,
        teacher_temperature: float,
    ):
        super().__init__()
        if loss not in ("infonce", "rank"):
            raise ValueError(f"loss must be 'infonce' or 'rank', got {loss!r}")
        self.heads = nn.ModuleDict(heads)
        self.register_buffer("vectors", vectors, persistent=False)
        self.log_scale = nn.ParameterDict(
            {name: nn.Parameter(torch.tensor(math.log(1.0 / temperature))) for name in heads}
        )
        self.loss_name, self.steps, self.lr, self.weight_decay = loss, steps, lr, weight_decay
        self.temperature, self.teacher_temperature = temperature, teacher_temperature

    def _head_loss(self, name: str, anchors: torch.Tensor, others: torch.Tensor, batch: dict) -> torch.Tensor:
        head = self.heads[name]
        za, zo = head(anchors), head(others)  # (B, m), (C, m)
        if self.loss_name == "infonce":
            return info_nce(za, zo, self.temperature)
        self_mask = batch["anchors"][:, None] == batch["others"][None, :]  # (B, C)
        teacher = anchors @ others.T  # (B, C)
        scale = self.log_scale[name].exp().clamp(max=100.0)
        return rank_distillation(teacher, za @ zo.T, self_mask, self.teacher_temperature, scale)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        anchors, others = self.vectors[batch["anchors"]], self.vectors[batch["others"]]  # (B, D), (C, D)
        losses = {name: self._head_loss(name, anchors, others, batch) for name in self.heads}
        total = sum(losses.values())
        self.log("train/loss", total / len(losses), prog_bar=False)
        for name, value in losses.items():
            self.log(f"train/loss_{name}", value)
        return total

    def configure_optimizers(self):
        params = list(self.heads.parameters())
        groups = [{"params": params, "weight_decay": self.weight_decay}]
        if self.loss_name == "rank":
            groups.append({"params": list(self.log_scale.parameters()), "weight_decay": 0.0})
        opt = torch.optim.AdamW(groups, lr=self.lr)
        warmup = max(1, self.steps // 20)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / warmup
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, self.steps - warmup))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fit_heads(
    heads: dict[str, nn.Module],
    vectors: torch.Tensor,
    neighbours: torch.Tensor,
    labels: np.ndarray | None,
    loss: str,
    cfg,
    seed: int,
    accelerator: str,
    loggers: list,
) -> tuple[dict[str, nn.Module], float]:
    """Trains ``heads`` on the train vectors and returns them on the CPU in eval mode, with the seconds taken.

    Args:
        heads: Name -> untrained projection.
        vectors: (Nt, D) train vectors.
        neighbours: (Nt, k) their exact neighbours within the train part.
        labels: (Nt,) class ids or None.
        loss: "infonce" or "rank".
        cfg: The experiment config (steps, batch_size, lr, weight_decay, temperature, teacher_temperature,
            positive_k, rank_per_anchor).
        seed: Seed of the batch draws.
        accelerator: Lightning accelerator ("cpu" or "gpu").
        loggers: Lightning loggers (CSV, W&B).
    """
    module = ProjectionTrainer(
        heads, vectors, loss, cfg.steps, cfg.lr, cfg.weight_decay, cfg.temperature, cfg.teacher_temperature
    )
    sampler = BatchSampler(neighbours, labels, loss, cfg.batch_size, cfg.positive_k, cfg.rank_per_anchor, seed)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)  # per-fit banners
    trainer = L.Trainer(
        max_steps=cfg.steps,
        accelerator=accelerator,
        devices=1,
        logger=loggers,
        log_every_n_steps=max(1, cfg.steps // 50),
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*LeafSpec.*")  # a deprecation inside Lightning itself
        trainer.fit(module, DataLoader(sampler, batch_size=None))
    seconds = time.perf_counter() - start
    return {name: head.cpu().eval() for name, head in module.heads.items()}, seconds
