"""``python -m bench --only grid``: grids of runs trained as one batched network (``sslnb.grid``) against
the same runs trained separately, two at a time (the book's way before grids).

Two tables:

- **steps**: training steps of the book's study grids at the cpu preset (BYOL: the BatchNorm study's
  eight codes; the variance study's three seeds; two seeds at batch 128), each arranged three ways on
  this machine's cores: separate runs in two processes of one thread each; one grid in one process with
  every thread; two half-grids in two processes of one thread each. Milliseconds per run-step (the
  wall time for every run to take one step, divided by the number of runs), the speed-up over
  separate runs, and the achieved FLOP/s against a matrix-product peak measured in the same run.
- **wall**: the BatchNorm study's eight runs trained end to end (with their measurements after every
  epoch) by ``sslnb.runs.launch`` with two jobs, grids on and off, at ``--grid-epochs`` epochs.
- **packing**: the laptop book's BYOL runs at batch 64 (BN codes, repeats, pipelines, affine off,
  full-batch BN), one step of each, as ``launch`` packs them now (every run in two grids, one per
  process) against the packing before grids held pipelines, ``bn_affine`` and ``bn_groups`` (the runs
  that differ only in seed, BN code and temperature in two grids; the others alone).
- **convs** (``--only convs``): where the ceiling is. Every convolution of one step of a laptop grid of
  six BYOL runs (and of one run alone), timed forward and backward on one thread on the shapes the step
  gives it, against its FLOP and the one-thread matmul peak.
- **sizes**: how large a grid should be. Two processes of one thread each (launch's arrangement on
  two cores), each training a grid of G laptop BYOL runs (BN codes and seeds, batch 64); milliseconds per
  run-step for G from 1 (separate runs) to 12.
"""

from __future__ import annotations

import multiprocessing as mp
from collections import Counter
import shutil
import tempfile
import time
from pathlib import Path

import torch

from sslnb import dist
from sslnb.config import Config
from sslnb.experiments import BN_CODES, bn_chapter, variance_chapter
from sslnb.grid import GRID_FIELDS, grid_key, grid_step, stream_of
from sslnb.grouped import GroupedNetwork
from sslnb.methods import CLASSES, build_method
from sslnb.optim import build_optimizer
from sslnb.train import to_memory_format, train_step, use_channels_last


def study_grids() -> list[tuple[str, list[Config]]]:
    bn = bn_chapter("cpu")
    variance = variance_chapter("cpu")
    base = variance["seed=0"]
    return [("BN study: 8 codes, one seed", [bn[c] for c in BN_CODES]),
            ("variance: 3 seeds", list(variance.values())),
            ("batch 128: 2 seeds", [base.replace(batch_size=128, lr=base.lr * 2, seed=s) for s in (0, 1)])]


def _members(cfgs: list[Config]):
    out = []
    for c in cfgs:
        torch.manual_seed(c.seed)
        out.append(dist.configure_batchnorm(build_method(c, 10, 3000), c.dist_bn, c.bn_groups))
    return out


def _steps(cfgs: list[Config], grid: bool):
    """A function doing one step of every run in ``cfgs`` (random views, as the throughput table)."""
    cfg, gen = cfgs[0], torch.Generator().manual_seed(0)
    n_views = CLASSES[cfg.method].n_views
    shape = (cfg.batch_size, 3, cfg.image_size, cfg.image_size)
    streams = list(dict.fromkeys(stream_of(c) for c in cfgs))  # a run's views: its seed and pipeline
    views = {k: [torch.randn(*shape, generator=gen) for _ in range(n_views)] for k in streams}
    idx = torch.arange(cfg.batch_size)
    members = _members(cfgs)
    if not grid:
        cl = use_channels_last(cfg, torch.device("cpu"))
        steps = []
        for m, c in zip(members, cfgs):
            m = m.to(memory_format=torch.channels_last) if cl else m
            opt = build_optimizer(c, m.trainable_parameters())
            v = [to_memory_format(x, cl) for x in views[stream_of(c)]]
            steps.append(lambda m=m, opt=opt, v=v: train_step(m, m, opt, v, None, idx, 0.5))
        return lambda: [s() for s in steps]
    grouped = GroupedNetwork(members, shared_input=len(streams) == 1)
    cl = use_channels_last(cfg, torch.device("cpu"), groups=len(cfgs))
    if cl:
        grouped.network.to(memory_format=torch.channels_last)
    opt = build_optimizer(cfg, grouped.network.trainable_parameters())
    inputs = views[streams[0]] if len(streams) == 1 else \
        [torch.cat([views[stream_of(c)][i] for c in cfgs], dim=1) for i in range(n_views)]
    inputs = [to_memory_format(x, cl) for x in inputs]
    return lambda: grid_step(grouped, members, opt, inputs, [None] * len(cfgs), [idx] * len(cfgs), 0.5)


