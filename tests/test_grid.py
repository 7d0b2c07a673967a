"""A grid of runs trained as one batched network (sslnb.grid) is the same G runs trained alone.

The step-level tests run in float64, where the batched step must equal the separate steps to ~1e-12
after several steps: in float32 two orders of summation differ by ~1e-7 and these tiny smoke networks
amplify that to 1e-3 within a few steps (the same run trained with 1 and with 2 threads drifts apart
just as much), so float32 is compared over the first steps only.
"""

import copy
import json

import pytest
import torch

from sslnb import dist
from sslnb.config import METHODS, Config, ConfigError
from sslnb.grid import grid_batches, grid_step, plan, split_outputs, stream_of, train_grid
from sslnb.grouped import GroupedNetwork
from sslnb.methods import CLASSES, build_method
from sslnb.optim import build_optimizer, member_rates, set_learning_rate
from sslnb.runs import launch, load_run
from sslnb.train import train, train_step

TIMING = {"epoch_s", "img_per_s", "eval_s", "grid_size"}


def members(cfgs):
    out = []
    for c in cfgs:
        torch.manual_seed(c.seed)
        out.append(dist.configure_batchnorm(build_method(c, 10, 256), c.dist_bn, c.bn_groups))
    return out


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


CASES = {
    # the BN study: codes with and without each BatchNorm in one grid, one shared batch
    "byol-bn-codes": [Config.from_preset("smoke", "byol", bn_code=c) for c in ("111", "011", "110", "000")],
    "byol-seeds": [Config.from_preset("smoke", "byol", seed=s, view_bn="joint") for s in (0, 1)],
    # each run its own images (different seeds) and its own temperature
    "simclr-seeds-temperatures": [Config.from_preset("smoke", "simclr", seed=s, temperature=t)
                                  for s, t in ((0, 0.5), (1, 0.2), (2, 0.5))],
    "insdis-seeds": [Config.from_preset("smoke", "insdis", seed=s) for s in (0, 1)],
    # one seed, two pipelines: each run its own views (side by side), and each SimCLR run its own loss
    "byol-pipelines": [Config.from_preset("smoke", "byol", augment=a) for a in ("normal", "aug+")],
    # BatchNorm with and without a learned scale and shift (and absent), in one grid
    "byol-affine": [Config.from_preset("smoke", "byol", bn_code=c, bn_affine=a, seed=s)
                    for c, a, s in (("011", False, 0), ("111", True, 1), ("111", False, 0))],
    # ghost BatchNorm of 1 and 2 groups (and absent) in one grid: blocks of channels, each its own chunks
    "byol-ghosts": [Config.from_preset("smoke", "byol", bn_code=c, bn_groups=k)
                    for c, k in (("111", 1), ("111", 2), ("011", 1))],
    # each run its own EMA rate (and schedule) on its part of the batched target network
    "byol-ema": [Config.from_preset("smoke", "byol", ema=m, ema_schedule=k, seed=s)
                 for m, k, s in ((0.99, "fixed", 0), (0.9, "fixed", 1), (0.9, "cos", 2))],
    # each run its own learning rate and predictor multiplier (its block of every parameter at its own rate)
    "byol-rates": [Config.from_preset("smoke", "byol", lr=lr, pred_lr_mult=m, seed=s)
                   for lr, m, s in ((0.05, 1.0, 0), (0.2, 1.0, 1), (0.05, 10.0, 2))],
    "insdis-rates": [Config.from_preset("smoke", "insdis", lr=lr) for lr in (0.03, 0.1)],
    "simclr-losses": [Config.from_preset("smoke", "simclr", simclr_loss=loss) for loss in ("seed", "standard")],
    "supervised-seeds": [Config.from_preset("smoke", "supervised", seed=s) for s in (0, 1)],
}
# Every registered method on two seeds at its smoke settings, unless a case above has its seeds already: a
# method that registers itself gets this test without an edit here (those that refuse a grid are excluded,
# with their own reason: Method.grid_refusal).
for _m in METHODS:
    if not CLASSES[_m].grid_refusal(Config.from_preset("smoke", _m)) and not any(k.startswith(f"{_m}-seeds") for k in CASES):
        CASES[f"{_m}-seeds"] = [Config.from_preset("smoke", _m, seed=s) for s in (0, 1)]


@pytest.fixture
def float64():
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(before)


