"""The run directory's files, as the trainer writes them (``sslnb.runs`` reads them back).

A run directory holds everything about one training run::

    config.json      the full Config (the run's identity: same config, same directory name)
    metrics.jsonl    one JSON record per line: {"kind": "step", ...} and {"kind": "epoch", ...}
    checkpoint.pt    model, optimiser and progress, written atomically after every epoch
    checkpoint.next.pt  only while a grid commits an epoch (:func:`commit_pending`): the run's next checkpoint
    features.npz     test-set features for t-SNE: h (last conv), z (FC/projection), y (labels)
    provenance.json  git commit, versions, device, threads, wall time, command
    result.json      written last: final kNN, linear probe (last and best), collapse diagnostics
    lock             held (flock) by the process training the run; holds its pid and command

A run without ``result.json`` is unfinished; the trainer resumes it from its checkpoint. A run
directory is the user's data, so this module guards it:

- one process trains it at a time (:func:`lock`, an OS file lock on ``lock``: released when the
  process dies, so ``kill -9`` never leaves a stale lock);
- every write is atomic (a temporary file, then a rename), and a failed write (a full disk) removes its
  temporary file and says which file could not be written;
- everything a resume depends on is checked first (:func:`verify_resume`): a checkpoint or metrics
  file that is damaged, missing or from another run is named in one line with what to do, and never
  padded, cut into or overwritten. What can be recovered safely (records written after the last
  checkpoint, a temporary file left by an interrupted write, the records of a first epoch whose
  checkpoint was never written, a grid's epoch interrupted between its runs' checkpoints) is, with one
  line saying so.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .config import Config, ConfigError, field_names, run_tag
from .data import CANVAS, DIGITS_VERSION, folder_digest, folder_path, is_folder


class RunDirError(RuntimeError):
    """A run directory that cannot be used as it is: one line naming the file, what is wrong and what to
    do. ``status`` is the exit status: 2 when the user's input or files are at fault, 1 when the
    environment is (a full disk, a folder that cannot be written, another process training the run)."""

    def __init__(self, message: str, status: int = 2):
        super().__init__(message)
        self.status = status

# Fields that do not change what is computed, so they do not enter a run's identity. (eval_every: how
# often the run is measured; measuring touches neither the weights nor any random stream of training.)
NOT_IDENTITY = ("device", "preset", "data_root", "download", "channels_last", "compile", "eval_every")


def run_name(cfg: Config, listing: str | None = None) -> str:
    """A readable, unique directory name: ``byol-digits-111-normal-s0-1a2b3c4d``. A run on an image folder is
    named by the folder's name and listing (:func:`sslnb.data.folder_digest`; ``listing`` gives it for a folder
    that is not on this machine), not by where the folder is: the same images elsewhere are the same run."""
    # Only settings that differ from the defaults enter the digest, so that adding a new setting (with a
    # default that keeps the old behaviour) does not rename every existing run.
    default = Config()
    ident = {k: v for k, v in cfg.to_dict().items()
             if k not in NOT_IDENTITY and v != getattr(default, k)}
    if cfg.dataset == "digits":  # a new rendering of the embedded dataset is a new run
        ident["digits_version"] = DIGITS_VERSION
    if cfg.dataset == "fashion-canvas":  # so is a new canvas
        ident["canvas"] = CANVAS
    dataset = cfg.dataset
    if is_folder(dataset):  # your own images: the folder's name in the run's, its listing in the digest
        dataset = "folder-" + folder_label(dataset)
        ident["dataset"], ident["folder"] = dataset, listing or folder_digest(folder_path(cfg.dataset))
    digest = hashlib.sha1(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:8]
    parts = [cfg.method, dataset, *run_tag(cfg)]  # the method's own parts (its class's run_tag)
    parts += [cfg.augment.replace("+", "plus"), f"e{cfg.epochs}", f"s{cfg.seed}", digest]
    return "-".join(parts)


# ---------------------------------------------------------------------- atomic writes
def _atomic(path: Path, write) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch.save reports a full disk as a RuntimeError
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise write_error(path, e) from None


def write_error(path: Path, e: Exception) -> RunDirError:
    """One line for a file of a run that could not be written, keeping the cause."""
    text = str(e).strip()
    cause = getattr(e, "strerror", None) or (text.splitlines()[0] if text else type(e).__name__)
    if isinstance(e, RuntimeError):  # torch.save's own words name its C++ source, not the cause
        cause = "the write failed (is the disk full?)"
    kept = " (the previous version is kept)" if Path(path).exists() else ""
    return RunDirError(f"cannot write {path}: {cause}{kept}; free some space (or train into a writable folder), "
                       f"then run the same command again", status=1)


def write_json_atomic(path: Path, obj) -> None:
    """``obj`` as JSON into ``path``, atomically."""
    _atomic(path, lambda tmp: tmp.write_text(json.dumps(obj, indent=1, sort_keys=True)))


def save_atomic(path: Path, obj) -> None:
    """``torch.save(obj)`` into ``path``, atomically (same argument order as :func:`write_json_atomic`)."""
    _atomic(path, lambda tmp: torch.save(obj, tmp))


def savez_atomic(path: Path, arrays: dict) -> None:
    """``arrays`` as a compressed ``.npz`` into ``path``, atomically."""
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: numpy would add ".npz" to the temporary name
            np.savez_compressed(f, **arrays)

    _atomic(path, write)


# ---------------------------------------------------------------------- the run's identity
def read_config(path: Path) -> Config:
    """The Config in a ``config.json``; unreadable JSON or a bad setting is a one-line
    :class:`~sslnb.config.ConfigError` naming the file."""
    try:
        return Config.from_dict(json.loads(Path(path).read_text()))
    except (ValueError, ConfigError) as e:  # JSON errors are ValueErrors
        raise ConfigError(f"{path}: {e}") from None


def folder_label(dataset: str) -> str:
    """The name an image folder gives its runs (``folder:/a/b/My photos`` -> ``My_photos``)."""
    return re.sub(r"[^A-Za-z0-9._+]+", "_", folder_path(dataset).resolve().name) or "root"


def _same_setting(k: str, a, b) -> bool:
    if k == "dataset" and is_folder(a) and is_folder(b):  # where the folder is is not the run's identity
        return folder_label(a) == folder_label(b)
    return a == b


def identity_difference(old: Config, cfg: Config) -> str | None:
    """The first setting in which two configs describe different runs, as ``"field=old, asked new"`` (two
    image folders of one name are the same setting: their listings are in the runs' names)."""
    diff = [k for k in field_names() if k not in NOT_IDENTITY and not _same_setting(k, getattr(old, k), getattr(cfg, k))]
    return f"{diff[0]}={getattr(old, diff[0])!r}, asked {getattr(cfg, diff[0])!r}" if diff else None


def config_difference(run_dir: Path, cfg: Config) -> str | None:
    """None when ``run_dir`` holds no config or the same run as ``cfg``; otherwise the first field that
    differs, as ``"field=old, asked new"``."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        return None
    return identity_difference(read_config(path), cfg)


def claim(run_dir: Path, cfg: Config) -> None:
    """Write ``cfg`` into ``run_dir`` as its identity, or check that it is the run already there."""
    diff = config_difference(run_dir, cfg)
    if diff:
        raise ConfigError(f"{run_dir} holds a run with a different config ({diff}); choose another --run-dir")
    if not (Path(run_dir) / "config.json").exists():
        write_json_atomic(Path(run_dir) / "config.json", cfg.to_dict())


def finished(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a finished run (its ``result.json`` says done)."""
    try:
        return json.loads((Path(run_dir) / "result.json").read_text()).get("status") == "done"
    except (OSError, ValueError, AttributeError):
        return False


# ---------------------------------------------------------------------- one process at a time
@contextlib.contextmanager
def lock(run_dir: Path, wait: bool = False, say=print):
    """Hold ``run_dir``'s lock (an exclusive ``flock`` on ``run_dir/lock``) for the ``with`` block.

    The OS releases it when the process ends however it ends, so there is never a stale lock. If
    another process holds it: with ``wait``, say so and wait for it; otherwise a :class:`RunDirError`
    naming that process (exit status 1).
    """
    path = Path(run_dir) / "lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(path)
            if not wait:
                raise RunDirError(f"{run_dir} is being trained by {holder}; wait for it to finish (or stop it), "
                                  f"then run the same command again", status=1) from None
            say(f"{run_dir} is being trained by {holder}; waiting for it")
            fcntl.flock(fd, fcntl.LOCK_EX)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {' '.join(sys.argv)[:200]}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _holder(path: Path) -> str:
    try:
        pid, _, command = path.read_text().strip().partition(" ")
    except OSError:
        return "another process"
    return f"process {pid} ({command})" if pid else "another process"


# ---------------------------------------------------------------------- resuming
CHECKPOINT_KEYS = {"config", "epoch", "step", "wall_s", "model", "opt", "metrics_bytes"}
CHECKPOINT = "checkpoint.pt"
# A grid ends an epoch in two phases: every run's new checkpoint is written beside its old one under this
# name, then each is renamed into place (commit_pending). A grid stopped between those renames holds
# runs at two epochs; settle_pending finishes or undoes the epoch so that they resume together.
PENDING = "checkpoint.next.pt"


def commit_pending(run_dir: Path) -> None:
    """Rename ``run_dir``'s pending checkpoint into place (one atomic rename)."""
    os.replace(Path(run_dir) / PENDING, Path(run_dir) / CHECKPOINT)


def checkpoint_epoch(path: Path) -> int | None:
    """The epoch of the checkpoint file ``path``; None when it is missing or cannot be read as one."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        return int(state["epoch"]) if isinstance(state, dict) and CHECKPOINT_KEYS <= set(state) else None
    except Exception:  # noqa: BLE001 - missing or damaged: the resume check names it if it matters
        return None


def settle_pending(run_dirs, say=print) -> None:
    """Finish or undo a grid epoch that was stopped while its runs' checkpoints were committed.

    If every run of the grid holds the epoch (committed, or pending and readable), the renames are
    finished: the grid resumes after that epoch, as if it had not been stopped. Otherwise the epoch never
    reached every run: the pending checkpoints are removed, and the records written after the committed
    ones are dropped by :func:`verify_resume`, so the epoch is trained again, to the same numbers. One
    line says which."""
    run_dirs = [Path(d) for d in run_dirs]
    pending = {d: checkpoint_epoch(d / PENDING) for d in run_dirs if (d / PENDING).exists()}
    if not pending:
        return
    epoch = max((e for e in pending.values() if e is not None), default=None)
    forward = epoch is not None and all(
        pending.get(d) == epoch or (d not in pending and checkpoint_epoch(d / CHECKPOINT) == epoch) for d in run_dirs)
    for d in pending:
        commit_pending(d) if forward else (d / PENDING).unlink()
    names = ", ".join(d.name for d in pending)
    if forward:
        say(f"the grid was stopped while committing its runs' checkpoints of epoch {epoch}; completed the commit "
            f"({names})")
    else:
        say(f"the grid was stopped before every run had its checkpoint of epoch {epoch}; removed the pending "
            f"ones ({names}), so that epoch is trained again")


def _damaged(run_dir: Path, what: str) -> RunDirError:
    return RunDirError(f"{what}; nothing was changed: move the run aside (mv {run_dir} {run_dir}.damaged) "
                       f"and run the same command again to train it from the start", status=2)


def verify_resume(run_dir: Path, cfg: Config, map_location="cpu", say=print) -> dict | None:
    """Check everything an unfinished ``run_dir`` would resume from, and return its checkpoint (None
    when there is nothing to resume: a new run, or one stopped before its first checkpoint).

    Raises :class:`RunDirError` (one line: which file, what is wrong, what to do) when the checkpoint
    cannot be read, belongs to another run, or the metrics file is missing, shorter than the checkpoint
    says, or does not end at the checkpoint's epoch. Recovers, saying so in one line, what is safe to
    recover: a temporary file of an interrupted write, and records written after the last checkpoint.
    """
    run_dir = Path(run_dir)
    if (run_dir / PENDING).exists():  # a lone run resumes from the newer checkpoint, once it is sound
        _checked_checkpoint(run_dir, cfg, map_location, say, name=PENDING, trim=False)
        commit_pending(run_dir)
        say(f"{run_dir}: a grid was stopped while committing this run's checkpoint; it is in place now")
    state = _checked_checkpoint(run_dir, cfg, map_location, say)
    for tmp in sorted(run_dir.glob("*.tmp")):  # only once everything else is known to be sound
        tmp.unlink()
        say(f"{run_dir}: removed {tmp.name}, left by a write that was interrupted (the file it was replacing "
            f"is intact)")
    return state


def _checked_checkpoint(run_dir: Path, cfg: Config, map_location, say, name: str = CHECKPOINT,
                        trim: bool = True) -> dict | None:
    ckpt, metrics = run_dir / name, run_dir / "metrics.jsonl"
    if not ckpt.exists():
        trained = {r.get("epoch") for r in _records_or_damaged(run_dir, metrics) if r.get("epoch")}
        if trained == {1}:  # the first checkpoint was never written (a full disk, a kill): start again
            say(f"{run_dir}: dropped the records of epoch 1, whose checkpoint was never written; the run "
                f"starts again from the beginning")
        elif trained:
            raise _damaged(run_dir, f"{ckpt} is missing, but {metrics.name} records {len(trained)} trained epoch(s)")
        return None
    try:
        state = torch.load(ckpt, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - whatever the bytes are, the answer is the same line
        if ckpt.stat().st_size == 0:
            reason = "the file is empty"
        elif "weights only load failed" in str(e).lower():
            reason = "it holds objects other than tensors and plain data, which are never loaded"
        else:
            text = str(e).strip()
            reason = f"{type(e).__name__}: {text.splitlines()[0][:100]}" if text else type(e).__name__
        raise _damaged(run_dir, f"{ckpt} cannot be read as a checkpoint ({reason})") from None
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= set(state):
        raise _damaged(run_dir, f"{ckpt} is not a checkpoint written by sslnb.train")
    try:
        diff = identity_difference(Config.from_dict(state["config"]), cfg)
    except ConfigError as e:
        diff = str(e)
    if diff:
        raise _damaged(run_dir, f"{ckpt} belongs to another run ({diff})")
    if not metrics.exists():
        raise _damaged(run_dir, f"{metrics} is missing, but {ckpt.name} is at epoch {state['epoch']}")
    size, expected = metrics.stat().st_size, state["metrics_bytes"]
    if size < expected:
        raise _damaged(run_dir, f"{metrics} is shorter ({size} bytes) than {ckpt.name} says ({expected}): it was "
                                f"cut or edited")
    with open(metrics, "rb") as f:
        kept = f.read(expected)
    epochs = [r["epoch"] for r in _parse(run_dir, metrics, kept) if r.get("kind") == "epoch"]
    if not kept.endswith(b"\n") or not epochs or epochs[-1] != state["epoch"]:
        raise _damaged(run_dir, f"{metrics} does not end at epoch {state['epoch']}, where {ckpt.name} is")
    if size > expected and trim:
        with open(metrics, "r+b") as f:  # a record boundary, checked above
            f.truncate(expected)
        say(f"{run_dir}: dropped the records written after the last checkpoint (epoch {state['epoch']}); "
            f"they are trained again")
    return state


def _parse(run_dir: Path, metrics: Path, data: bytes) -> list[dict]:
    try:
        return [json.loads(line) for line in data.decode().splitlines() if line.strip()]
    except (ValueError, UnicodeDecodeError):
        raise _damaged(run_dir, f"{metrics} holds a line that is not a JSON record") from None


def _records_or_damaged(run_dir: Path, metrics: Path) -> list[dict]:
    """Every complete record (a last line cut by an interrupted write is not one)."""
    if not metrics.exists():
        return []
    data = metrics.read_bytes()
    return _parse(run_dir, metrics, data[:data.rfind(b"\n") + 1])


# ---------------------------------------------------------------------- metrics.jsonl
def read_records(run_dir: Path) -> list[dict]:
    """Every record of ``metrics.jsonl`` in order (empty when there is none yet): the one reader."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def steps_done(run_dir: Path) -> int:
    """Optimiser steps recorded so far (for progress bars of runs training in other processes). A line
    being written at this moment is not counted."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        lines = path.read_text().splitlines(keepends=True)
    except OSError:
        return 0
    count = 0
    for line in lines:
        if not line.endswith("\n"):
            break
        try:
            count += json.loads(line).get("kind") == "step"
        except ValueError:
            break
    return count


# ---------------------------------------------------------------------- provenance
def git_commit(cwd: Path | None = None) -> str:
    root = Path(cwd or Path(__file__).resolve().parent)
    try:
        sha = subprocess.run(["git", "rev-parse", "--short=10", "HEAD"], cwd=root, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("+dirty" if dirty else "")) if sha else "unknown"


def device_name(device) -> str:
    if str(device).startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} threads"


def provenance(device) -> dict:
    return {"git_commit": git_commit(), "python": platform.python_version(), "torch": torch.__version__,
            "device": str(device), "device_name": device_name(device), "host": platform.node(),
            "visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""),
            "command": " ".join(sys.argv), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
