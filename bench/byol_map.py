"""The BYOL compute map (issue 18): how much training compute BYOL needs before it learns, beside SimCLR.

Each *point* is a setting of the axes that plausibly matter (dataset, network width, resolution, number of
training images, epochs). At every point BYOL and SimCLR train with two seeds each (the cpu preset's
recipe otherwise, no linear probe: the measure is kNN), and the untrained network of the same setting is
measured twice: as it is (BatchNorm statistics at their initial values, the ``epochs = 0`` run) and with
its BatchNorm statistics estimated on the training images (calibrated). A point's compute is the
optimiser steps times the FLOP of one step (counted by ``torch.utils.flop_counter`` on a real step) and
the core-hours it took on the machine that ran it.

    python bench/byol_map.py                     # every point, cheapest first (make map)
    python bench/byol_map.py --points fashion-10k-w8 --jobs 2
    python bench/byol_map.py --list              # the points and their estimated cost

Every finished point is written at once to ``bench/byol_map.json`` (one row per run, with the machine,
the commit and the command) and to the map's section of ``bench/RESULTS.md``; the book's page "How much
compute does BYOL need?" draws the JSON. Runs go to ``--run-root`` and are reused there, so the command
continues where it stopped. On a GPU box pass ``--device cuda`` (runs then train one at a time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from sslnb.config import Config, ConfigError  # noqa: E402
from sslnb.data import DatasetUnavailable, dataset_of, steps_per_epoch  # noqa: E402
from sslnb.evaluate import raw_pixel_knn, step_flop, untrained_knn_with_calibrated_bn  # noqa: E402
from sslnb.rundir import device_name, git_commit  # noqa: E402
from sslnb.runs import LaunchError, launch  # noqa: E402

RECORD = ROOT / "bench" / "byol_map.json"
RESULTS = ROOT / "bench" / "RESULTS.md"
START, END = "<!-- byol-map:start -->", "<!-- byol-map:end -->"
METHODS = ("byol", "simclr")
SEEDS = (0, 1)
SUPERVISED_SEEDS = (0,)  # how much the images allow: a supervised network of the same backbone, one seed

# Cheapest first. Each entry: Config overrides of the cpu preset (epochs with learning-rate milestones at
# the preset's fractions, 16/20 and 19/20). The widest points (width 64, 32x32, all 60,000 images) are for
# a GPU: ``--points gpu-...`` there.
POINTS = {
    "digits-w8": dict(dataset="digits", width=8, image_size=16, epochs=20),  # the cpu preset
    "fashion-10k-w8": dict(dataset="fashion", width=8, image_size=16, train_size=10000, epochs=8),
    "fashion-10k-w8-28px": dict(dataset="fashion", width=8, image_size=28, train_size=10000, epochs=8),
    "fashion-10k-w32": dict(dataset="fashion", width=32, image_size=16, train_size=10000, epochs=8),
    "digits-w32": dict(dataset="digits", width=32, image_size=16, epochs=20),
    "fashion-60k-w8": dict(dataset="fashion", width=8, image_size=16, epochs=8),
    "fashion-10k-w8-40ep": dict(dataset="fashion", width=8, image_size=16, train_size=10000, epochs=40),
    # the BatchNorm study's sharpest contrast at the same point: no BatchNorm in any head (the seed's 000
    # collapsed), BYOL only
    "fashion-10k-w8-40ep-bn000": dict(dataset="fashion", width=8, image_size=16, train_size=10000, epochs=40,
                                      bn_code="000", methods=("byol",)),
    # The second frontier (issue 25): where does each method beat raw pixels and the stronger untrained
    # network by the book's clear margin? Expected before measuring:
    # - canvas: Fashion-MNIST items at a random size and position on a 32x32 canvas (data.fashion_canvas).
    #   Raw pixels fall from 80 to 61 (measured: position and size no longer line up); a method whose
    #   crops teach it to ignore them should keep most of what it reads from the plain images, so SimCLR
    #   (+10 over pixels after 1,248 steps in ../shared/reference/byol-small-scale.md) should clear the bar,
    #   and BYOL, which lost ground at 1,248 steps there, should need the 40 epochs it needs on plain
    #   Fashion-MNIST.
    "canvas-10k-w8": dict(dataset="fashion-canvas", width=8, image_size=16, train_size=10000, epochs=8),
    "canvas-10k-w8-40ep": dict(dataset="fashion-canvas", width=8, image_size=16, train_size=10000, epochs=40,
                               eval_every=5),
    # - steps or images? Batch 32 for the 6,280 steps of the laptop preset (20 epochs) sees half the images
    #   for half the FLOP; the learning rate scaled linearly, as the batch-size chapter does. If BYOL's
    #   learning follows optimiser steps, this point matches batch 64's 40 epochs at half the cost.
    "fashion-10k-w8-b32-20ep": dict(dataset="fashion", width=8, image_size=16, train_size=10000, epochs=20,
                                    batch_size=32, lr=0.05, eval_every=5),
    "canvas-10k-w8-b32-20ep": dict(dataset="fashion-canvas", width=8, image_size=16, train_size=10000, epochs=20,
                                   batch_size=32, lr=0.05, eval_every=5),
    "gpu-fashion-60k-w64-32px": dict(dataset="fashion", width=64, image_size=32, epochs=40),
    "gpu-digits-w64-32px-100ep": dict(dataset="digits", width=64, image_size=32, epochs=100),
}


# The points that carry a supervised reference (the second frontier's; the earlier points were measured
# without it).
FRONTIER = ("canvas-10k-w8", "canvas-10k-w8-40ep", "fashion-10k-w8-b32-20ep", "canvas-10k-w8-b32-20ep")


def point_config(name: str, method: str, seed: int, device: str, data_root: str) -> Config:
    over = dict(POINTS[name])
    over.pop("methods", None)
    over.pop("supervised", None)
    epochs = over.pop("epochs")
    milestones = tuple(sorted({max(1, round(epochs * f)) for f in (16 / 20, 19 / 20)}))
    return Config.from_preset("cpu", method, seed=seed, epochs=epochs, lr_milestones=milestones, probe="none",
                              device=device, data_root=data_root, **over)


def measure_point(name: str, args) -> list[dict]:
    methods = POINTS[name].get("methods", METHODS)
    configs = {(m, s): point_config(name, m, s, args.device, args.data_root) for m in methods for s in SEEDS}
    if POINTS[name].get("supervised", name in FRONTIER):
        configs.update({("supervised", s): point_config(name, "supervised", s, args.device, args.data_root)
                        for s in SUPERVISED_SEEDS})
    init_cfgs = {s: configs["byol", s].replace(epochs=0, augment="normal", bn_code="111") for s in SEEDS}
    started = time.time()
    runs = launch([*init_cfgs.values(), *configs.values()], args.run_root, progress=not args.quiet, jobs=args.jobs)
    run_of = dict(zip([("init", s) for s in SEEDS] + list(configs), runs))
    cfg0 = configs["byol", 0]
    data = dataset_of(cfg0.replace(download=False))
    pixels = raw_pixel_knn(cfg0, data)
    calibrated = {s: untrained_knn_with_calibrated_bn(init_cfgs[s], data) for s in SEEDS}
    rows = []
    for (method, seed), cfg in configs.items():
        run = run_of[method, seed]
        steps = cfg.epochs * steps_per_epoch(cfg)
        flop = step_flop(cfg, data.num_classes, len(data.train))
        wall = run.result.get("wall_s", 0.0)
        threads = int(re.search(r"(\d+) threads", run.provenance.get("device_name", "1 threads")).group(1))
        rows.append({
            "point": name, "method": method, "seed": seed, "dataset": cfg.dataset, "width": cfg.width,
            "image_size": cfg.image_size, "train_images": len(data.train), "epochs": cfg.epochs, "steps": steps,
            "batch_size": cfg.batch_size, "flop_per_step": flop, "train_flop": flop * steps,
            "wall_s": wall, "threads": threads, "core_hours": wall * threads / 3600,
            "knn_final": run.result["knn"], "knn_best": max(run.metric("knn")[1]),
            "eff_rank": run.result.get("eff_rank"), "bn_code": cfg.bn_code, "z_std": run.result.get("z_std"),
            "z_std_ref": run.result.get("z_std_ref"), "untrained_knn": run_of["init", seed].result["knn"],
            "untrained_knn_calibrated": calibrated[seed], "raw_pixel_knn": pixels,
            "device": run.provenance.get("device_name", "?"), "commit": run.provenance.get("git_commit", "?"),
            "run": run.name, "command": "python " + " ".join(sys.argv),
        })
    print(f"{name}: {len(rows)} runs measured in {(time.time() - started) / 60:.1f} min", flush=True)
    return rows


def record(rows: list[dict]) -> list[dict]:
    """Merge the rows of a point into bench/byol_map.json and rewrite the map's section of RESULTS.md."""
    old = json.loads(RECORD.read_text()) if RECORD.exists() else []
    keys = {(r["point"], r["method"], r["seed"]) for r in rows}
    merged = [r for r in old if (r["point"], r["method"], r["seed"]) not in keys] + rows
    order = list(POINTS)
    merged.sort(key=lambda r: (order.index(r["point"]) if r["point"] in order else 99, r["method"], r["seed"]))
    tmp = RECORD.with_suffix(".tmp")
    tmp.write_text(json.dumps(merged, indent=1) + "\n")
    os.replace(tmp, RECORD)
    text = RESULTS.read_text()
    section = f"{START}\n{table(merged)}\n{END}"
    if START in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    RESULTS.write_text(text)
    return merged


