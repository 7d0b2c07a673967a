"""The fault catalogue: what a user may do to a run directory, or what may happen to it, and what they
see then. Each case runs the real command line (``python -m sslnb.train``) in a real process on the
smoke preset, with real signals where the fault is a process fault, and checks the exit status, that
the message is one line naming the file or field, and that nothing the user had was lost.

``FAULTS`` is also USAGE.md's table "What happens when things go wrong"
(``test_the_readme_lists_every_fault`` keeps the two the same).
"""

import hashlib
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from helpers import make_read_only, make_writable

from sslnb import book, plots
from sslnb.config import Config, ConfigError
from sslnb.rundir import lock
from sslnb.rundir import CHECKPOINT, PENDING, RunDirError, checkpoint_epoch, run_name
from sslnb.runs import find_runs, launch, load_run, missing_runs
from sslnb.train import train

ROOT = Path(__file__).resolve().parent.parent

# id: (what a user does, what they see). USAGE.md's table is made of these rows.
FAULTS = {
    "twice": ("starts the same run twice (two terminals; `make book` while a notebook launches it)",
              "the second refuses in one line naming the process that holds the run (exit 1), or with "
              "`--wait` waits for it and then finds it finished; `launch` trains each run once"),
    "foreign_checkpoint": ("a `checkpoint.pt` of another config lands in a run directory",
                           "one line: the checkpoint belongs to another run, which setting differs, and to "
                           "move the run aside (exit 2); nothing is changed"),
    "metrics_cut": ("`metrics.jsonl` is cut mid-line (disk full, an editor)",
                    "one line: the file is shorter than the checkpoint says (exit 2); nothing is padded or cut"),
    "metrics_deleted": ("`metrics.jsonl` is deleted, the checkpoint kept",
                        "one line: the metrics file is missing (exit 2); the checkpoint is untouched"),
    "checkpoint_garbage": ("`checkpoint.pt` is empty or garbage",
                           "one line: the checkpoint cannot be read, and to move the run aside (exit 2)"),
    "crafted_checkpoint": ("a crafted `checkpoint.pt` (a downloaded run, a shared folder)",
                           "nothing in it runs (`weights_only=True` everywhere); one line (exit 2)"),
    "chapters": ("`python -m sslnb.book execute --chapters 3_byol` (a typo), or a correct name to re-run one chapter",
                 "the typo: one line naming the nearest chapter (exit 2), nothing staged or wiped; a correct "
                 "name re-executes that chapter and keeps the others' executed pages"),
    "misspelt_key": ("a `config.json` (or `--config` file) with a misspelt key such as `learning_rate`",
                     "one line naming the key and the nearest setting, `lr` (exit 2)"),
    "non_finite": ("`--lr inf` (or temperature, knn_t, probe_lr, pred_lr_mult, nan)",
                   "one line naming the field (exit 2); no run directory is written"),
    "run_dir_unusable": ("`--run-dir` names a file, or a folder that cannot be written",
                         "one line with the path and the cause (exit 2 for a file in the way, 1 for a "
                         "folder that cannot be written)"),
    "config_list": ("`--config` holds a JSON list", "one line: a JSON object of settings is expected (exit 2)"),
    "dataset_offline": ("`--dataset cifar10` on an offline machine",
                        "one line saying how to get the files (exit 2); nothing is written, so the same "
                        "command works once the files are there"),
    "disk_full": ("the disk fills up while a checkpoint is written",
                  "one line naming `checkpoint.pt` and the cause (exit 1); the previous checkpoint is "
                  "kept and no temporary file is left; the same command resumes later"),
    "find_runs": ("`find_runs(methd=\"byol\")` (a typo), or one broken `config.json` among many runs",
                  "the typo: one line naming the nearest setting; the broken run: skipped with a warning "
                  "naming it, the others listed"),
    "finished": ("runs a finished run again", "one line saying where its result is; nothing else is done"),
    "kill9": ("kills the training (`kill -9`) at a random moment, then runs the same command",
              "it resumes from the last checkpoint (saying so if it drops records written after it) to "
              "the same metrics as an uninterrupted run"),
    "sigint": ("presses Ctrl-C", "one line: run the same command again to resume (exit 130); it resumes "
                                 "to the same metrics"),
    "leftover_tmp": ("a `checkpoint.pt.tmp` is left by an interrupted write",
                     "one line saying it was removed; the run resumes"),
    "rank_killed": ("one rank dies under torchrun",
                    "the run stops; the same command resumes it (tests/test_dist.py)"),
    "nan_loss": ("the loss becomes NaN (a learning rate far too high)",
                 "one line naming the epoch and `--lr` (exit 2); the checkpoint before it is kept"),
    "first_checkpoint": ("the disk fills up before a run's (or a grid's) first checkpoint, then runs the same command",
                         "the run starts again, saying in one line that it dropped the records of epoch 1"),
    "grid_killed": ("kills a grid (`python -m sslnb.grid`, or `launch`) before, between or after its runs' "
                    "checkpoints of an epoch, or while its runs finish, then runs the same command",
                    "every run resumes to the records of an uninterrupted grid: an epoch stopped between its runs' "
                    "checkpoints is completed or trained again, and one line says which"),
    "grid_disk_full": ("the disk fills up while a grid writes its runs' checkpoints",
                       "one line naming the checkpoint and the cause (exit 1); the same command later resumes "
                       "every run to the records of an uninterrupted grid"),
    "grid_member_moved_aside": ("moves a damaged run of a grid aside (`mv D/s1 D/s1.damaged`), as the message "
                                "says, and runs the same grid command",
                                "the run starts again with its settings from the grid's record in the other runs, "
                                "catches up with them, and the grid trains on; the moved run is untouched"),
    "grid_wait_finished": ("`python -m sslnb.grid --wait` (or `launch`) waits for a run that another process "
                           "finishes meanwhile",
                           "that run is left as the other process wrote it; the others train"),
    "grid_wait_partial": ("`python -m sslnb.grid --wait` waits for a run that another process trains partway",
                          "the runs behind catch up with it, then the grid trains on together"),
    "grid_same_dir": ("names one run directory twice in a grid (`D/s0 D/../D/s0`, or a symlink)",
                      "one line naming both spellings (exit 2); nothing is written"),
    "grid_file": ("gives a file as a grid's run directory",
                  "one line: a file is in the way (exit 2); the file is untouched"),
    "grid_differ": ("asks for a grid of runs that differ in a setting a grid cannot hold (such as `weight_decay`)",
                    "one line naming the setting and both values (exit 2)"),
    "read_only_root": ("reads finished runs from a read-only run root (a share, a mounted folder of results)",
                       "the chapters execute: t-SNE caches are read where they exist and computed in memory where "
                       "not; nothing is written"),
    "features_damaged": ("`features.npz` is cut or deleted",
                         "the chapter stops with one line naming the file and how to move the run aside"),
    "execute_killed": ("kills `python -m sslnb.book execute` (`kill -9`)",
                       "its worker processes and their kernels die with it; nothing is left running"),
}

