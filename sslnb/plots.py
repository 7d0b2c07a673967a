"""Figures and tables for the book: training curves, t-SNE panels, and results beside the seed's numbers."""

from __future__ import annotations

import fcntl
from pathlib import Path

import numpy as np
import seaborn as sns

from .config import METHODS
from .evaluate import CLEAR_MARGIN, compare_with_references, mean_and_interval
from .methods import CLASSES
from .runs import Run
from .tsne import tsne, tsne_fast

# One look for every figure of the book: seaborn's theme, set once when the chapters import the plots.
sns.set_theme(context="notebook", style="whitegrid", palette="deep", font_scale=0.9)


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(np.pad(y, (window // 2, window - 1 - window // 2), mode="edge"), kernel, mode="valid")


# How many test points the t-SNE pictures use per preset (the seed used all 10,000 CIFAR test images).
# The chapters' figures and the explorers share these embeddings (one cache file per run and layer).
TSNE_POINTS = {"smoke": 200, "cpu": 600, "laptop": 1000, "paper": 10000}
LAYER_NAMES = {"z": "FC (projection output)", "h": "last conv (pooled backbone)"}


def tsne_embedding(features: np.ndarray, cache: Path | None = None, perplexity: float = 25.0,
                   seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``features`` (N, D) -> (N, 2), with the TensorBoard projector's perplexity 25 and
    cosine metric (the seed's figures came from the projector); cached in ``cache`` if given.
    Up to 3,000 points use the exact dense implementation in :mod:`sslnb.tsne`, more the grid-accelerated
    one (:func:`sslnb.tsne.tsne_fast`; ``python -m bench --only tsne`` compares it with scikit-learn).
    Two processes asking for the same cache (two chapters executing at once) compute it once: the
    second waits on a lock file and reads the first one's result. A cache that cannot be written (finished
    runs on a read-only share) is read if it is there, and skipped if not: the embedding is computed."""
    if cache is None:
        return _tsne(features, perplexity, seed)
    if cache.exists():  # written whole by a rename: safe to read without the lock
        return np.load(cache)
    try:
        lock = open(cache.with_suffix(".lock"), "w")
    except OSError:  # a read-only run directory
        return _tsne(features, perplexity, seed)
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cache.exists():
            return np.load(cache)
        emb = _tsne(features, perplexity, seed)
        tmp = cache.with_suffix(".tmp.npy")
        np.save(tmp, emb)
        tmp.replace(cache)
    return emb


def _tsne(features: np.ndarray, perplexity: float, seed: int) -> np.ndarray:
    if len(features) <= 3000:
        return tsne(features, perplexity=perplexity, seed=seed)
    return tsne_fast(features, perplexity=perplexity, seed=seed, metric="cosine", threads=1)


def run_tsne(run: Run, layer: str = "h", max_points: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(embedding (N, 2), labels (N,)) of the first ``max_points`` test features of one run's ``layer``
    (``z`` FC, ``h`` last conv); ``max_points`` defaults to the run's preset entry in ``TSNE_POINTS``."""
    max_points = max_points or TSNE_POINTS.get(run.config.preset, 10000)
    feats = run.features()
    n = min(max_points, len(feats["y"]))
    emb = tsne_embedding(feats[layer][:n], run.path / f"tsne_{layer}_{max_points}.npy")
    return emb, feats["y"][:n]


def class_colours(n_classes: int):
    """The colour map the t-SNE pictures use: tab10 up to 10 classes, a spectrum above."""
    import matplotlib

    return matplotlib.colormaps["tab10" if n_classes <= 10 else "nipy_spectral"].resampled(max(n_classes, 2))


def tsne_scatter(ax, emb: np.ndarray, y: np.ndarray, n_classes: int, highlight: int | None = None,
                 title: str = "") -> None:
    """One t-SNE picture coloured by class; with ``highlight``, that class in colour and the rest grey."""
    colours = class_colours(n_classes)(y % max(n_classes, 2))
    if highlight is not None:
        mine = y == highlight
        ax.scatter(emb[~mine, 0], emb[~mine, 1], c="0.85", s=3, linewidths=0)
        ax.scatter(emb[mine, 0], emb[mine, 1], c=colours[mine], s=6, linewidths=0)
    else:
        ax.scatter(emb[:, 0], emb[:, 1], c=colours, s=4, linewidths=0)
    ax.set_title(title, fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def tsne_panels(run: Run, layers=("z", "h"), max_points: int | None = None, axes=None, title: str = ""):
    """t-SNE of one run's test features: FC (projection ``z``) beside last conv (``h``), by class."""
    import matplotlib.pyplot as plt

    if axes is None:
        axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 4.5))[1]
    axes = np.atleast_1d(axes)
    for ax, layer in zip(axes, layers):
        emb, y = run_tsne(run, layer, max_points)
        tsne_scatter(ax, emb, y, int(y.max()) + 1, title=f"{title} {LAYER_NAMES[layer]}".strip())
    return axes


# The metrics a curve can show: label for the y axis. Step records carry loss and lr; the rest are
# measured once per epoch (epoch 0 = the random initialisation).
CURVE_METRICS = {
    "loss": "training loss",
    "knn": "kNN accuracy, last conv (%)",
    "knn_z": "kNN accuracy, projection (%)",
    "knn_bank": "kNN accuracy, feature vs memory bank (%)",
    "z_std": "std of normalised z (collapse: towards 0)",
    "eff_rank": "effective rank of z (collapse: towards 1)",
    "alignment": "alignment (lower: views agree)",
    "uniformity": "uniformity (lower: more spread)",
    "lr": "learning rate",
}


def curves(ax, runs: dict[str, Run], metric: str = "loss", log: bool = False, smooth: int = 1,
           x: str = "epoch", reference: float | None = None, reference_label: str = "") -> None:
    """One metric of several runs ({label: Run}) against epochs or optimiser steps: the book's one curve
    function (chapters and explorers). Per-step series (``loss``, ``lr``) are drawn as lines, the loss
    smoothed with a ``smooth``-step moving average; per-epoch metrics as markers (epoch 0 = the random
    initialisation). ``z_std`` gets the no-collapse reference 1/sqrt(dim) as a dotted line; any other
    horizontal ``reference`` (e.g. the untrained network's kNN) is dashed."""
    for i, (label, run) in enumerate(runs.items()):
        style = dict(color=f"C{i % 10}", ls="-" if i < 10 else "--", label=label)
        per_epoch = run.steps_per_epoch
        sx, sy = run.metric(metric, "step")
        if sx:
            xs = np.array(sx, float) / (per_epoch if x == "epoch" else 1)
            ax.plot(xs, _smooth(np.array(sy, float), smooth if metric == "loss" else 1), lw=1, **style)
            continue
        ex, ey = run.metric(metric)
        if ex:
            ax.plot(np.array(ex, float) * (per_epoch if x == "step" else 1), ey, marker="o", ms=3, lw=1, **style)
    if metric == "z_std" and runs:
        ref = next(iter(runs.values())).result.get("z_std_ref")
        if ref:
            ax.axhline(ref, color="grey", ls=":", lw=1, label="1/sqrt(dim): no collapse")
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=1, label=reference_label)
    if log and not any(np.any(np.asarray(line.get_ydata(), float) > 0) for line in ax.lines):
        log = False  # e.g. uniformity, which is never positive: say so instead of warning
        ax.text(0.99, 0.02, "no positive values: linear scale", transform=ax.transAxes, ha="right", fontsize=7,
                color="0.4")
    ax.set_yscale("log" if log else "linear")
    ax.set_xlabel("epoch" if x == "epoch" else "optimiser step")
    ax.set_ylabel(CURVE_METRICS.get(metric, metric))
    if ax.lines:
        ax.legend(fontsize=7, ncols=2 if len(ax.lines) > 6 else 1)


def table(rows: list[dict], runs: dict | None = None, precision: int = 1, formats: dict | None = None,
          caption: str | None = None):
    """The book's one way to show a table: ``rows`` (dicts, one per row) as a styled pandas table with
    ``precision`` decimals (``formats``: column -> format string, for the exceptions), a dash for a
    missing cell, no index, and a caption saying which runs (``{label: Run}``) made its numbers (or
    ``caption``, for numbers recorded elsewhere). Cells keep their Python types (an integer column with a
    gap still shows integers)."""
    import pandas as pd

    return (pd.DataFrame(rows, dtype=object).style.format(formats or {}, precision=precision, na_rep="–")
            .hide(axis="index").set_caption(caption or table_caption(runs)))


def show_source(dotted: str):
    """The source of a library function, class or method, by its dotted name (``"sslnb.losses.nt_xent"``,
    ``"sslnb.methods.byol.BYOL.outputs"``), syntax-highlighted: the chapters show the code they teach this
    way, so that it reads the same in JupyterLab, in a papermill output and on the site (a MyST
    ``literalinclude`` shows only on the site). A name that does not resolve is a one-line error."""
    import importlib
    import inspect
    import textwrap

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):  # the longest importable module prefix, then attributes
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
            break
        except ModuleNotFoundError:
            continue
    else:
        raise ValueError(f"show_source: no module in {dotted!r}")
    try:
        for name in parts[cut:]:
            obj = getattr(obj, name)
    except AttributeError:
        raise ValueError(f"show_source: {dotted!r} does not name a function, class or method") from None
    return Source(textwrap.dedent(inspect.getsource(obj)))


class Source:
    """Python source shown highlighted (``_repr_html_``, inline styles: no style sheet on the page), or as
    plain text where HTML is not shown."""

    def __init__(self, code: str):
        self.code = code

    def _repr_html_(self) -> str:
        from pygments import highlight
        from pygments.formatters import HtmlFormatter
        from pygments.lexers import PythonLexer

        return highlight(self.code, PythonLexer(), HtmlFormatter(noclasses=True, nobackground=True))

    def __repr__(self) -> str:
        return self.code


def provenance_markdown(runs: dict, what: str = "these numbers") -> str:
    """Markdown naming the preset and dataset of ``runs`` ({label: Run}), then an HTML table with each
    run's directory, epochs, device, git commit and wall time. (HTML, because the book renders
    notebook Markdown outputs as CommonMark, which has no tables.)"""
    from html import escape

    first = next(iter(runs.values())).config
    cells = ["<tr><th>run</th><th>directory</th><th>epochs</th><th>device</th><th>commit</th>"
             "<th>wall (min)</th></tr>"]
    for label, r in runs.items():
        p, wall = r.provenance, r.result.get("wall_s")
        wall = "–" if wall is None else f"{wall / 60:.1f}"
        values = [label, r.name, r.config.epochs, p.get("device_name", "?"), p.get("git_commit", "?"), wall]
        cells.append("<tr>" + "".join(f"<td>{escape(str(v))}</td>" for v in values) + "</tr>")
    return (f"**Where {what} come from.** Preset `{first.preset or 'custom'}`, dataset `{first.dataset}`, "
            f"{first.network} width {first.width}, trained by `sslnb.train`:\n\n"
            "<table class=\"provenance\">" + "".join(cells) + "</table>\n")


def provenance_line(runs: dict) -> str:
    """One line for a figure or a table: preset, dataset, the runs' labels, git commit(s), device(s) and
    their training time ({label: Run}; the page's provenance table maps labels to run directories)."""
    first = next(iter(runs.values())).config
    commits = ", ".join(sorted({r.provenance.get("git_commit", "?") for r in runs.values()}))
    devices = ", ".join(sorted({r.provenance.get("device_name", "?") for r in runs.values()}))
    wall = sum(r.result.get("wall_s") or 0 for r in runs.values()) / 60
    return (f"preset {first.preset or 'custom'}, dataset {first.dataset}; runs: {', '.join(runs)}; "
            f"commit {commits}; {devices}; {wall:.1f} min of training")


def stamp(fig, runs: dict, width: int = 150) -> None:
    """Write ``provenance_line(runs)`` under a figure (wrapped, small grey text) and lay the figure out
    around it, so a cpu-preset picture can always be told from a paper-preset one."""
    import textwrap

    text = "\n".join(textwrap.wrap("Made from " + provenance_line(runs), width))
    lines = text.count("\n") + 1
    height = fig.get_figheight()
    fig.tight_layout(rect=(0, min(0.3, 0.17 * lines / height), 1, 1))
    fig.text(0.01, 0.005, text, fontsize=6.5, color="0.4", va="bottom", ha="left")


def table_caption(runs: dict) -> str:
    """A caption for a results table (``Styler.set_caption``): where its numbers come from."""
    return "Our numbers (anything marked as the seed's is theirs) come from " + provenance_line(runs)



# ---------------------------------------------------------------------- the BYOL compute map
def load_compute_map(path: str | Path) -> list[dict]:
    """The rows of ``bench/byol_map.json`` (one per run of the map; see ``bench/byol_map.py``), or []
    where no point has been measured yet."""
    import json

    path = Path(path)
    return json.loads(path.read_text()) if path.exists() else []


def compute_map_summary(rows: list[dict], threshold: float = 10.0) -> list[dict]:
    """One row per point and method: compute, mean and smallest kNN gain over the seeds against the
    calibrated untrained network (and against the plain one), and whether every seed clears
    ``threshold`` points (the bar of a preset in which BYOL learns)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["point"], r["method"]), []).append(r)
    out = []
    for (point, method), rs in groups.items():
        gains = [r["knn_final"] - r["untrained_knn_calibrated"] for r in rs]
        plain = [r["knn_final"] - r["untrained_knn"] for r in rs]
        first = rs[0]
        out.append({"point": point, "method": method, "seeds": len(rs), "dataset": first["dataset"],
                    "width": first["width"], "pixels": first["image_size"], "images": first["train_images"],
                    "steps": first["steps"], "PFLOP": first["train_flop"] / 1e15,
                    "core-hours": float(np.mean([r["core_hours"] for r in rs])),
                    "kNN": float(np.mean([r["knn_final"] for r in rs])),
                    "untrained (calibrated)": float(np.mean([r["untrained_knn_calibrated"] for r in rs])),
                    "gain vs calibrated": float(np.mean(gains)), "smallest gain": min(gains),
                    "gain vs plain": float(np.mean(plain)),
                    f"≥ {threshold:g} on every seed": "yes" if len(rs) >= 2 and min(gains) >= threshold else "no"})
    return out


def frontier_summary(rows: list[dict], margin: float | None = None) -> list[dict]:
    """The map's second frontier: one row per point and method, with raw pixels, the *stronger* of the two
    untrained references (plain or BatchNorm-calibrated, per seed) and each method's smallest gain over
    both across its seeds. ``verdict`` is the book's own bar (:func:`~sslnb.evaluate.compare_with_references`
    by ``margin`` points, default ``CLEAR_MARGIN``) met on every seed: ``"beats both"`` (two seeds or more),
    ``"beats the untrained network"``, ``"neither"``; supervised rows (how much the images allow) are
    ``"reference"``."""
    margin = CLEAR_MARGIN if margin is None else margin
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["point"], r["method"]), []).append(r)
    out = []
    for (point, method), rs in groups.items():
        stronger = [max(r["untrained_knn"], r["untrained_knn_calibrated"]) for r in rs]
        kinds = [compare_with_references(r["knn_final"], u, r["raw_pixel_knn"], margin) for r, u in zip(rs, stronger)]
        if method in CLASSES and CLASSES[method].labelled:
            verdict = "reference"
        elif len(rs) >= 2 and all(k == "both" for k in kinds):
            verdict = "beats both"
        elif len(rs) >= 2 and all(k in ("both", "untrained") for k in kinds):
            verdict = "beats the untrained network"
        else:
            verdict = "neither" if len(rs) >= 2 else "one seed: no verdict"
        out.append({"point": point, "method": method, "seeds": len(rs), "dataset": rs[0]["dataset"],
                    "images": rs[0]["train_images"], "batch": rs[0].get("batch_size"), "steps": rs[0]["steps"],
                    "PFLOP": rs[0]["train_flop"] / 1e15, "kNN": float(np.mean([r["knn_final"] for r in rs])),
                    "raw pixels": rs[0]["raw_pixel_knn"], "stronger untrained": float(np.mean(stronger)),
                    "smallest gain vs pixels": min(r["knn_final"] - r["raw_pixel_knn"] for r in rs),
                    "smallest gain vs untrained": min(r["knn_final"] - u for r, u in zip(rs, stronger)),
                    "verdict": verdict})
    return out


# The book's colour for each method (a method registered later gets the next free one of matplotlib's cycle).
METHOD_COLOURS = {"simclr": "C0", "insdis": "C1", "supervised": "C2", "byol": "C3"}


def method_colour(method: str) -> str:
    """One colour per method, the same on every page."""
    if method in METHOD_COLOURS:
        return METHOD_COLOURS[method]
    others = [m for m in METHODS if m not in METHOD_COLOURS]
    return f"C{len(METHOD_COLOURS) + (others.index(method) if method in others else len(others))}"


def compute_map(axes, rows: list[dict], threshold: float = 10.0) -> None:
    """The map: each run's kNN gain over the calibrated untrained network against its training compute
    (FLOP, log scale; left) and against the core-hours it took (right); one colour per method, one
    marker per dataset, the ``threshold`` as a dashed line and no gain as a dotted one."""
    markers = {"digits": "o", "fashion": "s", "fashion-canvas": "D", "cifar10": "^", "cifar100": "v"}
    axes = np.atleast_1d(axes)
    for ax, key, label in zip(axes, ("train_flop", "core_hours"),
                              ("training compute (FLOP)", "core-hours on the machine that ran it")):
        seen = set()
        for r in rows:
            tag = (r["method"], r["dataset"])
            ax.scatter(r[key], r["knn_final"] - r["untrained_knn_calibrated"], color=method_colour(r["method"]),
                       marker=markers.get(r["dataset"], "x"), s=28, alpha=0.8,
                       label=f"{r['method']}, {r['dataset']}" if tag not in seen else None)
            seen.add(tag)
        ax.axhline(threshold, color="grey", ls="--", lw=1, label=f"+{threshold:g} points")
        ax.axhline(0, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.legend(fontsize=7)
    for ax in axes if axes[0].get_subplotspec().colspan.start == axes[-1].get_subplotspec().colspan.start else axes[:1]:
        ax.set_ylabel("kNN gain over the calibrated\nuntrained network (points)")  # each row's, or the first column's


def diagnostic_heatmap(ax, rows: list[dict], label: str, columns: list[str]) -> None:
    """Runs (``rows``, one dict each, named by ``row[label]``) against diagnostics (``columns``) as a
    heatmap: each column coloured from its own smallest (light) to largest (dark) value, every cell
    annotated with its number, so one glance shows which runs stand apart on which measure."""
    values = np.array([[float(r[c]) for c in columns] for r in rows])
    low, high = values.min(0), values.max(0)
    scaled = (values - low) / np.where(high > low, high - low, 1.0)
    sns.heatmap(scaled, ax=ax, annot=values, fmt=".3g", cmap="mako_r", cbar=False, linewidths=0.5,
                xticklabels=columns, yticklabels=[str(r[label]) for r in rows], annot_kws={"size": 8})
    ax.set_xlabel("")
    ax.set_ylabel(label)
    ax.tick_params(axis="x", rotation=0)


def seed_dots(ax, groups: dict[str, list[float]], theirs: dict[str, float] | None = None, ylabel: str = "") -> None:
    """Conditions (``groups``: label -> one value per seed) as per-seed dots with their mean and 95%
    interval (:func:`~sslnb.evaluate.mean_and_interval`; a condition of one seed has no interval), in the
    order given; ``theirs`` (label -> the seed's one number) as a grey diamond beside each, labelled as
    theirs."""
    import pandas as pd

    labels = list(groups)
    long = pd.DataFrame([{"condition": k, "value": v} for k in labels for v in groups[k]])
    sns.stripplot(long, x="condition", y="value", order=labels, ax=ax, color="C0", size=5, jitter=0.12, alpha=0.8,
                  label="one seed (ours)")
    for i, k in enumerate(labels):
        s = mean_and_interval(groups[k])
        if s["n"] >= 2:
            ax.errorbar(i + 0.25, s["mean"], yerr=[[s["mean"] - s["ci_low"]], [s["ci_high"] - s["mean"]]], fmt="o",
                        color="C3", ms=4, capsize=3, label="mean and 95% interval (ours)")
        else:
            ax.plot(i + 0.25, s["mean"], "o", color="C3", ms=4, mfc="none", label="one seed: no interval")
    if theirs:
        xs = [i - 0.3 for i, k in enumerate(labels) if k in theirs]
        ax.scatter(xs, [theirs[k] for k in labels if k in theirs], marker="D", color="0.55", s=18, zorder=3,
                   label="the seed's run (theirs)")
    handles, names = ax.get_legend_handles_labels()
    keep = dict(zip(names, handles))  # one entry per kind (stripplot labels every condition)
    ax.legend(keep.values(), keep.keys(), fontsize=7)
    ax.set_xlabel("")
    ax.set_ylabel(ylabel)
