"""Real held-out corpora, all offline: CPython's own standard library (byte-level BPE) and a bacterial genome.

code: <stdlib>/**/*.py ─sha1(path)─► train | val | test (whole files) ─► BPE-8k trained on train only
      ─► token streams; unit_len[id] = bytes of token id (byte-level BPE: one character per byte)
dna:  pyrodigal's chromosome (FASTA.gz) ─► A C G T N = 0..4 ─► blocks: every 10th from 4 val, from 9 test
a Corpus ─save/load (.npz)─► worker processes; windows()/random_starts() never cross a segment boundary
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...io import atomic_write, atomic_write_text

__all__ = ["Corpus", "code_corpus", "dna_corpus", "random_starts", "windows"]

SPLITS = ("train", "val", "test")
DNA_ALPHABET = "ACGTN"
# folders of the interpreter's library that hold installed packages, not the standard library
NOT_STDLIB = {"site-packages", "dist-packages", "__pycache__"}


@dataclass
class Corpus:
    """Token data of one dataset, split three ways.

    Attributes:
        name: Dataset name ("code", "dna", or a toy).
        unit: What bits are counted per: "byte", "base" or "token".
        vocab_size: Token ids are in ``[0, vocab_size)``.
        splits: "train"/"val"/"test" → a 1-D stream (int32) or 2-D independent sequences (S, seq_len + 1).
        segments: For streams, the start offsets of contiguous segments (windows never cross one).
        unit_len: (vocab_size,) units each token stands for (bytes of a BPE token; 1 otherwise).
        info: Provenance and sizes, written into results.json.
        bound_bits: The exact entropy per predicted token of a toy (bits), None for real data.
    """

    name: str
    unit: str
    vocab_size: int
    splits: dict[str, np.ndarray]
    segments: dict[str, np.ndarray] = field(default_factory=dict)
    unit_len: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    bound_bits: float | None = None

    def save(self, path: Path) -> Path:
        """Writes the corpus as one .npz (atomically) for worker processes."""
        arrays = {f"split_{k}": v for k, v in self.splits.items()}
        arrays |= {f"seg_{k}": v for k, v in self.segments.items()}
        meta = {"name": self.name, "unit": self.unit, "vocab_size": self.vocab_size, "info": self.info}
        meta["bound_bits"] = self.bound_bits
        arrays["unit_len"] = self.unit_len if self.unit_len is not None else np.ones(self.vocab_size, np.float32)
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        return atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: Path) -> Corpus:
        """Reads a corpus written by `save`."""
        with np.load(path) as z:
            meta = json.loads(z["meta"].tobytes().decode())
            splits = {k[6:]: z[k] for k in z.files if k.startswith("split_")}
            segments = {k[4:]: z[k] for k in z.files if k.startswith("seg_")}
            unit_len = z["unit_len"]
        return cls(
            meta["name"], meta["unit"], meta["vocab_size"], splits, segments, unit_len, meta["info"], meta["bound_bits"]
        )


# ------------------------------------------------------------------------------------------------ windows
def _segment_bounds(corpus: Corpus, split: str) -> list[tuple[int, int]]:
    data = corpus.splits[split]
    starts = list(corpus.segments.get(split, np.array([0])))
    return list(zip(starts, [*starts[1:], len(data)], strict=True))


def windows(corpus: Corpus, split: str, length: int, limit: int = 0) -> np.ndarray:
    """Non-overlapping windows of ``length`` tokens inside segments (toys: the sequences).

    Args:
        limit: When > 0 and there are more windows, this many evenly spaced ones (the whole split is sampled).

    Returns:
        (N, length) int64 array.
    """
    data = corpus.splits[split]
    if data.ndim == 2:
        out = data[:, :length]
    else:
        rows = [
            data[a : a + length]
            for lo, hi in _segment_bounds(corpus, split)
            for a in range(lo, hi - length + 1, length)
        ]
        if not rows:
            raise ValueError(f"{corpus.name}/{split}: no window of {length} tokens fits (split too small)")
        out = np.stack(rows)
    if 0 < limit < len(out):
        out = out[np.linspace(0, len(out) - 1, limit).astype(np.int64)]
    return out.astype(np.int64)


def random_starts(corpus: Corpus, split: str, length: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` random window starts (rows, for toys) such that a window of ``length`` fits in one segment."""
    data = corpus.splits[split]
    if data.ndim == 2:
        return rng.integers(0, len(data), size=n)
    bounds = [(lo, hi - length + 1) for lo, hi in _segment_bounds(corpus, split) if hi - lo >= length]
    if not bounds:
        raise ValueError(f"{corpus.name}/{split}: no window of {length} tokens fits (split too small)")
    sizes = np.array([hi - lo for lo, hi in bounds], dtype=np.float64)
    which = rng.choice(len(bounds), size=n, p=sizes / sizes.sum())
    offsets = rng.random(n) * sizes[which]
    return np.array([bounds[w][0] for w in which]) + offsets.astype(np.int64)


# ------------------------------------------------------------------------------------------------ code
def _split_of(rel: str, val_frac: float, test_frac: float) -> tuple[str, float]:
    """A file's split and its hashed order, from its relative path only (stable across machines)."""
    u = int.from_bytes(hashlib.sha1(rel.encode()).digest()[:8], "big") / 2**64
    return ("val" if u < val_frac else "test" if u < val_frac + test_frac else "train"), u


