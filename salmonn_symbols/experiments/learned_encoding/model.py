"""A small LLaMA (transformers) language model whose input embedding is a width-r code up-projected to d.

    ids (B, T) ─► TokenEncoder ─► (B, T, d) ─► LlamaModel (its own embed_tokens replaced) ─► h (B, T, d)
                  full:  E (V, d)                                                          │
                  other: C (V, r) ─► P (r, d)       C trainable (joint) or a fixed buffer  ▼
    logits = h W^T, W = own (V, d) matrix, or tied: W = the encoder's table (E, or C P)  ─► next-token CE

Every arm starts with the same embedding scale: a full table has std ``INIT_STD``; a factorised one has
std(C) = std(P) so that (C P) has std ``INIT_STD`` too, which also gives C and P the same relative step
under Adam.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import nn

__all__ = ["INIT_STD", "EncodingLM", "TokenEncoder", "factor_std"]

INIT_STD = 0.02  # transformers' LLaMA initializer_range


def factor_std(r: int) -> float:
    """The std of C and of P such that (C P) entries have std INIT_STD: r * s^4 = INIT_STD^2."""
    return (INIT_STD**2 / r) ** 0.25


class TokenEncoder(nn.Module):
    """Token ids to model-width vectors, through a full table or a width-r code.

    Args:
        vocab_size: V.
        d_model: d.
        r: Code width; None for the full (V, d) table.
        codes: A fixed (V, r) code table (autoencoder, svd, random arms); None to learn it (joint).
        seed: Seeds the initial values, so arms that share a seed share their initial projection.
    """

    def __init__(
        self, vocab_size: int, d_model: int, r: int | None = None, codes: torch.Tensor | None = None, seed: int = 0
    ):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.r = r
        if r is None:
            self.table = nn.Parameter(torch.randn(vocab_size, d_model, generator=gen) * INIT_STD)
            self.proj = None
            return
        s = factor_std(r)
        self.proj = nn.Parameter(torch.randn(r, d_model, generator=gen) * s)  # (r, d)
        if codes is None:
            self.table = nn.Parameter(torch.randn(vocab_size, r, generator=gen) * s)
        else:
            if tuple(codes.shape) != (vocab_size, r):
                raise ValueError(f"fixed codes have shape {tuple(codes.shape)}, expected {(vocab_size, r)}")
            self.register_buffer("table", codes.float().clone())

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.table[ids]  # (B, T, r) or (B, T, d), fp32
        if self.proj is None:
            return x
        # fp32 like a full table's rows: under bf16 autocast the product would start a bf16 residual stream
        with torch.autocast(device_type=x.device.type, enabled=False):
            return x.float() @ self.proj.float()  # (B, T, d)

    def weight(self) -> torch.Tensor:
        """The effective (V, d) embedding table."""
        return self.table if self.proj is None else self.table @ self.proj

    def sizes(self) -> dict[str, int]:
        """Embedding parameters: stored numbers, trainable ones, and bytes at the stored dtype (fp32)."""
        stored = self.table.numel() + (self.proj.numel() if self.proj is not None else 0)
        trainable = sum(p.numel() for p in self.parameters() if p.requires_grad)
        return {"embed_params": stored, "embed_trainable": trainable, "embed_bytes": 4 * stored}


class EncodingLM(L.LightningModule):
    """Next-token LM for one arm; logs ``train_loss``/``val_loss`` (nats/token); test gives bits per unit.

    Args:
        vocab_size, d_model, n_layers, n_heads, ffn_size, seq_len: The LLaMA config.
        r: Code width (None: full table). codes: Fixed (V, r) codes or None. tied: Output tied to the input.
        unit_len: (V,) units each target token stands for (bytes of a BPE token), for bits per unit.
        lr, warmup_steps, steps, weight_decay: AdamW, linear warm-up, cosine decay to 10% of lr.
        seed: Seeds the encoder's initial values.
    """

    def __init__(
        self,
        vocab_size: int,
        d_model: int,
        n_layers: int,
        n_heads: int,
        ffn_size: int,
        seq_len: int,
        r: int | None = None,
        codes: torch.Tensor | None = None,
        tied: bool = False,
        unit_len: torch.Tensor | None = None,
        lr: float = 1e-3,
        warmup_steps: int = 0,
        steps: int = 100,
        weight_decay: float = 0.0,
        seed: int = 0,
    ):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        config = LlamaConfig(
            vocab_size=vocab_size,
            hidden_size=d_model,
            intermediate_size=ffn_size,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_heads,
            max_position_embeddings=seq_len,
            initializer_range=INIT_STD,
            use_cache=False,
            bos_token_id=None,
            eos_token_id=None,
        )
        config._attn_implementation = "sdpa"
        self.body = LlamaModel(config)
        self.encoder = TokenEncoder(vocab_size, d_model, r, codes, seed)
        self.body.embed_tokens = self.encoder  # the body calls it on input ids
        self.head = None if tied else nn.Linear(d_model, vocab_size, bias=False)
        if self.head is not None:
            nn.init.normal_(self.head.weight, std=INIT_STD)
        units = unit_len if unit_len is not None else torch.ones(vocab_size)
        self.register_buffer("unit_len", units.float(), persistent=False)
        self.opt = {"lr": lr, "warmup": warmup_steps, "steps": steps, "wd": weight_decay}
        self._test_sums = torch.zeros(3, dtype=torch.float64)  # nats, units, tokens

    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.body(input_ids=ids).last_hidden_state  # (B, T, d)
        w = self.head.weight if self.head is not None else self.encoder.weight()  # (V, d)
        return h @ w.to(h.dtype).T  # (B, T, V)

    def _nll(self, batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = batch[:, :-1], batch[:, 1:]  # (B, T), (B, T)
        logits = self.logits(x).float()
        nll = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="none")
        return nll, y.reshape(-1)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        loss = self._nll(batch)[0].mean()
        self.log("train_loss", loss, prog_bar=False)
        return loss

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        self.log("val_loss", self._nll(batch)[0].mean(), prog_bar=False)

    def on_test_epoch_start(self) -> None:
        self._test_sums.zero_()

    def test_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        nll, y = self._nll(batch)
        sums = torch.stack([nll.sum(), self.unit_len[y].sum(), nll.new_tensor(float(y.numel()))])  # on the device
        self._test_sums += sums.double().cpu()

    def test_result(self) -> dict[str, float]:
        """Held-out loss of the last test run: nats per token and bits per unit (byte, base or token)."""
        nats, units, tokens = self._test_sums.tolist()
        return {"test_nats_per_token": nats / tokens, "test_bits": nats / math.log(2) / units, "test_tokens": tokens}

    def configure_optimizers(self):
        o = self.opt
        params = [p for p in self.parameters() if p.requires_grad]
        fused = {"fused": True} if params[0].is_cuda else {}
        opt = torch.optim.AdamW(params, lr=o["lr"], betas=(0.9, 0.95), weight_decay=o["wd"], **fused)

        def factor(step: int) -> float:
            if step < o["warmup"]:
                return (step + 1) / o["warmup"]
            t = min(1.0, (step - o["warmup"]) / max(1, o["steps"] - o["warmup"]))
            return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