def _worker(cfg_dicts, grid: bool, threads: int, steps: int, barrier, queue, tag=None) -> None:
    """Time ``steps`` steps after a barrier; put the seconds (as ``(tag, seconds)`` when tagged) in ``queue``."""
    torch.set_num_threads(threads)
    step = _steps([Config.from_dict(d) for d in cfg_dicts], grid)
    for _ in range(2):
        step()
    barrier.wait()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    elapsed = time.perf_counter() - t0
    queue.put(elapsed if tag is None else (tag, elapsed))


def _concurrent(parts: list[list[Config]], grid: bool, threads: int, steps: int) -> float:
    """Wall seconds for ``steps`` steps of each part, the parts in processes running at once."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(len(parts)), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=([c.to_dict() for c in part], grid, threads, steps, barrier, queue))
             for part in parts]
    for p in procs:
        p.start()
    times = [queue.get() for _ in procs]
    for p in procs:
        p.join()
    return max(times)


def halves(cfgs: list[Config]) -> list[list[Config]]:
    k = (len(cfgs) + 1) // 2
    return [cfgs[:k], cfgs[k:]] if len(cfgs) > 1 else [cfgs]


def bench_grid_steps(quick: bool, peak: float, step_flops) -> list[dict]:
    steps = 4 if quick else 10
    cores = torch.get_num_threads()
    rows = []
    for label, cfgs in study_grids():
        members = _members(cfgs[:1])
        m, c = members[0], cfgs[0]
        opt = build_optimizer(c, m.trainable_parameters())
        v = [torch.randn(c.batch_size, 3, c.image_size, c.image_size) for _ in range(2)]
        flops = step_flops(m, m, opt, v, None, torch.arange(c.batch_size))
        g = len(cfgs)
        arrangements = [("separate runs, 2 processes x 1 thread", lambda: _concurrent(halves(cfgs), False, 1, steps)),
                        (f"one grid of {g}, 1 process x {cores} threads", lambda: _concurrent([cfgs], True, cores, steps)),
                        (f"two grids of {'+'.join(str(len(h)) for h in halves(cfgs))}, 2 processes x 1 thread",
                         lambda: _concurrent(halves(cfgs), True, 1, steps) if g > 2 else None)]
        base = None
        for name, fn in arrangements:
            wall = fn()
            if wall is None:
                continue
            per_run_step = wall / (steps * g)
            base = base or per_run_step
            rows.append({"grid": label, "arrangement": name, "ms per run-step": 1000 * per_run_step,
                         "speed-up": base / per_run_step, "GFLOP/s": flops / per_run_step / 1e9,
                         "% of matmul peak": 100 * flops / per_run_step / peak})
    return rows


def laptop_byol_batch64() -> list[Config]:
    """The laptop book's BYOL runs at batch 64 that can share a grid (one grid key: every bn_groups)."""
    from sslnb.experiments import all_runs

    cfgs = [c for c in all_runs("laptop") if c.method == "byol" and c.batch_size == 64 and c.epochs > 0]
    key = Counter(grid_key(c) for c in cfgs).most_common(1)[0][0]
    return [c for c in cfgs if grid_key(c) == key]


