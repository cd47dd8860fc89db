"""What discovery decides, as plain dataclasses: its settings, and the token- and symbol-level outcomes that the
cycle files record (`report.py`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .search import PROPOSAL_SOURCES

__all__ = ["Candidate", "DiscoveryConfig", "SymbolChange", "TokenDiscovery", "confidence_band"]


@dataclass
class DiscoveryConfig:
    """Discovery thresholds and search sizes.

    Attributes:
        threshold: Minimum cosine for a token to change; below it the token keeps its previous value.
        medium_at: Lower bound of the "medium" confidence band.
        high_at: Lower bound (exclusive) of the "high" confidence band.
        top_k: Candidate tokens kept per symbol token.
        max_candidates: Candidate words kept per label.
        stability_window: Number of most recent cycle-to-cycle transitions the stability check looks at.
        max_flips: A token position may change at most this often within the window.
        proposals: Sources of candidate tokens for the verified search: "mlp" (cosine neighbours of the MLP's
            output), "gradient" (first-order change of the task loss), "likelihood" (the model's probability of
            the token at the symbol's target position).
        proposals_per_source: Candidate tokens per source and position; -1 tries every allowed token.
        search_rounds: Search passes: the proposals' combinations first, then single-position swaps around the
            best word so far.
        max_evaluations: Candidate words scored by the task loss per label and discovery (the cost budget).
        confirm_top: Best search candidates re-scored on the confirm samples.
        min_z: A symbol changes only when a candidate's mean loss improvement exceeds this many standard errors
            (more when several candidates are confirmed: a Bonferroni correction).
        min_delta: ... and by at least this much, in the task loss's units (probability for "contrastive",
            nats per token otherwise). Significance alone is not enough: with many samples, a random model's
            faint audio-dependent token statistics (improvements of ~0.001) are real but not worth a change.
        task_loss: What the verified search scores: "contrastive" (the word's cross-entropy on the label's audio
            minus that on other labels' audio), "closed_set" or "generative" (see `training.rescoring`).
    """

    threshold: float = 0.3
    medium_at: float = 0.5
    high_at: float = 0.8
    top_k: int = 10
    max_candidates: int = 50
    stability_window: int = 3
    max_flips: int = 2
    proposals: list[str] = field(default_factory=lambda: list(PROPOSAL_SOURCES))
    proposals_per_source: int = 8
    search_rounds: int = 2
    max_evaluations: int = 256
    confirm_top: int = 3
    min_z: float = 3.0
    min_delta: float = 0.01
    task_loss: str = "contrastive"

    def __post_init__(self) -> None:
        bad = [s for s in self.proposals if s not in PROPOSAL_SOURCES]
        if bad:
            raise ValueError(f"discovery.proposals: unknown source(s) {bad}; sources: {list(PROPOSAL_SOURCES)}")
        if self.task_loss not in ("contrastive", "closed_set", "generative"):
            raise ValueError(f"discovery.task_loss must be contrastive|closed_set|generative, got {self.task_loss!r}")


def confidence_band(similarity: float, cfg: DiscoveryConfig) -> str:
    """ "none" below the threshold, then "low", "medium" (up to ``high_at`` inclusive) and "high"."""
    if similarity < cfg.threshold:
        return "none"
    if similarity < cfg.medium_at:
        return "low"
    return "medium" if similarity <= cfg.high_at else "high"


@dataclass
class Candidate:
    """A candidate word for one label."""

    symbol: str
    token_ids: tuple[int, ...]
    score: float  # mean cosine of the label's transformed tokens to these ids
    loss: float | None = None


@dataclass
class TokenDiscovery:
    """The outcome for one symbol token (one entry of ``cycle_N_tokens.json``)."""

    label: str
    position: int
    original_token_id: int
    original_text: str
    discovered_token_id: int
    discovered_text: str
    similarity: float
    margin: float | None
    confidence: str
    top_k: list[dict[str, Any]]
    search_top: list[dict[str, Any]] = field(default_factory=list)
    proposed_by: list[str] = field(default_factory=list)


@dataclass
class SymbolChange:
    """The outcome for one label (one entry of ``symbol_changes`` in ``cycle_N_symbols.json``)."""

    original_label: str
    current_symbol: str
    discovered_symbol: str
    change_type: str  # CHANGED | UNCHANGED | KEPT | OVERRIDDEN
    token_mapping: dict[str, int]
    similarity: float
    margin: float | None
    confidence: str
    reason: str
    candidates: list[Candidate] = field(default_factory=list)
    delta: float | None = None  # verified search: mean paired loss change of the chosen/best word (confirm half)
    se: float | None = None  # its standard error
    current_loss: float | None = None  # the current symbol's task loss on the search half
