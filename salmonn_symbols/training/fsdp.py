"""FSDP for LLMs too large for one GPU: the frozen LLaMA blocks are sharded, everything that trains stays whole.

    every rank:  Whisper, BEATs, Q-Former, projection        replicated (frozen, small)
                 embeddings, final norm, lm_head             replicated (soft quantization reads the whole table)
                 decoder layer i:  base weights  ── sharded 1/N (FSDP2), all-gathered for its forward and backward
                                   LoRA A / B    ── replicated; gradients averaged by one all-reduce per step
                 symbol MLP                      ── replicated; gradients averaged the same way

The LoRA and MLP parameters are ordinary tensors on every rank, so the phase logic, the per-epoch digests, the
trainable-only checkpoints and resuming work exactly as under DDP. Select it with ``--trainer.strategy symbol_fsdp``
(the name is registered with Lightning when this module is imported).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from lightning.pytorch.strategies import ModelParallelStrategy, Strategy, StrategyRegistry
from torch import nn

from ..model.speech_llm import SpeechLLM

__all__ = ["SymbolFSDPStrategy", "average_gradients", "shard_llm"]


def shard_llm(model: SpeechLLM, mesh) -> int:
    """Shards the base weights of every LLM decoder layer over ``mesh`` with FSDP2, leaving LoRA unsharded.

    Returns:
        The number of layers sharded.
    """
    from torch.distributed.fsdp import fully_shard

    keep = {id(p) for p in model.lora_parameters()} | {id(p) for p in model.symbol_parameters()}
    layers = model.llm.get_base_model().get_decoder().layers
    for layer in layers:
        fully_shard(layer, mesh=mesh, ignored_params={p for p in layer.parameters() if id(p) in keep})
    return len(layers)


def average_gradients(params: list[nn.Parameter]) -> None:
    """Averages the gradients of replicated parameters over all ranks with one flattened all-reduce."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads or not dist.is_initialized() or dist.get_world_size() == 1:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


class SymbolFSDPStrategy(ModelParallelStrategy):
    """Lightning's FSDP2 strategy set up for symbol discovery: one data-parallel dimension over all ranks, and
    checkpoints that hold only the replicated trainable groups, written by rank 0 as one file as under DDP.

    The LightningModule shards the LLM in ``configure_model`` (see `shard_llm`) and averages the trainable
    gradients itself (see `average_gradients`).
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("save_distributed_checkpoint", False)
        super().__init__(**kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size, self._tensor_parallel_size = self.num_processes * self.num_nodes, 1
        super().setup_environment()

    # The trainable groups are plain tensors, identical on every rank: save and load them the way DDP does,
    # before the model is sharded, instead of gathering the frozen shards only to drop them.
    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return False

    @property
    def lightning_restore_optimizer(self) -> bool:
        return True

    def lightning_module_state_dict(self) -> dict[str, Any]:
        return {}  # replaced by the module's trainable-only state in on_save_checkpoint

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        return optimizer.state_dict()

    def load_checkpoint(self, checkpoint_path) -> dict[str, Any]:
        return Strategy.load_checkpoint(self, checkpoint_path)

    def load_model_state_dict(self, checkpoint, strict: bool = True) -> None:
        Strategy.load_model_state_dict(self, checkpoint, strict=strict)

    def load_optimizer_state_dict(self, checkpoint) -> None:
        Strategy.load_optimizer_state_dict(self, checkpoint)


if "symbol_fsdp" not in StrategyRegistry:
    StrategyRegistry.register(
        "symbol_fsdp", SymbolFSDPStrategy, description="FSDP2 over the LLM blocks, trainable groups replicated"
    )
