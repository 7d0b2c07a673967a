"""Explorers for a chapter's runs: t-SNE pictures side by side, and training curves.

One set of drawings (:mod:`sslnb.plots`), two ways to switch between them:

* **live**, in a notebook with a kernel (JupyterLab): each control calls back into Python and redraws,
  so every combination works, including several runs picked at once and a class highlighted in the
  t-SNE pictures;
* **static**, when ``SSLNB_STATIC_WIDGETS=1`` (``python -m sslnb.book execute`` sets it): every view the
  controls can reach is drawn once while the chapter executes and kept in nested switches (``Tab``\\ s
  with their tab bar hidden); each control is ``jslink``\\ ed to the switches of its level, so switching
  happens in the browser with no kernel, as on the published site (the widget JavaScript is vendored in
  ``_static/``). A ``<noscript>`` copy of the first view serves readers without JavaScript.

``explore(runs)`` shows both explorers with a provenance note; the chapters end with it.
"""

from __future__ import annotations

import base64
import io
import json
import os
from functools import lru_cache
from html import escape

import numpy as np

from . import plots
from .data import DatasetUnavailable, load_dataset
from .runs import Run

DPI = 72
SMOOTHING = (1, 10, 50)  # moving-average windows (steps) the curve explorer offers for the loss


def static_mode() -> bool:
    """True while the book is being executed for the site (no kernel will be there to call back)."""
    return os.environ.get("SSLNB_STATIC_WIDGETS", "") == "1"


# ---------------------------------------------------------------------- building blocks
def _png(draw, figsize=(6.4, 3.6)) -> bytes:
    """PNG bytes of ``draw(fig)`` on a fresh figure (no pyplot: nothing is shown as a side effect)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=DPI)  # fixed margins: a layout engine would double the drawing time
    draw(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _image(png: bytes):
    import ipywidgets as w

    return w.Image(value=png, format="png", layout=w.Layout(max_width="100%", height="auto"))


# A switch is a Tab whose tab bar is hidden; the explorer's own controls choose the child. (ipywidgets'
# Stack would do the same with less DOM, but its browser view disposes the shown child and builds the
# next one on every switch, and a second switch before that settles logs TypeErrors in the widget
# manager: tests/test_site.py caught it. A Tab builds every child's view once and only hides the others.)
SWITCH_CLASS = "sslnb-switch"
SWITCH_CSS = (f"<style>.{SWITCH_CLASS} > .lm-TabBar, .{SWITCH_CLASS} > .p-TabBar {{display: none !important}}"
              f".{SWITCH_CLASS} > .widget-tab-contents {{border: none !important; padding: 0 !important;"
              " overflow: visible !important; background: none !important}</style>")


def nested_switch(controls: list, leaf) -> tuple:
    """Kernel-free switching among ``prod(len(c.options))`` views: a switch per level, the first control
    choosing a child of the outermost one, the next a child of each of those, and so on; each control is
    ``jslink``\\ ed to every switch of its level. ``leaf(indices)`` gives the widget at the bottom (return
    the same widget for views that do not differ). Returns (root widget, links); show
    ``SWITCH_CSS`` once on the page (an ``HTML`` widget) to hide the tab bars."""
    import ipywidgets as w

    links = []

    def build(depth: int, indices: tuple):
        if depth == len(controls):
            return leaf(indices)
        control = controls[depth]
        switch = w.Tab([build(depth + 1, indices + (i,)) for i in range(len(control.options))],
                       selected_index=control.index)
        switch.add_class(SWITCH_CLASS)
        links.append(w.jslink((control, "index"), (switch, "selected_index")))
        return switch

    return build(0, ()), links


@lru_cache(maxsize=4)
def _test_images(dataset: str, data_root: str, style: str = "{}"):
    """(test images (N, 3, H, W) uint8, class names), or None where the dataset is not on this machine.
    ``style``: the run's ``digits_style`` as JSON (hashable, for the cache)."""
    try:
        data = load_dataset(dataset, data_root, download=False, digits_style=json.loads(style))
    except (DatasetUnavailable, OSError):
        return None
    return data.test.x.numpy(), list(data.classes)