def run_steps(cfgs, steps: int, dtype=torch.float64):
    """``steps`` optimiser steps of the grid and of the runs alone on the same random batches; returns
    per step the largest loss and gradient differences, and at the end the largest state difference."""
    batched = members(cfgs)
    alone = [copy.deepcopy(m) for m in batched]
    shared = len({stream_of(c) for c in cfgs}) == 1
    grouped = GroupedNetwork(batched, shared_input=shared)
    opt = build_optimizer(cfgs[0], grouped.network.trainable_parameters())
    opts = [build_optimizer(c, m.trainable_parameters()) for c, m in zip(cfgs, alone)]
    for o, c in zip([opt, *opts], [cfgs[0], *cfgs]):  # each run's rate in each group (the predictor's multiplier)
        set_learning_rate(o, c.lr)
    rates = member_rates(opt, opts)
    gen = torch.Generator().manual_seed(7)
    n_views, G = batched[0].n_views, len(cfgs)
    report = []
    for step in range(steps):
        views = [[torch.randn(64, 3, 16, 16, generator=gen, dtype=dtype) for _ in range(n_views)]
                 for _ in range(1 if shared else G)]
        ys = [torch.randint(10, (64,), generator=gen) for _ in range(G)]
        idxs = [torch.randperm(256, generator=gen)[:64] for _ in range(G)]
        inputs = views[0] if shared else [torch.cat([v[i] for v in views], dim=1) for i in range(n_views)]
        logs = grid_step(grouped, batched, opt, inputs, ys, idxs, (step + 1) / steps, rates=rates)
        grads = {n: p.grad for n, p in grouped.network.named_parameters() if p.grad is not None}
        losses, grad_diff = [], 0.0
        for g, (m, o) in enumerate(zip(alone, opts)):
            loss, _ = train_step(m, m, o, views[0 if shared else g], ys[g], idxs[g], (step + 1) / steps)
            losses.append(loss.item())
            for n, p in m.named_parameters():
                if p.grad is not None:
                    grad_diff = max(grad_diff, max_diff(grads[n].reshape(G, *p.shape)[g], p.grad))
        loss_diff = max(abs(lg["loss"].item() - l) for lg, l in zip(logs, losses))
        report.append((loss_diff, grad_diff, losses))
    grouped.to_members()
    state_diff = max(max_diff(a.state_dict()[k], v) for a, b in zip(batched, alone) for k, v in b.state_dict().items())
    return report, state_diff


@pytest.mark.parametrize("case", sorted(CASES))
def test_a_grid_step_is_the_separate_steps_exactly_in_float64(case, float64):
    report, state_diff = run_steps(CASES[case], steps=3)
    for loss_diff, grad_diff, losses in report:
        assert loss_diff < 1e-10 and grad_diff < 1e-9, (loss_diff, grad_diff)
        assert len(set(round(x, 6) for x in losses)) == len(losses), "the runs should differ from each other"
    assert state_diff < 1e-9  # parameters, BN statistics, EMA targets after 3 steps


def test_a_grid_step_is_the_separate_steps_in_float32():
    report, _ = run_steps(CASES["byol-bn-codes"], steps=2, dtype=torch.float32)
    assert report[0][0] < 1e-5 and report[0][1] < 1e-4


def test_each_run_reads_its_own_part_of_the_batched_outputs(float64):
    """The per-run comparison can fail: run 0 put second in a grid finds its loss in part 1, not 0."""
    cfgs = CASES["byol-bn-codes"][:2]
    first, second = members(cfgs)
    alone = copy.deepcopy(first)
    grouped = GroupedNetwork([second, first], shared_input=True)
    views = [torch.randn(64, 3, 16, 16) for _ in range(2)]
    out = grouped.network.outputs(views)
    own = alone.objective(alone.outputs(views))[0].item()
    assert abs(first.objective(split_outputs(out, 2, 1))[0].item() - own) < 1e-10
    assert abs(first.objective(split_outputs(out, 2, 0))[0].item() - own) > 1e-6


