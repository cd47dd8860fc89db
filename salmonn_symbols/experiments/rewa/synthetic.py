"""The seed's synthetic set: labelled vectors in 50 classes (5,000 of them at 768 dims in the seed).

    x = normalise( c_y + A·z + σ·ε )     c_y: unit class centre (y ∈ 50 classes)
                                          A·z: within-class variation in a shared latent_dim-dim subspace
                                          σ·ε: isotropic noise over all dims

The seed does not give its generator. With ``latent_dim = 0`` this is the plain Gaussian-blob set; the
latent term gives the within-class structure real embeddings have (a decaying spectrum), so the exact
neighbours of a point depend on more than its class.
"""

from __future__ import annotations

import numpy as np

__all__ = ["make_synthetic"]


def make_synthetic(
    n: int,
    dim: int,
    classes: int,
    latent_dim: int,
    latent_scale: float,
    noise: float,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Samples the labelled set.

    Args:
        n: Number of vectors.
        dim: Their dimension.
        classes: Number of classes (labels are balanced, then shuffled).
        latent_dim: Dimension of the shared within-class subspace (0 for none).
        latent_scale: Standard deviation of each latent coordinate (the centres have norm 1).
        noise: Per-dimension standard deviation of the isotropic noise.
        seed: The generator's seed (the set, not the experiment seed).

    Returns:
        ``(vectors (n, dim) float32 unit rows, labels (n,) int64)``.
    """
    if n < classes or classes < 1 or dim < 1:
        raise ValueError(f"synthetic set: need n >= classes >= 1 and dim >= 1, got n={n} classes={classes} dim={dim}")
    if latent_dim > dim:
        raise ValueError(f"synthetic_latent_dim {latent_dim} exceeds synthetic_dim {dim}")
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)  # (C, D)
    labels = rng.permutation(np.arange(n) % classes)  # (N,)
    x = centres[labels]  # (N, D)
    if latent_dim > 0:
        basis = np.linalg.qr(rng.standard_normal((dim, latent_dim)))[0]  # (D, r), orthonormal columns
        x = x + (rng.standard_normal((n, latent_dim)) * latent_scale) @ basis.T
    x = x + noise * rng.standard_normal((n, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels.astype(np.int64)
