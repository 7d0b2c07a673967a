"""Run bundles (sslnb.bundle): packed, served over HTTP from this process, fetched and verified. Good,
truncated, tampered, foreign and other-preset bundles; run directories already there; and, from the smoke
book the `executed` fixture trained, a fetched run root from which every chapter loads its runs training
nothing."""

import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from sslnb.bundle import BundleError, fetch, pack
from sslnb.config import Config
from sslnb.rundir import run_name
from sslnb.runs import load_run

ROOT = Path(__file__).resolve().parent.parent


def fake_run(root: Path, preset: str = "smoke", seed: int = 0, tsne: bool = True, **settings) -> Path:
    """A finished run directory with every file a chapter reads, made without training (small arrays)."""
    cfg = Config.from_preset(preset, "byol", seed=seed, device="cpu", **settings)
    run = root / run_name(cfg)
    run.mkdir(parents=True)
    (run / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
    (run / "result.json").write_text(json.dumps({"status": "done", "knn": 50.0 + seed}))
    (run / "provenance.json").write_text(json.dumps({"git_commit": "abc", "device_name": "test machine"}))
    (run / "metrics.jsonl").write_text('{"kind": "epoch", "epoch": 1, "loss": 1.0}\n')
    rng = np.random.default_rng(seed)
    np.savez_compressed(run / "features.npz", h=rng.normal(size=(20, 4)).astype(np.float32),
                        z=rng.normal(size=(20, 3)).astype(np.float32), y=np.arange(20) % 10)
    torch.save({"model": {"predictor.bn.weight": torch.ones(3)}, "opt": {"big": torch.zeros(100)}}, run / "checkpoint.pt")
    if tsne:
        np.save(run / "tsne_h_200.npy", rng.normal(size=(20, 2)))
    (run / "lock").write_text("")
    (run / "train.log").write_text("")
    return run


@pytest.fixture
def served(tmp_path):
    """A local HTTP server over ``tmp_path/site``; yields (site folder, base URL)."""
    site = tmp_path / "site"
    site.mkdir()

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **k):
            super().__init__(*a, directory=str(site), **k)

        def log_message(self, *a):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def packed(tmp_path, site: Path, seeds=(0, 1), preset="smoke") -> tuple[Path, list[Path]]:
    runs = [fake_run(tmp_path / "made", preset, s) for s in seeds]
    out = pack(runs, site, preset, weights={runs[0].name: "model.pt"}, progress=False)
    return out, runs


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()} if root.exists() else {}


def test_a_good_bundle_round_trips_over_http(tmp_path, served):
    site, url = served
    out, runs = packed(tmp_path, site)
    assert out.name == "runs-smoke.tar.gz" and (site / "runs-smoke.tar.gz.sha256").exists()
    target = tmp_path / "fetched"
    said = []
    report = fetch(target, "smoke", f"{url}/{out.name}", progress=False, say=said.append)
    assert sorted(report["unpacked"]) == sorted(r.name for r in runs) and not report["kept"]
    assert len(said) == 1 and "test machine" in said[0]
    for run in runs:
        got = target / run.name
        for name in ("config.json", "result.json", "provenance.json", "metrics.jsonl", "features.npz", "tsne_h_200.npy"):
            assert (got / name).read_bytes() == (run / name).read_bytes(), name
        assert not (got / "checkpoint.pt").exists() and not (got / "lock").exists()
    # the weights a chapter reads travel alone, and Run.model_state finds them
    assert (target / runs[0].name / "model.pt").exists() and not (target / runs[1].name / "model.pt").exists()
    state = load_run(target / runs[0].name).model_state()
    assert torch.equal(state["predictor.bn.weight"], torch.ones(3))
    assert not list(target.glob(".fetch-*")), "the work folder is removed"
    # fetched again: every run is already there with the same config, kept and untouched
    before = snapshot(target)
    report = fetch(target, "smoke", f"{url}/{out.name}", progress=False, say=said.append)
    assert not report["unpacked"] and len(report["kept"]) == 2 and snapshot(target) == before


def _republish(site: Path, name: str, data: bytes, keep_sum: bool) -> None:
    """Replace the served archive by ``data``; with ``keep_sum`` its .sha256 stays the original's."""
    (site / name).write_bytes(data)
    if not keep_sum:
        (site / f"{name}.sha256").write_text(f"{hashlib.sha256(data).hexdigest()}  {name}\n")


