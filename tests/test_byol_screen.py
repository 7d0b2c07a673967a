"""bench/byol_screen.py and bench/byol_screen_data.py, the BYOL screening scripts of issue 2: each variant
is trained with its overrides and printed beside the untrained network."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_screen_trains_each_variant_and_compares_with_the_untrained_network(tmp_path):
    r = subprocess.run([sys.executable, "bench/byol_screen.py", "--preset", "smoke", "--epochs", "1", "--run-root",
                        str(tmp_path), "--jobs", "1", "", "lr=0.03, ema=0.5"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = r.stdout.strip().splitlines()
    init = float(lines[-4].split("kNN ")[-1].rstrip("%"))
    rows = {line[:44].strip(): line[44:].split() for line in lines[-2:]}
    assert set(rows) == {"(preset)", "lr=0.03, ema=0.5"}
    for knn, vs_init, *_ in rows.values():
        assert abs(float(knn) - init - float(vs_init)) < 0.11
    configs = [json.loads(p.read_text()) for p in tmp_path.glob("*/config.json")]
    assert sorted((c["epochs"], c["lr"], c["ema"]) for c in configs) == [(0, 0.05, 0.9), (1, 0.03, 0.5), (1, 0.05, 0.9)]


def test_a_bad_variant_is_one_line_and_trains_nothing(tmp_path):
    r = subprocess.run([sys.executable, "bench/byol_screen.py", "--preset", "smoke", "--run-root", str(tmp_path),
                        "lr=0.03", "lr=-1"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "lr=-1" in r.stderr and "Traceback" not in r.stderr
    assert not any(tmp_path.iterdir())


def _screen_data(tmp_path, *args):
    return subprocess.run([sys.executable, "bench/byol_screen_data.py", *args, "--preset", "smoke",
                           "--run-root", str(tmp_path)], capture_output=True, text=True, cwd=ROOT)


def test_data_screen_renders_the_digits_in_the_style_asked_for(tmp_path):
    rows = {}
    for name, style in [("plain", "{}"), ("big", '{"scale": [0.7, 0.9], "rotation": 0}')]:
        r = _screen_data(tmp_path, name, '{"epochs": 1}', "--style", style, "--crop", "0.5", "1")
        assert r.returncode == 0, r.stderr[-2000:]
        rows[name] = r.stdout.strip().splitlines()[-1].split()
        assert rows[name][0] == name and (tmp_path / name / "result.json").exists()
    # Bigger, upright digits are easier to match pixel by pixel: the style reached the dataset.
    assert float(rows["big"][3]) > float(rows["plain"][3]) + 5
    assert json.loads((tmp_path / "big" / "config.json").read_text())["epochs"] == 1


def test_data_screen_bad_input_is_one_line(tmp_path):
    for args in (["x", '{"lr": -1}'], ["x", "--style", '{"scal": 1}'], ["x", "{lr: 1}"]):
        r = _screen_data(tmp_path, *args)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "x").exists()


def test_data_screen_refuses_a_name_reused_with_other_data(tmp_path):
    assert _screen_data(tmp_path, "a", '{"epochs": 0}').returncode == 0
    r = _screen_data(tmp_path, "a", '{"epochs": 0}', "--style", '{"shift": 0}')
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "choose another name" in r.stderr
    assert _screen_data(tmp_path, "a", '{"epochs": 0}').returncode == 0  # the same data: reused
