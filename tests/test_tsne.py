"""t-SNE: the grid (FFT) forces against exact sums, and the embedding's neighbourhoods against
scikit-learn's."""

import numpy as np
import pytest
import torch

from sslnb.tsne import _attraction, _knn_affinities, _repulsion, tsne_fast


def test_grid_repulsion_matches_the_exact_sums():
    g = torch.Generator().manual_seed(0)
    y = torch.randn(400, 2, generator=g, dtype=torch.float64) * 15
    d = y[:, None, :] - y[None, :, :]  # (N, N, 2)
    w = 1 / (1 + d.pow(2).sum(-1))
    w.fill_diagonal_(0)
    rep_exact = (w.pow(2)[..., None] * d).sum(1)
    z_exact = w.sum()
    for spacing, tolerance in ((0.25, 0.03), (0.5, 0.06)):
        rep, z = _repulsion(y, spacing)
        assert abs(z - z_exact) / z_exact < 0.01
        err = (rep - rep_exact).norm() / rep_exact.norm()
        assert err < tolerance, (spacing, float(err))


def test_sparse_attraction_matches_the_dense_symmetric_p():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(300, 10, generator=g), torch.randn(300, 2, generator=g)
    cols, p = _knn_affinities(x, 10.0, "euclidean")
    assert torch.allclose(p.sum(1), torch.ones(300), atol=1e-5)
    dense = torch.zeros(300, 300).scatter_(1, cols, p)
    psym = (dense + dense.T) / (2 * 300)
    d = y[:, None, :] - y[None, :, :]
    exact = ((psym / (1 + d.pow(2).sum(-1)))[..., None] * d).sum(1)
    assert torch.allclose(_attraction(y, cols, p), exact, atol=1e-6)


def test_neighbourhoods_are_kept_as_well_as_by_scikit_learn():
    from sklearn.manifold import TSNE, trustworthiness

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 800)
    x = (rng.normal(size=(5, 40)) * 3)[labels] + rng.normal(size=(800, 40))
    ours = trustworthiness(x, tsne_fast(x, n_iter=500))
    theirs = trustworthiness(x, TSNE(random_state=0, max_iter=500).fit_transform(x))
    assert ours > theirs - 0.01, (ours, theirs)
