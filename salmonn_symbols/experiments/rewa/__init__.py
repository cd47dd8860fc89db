"""Learned REWA compression for retrieval, held out, against FAISS at equal bytes per vector.

    salmonn-symbols experiment rewa --preset quick          the seed's synthetic 50-class set (CPU, < 2 min)
    salmonn-symbols experiment rewa --preset full --config configs/experiments/rewa.yaml
                                                            + MiniLM embeddings of the stdlib's prose (GPU)

config.py (keys, presets) ─► run.py: data.py (synthetic.py | corpus.py + embed.py) ─► split
    ─► training.py (LightningModule over encoders.py) ─► indexes.py (FAISS) ─► evaluate.py ─► report.py
"""

from ..common import Experiment
from .config import PRESETS, RewaConfig
from .run import run

__all__ = ["EXPERIMENT", "RewaConfig"]

EXPERIMENT = Experiment(
    name="rewa",
    description="Compressed embeddings for retrieval (binary/Hadamard/learned vs FAISS PQ/OPQ), held out",
    config_cls=RewaConfig,
    run=run,
    presets=PRESETS,
)
