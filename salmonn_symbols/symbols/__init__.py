"""The symbol-discovery core: pure mathematics on token embeddings and a tokenizer, no SALMONN needed.

Random symbol words, the symbol book, the position-wise symbol MLP, soft/hard quantization, discovery, and
the per-cycle JSON files.
"""

from .book import HistoryEntry, SymbolBook, UnknownLabelError
from .discovery import (
    discover_symbols,
    final_mapping,
    load_override,
    run_discovery,
    symbol_token_table,
    transform_symbol_tokens,
)
from .generate import SymbolGenerationError, english_words, generate_symbols
from .mlp import SymbolMLP
from .quantize import (
    CandidateMasks,
    Codebook,
    TemperatureSchedule,
    build_candidate_masks,
    hard_quantize,
    soft_quantize,
    topk_candidates,
    vocab_cosine,
)
from .records import Candidate, DiscoveryConfig, SymbolChange, TokenDiscovery, confidence_band
from .report import (
    discovery_paths,
    evolution_table,
    load_schema,
    read_cycles,
    read_evolution,
    symbols_report,
    tokens_report,
    validate_discovery_dir,
    validate_report,
    write_discovery,
)
from .search import PROPOSAL_SOURCES, Scorer
from .tokenization import DEFAULT_CONTEXTS, SymbolTokenizer

__all__ = [
    "DEFAULT_CONTEXTS",
    "PROPOSAL_SOURCES",
    "Scorer",
    "Candidate",
    "CandidateMasks",
    "Codebook",
    "DiscoveryConfig",
    "HistoryEntry",
    "SymbolBook",
    "SymbolChange",
    "SymbolGenerationError",
    "SymbolMLP",
    "SymbolTokenizer",
    "TemperatureSchedule",
    "TokenDiscovery",
    "UnknownLabelError",
    "build_candidate_masks",
    "confidence_band",
    "discover_symbols",
    "discovery_paths",
    "english_words",
    "evolution_table",
    "final_mapping",
    "generate_symbols",
    "hard_quantize",
    "load_override",
    "load_schema",
    "read_cycles",
    "read_evolution",
    "run_discovery",
    "soft_quantize",
    "symbol_token_table",
    "symbols_report",
    "tokens_report",
    "topk_candidates",
    "transform_symbol_tokens",
    "validate_discovery_dir",
    "validate_report",
    "vocab_cosine",
    "write_discovery",
]
