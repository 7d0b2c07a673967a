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


# ---------------------------------------------------------------------- many points: sparse P, grid repulsion
def _knn_affinities(x: torch.Tensor, perplexity: float, metric: str) -> torch.Tensor:
    """Sparse symmetric P from the ``3 * perplexity`` nearest neighbours of each point (as scikit-learn's
    Barnes-Hut t-SNE does), as a coalesced (N, N) sparse tensor."""
    n = x.shape[0]
    k = min(n - 1, int(3 * perplexity + 1))
    if metric == "cosine":
        x = F.normalize(x, dim=1)
    sq = x.pow(2).sum(1)
    dists, cols = [], []
    for rows in torch.arange(n).split(2048):  # (2048, N) distance blocks
        d = (sq[rows, None] + sq[None, :] - 2 * x[rows] @ x.T).clamp_min(0)
        if metric == "cosine":
            d = d / 2  # 1 - cos for unit vectors
        d[torch.arange(len(rows)), rows] = float("inf")
        v, i = d.topk(k, dim=1, largest=False)
        dists.append(v)
        cols.append(i)
    d, cols = torch.cat(dists).double(), torch.cat(cols)
    target = np.log(perplexity)
    lo, hi = torch.full((n, 1), 1e-20, dtype=d.dtype), torch.full((n, 1), 1e20, dtype=d.dtype)
    beta = torch.ones(n, 1, dtype=d.dtype) / d.mean(1, keepdim=True).clamp_min(1e-12)
    for _ in range(64):
        p = (-(d - d[:, :1]) * beta).softmax(dim=1)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(1, keepdim=True)
        too_flat = entropy > target
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(hi >= 1e19, beta * 2, (lo + hi) / 2)
    rows = torch.arange(n).repeat_interleave(k)
    p = torch.sparse_coo_tensor(torch.stack([rows, cols.reshape(-1)]), p.reshape(-1).float(), (n, n))
    return ((p + p.t()) / (2 * n)).coalesce()


def _deposit(y: torch.Tensor, origin: torch.Tensor, h: float, g: int):
    """Cloud-in-cell weights: each point spreads over the 4 grid nodes around it. Returns flat node
    indices (N, 4) and weights (N, 4)."""
    u = (y - origin) / h
    i0 = u.floor().long().clamp(0, g - 2)
    f = u - i0
    ix = torch.stack([i0[:, 0], i0[:, 0] + 1, i0[:, 0], i0[:, 0] + 1], 1)
    iy = torch.stack([i0[:, 1], i0[:, 1], i0[:, 1] + 1, i0[:, 1] + 1], 1)
    wx = torch.stack([1 - f[:, 0], f[:, 0], 1 - f[:, 0], f[:, 0]], 1)
    wy = torch.stack([1 - f[:, 1], 1 - f[:, 1], f[:, 1], f[:, 1]], 1)
    return ix * g + iy, wx * wy


def _repulsion(y: torch.Tensor, spacing: float = 0.4, max_grid: int = 384):
    """Sum over j of the t-SNE kernel terms, on a grid with FFT convolutions (a particle-mesh method; the
    idea of Linderman et al., 2019, FIt-SNE, with linear instead of polynomial interpolation).

    Returns ``rep`` (N, 2) = sum_j w_ij^2 (y_i - y_j) and ``z`` = sum_{i != j} w_ij with
    ``w = 1 / (1 + |y_i - y_j|^2)``."""
    lo, hi = y.min(0).values, y.max(0).values
    span = float((hi - lo).max()) + 2 * spacing
    g = int(min(max_grid, max(16, np.ceil(span / spacing) + 2)))
    h = span / (g - 2)
    origin = lo - h / 2
    nodes, w = _deposit(y, origin, h, g)
    charges = torch.stack([torch.ones_like(y[:, 0]), y[:, 0], y[:, 1]], 0)  # (3, N)
    grid = torch.zeros(3, g * g, dtype=y.dtype)
    grid.index_add_(1, nodes.reshape(-1), (charges[:, :, None] * w[None]).reshape(3, -1))
    # Kernels on the (2g, 2g) torus, offsets -g+1 .. g-1 in grid units.
    r = torch.arange(2 * g, dtype=y.dtype)
    r = torch.where(r < g, r, r - 2 * g) * h
    d2 = r[:, None] ** 2 + r[None, :] ** 2
    k1, k2 = 1 / (1 + d2), 1 / (1 + d2) ** 2
    padded = torch.zeros(3, 2 * g, 2 * g, dtype=y.dtype)
    padded[:, :g, :g] = grid.reshape(3, g, g)
    fq = torch.fft.rfft2(padded)
    conv2 = torch.fft.irfft2(fq * torch.fft.rfft2(k2), s=(2 * g, 2 * g))[:, :g, :g].reshape(3, -1)
    conv1 = torch.fft.irfft2(fq[0] * torch.fft.rfft2(k1), s=(2 * g, 2 * g))[:g, :g].reshape(-1)
    at = lambda field: (field[..., nodes] * w).sum(-1)  # noqa: E731  interpolate back to the points
    s2 = at(conv2)  # (3, N): sum_j w_ij^2 * (1, y_j)
    rep = y * s2[0][:, None] - s2[1:].T
    z = at(conv1).sum() - len(y)  # remove the i = j terms
    return rep, z


def tsne_fast(x: np.ndarray, perplexity: float = 30.0, n_iter: int = 1000, seed: int = 0,
              metric: str = "euclidean") -> np.ndarray:
    """x (N, D) -> (N, 2): t-SNE for tens of thousands of points in seconds.

    The same objective and optimiser settings as scikit-learn's defaults (perplexity 30, early
    exaggeration 12 for 250 iterations, learning rate ``max(N / 12 / 4, 50)``, momentum 0.5 then 0.8,
    gains, PCA initialisation), with the affinities restricted to ``3 * perplexity`` neighbours as in
    Barnes-Hut t-SNE, and the repulsive forces computed on a grid by FFT (:func:`_repulsion`) instead
    of a Barnes-Hut tree. Runs on one thread (many small steps; see :func:`tsne`).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        n = xt.shape[0]
        perplexity = min(perplexity, (n - 1) / 3)
        torch.set_num_threads(threads)  # the neighbour search is one big matrix product: use the cores
        p = _knn_affinities(xt, perplexity, metric)
        torch.set_num_threads(1)
        rows, cols = p.indices()
        pv = p.values()
        centred = xt.double() - xt.double().mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        y = centred @ v[:2].T
        y = (y / y[:, 0].std() * 1e-4).float()
        lr = max(n / 12.0 / 4, 50.0)
        update, gains = torch.zeros_like(y), torch.ones_like(y)
        for it in range(n_iter):
            exaggeration, momentum = (12.0, 0.5) if it < 250 else (1.0, 0.8)
            diff = y[rows] - y[cols]
            attract = torch.zeros_like(y).index_add_(0, rows, (pv / (1 + diff.pow(2).sum(1)))[:, None] * diff)
            rep, z = _repulsion(y)
            grad = 4 * (exaggeration * attract - rep / z)
            same_sign = (grad > 0) == (update > 0)
            gains = torch.where(same_sign, gains * 0.8, gains + 0.2).clamp_min(0.01)
            update = momentum * update - lr * gains * grad
            y = y + update
        return y.numpy()
    finally:
        torch.set_num_threads(threads)
