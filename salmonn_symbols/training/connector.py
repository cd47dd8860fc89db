"""Connector pre-training, SALMONN's first stage: speech recognition trains the Q-Former, projection and LayerNorms.

    sentence set (espeak-ng, split by sentence) ─► encode_audio once per clip (frozen Whisper) ─► frames (N, T, C)
    stage "align": speech tokens (B, W, H) · [E ‖ blank]ᵀ ─► CTC on the transcript's LLM tokens
                   no LLM pass, so it is cheap: it puts each word's own LLM embedding where the word is heard
    stage "llm":   the transcript teacher-forced through the frozen LLM (SALMONN's ASR objective; no LoRA)
    held-out WER:  greedy `SpeechLLM.generate` on the held-out sentences
    ─► save_salmonn_checkpoint (the small preset's ``salmonn_ckpt``) + a JSON report

Only the speech windows that hold audio are computed: the cached frames stop at the longest clip (rounded up to
a whole window), which gives the kept windows exactly what the 30 s input would give them (each window is
independent in the window Q-Former).
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from ..data.audio import load_audio
from ..data.prompt import PromptBuilder
from ..data.sentences import make_sentence_set, read_sentence_set
from ..io import atomic_write_json
from ..model.builders import SpeechLLMConfig, build_speech_llm
from ..model.checkpoint import save_salmonn_checkpoint
from ..model.speech_llm import SpeechLLM

__all__ = ["ConnectorConfig", "pretrain_connector", "word_error_rate"]

ASR_PROMPT = "Transcribe the speech."
HOP = 320  # audio samples per Whisper output frame (160-sample mel hop, then the stride-2 convolution)


@dataclass
class ConnectorConfig:
    """Sizes and steps of the connector pre-training.

    Attributes:
        n_train: Training sentences (one clip each).
        n_val: Held-out sentences (never heard in training).
        seed: Seed of the sentences, voices, initialisation and batch order.
        align_steps: Steps of the CTC alignment stage.
        llm_steps: Steps of teacher-forced recognition through the frozen LLM.
        batch_size: Clips per step of the alignment stage.
        align_lr: AdamW learning rate of the alignment stage.
        llm_lr: AdamW learning rate of the LLM stage.
        max_new_tokens: Greedy decoding length of the held-out transcripts.
        negatives: Other tokens in each step's sampled softmax of the alignment stage.
        llm_batch_size: Clips per step of the LLM stage.
        bf16: bf16 autocast in the LLM stage.
        device: "cpu", "cuda" or "auto" (cuda when available).
        workers: espeak-ng processes at once.
        espeak: espeak-ng executable.
    """

    n_train: int = 200
    n_val: int = 40
    seed: int = 0
    align_steps: int = 150
    llm_steps: int = 20
    batch_size: int = 16
    align_lr: float = 2e-3
    llm_lr: float = 5e-4
    max_new_tokens: int = 24
    negatives: int = 2048
    llm_batch_size: int = 8
    bf16: bool = True
    device: str = "auto"
    workers: int = 2
    espeak: str = "espeak-ng"


# ------------------------------------------------------------------------------------------------------ metric
def _norm_words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus WER: word-level edit distance summed over the pairs over the reference words (case and punctuation
    ignored)."""
    errors = words = 0
    for ref, hyp in zip(references, hypotheses, strict=True):
        r, h = _norm_words(ref), _norm_words(hyp)
        row = list(range(len(h) + 1))  # edit distances of r[:0] to every prefix of h
        for i, rw in enumerate(r, 1):
            prev, row[0] = row[0], i
            for j, hw in enumerate(h, 1):
                prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (rw != hw))
        errors, words = errors + row[-1], words + len(r)
    return errors / max(words, 1)


