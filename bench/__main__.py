"""Benchmarks that print figures: ``python -m bench`` (or ``make bench``) from the repository root.

Tables (each can be chosen with ``--only``):

- ``throughput``: images per second of one training step (both views) for BYOL, SimCLR and InsDis, on
  the cpu preset's network and on ResNet-18 CIFAR at the paper's batch sizes (smaller batches on a CPU:
  the batch is printed), achieved FLOP/s against a matrix-product peak measured in the same run, and
  peak memory;
- ``bare``: the library's training step against the same step written as a bare PyTorch loop with the
  same modules (the ratio should be at most 1.05: no framework overhead);
- ``augment``: the batched ``aug+`` pipeline against torchvision's per-image transforms in a DataLoader
  with one worker per core, two 32x32 views per image;
- ``budget``: the cpu preset's ``make book`` training time by chapter, read from the run directories;
- ``tsne``: ``sslnb.tsne.tsne_fast`` against ``sklearn.manifold.TSNE`` with its defaults on 10,000
  feature vectors of 512 dimensions (an untrained ResNet-18's last-conv features of augmented digits),
  time and trustworthiness (scikit-learn's, 5 neighbours) side by side;
- ``ddp``: one epoch of the cpu preset trained by one process against the same epoch by N processes
  under torchrun (N = the cores on a CPU, one thread each; N = the GPUs on a GPU box);
- ``grid``: the book's study grids trained as one batched network (``sslnb.grid``) against separate
  runs two at a time, per step and end to end (``bench/grid.py`` says how);
- ``compile`` (only when asked: minutes of compiling): ``torch.compile`` of a step, alone and in a grid.

No test asserts any of these times; they are measurements for people. ``python bench/byol_screen.py`` is
a separate script: it trains BYOL variants at a preset and prints their kNN accuracy beside the
untrained network's (the open question of issue 2).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sslnb.augment import BatchAugment  # noqa: E402
from sslnb.config import METHODS, Config  # noqa: E402
from sslnb.methods import CLASSES, build_method  # noqa: E402
from sslnb.optim import build_optimizer  # noqa: E402
from sslnb.train import apply_performance_options, to_memory_format, train_step, use_channels_last  # noqa: E402


# ---------------------------------------------------------------------- helpers
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats: int) -> list[float]:
    """Seconds per call of ``fn`` over ``repeats`` calls (after the caller's warm-up)."""
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def matmul_peak(device: torch.device, dtype=torch.float32, n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of a large square matrix product: the practical peak the step is compared with."""
    if device.type == "cuda":
        n = 8192
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    best = min(timed(lambda: a @ b, device, repeats))
    return 2 * n**3 / best


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kilobytes; whole process


def table(rows: list[dict], title: str) -> None:
    print(f"\n## {title}\n")
    keys = list(rows[0])
    cells = [[k for k in keys]] + [[_fmt(r.get(k)) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    for j, row in enumerate(cells):
        print("| " + " | ".join(c.rjust(w) if j and _numeric(c) else c.ljust(w) for c, w in zip(row, widths)) + " |")
        if j == 0:
            print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    sys.stdout.flush()


def _fmt(v) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.3g}"
    return str(v)


def _numeric(s: str) -> bool:
    return s.replace(",", "").replace(".", "", 1).replace("-", "", 1).isdigit()


# ---------------------------------------------------------------------- one step, two ways
def setup(cfg: Config, device: torch.device):
    """A method, its optimiser and one batch of pre-augmented views (random images)."""
    torch.manual_seed(0)
    n_train = 50_000 if cfg.dataset.startswith("cifar") else 3000
    method = build_method(cfg, 100, n_train).to(device)
    opt = build_optimizer(cfg, method.trainable_parameters())
    method, forward = apply_performance_options(method, cfg, device)
    views = [torch.randn(cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
             for _ in range(method.n_views)]
    views = [to_memory_format(v, use_channels_last(cfg, device)) for v in views]  # as the training loop does
    idx = torch.randperm(n_train, device=device)[: cfg.batch_size]
    y = torch.zeros(cfg.batch_size, dtype=torch.long, device=device)
    return method, forward, opt, views, y, idx


BARE = ("byol", "simclr", "insdis")  # the methods bare_step writes out


def bare_step(method, opt, views, idx, cfg):
    """The same step, written out with the same modules and no library code."""
    if cfg.method == "byol":
        p = [method.predictor(method.online(v)[1]) for v in views]
        with torch.no_grad():
            z = [method.target(v)[1] for v in views]
        cos = lambda a, b: (F.normalize(a, dim=1) * F.normalize(b, dim=1)).sum(1)  # noqa: E731
        loss = (2 - 2 * cos(p[0], z[1])).mean() + (2 - 2 * cos(p[1], z[0])).mean()
    elif cfg.method == "simclr":
        z1, z2 = (F.normalize(method.encoder(v)[1], dim=1) for v in views)
        s = z1 @ z2.T
        logits = (s + s.T - torch.diag_embed(s.diagonal())) / cfg.temperature
        loss = F.cross_entropy(logits, torch.arange(len(z1), device=z1.device))
    else:  # insdis, full softmax over the bank
        f = F.normalize(method.encoder(views[0])[1], dim=1)
        prob = torch.softmax(f @ method.bank.vectors.T / cfg.temperature, dim=1)
        loss = -(prob.gather(1, idx[:, None]) + 1e-7).log().mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
        if cfg.method == "byol":
            online = dict(method.online.named_parameters())
            for name, t in method.target.named_parameters():
                t.mul_(cfg.ema).add_(online[name], alpha=1 - cfg.ema)
        elif cfg.method == "insdis":
            v = method.bank.vectors
            v[idx] = F.normalize(0.5 * v[idx] + 0.5 * f.detach(), dim=1)
    return loss.detach()


def step_flops(method, forward, opt, views, y, idx) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        train_step(method, forward, opt, views, y, idx, 0.5)
    return float(counter.get_total_flops())


# ---------------------------------------------------------------------- the tables
def settings(device: torch.device, quick: bool) -> list[tuple[str, Config]]:
    out = []
    self_supervised = [m for m in METHODS if not CLASSES[m].labelled]  # every registered method but the reference
    for method in self_supervised:
        out.append(("cpu preset", Config.from_preset("cpu", method, device=str(device))))
    for method in self_supervised:
        cfg = Config.from_preset("paper", method, device=str(device), download=False)
        paper_batch = cfg.batch_size
        if device.type == "cpu":  # a paper-size step takes tens of seconds on two cores
            cfg = cfg.replace(batch_size=32 if quick else 64, bn_groups=4)
        out.append((f"paper R18 (paper batch {paper_batch})", cfg))
    return out


def bench_throughput(device, quick: bool) -> None:
    peak = matmul_peak(device)
    bf16_peak = matmul_peak(device, torch.bfloat16) if device.type == "cuda" else None
    rows = []
    for label, cfg in settings(device, quick):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        method, forward, opt, views, y, idx = setup(cfg, device)
        flops = step_flops(method, forward, opt, views, y, idx)
        for _ in range(2):
            train_step(method, forward, opt, views, y, idx, 0.5)
        t = statistics.median(timed(lambda: train_step(method, forward, opt, views, y, idx, 0.5), device,
                                    3 if quick else 6))
        rows.append({"method": cfg.method, "setting": label, "width": cfg.width, "image": cfg.image_size,
                     "batch": cfg.batch_size, "img/s": cfg.batch_size / t, "ms/step": 1000 * t,
                     "GFLOP/step": flops / 1e9, "GFLOP/s": flops / t / 1e9,
                     "% of matmul peak": 100 * flops / t / (bf16_peak if cfg.amp != "none" and bf16_peak else peak),
                     "peak MB": peak_memory_mb(device)})
        del method, opt, views
    table(rows, f"Training step throughput on {device_label(device)} "
                f"(fp32 matmul peak measured now: {peak / 1e9:,.0f} GFLOP/s"
                + (f"; bf16: {bf16_peak / 1e9:,.0f} GFLOP/s" if bf16_peak else "") + ")")


def bench_bare(device, quick: bool) -> None:
    rows = []
    # the cpu-preset settings of the methods bare_step writes out by hand
    for label, cfg in [(lb, c) for lb, c in settings(device, quick) if lb == "cpu preset" and c.method in BARE]:
        method, forward, opt, views, y, idx = setup(cfg, device)
        ours = lambda: train_step(method, forward, opt, views, y, idx, 0.5)  # noqa: E731
        bare = lambda: bare_step(method, opt, views, idx, cfg)  # noqa: E731
        for _ in range(3):
            ours()
            bare()
        t_ours, t_bare = [], []
        for _ in range(10 if quick else 30):  # interleaved, so drift hits both equally
            t_ours += timed(ours, device, 1)
            t_bare += timed(bare, device, 1)
        mo, mb = statistics.median(t_ours), statistics.median(t_bare)
        rows.append({"method": cfg.method, "setting": label, "batch": cfg.batch_size,
                     "library ms/step": 1000 * mo, "bare loop ms/step": 1000 * mb, "ratio": mo / mb})
    table(rows, f"Library step against a bare PyTorch loop with the same modules ({device_label(device)})")


class _PerImageViews:
    """A torchvision Dataset giving two ``aug+`` views of a 32x32 image, per image with PIL."""

    def __init__(self, images):
        from torchvision import transforms as T

        self.images = images
        blur = T.RandomApply([_PILBlur()], p=0.5)
        self.transform = T.Compose([
            T.RandomResizedCrop(32, scale=(0.2, 1.0)), T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
            T.RandomGrayscale(0.2), blur, T.RandomHorizontalFlip(), T.ToTensor()])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        from PIL import Image

        img = Image.fromarray(self.images[i])
        return self.transform(img), self.transform(img)


class _PILBlur:
    """The seed's blur: PIL GaussianBlur with radius sigma ~ U(0.1, 2)."""

    def __call__(self, img):
        import random

        from PIL import ImageFilter

        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(0.1, 2.0)))


