"""Model shapes, parameter counts for every BN code, ghost BatchNorm and the EMA semantics."""

import pytest
import torch
import torch.nn.functional as F

from sslnb.config import Config
from sslnb.methods.byol import BYOL, ema_update
from sslnb.models import MLP, CifarResNet
from sslnb.norm import GhostBatchNorm1d, GhostBatchNorm2d

# The kuangliu CIFAR ResNets the seed used, without their final Linear.
BACKBONE_PARAMS = {"resnet18": 11_168_832, "resnet50": 23_500_352}


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("network,dim", [("resnet18", 512), ("resnet50", 2048)])
def test_backbone_shapes_and_counts(network, dim):
    net = CifarResNet(network, 64)
    assert count(net) == BACKBONE_PARAMS[network]
    assert net.out_dim == dim
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim)


def test_narrow_backbone_on_small_images():
    net = CifarResNet("resnet18", 16)
    assert net(torch.randn(4, 3, 16, 16)).shape == (4, 128)


@pytest.mark.parametrize("code", ["111", "101", "011", "110", "010", "100", "001", "000"])
def test_byol_parameter_counts_for_every_bn_code(code):
    cfg = Config.from_preset("paper", "byol", bn_code=code)
    m = BYOL(cfg)
    bn1, bn2, bn3 = (c == "1" for c in code)
    proj = 512 * 512 + 512 + 512 * 256 + 256  # the seed's projector: 512 -> 512 -> 256
    pred = 256 * 256 + 256 + 256 * 256 + 256  # the seed's predictor: 256 -> 256 -> 256
    assert count(m.online) == BACKBONE_PARAMS["resnet18"] + proj + 2 * 512 * bn1
    assert count(m.predictor) == pred + 2 * 256 * bn2
    assert count(m.target) == BACKBONE_PARAMS["resnet18"] + proj + 2 * 512 * bn3
    assert all(not p.requires_grad for p in m.target.parameters())
    groups = m.trainable_parameters()
    assert sum(p.numel() for g in groups for p in g["params"]) == count(m.online) + count(m.predictor)
    x = torch.randn(8, 3, 32, 32)
    h, z = m.embed(x)
    assert h.shape == (8, 512) and z.shape == (8, 256)


@pytest.mark.parametrize("code", ["111", "101", "011", "110", "010", "100", "001", "000"])
def test_bn_code_puts_head_batchnorm_exactly_where_it_says_and_leaves_the_backbone(code):
    from sslnb.norm import GhostBatchNorm1d, GhostBatchNorm2d

    m = BYOL(Config.from_preset("smoke", "byol", bn_code=code))
    placed = [isinstance(head.bn, GhostBatchNorm1d) for head in (m.online.projector, m.predictor, m.target.projector)]
    assert placed == [c == "1" for c in code]
    for net in (m.online, m.target):
        bn1d = [mod for mod in net.modules() if isinstance(mod, GhostBatchNorm1d)]
        bn2d = [mod for mod in net.backbone.modules() if isinstance(mod, GhostBatchNorm2d)]
        assert len(bn2d) == 20 and all(b.weight is not None for b in bn2d)  # every backbone BN, every code
        assert len(bn1d) <= 1


def test_bn_affine_off_removes_head_scale_and_shift_only():
    m = BYOL(Config.from_preset("smoke", "byol", bn_affine=False))
    assert m.online.projector.bn.weight is None and m.predictor.bn.weight is None
    assert m.online.backbone.bn1.weight is not None  # backbone BN keeps its affine parameters


def test_ghost_batchnorm_normalises_each_chunk_and_keeps_replica0_stats():
    torch.manual_seed(0)
    x = torch.randn(16, 3, 4, 4) * 3 + 1
    ghost = GhostBatchNorm2d(3, groups=4)
    out = ghost(x)
    rm, rv = torch.zeros(3), torch.ones(3)
    expected = []
    for i, c in enumerate(x.chunk(4)):
        expected.append(F.batch_norm(c, rm if i == 0 else None, rv if i == 0 else None, training=True, momentum=0.1))
    assert torch.allclose(out, torch.cat(expected), atol=1e-5)
    assert torch.allclose(ghost.running_mean, rm) and torch.allclose(ghost.running_var, rv)
    # one group: identical to BatchNorm
    plain, one = torch.nn.BatchNorm1d(5), GhostBatchNorm1d(5, groups=1)
    y = torch.randn(8, 5)
    assert torch.allclose(plain(y), one(y))
    # in eval mode the groups do not matter
    ghost.eval()
    ref = torch.nn.BatchNorm2d(3)
    ref.load_state_dict({k: v for k, v in ghost.state_dict().items()})
    ref.eval()
    assert torch.allclose(ghost(x), ref(x))


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.named_parameters()}