# ------------------------------------------------------------------------------------------------------ frames
def encode_clips(model: SpeechLLM, paths: list[Path], batch: int = 8) -> tuple[Tensor, Tensor]:
    """The frozen encoders' frames of each clip, cut after the longest clip (whole windows).

    Returns:
        ``(frames (N, T, C), samples (N,))``: T = the longest clip's frames rounded up to the window stride.
    """
    wavs = [load_audio(str(p)) for p in paths]
    samples = torch.tensor([len(w) for w in wavs])
    stride = model.speech_qformer.stride
    T = min(1500, math.ceil(math.ceil(int(samples.max()) / HOP) / stride) * stride + model.speech_qformer.window)
    out = []
    for s in range(0, len(wavs), batch):
        chunk = wavs[s : s + batch]
        width = max(len(w) for w in chunk)
        wav = torch.stack([F.pad(w, (0, width - len(w))) for w in chunk])  # (b, S)
        dev = model.ln_speech.weight.device
        out.append(model.encode_audio(wav.to(dev), samples[s : s + batch].to(dev))[:, :T])  # (b, T, C)
    return torch.cat(out), samples


def _speech(model: SpeechLLM, frames: Tensor, samples: Tensor) -> tuple[Tensor, Tensor]:
    """Speech tokens of a batch and how many hold each clip's audio: ``(B, W, H)``, ``(B,)``."""
    stride = model.speech_qformer.stride
    tokens = torch.div(
        torch.div(samples + HOP - 1, HOP, rounding_mode="floor") + stride - 1, stride, rounding_mode="floor"
    )
    W = int(tokens.max())
    need = (W - 1) * stride + model.speech_qformer.window
    return model.speech_from_audio(frames[:, :need]), tokens


# ------------------------------------------------------------------------------------------------------ stages
class _AlignHead:
    """CTC over the speech tokens against the LLM's own (frozen) embedding table plus a learned blank.

    Logits are scaled cosines, and a penalty holds each speech token's norm at the embeddings' mean norm: the LLM
    must receive vectors that look like its own token embeddings, not merely point the right way (dot-product
    logits grow the norms eightfold). The softmax runs over every token of the training transcripts and
    ``negatives`` other tokens drawn afresh each step (a sampled softmax): the full 49k-row table would cost more
    than the rest of the step.
    """

    def __init__(self, embed: Tensor, targets: list[list[int]], negatives: int, seed: int):
        self.embed, self.negatives = embed, negatives
        self.norm = float(embed.norm(dim=1).mean())
        self.keep = torch.tensor(sorted({t for row in targets for t in row}))  # (K,)
        index = {int(t): i for i, t in enumerate(self.keep)}
        self.targets = [[index[t] for t in row] for row in targets]
        self.blank = torch.nn.Parameter(embed[torch.randint(len(embed), (1,))][0].clone())
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
        self.g = torch.Generator().manual_seed(seed)

    def parameters(self) -> list[torch.nn.Parameter]:
        return [self.blank, self.log_scale]

    def loss(self, speech: Tensor, tokens: Tensor, rows: Tensor) -> Tensor:
        other = torch.randint(self.embed.shape[0], (self.negatives,), generator=self.g)
        other = other[~torch.isin(other, self.keep)]
        table = torch.cat([self.embed[self.keep], self.embed[other], self.blank[None]])  # (K+N+1, H)
        cos = F.normalize(speech.float(), dim=-1) @ F.normalize(table.float(), dim=-1).T  # (B, W, K+N+1)
        logp = (cos * self.log_scale.exp()).log_softmax(-1)
        targets = [self.targets[i] for i in rows.tolist()]
        flat = torch.tensor([t for row in targets for t in row])
        lengths = torch.tensor([len(row) for row in targets])
        blank = table.shape[0] - 1
        ctc = F.ctc_loss(logp.transpose(0, 1), flat.to(logp.device), tokens, lengths, blank=blank, zero_infinity=True)
        W = (torch.arange(speech.shape[1])[None] < tokens[:, None]).to(speech.device)  # (B, W) tokens with audio
        norm = ((speech.float().norm(dim=-1) / self.norm - 1) ** 2)[W].mean()
        return ctc + norm


