"""SimSiam (sslnb/methods/simsiam.py): the loss against the paper's Algorithm 1 written as a loop, no
gradient through the stop-gradient branch, and the method found by everything that asks the registry."""

import pytest
import torch

from sslnb.config import METHODS, Config
from sslnb.methods import CLASSES, build_method
from sslnb.methods.simsiam import simsiam_loss
from sslnb.rundir import run_name


def algorithm_1(p1, p2, z1, z2):
    """Chen & He (2021), Algorithm 1, one sample at a time: D(p, z) = -<p/|p|, z/|z|>, z detached."""
    total = 0.0
    for i in range(len(p1)):
        for p, z in ((p1[i], z2[i]), (p2[i], z1[i])):
            z = z.detach()
            total = total - (p / p.norm()).dot(z / z.norm()) / 2
    return total / len(p1)


def test_the_loss_is_algorithm_1():
    g = torch.Generator().manual_seed(0)
    p1, p2, z1, z2 = (torch.randn(7, 5, generator=g, dtype=torch.float64) for _ in range(4))
    assert simsiam_loss(p1, p2, z1, z2).item() == pytest.approx(algorithm_1(p1, p2, z1, z2).item(), abs=1e-12)
    assert simsiam_loss(p1, p2, 3 * p2, 2 * p1).item() == pytest.approx(-1.0)  # every prediction on its target


def test_no_gradient_reaches_the_stop_gradient_branch():
    p1, p2, z1, z2 = (torch.randn(4, 3, requires_grad=True) for _ in range(4))
    simsiam_loss(p1, p2, z1, z2).backward()
    assert z1.grad is None and z2.grad is None and p1.grad.abs().sum() > 0
    # in the method: the projector's gradient is the one that flows through the predictor only
    cfg = Config.from_preset("smoke", "simsiam", device="cpu")
    torch.manual_seed(0)
    m = build_method(cfg, 10, 256)
    views = [torch.randn(64, 3, 16, 16) for _ in range(2)]
    out = m.outputs(views)
    loss, _ = m.objective(out)
    grads = torch.autograd.grad(loss, out["z"], retain_graph=True)
    through_p = torch.autograd.grad(sum((pi * gi).sum() for pi, gi in
                                        zip(out["p"], torch.autograd.grad(loss, out["p"], retain_graph=True))),
                                    out["z"])
    for g, h in zip(grads, through_p):
        assert torch.allclose(g, h, atol=1e-6)


def test_simsiam_is_registered_with_its_presets_and_names():
    assert "simsiam" in METHODS and CLASSES["simsiam"].n_views == 2
    cfg = Config.from_preset("laptop", "simsiam")
    assert cfg.pred_hidden == cfg.proj_dim // 4 and cfg.ema == Config().ema  # no target: the EMA is unused
    assert run_name(cfg).startswith("simsiam-fashion-canvas-bn11-")
    m = build_method(Config.from_preset("smoke", "simsiam", device="cpu"), 10, 256)
    assert not any(n.startswith("target") for n, _ in m.named_parameters())
    assert m.embed(torch.randn(8, 3, 16, 16))[1].shape == (8, 32)
