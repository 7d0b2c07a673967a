"""Exact t-SNE (van der Maaten & Hinton, 2008) in a few dense tensor operations.

For the few thousand test points of the cpu preset the exact O(N^2) algorithm, written as matrix
operations, is several times faster than scikit-learn's Barnes-Hut implementation on two cores. Larger
inputs fall back to scikit-learn (see :func:`sslnb.plots.tsne_embedding`).

The settings follow scikit-learn's defaults (early exaggeration 12 for the first 250 of 1000
iterations, momentum 0.5 then 0.8, learning rate ``max(N / 12 / 4, 50)``, gains with min 0.01, PCA
initialisation scaled to std 1e-4), and the affinities use the metric the seed's TensorBoard projector
used, cosine distance.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def _affinities(d: torch.Tensor, perplexity: float, iters: int = 64) -> torch.Tensor:
    """Symmetric joint probabilities P (N, N) from distances ``d`` (N, N), each row's conditional
    distribution calibrated by bisection on its precision to entropy log(perplexity)."""
    n = d.shape[0]
    target = np.log(perplexity)
    lo = torch.full((n, 1), 1e-20, dtype=d.dtype)
    hi = torch.full((n, 1), 1e20, dtype=d.dtype)
    beta = torch.ones(n, 1, dtype=d.dtype)
    eye = torch.eye(n, dtype=torch.bool)
    for _ in range(iters):
        logits = (-d * beta).masked_fill(eye, -float("inf"))
        p = logits.softmax(dim=1)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(1, keepdim=True)
        too_flat = entropy > target  # raise the precision
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(hi >= 1e19, beta * 2, (lo + hi) / 2)
    p = (p + p.T) / (2 * n)
    return p.clamp_min(1e-12)


def tsne(x: np.ndarray, perplexity: float = 25.0, n_iter: int = 1000, seed: int = 0,
         metric: str = "cosine") -> np.ndarray:
    """x (N, D) -> (N, 2) embedding. ``metric``: ``cosine`` or ``euclidean`` (squared distances).

    Runs on one thread: the thousand small steps each synchronise threads, and on a busy 2-core machine
    (runs training beside the notebook) two threads made it a hundred times slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _tsne(x, perplexity, n_iter, seed, metric)
    finally:
        torch.set_num_threads(threads)


def _tsne(x, perplexity, n_iter, seed, metric):
    torch.manual_seed(seed)
    xt = torch.as_tensor(np.asarray(x, dtype=np.float64))
    n = xt.shape[0]
    perplexity = min(perplexity, (n - 1) / 3)
    if metric == "cosine":
        xn = F.normalize(xt, dim=1)
        d = (1 - xn @ xn.T).clamp_min(0)
    else:
        d = torch.cdist(xt, xt).pow(2)
    p = _affinities(d, perplexity)

    centred = xt - xt.mean(0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    y = centred @ v[:2].T
    y = (y / y[:, 0].std() * 1e-4).float()
    p = p.float()
    lr = max(n / 12.0 / 4, 50.0)
    update = torch.zeros_like(y)
    gains = torch.ones_like(y)
    for it in range(n_iter):
        exaggeration, momentum = (12.0, 0.5) if it < 250 else (1.0, 0.8)
        sq = y.pow(2).sum(1)
        w = 1.0 / (1.0 + (sq[:, None] + sq[None, :] - 2 * y @ y.T).clamp_min(0))  # Student-t kernel
        w.fill_diagonal_(0)
        a = (exaggeration * p - w / w.sum()) * w
        grad = 4 * (a.sum(1, keepdim=True) * y - a @ y)  # sum_j a_ij (y_i - y_j)
        same_sign = (grad > 0) == (update > 0)
        gains = torch.where(same_sign, gains * 0.8, gains + 0.2).clamp_min(0.01)
        update = momentum * update - lr * gains * grad
        y = y + update
    return y.numpy()