def _llm_batch(prompts: PromptBuilder, texts: list[str] | None, n: int, samples: Tensor, device) -> dict:
    batch = {k: v.to(device) for k, v in prompts([ASR_PROMPT] * n, texts).as_dict().items()}
    return batch | {"max_wav_len": int(samples.max())}


def _train(model, params, steps, lr, batches, loss_fn, log_every: int, name: str) -> list[float]:
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10) * (1 - s / max(steps, 1)))
    model.train()
    losses = []
    for step in range(steps):
        loss = loss_fn(next(batches))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if (step + 1) % log_every == 0 or step + 1 == steps:
            print(
                f"  {name} step {step + 1}/{steps}: loss {sum(losses[-log_every:]) / len(losses[-log_every:]):.3f}",
                flush=True,
            )
    return losses


def _batches(n: int, size: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=g)
        for s in range(0, n - size + 1, size):
            yield order[s : s + size]


@torch.no_grad()
def transcribe(
    model: SpeechLLM, tok, frames: Tensor, samples: Tensor, max_new_tokens: int, batch: int = 8
) -> list[str]:
    """Greedy transcripts of cached clips with `SpeechLLM.generate`."""
    model.eval()
    prompts, out = PromptBuilder(tok), []
    for s in range(0, len(frames), batch):
        speech, _ = _speech(model, frames[s : s + batch], samples[s : s + batch])
        b = _llm_batch(prompts, None, len(speech), samples[s : s + batch], speech.device)
        ids = model.generate(b, max_new_tokens=max_new_tokens, symbol_mode="raw", speech=speech)
        out += [t.strip() for t in tok.batch_decode(ids, skip_special_tokens=True)]
    return out


def train_connector(model: SpeechLLM, tok, frames: Tensor, samples: Tensor, texts: list[str], cfg: ConnectorConfig):
    """Both stages on cached frames; trains ``model.speech_parameters()`` only (the LLM and LoRA stay frozen).

    Returns:
        ``(align losses, recognition losses)``, one per step.
    """
    embed = model.llm.get_input_embeddings().weight.detach()  # (V, H)
    head = _AlignHead(embed, [tok(" " + x, add_special_tokens=False).input_ids for x in texts], cfg.negatives, cfg.seed)
    prompts, params = PromptBuilder(tok), model.speech_parameters()
    for p in params:
        p.requires_grad_(True)

    def align(idx: Tensor) -> Tensor:
        speech, tokens = _speech(model, frames[idx], samples[idx])
        return head.loss(speech, tokens, idx)

    def recognise(idx: Tensor) -> Tensor:
        # bf16 autocast: the LLM pass is nearly all of this stage's time, and only the connector's fp32 weights train
        with torch.autocast(frames.device.type, dtype=torch.bfloat16, enabled=cfg.bf16):
            speech, _ = _speech(model, frames[idx], samples[idx])
            batch = _llm_batch(prompts, [texts[i] for i in idx], len(idx), samples[idx], frames.device)
            return model(batch, symbol_mode="raw", speech=speech).loss

    batches = _batches(len(texts), cfg.batch_size, cfg.seed)
    align_losses = _train(model, params + head.parameters(), cfg.align_steps, cfg.align_lr, batches, align, 50, "align")
    batches = _batches(len(texts), cfg.llm_batch_size, cfg.seed + 1)
    llm_losses = _train(model, params, cfg.llm_steps, cfg.llm_lr, batches, recognise, 5, "recognise")
    return align_losses, llm_losses


@torch.no_grad()
def ctc_transcribe(model: SpeechLLM, tok, frames: Tensor, samples: Tensor, batch: int = 16) -> list[str]:
    """What the speech tokens say by themselves: each token's nearest LLM embedding (cosine), repeats merged.

    No blank is known here, so this reads the tokens the alignment stage placed; a repeated word is merged."""
    model.eval()
    table = F.normalize(model.llm.get_input_embeddings().weight.float(), dim=-1)  # (V, H)
    out = []
    for s in range(0, len(frames), batch):
        speech, tokens = _speech(model, frames[s : s + batch], samples[s : s + batch])
        ids = (F.normalize(speech.float(), dim=-1) @ table.T).argmax(-1)  # (B, W)
        for row, n in zip(ids.tolist(), tokens.tolist(), strict=True):
            merged = [t for i, t in enumerate(row[:n]) if i == 0 or t != row[i - 1]]
            out.append(tok.decode(merged).strip())
    return out


