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


def _calibrate(d: torch.Tensor, perplexity: float, beta: torch.Tensor, iters: int = 64) -> torch.Tensor:
    """Rows ``softmax(-d * beta)`` (``d`` (N, M), ``inf`` for excluded entries), each row's precision
    ``beta`` (N, 1, the starting value) found by bisection so that its entropy is log(perplexity)."""
    target = np.log(perplexity)
    lo = torch.full_like(beta, 1e-20)
    hi = torch.full_like(beta, 1e20)
    for _ in range(iters):
        p = (-d * beta).softmax(dim=1)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(1, keepdim=True)
        too_flat = entropy > target  # raise the precision
        lo = torch.where(too_flat, beta, lo)
        hi = torch.where(too_flat, hi, beta)
        beta = torch.where(hi >= 1e19, beta * 2, (lo + hi) / 2)
    return p


def _affinities(d: torch.Tensor, perplexity: float, iters: int = 64) -> torch.Tensor:
    """Symmetric joint probabilities P (N, N) from distances ``d`` (N, N), each row's conditional
    distribution calibrated by bisection on its precision to entropy log(perplexity)."""
    n = d.shape[0]
    d = d.masked_fill(torch.eye(n, dtype=torch.bool), float("inf"))
    p = _calibrate(d, perplexity, torch.ones(n, 1, dtype=d.dtype), iters)
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
        w = torch.addmm(sq[:, None] + sq[None, :], y, y.T, alpha=-2)  # squared distances, in place below
        w.clamp_min_(0).add_(1).reciprocal_().fill_diagonal_(0)  # Student-t kernel
        a = torch.mul(p, exaggeration).sub_(w, alpha=1.0 / w.sum().item()).mul_(w)
        grad = 4 * (a.sum(1, keepdim=True) * y - a @ y)  # sum_j a_ij (y_i - y_j)
        same_sign = (grad > 0) == (update > 0)
        gains = torch.where(same_sign, gains * 0.8, gains + 0.2).clamp_min(0.01)
        update = momentum * update - lr * gains * grad
        y = y + update
    return y.numpy()


