"""Performance options must not change what is computed: one fp32 training step with and without each
(channels_last, torch.compile) gives the same loss and gradients; bf16 autocast agrees to bf16 rounding."""

import pytest
import torch

from sslnb.config import Config
from sslnb.methods import build_method
from sslnb.optim import build_optimizer
from sslnb.train import apply_performance_options, train_step


def one_step(method_name, **options):
    cfg = Config.from_preset("smoke", method_name, device="cpu", **options)
    torch.manual_seed(0)
    method = build_method(cfg, 10, 256)
    opt = build_optimizer(cfg, method.trainable_parameters())
    method, forward = apply_performance_options(method, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(64, 3, 16, 16, generator=g) for _ in range(method.n_views)]
    idx, y = torch.arange(64), torch.zeros(64, dtype=torch.long)
    before = {k: v.detach().clone() for k, v in method.state_dict().items()}
    loss, _ = train_step(method, forward, opt, views, y, idx, 0.5)
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
    return loss.item(), grads, before


@pytest.mark.parametrize("method_name", ["byol", "simclr", "insdis"])
def test_channels_last_changes_nothing(method_name):
    loss_a, grads_a, init_a = one_step(method_name, channels_last="off")
    loss_b, grads_b, init_b = one_step(method_name, channels_last="on")
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-5), name


def test_bf16_autocast_agrees_to_bf16_rounding():
    loss_a, grads_a, _ = one_step("simclr", amp="none")
    loss_b, grads_b, _ = one_step("simclr", amp="bf16")
    assert loss_a == pytest.approx(loss_b, rel=2e-2)
    g_a = torch.cat([g.flatten() for g in grads_a.values()])
    g_b = torch.cat([grads_b[n].flatten() for n in grads_a])
    assert torch.nn.functional.cosine_similarity(g_a, g_b, dim=0) > 0.98
    assert loss_a != loss_b  # bf16 really ran


def test_torch_compile_changes_nothing():
    loss_a, grads_a, _ = one_step("insdis", compile=False)
    loss_b, grads_b, _ = one_step("insdis", compile=True)
    assert loss_a == pytest.approx(loss_b, rel=1e-4)
    for name in grads_a:
        assert torch.allclose(grads_a[name], grads_b[name], rtol=1e-3, atol=1e-5), name


def test_auto_options_follow_the_measurements():
    from sslnb.train import use_channels_last, use_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_channels_last(Config.from_preset("cpu", "byol"), cpu)  # width 8: NCHW is 2.6-4.7x faster
    assert use_channels_last(Config.from_preset("paper", "byol"), cpu)  # width 64: channels_last ~10% faster
    assert use_channels_last(Config.from_preset("cpu", "byol"), cuda)
    assert not use_bf16(Config.from_preset("paper", "byol"), cpu) and use_bf16(Config.from_preset("paper", "byol"), cuda)
