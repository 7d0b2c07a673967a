"""Run bundles: every run a preset's chapters read, as one verified archive, and fetching one into a run root.

A reader who fetches the published runs executes every chapter in seconds: the chapters find their runs
finished and train nothing. ::

    python -m sslnb.bundle pack  --preset laptop --run-root runs --out _build/html     # every site build does this
    python -m sslnb.bundle fetch --preset laptop --run-root runs [--url URL]           # make fetch-runs

A bundle ``runs-<preset>.tar.gz`` holds ``manifest.json`` and, for each run, what the chapters read: its
``config.json``, ``result.json``, ``provenance.json``, ``metrics.jsonl``, ``features.npz`` and the t-SNE
embeddings cached when the chapters ran (``tsne_*.npy``). The trained weights come only where a chapter
reads them (``model.pt``: the model's state, for the runs of :data:`sslnb.experiments.MODEL_READERS`), or
for every run with ``--checkpoints`` (the whole ``checkpoint.pt``). The manifest names the preset, the
commit and machine that made the runs, and each run's config and each file's size and SHA-256; beside the
archive, ``runs-<preset>.tar.gz.sha256`` holds the archive's own SHA-256 (the ``sha256sum`` format).

Fetching checks everything before it unpacks anything: the archive against its ``.sha256``, every member's
name (only ``<run>/<file>`` of the kinds above: no links, no absolute or parent paths), every file against
the manifest, each run's config against its directory name and the asked preset. A truncated, tampered or
foreign bundle, or one for another preset, is one line and leaves the run root as it was. A run directory
that already exists is never overwritten: with the same config it is kept; with another config the whole
fetch is refused, naming it.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .config import ConfigError
from .data import DatasetUnavailable, folder_digest, folder_path, is_folder
from .experiments import MODEL_READERS, all_runs, chapter_runs
from .rundir import device_name, finished, git_commit, identity_difference, read_config, run_name

FORMAT = "sslnb-runs/1"
MANIFEST = "manifest.json"
READ_FILES = ("config.json", "result.json", "provenance.json", "metrics.jsonl", "features.npz")
TSNE_FILE = re.compile(r"tsne_[hz]_\d+\.npy")
WEIGHTS = ("model.pt", "checkpoint.pt")
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
CHUNK = 1 << 20


class BundleError(RuntimeError):
    """A bundle that cannot be written or used: one line saying what and what to do; nothing was changed."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status


def bundle_name(preset: str) -> str:
    return f"runs-{preset}.tar.gz"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def _allowed(file: str) -> bool:
    return file in READ_FILES or file in WEIGHTS or bool(TSNE_FILE.fullmatch(file))


# ---------------------------------------------------------------------- packing
def _model_bytes(run_dir: Path) -> bytes:
    """The trained model's state alone (what ``Run.model_state`` returns), without optimiser or progress."""
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=True)["model"]
    buf = io.BytesIO()
    torch.save({"model": state}, buf)
    return buf.getvalue()


def _run_files(run_dir: Path, weights: str | None) -> dict[str, Path | bytes]:
    files: dict[str, Path | bytes] = {}
    for name in READ_FILES:
        if not (run_dir / name).exists():
            raise BundleError(f"{run_dir / name} is missing; train the run again (move it aside, then make book)")
        files[name] = run_dir / name
    for path in sorted(run_dir.glob("tsne_*.npy")):
        if TSNE_FILE.fullmatch(path.name):
            files[path.name] = path
    if weights and not (run_dir / "checkpoint.pt").exists():
        raise BundleError(f"{run_dir / 'checkpoint.pt'} is missing, and a chapter reads this run's weights")
    if weights == "checkpoint.pt":
        files["checkpoint.pt"] = run_dir / "checkpoint.pt"
    elif weights == "model.pt":
        files["model.pt"] = _model_bytes(run_dir)
    return files


