"""Each loss against a naive loop over the batch, values and gradients."""

import torch

from sslnb.losses import byol_loss, cross_entropy


def naive_byol(p, z):
    total = 0.0
    for i in range(p.shape[0]):
        pi = p[i] / sum(v * v for v in p[i]) ** 0.5
        zi = z[i] / sum(v * v for v in z[i]) ** 0.5
        total = total + sum((a - b) ** 2 for a, b in zip(pi, zi))  # ||p/|p| - z/|z| ||^2
    return total / p.shape[0]


def test_byol_loss_matches_naive_loop_and_gradients():
    g = torch.Generator().manual_seed(0)
    p = torch.randn(6, 5, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(6, 5, generator=g, dtype=torch.float64)
    fast = byol_loss(p, z)
    (grad_fast,) = torch.autograd.grad(fast, p)
    p2 = p.detach().clone().requires_grad_(True)
    slow = naive_byol(p2, z)
    (grad_slow,) = torch.autograd.grad(slow, p2)
    assert torch.allclose(fast, slow)
    assert torch.allclose(grad_fast, grad_slow)


def test_byol_loss_range_and_scale_invariance():
    x = torch.randn(4, 8)
    assert byol_loss(x, 3 * x).item() < 1e-6  # identical directions: 0
    assert abs(byol_loss(x, -x).item() - 4) < 1e-5  # opposite directions: 4


def test_cross_entropy_matches_naive():
    logits = torch.randn(5, 3, dtype=torch.float64)
    y = torch.tensor([0, 2, 1, 1, 0])
    naive = sum(-(logits[i, y[i]] - logits[i].exp().sum().log()) for i in range(5)) / 5
    assert torch.allclose(cross_entropy(logits, y), naive)


def naive_nt_xent(z1, z2, t):
    z = [v / sum(a * a for a in v) ** 0.5 for v in list(z1) + list(z2)]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        pos = (i + n) % (2 * n)
        sims = {j: sum(a * b for a, b in zip(z[i], z[j])) / t for j in range(2 * n) if j != i}
        denom = sum(torch.exp(s) for s in sims.values())
        total = total - torch.log(torch.exp(sims[pos]) / denom)
    return total / (2 * n)


def test_nt_xent_matches_naive_loop_and_gradients():
    from sslnb.losses import nt_xent

    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    fast = nt_xent(z1, z2, 0.3)
    g_fast = torch.autograd.grad(fast, (z1, z2))
    slow = naive_nt_xent(z1, z2, 0.3)
    g_slow = torch.autograd.grad(slow, (z1, z2))
    assert torch.allclose(fast, slow)
    assert all(torch.allclose(a, b) for a, b in zip(g_fast, g_slow))
