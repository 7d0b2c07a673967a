"""bench/byol_screen.py, the BYOL screening script of issue 2: each variant is trained with its overrides
and printed beside the untrained network."""

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