def pack(run_dirs, out: str | Path, preset: str, weights: dict[str, str] | None = None,
         progress: bool = True) -> Path:
    """Write the bundle of ``run_dirs`` (each a finished run of ``preset``) to ``out`` (a file, or a folder
    that gets ``runs-<preset>.tar.gz``), and its ``.sha256`` beside it; both atomically. ``weights`` maps a run
    name to ``"model.pt"`` or ``"checkpoint.pt"`` for runs whose weights go in. Returns the archive's path."""
    out = Path(out)
    if out.is_dir() or not out.suffix:
        out = out / bundle_name(preset)
    out.parent.mkdir(parents=True, exist_ok=True)
    weights = weights or {}
    entries, contents = [], {}
    for run_dir in map(Path, run_dirs):
        if not finished(run_dir):
            raise BundleError(f"{run_dir} is not a finished run; train the book's runs first "
                              f"(make book PRESET={preset}), then pack again")
        cfg = read_config(run_dir / "config.json")
        if cfg.preset != preset:
            raise BundleError(f"{run_dir} is a run of preset {cfg.preset!r}, not {preset!r}")
        files = _run_files(run_dir, weights.get(run_dir.name))
        contents[run_dir.name] = files
        listed = {}
        for name, src in files.items():
            data_hash = hashlib.sha256(src).hexdigest() if isinstance(src, bytes) else sha256_file(src)
            size = len(src) if isinstance(src, bytes) else src.stat().st_size
            listed[name] = {"sha256": data_hash, "bytes": size}
        entry = {"name": run_dir.name, "config": cfg.to_dict(), "files": listed}
        if is_folder(cfg.dataset):  # its name's digest reads the folder, which the fetching machine may not have
            try:
                entry["folder_listing"] = folder_digest(folder_path(cfg.dataset))
            except DatasetUnavailable as e:
                raise BundleError(f"{run_dir} was trained on an image folder that is gone ({e})") from None
        entries.append(entry)
    machines, commits = set(), set()
    for run_dir in map(Path, run_dirs):
        try:
            prov = json.loads((run_dir / "provenance.json").read_text())
        except (OSError, ValueError):
            prov = {}
        machines.add(str(prov.get("device_name", "unknown")))
        commits.add(str(prov.get("git_commit", "unknown")))
    manifest = {"format": FORMAT, "preset": preset, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "commit": ", ".join(sorted(commits)), "machine": ", ".join(sorted(machines)),
                "packed_at_commit": git_commit(), "packed_on": device_name("cpu"), "runs": entries}
    tmp = out.with_name(out.name + ".tmp")
    total = sum(e["files"][f]["bytes"] for e in entries for f in e["files"])
    try:
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar, \
                tqdm(total=total, unit="B", unit_scale=True, desc=f"packing {out.name}", disable=not progress) as bar:
            _add_bytes(tar, MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
            for name, files in contents.items():
                for file, src in files.items():
                    if isinstance(src, bytes):
                        _add_bytes(tar, f"{name}/{file}", src)
                    else:
                        info = tar.gettarinfo(src, arcname=f"{name}/{file}")
                        info.uid = info.gid = 0
                        info.uname = info.gname = ""
                        with open(src, "rb") as f:
                            tar.addfile(info, f)
                    bar.update(len(src) if isinstance(src, bytes) else src.stat().st_size)
        digest = sha256_file(tmp)
        side = out.with_name(out.name + ".sha256")
        side_tmp = side.with_name(side.name + ".tmp")
        side_tmp.write_text(f"{digest}  {out.name}\n")
        os.replace(tmp, out)
        os.replace(side_tmp, side)
    except OSError as e:
        for path in (tmp, out.with_name(out.name + ".sha256.tmp")):
            path.unlink(missing_ok=True)
        raise BundleError(f"cannot write {out}: {e.strerror or e}; free some space or choose another --out",
                          status=1) from None
    return out


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
    tar.addfile(info, io.BytesIO(data))


def preset_runs(preset: str, run_root: str | Path, dataset: str | None = None,
                data_root: str = "data") -> tuple[list[Path], dict[str, str]]:
    """The run directories the chapters read at ``preset`` under ``run_root`` and the weights each needs
    (:data:`sslnb.experiments.MODEL_READERS`)."""
    dirs = [Path(run_root) / run_name(cfg) for cfg in all_runs(preset, dataset, data_root=data_root)]
    weights = {}
    for chapter, labels in MODEL_READERS.items():
        configs = chapter_runs(chapter, preset, dataset, data_root=data_root)
        weights.update({run_name(configs[label]): "model.pt" for label in labels if label in configs})
    return dirs, weights


# ---------------------------------------------------------------------- fetching
def default_url(preset: str) -> str:
    """The published site's bundle: GitHub Pages of this clone's ``origin`` (``https://OWNER.github.io/REPO/``)."""
    try:
        origin = subprocess.run(["git", "remote", "get-url", "origin"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        origin = ""
    found = re.search(r"github\.com[:/]([^/]+)/([^/]+?)(?:\.git)?/?$", origin)
    if not found:
        raise BundleError("this clone has no GitHub origin, so the published site is not known; give the bundle's "
                          "address: make fetch-runs PRESET=... URL=https://.../" + bundle_name(preset))
    owner, repo = found.groups()
    return f"https://{owner.lower()}.github.io/{repo}/{bundle_name(preset)}"


def _download(url: str, dest: Path, progress: bool) -> None:
    """``url`` (http(s), file:// or a local path) into ``dest``, with a progress bar for downloads."""
    if "://" not in url or url.startswith("file://"):
        src = Path(url.removeprefix("file://"))
        if not src.is_file():
            raise BundleError(f"{src} does not exist; a bundle is published with its checksum beside it "
                              f"(runs-PRESET.tar.gz and .sha256): check the path (URL=...)")
        shutil.copyfile(src, dest)
        return
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(dest, "wb") as f:
            length = response.headers.get("Content-Length")
            with tqdm(total=int(length) if length else None, unit="B", unit_scale=True,
                      desc=f"downloading {url.rsplit('/', 1)[-1]}", disable=not progress) as bar:
                for block in iter(lambda: response.read(CHUNK), b""):
                    f.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError, ValueError) as e:
        why = getattr(e, "reason", None) or getattr(e, "strerror", None) or e
        raise BundleError(f"cannot download {url} ({why}); a bundle is published with its checksum beside it "
                          f"(runs-PRESET.tar.gz and .sha256): check the address (URL=...) and the network") from None


def _extract(archive: Path, into: Path) -> dict:
    """Every member of ``archive`` into ``into``, checked as it comes: names, kinds, and the manifest.
    Returns the manifest."""
    manifest, seen = None, {}
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                name = member.name
                if not member.isfile():
                    raise BundleError(f"{archive.name} holds {name!r}, which is not a plain file: not an sslnb bundle")
                if name == MANIFEST:
                    manifest = json.loads(tar.extractfile(member).read())
                    continue
                parts = name.split("/")
                if len(parts) != 2 or not RUN_NAME.fullmatch(parts[0]) or not _allowed(parts[1]):
                    raise BundleError(f"{archive.name} holds {name!r}, which no run directory holds: not an sslnb bundle")
                (into / parts[0]).mkdir(exist_ok=True)
                h = hashlib.sha256()
                src = tar.extractfile(member)
                with open(into / name, "wb") as f:
                    for block in iter(lambda: src.read(CHUNK), b""):
                        h.update(block)
                        f.write(block)
                seen[name] = (h.hexdigest(), member.size)
    except (tarfile.TarError, EOFError, zlib.error, ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{archive.name} is truncated or damaged ({type(e).__name__}); fetch it again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BundleError(f"{archive.name} has no {FORMAT} manifest: not an sslnb bundle")
    listed = {f"{run['name']}/{file}": (info["sha256"], info["bytes"])
              for run in manifest.get("runs", []) for file, info in run["files"].items()}
    for name in sorted(set(listed) | set(seen)):
        if listed.get(name) != seen.get(name):
            why = "is missing" if name not in seen else "is not in the manifest" if name not in listed else \
                "does not match its checksum in the manifest"
            raise BundleError(f"{archive.name}: {name} {why}; the bundle was altered or damaged, fetch it again")
    return manifest


def fetch(run_root: str | Path, preset: str, url: str | None = None, progress: bool = True,
          say=print) -> dict[str, list[str]]:
    """Download the bundle of ``preset`` (``url``: http(s), file:// or a path; default :func:`default_url`),
    verify it whole, and move its runs into ``run_root``. Returns ``{"unpacked": [...], "kept": [...]}``.
    Anything wrong is a :class:`BundleError` with the run root unchanged."""
    url = url or default_url(preset)
    run_root = Path(run_root)
    run_root.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".fetch-", dir=run_root))
    try:
        archive, side = work / "bundle.tar.gz", work / "bundle.sha256"
        _download(url + ".sha256", side, progress=False)  # first: a wrong address fails before a long download
        _download(url, archive, progress)
        expected = side.read_text().split()[:1]
        if not expected or not re.fullmatch(r"[0-9a-f]{64}", expected[0]):
            raise BundleError(f"{url}.sha256 holds no SHA-256; it is not a bundle's checksum file")
        if sha256_file(archive) != expected[0]:
            raise BundleError(f"{url.rsplit('/', 1)[-1]} does not match its SHA-256 (truncated or altered); fetch it "
                              f"again, and if it still fails, the published bundle is damaged")
        unpacked = work / "runs"
        unpacked.mkdir()
        manifest = _extract(archive, unpacked)
        if manifest.get("preset") != preset:
            raise BundleError(f"the bundle holds the {manifest.get('preset')!r} preset's runs, not {preset!r}; "
                              f"fetch runs-{preset}.tar.gz")
        new, kept = _check_runs(manifest, unpacked, run_root, preset)
        for name in new:
            try:
                os.rename(unpacked / name, run_root / name)
            except OSError as e:
                raise BundleError(f"cannot move {name} into {run_root}: {e.strerror or e} (did another process create "
                                  f"it meanwhile?); the runs moved before it are complete, fetch again for the rest",
                                  status=1) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    say(f"{len(new)} runs unpacked into {run_root}" + (f"; {len(kept)} already there with the same config, kept"
                                                        if kept else "") +
        f" (trained at commit {manifest.get('commit')} on {manifest.get('machine')})")
    return {"unpacked": new, "kept": kept}


def _check_runs(manifest: dict, unpacked: Path, run_root: Path, preset: str) -> tuple[list[str], list[str]]:
    """Which runs are new and which are already in ``run_root`` with the same config; a run there with
    another config, a run that is not what its name says, or one of another preset refuses the fetch."""
    new, kept, clashes = [], [], []
    for run in manifest.get("runs", []):
        name = run["name"]
        try:
            cfg = read_config(unpacked / name / "config.json")
        except (ConfigError, OSError) as e:
            raise BundleError(f"the bundle's run {name} has no readable config ({e}): not an sslnb bundle") from None
        listing = run.get("folder_listing")  # a run on an image folder: the folder is not on this machine
        if is_folder(cfg.dataset) and not isinstance(listing, str):
            raise BundleError(f"the bundle's run {name} is on an image folder but gives no listing digest: "
                              f"a foreign or altered bundle")
        if run_name(cfg, listing) != name:
            raise BundleError(f"the bundle's run {name} holds the config of {run_name(cfg, listing)}: a foreign or "
                              f"altered bundle")
        if cfg.preset != preset:
            raise BundleError(f"the bundle's run {name} is of preset {cfg.preset!r}, not {preset!r}")
        there = run_root / name
        if not there.exists():
            new.append(name)
            continue
        try:
            diff = identity_difference(read_config(there / "config.json"), cfg)
        except (ConfigError, OSError):
            diff = "its config.json cannot be read"
        (clashes.append(f"{there} ({diff})") if diff else kept.append(name))
    if clashes:
        more = f" and {len(clashes) - 1} more" if len(clashes) > 1 else ""
        raise BundleError(f"{clashes[0]}{more} already holds another run than the bundle's; nothing was unpacked: "
                          f"move it aside or fetch into another --run-root")
    return new, kept


# ---------------------------------------------------------------------- the command line
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sslnb.bundle", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["pack", "fetch"])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--dataset", default=None, help="pack: the dataset the book was executed with, if not the preset's")
    p.add_argument("--run-root", default="runs")
    p.add_argument("--data-root", default="data")
    p.add_argument("--out", default="_build/html", help="pack: the archive's file or folder (default: beside the site)")
    p.add_argument("--checkpoints", action="store_true", help="pack: every run's whole checkpoint.pt too")
    p.add_argument("--url", default=None, help="fetch: the bundle's address or path (default: the published site's)")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    try:
        if args.step == "pack":
            dirs, weights = preset_runs(args.preset, args.run_root, args.dataset, args.data_root)
            if args.checkpoints:
                weights = {d.name: "checkpoint.pt" for d in dirs}
            out = pack(dirs, args.out, args.preset, weights)
            print(f"wrote {out} ({len(dirs)} runs, {out.stat().st_size / 1e6:.1f} MB) and {out.name}.sha256")
        else:
            fetch(args.run_root, args.preset, args.url)
    except (BundleError, ConfigError, DatasetUnavailable) as e:
        print(f"{p.prog} {args.step}: error: {e}", file=sys.stderr)
        return getattr(e, "status", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
