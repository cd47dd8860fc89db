"""Atomic file writes.

Every JSON, checkpoint and text file the framework writes goes through these helpers: the content is written
to a temporary file in the destination folder, flushed to disk, and renamed over the destination, so a reader
(or a resumed run after a crash) sees either the old file or the new one, never half of one.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "read_json",
    "replace_dir",
]


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Calls ``write`` on a temporary file next to ``path`` and renames it onto ``path``.

    Args:
        path: Destination file. Its parent folders are created.
        write: Receives a binary file object and writes the content.

    Returns:
        The destination path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Writes ``data`` to ``path`` atomically."""
    return atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Writes UTF-8 ``text`` to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any, indent: int = 2) -> Path:
    """Serialises ``obj`` as JSON (UTF-8, trailing newline) and writes it atomically.

    The object is serialised before the temporary file is opened, so an unserialisable object leaves no file.
    """
    text = json.dumps(obj, indent=indent, ensure_ascii=False) + "\n"
    return atomic_write_text(path, text)


def replace_dir(src: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Moves a finished folder ``src`` onto ``dest`` (same file system) by renames.

    A reader sees the old folder, briefly none, or the new one, never a half-written one. An existing ``dest`` is
    renamed aside first and deleted only once ``src`` is in place.

    Returns:
        The destination path.
    """
    src, dest = Path(src), Path(dest)
    old = None
    if dest.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old.", dir=dest.parent))
        os.replace(dest, old / dest.name)
    os.replace(src, dest)
    if old is not None:
        shutil.rmtree(old)
    return dest


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file, naming the file and the position in the error if it is not valid JSON."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from None
