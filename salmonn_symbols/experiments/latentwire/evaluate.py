"""Held-out metrics of one arm: greedy answers (exact match, token F1), answer NLL and reconstruction quality.

test questions ─► message embeddings ─► arm's reconstruction (full / snap / PCA / adapter) ─► frozen LLM
    teacher-forced gold answer ─► NLL per answer token (answer tokens and the end of turn)
    greedy answer ─► exact match and token F1 against the gold span (SQuAD-style normalisation)
reconstruction vs the real embeddings ─► cosine per token, normalised MSE
"""

from __future__ import annotations

import contextlib
import re
import string
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import torch

from .llm import Encoded, FrozenLLM
from .module import masked_nmse

__all__ = ["evaluate_arm", "exact_match", "normalize_answer", "token_f1"]

Reconstruct = Callable[[torch.Tensor, torch.Tensor, torch.Generator], torch.Tensor]
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation to spaces (so "Africa/Cairo" keeps two words), no articles, single spaces."""
    return " ".join(_ARTICLES.sub(" ", _PUNCT.sub(" ", text.lower())).split())


def exact_match(pred: str, gold: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(gold))


def token_f1(pred: str, gold: str) -> float:
    """Harmonic mean of token precision and recall after `normalize_answer`."""
    p, g = normalize_answer(pred).split(), normalize_answer(gold).split()
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    prec, rec = common / len(p), common / len(g)
    return 2 * prec * rec / (prec + rec)


def autocast_for(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """The autocast context of a Lightning precision string, so evaluation computes as training did."""
    if precision.startswith("bf16") and "mixed" in precision:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision.startswith("16") and "mixed" in precision:
        return torch.autocast(device.type, dtype=torch.float16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate_arm(
    llm: FrozenLLM,
    items: list[Encoded],
    reconstruct: Reconstruct,
    token_var: float,
    batch_size: int,
    max_new_tokens: int,
    precision: str = "32-true",
    seed: int = 0,
    n_examples: int = 0,
) -> tuple[dict[str, Any], list[dict[str, str]]]:
    """Held-out metrics of one reconstruction.

    Args:
        llm: The frozen LLM.
        items: Held-out questions.
        reconstruct: ``(emb (B, L, D), mask (B, L), generator) -> (B, L, D)``.
        token_var: The unit of the normalised MSE (`wire.Wire.token_var`).
        batch_size: Questions per forward pass.
        max_new_tokens: Greedy answer length limit.
        precision: Lightning precision string (autocast as in training).
        seed: Seed of the wire noise.
        n_examples: Example generations to return (spread over the question kinds).

    Returns:
        Metrics (em, f1, f1_<set>, nll, cosine, nmse, eval_seconds) and example generations.
    """
    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    preds: list[str] = []
    nll_sum = tokens = cos_sum = nmse_sum = 0.0
    n_tok = 0
    for i in range(0, len(items), batch_size):
        chunk = items[i : i + batch_size]
        emb, mask = llm.message_batch(chunk)  # (B, L, D), (B, L)
        with autocast_for(precision, llm.device):
            recon = reconstruct(emb, mask, gen).float()
            nll, n = llm.answer_nll(llm.assemble(chunk, recon, with_answer=True))
            preds += llm.generate(llm.assemble(chunk, recon, with_answer=False), max_new_tokens)
        nll_sum += nll.sum().item()
        tokens += n.sum().item()
        cos_sum += torch.nn.functional.cosine_similarity(recon, emb, dim=-1)[mask].sum().item()
        nmse_sum += masked_nmse(recon, emb, mask, token_var).item() * mask.sum().item()
        n_tok += int(mask.sum())
    golds = [e.row["answer"] for e in items]
    em = [exact_match(p, g) for p, g in zip(preds, golds, strict=True)]
    f1 = [token_f1(p, g) for p, g in zip(preds, golds, strict=True)]
    out: dict[str, Any] = {"em": _mean(em), "f1": _mean(f1)}
    for s in sorted({e.row["set"] for e in items}):
        out[f"f1_{s}"] = _mean([f for f, e in zip(f1, items, strict=True) if e.row["set"] == s])
    out |= {"nll": nll_sum / tokens, "cosine": cos_sum / n_tok, "nmse": nmse_sum / n_tok}
    out["eval_seconds"] = time.perf_counter() - start
    return out, _examples(items, preds, n_examples)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def _examples(items: list[Encoded], preds: list[str], n: int) -> list[dict[str, str]]:
    """Up to ``n`` generations, one question kind after another, always the same questions for every arm."""
    by_kind: dict[str, list[int]] = {}
    for i, e in enumerate(items):
        by_kind.setdefault(e.row["kind"], []).append(i)
    order = [idx for group in zip(*by_kind.values(), strict=False) for idx in group] if by_kind else []
    return [
        {"question": items[i].row["question"], "gold": items[i].row["answer"], "answer": preds[i]} for i in order[:n]
    ]