def test_each_run_of_a_grid_sees_the_batches_it_would_see_alone():
    """Runs of one stream share their views; runs of another seed or pipeline get their own, side by side."""
    from sslnb.augment import BatchAugment
    from sslnb.data import dataset_of
    from sslnb.train import batch_views, epoch_randomness

    cfgs = [Config.from_preset("smoke", "byol", seed=s, augment=a, bn_code=c)
            for s, a, c in ((0, "normal", "111"), (0, "aug+", "111"), (1, "normal", "011"), (0, "normal", "000"))]
    data = dataset_of(cfgs[0])
    x, y = data.train.x, data.train.y
    steps = list(grid_batches(cfgs, data, x, y, epoch=1, n_batches=2, n_views=2, channels_last=False, device="cpu"))
    for g, c in enumerate(cfgs):
        order, gen = epoch_randomness(c, len(y), 1, "cpu")
        for b, (inputs, ys, idxs) in enumerate(steps):
            idx = order[b * c.batch_size:(b + 1) * c.batch_size]
            alone = batch_views(data, BatchAugment.for_config(c), x[idx], gen, 2, False)
            assert torch.equal(idxs[g], idx) and torch.equal(ys[g], y[idx])
            for v in range(2):
                assert torch.equal(inputs[v][:, 3 * g:3 * g + 3], alone[v])
    assert not torch.equal(steps[0][0][0][:, 0:3], steps[0][0][0][:, 3:6])  # another pipeline, other views
    assert torch.equal(steps[0][0][0][:, 0:3], steps[0][0][0][:, 9:12])  # the same stream, the same views


def small(method="byol", **kw):
    return Config.from_preset("smoke", method, train_size=128, **kw)  # two steps an epoch


def records(path):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_launch_trains_a_grid_into_the_run_directories_of_separate_runs(tmp_path):
    cfgs = [small(bn_code=c) for c in ("111", "011")] + [small("simclr", seed=0), small("simclr", seed=1, lr=0.2)]
    grid_runs = launch(cfgs, tmp_path / "grid", progress=False)
    alone_runs = launch(cfgs, tmp_path / "alone", progress=False, grid=False)
    for g, a in zip(grid_runs, alone_runs):
        assert g.name == a.name and g.done and a.done
        assert g.provenance["grid"]["size"] == 2 and "grid" not in a.provenance
        assert sorted(p.name for p in g.path.iterdir()) == sorted(p.name for p in a.path.iterdir())
        rg, ra = records(g.path), records(a.path)
        assert [sorted(r) for r in rg] == [sorted(r) for r in ra]  # the same records, field for field
        assert [r.get("lr") for r in rg] == [r.get("lr") for r in ra]  # each run at its own rate
        steps_g = [r["loss"] for r in rg if r["kind"] == "step"]
        steps_a = [r["loss"] for r in ra if r["kind"] == "step"]
        assert abs(steps_g[0] - steps_a[0]) < 1e-5  # float32: the first step (see the module docstring)
        assert rg[0] == ra[0]  # the untrained network's record
        cg = torch.load(g.path / "checkpoint.pt", weights_only=True)
        ca = torch.load(a.path / "checkpoint.pt", weights_only=True)
        assert cg.keys() == ca.keys() and cg["model"].keys() == ca["model"].keys()
        assert all(cg["model"][k].shape == v.shape for k, v in ca["model"].items())
        assert cg["opt"]["param_groups"] == ca["opt"]["param_groups"]
        assert cg["opt"]["state"].keys() == ca["opt"]["state"].keys()
        assert sorted(g.result) == sorted(a.result)


def test_an_interrupted_grid_resumes_to_the_same_runs_and_a_run_of_it_resumes_alone(tmp_path):
    cfgs = [small(bn_code=c, epochs=2) for c in ("111", "011")]
    whole = [tmp_path / "whole" / c.bn_code for c in cfgs]
    train_grid(cfgs, whole, progress=False)

    def stop(epoch):
        raise KeyboardInterrupt

    cut = [tmp_path / "cut" / c.bn_code for c in cfgs]
    with pytest.raises(KeyboardInterrupt):
        train_grid(cfgs, cut, progress=False, on_epoch_end=stop)
    assert all((p / "checkpoint.pt").exists() and not (p / "result.json").exists() for p in cut)
    alone = tmp_path / "alone"
    import shutil
    shutil.copytree(cut[1], alone)
    train_grid(cfgs, cut, progress=False)
    for a, b in zip(whole, cut):
        assert records(a) == records(b)
        assert load_run(b).provenance["resumed_at_epoch"] == 1
    train(cfgs[1], alone, progress=False)  # the same checkpoint, resumed by the ordinary trainer
    assert load_run(alone).done
    assert records(alone)[:4] == records(cut[1])[:4]  # epoch 0, the grid's two steps and epoch 1