def bench_augment(device, quick: bool) -> None:
    from sslnb.data import load_dataset

    data = load_dataset("digits")
    x = data.train.x  # (3000, 3, 32, 32) uint8
    n = len(x)
    aug = BatchAugment("aug+", 32)
    xd = x.to(device)
    g = torch.Generator(device=device).manual_seed(0)

    def ours():
        for chunk in xd.split(512):
            f = chunk.float().div_(255)
            aug(f, g)
            aug(f, g)

    ours()
    t_ours = min(timed(ours, device, 2 if quick else 3))
    workers = os.cpu_count() or 1
    loader = torch.utils.data.DataLoader(_PerImageViews(x.permute(0, 2, 3, 1).numpy()), batch_size=256,
                                         num_workers=workers, persistent_workers=False)

    def theirs():
        for _ in loader:
            pass

    t_theirs = min(timed(theirs, torch.device("cpu"), 1 if quick else 2))
    rows = [{"pipeline": f"sslnb BatchAugment('aug+'), batched on {device.type}", "images": n,
             "images/s (2 views)": n / t_ours, "speed-up": t_theirs / t_ours},
            {"pipeline": f"torchvision per-image + DataLoader ({workers} workers)", "images": n,
             "images/s (2 views)": n / t_theirs, "speed-up": 1.0}]
    table(rows, f"Augmentation throughput, two 32x32 aug+ views per image ({device_label(device)})")


