"""The task loss of candidate symbols on held-out samples: the `Scorer` of discovery's verified search.

    pool      per dataset holding the label: up to ``samples_per_label`` validation samples of each of its labels,
              split alternately into a *search* and a *confirm* half; speech encoded once, reused for every word
    losses    every word w put in place of label c's symbol (instruction, few-shot outputs, target), per sample,
              with ce(w, x) = −log p(w + EOS | x) / tokens:
                contrastive (default, single-label datasets): −(q(w | x) − q(w | x')) for each of c's samples x,
                  paired with a sample x' of another label (round-robin over the labels), q = exp(−ce) the
                  per-token probability of saying w: how much more the model says w for c's audio than for
                  other audio. A word the model says whatever the audio (a language-model prior) gains nothing,
                  a word it says for no audio gains nothing either (a difference of log-probabilities would
                  reward a word merely for being even less likely elsewhere); only a word tied to c's audio
                  lowers it. It does not depend on the other labels' symbols, so labels are searched one at a
                  time. It lies in [-1, 1].
                closed_set: logsumexp over the dataset's labels of log p(symbol + EOS | x) minus the gold label's,
                  on every sample (what closed-set accuracy measures), the other labels' current symbols fixed;
                  couples every label's choice to the others'
                generative (and always for multi-label datasets): the target cross-entropy on c's own samples
    proposals likelihood: at the symbol's first position, the mean probability of every token on c's samples
                  minus that on the other labels' samples; at a later position, its mean probability on c's
                  samples after the word's earlier tokens (a continuation follows its start, not the audio)
              gradient: −g·(v − e) for every token v, g = ∂loss/∂e at the symbol's p-th token embedding e on c's
                  samples (HotFlip / AutoPrompt)

Every word, the current symbol included, is scored with its tokens' own embeddings (symbol mode "raw"): that is
what the symbol will be after discovery, where the MLP starts again from the identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.dataset import SpeechCollator, SpeechDataset
from ..data.prompt import PromptBuilder
from ..data.transforms import PromptTransform
from ..model.candidates import pack_candidates
from ..model.speech_llm import PromptState, SpeechLLM
from ..symbols.book import SymbolBook

__all__ = ["LOSSES", "TaskLossScorer"]

LOSSES = ("contrastive", "closed_set", "generative")

_KEYS = ("prefix_ids", "text_ids", "text_mask", "labels", "prompt_lengths")
_PAD = {"text_ids": 0, "text_mask": 0, "labels": -100}


@dataclass
class _Pool:
    """The held-out samples of one dataset."""

    name: str
    labels: list[str]
    multi_label: bool
    items: list[dict]
    golds: list[str]
    halves: list[str]
    speech: Tensor | None = None

    def rows(self, half: str, label: str | None = None) -> list[int]:
        return [
            i for i, (h, g) in enumerate(zip(self.halves, self.golds, strict=True)) if h == half and label in (None, g)
        ]


def _concat(batches: list[dict]) -> dict:
    """Rows of several packed batches, the text right-padded to the longest."""
    L = max(b["text_ids"].shape[1] for b in batches)
    out = {k: torch.cat([F.pad(b[k], (0, L - b[k].shape[1]), value=_PAD[k]) for b in batches]) for k in _PAD}
    out |= {k: torch.cat([b[k] for b in batches]) for k in ("prefix_ids", "prompt_lengths")}
    return out | {"target_len": max(b["target_len"] for b in batches), "max_wav_len": batches[0].get("max_wav_len")}


class TaskLossScorer:
    """Task losses and proposals for `salmonn_symbols.symbols.search`.

    Args:
        model: The speech LLM (unwrapped; under FSDP every rank runs it in step).
        dataset: Held-out samples (the validation split).
        transform: The training transform (tasks, few-shot pool, seed); its book is not used.
        prompts: Prompt tokenizer.
        book: The current symbols.
        samples_per_label: Held-out samples per label, half for the search and half for the confirmation.
        batch_rows: Sequences per forward pass.
        loss: "contrastive", "closed_set" or "generative" (see above; multi-label datasets always use the
            generative loss).
    """

    def __init__(
        self,
        model: SpeechLLM,
        dataset: SpeechDataset,
        transform: PromptTransform,
        prompts: PromptBuilder,
        book: SymbolBook,
        samples_per_label: int = 32,
        batch_rows: int = 64,
        loss: str = "contrastive",
    ):
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.loss = loss
        self.model, self.dataset, self.transform, self.prompts = model, dataset, transform, prompts
        self.book, self.samples_per_label, self.batch_rows = book, samples_per_label, batch_rows
        self._pools: dict[int, _Pool] = {}
        self._current: dict[tuple[int, str], Tensor] = {}  # (pool, half) -> scores of the current symbols (N, K)
        self._probes: dict[tuple[str, tuple[int, ...]], tuple[list[Tensor], list[Tensor]]] = {}
        self._prompt_states: dict[int, PromptState] = {}  # pool -> its search half's prompts, run once

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    # --------------------------------------------------------------------------------------------- samples
    def _pool(self, d: int) -> _Pool:
        if d not in self._pools:
            group, task = self.dataset.samples[d], None
            if self.dataset.tasks is not None:
                task = self.dataset.tasks[d]
            labels = list(task.labels) if task is not None else sorted({g for s in group for g in s.labels})
            items, golds, halves = [], [], []
            for lab in labels:
                keys = [(d, i, 0) for i, s in enumerate(group) if lab in s.labels][: self.samples_per_label]
                for j, it in enumerate(it for it in (self.dataset[k] for k in keys) if "skipped" not in it):
                    items.append(it)
                    golds.append(lab)
                    halves.append("search" if j % 2 == 0 else "confirm")
            self._pools[d] = _Pool(
                task.name if task else str(d), labels, bool(task and task.multi_label), items, golds, halves
            )
        return self._pools[d]

    def _pools_of(self, label: str) -> list[_Pool]:
        pools = [self._pool(d) for d in range(len(self.dataset.samples))]
        return [p for p in pools if label in p.labels]

    @torch.no_grad()
    def _speech(self, pool: _Pool) -> Tensor:
        if pool.speech is None:
            chunks = []
            for s in range(0, len(pool.items), self.batch_rows):
                part = SpeechCollator(self.prompts, self.transform)(pool.items[s : s + self.batch_rows])
                wav, lengths = part["wav"].to(self.device), part["wav_lengths"].to(self.device)
                with _eval(self.model):  # discovery runs in training mode: no Q-Former dropout in what it scores
                    chunks.append(self.model.encode_speech(wav, lengths))
            pool.speech = torch.cat(chunks)  # (N, S, H)
        return pool.speech

    def _prompts(self, pool: _Pool, rows: list[int], book: SymbolBook) -> dict:
        batch = SpeechCollator(self.prompts, self.transform.with_book(book))([pool.items[i] for i in rows])
        return {
            "prefix_ids": batch["prefix_ids"],
            "text_ids": batch["prompt_text_ids"],
            "text_mask": batch["prompt_text_mask"],
            "max_wav_len": max(int(pool.items[i]["wav"].numel()) for i in rows),
        }

    def _trial(self, label: str, word: str) -> SymbolBook | None:
        try:
            return SymbolBook(labels=self.book.labels, mapping={**self.book.mapping, label: word})
        except ValueError:  # another label's symbol
            return None

    # ------------------------------------------------------------------------------------------- the model
    @torch.no_grad()
    def _run(self, packed: list[dict], speech: Tensor, per_row: str) -> Tensor:
        """Forward over packed rows (each with its speech row); per row the summed target log-probability
        (``per_row="logp"``) or the mean target cross-entropy ("ce")."""
        batch, out = _concat(packed), []
        with _eval(self.model):
            for s in range(0, speech.shape[0], self.batch_rows):
                part = {k: v[s : s + self.batch_rows].to(self.device) for k, v in batch.items() if torch.is_tensor(v)}
                part |= {"target_len": batch["target_len"], "max_wav_len": batch["max_wav_len"]}
                res = self.model(part, symbol_mode="raw", speech=speech[s : s + self.batch_rows])
                logp = res.logits.float().log_softmax(-1)
                tok = logp.gather(-1, res.labels.clamp_min(0)[..., None])[..., 0] * (res.labels != -100)  # (b, W)
                n = (res.labels != -100).sum(1).clamp_min(1)
                out.append((tok.sum(1) if per_row == "logp" else -tok.sum(1) / n).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def _after_speech(self, packed: list[dict], speech: Tensor, per_row: str) -> Tensor:
        """`_run`'s per-row score (``per_row``) of every row of C packed batches over the same n clips, (C, n).
        Only the text differs between the batches (each word changes the options list and the answer), so each
        clip's [prefix ‖ speech] runs once (`SpeechLLM.encode_head`) and only the C texts run after it."""
        if not self.model.keeps_prompts:
            return self._run(packed, speech.repeat(len(packed), 1, 1), per_row).view(len(packed), -1)
        out = torch.empty(len(packed), speech.shape[0])
        with _eval(self.model):
            for s in range(0, speech.shape[0], self.batch_rows):
                e = min(s + self.batch_rows, speech.shape[0])
                head = {"prefix_ids": packed[0]["prefix_ids"][s:e].to(self.device)}
                state = self.model.encode_head(head | {"max_wav_len": packed[0]["max_wav_len"]}, speech[s:e])
                for c, batch in enumerate(packed):
                    text = {k: batch[k][s:e].to(self.device) for k in ("text_ids", "text_mask", "labels")}
                    logp = self.model.score_text(state, text).float()  # (b,) summed over the target tokens
                    if per_row == "ce":
                        logp = -logp / (text["labels"] != -100).sum(1).clamp_min(1)
                    out[c, s:e] = logp.cpu()
        return out

    def _current_scores(self, pool: _Pool, half: str) -> Tensor:
        """log p(symbol + EOS | x) of every label's current symbol for every sample of the half, (N, K)."""
        key = (id(pool), half)
        if key not in self._current:
            rows = pool.rows(half)
            prompt = self._prompts(pool, rows, self.book)
            cands = [self.prompts.target_ids(self.book.symbol_for(lab)) for lab in pool.labels]
            packed = pack_candidates(prompt, cands)  # row r * K + k: sample r, label k
            speech = self._speech(pool)[torch.tensor(rows)].repeat_interleave(len(cands), 0)
            self._current[key] = self._run([packed], speech, "logp").view(len(rows), len(cands))
        return self._current[key]

    # ---------------------------------------------------------------------------------------------- losses
    def losses(self, label: str, words: Sequence[str], half: str) -> Tensor:
        """Per-sample task loss of each word in place of ``label``'s symbol, (C, n); inf for unusable words."""
        if half not in ("search", "confirm"):
            raise ValueError(f"half must be 'search' or 'confirm', got {half!r}")
        parts = []
        for p in self._pools_of(label):
            kind = "generative" if p.multi_label else self.loss
            parts.append(getattr(self, f"_{kind}")(p, label, words, half))
        parts = [x for x in parts if x.shape[1]]
        return torch.cat(parts, dim=1) if parts else torch.full((len(words), 0), math.inf)

    def _closed_set(self, pool: _Pool, label: str, words: Sequence[str], half: str) -> Tensor:
        rows = pool.rows(half)
        out = torch.full((len(words), len(rows)), math.inf)
        if not rows:
            return out
        current = self._current_scores(pool, half)  # (n, K)
        k = pool.labels.index(label)
        gold = torch.tensor([pool.labels.index(pool.golds[i]) for i in rows])
        usable = [(c, t) for c, w in enumerate(words) if (t := self._trial(label, w)) is not None]
        if not usable:
            return out
        packed = [pack_candidates(self._prompts(pool, rows, t), [self.prompts.target_ids(words[c])]) for c, t in usable]
        new = self._after_speech(packed, self._speech(pool)[torch.tensor(rows)], "logp")  # (C', n) log p(w | x)
        scores = current[None].repeat(len(usable), 1, 1)  # (C', n, K)
        scores[:, :, k] = new
        ce = scores.logsumexp(-1) - scores.gather(2, gold[None, :, None].expand(len(usable), -1, 1))[..., 0]
        out[torch.tensor([c for c, _ in usable])] = ce
        return out

    def _contrastive(self, pool: _Pool, label: str, words: Sequence[str], half: str) -> Tensor:
        own = pool.rows(half, label)
        by_label = [pool.rows(half, lab) for lab in pool.labels if lab != label]
        others = [r for group in zip(*by_label, strict=False) for r in group][: len(own)]  # round-robin over labels
        out = torch.full((len(words), len(own)), math.inf)
        usable = [(c, t) for c, w in enumerate(words) if own and others and (t := self._trial(label, w)) is not None]
        if not usable:
            return out
        rows = own + others
        packed = [pack_candidates(self._prompts(pool, rows, t), [self.prompts.target_ids(words[c])]) for c, t in usable]
        ce = self._after_speech(packed, self._speech(pool)[torch.tensor(rows)], "ce")  # (C', n) ce of saying w
        pair = torch.tensor([len(own) + i % len(others) for i in range(len(own))])  # x' of each x
        q = torch.exp(-ce)  # per-token probability of saying w
        out[torch.tensor([c for c, _ in usable])] = q[:, pair] - q[:, : len(own)]
        return out

    def _generative(self, pool: _Pool, label: str, words: Sequence[str], half: str) -> Tensor:
        rows = pool.rows(half, label)
        out = torch.full((len(words), len(rows)), math.inf)
        usable = [(c, t) for c, w in enumerate(words) if rows and (t := self._trial(label, w)) is not None]
        if not usable:
            return out
        packed = []
        for _, t in usable:
            prompt, transform = self._prompts(pool, rows, t), self.transform.with_book(t)
            for r, i in enumerate(rows):
                one = {k: v[r : r + 1] if torch.is_tensor(v) else v for k, v in prompt.items()}
                packed.append(
                    pack_candidates(one, [self.prompts.target_ids(transform.target(pool.items[i]["sample"]))])
                )
        speech = self._speech(pool)[torch.tensor(rows)].repeat(len(usable), 1, 1)
        out[torch.tensor([c for c, _ in usable])] = self._run(packed, speech, "ce").view(len(usable), len(rows))
        return out

    # ------------------------------------------------------------------------------------------- proposals
    def proposals(
        self, label: str, source: str, position: int, ids: tuple[int, ...], allowed: Tensor, k: int
    ) -> list[tuple[int, float]]:
        """The ``k`` best allowed tokens for ``position`` of the symbol ``ids`` of ``label`` by ``source``, best
        first. The likelihood is conditioned on the earlier tokens of ``ids``; the gradient needs the tokens in
        the symbol injector, so it proposes for the current symbol only."""
        if source not in ("likelihood", "gradient"):
            raise ValueError(f"unknown proposal source {source!r}")
        current = tuple(self.prompts.target_ids(self.book.symbol_for(label))[:-1])
        if source == "gradient" and tuple(ids) != current:
            return []
        likelihood, gradient = self._probe(label, tuple(ids), tuple(ids) == current)
        score = (likelihood if source == "likelihood" else gradient)[position]  # (V,)
        score = score.masked_fill(~allowed[: score.numel()].to(score.device), -math.inf)
        k = int(allowed.sum()) if k < 0 else min(k, int(allowed.sum()))
        vals, top = score.topk(k)
        return [(int(i), float(v)) for i, v in zip(top, vals, strict=True) if v != -math.inf]

    def _on_device(self, batch: dict) -> dict:
        return {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in batch.items()}

    def _prompt_state(self, pool: _Pool) -> PromptState:
        """The search half's prompts (current symbols) after one pass, kept for every likelihood probe."""
        if id(pool) not in self._prompt_states:
            rows = pool.rows("search")
            prompt = self._on_device(self._prompts(pool, rows, self.book))
            with _eval(self.model):
                self._prompt_states[id(pool)] = self.model.encode_prompt(prompt, self._speech(pool)[torch.tensor(rows)])
        return self._prompt_states[id(pool)]

    def _probe(self, label: str, ids: tuple[int, ...], gradient: bool) -> tuple[list[Tensor], list[Tensor]]:
        """One pass over the search half with ``ids`` (then EOS) teacher-forced as the answer after each prompt:
        per position, every token's mean probability on the label's clips minus that on the other labels'
        clips, and with ``gradient`` (the current symbol) every token's first-order loss change on the label's
        clips. Without the gradient only ``ids`` run, after the search half's prompts kept from one pass."""
        key = (label, ids)
        if key in self._probes:
            return self._probes[key]
        weight = self.model.llm.get_input_embeddings().weight
        vocab = weight.detach().float()  # (V, D)
        mine, others, grads = [], [], []
        for pool in self._pools_of(label):
            rows = pool.rows("search")
            own = torch.tensor([pool.golds[i] == label for i in rows], dtype=torch.bool)
            if not own.any():
                continue
            if not gradient and self.model.keeps_prompts:
                # the prompts are the same for every probe: run them once, then only the answer's tokens
                with _eval(self.model):
                    prob = self.model.continue_prompt(self._prompt_state(pool), list(ids[:-1])).float().softmax(-1)
                mine.append(prob[own])
                others.append(prob[~own])
                continue
            packed = pack_candidates(self._prompts(pool, rows, self.book), [list(ids) + [self.prompts.eos_id]])
            batch = self._on_device(packed)
            table = weight.detach()[self.model.symbols.token_ids].float().requires_grad_(gradient)  # (U, D)
            speech = self._speech(pool)[torch.tensor(rows)]
            with _eval(self.model), torch.set_grad_enabled(gradient):
                res = self.model(batch, symbol_mode="raw", speech=speech, symbol_table=table)
                if gradient:
                    ce = F.cross_entropy(
                        res.logits.float()[own].flatten(0, 1), res.labels[own].flatten(), ignore_index=-100
                    )
                    grads.append(torch.autograd.grad(ce, table)[0])  # never touches the parameters' .grad
            prob = res.logits.detach().float().softmax(-1)  # (n, W, V)
            mine.append(prob[own])
            others.append(prob[~own])
        empty = [torch.full((vocab.shape[0],), -math.inf) for _ in ids]
        if not mine:
            return self._probes.setdefault(key, (empty, empty))
        own_p, other_p = torch.cat(mine), torch.cat(others)
        # the first token says which label it is: how much more likely for this label's audio than for others';
        # a later token continues its word whatever the audio: how likely after the earlier tokens, for this audio
        likelihood = [own_p[:, 0].mean(0) - (other_p[:, 0].mean(0) if len(other_p) else 0.0)]
        likelihood = [x.cpu() for x in likelihood + [own_p[:, p].mean(0) for p in range(1, len(ids))]]
        first_order = empty
        if grads:
            g = torch.stack(grads).sum(0)  # (U, D)
            rows = [self.model.symbols.row_of(t, p) for p, t in enumerate(ids)]
            first_order = [(-(vocab - vocab[t]) @ g[r].float()).cpu() for t, r in zip(ids, rows, strict=True)]
        self._probes[key] = (likelihood, first_order)
        return self._probes[key]


class _eval:
    """Evaluation mode (no dropout) for the duration of a block, then the previous mode back."""

    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __enter__(self):
        self.was = self.model.training
        self.model.eval()

    def __exit__(self, *exc):
        self.model.train(self.was)