# ---------------------------------------------------------------------- many points: sparse P, grid repulsion
def _knn_affinities(x: torch.Tensor, perplexity: float, metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Each point's ``k = 3 * perplexity`` nearest neighbours (as in scikit-learn's Barnes-Hut t-SNE)
    and their conditional probabilities calibrated to the perplexity. Returns ``cols`` (N, k) and
    ``p`` (N, k) with rows summing to 1; the symmetric joint P is ``(p + p^T) / (2N)`` on this graph."""
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
    beta = 1 / d.mean(1, keepdim=True).clamp_min(1e-12)
    p = _calibrate(d - d[:, :1], perplexity, beta)  # shifted by the nearest distance: same softmax, no underflow
    return cols, p.float()


def _attraction(y: torch.Tensor, cols: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """sum_j P_ij w_ij (y_i - y_j) (N, 2) for the symmetric P = (p + p^T) / (2N) on the kNN graph: each
    edge i -> j adds its term to i and subtracts it from j. (Coordinates are handled as separate
    contiguous arrays: about 4x faster than (N, k, 2) tensors on a CPU.)"""
    n, k = cols.shape
    flat = cols.reshape(-1)
    out = []
    d = [y[:, c, None] - y[:, c].contiguous().index_select(0, flat).view(n, k) for c in (0, 1)]  # (N, k) each
    q = p / (2 * n) / (1 + d[0] * d[0] + d[1] * d[1])
    for dc in d:
        t = q * dc
        out.append(t.sum(1) - torch.zeros(n, dtype=y.dtype).index_add_(0, flat, t.view(-1)))
    return torch.stack(out, 1)


SPACING = 0.5  # grid spacing in embedding units (the kernel's width is 1)


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


_FFT_SIZES = (16, 24, 32, 48, 64, 96, 128, 192, 256, 384)  # 2^a 3^b: fast FFT lengths (padded to twice)


def _kernels_fft(g: int, h: float, dtype) -> torch.Tensor:
    """FFTs of the kernels 1/(1+r^2) and 1/(1+r^2)^2 on the (2g, 2g) torus with spacing h: (2, 2g, g+1)."""
    r = torch.arange(2 * g, dtype=dtype)
    r = torch.where(r < g, r, r - 2 * g) * h
    k1 = 1 / (1 + r[:, None] ** 2 + r[None, :] ** 2)
    # Undo the smoothing of cloud-in-cell deposit and interpolation (each multiplies frequency m by
    # sinc^2(pi m / 2g) per axis), as particle-mesh codes do.
    m = torch.fft.fftfreq(2 * g, dtype=dtype) * torch.pi  # pi m / 2g
    mr = torch.fft.rfftfreq(2 * g, dtype=dtype) * torch.pi
    sinc = lambda t: torch.where(t == 0, torch.ones_like(t), torch.sin(t) / t)  # noqa: E731
    window = sinc(m)[:, None] ** 4 * sinc(mr)[None, :] ** 4
    return torch.fft.rfft2(torch.stack([k1, k1 * k1])) / window


def _repulsion(y: torch.Tensor, spacing: float = SPACING, cache: dict | None = None):
    """Sum over j of the t-SNE kernel terms, on a grid with FFT convolutions (a particle-mesh method; the
    idea of Linderman et al., 2019, FIt-SNE, with linear instead of polynomial interpolation).

    The grid has ``spacing`` (embedding units) between nodes, or a coarser one on a ladder of sizes when
    the embedding outgrows 384 nodes a side; kernel FFTs are kept in ``cache`` per (size, spacing).
    Returns ``rep`` (N, 2) = sum_j w_ij^2 (y_i - y_j) and ``z`` = sum_{i != j} w_ij with
    ``w = 1 / (1 + |y_i - y_j|^2)``."""
    lo, hi = y.min(0).values, y.max(0).values
    span = float((hi - lo).max()) + 2 * spacing
    h = spacing
    if span / h + 2 > _FFT_SIZES[-1]:  # a coarser spacing, from a ladder so that kernels can be reused
        h = spacing * 2 ** (np.ceil(8 * np.log2(span / (_FFT_SIZES[-1] - 2) / spacing)) / 8)
    g = next(s for s in _FFT_SIZES if s >= span / h + 2)
    key = (g, h)
    if cache is None or key not in cache:
        kernels = _kernels_fft(g, h, y.dtype)
        if cache is not None:
            cache[key] = kernels
    else:
        kernels = cache[key]
    origin = lo - (g * h - (hi - lo)) / 2  # centre the points on the grid
    nodes, w = _deposit(y, origin, h, g)
    flat = nodes.reshape(-1)
    charges = torch.stack([torch.ones_like(y[:, 0]), y[:, 0], y[:, 1]], 0)  # (3, N)
    grid = torch.zeros(3, g * g, dtype=y.dtype)
    grid.index_add_(1, flat, (charges[:, :, None] * w[None]).reshape(3, -1))
    padded = torch.zeros(3, 2 * g, 2 * g, dtype=y.dtype)
    padded[:, :g, :g] = grid.reshape(3, g, g)
    fq = torch.fft.rfft2(padded)
    products = torch.cat([fq * kernels[1], fq[:1] * kernels[0]])  # (4, 2g, g+1)
    conv = torch.fft.irfft2(products, s=(2 * g, 2 * g))[:, :g, :g].reshape(4, -1)
    at = (conv.index_select(1, flat).view(4, *w.shape) * w).sum(-1)  # (4, N) back at the points
    rep = y * at[0][:, None] - at[1:3].T  # sum_j w_ij^2 (y_i - y_j)
    z = at[3].sum() - len(y)  # remove the i = j terms
    return rep, z


def tsne_fast(x: np.ndarray, perplexity: float = 30.0, n_iter: int = 1000, seed: int = 0,
              metric: str = "euclidean", spacing: float = SPACING, threads: int | None = None) -> np.ndarray:
    """x (N, D) -> (N, 2): t-SNE for tens of thousands of points in seconds.

    The same objective and optimiser settings as scikit-learn's defaults (perplexity 30, early
    exaggeration 12 for 250 iterations, learning rate ``max(N / 12 / 4, 50)``, momentum 0.5 then 0.8,
    gains, PCA initialisation), with the affinities restricted to ``3 * perplexity`` neighbours as in
    Barnes-Hut t-SNE, and the repulsive forces computed on a grid by FFT (:func:`_repulsion`) instead
    of a Barnes-Hut tree. ``threads``: CPU threads for the iterations (default: torch's setting; the
    book's chapters use 1, as two chapters execute at once).
    """
    before = torch.get_num_threads()
    threads = threads or before
    try:
        torch.manual_seed(seed)
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        n = xt.shape[0]
        perplexity = min(perplexity, (n - 1) / 3)
        cols, p = _knn_affinities(xt, perplexity, metric)  # one big matrix product: all cores
        torch.set_num_threads(threads)
        centred = xt.double() - xt.double().mean(0)
        _, _, v = torch.linalg.svd(centred, full_matrices=False)
        y = centred @ v[:2].T
        y = (y / y[:, 0].std() * 1e-4).float()
        lr = max(n / 12.0 / 4, 50.0)
        update, gains = torch.zeros_like(y), torch.ones_like(y)
        kernels: dict = {}
        for it in range(n_iter):
            exaggeration, momentum = (12.0, 0.5) if it < 250 else (1.0, 0.8)
            attract = _attraction(y, cols, p)
            rep, z = _repulsion(y, spacing, kernels)
            grad = 4 * (exaggeration * attract - rep / z)
            same_sign = (grad > 0) == (update > 0)
            gains = torch.where(same_sign, gains * 0.8, gains + 0.2).clamp_min(0.01)
            update = momentum * update - lr * gains * grad
            y = y + update
        return y.numpy()
    finally:
        torch.set_num_threads(before)