SMOKE = ["--preset", "smoke", "--device", "cpu", "--quiet"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
TIMING = {"epoch_s", "img_per_s", "eval_s"}


def cli(*args, module="sslnb.train", limit_bytes=None, **kw):
    """Run a command line of the project in a real process; returns the CompletedProcess."""
    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True,
                          cwd=ROOT, env=ENV, preexec_fn=limit if limit_bytes else None, **kw)


def one_line(r, *words):
    """The error is one line, holds every word, and is no traceback."""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def snapshot(path: Path) -> dict:
    """Every file of a directory with its bytes' hash (what the user has; the lock file is the trainer's)."""
    return {p.name: hashlib.sha1(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())
            if p.is_file() and p.name != "lock"}


def metrics(path: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (path / "metrics.jsonl").read_text().splitlines()]


def smoke_cfg(**kw) -> Config:
    return Config.from_preset("smoke", "byol", device="cpu", **kw)


def interrupted_after_first_epoch(path: Path, cfg: Config) -> Path:
    """A run stopped cleanly after epoch 1 of 2 (checkpoint at epoch 1, no result), trained with one thread
    like the command-line runs it is compared with."""
    def stop(epoch):
        raise KeyboardInterrupt

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with pytest.raises(KeyboardInterrupt):
            train(cfg, path, progress=False, on_epoch_end=stop)
    finally:
        torch.set_num_threads(threads)
    return path


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted smoke run from the command line: what every resumed run must equal."""
    path = tmp_path_factory.mktemp("faults") / "reference"
    r = cli(*SMOKE, "--run-dir", path)
    assert r.returncode == 0, r.stderr[-2000:]
    return path


@pytest.fixture(scope="module")
def templates(tmp_path_factory):
    root = tmp_path_factory.mktemp("templates")
    return {"run": interrupted_after_first_epoch(root / "run", smoke_cfg()),
            "other": interrupted_after_first_epoch(root / "other", smoke_cfg(seed=1))}


@pytest.fixture
def stopped(templates, tmp_path):
    """A fresh copy of the run stopped after epoch 1."""
    return Path(shutil.copytree(templates["run"], tmp_path / "run"))


# ---------------------------------------------------------------------- the catalogue
def test_twice(tmp_path, reference, stopped):
    run = tmp_path / "fresh"
    a = subprocess.Popen([sys.executable, "-m", "sslnb.train", *SMOKE, "--wait", "--run-dir", run], cwd=ROOT,
                         env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    b = cli(*SMOKE, "--wait", "--run-dir", run)
    out_a, err_a = a.communicate(timeout=120)
    assert a.returncode == 0 and b.returncode == 0, err_a + b.stderr
    assert metrics(run) == metrics(reference)  # every record once, as one uninterrupted run
    assert "is finished" in out_a + b.stdout
    before = snapshot(stopped)
    with lock(stopped):  # this process holds the run, as a trainer would: another one refuses
        r = cli(*SMOKE, "--run-dir", stopped)
    assert r.returncode == 1
    one_line(r, str(stopped), f"process {os.getpid()}")
    assert snapshot(stopped) == before
    cfg = smoke_cfg(epochs=0)
    assert len(missing_runs([cfg, cfg], tmp_path / "runs")) == 1
    assert launch([cfg, cfg], tmp_path / "runs", progress=False, jobs=2)[0].done


def test_foreign_checkpoint(stopped, templates):
    shutil.copy2(templates["other"] / "checkpoint.pt", stopped / "checkpoint.pt")
    before = snapshot(stopped)
    r = cli(*SMOKE, "--run-dir", stopped)
    assert r.returncode == 2
    one_line(r, "checkpoint.pt", "another run", "seed", "mv ")
    assert snapshot(stopped) == before


@pytest.mark.parametrize("cut", [7, 400])
def test_metrics_cut(stopped, cut):
    path = stopped / "metrics.jsonl"
    path.write_bytes(path.read_bytes()[:-cut])
    before = snapshot(stopped)
    r = cli(*SMOKE, "--run-dir", stopped)
    assert r.returncode == 2
    one_line(r, "metrics.jsonl", "shorter")
    assert snapshot(stopped) == before and b"\0" not in path.read_bytes()


def test_metrics_deleted(stopped):
    (stopped / "metrics.jsonl").unlink()
    before = snapshot(stopped)
    r = cli(*SMOKE, "--run-dir", stopped)
    assert r.returncode == 2
    one_line(r, "metrics.jsonl", "missing")
    assert snapshot(stopped) == before


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all\n" * 10])
def test_checkpoint_garbage(stopped, content):
    (stopped / "checkpoint.pt").write_bytes(content)
    before = snapshot(stopped)
    r = cli(*SMOKE, "--run-dir", stopped)
    assert r.returncode == 2
    one_line(r, "checkpoint.pt", "cannot be read", "mv ")
    assert snapshot(stopped) == before


class Crafted:
    """Unpickling this runs a command: what a malicious checkpoint would do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_crafted_checkpoint(stopped, tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"config": {}, "model": Crafted(marker)}, stopped / "checkpoint.pt")
    r = cli(*SMOKE, "--run-dir", stopped)
    assert r.returncode == 2 and not marker.exists()
    one_line(r, "checkpoint.pt", "cannot be read")
    # nothing else loads checkpoints unsafely: the library and the chapters
    for path in [*ROOT.glob("sslnb/**/*.py"), *ROOT.glob("book/*.ipynb")]:
        for call in re.findall(r"torch\.load\([^)]*\)", path.read_text()):
            assert "weights_only=True" in call, (path, call)


