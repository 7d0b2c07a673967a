"""Every chapter also passes nbval (``pytest --nbval-lax``) at the smoke preset, run as a contributor
would check one notebook: the parameters come from SSLNB_PRESET / SSLNB_RUN_ROOT, not from papermill.
It reuses the runs the book fixture trained, so it costs only the chapters' own cells."""

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.name for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def test_every_chapter_passes_nbval_lax_at_the_smoke_preset(executed):
    tmp, _, _ = executed
    env = {**os.environ, "SSLNB_PRESET": "smoke", "SSLNB_RUN_ROOT": str(tmp / "runs"), "MPLBACKEND": "agg"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", *CHAPTERS],
                       cwd=ROOT / "book", env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    passed = int(re.search(r"(\d+) passed", r.stdout).group(1))
    assert passed > 3 * len(CHAPTERS)  # nbval checks every code cell: many per chapter
