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


def _unit(v):
    return v / sum(a * a for a in v) ** 0.5


def _cos(a, b):
    return sum(x * y for x, y in zip(_unit(a), _unit(b)))


def _check_grads(fast_fn, slow_fn, *inputs):
    fast = fast_fn(*inputs)
    g_fast = torch.autograd.grad(fast, inputs)
    slow = slow_fn(*inputs)
    g_slow = torch.autograd.grad(slow, inputs)
    assert torch.allclose(fast, slow), (fast, slow)
    assert all(torch.allclose(a, b) for a, b in zip(g_fast, g_slow))


def naive_nt_xent_seed(z1, z2, t):
    """Seed-protocol 3b written out: logit(i, j) = cos(z1_i, z2_j) + cos(z1_j, z2_i) off the diagonal."""
    n = len(z1)
    total = 0.0
    for i in range(n):
        logits = []
        for j in range(n):
            s = _cos(z1[i], z2[j]) if i == j else _cos(z1[i], z2[j]) + _cos(z1[j], z2[i])
            logits.append(s / t)
        denom = sum(torch.exp(v) for v in logits)
        total = total - torch.log(torch.exp(logits[i]) / denom)
    return total / n


def test_nt_xent_seed_matches_naive_loop_and_gradients():
    from sslnb.losses import nt_xent_seed

    g = torch.Generator().manual_seed(2)
    z1 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(5, 4, generator=g, dtype=torch.float64, requires_grad=True)
    _check_grads(lambda a, b: nt_xent_seed(a, b, 0.5), lambda a, b: naive_nt_xent_seed(a, b, 0.5), z1, z2)


def test_nt_xent_variants_differ():
    """The two SimCLR losses are different functions (a test that the switch switches something)."""
    from sslnb.losses import nt_xent, nt_xent_seed

    z1, z2 = torch.randn(8, 6), torch.randn(8, 6)
    assert abs(nt_xent(z1, z2, 0.5).item() - nt_xent_seed(z1, z2, 0.5).item()) > 1e-3


def naive_insdis_softmax(f, bank, idx, t):
    total = 0.0
    for i in range(len(f)):
        fi = _unit(f[i])
        logits = [sum(a * b for a, b in zip(fi, v)) / t for v in bank]
        denom = sum(torch.exp(s) for s in logits)
        total = total - torch.log(torch.exp(logits[idx[i]]) / denom + 1e-7)
    return total / len(f)


def test_insdis_softmax_matches_naive_loop_and_gradients():
    from sslnb.losses import insdis_softmax

    g = torch.Generator().manual_seed(3)
    f = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bank = torch.randn(9, 5, generator=g, dtype=torch.float64)  # the seed's bank is not normalised at init
    idx = torch.tensor([0, 3, 8, 5])
    _check_grads(lambda x: insdis_softmax(x, bank, idx, 0.2), lambda x: naive_insdis_softmax(x, bank, idx, 0.2), f)


def naive_insdis_nce(f, bank, idx, neg_idx, t, z):
    n, k = len(bank), len(neg_idx[0])
    pn = 1.0 / n
    total = 0.0
    for i in range(len(f)):
        fi = _unit(f[i])
        prob = lambda j: torch.exp(sum(a * b for a, b in zip(fi, bank[j])) / t) / z  # noqa: E731
        p_pos = prob(idx[i])
        term = torch.log(p_pos / (p_pos + k * pn + 1e-7))
        for j in neg_idx[i]:
            p = prob(j)
            term = term + torch.log(k * pn / (p + k * pn + 1e-7))
        total = total - term
    return total / len(f)


def test_insdis_nce_matches_naive_loop_and_gradients():
    from sslnb.losses import insdis_nce, nce_normaliser

    g = torch.Generator().manual_seed(4)
    f = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    bank = torch.nn.functional.normalize(torch.randn(12, 5, generator=g, dtype=torch.float64), dim=1)
    idx = torch.tensor([1, 7, 11])
    neg = torch.randint(12, (3, 4), generator=g)
    z = nce_normaliser(f, bank, neg, 0.1)
    naive_z = len(bank) * sum(torch.exp(_cos(f[i], bank[j]) / 0.1) for i in range(3) for j in neg[i]) / 12
    assert torch.allclose(z, naive_z.detach())
    _check_grads(lambda x: insdis_nce(x, bank, idx, neg, 0.1, z),
                 lambda x: naive_insdis_nce(x, bank, idx, neg, 0.1, z), f)


def test_memory_bank_update_follows_its_formula():
    from sslnb.memory_bank import MemoryBank

    bank = MemoryBank(6, dim=4, momentum=0.5, generator=torch.Generator().manual_seed(0))
    a = 1 / (4 / 3) ** 0.5
    assert bank.vectors.abs().max() <= a and bank.vectors.shape == (6, 4)
    before = bank.vectors.clone()
    f = torch.randn(2, 4)
    bank.update(torch.tensor([1, 4]), f)
    for row, fi in zip([1, 4], f):
        mixed = 0.5 * before[row] + 0.5 * fi / fi.norm()
        assert torch.allclose(bank.vectors[row], mixed / mixed.norm(), atol=1e-6)
    untouched = [0, 2, 3, 5]
    assert torch.equal(bank.vectors[untouched], before[untouched])