def test_chapters(tmp_path):
    r = cli("execute", "--chapters", "3_byol", "--preset", "smoke", module="sslnb.book")
    assert r.returncode == 2
    one_line(r, "3_byol", "03_byol")
    stage = tmp_path / "stage"
    (stage / "book").mkdir(parents=True)
    executed = stage / "book" / "01_insdis.ipynb"
    executed.write_text("executed before")
    with pytest.raises(book.BookError, match="did you mean '03_byol'"):
        book.execute({"preset": "smoke"}, only=["3_byol"], stage_dir=stage)
    assert executed.read_text() == "executed before"
    book.stage(stage, keep=["01_insdis"])  # what executing only 03_byol stages
    assert executed.read_text() == "executed before"
    assert (stage / "book" / "03_byol.ipynb").read_bytes() == (book.BOOK / "03_byol.ipynb").read_bytes()


def test_misspelt_key(stopped, tmp_path):
    bad = {**json.loads((stopped / "config.json").read_text()), "learning_rate": 0.5}
    (tmp_path / "c.json").write_text(json.dumps(bad))
    r = cli("--config", tmp_path / "c.json", "--run-dir", tmp_path / "new", "--quiet")
    assert r.returncode == 2 and not (tmp_path / "new").exists()
    one_line(r, "c.json", "learning_rate", "'lr'")
    (stopped / "config.json").write_text(json.dumps(bad))
    before = snapshot(stopped)
    r = cli(*SMOKE, "--run-dir", stopped)
    assert r.returncode == 2
    one_line(r, "config.json", "learning_rate", "'lr'")
    assert snapshot(stopped) == before