def example_strip(images: np.ndarray, y: np.ndarray, cls: int | None, n: int = 10, scale: float = 1.25) -> bytes:
    """PNG of the first ``n`` test images of class ``cls`` (one of each class when None), side by side."""
    from PIL import Image

    if cls is None:
        idx = [int(np.flatnonzero(y == c)[0]) for c in np.unique(y)[:n]]
    else:
        idx = np.flatnonzero(y == cls)[:n].tolist()
    tiles = [np.pad(images[i].transpose(1, 2, 0), ((2, 2), (2, 2), (0, 0)), constant_values=255) for i in idx]
    strip = Image.fromarray(np.concatenate(tiles, axis=1))
    strip = strip.resize((round(strip.width * scale), round(strip.height * scale)), Image.NEAREST)
    buf = io.BytesIO()
    strip.save(buf, format="png")
    return buf.getvalue()


def _colour_key(classes: list[str]) -> str:
    """HTML: each class name in its t-SNE colour (only for up to 20 classes; CIFAR-100 gets none)."""
    if len(classes) > 20:
        return ""
    cmap = plots.class_colours(len(classes))
    spans = []
    for i, name in enumerate(classes):
        r, g, b, _ = (np.array(cmap(i)) * 255).astype(int)
        spans.append(f'<span style="color:rgb({r},{g},{b});font-weight:bold">&#9679;{escape(name)}</span>')
    return "classes: " + " ".join(spans)


def provenance_note(runs: dict[str, Run]) -> str:
    """HTML: :func:`sslnb.plots.provenance_line` of ``runs``, then each run's one-line caption."""
    lines = "".join(f"<li>{escape(label)}: {escape(r.caption())}</li>" for label, r in runs.items())
    return (f'<details class="sslnb-provenance"><summary>Made from {escape(plots.provenance_line(runs))}'
            f"</summary><ul>{lines}</ul></details>")


# ---------------------------------------------------------------------- t-SNE explorer
def tsne_explorer(runs: dict[str, Run], layers=("z", "h"), max_points: int | None = None,
                  static: bool | None = None):
    """Two t-SNE pictures side by side: pick the run of each, the layer (FC or last conv) and a class,
    whose first test images are shown below (live mode also highlights it in both pictures).

    ``runs`` {label: Run}. Embeddings are read from each run's cache or computed when a view first needs
    them: all of them in static mode, only those shown in live mode.
    Returns an ``ipywidgets.VBox``; ``.fallback_png`` holds the first view for a static figure."""
    import ipywidgets as w

    static = static_mode() if static is None else static
    labels = list(runs)
    emb = {}

    def embedding(layer_key: str, label: str):  # computed (or read from the run's cache) when first shown
        if (layer_key, label) not in emb:
            emb[(layer_key, label)] = plots.run_tsne(runs[label], layer_key, max_points)
        return emb[(layer_key, label)]

    y = embedding(layers[-1], labels[0])[1]
    cfg = next(iter(runs.values())).config
    test = _test_images(cfg.dataset, cfg.data_root, json.dumps(cfg.digits_style, sort_keys=True))
    classes = test[1] if test else [str(c) for c in range(int(y.max()) + 1)]

    left = w.Dropdown(options=labels, index=0, description="left", layout=w.Layout(width="240px"))
    right = w.Dropdown(options=labels, index=min(1, len(labels) - 1), description="right",
                       layout=w.Layout(width="240px"))
    layer = w.ToggleButtons(options=[(plots.LAYER_NAMES[k].split(" (")[0], k) for k in layers], index=len(layers) - 1,
                            description="layer")
    pick = w.Dropdown(options=[("all (one of each)", -1)] + [(c, i) for i, c in enumerate(classes)], index=0,
                      description="class", layout=w.Layout(width="240px"))

    def picture(label: str, layer_key: str, highlight=None) -> bytes:
        e, yy = embedding(layer_key, label)
        return _png(lambda fig: plots.tsne_scatter(fig.add_axes((0.02, 0.02, 0.96, 0.9)), e, yy, len(classes), highlight,
                                                   f"{label}: {plots.LAYER_NAMES[layer_key]}"), figsize=(4.2, 4.2))

    def examples(cls: int) -> bytes | None:
        return example_strip(test[0][:len(y)], y, None if cls < 0 else cls) if test else None

    links = []
    if static:
        pictures = {(k, label): _image(picture(label, k)) for k in layers for label in labels}
        panels = []
        for side in (left, right):
            root, ls = nested_switch([layer, side], lambda ix: pictures[(layers[ix[0]], labels[ix[1]])])
            panels.append(root)
            links += ls
        if test:
            strips, ls = nested_switch([pick], lambda ix: _image(examples(pick.options[ix[0]][1])))
            links += ls
        else:
            strips = w.HTML("(example images need the dataset on this machine)")
    else:
        panels = [_image(b"") for _ in range(2)]
        strips = _image(b"") if test else w.HTML("(example images need the dataset on this machine)")

        def redraw(_=None):
            for panel, side in zip(panels, (left, right)):
                panel.value = picture(side.value, layer.value, None if pick.value < 0 else pick.value)
            if test:
                strips.value = examples(pick.value)

        for control in (left, right, layer, pick):
            control.observe(redraw, "value")
        redraw()

    box = w.VBox([w.HBox([left, right]), layer, w.HBox(panels), w.HBox([pick]), strips,
                  w.HTML(_colour_key(classes)), w.HTML(provenance_note(runs) + (SWITCH_CSS if static else ""))])
    box.links = links
    box.fallback_png = (pictures[(layer.value, left.value)] if static else panels[0]).value  # the first view
    return box