# ------------------------------------------------------------------------------------------------------ command
def pretrain_connector(
    out_dir: str | Path, model_cfg: SpeechLLMConfig, cfg: ConnectorConfig | None = None, name: str = "salmonn_small.pth"
) -> dict:
    """Builds the sentence set, trains the connector, writes the checkpoint ``name`` and ``connector.json``.

    Args:
        out_dir: Folder of the checkpoint and report; the sentence set goes to ``out_dir/sentences``.
        model_cfg: The preset to train the connector of (its ``salmonn_ckpt`` is ignored: this makes it).
        cfg: Sizes and steps.
        name: File name of the checkpoint.

    Returns:
        The report written to ``connector.json``: held-out WER, sizes, seconds, example transcripts.
    """
    cfg = cfg or ConnectorConfig()
    out_dir, times, t0 = Path(out_dir), {}, time.perf_counter()
    manifests = make_sentence_set(out_dir / "sentences", cfg.n_train, cfg.n_val, cfg.seed, cfg.workers, cfg.espeak)
    train, val = (read_sentence_set(manifests[s]) for s in ("train", "validation"))
    torch.manual_seed(cfg.seed)
    # the official layout holds no utterance token: it starts fresh in the task (the CTC stage aligns windows)
    model, tok = build_speech_llm(replace(model_cfg, salmonn_ckpt=None, train_speech_path=True, utterance_token=False))
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    t = time.perf_counter()
    frames, samples = encode_clips(model, [p for p, _ in train])  # (N, T, C), (N,)
    vframes, vsamples = encode_clips(model, [p for p, _ in val])
    times["encode"] = time.perf_counter() - t
    print(f"connector: encoded {len(train)} + {len(val)} clips in {times['encode']:.0f} s", flush=True)
    t = time.perf_counter()
    align_losses, llm_losses = train_connector(model, tok, frames, samples, [x for _, x in train], cfg)
    times["train"] = time.perf_counter() - t
    t = time.perf_counter()
    refs, hyps = [x for _, x in val], transcribe(model, tok, vframes, vsamples, cfg.max_new_tokens)
    wer = word_error_rate(refs, hyps)
    ctc_wer = word_error_rate(refs, ctc_transcribe(model, tok, vframes, vsamples))
    times["transcribe"] = time.perf_counter() - t
    ckpt = save_salmonn_checkpoint(model, out_dir / name)
    times["total"] = time.perf_counter() - t0
    report = {
        "checkpoint": ckpt.name,
        "held_out_wer": wer,
        "held_out_wer_speech_tokens": ctc_wer,
        "n_train_sentences": len(train),
        "n_held_out_sentences": len(val),
        "trained_parameters": sum(p.numel() for p in model.speech_parameters()),
        "final_align_loss": _tail_mean(align_losses),
        "final_recognition_loss": _tail_mean(llm_losses),
        "config": asdict(cfg),
        "seconds": {k: round(v, 1) for k, v in times.items()},
        "examples": [{"reference": r, "transcript": h} for r, h in zip(refs[:8], hyps[:8], strict=True)],
    }
    atomic_write_json(out_dir / "connector.json", report)
    print(
        f"connector: held-out WER {wer:.3f} (greedy generate; the speech tokens' nearest embeddings: {ctc_wer:.3f}) "
        f"on {len(val)} sentences; {times['total']:.0f} s in all",
        flush=True,
    )
    return report


def _tail_mean(values: list[float], n: int = 10) -> float | None:
    return sum(values[-n:]) / len(values[-n:]) if values else None