@pytest.mark.parametrize("field", ["lr", "temperature", "knn_t", "probe_lr", "pred_lr_mult"])
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite(field, value):
    with pytest.raises(ConfigError, match=field):
        smoke_cfg(**{field: value})


def test_non_finite_on_the_command_line(tmp_path):
    r = cli(*SMOKE, "--lr", "inf", "--run-dir", tmp_path / "x")
    assert r.returncode == 2 and not (tmp_path / "x").exists()
    one_line(r, "lr=inf", "finite")


def test_run_dir_unusable(tmp_path):
    in_the_way = tmp_path / "file"
    in_the_way.write_text("mine")
    r = cli(*SMOKE, "--run-dir", in_the_way)
    assert r.returncode == 2 and in_the_way.read_text() == "mine"
    one_line(r, str(in_the_way), "a file is in the way")
    if os.geteuid() == 0:  # root writes anywhere a mode allows: use a file system that refuses everyone
        read_only = Path("/sys/sslnb-fault-test-run")
    else:
        (tmp_path / "ro").mkdir(mode=0o555)
        read_only = tmp_path / "ro" / "run"
    r = cli(*SMOKE, "--run-dir", read_only)
    assert r.returncode == 1
    one_line(r, str(read_only), "writable")


def test_config_list(tmp_path):
    (tmp_path / "c.json").write_text("[1, 2]")
    r = cli("--config", tmp_path / "c.json", "--run-dir", tmp_path / "x")
    assert r.returncode == 2 and not (tmp_path / "x").exists()
    one_line(r, "c.json", "JSON object")


def test_dataset_offline(tmp_path):
    r = cli(*SMOKE, "--dataset", "cifar10", "--download", "false", "--data-root", tmp_path / "data",
            "--run-dir", tmp_path / "x")
    assert r.returncode == 2 and not (tmp_path / "x").exists()
    one_line(r, "cifar-10-batches-py")


def test_disk_full(stopped, reference):
    checkpoint = (stopped / "checkpoint.pt").read_bytes()
    r = cli(*SMOKE, "--run-dir", stopped, limit_bytes=len(checkpoint) // 2)
    assert r.returncode == 1
    one_line(r, "checkpoint.pt", "previous version is kept")
    assert (stopped / "checkpoint.pt").read_bytes() == checkpoint
    assert not list(stopped.glob("*.tmp"))
    r = cli(*SMOKE, "--run-dir", stopped)
    assert r.returncode == 0, r.stderr
    assert metrics(stopped) == metrics(reference)


def test_find_runs(tmp_path, reference):
    shutil.copytree(reference, tmp_path / "good")
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="did you mean 'method'"):
        find_runs(tmp_path, methd="byol")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        runs = find_runs(tmp_path, method="byol")
    assert [r.name for r in runs] == ["good"]
    assert len(caught) == 1 and "broken" in str(caught[0].message) and "\n" not in str(caught[0].message)