def _read_code_files(root: Path, val_frac: float, test_frac: float, caps: dict[str, int]) -> tuple[dict, dict]:
    """Texts per split, whole files in hashed order until the split's byte cap; and counts for the record."""
    files = sorted(p for p in root.rglob("*.py") if not NOT_STDLIB & set(p.relative_to(root).parts))
    if not files:
        raise ValueError(f"code_root {str(root)!r}: no .py files found")
    keyed = sorted((_split_of(p.relative_to(root).as_posix(), val_frac, test_frac), p) for p in files)
    texts: dict[str, list[str]] = {s: [] for s in SPLITS}
    nbytes = dict.fromkeys(SPLITS, 0)
    skipped = 0
    for (split, _), path in keyed:
        if caps[split] and nbytes[split] >= caps[split]:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            skipped += 1  # a few test files are deliberately not UTF-8
            continue
        texts[split].append(text)
        nbytes[split] += len(text.encode("utf-8"))
    info = {"files_found": len(files), "not_utf8_or_unreadable": skipped}
    info |= {f"{s}_files": len(texts[s]) for s in SPLITS} | {f"{s}_bytes": nbytes[s] for s in SPLITS}
    return texts, info


def code_corpus(cfg, out_dir: Path) -> Corpus:
    """The standard library's own .py files, split by file, tokenized by a byte-level BPE fitted on train.

    Args:
        cfg: The experiment config (code_root, code_vocab, code_*_frac, code_*_bytes).
        out_dir: Where the trained tokenizer is saved (``code_tokenizer.json``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    root = Path(cfg.code_root or sysconfig.get_paths()["stdlib"])
    if not root.is_dir():
        raise ValueError(f"code_root {str(root)!r} is not a folder")
    caps = {"train": cfg.code_train_bytes, "val": cfg.code_eval_bytes, "test": cfg.code_eval_bytes}
    texts, info = _read_code_files(root, cfg.code_val_frac, cfg.code_test_frac, caps)
    for s in SPLITS:
        if not texts[s]:
            raise ValueError(f"code_root {str(root)!r}: the {s} split got no files; change code_*_frac")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    trainer = trainers.BpeTrainer(vocab_size=cfg.code_vocab, initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts["train"], trainer)
    atomic_write_text(out_dir / "code_tokenizer.json", tok.to_str())
    vocab = tok.get_vocab()
    unit_len = np.zeros(tok.get_vocab_size(), np.float32)
    for piece, i in vocab.items():
        unit_len[i] = len(piece)  # byte-level alphabet: one character per byte
    splits = {s: np.concatenate([e.ids for e in tok.encode_batch(texts[s])]).astype(np.int32) for s in SPLITS}
    info |= {"root": str(root), "python": sys.version.split()[0], "vocab_size": tok.get_vocab_size()}
    info |= {f"{s}_tokens": int(len(v)) for s, v in splits.items()}
    info["bytes_per_token_test"] = float(unit_len[splits["test"]].mean())
    return Corpus("code", "byte", tok.get_vocab_size(), splits, {}, unit_len, info)


# ------------------------------------------------------------------------------------------------ DNA
def default_dna_path() -> Path:
    """The chromosome shipped in pyrodigal's test data, located without importing pyrodigal."""
    spec = importlib.util.find_spec("pyrodigal")
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("dna_path is empty and pyrodigal is not installed; set dna_path to a FASTA(.gz) file")
    return Path(next(iter(spec.submodule_search_locations))) / "tests/data/GCF_001457455.1_NCTC11397_genomic.fna.gz"


def read_fasta(path: Path) -> tuple[str, list[str]]:
    """All records' sequences concatenated (upper case) and the record headers."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ValueError(f"dna_path {str(path)!r}: cannot read ({e})") from e
    headers = [ln[1:].strip() for ln in lines if ln.startswith(">")]
    if not headers:
        raise ValueError(f"dna_path {str(path)!r}: not FASTA (no '>' header line)")
    return "".join(ln.strip() for ln in lines if not ln.startswith(">")).upper(), headers


def dna_corpus(cfg) -> Corpus:
    """The chromosome as A, C, G, T, N (0..4), with held-out contiguous blocks for validation and test."""
    path = Path(cfg.dna_path) if cfg.dna_path else default_dna_path()
    seq, headers = read_fasta(path)
    lut = np.full(256, 4, np.int32)
    for i, base in enumerate("ACGT"):
        lut[ord(base)] = i
    ids = lut[np.frombuffer(seq.encode("ascii", "replace"), np.uint8)]
    edges = np.linspace(0, len(ids), cfg.dna_blocks + 1).astype(np.int64)
    role = ["val" if b % 10 == 4 else "test" if b % 10 == 9 else "train" for b in range(cfg.dna_blocks)]
    splits, segments = {}, {}
    for s in SPLITS:
        parts, starts, prev = [], [], None
        for b in range(cfg.dna_blocks):
            if role[b] != s:
                continue
            if prev != b - 1:  # a new contiguous run of blocks starts a new segment
                starts.append(sum(len(p) for p in parts))
            parts.append(ids[edges[b] : edges[b + 1]])
            prev = b
        splits[s], segments[s] = np.concatenate(parts), np.array(starts, np.int64)
    info = {"path": str(path), "records": headers, "bases": len(ids), "n_fraction": float((ids == 4).mean())}
    info |= {f"{s}_bases": int(len(splits[s])) for s in SPLITS} | {f"{s}_regions": len(segments[s]) for s in SPLITS}
    return Corpus("dna", "base", len(DNA_ALPHABET), splits, segments, None, info)
