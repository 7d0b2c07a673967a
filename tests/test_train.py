"""End-to-end training on the smoke preset: run directory, resume, command line."""

import json
import subprocess
import sys

import pytest

from sslnb.config import METHODS, Config
from sslnb.rundir import run_name
from sslnb.runs import find_runs, launch, load_run
from sslnb.train import train

from helpers import write_fake_cifar

TIMING = {"epoch_s", "img_per_s", "eval_s"}


def metrics_without_timing(path):
    out = []
    for line in (path / "metrics.jsonl").read_text().splitlines():
        rec = json.loads(line)
        out.append({k: v for k, v in rec.items() if k not in TIMING})
    return out


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    cfg = Config.from_preset("smoke", "byol", epochs=3)
    path = tmp_path_factory.mktemp("runs") / "byol"
    train(cfg, path, progress=False)
    return load_run(path)


def test_smoke_run_writes_a_valid_run_directory(smoke_run):
    p = smoke_run.path
    for name in ("config.json", "metrics.jsonl", "checkpoint.pt", "features.npz", "provenance.json", "result.json"):
        assert (p / name).exists(), name
    assert smoke_run.done and smoke_run.config.epochs == 3
    assert [r["epoch"] for r in smoke_run.records("epoch")] == [0, 1, 2, 3]
    steps = smoke_run.records("step")
    assert len(steps) == 3 * 4 and [r["step"] for r in steps] == list(range(1, 13))
    f = smoke_run.features()
    assert f["h"].shape == (1000, 32) and f["z"].shape == (1000, 32) and f["y"].shape == (1000,)
    r = smoke_run.result
    for key in ("knn", "knn_init", "probe_last", "probe_best", "z_std", "eff_rank", "wall_s"):
        assert key in r
    prov = smoke_run.provenance
    assert prov["git_commit"] and prov["device"] == "cpu" and prov["wall_s"] > 0
    assert "smoke" in smoke_run.caption()


def test_smoke_loss_goes_down(smoke_run):
    _, loss = smoke_run.metric("loss")
    assert loss[-1] < loss[0]


def test_interrupted_run_resumes_to_the_same_metrics(tmp_path, smoke_run):
    cfg = smoke_run.config
    path = tmp_path / "resumed"

    def stop(epoch):
        if epoch == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, path, progress=False, on_epoch_end=stop)
    assert not (path / "result.json").exists() and (path / "checkpoint.pt").exists()
    train(cfg, path, progress=False)
    assert metrics_without_timing(path) == metrics_without_timing(smoke_run.path)
    assert json.loads((path / "provenance.json").read_text())["resumed_at_epoch"] == 1


def test_eval_every_measures_fewer_epochs_and_trains_the_same_network(tmp_path, smoke_run):
    """eval_every = 2 over 3 epochs measures epochs 0, 2 and 3 (the last), leaves the training figures
    and the final result of every epoch as they were, and is the same run (same directory name)."""
    cfg = smoke_run.config.replace(eval_every=2)
    assert run_name(cfg) == run_name(smoke_run.config)
    train(cfg, tmp_path / "sparse", progress=False)
    sparse = load_run(tmp_path / "sparse")
    assert [r["epoch"] for r in sparse.records("epoch") if "knn" in r] == [0, 2, 3]
    full = {r["epoch"]: r for r in smoke_run.records("epoch")}
    for r in sparse.records("epoch"):  # every figure it has is the every-epoch run's, to the bit
        assert {k: v for k, v in r.items() if k not in TIMING} == {k: full[r["epoch"]][k] for k in r if k not in TIMING}
    assert "knn" not in sparse.records("epoch")[1] and "eval_s" in sparse.records("epoch")[2]
    assert sparse.metric("knn")[0] == [0, 2, 3]
    for key in ("knn", "knn_init", "probe_best", "eff_rank"):
        assert sparse.result[key] == smoke_run.result[key], key


def test_launch_reuses_finished_runs_and_finds_them(tmp_path):
    cfg = Config.from_preset("smoke", "byol", epochs=1)
    (run,) = launch([cfg], tmp_path, progress=False)
    assert run.path.name == run_name(cfg) and run.done
    mtime = (run.path / "result.json").stat().st_mtime_ns
    (again,) = launch([cfg], tmp_path, progress=False)
    assert (again.path / "result.json").stat().st_mtime_ns == mtime  # not retrained
    assert [r.name for r in find_runs(tmp_path, method="byol")] == [run.name]
    assert find_runs(tmp_path, bn_code="000") == []