def test_finished(reference, tmp_path):
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    times = {p.name: p.stat().st_mtime_ns for p in run.iterdir()}
    before = snapshot(run)
    r = cli(*SMOKE, "--run-dir", run)
    assert r.returncode == 0 and "is finished" in r.stdout and str(run / "result.json") in r.stdout
    assert snapshot(run) == before and {p.name: p.stat().st_mtime_ns for p in run.iterdir()} == times


def test_kill9(tmp_path, reference):
    run = tmp_path / "run"
    for delay in (2.5, 4.0):  # during start-up or the first epoch, then later (both are random enough)
        proc = subprocess.Popen([sys.executable, "-m", "sslnb.train", *SMOKE, "--run-dir", run], cwd=ROOT,
                                env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    r = cli(*SMOKE, "--run-dir", run)
    assert r.returncode == 0, r.stderr
    assert metrics(run) == metrics(reference)


def test_kill9_after_records_written_past_the_checkpoint(stopped, reference):
    path = stopped / "metrics.jsonl"
    with open(path, "a") as f:  # epoch 2 recorded, then killed before its checkpoint (and mid-line)
        f.write(json.dumps({"kind": "step", "epoch": 2, "step": 5, "lr": 0.005, "loss": 1.0}) + '\n{"kind": "ep')
    r = cli(*SMOKE, "--run-dir", stopped)
    assert r.returncode == 0, r.stderr
    one_line(r, "dropped the records written after the last checkpoint")
    assert metrics(stopped) == metrics(reference)


def test_sigint(tmp_path, reference):
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "sslnb.train", *SMOKE, "--run-dir", run], cwd=ROOT, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3.0)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    if proc.returncode == 130:  # (on a fast machine the run may have finished first)
        assert len(err.strip().splitlines()) == 1 and "run the same command again" in err
    r = cli(*SMOKE, "--run-dir", run)
    assert r.returncode == 0, r.stderr
    assert metrics(run) == metrics(reference)


def test_leftover_tmp(stopped, reference):
    (stopped / "checkpoint.pt.tmp").write_bytes(b"half a checkpoint")
    r = cli(*SMOKE, "--run-dir", stopped)
    assert r.returncode == 0, r.stderr
    one_line(r, "removed checkpoint.pt.tmp")
    assert metrics(stopped) == metrics(reference)


def test_rank_killed():
    assert "test_a_killed_rank_stops_the_run_and_it_resumes" in (ROOT / "tests" / "test_dist.py").read_text()


def test_nan_loss(tmp_path):
    r = cli(*SMOKE, "--lr", "1e12", "--run-dir", tmp_path / "x")
    assert r.returncode == 2
    one_line(r, "non-finite", "--lr")
    assert not (tmp_path / "x" / "result.json").exists() and (tmp_path / "x" / "config.json").exists()


def test_first_checkpoint(tmp_path, reference):
    """(A grid's first checkpoint that never landed: test_grid_killed[before].)"""
    run = tmp_path / "run"
    size = (reference / "checkpoint.pt").stat().st_size
    r = cli(*SMOKE, "--run-dir", run, limit_bytes=size // 2)
    assert r.returncode == 1 and not (run / "checkpoint.pt").exists()
    one_line(r, "checkpoint.pt")
    r = cli(*SMOKE, "--run-dir", run)
    assert r.returncode == 0, r.stderr
    one_line(r, "dropped the records of epoch 1")
    assert metrics(run) == metrics(reference)


# ---------------------------------------------------------------------- grids
GRID = (("000", 0), ("111", 1))  # BN code and seed of each run: checkpoints of two sizes (grid_disk_full)


def grid_cfgs() -> list[Config]:
    return [smoke_cfg(bn_code=code, seed=seed, train_size=128) for code, seed in GRID]  # two steps an epoch


def grid_dirs(root: Path) -> list[Path]:
    """The grid's run directories, each with its config.json, as `python -m sslnb.grid` takes them."""
    dirs = []
    for i, cfg in enumerate(grid_cfgs()):
        d = root / f"s{i}"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps(cfg.to_dict()))
        dirs.append(d)
    return dirs