def _retar(archive: bytes, change) -> bytes:
    """The archive with each member passed through ``change(name, data) -> (name, data) | None``."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        for m in src:
            kept = change(m.name, src.extractfile(m).read())
            if kept:
                info = tarfile.TarInfo(kept[0])
                info.size = len(kept[1])
                dst.addfile(info, io.BytesIO(kept[1]))
    return out.getvalue()


def _other_preset_manifest(name, data):
    if name == "manifest.json":
        m = json.loads(data)
        m["preset"] = "cpu"
        return name, json.dumps(m).encode()
    return name, data


def _add_member(archive: bytes) -> bytes:
    """The archive with one more t-SNE file in its first run, which the manifest does not list."""
    out = io.BytesIO()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as src, tarfile.open(fileobj=out, mode="w:gz") as dst:
        names = []
        for m in src:
            data = src.extractfile(m).read()
            names.append(m.name)
            dst.addfile(m, io.BytesIO(data))
        run = next(n for n in names if "/" in n).split("/")[0]
        info = tarfile.TarInfo(f"{run}/tsne_z_200.npy")
        info.size = 3
        dst.addfile(info, io.BytesIO(b"abc"))
    return out.getvalue()


def _alter(suffix: str, new_name=None, extra: bytes = b""):
    return lambda b: _retar(b, lambda n, d: ((new_name or n), d + extra) if n.endswith(suffix) else (n, d))


BAD = {
    # id: (how the served bundle is spoiled, whether its .sha256 is made to match, words the refusal holds)
    "truncated": (lambda b: b[: len(b) // 2], True, "truncated or damaged"),
    "truncated, old checksum": (lambda b: b[: len(b) // 2], False, "does not match its SHA-256"),
    "a byte changed, old checksum": (lambda b: b[:-40] + bytes([b[-40] ^ 1]) + b[-39:], False,
                                     "does not match its SHA-256"),
    "a file altered": (_alter("result.json", extra=b" "), True, "does not match its checksum in the manifest"),
    "a file added": (_add_member, True, "is not in the manifest"),
    "a path outside the run root": (_alter("result.json", new_name="../evil.json"), True, "which no run directory holds"),
    "foreign archive": (lambda b: _retar(b, lambda n, d: None if n == "manifest.json" else (n, d)), True,
                        "not an sslnb bundle"),
    "not an archive": (lambda b: b"<html>404 not found</html>", True, "truncated or damaged"),
    "another preset": (lambda b: _retar(b, _other_preset_manifest), True, "not 'smoke'"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_bundle_is_refused_in_one_line_with_nothing_unpacked(tmp_path, served, case):
    site, url = served
    out, _ = packed(tmp_path, site)
    spoil, match_sum, words = BAD[case]
    _republish(site, out.name, spoil(out.read_bytes()), keep_sum=not match_sum)  # matched: the manifest must catch it
    target = tmp_path / "fetched"
    fake_run(target, seed=7)  # the user's own run, which must stay as it is
    before = snapshot(target)
    with pytest.raises(BundleError) as e:
        fetch(target, "smoke", f"{url}/{out.name}", progress=False)
    assert words in str(e.value) and "\n" not in str(e.value)
    assert snapshot(target) == before and not list(target.glob(".fetch-*"))
    assert not (tmp_path / "evil.json").exists()


def test_a_run_on_an_image_folder_travels_to_where_the_folder_is_elsewhere(tmp_path, served):
    """A run's name reads its folder's listing, not its place: the bundle carries the listing's digest, so the
    fetch checks the name without the folder, and the same images under another path find the run. Without
    the digest the run is refused in one line."""
    import shutil

    from PIL import Image

    site, url = served
    made = tmp_path / "theirs" / "pictures"
    for c in ("cat", "dog"):
        (made / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(made / c / f"{i}.png")
    run = fake_run(tmp_path / "made", dataset=f"folder:{made}")
    out = pack([run], site, "smoke", progress=False)
    mine = Path(shutil.copytree(made, tmp_path / "mine" / "pictures"))  # the reader's copy (times kept), elsewhere
    shutil.rmtree(made)
    report = fetch(tmp_path / "fetched", "smoke", f"{url}/{out.name}", progress=False)
    assert report["unpacked"] == [run.name]
    assert run_name(Config.from_preset("smoke", "byol", device="cpu", dataset=f"folder:{mine}")) == run.name

    def no_listing(name, data):
        if name == "manifest.json":
            m = json.loads(data)
            del m["runs"][0]["folder_listing"]
            return name, json.dumps(m).encode()
        return name, data

    _republish(site, out.name, _retar(out.read_bytes(), no_listing), keep_sum=False)
    with pytest.raises(BundleError) as e:
        fetch(tmp_path / "again", "smoke", f"{url}/{out.name}", progress=False)
    assert "gives no listing digest" in str(e.value) and not (tmp_path / "again" / run.name).exists()


def test_a_run_directory_with_another_config_refuses_the_whole_fetch(tmp_path, served):
    site, url = served
    out, runs = packed(tmp_path, site)
    target = tmp_path / "fetched"
    clash = target / runs[1].name
    clash.mkdir(parents=True)
    other = Config.from_preset("smoke", "byol", seed=1, lr=0.5, device="cpu")
    (clash / "config.json").write_text(json.dumps(other.to_dict()))
    before = snapshot(target)
    with pytest.raises(BundleError, match=rf"{runs[1].name} \(lr=0.5, asked .*nothing was unpacked"):
        fetch(target, "smoke", f"{url}/{out.name}", progress=False)
    assert snapshot(target) == before and not (target / runs[0].name).exists()


def test_a_missing_bundle_or_checksum_is_one_line_from_the_command_line(tmp_path, served):
    site, url = served
    out, _ = packed(tmp_path, site, seeds=(0,))
    with pytest.raises(BundleError, match=r"nothing.tar.gz.sha256 \(File not found\)"):
        fetch(tmp_path / "fetched", "smoke", f"{url}/nothing.tar.gz", progress=False)
    (site / f"{out.name}.sha256").unlink()
    r = subprocess.run([sys.executable, "-m", "sslnb.bundle", "fetch", "--preset", "smoke", "--run-root",
                        str(tmp_path / "fetched"), "--url", f"{url}/{out.name}"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "runs-smoke.tar.gz.sha256 (File not found)" in r.stderr
    assert not list((tmp_path / "fetched").iterdir())


def test_packing_refuses_an_unfinished_run_and_another_presets_run(tmp_path):
    run = fake_run(tmp_path / "made")
    (run / "result.json").unlink()
    with pytest.raises(BundleError, match="not a finished run"):
        pack([run], tmp_path / "site", "smoke", progress=False)
    other = fake_run(tmp_path / "made", preset="cpu")
    with pytest.raises(BundleError, match="preset 'cpu', not 'smoke'"):
        pack([other], tmp_path / "site", "smoke", progress=False)
    assert not (tmp_path / "site").exists() or not list((tmp_path / "site").iterdir())


def test_every_chapter_that_reads_weights_is_named_for_the_bundle():
    """A chapter that calls Run.model_state must name its runs in MODEL_READERS, or a fetched book fails."""
    from sslnb.experiments import CHAPTERS, MODEL_READERS, chapter_runs

    readers = {p.stem for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb") if "model_state()" in p.read_text()}
    assert readers == set(MODEL_READERS)
    for chapter, labels in MODEL_READERS.items():
        assert chapter in CHAPTERS and set(labels) <= set(chapter_runs(chapter, "smoke"))


def test_the_smoke_book_fetched_from_its_bundle_trains_nothing(executed, tmp_path, served, monkeypatch):
    """make book's bundle of the smoke runs, served and fetched into an empty run root: every chapter's
    one call finds all its runs finished (training is made to fail), with the t-SNE pictures cached."""
    from sslnb import experiments, runs
    from sslnb.data import EXAMPLE_FOLDER
    from sslnb.experiments import CHAPTERS, all_runs, load_chapter

    book_root, _, _ = executed
    site, url = served
    for name in ("runs-smoke.tar.gz", "runs-smoke.tar.gz.sha256"):  # the build put them beside the site
        (site / name).write_bytes((book_root / "_build" / "html" / name).read_bytes())
    intro = (book_root / "_build" / "html" / "book" / "intro.html").read_text()
    assert 'href="../runs-smoke.tar.gz"' in intro, "the introduction links the bundle"
    fetched = tmp_path / "fetched"
    fetch(fetched, "smoke", f"{url}/runs-smoke.tar.gz", progress=False)
    assert runs.missing_runs(all_runs("smoke"), fetched) == []

    def no_training(*a, **k):
        raise AssertionError("a run was trained after fetching the bundle")

    for name in ("train", "train_grid", "train_concurrently"):
        monkeypatch.setattr(runs, name, no_training)
    for chapter in CHAPTERS:
        loaded = load_chapter(chapter, "smoke", run_root=fetched)
        assert all(run.done for run in loaded.values())
    # The example folder of "Your own images" written under another data root (as on a reader's machine) has
    # the same listing, so its runs are the bundle's.
    elsewhere = load_chapter("09_own_images", "smoke", data_root=str(tmp_path / "elsewhere"), run_root=fetched)
    assert all(run.done for run in elsewhere.values()) and (tmp_path / "elsewhere" / EXAMPLE_FOLDER).is_dir()
    assert list(fetched.glob("*/tsne_*.npy")), "the t-SNE pictures the chapters drew travel with the runs"
    bn = load_chapter("04_bn_collapse", "smoke", run_root=fetched)
    assert bn["011 affine off"].model_state() and experiments.MODEL_READERS