def bench_grid_packing(quick: bool) -> list[dict]:
    steps = 3 if quick else 6
    every = laptop_byol_batch64()
    cfgs = [c for c in every if c.bn_groups == every[0].bn_groups]  # as plan() packs them (PACK_APART)
    ghost = [c for c in every if c.bn_groups != every[0].bn_groups]
    new_fields = [k for k in GRID_FIELDS if k not in ("seed", "bn_code", "temperature")]  # what grids hold now
    kind = lambda c: tuple(getattr(c, k) for k in new_fields)  # noqa: E731
    common = Counter(kind(c) for c in cfgs).most_common(1)[0][0]
    old_grid = [c for c in cfgs if kind(c) == common]  # before, only these could share a grid
    old_alone = [c for c in cfgs if kind(c) != common]
    g = len(cfgs)
    new = _concurrent(halves(cfgs), True, 1, steps)
    old = _concurrent(halves(old_grid), True, 1, steps) + _concurrent(halves(old_alone), False, 1, steps)
    separate = _concurrent(halves(cfgs), False, 1, steps)
    rows = [{"laptop BYOL, batch 64": f"{g} runs", "packing": name, "ms per run-step": 1000 * wall / (steps * g),
             "speed-up": separate / wall}
            for name, wall in (("separate runs, 2 processes x 1 thread", separate),
                               (f"before: grids of {'+'.join(str(len(h)) for h in halves(old_grid))}, "
                                f"{len(old_alone)} runs alone", old),
                               (f"now: grids of {'+'.join(str(len(h)) for h in halves(cfgs))}", new))]
    if ghost:  # what plan() avoids: a run of another bn_groups in the grid (one process, one thread each)
        six = cfgs[:5]
        same = _concurrent([six + cfgs[5:6]], True, 1, steps) / (steps * 6)
        mixed = _concurrent([six + ghost[:1]], True, 1, steps) / (steps * 6)
        rows += [{"laptop BYOL, batch 64": "6 runs", "packing": "one grid, one bn_groups, 1 process x 1 thread",
                  "ms per run-step": 1000 * same, "speed-up": None},
                 {"laptop BYOL, batch 64": "6 runs", "packing": f"one grid, one of bn_groups {ghost[0].bn_groups}, "
                  f"1 process x 1 thread", "ms per run-step": 1000 * mixed, "speed-up": None}]
    return rows


def bench_grid_sizes(quick: bool, sizes=(1, 2, 4, 6, 8, 12)) -> list[dict]:
    steps = 3 if quick else 5
    base = Config.from_preset("laptop", "byol", augment="aug+")
    cfgs = [base.replace(bn_code=code, seed=seed) for seed in (0, 1, 2) for code in BN_CODES]
    rows = []
    for g in sizes:
        wall = _concurrent([cfgs[:g], cfgs[g:2 * g]], g > 1, 1, steps)
        per = wall / (steps * 2 * g)
        rows.append({"runs per grid": g, "processes x threads": "2 x 1", "ms per run-step": 1000 * per,
                     "speed-up": rows[0]["ms per run-step"] / (1000 * per) if rows else 1.0})
    return rows


def bench_grid_wall(epochs: int) -> list[dict]:
    from sslnb.runs import launch

    bn = bn_chapter("cpu")
    cfgs = [bn[c].replace(epochs=epochs, lr_milestones=(max(1, epochs - 1),)) for c in BN_CODES]
    rows = []
    for grid in (False, True):
        root = Path(tempfile.mkdtemp(prefix="bench-grid-"))
        t0 = time.perf_counter()
        launch(cfgs, root, progress=False, jobs=2, grid=grid)
        wall = time.perf_counter() - t0
        shutil.rmtree(root, ignore_errors=True)
        rows.append({"BN study, 8 runs": f"{epochs} epochs each", "how": "grids (2 jobs)" if grid else "separate (2 jobs)",
                     "wall s": wall, "speed-up": rows[0]["wall s"] / wall if rows else 1.0})
    return rows