@pytest.fixture(scope="module")
def grid_reference(tmp_path_factory):
    """An uninterrupted grid from the command line: what every resumed grid must equal."""
    dirs = grid_dirs(tmp_path_factory.mktemp("grid") / "reference")
    r = cli("--quiet", *dirs, module="sslnb.grid")
    assert r.returncode == 0, r.stderr[-2000:]
    return dirs


def result(path: Path) -> dict:
    return {k: v for k, v in json.loads((path / "result.json").read_text()).items() if k not in ("wall_s", "final_s")}


def assert_same_runs(dirs, reference):
    for d, ref in zip(dirs, reference):
        assert metrics(d) == metrics(ref), d.name
        assert result(d) == result(ref), d.name
        assert not (d / PENDING).exists()


# A grid killed (SIGKILL, in a real process) at a boundary of epoch 1: ``python -c KILL_AT STOP DIR...``.
KILL_AT = """
import os, signal, sys
from sslnb import grid, runs

stop, how, dirs = sys.argv[1], sys.argv[2], sys.argv[3:]
calls = []

def kill_on(name, call, before):
    real = getattr(grid, name)
    def patched(*args, **kwargs):
        calls.append(name)
        if calls.count(name) == call and before:
            os.kill(os.getpid(), signal.SIGKILL)
        out = real(*args, **kwargs)
        if calls.count(name) == call and not before:
            os.kill(os.getpid(), signal.SIGKILL)
        return out
    setattr(grid, name, patched)

name, call, before = {"before": ("write_epoch", 2, True),      # run 0's checkpoint written, run 1's not
                      "between": ("commit_pending", 1, False),  # run 0's committed, run 1's pending
                      "after": ("commit_pending", 2, False),    # both committed
                      "finishing": ("finish", 1, False)}[stop]  # run 0 finished, run 1 not
kill_on(name, call, before)
if how == "grid":
    sys.exit(grid.main(["--quiet", *dirs]))
from sslnb.rundir import read_config
runs.launch([read_config(os.path.join(d, "config.json")) for d in dirs], os.path.dirname(dirs[0]), progress=False)
"""
def killed_grid(dirs, stop: str, how: str = "grid") -> None:
    r = subprocess.run([sys.executable, "-c", KILL_AT, stop, how, *map(str, dirs)], cwd=ROOT, env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]


@pytest.mark.parametrize("stop", ["before", "between", "after", "finishing"])
def test_grid_killed(tmp_path, grid_reference, stop):
    dirs = grid_dirs(tmp_path)
    killed_grid(dirs, stop)
    epochs = [(checkpoint_epoch(d / CHECKPOINT), checkpoint_epoch(d / PENDING)) for d in dirs]
    assert epochs == {"before": [(None, 1), (None, None)], "between": [(1, None), (None, 1)],
                      "after": [(1, None), (1, None)], "finishing": [(2, None), (2, None)]}[stop]
    r = cli("--quiet", *dirs, module="sslnb.grid")
    assert r.returncode == 0, r.stderr
    if stop == "before":  # run 0's epoch 1 is undone: it had no checkpoint before, so it starts again
        assert "removed the pending ones (s0)" in r.stderr and "s0: dropped the records of epoch 1" in r.stderr
    if stop == "between":
        one_line(r, "completed the commit", "epoch 1", "(s1)")
    assert_same_runs(dirs, grid_reference)


