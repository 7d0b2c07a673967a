"""Several processes (gloo, CPU) compute what one process computes on the whole batch.

The first group of tests spawns two processes once (``tests/dist_workers.py``) and compares every
scenario with the same steps on this one process. The second group runs ``torchrun`` on the training
entry point: a valid run directory from two processes, a killed rank that stops the run instead of
hanging, and the resume that follows.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

import dist_workers as W
from sslnb import dist
from sslnb.config import METHODS, ConfigError
from sslnb.runs import load_run

ROOT = Path(__file__).resolve().parent.parent
WORLD = 2


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    mp.spawn(W.worker, args=(WORLD, f"file://{out}/store", str(out)), nprocs=WORLD, join=True)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.fixture(scope="module")
def one_process():
    return {name: W.steps(W.config(name)) for name in W.SCENARIOS}


def assert_same_state(a: dict, b: dict, atol: float = 1e-9, skip=()):
    for k in a:
        if any(s in k for s in skip):
            continue
        assert torch.allclose(a[k].double(), b[k].double(), atol=atol, rtol=0), k


@pytest.mark.parametrize("name", ["simclr-seed-groups", "simclr-standard-groups", "simclr-seed-sync"])
def test_simclr_with_gathered_negatives_equals_one_process(two_processes, one_process, name):
    """Same loss at every step and same parameters after three SGD steps: the gradients agree. With
    ``groups`` each process's BN sees the group one process's ghost BN saw; with ``sync`` BN sees the
    whole batch on both sides (sslnb.dist.SyncBatchNorm against plain BatchNorm)."""
    ref, got = one_process[name], two_processes[0][name]
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-10)
    # Running statistics: one process keeps its first group's, two processes rank 0's (the same images).
    assert_same_state(ref["state"], got["state"], atol=1e-9)
    assert all(got["same"][k] for k in got["state"] if "running" not in k and "num_batches" not in k)


def test_simclr_without_gathering_is_not_the_one_process_loss(two_processes, one_process):
    """The control for the test above: local negatives change the loss."""
    ref = one_process["simclr-seed-groups"]["losses"]
    got = two_processes[0]["simclr-seed-local-gather"]["losses"]
    assert abs(got[0] - ref[0]) > 1e-3


@pytest.mark.parametrize("name", ["insdis", "insdis-nce"])
def test_insdis_memory_bank_is_identical_on_every_process(two_processes, one_process, name):
    for rank in range(WORLD):
        assert two_processes[rank][name]["same"]["bank.vectors"]
    bank = two_processes[0][name]["state"]["bank.vectors"]
    rows = torch.arange(W.N_STEPS * W.GLOBAL_BATCH) % W.N_TRAIN
    assert torch.allclose(bank[rows].norm(dim=1), torch.ones(len(rows), dtype=bank.dtype))  # every row updated
    if name == "insdis":  # the softmax loss has no sampling: the whole run equals one process
        assert torch.allclose(bank, one_process[name]["state"]["bank.vectors"], atol=1e-6)
        assert two_processes[0][name]["losses"] == pytest.approx(one_process[name]["losses"], abs=1e-10)
        assert_same_state(one_process[name]["state"], two_processes[0][name]["state"], atol=1e-6)


def test_byol_target_is_identical_on_every_process_and_equals_one_process(two_processes, one_process):
    got, ref = two_processes[0]["byol"], one_process["byol"]
    target = [k for k in got["state"] if k.startswith("target.") and "running" not in k and "num_batches" not in k]
    assert target and all(got["same"][k] and two_processes[1]["byol"]["same"][k] for k in target)
    assert_same_state({k: ref["state"][k] for k in target}, got["state"], atol=1e-9)
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-10)


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_on_two_processes_equals_one_process(two_processes, one_process, name):
    """Each registered method at its smoke settings: the same loss at every step, and the same parameters
    (and EMA targets, memory banks) after three steps, on two processes as on one; every parameter identical
    on both processes. BatchNorm running statistics are left out: one process keeps its first ghost group's."""
    ref, got = one_process[name], two_processes[0][name]
    assert got["losses"] == pytest.approx(ref["losses"], abs=1e-10)
    assert_same_state(ref["state"], got["state"], atol=1e-6, skip=("running", "num_batches"))
    assert all(got["same"][k] for k in got["state"] if "running" not in k and "num_batches" not in k)


