"""An offline text corpus: prose passages from the Python standard library's own sources.

    <root>/**/*.py ─ast─► docstring paragraphs ┐
                  ─ast─► prose string literals ├─► whitespace-normalised, length-filtered,
                  ─lines► comment paragraphs   ┘   de-duplicated (case-folded) ─► passages (sorted order)
                                                                        └─► cache: corpus_<key>.json

The root defaults to the running interpreter's standard library, so the corpus differs between Python
versions; the cache key covers the root, every file's size and mtime, and the extraction settings.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import re
import sys
import sysconfig
from pathlib import Path

from ...io import atomic_write_json, read_json

__all__ = ["build_corpus", "corpus_summary", "extract_passages", "stdlib_root"]

_PARA_SPLIT = re.compile(r"\n\s*\n")
_SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}
_CODING = re.compile(r"^#.*coding[:=]")  # PEP 263 encoding declarations
_DOC_NODES = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_root() -> Path:
    """The running interpreter's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def _normalise(text: str) -> str:
    return " ".join(text.split())


def _is_prose(text: str, min_chars: int, min_words: int = 6) -> bool:
    """Long enough, valid UTF-8, and mostly letters and spaces (drops code, hex tables, format strings)."""
    if len(text) < min_chars or len(text.split()) < min_words or not text.isprintable():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates in codec tests
        return False
    return sum(c.isalpha() or c == " " for c in text) / len(text) >= 0.8


def _docstring_ids(tree: ast.AST) -> tuple[list[str], set[int]]:
    """The docstrings of a module, its classes and functions, and the ids of their constant nodes."""
    docs, ids = [], set()
    for node in ast.walk(tree):
        if isinstance(node, _DOC_NODES) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                if isinstance(first.value.value, str):
                    docs.append(ast.get_docstring(node) or "")
                    ids.add(id(first.value))
    return docs, ids


def _comment_paragraphs(source: str) -> list[str]:
    """Runs of consecutive whole-line ``#`` comments, joined (shebangs and encoding lines dropped)."""
    out, run = [], []
    for line in [*source.splitlines(), ""]:
        s = line.strip()
        if s.startswith("#") and not s.startswith("#!") and not _CODING.match(s):
            run.append(s.lstrip("#").strip())
        elif run:
            out.append(" ".join(run))
            run = []
    return out


def extract_passages(source: str, min_chars: int = 40) -> list[tuple[str, str]]:
    """Prose passages of one Python source as ``(kind, text)``; kind is "docstring", "string" or "comment".

    Docstrings and string literals are split into blank-line-separated paragraphs. A source that does not
    parse yields its comment paragraphs only.
    """
    found: list[tuple[str, str]] = []
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        tree = None
    if tree is not None:
        docs, doc_ids = _docstring_ids(tree)
        for doc in docs:
            found += [("docstring", p) for p in _PARA_SPLIT.split(doc)]
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in doc_ids:
                found += [("string", p) for p in _PARA_SPLIT.split(node.value)]
    found += [("comment", p) for p in _comment_paragraphs(source)]
    out = []
    for kind, text in found:
        text = _normalise(text)
        if _is_prose(text, min_chars):
            out.append((kind, text))
    return out


def _source_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        files += [Path(dirpath) / f for f in sorted(filenames) if f.endswith(".py")]
    return files


def _corpus_key(root: Path, files: list[Path], min_chars: int, max_chars: int) -> str:
    h = hashlib.sha256(f"v1|{root}|{min_chars}|{max_chars}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(root)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def build_corpus(
    root: str | os.PathLike | None = None,
    min_chars: int = 40,
    max_chars: int = 1000,
    cache_dir: str | os.PathLike | None = None,
) -> list[str]:
    """De-duplicated prose passages of every ``.py`` file under ``root``, in file order.

    Args:
        root: Folder to read; None or "" for the running interpreter's standard library.
        min_chars: Shorter passages are dropped.
        max_chars: Longer passages are cut to this many characters (MiniLM reads 256 tokens anyway).
        cache_dir: Where ``corpus_<key>.json`` is kept; None for no cache.

    Returns:
        The passages; duplicates (after whitespace normalisation and case folding) kept once.
    """
    root = Path(root) if root else stdlib_root()
    if not root.is_dir():
        raise FileNotFoundError(f"corpus_root {str(root)!r}: not a folder")
    files = _source_files(root)
    if not files:
        raise ValueError(f"corpus_root {str(root)!r}: no .py files under it")
    cache = Path(cache_dir) / f"corpus_{_corpus_key(root, files, min_chars, max_chars)}.json" if cache_dir else None
    if cache is not None and cache.exists():
        return read_json(cache)["passages"]
    seen: set[str] = set()
    passages: list[str] = []
    for path in files:
        try:
            source = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue  # a few test files are deliberately in other encodings
        for _, text in extract_passages(source, min_chars):
            text = text[:max_chars]
            if text.casefold() not in seen:
                seen.add(text.casefold())
                passages.append(text)
    if cache is not None:
        atomic_write_json(cache, {"root": str(root), "python": sys.version.split()[0], "passages": passages}, 0)
    return passages


def corpus_summary(passages: list[str]) -> dict:
    """Size figures for the results header."""
    n = len(passages)
    return {"passages": n, "mean_chars": sum(map(len, passages)) / max(n, 1)}


if __name__ == "__main__":  # a quick count: python -m salmonn_symbols.experiments.rewa.corpus [ROOT]
    ps = build_corpus(sys.argv[1] if len(sys.argv) > 1 else None)
    print(json.dumps(corpus_summary(ps)))
