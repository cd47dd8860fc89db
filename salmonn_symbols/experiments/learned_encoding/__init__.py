"""learned-encoding: can a token code learned with the model at 1/10 of the embedding width match a full one?

salmonn-symbols experiment learned-encoding [--preset quick|full] [--config F.yaml] [--key value ...]

arms at code width r = d / ratio, same steps:  full (V×d) · joint (V×r → r×d, learned with the model)
    · autoencoder (MLP d→r→d fitted to the trained full table, codes frozen) · svd (rank-r of that table,
    frozen) · random (fixed N(0, 1) codes); untied output head, and a variant tied to the input encoding
data: CPython stdlib .py (split by file, BPE-8k fitted on train) · a bacterial chromosome (held-out blocks,
    order-k Markov baseline) · the seed's three toys (exact entropy bounds)
─► held-out bits/byte, bits/base, bits/token; embedding params and bytes; steps to 110% of the final
   full-arm loss; wall time ─► results.json, results.md, loss_vs_ratio.png, training_curves.png, logs/
"""

from ..common import Experiment
from .config import PRESETS, LearnedEncodingConfig
from .experiment import run

__all__ = ["EXPERIMENT", "LearnedEncodingConfig"]

EXPERIMENT = Experiment(
    name="learned-encoding",
    description="Learned low-dimensional token encodings vs full, autoencoder, SVD and random codes",
    config_cls=LearnedEncodingConfig,
    run=run,
    presets=PRESETS,
)
