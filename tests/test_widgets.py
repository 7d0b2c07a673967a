"""The explorers: kernel-free view switching (nested switches + jslink) reaches the right view for every
combination of controls, live callbacks redraw, and the drawings say where they come from. (The browser
side, on the built site, is tests/test_site.py.)"""

import json
import warnings

import ipywidgets as w
import numpy as np
import pytest

from sslnb import plots, widgets
from sslnb.config import Config
from sslnb.runs import load_run


def fake_run(root, name, epochs=3, steps_per_epoch=4, n=40, seed=0):
    """A finished run directory with metrics and features but no training."""
    rng = np.random.default_rng(seed)
    path = root / name
    path.mkdir(parents=True)
    cfg = Config.from_preset("smoke", "byol", epochs=epochs, seed=seed)
    (path / "config.json").write_text(json.dumps(cfg.to_dict()))
    lines = [{"kind": "epoch", "epoch": 0, "knn": 10.0, "z_std": 0.01, "eff_rank": 5.0, "uniformity": -0.5}]
    step = 0
    for epoch in range(1, epochs + 1):
        for _ in range(steps_per_epoch):
            step += 1
            lines.append({"kind": "step", "epoch": epoch, "step": step, "lr": 0.1, "loss": float(rng.random() + 4 - epoch)})
        lines.append({"kind": "epoch", "epoch": epoch, "loss": 4.0 - epoch, "lr": 0.1, "knn": 10.0 + epoch + seed,
                      "z_std": 0.02 * epoch, "eff_rank": 5.0 + epoch, "uniformity": -0.5 - epoch})
    (path / "metrics.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    y = np.arange(n) % 10
    np.savez(path / "features.npz", h=rng.normal(size=(n, 8)) + y[:, None], z=rng.normal(size=(n, 6)), y=y)
    (path / "result.json").write_text(json.dumps({"status": "done", "wall_s": 60.0, "z_std_ref": 0.4}))
    (path / "provenance.json").write_text(json.dumps({"git_commit": "abc1234", "device_name": "test CPU"}))
    return load_run(path)


@pytest.fixture
def runs(tmp_path):
    return {"a": fake_run(tmp_path, "run-a", seed=0), "b": fake_run(tmp_path, "run-b", seed=1)}


def leaf_at(root, controls):
    """The widget a browser would show: follow each switch's selected_index as the jslinks set it."""
    node = root
    for control in controls:
        assert isinstance(node, w.Tab) and widgets.SWITCH_CLASS in node._dom_classes
        node = node.children[control.index]
    return node


def test_nested_switch_reaches_every_combination_and_links_each_level():
    a = w.Dropdown(options=["x", "y"])
    b = w.ToggleButtons(options=["p", "q", "r"])
    root, links = widgets.nested_switch([a, b], lambda ix: w.Label(f"{ix[0]}{ix[1]}"))
    assert len(links) == 1 + 2  # one switch at the first level, two at the second
    assert {id(link.source[0]) for link in links} == {id(a), id(b)}
    assert all(link.target[1] == "selected_index" and link.source[1] == "index" for link in links)
    for i in range(2):
        for j in range(3):
            assert root.children[i].children[j].value == f"{i}{j}"
    # each second-level switch is driven by b
    assert {id(link.target[0]) for link in links if link.source[0] is b} == {id(s) for s in root.children}


def test_static_curve_explorer_has_a_distinct_view_per_metric_scale_and_axis(runs):
    box = widgets.curve_explorer(runs, static=True)
    metric, (scale, axis), smooth = box.children[0], box.children[1].children, box.children[2]
    root = box.children[3]
    views = set()
    for mi, m in enumerate(metric.options):
        for si in range(2):
            for xi in range(2):
                for wi in range(len(widgets.SMOOTHING)):
                    metric.index, scale.index, axis.index, smooth.index = mi, si, xi, wi
                    views.add(id(leaf_at(root, [metric, scale, smooth, axis])))
    n_metrics = len(metric.options)
    # smoothing only changes the per-step loss: 2 scales x 2 axes x (|SMOOTHING| for loss, 1 otherwise)
    assert len(views) == 4 * (len(widgets.SMOOTHING) + n_metrics - 1)
    assert {m for _, m in metric.options} >= {"loss", "knn", "z_std", "eff_rank", "lr"}
    assert len(box.links) == 1 + n_metrics + 2 * n_metrics + 2 * n_metrics * len(widgets.SMOOTHING)


def test_static_tsne_explorer_panels_follow_layer_and_run(runs, monkeypatch):
    monkeypatch.setattr(widgets, "_test_images", lambda *a: (np.zeros((40, 3, 32, 32), np.uint8), list("0123456789")))
    box = widgets.tsne_explorer(runs, static=True)
    (left, right), layer = box.children[0].children, box.children[1]
    panels = box.children[2].children
    seen = set()
    for li in range(2):
        for ri in range(2):
            layer.index, left.index = li, ri
            seen.add(leaf_at(panels[0], [layer, left]).value)
    assert len(seen) == 4  # two runs x two layers, all different pictures
    layer.index, left.index, right.index = 1, 0, 0
    assert leaf_at(panels[0], [layer, left]) is leaf_at(panels[1], [layer, right])  # the same view is shared
    pick, strips = box.children[3].children[0], box.children[4]
    assert len(strips.children) == len(pick.options) == 11  # "all" + ten classes
    assert (runs["a"].path / "tsne_h_200.npy").exists()  # cached for the next build


def test_live_curve_explorer_redraws_on_every_control(runs):
    box = widgets.curve_explorer(runs, static=False)
    (metric, chosen), (scale, axis) = box.children[0].children, box.children[1].children
    picture = box.children[3]
    seen = [picture.value]
    for change in (lambda: setattr(metric, "value", "knn"), lambda: setattr(scale, "value", "log"),
                   lambda: setattr(axis, "value", "step"), lambda: setattr(chosen, "value", ("a",))):
        change()
        assert picture.value not in seen
        seen.append(picture.value)


def test_curves_put_epoch_metrics_on_the_step_axis_and_smooth_only_the_loss(runs):
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    plots.curves(ax, {"a": runs["a"]}, "knn", x="step")
    assert list(ax.lines[0].get_xdata()) == [0, 4, 8, 12]  # epochs x 4 steps per epoch
    ax = Figure().subplots()
    plots.curves(ax, {"a": runs["a"]}, "lr", smooth=50)
    assert np.allclose(ax.lines[0].get_ydata(), 0.1)
    ax = Figure().subplots()
    plots.curves(ax, {"a": runs["a"]}, "z_std")
    assert ax.lines[-1].get_ydata()[0] == 0.4  # the no-collapse reference from result.json
    ax = Figure().subplots()
    plots.curves(ax, {"a": runs["a"]}, "knn", log=True)
    assert ax.get_yscale() == "log"
    ax = Figure().subplots()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matplotlib warns when asked to log-scale data with no positive value
        plots.curves(ax, {"a": runs["a"]}, "uniformity", log=True)
    assert ax.lines and ax.get_yscale() == "linear" and "linear scale" in ax.texts[0].get_text()


def test_provenance_is_on_figures_tables_and_explorers(runs):
    import matplotlib.pyplot as plt

    line = plots.provenance_line(runs)
    for part in ("preset smoke", "dataset digits", "runs: a, b", "commit abc1234", "test CPU", "2.0 min"):
        assert part in line
    fig, ax = plt.subplots()
    plots.stamp(fig, runs)
    assert any("commit abc1234" in t.get_text() for t in fig.texts)
    plt.close(fig)
    assert "commit abc1234" in plots.table_caption(runs)
    assert "run-a" in widgets.provenance_note(runs)  # the note lists each run directory


def test_explore_displays_a_noscript_figure_after_each_explorer(runs, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    monkeypatch.setattr(widgets, "_test_images", lambda *a: None)  # no dataset: a note instead of images
    widgets.explore(runs, static=False)
    kinds = [type(o).__name__ for o in shown]
    assert kinds == ["VBox", "HTML", "VBox", "HTML"]
    assert all("<noscript><img src=\"data:image/png;base64," in o.data for o in shown[1::2])