def bench_budget(run_root: Path, preset: str = "cpu") -> None:
    """Per chapter and in total: the runs it adds, how many train in grids (as ``launch`` packs the whole
    run list, two jobs) and alone, the FLOP they compute (``evaluate.run_flop``: training steps and
    measurements), the minutes that takes at the fp32 matmul peak measured now on every thread, and,
    for the runs already trained under ``run_root``, their core-minutes and the fraction of one core's
    peak they reached."""
    from sslnb.evaluate import run_flop
    from sslnb.experiments import CHAPTERS, all_runs, chapter_runs
    from sslnb.grid import plan
    from sslnb.rundir import run_name
    from sslnb.runs import load_run

    cpu = torch.device("cpu")
    peak, cores = matmul_peak(cpu), torch.get_num_threads()
    grids, _ = plan([(c, run_name(c)) for c in all_runs(preset)], parts=2)
    in_grid = {Path(path).name for g in grids for _, path in g}
    seen, rows = set(), []
    # Each run is counted in the first chapter that needs it, the summary page last.
    for chapter in sorted(CHAPTERS, key=lambda c: (c == "00_results", c)):
        row = {"chapter": chapter, "new runs": 0, "in grids": 0, "alone": 0, "TFLOP": 0.0, "not trained": 0,
               "core-minutes": 0.0, "trained TFLOP": 0.0}
        for cfg in chapter_runs(chapter, preset).values():
            name = run_name(cfg)
            if name in seen:
                continue
            seen.add(name)
            flop = sum(run_flop(cfg).values())
            row["new runs"] += 1
            row["in grids" if name in in_grid else "alone"] += 1
            row["TFLOP"] += flop / 1e12
            path = run_root / name
            if (path / "result.json").exists():
                row["core-minutes"] += load_run(path).result.get("wall_s", 0.0) / 60
                row["trained TFLOP"] += flop / 1e12
            else:
                row["not trained"] += 1
        rows.append(row)
    total = {"chapter": "all", **{k: sum(r[k] for r in rows) for k in rows[0] if k != "chapter"}}
    for row in [*rows, total]:
        row["minutes at peak"] = row["TFLOP"] * 1e12 / peak / 60  # every thread busy at the matmul peak
        core_s, trained = row.pop("core-minutes") * 60, row.pop("trained TFLOP") * 1e12
        row["core-minutes"] = core_s / 60
        row["% of a core's peak"] = 100 * trained / (core_s * peak / cores) if core_s else None
    table([*rows, total], f"The {preset} preset's training budget by chapter (runs under {run_root}; a run shared by "
                          f"chapters is counted in the first; fp32 matmul peak measured now: {peak / 1e9:,.0f} GFLOP/s "
                          f"on {cores} threads, {device_label(cpu)})")
    # What each chapter's own runs cost (shared runs in every chapter that shows them): the line each
    # chapter opens with reads it for the other presets.
    from sslnb.experiments import BUDGETS, record_budget

    recorded = record_budget(preset, run_root)
    print(f"recorded in {BUDGETS}: the {preset} preset's cost of {len(recorded['chapters'])} chapters "
          f"(those whose runs are all trained under {run_root})")


