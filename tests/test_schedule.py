"""The GPU-box scheduler with fake devices and fake runs (each 'run' sleeps and writes its result).

The real thing (every smoke run trained on two fake devices, then the chapters and the site) is the
``executed`` fixture of tests/test_book.py.
"""

import json
import sys

import pytest

from sslnb import runs, schedule
from sslnb.config import Config
from sslnb.rundir import run_name

FAKE = """
import json, os, sys, time
path = sys.argv[1]
if os.path.exists(os.path.join(os.path.dirname(path), "FAIL-" + os.path.basename(path))):
    sys.exit(3)
time.sleep(0.4)
json.dump({"status": "done", "knn": 50.0, "probe_best": 40.0, "wall_s": 0.4,
           "devices": os.environ.get("CUDA_VISIBLE_DEVICES")}, open(os.path.join(path, "result.json"), "w"))
"""


@pytest.fixture
def fake_runs(monkeypatch):
    monkeypatch.setattr(runs, "train_command", lambda run_dir, world_size=1: [sys.executable, "-c", FAKE, str(run_dir)])


def configs():
    base = Config.from_preset("smoke", "byol", device="cpu")
    return [base.replace(seed=0, world_size=2), base.replace(seed=1), base.replace(seed=2),
            base.replace(seed=3, world_size=2), base.replace(seed=4)]


def events(root):
    return [json.loads(line) for line in (root / "schedule.jsonl").read_text().splitlines()]


def test_devices_are_shared_without_overlap_and_ddp_runs_get_several(tmp_path, fake_runs):
    pairs = [(c, tmp_path / run_name(c)) for c in configs()]
    jobs = schedule.train_concurrently(pairs, ["0", "1", "2"], progress=False, log_path=tmp_path / "schedule.jsonl",
                                       poll_s=0.05)
    assert [j.status for j in jobs] == ["done"] * 5
    busy, most = set(), 0
    for e in events(tmp_path):
        if e["event"] == "start":
            assert not busy & set(e["devices"]), e
            busy |= set(e["devices"])
            most = max(most, len(busy))
        else:
            busy -= set(e["devices"])
    assert most == 3  # the three devices were in use at once
    for job in jobs:
        seen = json.loads((job.path / "result.json").read_text())["devices"]
        assert len(seen.split(",")) == job.cfg.world_size == len(job.devices)


def test_a_failed_run_does_not_stop_the_others_and_a_second_call_retries_it(tmp_path, fake_runs, monkeypatch):
    cfgs = configs()[1:4]
    monkeypatch.setattr("sslnb.experiments.all_runs", lambda *a, **k: cfgs)
    failing = tmp_path / f"FAIL-{run_name(cfgs[1])}"
    failing.touch()
    args = ["--preset", "smoke", "--gpus", "0,1", "--run-root", str(tmp_path), "--no-book", "--quiet"]
    assert schedule.main(args) == 1
    table = (tmp_path / "summary.md").read_text()
    assert table.count("| done |") == 2 and table.count("| failed |") == 1
    failing.unlink()
    assert schedule.main(args) == 0  # only the failed run trains again
    starts = [e["run"] for e in events(tmp_path) if e["event"] == "start"]
    assert starts[3:] == [run_name(cfgs[1])]
    table = (tmp_path / "summary.md").read_text()
    assert table.count("| kept |") == 2 and table.count("| done |") == 1


def test_a_run_larger_than_the_box_is_refused_in_one_line(tmp_path):
    cfg = Config.from_preset("smoke", "byol", world_size=4, bn_groups=4)
    with pytest.raises(ValueError, match="needs 4 devices; only 2 were given"):
        schedule.train_concurrently([(cfg, tmp_path / "x")], ["0", "1"], progress=False)
