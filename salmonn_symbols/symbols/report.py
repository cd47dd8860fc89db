"""The discovery files: ``cycle_N_tokens.json`` and ``cycle_N_symbols.json``, their schemas and readers.

The files carry exactly the fields of the seed's examples plus, per token, the top-k candidates, the margin
to the runner-up and the confidence band, and, per label, the candidate words and why a symbol was kept.
They are the source of truth for what discovery decided; dashboards are views of them.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

from ..io import atomic_write_json, read_json
from .records import SymbolChange, TokenDiscovery

__all__ = [
    "discovery_paths",
    "evolution_table",
    "read_cycles",
    "load_schema",
    "read_evolution",
    "symbols_report",
    "tokens_report",
    "validate_discovery_dir",
    "validate_report",
    "write_discovery",
]

_SCHEMAS = {"tokens": "cycle_tokens.schema.json", "symbols": "cycle_symbols.schema.json"}
_FILE_RE = re.compile(r"^cycle_(\d+)_(tokens|symbols)\.json$")


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S")


def tokens_report(tokens: Sequence[TokenDiscovery], cycle: int, timestamp: str | None = None) -> dict[str, Any]:
    """The ``cycle_N_tokens.json`` object."""
    discoveries = []
    for t in tokens:
        d = asdict(t)
        # seed field order first, additions after
        discoveries.append(
            {
                k: d[k]
                for k in (
                    "original_token_id",
                    "original_text",
                    "discovered_token_id",
                    "discovered_text",
                    "similarity",
                    "label",
                    "position",
                    "margin",
                    "confidence",
                    "top_k",
                    "search_top",
                    "proposed_by",
                )
            }
        )
    return {
        "cycle": cycle,
        "timestamp": timestamp or _now(),
        "total_tokens": len(tokens),
        "changed_tokens": sum(t.discovered_token_id != t.original_token_id for t in tokens),
        "discoveries": discoveries,
    }


def symbols_report(
    changes: Sequence[SymbolChange], cycle: int, timestamp: str | None = None, max_candidates: int = 10
) -> dict[str, Any]:
    """The ``cycle_N_symbols.json`` object."""
    entries = []
    for c in changes:
        entries.append(
            {
                "original_label": c.original_label,
                "current_symbol": c.current_symbol,
                "discovered_symbol": c.discovered_symbol,
                "change_type": c.change_type,
                "token_mapping": dict(c.token_mapping),
                "similarity": c.similarity,
                "margin": c.margin,
                "confidence": c.confidence,
                "reason": c.reason,
                "delta": c.delta,
                "se": c.se if c.se is None or c.se != float("inf") else None,
                "current_loss": c.current_loss,
                "candidates": [
                    {"symbol": k.symbol, "token_ids": list(k.token_ids), "score": k.score, "loss": k.loss}
                    for k in c.candidates[:max_candidates]
                ],
            }
        )
    return {
        "cycle": cycle,
        "timestamp": timestamp or _now(),
        "total_symbols": len(changes),
        "changed_symbols": sum(c.discovered_symbol != c.current_symbol for c in changes),
        "symbol_changes": entries,
        "final_mappings": {c.original_label: c.discovered_symbol for c in changes},
    }


def discovery_paths(out_dir: str | Path, cycle: int) -> tuple[Path, Path]:
    """Paths of the tokens and symbols files of ``cycle`` under ``out_dir``."""
    out_dir = Path(out_dir)
    return out_dir / f"cycle_{cycle}_tokens.json", out_dir / f"cycle_{cycle}_symbols.json"


def write_discovery(
    out_dir: str | Path, cycle: int, tokens: Sequence[TokenDiscovery], changes: Sequence[SymbolChange]
) -> tuple[Path, Path]:
    """Validates and atomically writes both discovery files of ``cycle``; call on rank 0 only."""
    stamp = _now()
    tok, sym = tokens_report(tokens, cycle, stamp), symbols_report(changes, cycle, stamp)
    validate_report(tok, "tokens")
    validate_report(sym, "symbols")
    tok_path, sym_path = discovery_paths(out_dir, cycle)
    atomic_write_json(tok_path, tok)
    atomic_write_json(sym_path, sym)
    return tok_path, sym_path


def load_schema(kind: str) -> dict[str, Any]:
    """The packaged JSON Schema of ``kind`` ("tokens" or "symbols")."""
    if kind not in _SCHEMAS:
        raise ValueError(f"unknown report kind {kind!r}; expected one of {sorted(_SCHEMAS)}")
    text = resources.files("salmonn_symbols.schemas").joinpath(_SCHEMAS[kind]).read_text("utf-8")
    return json.loads(text)


def validate_report(obj: Any, kind: str, source: str = "") -> None:
    """Validates a report against its schema.

    Raises:
        ValueError: naming the source and the JSON path of the first violation.
    """
    import jsonschema

    validator = jsonschema.Draft202012Validator(load_schema(kind))
    errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
    if errors:
        e = errors[0]
        where = "/".join(str(p) for p in e.absolute_path) or "<root>"
        raise ValueError(f"{source or kind + ' report'}: {where}: {e.message} ({len(errors)} error(s))")


def validate_discovery_dir(path: str | Path) -> list[Path]:
    """Validates every ``cycle_N_{tokens,symbols}.json`` under ``path``; returns the files checked."""
    files = sorted(p for p in Path(path).iterdir() if _FILE_RE.match(p.name))
    if not files:
        raise FileNotFoundError(f"{path}: no cycle_N_tokens.json / cycle_N_symbols.json files")
    for p in files:
        validate_report(read_json(p), _FILE_RE.match(p.name).group(2), source=str(p))
    return files


def read_evolution(path: str | Path) -> list[tuple[int, dict[str, str]]]:
    """(cycle, final_mappings) of every ``cycle_N_symbols.json`` under ``path``, by cycle."""
    out = []
    for p in Path(path).iterdir():
        m = _FILE_RE.match(p.name)
        if m and m.group(2) == "symbols":
            out.append((int(m.group(1)), read_json(p)["final_mappings"]))
    return sorted(out)


def read_cycles(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """(cycle, content) of every ``cycle_N_symbols.json`` in ``path`` (a run folder or its ``discovery/``), by
    cycle; FileNotFoundError names the folder when there is none."""
    path = Path(path)
    folder = path / "discovery" if (path / "discovery").is_dir() else path
    out = []
    for p in folder.iterdir() if folder.is_dir() else ():
        m = _FILE_RE.match(p.name)
        if m and m.group(2) == "symbols":
            out.append((int(m.group(1)), read_json(p)))
    if not out:
        raise FileNotFoundError(f"{path}: no cycle_N_symbols.json files (looked in {folder})")
    return sorted(out, key=lambda x: x[0])


def evolution_table(path: str | Path) -> str:
    """The label × cycle table of a run: the symbols each cycle started from, then each discovery's symbol with
    its cosine similarity and change type."""
    cycles = read_cycles(path)
    first = cycles[0][1]["symbol_changes"]
    labels = [c["original_label"] for c in first]
    rows = [["label", f"cycle {cycles[0][0] - 1}"] + [f"cycle {n}" for n, _ in cycles]]
    for lab in labels:
        row = [lab, next(c["current_symbol"] for c in first if c["original_label"] == lab)]
        for _, data in cycles:
            ch = next((c for c in data["symbol_changes"] if c["original_label"] == lab), None)
            row.append("?" if ch is None else f"{ch['discovered_symbol']} ({ch['similarity']:.2f} {ch['change_type']})")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows)