def test_plan_puts_together_only_runs_that_differ_in_grid_fields(tmp_path):
    codes = ["111", "011", "101", "110", "001", "010", "100", "000"]
    pairs = [(Config.from_preset("cpu", "byol", bn_code=c), tmp_path / c) for c in codes]
    pairs += [(Config.from_preset("cpu", "byol", weight_decay=1e-3), tmp_path / "wd")]  # another weight decay: alone
    pairs += [(Config.from_preset("cpu", "simclr", seed=s), tmp_path / f"s{s}") for s in (0, 1)]
    pairs += [(Config.from_preset("cpu", "insdis", insdis_loss="nce", seed=s), tmp_path / f"n{s}") for s in (0, 1)]
    grids, alone = plan(pairs, parts=2)
    assert [len(g) for g in grids] == [4, 4, 2]
    assert [p.name for _, p in alone] == ["wd", "n0", "n1"]
    grids, alone = plan(pairs, max_size=3)
    assert [len(g) for g in grids] == [3, 2, 3, 2]


def test_plan_packs_pipelines_and_affinity_together_and_ghost_counts_apart(tmp_path):
    base = Config.from_preset("laptop", "byol", augment="aug+")
    cfgs = [base.replace(bn_code=c) for c in ("111", "011", "000")] + [
        base.replace(augment="normal"), base.replace(bn_code="011", bn_affine=False), base.replace(bn_groups=1),
        base.replace(bn_groups=1, seed=1)]
    grids, alone = plan([(c, tmp_path / str(i)) for i, c in enumerate(cfgs)])
    assert [[p.name for _, p in g] for g in grids] == [["0", "1", "2", "3", "4"], ["5", "6"]] and not alone


def test_runs_whose_epochs_differ_in_steps_are_refused():
    """bn_groups may differ in a grid, unless it changes the number of steps of an epoch (a last batch too
    small for its ghost groups is dropped)."""
    from sslnb.grid import grid_refusal

    cfgs = [Config.from_preset("smoke", "byol", train_size=66, bn_groups=k) for k in (1, 2)]  # last batch: 2
    assert "epochs have 2 and 1 steps" in grid_refusal(cfgs)
    assert grid_refusal([c.replace(train_size=68) for c in cfgs]) is None


def test_a_grid_of_runs_that_differ_elsewhere_is_refused_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="cannot train as one grid: they differ in weight_decay") as e:
        train_grid([small(), small(weight_decay=1e-3)], [tmp_path / "a", tmp_path / "b"], progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="different learning rates share a grid only with SGD and momentum") as e:
        train_grid([small(optimizer="adam"), small(optimizer="adam", lr=0.01)], [tmp_path / "a", tmp_path / "b"],
                   progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "a").exists()


def test_runs_measured_at_different_epochs_share_a_grid(tmp_path):
    """eval_every is not part of a run's identity or of the step: each run of a grid keeps its own."""
    cfgs = [small(seed=0, eval_every=1), small(seed=1, eval_every=2)]
    grids, alone = plan([(c, tmp_path / str(c.seed)) for c in cfgs])
    assert len(grids) == 1 and not alone
    train_grid(cfgs, [tmp_path / "0", tmp_path / "1"], progress=False)
    for c in cfgs:
        measured = [r["epoch"] for r in records(tmp_path / str(c.seed)) if r["kind"] == "epoch" and "knn" in r]
        assert measured == ([0, 1, 2] if c.eval_every == 1 else [0, 2])


def test_the_grid_command_creates_its_run_directories_from_a_method_and_seeds(tmp_path, capsys):
    from sslnb.grid import main

    args = ["--method", "simclr", "--preset", "smoke", "--seeds", "0,1", "--vary", "temperature=0.2",
            "--set", "epochs=1", "--set", "train_size=128", "--run-root", str(tmp_path), "--quiet"]
    assert main([*args, "--dry-run"]) == 0
    named = capsys.readouterr().out.split()
    assert len(named) == 2 and not any(tmp_path.iterdir())  # a dry run writes nothing
    assert main(args) == 0
    runs = [load_run(p) for p in sorted(tmp_path.iterdir())]
    assert sorted(map(str, (r.path for r in runs))) == sorted(named)
    assert all(r.done and r.config.temperature == 0.2 and r.config.epochs == 1 for r in runs)
    assert sorted(r.config.seed for r in runs) == [0, 1]
    assert main(["--method", "simclr", "--vary", "epochs=1,2", "--dry-run"]) == 2  # not a grid field
    assert "may differ only in" in capsys.readouterr().err