def test_grid_killed_under_launch(tmp_path, grid_reference):
    """``launch`` plans the interrupted grid as it was and resumes it in its first call."""
    cfgs = grid_cfgs()
    dirs = [tmp_path / run_name(c) for c in cfgs]
    for d, c in zip(dirs, cfgs):
        d.mkdir()
        (d / "config.json").write_text(json.dumps(c.to_dict()))
    killed_grid(dirs, "between", how="launch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the command-line grid it is compared with
    try:
        runs = launch(cfgs, tmp_path, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert all(run.done for run in runs)
    assert_same_runs(dirs, grid_reference)


def test_grid_disk_full(tmp_path, grid_reference):
    sizes = [(d / "checkpoint.pt").stat().st_size for d in grid_reference]
    assert sizes[0] < sizes[1]
    dirs = grid_dirs(tmp_path)
    r = cli("--quiet", *dirs, module="sslnb.grid", limit_bytes=(sizes[0] + sizes[1]) // 2)
    assert r.returncode == 1  # run 0's pending checkpoint was written, run 1's could not be
    line = one_line(r, str(dirs[1] / PENDING), "space")
    assert "--run-dir" not in line
    assert (dirs[0] / PENDING).exists() and not list(dirs[1].glob("*.tmp"))
    r = cli("--quiet", *dirs, module="sslnb.grid")
    assert r.returncode == 0, r.stderr
    assert "trained again" in r.stderr
    assert_same_runs(dirs, grid_reference)


def test_grid_member_moved_aside(tmp_path, grid_reference):
    dirs = grid_dirs(tmp_path)
    killed_grid(dirs, "after")
    assert [checkpoint_epoch(d / CHECKPOINT) for d in dirs] == [1, 1] and not list(tmp_path.glob("*/" + PENDING))
    aside = dirs[1].with_name("s1.damaged")
    dirs[1].rename(aside)
    before = snapshot(aside)
    r = cli("--quiet", *dirs, module="sslnb.grid")
    assert r.returncode == 0, r.stderr
    assert "catching up" in r.stderr
    assert snapshot(aside) == before
    assert load_run(dirs[1]).config == grid_cfgs()[1] and load_run(dirs[1]).done
    assert metrics(dirs[1])[0] == metrics(grid_reference[1])[0]  # the same untrained network, trained again
    assert load_run(dirs[0]).done and metrics(dirs[0])[:4] == metrics(grid_reference[0])[:4]  # epoch 1 kept


def wait_for(condition, timeout: float = 60.0) -> None:
    end = time.time() + timeout
    while not condition():
        assert time.time() < end, "timed out"
        time.sleep(0.1)


def opened_by(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (a grid waiting on a run's lock has opened it)."""
    try:
        return any(os.path.realpath(fd) == str(path.resolve()) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def grid_waiting_for(dirs, replace_with: Path) -> subprocess.CompletedProcess:
    """Start ``python -m sslnb.grid --wait DIRS`` while this process holds run 0 (as another trainer
    would), and once the grid waits for it, replace run 0's files with ``replace_with``'s (what the
    other trainer wrote) and let go."""
    with lock(dirs[0]):
        proc = subprocess.Popen([sys.executable, "-m", "sslnb.grid", "--quiet", "--wait", *map(str, dirs)], cwd=ROOT,
                                env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: opened_by(proc.pid, dirs[0] / "lock") or proc.poll() is not None, timeout=120)
        for f in replace_with.iterdir():
            if f.name != "lock":
                shutil.copy2(f, dirs[0] / f.name)
        before = snapshot(dirs[0])
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "waiting for it" in err, err
    return before, err


def test_grid_wait_finished(tmp_path, grid_reference):
    dirs = grid_dirs(tmp_path)
    before, _ = grid_waiting_for(dirs, grid_reference[0])
    assert snapshot(dirs[0]) == before  # not finished a second time
    assert load_run(dirs[1]).done


def test_grid_wait_partial(tmp_path, grid_reference):
    partial = interrupted_after_first_epoch(tmp_path / "partial", grid_cfgs()[0])  # run 0 trained to epoch 1
    dirs = grid_dirs(tmp_path / "grid")
    _, err = grid_waiting_for(dirs, partial)
    assert "s1 at epoch 0: catching up to epoch 1" in err
    assert all(load_run(d).done for d in dirs)
    assert metrics(dirs[0])[:4] == metrics(partial)[:4]


def test_grid_same_dir(tmp_path):
    dirs = grid_dirs(tmp_path)
    (tmp_path / "link").symlink_to(dirs[0])
    for other in (tmp_path / ".." / tmp_path.name / "s0", tmp_path / "link"):
        before = snapshot(dirs[0])
        r = cli(dirs[0], other, module="sslnb.grid")
        assert r.returncode == 2
        one_line(r, str(dirs[0]), str(other), "same run directory")
        assert snapshot(dirs[0]) == before and not (dirs[0] / "lock").exists()


def test_grid_file(tmp_path):
    dirs = grid_dirs(tmp_path)
    (tmp_path / "file").write_text("mine")
    r = cli(dirs[0], tmp_path / "file", module="sslnb.grid")
    assert r.returncode == 2 and (tmp_path / "file").read_text() == "mine"
    one_line(r, str(tmp_path / "file"), "a file is in the way")


def test_grid_differ(tmp_path):
    dirs = grid_dirs(tmp_path)
    (dirs[1] / "config.json").write_text(json.dumps(grid_cfgs()[1].replace(weight_decay=0.01).to_dict()))
    r = cli(*dirs, module="sslnb.grid")
    assert r.returncode == 2
    one_line(r, "differ in weight_decay", "0.01")


# ---------------------------------------------------------------------- reading runs
READ_RUNS = """
import sys
from sslnb import plots
from sslnb.runs import find_runs
for run in find_runs(sys.argv[1]):
    for layer in ("z", "h"):
        emb, y = plots.run_tsne(run, layer)
        assert emb.shape == (len(y), 2)
print("read", len(find_runs(sys.argv[1])))
"""


def test_read_only_root(tmp_path, reference, grid_reference):
    """Runs read (and t-SNE drawn) from a read-only root; every chapter does so in tests/test_nbval.py."""
    root = tmp_path / "runs"
    for run in (reference, *grid_reference):
        shutil.copytree(run, root / f"{run.parent.name}-{run.name}")
    for run in find_runs(root)[:1]:  # one run with its t-SNE caches, the others without
        for layer in ("z", "h"):
            plots.run_tsne(run, layer)
    assert len(list(root.glob("*/tsne_*.npy"))) == 2
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}
    preexec = make_read_only(root)
    try:
        r = subprocess.run([sys.executable, "-c", READ_RUNS, str(root)], cwd=ROOT, env=ENV, capture_output=True,
                           text=True, preexec_fn=preexec)
        probe = subprocess.run([sys.executable, "-c", f"open({str(root / 'probe')!r}, 'w')"], env=ENV,
                               capture_output=True, text=True, preexec_fn=preexec)
    finally:
        make_writable(root)
    assert probe.returncode != 0 and "Permission denied" in probe.stderr  # the root really was read-only
    assert r.returncode == 0 and "read 3" in r.stdout, r.stderr[-2000:]
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before  # nothing written, nothing added


@pytest.mark.parametrize("damage", ["cut", "deleted"])
def test_features_damaged(tmp_path, reference, damage):
    run = Path(shutil.copytree(reference, tmp_path / "run"))
    path = run / "features.npz"
    path.write_bytes(path.read_bytes()[:1000]) if damage == "cut" else path.unlink()
    with pytest.raises(RunDirError) as e:
        plots.run_tsne(load_run(run), "z")
    message = str(e.value)
    assert "\n" not in message and str(path) in message and f"mv {run} {run}.damaged" in message


def descendants(pid: int) -> set[int]:
    """Every living process below ``pid`` (children, their children, ...), from /proc."""
    parents = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            parents[int(stat.parent.name)] = int(fields[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_execute_killed(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "sslnb.book", "execute", "--preset", "smoke", "--chapters",
                             "01_insdis", "--run-root", tmp_path / "runs", "--stage-dir", tmp_path / "stage",
                             "--device", "cpu"], cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kernels = lambda: [p for p in descendants(proc.pid)  # noqa: E731
                       if b"ipykernel" in Path(f"/proc/{p}/cmdline").read_bytes()]
    try:
        wait_for(lambda: kernels(), timeout=120)
        below = descendants(proc.pid)
        assert len(below) >= 2  # the worker and its kernel
    finally:
        proc.kill()
        proc.wait()
    end = time.time() + 30
    while any(alive(p) for p in below) and time.time() < end:
        time.sleep(0.2)
    left = [p for p in below if alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "processes left behind"


def test_every_fault_has_a_test():
    tests = {name[len("test_"):] for name in globals() if name.startswith("test_")}
    assert set(FAULTS) <= tests


def test_the_readme_lists_every_fault():
    readme = (ROOT / "USAGE.md").read_text()
    for what, seen in FAULTS.values():
        assert f"| {what} | {seen} |" in readme, what


if __name__ == "__main__":  # USAGE.md's table: python tests/test_faults.py
    print("| what you do | what you see |\n|---|---|")
    for what, seen in FAULTS.values():
        print(f"| {what} | {seen} |")