# ---------------------------------------------------------------------- curve explorer
def curve_explorer(runs: dict[str, Run], metrics=None, static: bool | None = None):
    """Training curves of ``runs`` ({label: Run}): pick the metric (loss, kNN accuracy, learning rate,
    the collapse diagnostics), linear or log scale, smoothing (steps) and an epoch or step axis; live
    mode also picks which runs are drawn (static pages draw them all).

    Returns an ``ipywidgets.VBox``; ``.fallback_png`` holds the first view for a static figure."""
    import ipywidgets as w

    static = static_mode() if static is None else static
    present = set().union(*(r for run in runs.values() for r in run.records("epoch")[-1:]))
    metrics = [m for m in (metrics or plots.CURVE_METRICS) if m in present]
    metric = w.Dropdown(options=[(plots.CURVE_METRICS.get(m, m), m) for m in metrics], index=0,
                        description="metric", layout=w.Layout(width="360px"))
    scale = w.ToggleButtons(options=["linear", "log"], index=0, description="y scale")
    smooth = w.SelectionSlider(options=list(SMOOTHING), value=SMOOTHING[1], description="smoothing",
                               tooltip="moving average of the per-step loss, in steps")
    axis = w.ToggleButtons(options=["epoch", "step"], index=0, description="x axis")
    chosen = w.SelectMultiple(options=list(runs), value=tuple(runs), description="runs", rows=min(6, len(runs)))

    def view(metric_key, log, window, x, labels=None) -> bytes:
        shown = {k: runs[k] for k in (labels or runs)}
        return _png(lambda fig: plots.curves(fig.add_axes((0.12, 0.14, 0.85, 0.82)), shown, metric_key, log, window, x))

    links = []
    if static:
        cache = {}

        def leaf(ix):
            m, log, window, x = metrics[ix[0]], ix[1] == 1, SMOOTHING[ix[2]], axis.options[ix[3]]
            key = (m, log, window if m == "loss" else 1, x)  # only the per-step loss is noisy
            if key not in cache:
                cache[key] = _image(view(*key))
            return cache[key]

        picture, links = nested_switch([metric, scale, smooth, axis], leaf)
        controls = [metric, w.HBox([scale, axis]), smooth]
    else:
        picture = _image(b"")

        def redraw(_=None):
            picture.value = view(metric.value, scale.value == "log", smooth.value, axis.value, chosen.value)

        for control in (metric, scale, smooth, axis, chosen):
            control.observe(redraw, "value")
        redraw()
        controls = [w.HBox([metric, chosen]), w.HBox([scale, axis]), smooth]

    box = w.VBox(controls + [picture, w.HTML(provenance_note(runs) + (SWITCH_CSS if static else ""))])
    box.links = links
    box.fallback_png = (leaf((metric.index, scale.index, smooth.index, axis.index)) if static else picture).value
    return box


def explore(runs: dict[str, Run], tsne_runs: dict[str, Run] | None = None, curve_runs: dict[str, Run] | None = None,
            static: bool | None = None) -> None:
    """Display the curve explorer (runs that trained) and the t-SNE explorer (``tsne_runs``, default all
    of ``runs``), each followed by a ``<noscript>`` figure for readers without JavaScript."""
    from IPython.display import HTML, display

    curve_runs = curve_runs or {k: r for k, r in runs.items() if r.config.epochs > 0}
    for explorer in (curve_explorer(curve_runs, static=static) if curve_runs else None,
                     tsne_explorer(tsne_runs or runs, static=static)):
        if explorer is None:
            continue
        display(explorer)
        src = base64.b64encode(explorer.fallback_png).decode()
        display(HTML(f'<noscript><img src="data:image/png;base64,{src}" alt="static view of the explorer above">'
                     "<p>(The explorer needs JavaScript; this is its first view.)</p></noscript>"))