def test_run_dir_with_other_config_is_refused(tmp_path):
    from sslnb.config import ConfigError

    cfg = Config.from_preset("smoke", "byol", epochs=0)
    train(cfg, tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train(cfg.replace(lr=0.5), tmp_path / "r", progress=False)


def test_cifar_code_path_on_small_files(tmp_path):
    write_fake_cifar(tmp_path / "data", "cifar10")
    cfg = Config.from_preset("smoke", "byol", dataset="cifar10", data_root=str(tmp_path / "data"), image_size=32,
                             epochs=1, train_size=0, batch_size=32, bn_groups=2)
    train(cfg, tmp_path / "run", progress=False)
    run = load_run(tmp_path / "run")
    assert run.done and run.result["train_images"] == 120


# Every registered method at its smoke settings, but those with their own end-to-end test here (BYOL: the
# smoke run above; the supervised reference: below), and the variants of a loss or head.
OWN_TESTS = {"byol", "supervised"}
VARIANTS = [("insdis", {"insdis_loss": "nce", "insdis_head": "mlp"}), ("simclr", {"simclr_loss": "standard"})]


@pytest.mark.parametrize("method,overrides", [(m, {}) for m in METHODS if m not in OWN_TESTS] + VARIANTS)
def test_other_methods_write_valid_run_directories(tmp_path, method, overrides):
    cfg = Config.from_preset("smoke", method, epochs=2, **overrides)
    run = load_run(train(cfg, tmp_path / method, progress=False))
    assert run.done and [r["epoch"] for r in run.records("epoch")] == [0, 1, 2]
    assert all(abs(r["loss"]) < 1e3 for r in run.records("step"))  # finite (a negative cosine may be < 0)
    f = run.features()
    assert f["h"].shape == (1000, 32) and f["z"].shape[0] == 1000
    assert 0 <= run.result["probe_best"] <= 100
    if method == "insdis":  # the seed's monitor against the memory bank is logged every epoch
        assert all("knn_bank" in r for r in run.records("epoch"))


def test_insdis_bank_follows_the_features_and_resumes(tmp_path):
    """After training, every bank row is a unit vector that moved off its noise initialisation, and a
    resumed run continues from the saved bank (same metrics as an uninterrupted run)."""
    import torch

    cfg = Config.from_preset("smoke", "insdis", epochs=2)
    full = train(cfg, tmp_path / "full", progress=False)
    state = torch.load(full / "checkpoint.pt", weights_only=False)["model"]
    bank = state["bank.vectors"]
    assert torch.allclose(bank.norm(dim=1), torch.ones(len(bank)), atol=1e-5)

    class Stop(Exception):
        pass

    def stop(epoch):
        raise Stop

    with pytest.raises(Stop):
        train(cfg, tmp_path / "cut", progress=False, on_epoch_end=stop)
    train(cfg, tmp_path / "cut", progress=False)
    assert metrics_without_timing(tmp_path / "cut") == metrics_without_timing(full)


def test_supervised_reference_runs(tmp_path):
    cfg = Config.from_preset("smoke", "supervised", epochs=1)
    train(cfg, tmp_path / "sup", progress=False)
    assert "test_acc" in load_run(tmp_path / "sup").result


def cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "sslnb.train", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("args,words", [
    (["--bn-code", "121"], ["bn_code", "BN1"]),
    (["--method", "moco"], ["method", "byol"]),
    (["--dataset", "imagenet"], ["dataset", "cifar10"]),
    (["--lr", "-1"], ["lr", "> 0"]),
    (["--epochs", "many"], ["epochs"]),
    (["--preset", "huge"], ["preset", "smoke"]),
    (["--temperature-typo", "0.1"], ["unrecognized arguments"]),
])
def test_cli_bad_input_is_one_line_and_status_2(tmp_path, args, words):
    r = cli("--preset", "smoke", "--run-dir", str(tmp_path / "x"), *args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0]
    assert "Traceback" not in r.stderr


def test_cli_missing_cifar_offline(tmp_path):
    r = cli("--preset", "smoke", "--dataset", "cifar100", "--data-root", str(tmp_path / "data"),
            "--download", "false", "--run-dir", str(tmp_path / "x"))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    assert "cifar-100-python" in r.stderr


def test_parallel_launch_reports_a_failed_run_in_one_line(tmp_path):
    from sslnb.runs import LaunchError

    cfgs = [Config.from_preset("smoke", "byol", dataset="cifar10", data_root=str(tmp_path / "none"), seed=s)
            for s in (0, 1)]
    with pytest.raises(LaunchError) as e:
        launch(cfgs, tmp_path / "runs", progress=False, jobs=2)
    assert "\n" not in str(e.value) and "cifar-10-batches-py" in str(e.value)


def test_parallel_launch_trains_missing_runs(tmp_path):
    cfgs = [Config.from_preset("smoke", "byol", epochs=1, seed=s) for s in (0, 1)]
    runs = launch(cfgs, tmp_path, progress=False, jobs=2)
    assert all(r.done for r in runs) and runs[0].name != runs[1].name
