"""Per-block ``torch.compile`` of the speech LLM.

Each transformer block (LLaMA decoder layer, Whisper encoder layer, BEATs layer) is compiled in place with
``nn.Module.compile``: the blocks of one stack share their code, so inductor builds one graph per stack and
reuses it for every layer, parameter names and checkpoints stay as they are, and the Python between blocks
(symbol injection, prompt assembly, the loss) keeps running eagerly. Fusing the norms, activations, rotary
embedding and LoRA dropout into a few kernels removes most of the small-kernel and launch overhead of the step.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model.speech_llm import SpeechLLM

__all__ = ["COMPILE_PARTS", "compile_blocks"]

COMPILE_PARTS = ("llm", "whisper", "beats")


def _blocks(model: SpeechLLM, part: str) -> nn.ModuleList | None:
    if part == "llm":
        return model.llm.get_base_model().get_decoder().layers
    if part == "whisper":
        return model.whisper.layers
    return model.beats.encoder.layers if model.beats is not None else None


def compile_blocks(model: SpeechLLM, parts: tuple[str, ...] = COMPILE_PARTS, dynamic: bool | None = None) -> int:
    """Compiles every transformer block of the chosen parts in place.

    Args:
        model: The speech LLM.
        parts: Any of "llm", "whisper" and "beats".
        dynamic: Passed to ``torch.compile``; None lets the first new batch or sequence length mark that
            dimension dynamic, so length-bucketed batches do not recompile at every new shape.

    Returns:
        The number of blocks compiled.

    Raises:
        ValueError: naming an unknown part.
    """
    unknown = [p for p in parts if p not in COMPILE_PARTS]
    if unknown:
        raise ValueError(f"unknown compile part(s) {unknown}; expected some of {list(COMPILE_PARTS)}")
    # The LLM's blocks also see validation (no grad) and re-scoring shapes: leave room for those variants.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 16)
    n = 0
    for part in parts:
        for block in _blocks(model, part) or ():
            block.compile(dynamic=dynamic)
            n += 1
    return n