def test_ema_when_heads_match():
    m = BYOL(Config.from_preset("smoke", "byol", bn_code="111"))
    t0, o = _snapshot(m.target), _snapshot(m.online)
    buffers = {k: v.clone() for k, v in m.target.named_buffers()}
    assert ema_update(m.target, m.online, 0.9) == []
    for k, v in m.target.named_parameters():
        assert torch.allclose(v, 0.9 * t0[k] + 0.1 * o[k], atol=1e-6)
    for k, v in m.target.named_buffers():  # BN running statistics are not averaged
        assert torch.equal(v, buffers[k])


def test_ema_by_name_leaves_target_bn3_at_identity_in_code_011():
    # Seed-protocol section 2: with BN1 off and BN3 on, the target's BN3 has no online counterpart,
    # so its scale and shift stay at 1 and 0 however long training runs.
    m = BYOL(Config.from_preset("smoke", "byol", bn_code="011"))
    with torch.no_grad():
        for p in m.online.parameters():
            p.add_(1.0)
    for _ in range(5):
        untouched = ema_update(m.target, m.online, 0.5)
    assert sorted(untouched) == ["projector.bn.bias", "projector.bn.weight"]
    assert torch.equal(m.target.projector.bn.weight, torch.ones_like(m.target.projector.bn.weight))
    assert torch.equal(m.target.projector.bn.bias, torch.zeros_like(m.target.projector.bn.bias))
    # the last Linear is still matched (the seed matched it from the end)
    assert torch.allclose(m.target.projector.fc2.weight, m.online.projector.fc2.weight, atol=0.05)


def test_ema_code_110_online_bn1_has_no_target_counterpart():
    m = BYOL(Config.from_preset("smoke", "byol", bn_code="110"))
    assert ema_update(m.target, m.online, 0.5) == []  # every target parameter has a match
    assert "projector.bn.weight" in dict(m.online.named_parameters())
    assert "projector.bn.weight" not in dict(m.target.named_parameters())


def test_target_init_independent_or_copy():
    indep = BYOL(Config.from_preset("smoke", "byol"))
    assert not torch.equal(indep.online.backbone.conv1.weight, indep.target.backbone.conv1.weight)
    copy = BYOL(Config.from_preset("smoke", "byol", target_init="copy"))
    for k, v in copy.target.named_parameters():
        assert torch.equal(v, dict(copy.online.named_parameters())[k])


def test_byol_forward_gradient_reaches_online_and_predictor_only():
    m = BYOL(Config.from_preset("smoke", "byol"))
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    loss, logs = m(views)
    loss.backward()
    assert 0 <= loss.item() <= 8
    assert m.online.backbone.conv1.weight.grad is not None and m.predictor.fc1.weight.grad is not None
    assert all(p.grad is None for p in m.target.parameters())


def test_mlp_layers_are_named_for_matching():
    names = [n for n, _ in MLP(4, 8, 2, bn=True).named_parameters()]
    assert names == ["fc1.weight", "fc1.bias", "bn.weight", "bn.bias", "fc2.weight", "fc2.bias"]


def test_mlp_output_batchnorm_normalises_each_ghost_group_and_is_off_by_default():
    torch.manual_seed(0)
    x = torch.randn(16, 4) * 5 + 3
    plain, normed = MLP(4, 8, 6, bn=False), MLP(4, 8, 6, bn=False, bn_groups=2, out_bn=True)
    assert isinstance(plain.out_bn, torch.nn.Identity)
    z = normed(x)
    for part in z.chunk(2):  # each ghost group of 8 samples on its own
        assert torch.allclose(part.mean(0), torch.zeros(6), atol=1e-5)
        assert torch.allclose(part.var(0, unbiased=False), torch.ones(6), atol=1e-3)
    assert [n for n, _ in normed.named_parameters()][-2:] == ["out_bn.weight", "out_bn.bias"]
