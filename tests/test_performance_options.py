"""Performance options must not change what is computed.

One training step with and without each option (channels_last, torch.compile): the same fp32 loss, and
the same gradients in float64. (In float32 the narrow smoke network's BatchNorm backward amplifies the
different summation order of a channels_last convolution to tens of percent of some gradients; in
float64 the two agree to 1e-12, which shows the difference is rounding.) bf16 autocast agrees with fp32
to bf16 rounding, on a wider network."""

import pytest
import torch

from sslnb.config import METHODS, Config
from sslnb.methods import build_method
from sslnb.optim import build_optimizer
from sslnb.train import apply_performance_options, train_step


def close(grads_a, grads_b, tol):
    """Gradients equal up to rounding: BatchNorm's backward in a deep, narrow network amplifies
    float32 reassociation to ~1% of single elements, so compare each tensor by its norm."""
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        a, b = grads_a[name], grads_b[name]
        assert (a - b).norm() <= tol * a.norm() + 1e-8, name


def one_step(method_name, dtype=torch.float32, **options):
    cfg = Config.from_preset("smoke", method_name, device="cpu", **options)
    torch.manual_seed(0)
    method = build_method(cfg, 10, 256).to(dtype)
    opt = build_optimizer(cfg, method.trainable_parameters())
    method, forward = apply_performance_options(method, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(64, 3, 16, 16, generator=g, dtype=dtype) for _ in range(method.n_views)]
    idx, y = torch.arange(64), torch.zeros(64, dtype=torch.long)
    before = {k: v.detach().clone() for k, v in method.state_dict().items()}
    loss, _ = train_step(method, forward, opt, views, y, idx, 0.5)
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
    return loss.item(), grads, before


@pytest.mark.parametrize("method_name", list(METHODS))
def test_channels_last_changes_nothing(method_name):
    loss_a, _, init_a = one_step(method_name, channels_last="off")
    loss_b, _, init_b = one_step(method_name, channels_last="on")
    assert all(torch.equal(init_a[k], init_b[k]) for k in init_a)
    # relative to the loss, or to 1 for a loss near 0 (a negative cosine at initialisation)
    assert loss_a == pytest.approx(loss_b, rel=1e-5, abs=1e-5)
    loss_a, grads_a, _ = one_step(method_name, torch.float64, channels_last="off")
    loss_b, grads_b, _ = one_step(method_name, torch.float64, channels_last="on")
    assert loss_a == pytest.approx(loss_b, rel=1e-12)
    close(grads_a, grads_b, 1e-9)


@pytest.mark.parametrize("method_name", list(METHODS))
def test_bf16_autocast_agrees_to_bf16_rounding(method_name):
    """Rounding only the input images to bf16 already turns the backbone's gradient by cos ~0.98 in
    this network; bf16 autocast rounds every convolution, so the whole gradient is held to cos > 0.85 (a
    negative-cosine loss, near 0 at initialisation, gives the smallest agreement: about 0.9) and the
    head to cos > 0.9 (SimCLR's to > 0.99 beyond its first layer, which sees the rounded backbone feature;
    measured lowest: BYOL's projector BatchNorm 0.98, SimSiam's 0.94 at a loss near 0)."""
    loss_a, grads_a, _ = one_step(method_name, amp="none", width=32)
    loss_b, grads_b, _ = one_step(method_name, amp="bf16", width=32)
    # 1% of the loss, or of 1 for a loss near 0; and bf16 really ran
    assert loss_a == pytest.approx(loss_b, rel=1e-2, abs=1e-2) and loss_a != loss_b
    cos = lambda a, b: torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)  # noqa: E731
    assert cos(torch.cat([g.flatten() for g in grads_a.values()]),
               torch.cat([grads_b[n].flatten() for n in grads_a])) > 0.85
    for name in grads_a:
        if "projector" in name and grads_a[name].norm() > 1e-6:  # (fc1's bias feeds a BN: gradient 0) fc1 sees the rounded backbone feature, fc2 and the BN less so
            least = 0.99 if method_name == "simclr" and "fc1" not in name else 0.9
            assert cos(grads_a[name], grads_b[name]) > least, name


@pytest.mark.parametrize("method_name", list(METHODS))
def test_torch_compile_changes_nothing(method_name, monkeypatch):
    """Every method through TorchDynamo and AOTAutograd (the ``aot_eager`` backend: the capture of its
    forward and backward, where a method breaks under ``compile``); InsDis also through the default
    inductor backend, which generates C++ (two minutes for BYOL's graphs on two cores, so once)."""
    import shutil

    if method_name == "insdis":
        if not (shutil.which("g++") or shutil.which("c++")):
            pytest.skip("torch.compile's inductor on a CPU needs a C++ compiler")
    else:
        compile_ = torch.compile
        monkeypatch.setattr(torch, "compile", lambda m, **kw: compile_(m, backend="aot_eager", **kw))
    loss_a, grads_a, _ = one_step(method_name, torch.float64, compile=False)
    loss_b, grads_b, _ = one_step(method_name, torch.float64, compile=True)
    assert loss_a == pytest.approx(loss_b, rel=1e-10)
    close(grads_a, grads_b, 1e-8)


def test_auto_options_follow_the_measurements():
    from sslnb.train import use_channels_last, use_bf16

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not use_channels_last(Config.from_preset("cpu", "byol"), cpu)  # width 8: NCHW is 2.6-4.7x faster
    assert use_channels_last(Config.from_preset("paper", "byol"), cpu)  # width 64: channels_last ~10% faster
    assert use_channels_last(Config.from_preset("cpu", "byol"), cuda)
    assert not use_bf16(Config.from_preset("paper", "byol"), cpu) and use_bf16(Config.from_preset("paper", "byol"), cuda)
