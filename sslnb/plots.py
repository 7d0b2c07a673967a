"""Figures and tables for the book: loss curves, t-SNE panels, and results beside the seed's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .runs import Run


def _smooth(y: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(y) < window:
        return y
    kernel = np.ones(window) / window
    return np.convolve(np.pad(y, (window // 2, window - 1 - window // 2), mode="edge"), kernel, mode="valid")


def loss_curves(runs: list[Run], labels: list[str] | None = None, ax=None, smooth: int = 10):
    """Per-step loss (thin, smoothed over ``smooth`` steps) and per-epoch mean (markers) against epochs."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for i, run in enumerate(runs):
        label = labels[i] if labels else run.name
        steps = run.records("step")
        color = f"C{i}"
        if steps:
            per_epoch = max(1, sum(r["epoch"] == 1 for r in steps))
            x = np.array([r["step"] for r in steps]) / per_epoch
            ax.plot(x, _smooth(np.array([r["loss"] for r in steps]), smooth), color=color, lw=0.8, alpha=0.6)
        ex, ey = run.metric("loss")
        ax.plot(ex, ey, "o-", color=color, ms=3, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=8)
    return ax


def metric_curves(runs: list[Run], metric: str = "knn", labels=None, ax=None, reference: float | None = None,
                  reference_label: str = ""):
    """One epoch metric (``knn``, ``z_std``, ``eff_rank`` ...) against epochs, epoch 0 = random init."""
    import matplotlib.pyplot as plt

    ax = ax or plt.subplots(figsize=(6, 3.5))[1]
    for i, run in enumerate(runs):
        x, y = run.metric(metric)
        ax.plot(x, y, "o-", ms=3, color=f"C{i}", label=labels[i] if labels else run.name)
    if reference is not None:
        ax.axhline(reference, color="grey", ls="--", lw=1, label=reference_label)
    ax.set_xlabel("epoch (0 = random initialisation)")
    ax.set_ylabel({"knn": "kNN accuracy (%)", "z_std": "std of normalised z", "eff_rank": "effective rank"}
                  .get(metric, metric))
    ax.legend(fontsize=8)
    return ax


# How many test points the t-SNE pictures use per preset (the seed used all 10,000 CIFAR test images).
TSNE_POINTS = {"smoke": 300, "cpu": 1000, "paper": 10000}


def tsne_embedding(features: np.ndarray, cache: Path | None = None, perplexity: float = 25.0,
                   seed: int = 0) -> np.ndarray:
    """2-D t-SNE of ``features`` (N, D) -> (N, 2), with the TensorBoard projector's perplexity 25 and
    cosine metric (the seed's figures came from the projector); cached in ``cache`` if given.
    Up to 3,000 points use the exact dense implementation in :mod:`sslnb.tsne`, more the grid-accelerated
    one (:func:`sslnb.tsne.tsne_fast`; ``python -m bench --only tsne`` compares it with scikit-learn)."""
    if cache is not None and cache.exists():
        return np.load(cache)
    if len(features) <= 3000:
        from .tsne import tsne

        emb = tsne(features, perplexity=perplexity, seed=seed)
    else:
        from .tsne import tsne_fast

        emb = tsne_fast(features, perplexity=perplexity, seed=seed, metric="cosine", threads=1)
    if cache is not None:
        np.save(cache, emb)
    return emb


def tsne_panels(run: Run, layers=("z", "h"), max_points: int | None = None, axes=None, title: str = ""):
    """t-SNE of one run's test features: FC (projection ``z``) beside last conv (``h``), by class.
    ``max_points`` defaults to the run's preset entry in ``TSNE_POINTS``."""
    import matplotlib.pyplot as plt

    max_points = max_points or TSNE_POINTS.get(run.config.preset, 10000)
    feats = run.features()
    names = {"z": "FC (projection output)", "h": "last conv (pooled backbone)"}
    if axes is None:
        axes = plt.subplots(1, len(layers), figsize=(4.5 * len(layers), 4.5))[1]
    axes = np.atleast_1d(axes)
    y = feats["y"][:max_points]
    cmap = "tab10" if y.max() < 10 else "nipy_spectral"
    for ax, layer in zip(axes, layers):
        emb = tsne_embedding(feats[layer][:max_points], run.path / f"tsne_{layer}_{max_points}.npy")
        ax.scatter(emb[:, 0], emb[:, 1], c=y, cmap=cmap, s=4, linewidths=0)
        ax.set_title(f"{title} {names[layer]}".strip(), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    return axes


def results_table(rows: list[dict]):
    """A pandas table from dicts; missing cells are shown as a dash."""
    import pandas as pd

    return pd.DataFrame(rows).fillna("–")


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