def tsne_features(n: int):
    """(n, 512) last-conv features of an untrained CIFAR ResNet-18 (width 64) on augmented digits."""
    from sslnb.data import load_dataset

    torch.manual_seed(0)
    cfg = Config.from_preset("cpu", "byol", width=64)
    data = load_dataset("digits", download=False)
    method = build_method(cfg, data.num_classes, len(data.train)).eval()
    augment, g = BatchAugment("normal", cfg.image_size), torch.Generator().manual_seed(0)
    out = []
    with torch.no_grad():
        while sum(len(o) for o in out) < n:
            x = data.train.x[torch.randint(len(data.train), (500,), generator=g)].float().div_(255)
            out.append(method.embed(data.normalize(augment(x, g)))[0])
    return torch.cat(out)[:n].numpy()


def bench_tsne(quick: bool) -> None:
    from sklearn.manifold import TSNE, trustworthiness

    from sslnb.tsne import tsne_fast

    n = 3000 if quick else 10000
    x = tsne_features(n)
    rows = []
    for name, fn in [("sslnb.tsne.tsne_fast", lambda: tsne_fast(x)),
                     ("sklearn TSNE (defaults)", lambda: TSNE(random_state=0).fit_transform(x))]:
        t0 = time.perf_counter()
        emb = fn()
        seconds = time.perf_counter() - t0
        rows.append({"t-SNE": name, "points": n, "seconds": seconds, "trustworthiness": f"{trustworthiness(x, emb):.4f}"})
    rows[0]["speed-up"] = rows[1]["seconds"] / rows[0]["seconds"]
    rows[1]["speed-up"] = 1.0
    table(rows, f"t-SNE of {n} x 512 features, {torch.get_num_threads()} threads")


