"""``python bench/lone_runs.py``: what the laptop book's lone runs would cost packed another way (issue 25).

Two tables, one step of each arrangement, milliseconds per step (bench/RESULTS.md, "The laptop book in two hours
with a margin"):

- **pairs**: the batch chapter's runs of one batch size that differ only in ``bn_groups`` (the seed-like groups
  and full-batch BatchNorm), each alone in two processes of one thread side by side, against the two as one grid
  (the other core busy with one of them alone), and for comparison a grid of two seeds of the seed-like run;
- **bf16**: a laptop BYOL step alone and a grid of six, fp32 against bf16 autocast, one thread.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.grid import _steps, _worker  # noqa: E402
from sslnb.config import Config  # noqa: E402
from sslnb.experiments import batch_chapter  # noqa: E402


def side_by_side(parts, steps: int = 12) -> dict[str, float]:
    """Seconds per step of each ``(tag, configs, as_grid)`` part, the parts in processes running at once."""
    ctx = mp.get_context("spawn")
    barrier, queue = ctx.Barrier(len(parts)), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=([c.to_dict() for c in cfgs], grid, 1, steps, barrier, queue, tag))
             for tag, cfgs, grid in parts]
    for p in procs:
        p.start()
    out = {tag: seconds / steps for tag, seconds in (queue.get() for _ in procs)}
    for p in procs:
        p.join()
    return out


def pairs() -> None:
    runs = batch_chapter("laptop")
    print("| batch | g2 alone | g1 alone | the two as one grid | its ratio to their sum | grid of two seeds of g2 |")
    print("|---|---:|---:|---:|---:|---:|")
    for b in (32, 128):
        g2 = runs[f"B={b}"]
        g1 = g2.replace(bn_groups=1)
        lone = side_by_side([("g2", [g2], False), ("g1", [g1], False)])
        mixed = side_by_side([("mixed", [g2, g1], True), ("busy", [g2], False)])["mixed"]
        seeds = side_by_side([("seeds", [g2, g2.replace(seed=1)], True), ("busy", [g1], False)])["seeds"]
        print(f"| {b} | {1000 * lone['g2']:.1f} | {1000 * lone['g1']:.1f} | {1000 * mixed:.1f} | "
              f"{mixed / (lone['g2'] + lone['g1']):.2f} | {1000 * seeds:.1f} |", flush=True)


def bf16() -> None:
    torch.set_num_threads(1)
    base = Config.from_preset("laptop", "byol", augment="aug+")
    print("| runs | fp32 ms per run-step | bf16 ms per run-step |")
    print("|---|---:|---:|")
    for g in (1, 6):
        cfgs = [base.replace(seed=s, bn_code=c) for s, c in zip(range(g), ["111", "011", "110", "101", "100", "010"])]
        times = []
        for amp in (False, True):
            step = _steps(cfgs, g > 1)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                for _ in range(2):
                    step()
                t0 = time.perf_counter()
                for _ in range(6):
                    step()
            times.append(1000 * (time.perf_counter() - t0) / 6 / g)
        print(f"| {g} | {times[0]:.1f} | {times[1]:.1f} |", flush=True)


if __name__ == "__main__":
    pairs()
    bf16()
