"""SALMONN as one plain ``nn.Module``: speech encoders → window Q-Former → LLaMA + LoRA, with symbol injection.

    wav (B, S) ─log_mel─► Whisper ─► ln_speech ─────────────┐ (B, 1500, 1280)
               └────────► BEATs ───► ln_audio ─► zero pads ─┴─concat─► fused (B, 1500, 2048)
    fused ─► WindowQFormer ─► (B, 88, 768) ─► speech_llama_proj ─► speech (B, 88, H)
         └─► (option) UtteranceToken: mean of the clip's frames ─► one more token first, (B, 1 + 88, H)

    embed(prefix_ids) ‖ speech ‖ SymbolInjector(embed(text_ids)) ─► LLaMA + LoRA ─► logits of the text part
    [BOS] USER: <Speech>   88     </Speech> {prompt}\\nASSISTANT: {target}</s>

No device, precision or distributed policy lives here: the LightningModule and the Trainer own those.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .candidates import PromptKV, candidate_tree, continuation_layout, pack_candidates
from .decoding import decode, has_blocks, left_align, target_window
from .qformer import UtteranceToken, WindowQFormer
from .symbol_injector import SymbolInjector
from .whisper import log_mel

__all__ = ["SYMBOL_SCOPES", "PromptState", "SpeechLLM", "SpeechLLMOutput", "audio_frames", "pack_candidates"]

SYMBOL_SCOPES = ("prompt", "target", "both")


@dataclass
class SpeechLLMOutput:
    """Result of a training forward.

    Attributes:
        loss: Mean cross-entropy over target tokens (fp32).
        logits: Next-token logits, shape (B, L, V): of the whole text part (``logits[:, t]`` predicts
            ``text_ids[:, t]``), or, when the batch gives ``target_len``, of each row's target window only
            (``logits[:, j]`` predicts the row's j-th target token).
        n_targets: Number of target tokens in the batch (a tensor, so reading it needs no host sync).
        labels: The targets ``logits`` predict, shape (B, L), -100 where there is none.
    """

    loss: Tensor
    logits: Tensor
    n_targets: Tensor
    labels: Tensor | None = None


@dataclass
class PromptState:
    """A batch of prompts after one pass (`SpeechLLM.encode_prompt`).

    Attributes:
        kv: Every layer's keys and values of the prompts.
        lengths: Real prompt embeddings per row (prefix + speech + prompt text), shape (B,).
        seq_len: Embeddings per row, pads included.
        last: Final hidden state of each row's last real prompt token, shape (B, 1, H).
    """

    kv: PromptKV
    lengths: Tensor
    seq_len: int
    last: Tensor


class SpeechLLM(nn.Module):
    """The speech LLM with symbol injection.

    Args:
        whisper: A transformers ``WhisperEncoder`` (frozen).
        qformer: The window-level Q-Former over the fused features.
        llm: The causal LM wrapped with a peft LoRA adapter.
        beats: Optional BEATs encoder (frozen); without it the Q-Former sees Whisper features only.
        symbol_hidden: Symbol MLP width.
        symbol_scale: Symbol MLP residual scale.
        symbol_dropout: Symbol MLP dropout.
        symbol_scope: Which symbol occurrences are replaced: "prompt" (instruction and few-shot text),
            "target", or "both".
        train_speech_path: Whether the Q-Former, query, projection and LayerNorms train.
        speech_windows: "all": every Q-Former window of the 30 s input reaches the LLM (SALMONN); "audio": only
            the windows up to the end of the longest clip of the batch (``max_wav_len``), which makes short clips
            several times cheaper for the LLM.
        utterance_token: Put one `UtteranceToken` (the clip's mean frame, projected) before the window tokens.
    """

    def __init__(
        self,
        whisper: nn.Module,
        qformer: WindowQFormer,
        llm: nn.Module,
        beats: nn.Module | None = None,
        symbol_hidden: int = 8,
        symbol_scale: float = 0.2,
        symbol_dropout: float = 0.1,
        symbol_scope: str = "both",
        train_speech_path: bool = False,
        speech_windows: str = "all",
        utterance_token: bool = False,
    ):
        super().__init__()
        if symbol_scope not in SYMBOL_SCOPES:
            raise ValueError(f"symbol_scope must be one of {SYMBOL_SCOPES}, got {symbol_scope!r}")
        if speech_windows not in ("all", "audio"):
            raise ValueError(f"speech_windows must be 'all' or 'audio', got {speech_windows!r}")
        self.speech_windows = speech_windows
        hidden = llm.get_input_embeddings().weight.shape[1]
        self.whisper = whisper.requires_grad_(False)
        self.beats = beats.requires_grad_(False) if beats is not None else None
        self.ln_speech = nn.LayerNorm(whisper.config.d_model)
        self.ln_audio = nn.LayerNorm(beats.cfg.encoder_embed_dim) if beats is not None else None
        self.speech_qformer = qformer
        self.speech_llama_proj = nn.Linear(qformer.qformer.config.hidden_size, hidden)
        width = qformer.qformer.config.encoder_hidden_size
        self.speech_utterance = UtteranceToken(width, qformer.qformer.config.hidden_size) if utterance_token else None
        self.llm = llm
        self.symbols = SymbolInjector(hidden, symbol_hidden, symbol_scale, symbol_dropout)
        self.symbol_scope = symbol_scope
        self.n_mels = whisper.config.num_mel_bins
        for p in self.speech_parameters():
            p.requires_grad_(train_speech_path)

    # -------------------------------------------------------------------------------------- parameter groups
    def lora_parameters(self) -> list[nn.Parameter]:
        """LoRA weights of the LLM."""
        return [p for n, p in self.llm.named_parameters() if "lora_" in n]

    def symbol_parameters(self) -> list[nn.Parameter]:
        """Symbol MLP weights."""
        return list(self.symbols.mlp.parameters())

    def speech_parameters(self) -> list[nn.Parameter]:
        """Q-Former, query tokens, projection, the two LayerNorms and the utterance token (frozen unless
        configured)."""
        return [p for m in self.speech_modules().values() for p in m.parameters()]

    def speech_modules(self) -> dict[str, nn.Module]:
        """The speech path's trainable modules by attribute name (what checkpoints keep of it), in a fixed order."""
        names = ("ln_speech", "speech_qformer", "speech_llama_proj", "ln_audio", "speech_utterance")
        return {n: getattr(self, n) for n in names if getattr(self, n) is not None}

    def train(self, mode: bool = True) -> SpeechLLM:
        """Sets training mode, keeping frozen parts in eval mode (no dropout), so a frozen speech path is a
        deterministic function of the audio."""
        super().train(mode)
        self.whisper.eval()
        if self.beats is not None:
            self.beats.eval()
        if not any(p.requires_grad for p in self.speech_parameters()):
            # a frozen Q-Former with live dropout would only add noise, and would make cached speech differ
            for m in self.speech_modules().values():
                m.eval()
        return self

    @property
    def keeps_prompts(self) -> bool:
        """Whether the LLM's decoder has the LLaMA block layout (rotary_emb, layers, norm) that the one-prompt
        passes need (`score_candidates`' tree, `encode_prompt`)."""
        return has_blocks(self.llm.get_base_model().get_decoder())

    # -------------------------------------------------------------------------------------------- speech
    def encode_speech(self, wav: Tensor, wav_lengths: Tensor) -> Tensor:
        """Speech tokens for the LLM: `speech_from_audio` of `encode_audio`.

        Args:
            wav: 16 kHz mono audio, right-padded, shape (B, S).
            wav_lengths: Valid samples per row, shape (B,).

        Returns:
            Projected speech embeddings, shape (B, 88, H) for 30 s windows.
        """
        return self.speech_from_audio(self.encode_audio(wav, wav_lengths), audio_frames(wav_lengths))

    @torch.no_grad()
    def encode_audio(self, wav: Tensor, wav_lengths: Tensor) -> Tensor:
        """The frozen encoders' output, before anything that can train: Whisper's frames, then (with BEATs) its
        frames fitted to Whisper's length and their padding flag, concatenated on the channel axis.

        Whisper and BEATs never train: without autograd they keep no activations, and a compiled block sees one
        grad mode in training and evaluation alike. These rows can be cached while the Q-Former trains.

        Returns:
            (B, 1500, C) with C = Whisper width (+ BEATs width + 1).
        """
        mel = log_mel(wav, self.n_mels, wav_lengths)  # (B, 80, 3000)
        whisper = self.whisper(mel).last_hidden_state  # (B, 1500, 1280)
        if self.beats is None:
            return whisper
        audio, audio_pad = self.beats(wav, lengths=wav_lengths)  # (B, N, 768), (B, N)
        T = whisper.shape[1]
        pad = _fit_length(audio_pad[..., None].to(audio.dtype), T)  # (B, 1500, 1); past N counts as padding
        pad[:, audio_pad.shape[1] :] = 1
        return torch.cat([whisper, _fit_length(audio, T).to(whisper.dtype), pad.to(whisper.dtype)], dim=-1)

    def speech_from_audio(self, audio: Tensor, frames: Tensor | None = None) -> Tensor:
        """Speech tokens from `encode_audio` rows: LayerNorms, the window Q-Former and the projection (the parts
        that can train), (B, 1500, C) -> (B, 88, H); ``frames`` (B,): each row's frames holding its clip (what
        the utterance token averages; None: all)."""
        dw = self.whisper.config.d_model
        speech = self.ln_speech(audio[..., :dw])
        if self.beats is not None:
            beats, pad = audio[..., dw:-1], audio[..., -1:] > 0.5
            # zeroing after ln_audio makes a clip's features independent of what it is batched with
            beats = self.ln_audio(beats).masked_fill(pad, 0.0)
            speech = torch.cat([speech, beats.to(speech.dtype)], dim=-1)  # (B, 1500, 2048)
        tokens = self.speech_qformer(speech)  # (B, 88, hidden)
        if self.speech_utterance is not None:
            tokens = torch.cat([self.speech_utterance(speech, frames).to(tokens.dtype), tokens], dim=1)
        return self.speech_llama_proj(tokens)  # (B, 88, H), or (B, 1 + 88, H)

    # ------------------------------------------------------------------------------------------------ text
    def embed_inputs(
        self,
        batch: dict[str, Tensor],
        speech: Tensor,
        symbol_mode: str,
        temperature: float,
        symbol_table: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Input embeddings and attention mask of [prefix ‖ speech ‖ text].

        Returns:
            ``(embeds (B, P+88+L, H), attention_mask (B, P+88+L))``.
        """
        head = self._embed_head(batch, speech)  # (B, P+88, H)
        embeds = torch.cat([head, self._embed_text(batch, symbol_mode, temperature, symbol_table)], dim=1)
        ones = batch["text_mask"].new_ones(head.shape[:2])
        return embeds, torch.cat([ones, batch["text_mask"]], dim=1)

    def _embed_head(self, batch: dict[str, Tensor], speech: Tensor) -> Tensor:
        """[prefix ‖ kept speech], the part of a row before its text, (B, P+W, H)."""
        u = int(self.speech_utterance is not None)  # the utterance token comes first and is always kept
        speech = speech[:, : u + self.kept_windows(batch, speech.shape[1] - u)]  # (B, W, H)
        prefix = self.llm.get_input_embeddings()(batch["prefix_ids"])  # (B, P, H)
        return torch.cat([prefix, speech.to(prefix.dtype)], dim=1)

    def _embed_text(self, batch, symbol_mode: str, temperature: float, symbol_table: Tensor | None = None) -> Tensor:
        """``text_ids`` embedded, symbol positions by ``symbol_mode`` (`SymbolInjector`), (B, L, H)."""
        embed, text_ids = self.llm.get_input_embeddings(), batch["text_ids"]
        is_target = batch["labels"] != -100
        where = {"prompt": ~is_target, "target": is_target, "both": None}[self.symbol_scope]
        return self.symbols(text_ids, embed(text_ids), embed.weight, symbol_mode, temperature, where, symbol_table)

    def kept_windows(self, batch: dict, windows: int) -> int:
        """How many of the ``windows`` speech tokens reach the LLM (all, or with ``speech_windows="audio"`` those
        that start before the end of the batch's longest clip, ``batch["max_wav_len"]`` samples)."""
        if self.speech_windows == "all" or batch.get("max_wav_len") is None:
            return windows
        frames = -(-int(batch["max_wav_len"]) // 320)  # Whisper output frames: 160-sample hop, then stride 2
        return max(1, min(windows, -(-frames // self.speech_qformer.stride)))

    def kept_frames(self, batch: dict, frames: int) -> int:
        """How many of ``frames`` encoder frames the kept windows read (all unless ``speech_windows="audio"``):
        `speech_from_audio` of only these gives the kept windows exactly (each window is its own Q-Former pass)."""
        qf = self.speech_qformer
        windows = (frames - qf.window) // qf.stride + 1
        k = self.kept_windows(batch, windows)
        return frames if k == windows else (k - 1) * qf.stride + qf.window

    def forward(
        self,
        batch: dict[str, Tensor],
        symbol_mode: str = "soft",
        temperature: float = 0.1,
        speech: Tensor | None = None,
        symbol_table: Tensor | None = None,
    ) -> SpeechLLMOutput:
        """Teacher-forced loss on the targets.

        Args:
            batch: ``wav``, ``wav_lengths`` and the `PromptBatch` fields.
            symbol_mode: "soft", "hard" or "raw" embeddings at symbol positions.
            temperature: Soft-quantization temperature.
            speech: Precomputed speech embeddings (B, 88, H), e.g. from a cache; computed when None.
            symbol_table: Embeddings (U, D) to put at the symbol positions instead of ``symbol_mode``'s (see
                `SymbolInjector.forward`).
        """
        if speech is None:
            speech = self.encode_speech(batch["wav"], batch["wav_lengths"])
        embeds, _ = self.embed_inputs(batch, speech, symbol_mode, temperature, symbol_table)
        base = self.llm.get_base_model()
        hidden = decode(base.get_decoder(), embeds)  # (B, T, H)
        # Only the text part can hold targets: the lm_head runs on L positions, not P + 88 + L, and on the target
        # window only when the batch says how long it is (the prompt's positions need no logits).
        L = batch["text_ids"].shape[1]
        hidden, labels = target_window(hidden[:, -L - 1 : -1], batch)  # (B, W, H), (B, W)
        logits = base.get_output_embeddings()(hidden)  # (B, W, V)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=-100)
        return SpeechLLMOutput(loss, logits, (labels != -100).sum(), labels)

    # ---------------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def score_candidates(
        self,
        batch: dict[str, Tensor],
        candidates: list[list[int]],
        symbol_mode: str = "soft",
        temperature: float = 0.1,
        speech: Tensor | None = None,
    ) -> Tensor:
        """Log-likelihood of each candidate continuation (e.g. label symbol + EOS) after each prompt.

        The prompt is computed once per row and every candidate attends to it (`candidate_tree`); a decoder
        without the LLaMA block layout scores B·C packed rows instead.

        Args:
            batch: ``wav``, ``wav_lengths``, ``prefix_ids``, and prompt-only ``text_ids`` / ``text_mask``.
            candidates: C token-id lists.
            symbol_mode: Embeddings at symbol positions.
            temperature: Soft-quantization temperature.
            speech: Optional precomputed speech embeddings.

        Returns:
            Summed log-probabilities, shape (B, C).
        """
        if speech is None:
            speech = self.encode_speech(batch["wav"], batch["wav_lengths"])
        if not self.keeps_prompts:
            return self._score_packed(batch, candidates, symbol_mode, temperature, speech)
        base = self.llm.get_base_model()
        tree = candidate_tree(batch, candidates)
        embeds, _ = self.embed_inputs(tree.batch, speech, symbol_mode, temperature)  # (B, S + C·Lc, H)
        positions, mask, source = tree.layout(embeds.shape[1])
        hidden = decode(base.get_decoder(), embeds, positions, mask)  # (B, T, H)
        hidden = hidden.gather(1, source[..., None].expand(-1, -1, hidden.shape[-1]))  # (B, C·Lc, H)
        logp = base.get_output_embeddings()(hidden).float().log_softmax(-1)  # (B, C·Lc, V)
        ids = tree.candidates.flatten()[None].expand(hidden.shape[0], -1)  # (B, C·Lc)
        tok = logp.gather(-1, ids.clamp_min(0)[..., None])[..., 0] * (ids != -100)
        return tok.view(-1, *tree.candidates.shape).sum(-1)  # (B, C)

    def _score_packed(self, batch, candidates, symbol_mode, temperature, speech) -> Tensor:
        """`score_candidates` on B·C rows of prompt + candidate, for decoders `decode` cannot mask."""
        B, C = batch["text_ids"].shape[0], len(candidates)
        rep = pack_candidates(batch, candidates)  # B·C rows of prompt + candidate
        out = self.forward(rep, symbol_mode, temperature, speech.repeat_interleave(C, dim=0))
        keep = out.labels != -100  # (B·C, L): the candidate tokens and EOS only
        logp = out.logits[keep].float().log_softmax(-1)  # (K, V): no softmax over the prompt's positions
        tok = torch.zeros(keep.shape, dtype=logp.dtype, device=logp.device)  # (B·C, L)
        tok[keep] = logp.gather(-1, out.labels[keep][:, None])[:, 0]
        return tok.sum(-1).view(B, C)

    @torch.no_grad()
    def encode_prompt(self, batch: dict[str, Tensor], speech: Tensor, symbol_mode: str = "raw") -> PromptState:
        """One pass over prompt rows (``prefix_ids``, prompt-only ``text_ids`` / ``text_mask``), keeping what
        `continue_prompt` needs to score continuations without computing the prompt again."""
        if not self.keeps_prompts:
            raise ValueError("encode_prompt needs a LLaMA-style decoder (rotary_emb, layers, norm)")
        prompt = dict(batch, labels=torch.full_like(batch["text_ids"], -100))
        embeds, _ = self.embed_inputs(prompt, speech, symbol_mode, 0.1)  # (B, S, H)
        lengths = embeds.shape[1] - batch["text_ids"].shape[1] + batch["text_mask"].sum(1)  # (B,)
        return self._keep(embeds, lengths)

    def _keep(self, embeds: Tensor, lengths: Tensor) -> PromptState:
        """One pass over right-padded rows (``lengths`` (B,) real), keeping every layer's keys and values."""
        kv = PromptKV()
        hidden = decode(self.llm.get_base_model().get_decoder(), embeds, kv=kv)  # (B, S, H)
        kv.frozen = True
        last = hidden.gather(1, (lengths - 1)[:, None, None].expand(-1, 1, hidden.shape[-1]))  # (B, 1, H)
        return PromptState(kv, lengths, embeds.shape[1], last)

    @torch.no_grad()
    def encode_head(self, batch: dict[str, Tensor], speech: Tensor) -> PromptState:
        """One pass over the rows' [prefix ‖ kept speech] (``prefix_ids``, ``max_wav_len``), keeping what
        `score_text` needs to score any text after it without computing this part again."""
        head = self._embed_head(batch, speech)  # (B, S, H): every row the same length
        return self._keep(head, torch.full((head.shape[0],), head.shape[1], device=head.device))

    @torch.no_grad()
    def score_text(self, state: PromptState, batch: dict[str, Tensor], symbol_mode: str = "raw") -> Tensor:
        """Summed log-probability of each row's targets (``labels`` != -100) in ``text_ids`` after `encode_head`'s
        rows: what `forward` gives on the whole rows, (B,)."""
        base = self.llm.get_base_model()
        text = self._embed_text(batch, symbol_mode, 0.1).to(state.last.dtype)  # (B, L, H)
        positions, mask = continuation_layout(state.lengths, state.seq_len, text.shape[1])
        hidden = decode(base.get_decoder(), text, positions, mask, kv=state.kv)  # (B, L, H)
        hidden = torch.cat([state.last, hidden[:, :-1]], dim=1)  # (B, L, H): what predicts each text token
        labels = batch["labels"]
        keep = labels != -100
        logp = base.get_output_embeddings()(hidden[keep]).float().log_softmax(-1)  # (K, V): the targets only
        tok = torch.zeros(keep.shape, dtype=logp.dtype, device=logp.device)  # (B, L)
        tok[keep] = logp.gather(-1, labels[keep][:, None])[:, 0]
        return tok.sum(1)

    @torch.no_grad()
    def continue_prompt(self, state: PromptState, ids: list[int]) -> Tensor:
        """Next-token logits after each prompt and after each of ``ids`` (raw token embeddings) following it,
        shape (B, len(ids) + 1, V): what a teacher-forced pass over prompt + ``ids`` gives at those positions."""
        base = self.llm.get_base_model()
        hidden = [state.last]
        if ids:
            B = state.lengths.shape[0]
            tokens = torch.tensor(ids, device=state.lengths.device)[None].expand(B, -1)  # (B, La)
            embeds = self.llm.get_input_embeddings()(tokens).to(state.last.dtype)  # (B, La, H)
            positions, mask = continuation_layout(state.lengths, state.seq_len, len(ids))
            hidden.append(decode(base.get_decoder(), embeds, positions, mask, kv=state.kv))
        return base.get_output_embeddings()(torch.cat(hidden, dim=1))  # (B, La + 1, V)

    @torch.no_grad()
    def generate(
        self,
        batch: dict[str, Tensor],
        max_new_tokens: int = 200,
        num_beams: int = 1,
        symbol_mode: str = "soft",
        temperature: float = 0.1,
        speech: Tensor | None = None,
        **generate_kwargs,
    ) -> Tensor:
        """Greedy or beam-search continuation of the prompts, stopping each sequence at its own EOS.

        Returns:
            Generated token ids only (no prompt), shape (B, T_new), padded with the pad id after EOS.
        """
        if speech is None:
            speech = self.encode_speech(batch["wav"], batch["wav_lengths"])
        prompt = dict(batch, labels=torch.full_like(batch["text_ids"], -100))
        embeds, mask = self.embed_inputs(prompt, speech, symbol_mode, temperature)
        embeds, mask = left_align(embeds, mask)  # generation appends on the right: no pads may sit there
        cfg = self.llm.get_base_model().generation_config
        eos, pad = cfg.eos_token_id, cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id
        hook = None
        if symbol_mode != "raw" and self.symbol_scope != "prompt":
            # Targets were trained with replaced embeddings, so generated symbol tokens get them too.
            hook = self.llm.get_input_embeddings().register_forward_hook(
                self._generation_hook(symbol_mode, temperature)
            )
        try:
            return self.llm.generate(
                inputs_embeds=embeds,
                attention_mask=mask,
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                do_sample=False,
                eos_token_id=eos,
                pad_token_id=pad,
                **generate_kwargs,
            )
        finally:
            if hook is not None:
                hook.remove()

    def _generation_hook(self, symbol_mode: str, temperature: float):
        weight = self.llm.get_input_embeddings().weight
        table = self.symbols.replacements(weight, symbol_mode, temperature) if self.symbols.num_symbols else None

        def hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
            if table is None:
                return out
            rows = self.symbols.token_rows(args[0])  # (B, t)
            return torch.where((rows >= 0)[..., None], table.to(out.dtype)[rows.clamp_min(0)], out)

        return hook


def audio_frames(wav_lengths: Tensor) -> Tensor:
    """Whisper output frames holding each clip's audio (160-sample hop, then stride 2), (B,)."""
    return torch.div(wav_lengths + 319, 320, rounding_mode="floor")


def _fit_length(x: Tensor, length: int) -> Tensor:
    """Right-pads with zeros or truncates (B, N, D) to (B, length, D)."""
    if x.shape[1] >= length:
        return x[:, :length]
    return F.pad(x, (0, 0, 0, length - x.shape[1]))