def test_groups_need_a_multiple_of_the_processes():
    with pytest.raises(ConfigError, match="bn_groups"):
        W.config("byol", world_size=4)  # bn_groups = 2 cannot be split over 4 processes
    assert dist.bn_batch(512, 4, "groups", 4) == 128 and dist.bn_batch(512, 4, "local", 2) == 256
    assert dist.bn_batch(512, 4, "sync", 4) == 512


# ---------------------------------------------------------------------- torchrun
def torchrun(*args, nproc=WORLD):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "sslnb.train", "--preset", "smoke", "--device", "cpu", "--quiet", *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


# Every registered method but the supervised reference, whose two-process path is the self-supervised ones'
# (one backbone under DDP, labels split like the images) and whose run is not a result of the study.
TORCHRUN_METHODS = [m for m in METHODS if m != "supervised"]


@pytest.mark.parametrize("method", TORCHRUN_METHODS)
def test_torchrun_two_processes_write_one_valid_run_directory(tmp_path, method):
    run_dir = tmp_path / method
    proc = torchrun("--method", method, "--run-dir", str(run_dir), "--train-size", "128")
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    run = load_run(run_dir)
    assert run.done and run.config.world_size == WORLD
    assert run.provenance["world_size"] == WORLD and run.provenance["bn_batch"] == 32
    assert len(run.records("step")) == 2 * (128 // 64)  # 2 epochs of 2 global batches
    assert out.count("run directory:") == 1  # only rank 0 reports
    assert not list(tmp_path.glob(f"{method}*/*.tmp"))


def _worker_pids(launcher_pid: int) -> dict[int, int]:
    """rank -> pid of the processes torchrun started."""
    out = {}
    for pid in subprocess.run(["pgrep", "-P", str(launcher_pid)], capture_output=True, text=True).stdout.split():
        try:
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        for item in env:
            if item.startswith(b"RANK="):
                out[int(item[5:])] = int(pid)
    return out


def test_a_killed_rank_stops_the_run_and_it_resumes(tmp_path):
    run_dir = tmp_path / "killed"
    args = ("--method", "simclr", "--run-dir", str(run_dir), "--epochs", "6", "--lr-milestones", "5")
    proc = torchrun(*args)
    deadline = time.time() + 240
    while not (run_dir / "checkpoint.pt").exists():  # let one epoch finish
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-2000:]
        time.sleep(0.2)
    pids = _worker_pids(proc.pid)
    assert set(pids) == {0, 1}
    os.kill(pids[1], signal.SIGKILL)
    t0 = time.time()
    out, _ = proc.communicate(timeout=180)  # no hang: the launcher stops rank 0 as well
    assert proc.returncode != 0
    assert time.time() - t0 < 120
    assert "rank: 1" in out and "SIGKILL" in out, out[-2000:]
    assert not (run_dir / "result.json").exists()

    proc = torchrun(*args)  # the same command again continues from the checkpoint
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-2000:]
    run = load_run(run_dir)
    assert run.done and run.provenance["resumed_at_epoch"] >= 1
    assert [r["epoch"] for r in run.records("epoch")] == list(range(7))
    steps = [r["step"] for r in run.records("step")]
    assert steps == list(range(1, len(steps) + 1))


def test_a_world_size_that_does_not_match_torchrun_is_one_line(tmp_path):
    proc = torchrun("--method", "byol", "--run-dir", str(tmp_path / "x"), "--world-size", "1")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode != 0
    assert "world_size=1 but 2 processes were started" in out