def table(rows: list[dict]) -> str:
    lines = ["| point | method | seed | train images | steps | GFLOP/step | PFLOP | core-h | kNN final (best) "
             "| untrained (calibrated) | gain vs calibrated | raw pixels | gain vs pixels | eff. rank | device |",
             "|---|---|---:|---:|---:|---:|---:|---:|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['point']} | {r['method']} | {r['seed']} | {r['train_images']} | {r['steps']} "
                     f"| {r['flop_per_step'] / 1e9:.2f} | {r['train_flop'] / 1e15:.3f} | {r['core_hours']:.3f} "
                     f"| {r['knn_final']:.1f} ({r['knn_best']:.1f}) | {r['untrained_knn']:.1f} "
                     f"({r['untrained_knn_calibrated']:.1f}) | {r['knn_final'] - r['untrained_knn_calibrated']:+.1f} "
                     f"| {r['raw_pixel_knn']:.1f} | {r['knn_final'] - r['raw_pixel_knn']:+.1f} "
                     f"| {r['eff_rank'] or float('nan'):.1f} | {r['device']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--points", nargs="*", default=[n for n in POINTS if not n.startswith("gpu-")],
                   help=f"points to measure (default: every CPU point); known: {', '.join(POINTS)}")
    p.add_argument("--run-root", default="runs/map")
    p.add_argument("--data-root", default="data")
    p.add_argument("--device", default="cpu")
    p.add_argument("--jobs", type=int, default=None, help="runs at once (default: 2 on a CPU, 1 on a GPU)")
    p.add_argument("--list", action="store_true", help="list the points and stop")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    args.jobs = args.jobs or (1 if args.device.startswith("cuda") else 2)
    unknown = [n for n in args.points if n not in POINTS]
    if unknown:
        print(f"byol_map.py: unknown point {unknown[0]!r}; known: {', '.join(POINTS)}", file=sys.stderr)
        return 2
    if args.list:
        for name in args.points:
            cfg = point_config(name, "byol", 0, args.device, args.data_root)
            print(f"{name:28s} {cfg.dataset:8s} width {cfg.width:3d} {cfg.image_size}px "
                  f"{cfg.train_size or 'all'} images, {cfg.epochs} epochs = {cfg.epochs * steps_per_epoch(cfg)} steps")
        return 0
    print(f"BYOL compute map on {device_name(torch.device(args.device))}, commit {git_commit()}", flush=True)
    for name in args.points:
        try:
            record(measure_point(name, args))
        except (ConfigError, DatasetUnavailable, LaunchError) as e:
            print(f"byol_map.py: {name}: {e}", file=sys.stderr)
            return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
