"""Training the adapter: normalised reconstruction MSE plus the frozen LLM's answer cross-entropy.

    questions ─► frozen embeddings (B, L, D) ─► wire codes (+ noise) ─► adapter ─► reconstruction (B, L, D)
        loss = mse_weight * |reconstruction - embeddings|^2 / (D * token variance)          (stage 1's MSE)
             + ce_weight  * CE(frozen LLM(template | reconstruction | template | answer))  (the task)

Only the adapter has parameters that train; the wire is a fixed PCA and the LLM sits outside the module (see
`llm.FrozenLLM`), gradients flowing through it to the reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning as L
import torch

from .adapters import Adapter
from .llm import Encoded, FrozenLLM
from .wire import Wire

__all__ = ["WireModule", "masked_nmse", "question_loader"]


def masked_nmse(recon: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, token_var: float) -> torch.Tensor:
    """Mean squared error over the real tokens of (B, L, D) tensors, in units of the embeddings' variance
    (predicting the mean embedding scores about 1)."""
    err = ((recon.float() - target.float()) ** 2).mean(-1)  # (B, L)
    return err[mask].mean() / token_var


class WireModule(L.LightningModule):
    """The trained adapter of one arm.

    Args:
        wire: The fixed wire (buffers only).
        adapter: The adapter to train.
        llm: The frozen LLM; needed for its embeddings and, when ``ce_weight`` > 0, its answer loss.
        mse_weight, ce_weight: Loss weights.
        noise: Wire noise during training (the level the arm is evaluated at).
        lr, weight_decay, steps: AdamW with 10% warm-up and cosine decay over ``steps``.
    """

    def __init__(
        self,
        wire: Wire,
        adapter: Adapter,
        llm: FrozenLLM,
        mse_weight: float,
        ce_weight: float,
        noise: float,
        lr: float,
        weight_decay: float,
        steps: int,
    ) -> None:
        super().__init__()
        self.wire, self.adapter = wire, adapter
        object.__setattr__(self, "llm", llm)  # not a submodule: never moved, saved or counted by Lightning
        self.mse_weight, self.ce_weight, self.noise = mse_weight, ce_weight, noise
        self.lr, self.weight_decay, self.steps = lr, weight_decay, steps

    def reconstruct(
        self, emb: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """(B, L, D) reconstruction of (B, L, D) message embeddings after the wire and its noise."""
        codes, gmask = self.wire.encode(emb, mask)
        codes = self.wire.add_noise(codes, self.noise, generator)
        return self.adapter(self.wire, codes, gmask, emb.shape[1])

    def losses(self, items: list[Encoded]) -> dict[str, torch.Tensor]:
        """Normalised MSE, answer CE (when weighted) and their weighted sum on a batch of questions."""
        emb, mask = self.llm.message_batch(items)  # (B, L, D), (B, L)
        recon = self.reconstruct(emb, mask)
        out = {"nmse": masked_nmse(recon, emb, mask, self.wire.token_var)}
        loss = self.mse_weight * out["nmse"]
        if self.ce_weight > 0:
            nll, n = self.llm.answer_nll(self.llm.assemble(items, recon, with_answer=True))
            out["ce"] = nll.sum() / n.sum()
            loss = loss + self.ce_weight * out["ce"]
        out["loss"] = loss
        return out

    def training_step(self, items: list[Encoded], batch_idx: int) -> torch.Tensor:
        out = self.losses(items)
        self.log_dict({f"train/{k}": v.detach() for k, v in out.items()}, batch_size=len(items), prog_bar=False)
        return out["loss"]

    def validation_step(self, items: list[Encoded], batch_idx: int) -> None:
        out = self.losses(items)
        self.log_dict({f"val/{k}": v for k, v in out.items()}, batch_size=len(items))

    def transfer_batch_to_device(self, batch: Any, device: torch.device, dataloader_idx: int) -> Any:
        return batch  # lists of token ids; embeddings are made on the LLM's device

    def configure_optimizers(self) -> Any:
        opt = torch.optim.AdamW(self.adapter.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        warm = max(1, self.steps // 10)

        def scale(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warm) / max(1, self.steps - warm))))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, scale)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def question_loader(items: list[Encoded], batch_size: int, seed: int | None) -> torch.utils.data.DataLoader:
    """Batches of questions as lists (shuffled with ``seed``; in order when ``seed`` is None)."""
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    collate: Callable[[list[Encoded]], list[Encoded]] = list
    return torch.utils.data.DataLoader(
        items, batch_size=batch_size, shuffle=seed is not None, generator=gen, collate_fn=collate
    )
