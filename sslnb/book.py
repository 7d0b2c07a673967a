"""Build the book: ``python -m sslnb.book {train,execute,build}`` (what ``make book`` runs).

0. ``plan``    prints the name of every run the chapters need for a preset, one a line (each name carries a
               digest of its config: the deploy workflow caches the trained runs under a hash of this list);
1. ``train``   trains every run the chapters need for a preset (``sslnb.experiments``), with progress;
2. ``execute`` copies the book into ``_stage/`` and executes each chapter there with papermill
               (parameters: preset, dataset, run_root, data_root, devices), hiding the injected-parameters cell;
3. ``build``   builds the staged, executed book with jupyter-book 1.x into ``_build/html``, and packs the runs
               the chapters were executed with beside it (``runs-<preset>.tar.gz``, :mod:`sslnb.bundle`).

Notebook outputs are never written into ``book/``: the sources stay output-free.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from .bundle import BundleError, bundle_name, pack, preset_runs
from .config import Config, ConfigError, nearest, settings_markdown
from .data import DatasetUnavailable
from .dist import die_with_parent
from .experiments import CHAPTERS, all_runs, chapter_runs
from .rundir import RunDirError, device_name, git_commit, run_name
from .runs import LaunchError, launch, missing_runs

ROOT = Path(__file__).resolve().parent.parent
STAGE = ROOT / "_stage"
BOOK = ROOT / "book"


class BookError(RuntimeError):
    """A problem a user can fix; printed as one line."""


def chapters() -> list[Path]:
    return sorted(BOOK.glob("[0-9][0-9]_*.ipynb"))


def check_parameters(notebook: Path, parameters: dict) -> None:
    """Refuse a parameter the notebook does not declare (papermill itself only warns)."""
    import papermill as pm

    declared = pm.inspect_notebook(str(notebook))
    for name in parameters:
        if name not in declared:
            raise BookError(f"{notebook.name} has no parameter {name!r}{nearest(name, declared)} (its parameters: "
                            f"{', '.join(declared)})")


# The line of the introduction that says which preset this copy of the book was executed at (an HTML comment
# in book/intro.md: invisible in JupyterLab, replaced when the chapters are staged for the site).
BUILT_MARK = "<!-- sslnb:built-at -->"
PARAMETERS = "parameters.json"  # in the stage folder: the parameters the chapters were executed with
DATASET_WORDS = {"digits": "the embedded digits", "fashion": "Fashion-MNIST",
                 "fashion-canvas": "Fashion-MNIST items on a 32×32 canvas", "cifar10": "CIFAR-10",
                 "cifar100": "CIFAR-100"}


def built_at(parameters: dict) -> str:
    """The sentence the staged introduction opens with: the preset, dataset, machine and commit the chapters
    were executed with (each page's figures also name the machine their runs were trained on)."""
    preset = parameters.get("preset", "cpu")
    dataset = parameters.get("dataset") or Config.from_preset(preset, "byol").dataset
    device = parameters.get("devices", "auto")
    machine = device_name("cuda:0" if str(device).startswith("cuda") else "cpu")
    name = bundle_name(preset)
    return (f"**This copy of the book was executed at the `{preset}` preset** ({DATASET_WORDS.get(dataset, dataset)}) "
            f"on {machine}, from commit `{git_commit()}`. The other presets are in the table "
            f"below; every figure names the machine its runs were trained on. The trained runs behind these "
            f"pages are one download beside the site, <a href=\"../{name}\">{name}</a> (its SHA-256 in "
            f"<a href=\"../{name}.sha256\">{name}.sha256</a>): `make fetch-runs PRESET={preset} URL=<its address>` "
            f"downloads, verifies and unpacks it into `runs/`, and the chapters then execute in seconds, training "
            f"nothing.")


def stage(stage_dir: Path = STAGE, keep=(), parameters: dict | None = None) -> None:
    """Copy the book sources (and the library, for literalinclude, and the benchmark results) into
    ``stage_dir``; ``build`` adds the configuration and the vendored JavaScript. The staged (executed)
    notebooks of the chapters named in ``keep`` stay as they are: executing one chapter again leaves
    the others' pages in place. With ``parameters`` (the chapters' papermill parameters) the staged
    introduction says which preset the book was executed at (:func:`built_at`)."""
    kept = {}
    for name in keep:
        staged = stage_dir / "book" / f"{name}.ipynb"
        if staged.exists():
            kept[staged.name] = staged.read_bytes()
    if stage_dir.exists():
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints", "*.pyc")
    shutil.copytree(BOOK, stage_dir / "book", ignore=ignore)
    shutil.copytree(ROOT / "sslnb", stage_dir / "sslnb", ignore=ignore)
    (stage_dir / "bench").mkdir()
    for name in ("RESULTS.md", "byol_map.json"):  # the performance page; the compute map's record
        if (ROOT / "bench" / name).exists():
            shutil.copy2(ROOT / "bench" / name, stage_dir / "bench" / name)
    for name, content in kept.items():
        (stage_dir / "book" / name).write_bytes(content)
    (stage_dir / "book" / "settings.md").write_text(settings_markdown())  # generated: it cannot drift
    if parameters is not None:
        (stage_dir / PARAMETERS).write_text(json.dumps(parameters, indent=1, sort_keys=True))
        intro = stage_dir / "book" / "intro.md"
        intro.write_text(intro.read_text().replace(BUILT_MARK, built_at(parameters)))


def copy_site_files(stage_dir: Path) -> None:
    """The book's configuration and the vendored JavaScript, into ``stage_dir`` before each build (so
    `make site` picks up changes to them without executing the chapters again)."""
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(ROOT / name, stage_dir / name)
    if (stage_dir / "_vendor").exists():
        shutil.rmtree(stage_dir / "_vendor")
    shutil.copytree(ROOT / "_vendor", stage_dir / "_vendor", ignore=shutil.ignore_patterns("fetch.sh", "README.md"))


def hide_injected_parameters(path: Path) -> None:
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.metadata.get("tags", [])
        if "injected-parameters" in tags and "remove-cell" not in tags:
            cell.metadata["tags"] = tags + ["remove-cell"]
    nbformat.write(nb, path)


# Kernels started at the same moment by two worker processes can race for the same ports, and the loser
# dies before it answers (papermill issue 239). No cell has run then, so starting it again is safe.
KERNEL_START_FAILURES = ("Kernel died before replying to kernel_info", "Kernel didn't respond")
KERNEL_START_TRIES = 3


def _execute_one(nb: Path, out: Path, parameters: dict, timeout: int) -> str | None:
    """Execute one chapter; returns a one-line error or None. (Top level: runs in a worker process.)"""
    import papermill as pm

    os.environ["SSLNB_STATIC_WIDGETS"] = "1"  # the kernel inherits it: explorers pre-render for the site
    for attempt in range(1, KERNEL_START_TRIES + 1):
        try:
            pm.execute_notebook(str(nb), str(out), parameters=parameters, kernel_name="python3",
                                cwd=str(BOOK), progress_bar=False, execution_timeout=timeout)
            break
        except pm.PapermillExecutionError as e:
            return f"{nb.name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} (the executed notebook is {out})"
        except RuntimeError as e:
            if attempt == KERNEL_START_TRIES or not str(e).startswith(KERNEL_START_FAILURES):
                raise
            print(f"  {nb.name}: the kernel did not start ({e}); starting it again", flush=True)
    hide_injected_parameters(out)
    return None


def _all_trained(selected: list[Path], parameters: dict) -> bool:
    root = Path(parameters.get("run_root", "runs"))
    for nb in selected:
        if nb.stem not in CHAPTERS:
            return False
        configs = chapter_runs(nb.stem, parameters.get("preset", "cpu"), parameters.get("dataset"))
        if missing_runs(configs.values(), root):
            return False
    return True


def execute(parameters: dict, only: list[str] | None = None, timeout: int = 3600,
            stage_dir: Path = STAGE, jobs: int = 2) -> list[Path]:
    """Execute every chapter (or those named in ``only``) into ``stage_dir/book``, ``jobs`` at a time
    (a chapter mostly waits on one thread: t-SNE, plotting; two use a 2-core laptop's cores)."""
    names = [nb.stem for nb in chapters()]
    for name in only or []:  # refuse a typo before anything runs or is staged
        if name not in names:
            raise BookError(f"there is no chapter {name!r}{nearest(name, names)} (chapters: {', '.join(names)})")
    selected = [nb for nb in chapters() if not only or nb.stem in only]
    for nb in selected:
        check_parameters(nb, parameters)
    if jobs > 1 and not _all_trained(selected, parameters):
        jobs = 1  # chapters would train their missing runs themselves: never two in one run directory
    stage(stage_dir, keep=[name for name in names if name not in {nb.stem for nb in selected}], parameters=parameters)
    outs = [stage_dir / "book" / nb.name for nb in selected]
    print(f"executing {len(selected)} chapters with {parameters}, {jobs} at a time", flush=True)
    # the workers (and so their kernels) die with this process, even by kill -9
    with ProcessPoolExecutor(max_workers=max(1, jobs), initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(_execute_one, nb, out, parameters, timeout) for nb, out in zip(selected, outs)]
        for nb, future in zip(selected, futures):
            error = future.result()
            if error:
                raise BookError(error)
            print(f"  {nb.name} done", flush=True)
    return outs


def build(strict: bool = True, stage_dir: Path = STAGE, out_dir: Path = ROOT, quiet: bool = False) -> Path:
    """jupyter-book build of the staged book into ``out_dir/_build/html``; returns the index page."""
    if not (stage_dir / "book").exists():
        raise BookError("nothing is staged: run `make book` (or `python -m sslnb.book execute`) first")
    copy_site_files(stage_dir)
    cmd = [str(Path(sys.executable).parent / "jupyter-book"), "build", str(stage_dir), "--all",
           "--path-output", str(out_dir)]
    if strict:
        cmd += ["-W", "--keep-going"]
    proc = subprocess.run(cmd, capture_output=quiet, text=True)
    if proc.returncode != 0:
        detail = f":\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}" if quiet else "; see the warnings above"
        raise BookError(f"jupyter-book build failed{detail}")
    index = out_dir / "_build" / "html" / "index.html"
    pack_beside(stage_dir, index.parent)
    print(f"\nThe book is built. Open {index}")
    return index


def pack_beside(stage_dir: Path, html: Path) -> Path | None:
    """The bundle of the runs the staged chapters were executed with (:mod:`sslnb.bundle`), into the site's
    folder ``html``, where the introduction links it. A bundle that cannot be packed is one warning: the
    site stands without it."""
    if not (stage_dir / PARAMETERS).exists():
        return None
    params = json.loads((stage_dir / PARAMETERS).read_text())
    try:
        dirs, weights = preset_runs(params["preset"], params["run_root"], params.get("dataset"),
                                    params.get("data_root", "data"))
        out = pack(dirs, html, params["preset"], weights)
    except (BundleError, ConfigError, OSError) as e:
        print(f"warning: the site has no bundle of its runs: {e}", file=sys.stderr)
        return None
    print(f"{out.name}: {len(dirs)} runs, {out.stat().st_size / 1e6:.1f} MB, beside the site")
    return out


def train_all(preset: str, run_root: str, device: str, dataset: str | None = None, jobs: int = 2,
              data_root: str = "data") -> None:
    """Train every run any chapter needs (each once), ``jobs`` at a time."""
    configs = all_runs(preset, dataset, device, data_root)
    print(f"{len(configs)} runs at preset {preset} under {run_root}", flush=True)
    launch(configs, run_root, jobs=jobs)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sslnb.book", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=["plan", "train", "execute", "build"])
    p.add_argument("--preset", default="cpu")
    p.add_argument("--dataset", default=None, help="override the preset's dataset")
    p.add_argument("--run-root", default="runs")
    p.add_argument("--data-root", default="data", help="where CIFAR is (or is downloaded to)")
    p.add_argument("--device", default="auto")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once, one thread each (default: 2 on a CPU, 1 with a GPU)")
    p.add_argument("--chapters", nargs="*", help="execute only these chapters (by file stem)")
    p.add_argument("--stage-dir", default=str(STAGE), help="where the executed chapters are staged (default: _stage)")
    p.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                   help="an extra papermill parameter")
    return p


def main(argv=None) -> int:
    p = parser()
    args = p.parse_args(argv)
    run_root = str(Path(args.run_root).resolve())
    data_root = str(Path(args.data_root).resolve())
    try:
        if args.step == "plan":
            for cfg in all_runs(args.preset, args.dataset, args.device, data_root):
                print(run_name(cfg))
        elif args.step == "train":
            import torch

            jobs = args.jobs or (1 if torch.cuda.is_available() and args.device != "cpu" else 2)
            train_all(args.preset, run_root, args.device, args.dataset, jobs, data_root)
        elif args.step == "execute":
            params = {"preset": args.preset, "run_root": run_root, "data_root": data_root, "devices": args.device}
            if args.dataset:
                params["dataset"] = args.dataset
            params.update(dict(args.parameter))
            execute(params, args.chapters, stage_dir=Path(args.stage_dir))
        else:
            build(stage_dir=Path(args.stage_dir))
    except (BookError, ConfigError, DatasetUnavailable, LaunchError, RunDirError, FloatingPointError) as e:
        # one line for the user; the run directories keep what was done
        print(f"{p.prog} {args.step}: error: {e}", file=sys.stderr)
        return getattr(e, "status", 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
