"""Whether the optional offline model packages (and espeak-ng) are here, for tests that need them."""

import importlib.metadata
import shutil


def skip_reason(*dists: str) -> str | None:
    """The reason to skip, or None when every distribution and espeak-ng are installed."""
    for d in dists:
        try:
            importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            return f"{d} is not installed (pip install --no-deps {d})"
    return None if shutil.which("espeak-ng") else "espeak-ng is not installed"