def bench_compile(quick: bool) -> list[dict]:
    """``torch.compile`` (inductor) of the network calls of one step, alone and in a grid of 4, 1
    process with every thread: compile time and ms per run-step against eager."""
    steps = 3 if quick else 8
    cfgs = [bn_chapter("cpu")[c] for c in BN_CODES[:4]]
    rows = []
    for grid_cfgs in ([cfgs[0]], cfgs):
        g = len(grid_cfgs)
        for compiled in (False, True):
            members = _members(grid_cfgs)
            grouped = GroupedNetwork(members, shared_input=True)
            net = grouped.network
            cl = use_channels_last(cfgs[0], torch.device("cpu"), groups=g)
            if cl:
                net.to(memory_format=torch.channels_last)
            if compiled:
                net.outputs = torch.compile(net.outputs)
            opt = build_optimizer(cfgs[0], net.trainable_parameters())
            views = [to_memory_format(torch.randn(64, 3, 16, 16), cl) for _ in range(2)]
            idx = torch.arange(64)
            step = lambda: grid_step(grouped, members, opt, views, [None] * g, [idx] * g, 0.5)  # noqa: E731
            t0 = time.perf_counter()
            step()
            first = time.perf_counter() - t0
            step()
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            per = (time.perf_counter() - t0) / steps
            rows.append({"runs": g, "torch.compile": "yes" if compiled else "no", "first step s": first,
                         "ms per run-step": 1000 * per / g})
    return rows


def _conv_calls(net, views) -> list[tuple]:
    """Every convolution call of one ``net.outputs(views)``: the module, its input's shape, whether that
    input was channels-last, whether it needs a gradient and whether the call is differentiated at all
    (BYOL's target runs without gradients)."""
    calls = []

    def hook(mod, inp, out):
        x = inp[0]
        calls.append((mod, x.shape, x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous(),
                      x.requires_grad, torch.is_grad_enabled()))

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        net.outputs(views)
    finally:
        for h in handles:
            h.remove()
    return calls


def _conv_cost(calls, repeats: int) -> tuple[float, float]:
    """Seconds and FLOP of the convolution calls ``calls``: forward, and where the step differentiates
    them, backward (the weight's gradient, and the input's where it needs one); each distinct call is
    timed once."""
    seconds = flop = 0.0
    for (mod, shape, last, needs_grad, differentiated), n in Counter(calls).items():
        x = torch.randn(shape)
        x = (x.to(memory_format=torch.channels_last) if last else x).requires_grad_(needs_grad)
        with torch.no_grad():
            g = torch.randn_like(mod(x))
        fwd = 2.0 * g.numel() * (mod.in_channels // mod.groups) * mod.kernel_size[0] * mod.kernel_size[1]
        flop += n * fwd * (1 + differentiated + (differentiated and needs_grad))

        def call():
            if not differentiated:
                with torch.no_grad():
                    mod(x)
                return
            mod.zero_grad(set_to_none=True)
            x.grad = None
            mod(x).backward(g)

        call()
        t0 = time.perf_counter()
        for _ in range(repeats):
            call()
        seconds += n * (time.perf_counter() - t0) / repeats
    return seconds, flop


def bench_grid_convs(quick: bool, peak_one_thread: float) -> list[dict]:
    """The convolutions of a laptop grid step of six BYOL runs, and of one of those runs alone, on one
    thread: their time, their FLOP/s against the one-thread matmul peak, and their share of the whole
    step (the step timed as ``_steps`` runs it)."""
    repeats, steps = (5, 3) if quick else (20, 6)
    cfgs = laptop_byol_batch64()[:6]
    rows = []
    for label, group in (("one run alone", cfgs[:1]), (f"grid of {len(cfgs)}", cfgs)):
        members = _members(group)
        c = group[0]
        shared = len({stream_of(x) for x in group}) == 1
        net = GroupedNetwork(members, shared_input=shared).network if len(group) > 1 else members[0]
        if use_channels_last(c, torch.device("cpu"), groups=len(group)):
            net = net.to(memory_format=torch.channels_last)
        channels = 3 if shared else 3 * len(group)  # the runs' own images side by side, as the step has them
        views = [torch.randn(c.batch_size, channels, c.image_size, c.image_size) for _ in range(2)]
        calls = _conv_calls(net, views)
        seconds, flop = _conv_cost(calls, repeats)
        step = _concurrent([group], len(group) > 1, 1, steps) / steps
        rows.append({"laptop BYOL, batch 64, 1 thread": label, "conv calls": len(calls),
                     "conv ms per step": 1000 * seconds, "whole step ms": 1000 * step,
                     "conv share of the step %": 100 * seconds / step, "conv GFLOP/s": flop / seconds / 1e9,
                     "conv % of 1-thread matmul peak": 100 * flop / seconds / peak_one_thread})
    return rows