def bench_ddp(device, quick: bool) -> None:
    import subprocess
    import tempfile

    from sslnb.rundir import read_records
    from sslnb.runs import launcher

    n = torch.cuda.device_count() if device.type == "cuda" else (os.cpu_count() or 2)
    if n < 2:
        print("\n## DDP: skipped (one device)")
        return
    rows = []
    for method in ("simclr", "byol") if not quick else ("simclr",):
        flags = ["-m", "sslnb.train", "--preset", "cpu", "--method", method, "--epochs", "1", "--probe", "none",
                 "--lr-milestones", "", "--device", device.type, "--quiet"]
        base = None
        for procs in (1, n):
            with tempfile.TemporaryDirectory() as tmp:
                env = {**os.environ, "OMP_NUM_THREADS": str(1 if procs > 1 and device.type == "cpu" else n)}
                subprocess.run(launcher(procs) + flags + ["--run-dir", f"{tmp}/run"], env=env, check=True,
                               cwd=ROOT, capture_output=True)
                epoch = [r for r in read_records(Path(tmp) / "run") if r["kind"] == "epoch"][-1]
            base = base or epoch["epoch_s"]
            rows.append({"method": method, "processes": procs, "threads each": env["OMP_NUM_THREADS"],
                         "epoch s": epoch["epoch_s"], "img/s": epoch["img_per_s"], "vs one process": base / epoch["epoch_s"]})
    table(rows, f"One epoch of the cpu preset (batch 64, digits): one process against {n} under torchrun")


def bench_grid(quick: bool, epochs: int) -> None:
    from bench.grid import bench_grid_packing, bench_grid_sizes, bench_grid_steps, bench_grid_wall

    cpu = torch.device("cpu")
    peak = matmul_peak(cpu)
    table(bench_grid_steps(quick, peak, step_flops),
          f"Grids of runs, one training step of each run (BYOL, cpu preset; {device_label(cpu)}; fp32 matmul peak "
          f"measured now: {peak / 1e9:,.0f} GFLOP/s)")
    table(bench_grid_wall(epochs), f"The BN study's 8 runs end to end, grids against separate runs ({device_label(cpu)})")
    table(bench_grid_packing(quick), f"The laptop book's BYOL runs at batch 64, one step each, as launch packs them "
                                     f"({device_label(cpu)})")
    table(bench_grid_sizes(quick), f"Grid size: laptop BYOL runs at batch 64, one grid per process ({device_label(cpu)})")


def bench_convs(quick: bool) -> None:
    from bench.grid import bench_grid_convs

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        peak = matmul_peak(torch.device("cpu"))
        table(bench_grid_convs(quick, peak), f"The convolutions of a laptop grid step, one thread "
                                             f"({device_label(torch.device('cpu'))}; fp32 matmul peak on one thread "
                                             f"measured now: {peak / 1e9:,.0f} GFLOP/s)")
    finally:
        torch.set_num_threads(threads)


def bench_compile(quick: bool) -> None:
    from bench.grid import bench_compile as rows

    table(rows(quick), f"torch.compile of the step's network calls, alone and in a grid of 4 "
                       f"({device_label(torch.device('cpu'))})")


def device_label(device: torch.device) -> str:
    from sslnb.rundir import device_name

    return device_name(device)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--only", default="throughput,bare,augment,budget,tsne,ddp,grid")
    p.add_argument("--grid-epochs", type=int, default=2, help="epochs of the BN study's end-to-end grid timing")
    p.add_argument("--quick", action="store_true", help="fewer repeats and smaller CPU batches")
    p.add_argument("--run-root", default=str(ROOT / "runs"))
    p.add_argument("--preset", default="cpu", help="the preset whose runs --only budget counts")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    print(f"# sslnb benchmarks: {device_label(device)}, torch {torch.__version__}, "
          f"{time.strftime('%Y-%m-%d')}")
    only = args.only.split(",")
    if "throughput" in only:
        bench_throughput(device, args.quick)
    if "bare" in only:
        bench_bare(device, args.quick)
    if "augment" in only:
        bench_augment(device, args.quick)
    if "budget" in only:
        bench_budget(Path(args.run_root), args.preset)
    if "tsne" in only:
        bench_tsne(args.quick)
    if "ddp" in only:
        bench_ddp(device, args.quick)
    if "grid" in only:
        bench_grid(args.quick, args.grid_epochs)
    if "convs" in only:
        bench_convs(args.quick)
    if "compile" in only:  # not in the default list: compiling takes minutes on two cores
        bench_compile(args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
