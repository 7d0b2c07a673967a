"""Every chapter also passes nbval (``pytest --nbval-lax``) at the smoke preset, run as a contributor
would check one notebook: the parameters come from SSLNB_PRESET / SSLNB_RUN_ROOT, not from papermill.
It reuses the runs the book fixture trained, so it costs only the chapters' own cells; they are read
from a read-only copy (finished runs on a share, or a mounted folder of results, must be readable), with
the t-SNE caches of some runs removed so that the chapters compute those in memory."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from helpers import make_read_only, make_writable

ROOT = Path(__file__).resolve().parent.parent
CHAPTERS = sorted(p.name for p in (ROOT / "book").glob("[0-9][0-9]_*.ipynb"))


def test_every_chapter_passes_nbval_lax_at_the_smoke_preset_from_a_read_only_run_root(executed, tmp_path):
    tmp, _, _ = executed
    runs = Path(shutil.copytree(tmp / "runs", tmp_path / "runs"))
    caches = sorted(runs.glob("*/tsne_*.npy"))
    assert caches  # the book's execution wrote them
    for cache in caches[::2]:
        cache.unlink()
    env = {**os.environ, "SSLNB_PRESET": "smoke", "SSLNB_RUN_ROOT": str(runs), "MPLBACKEND": "agg", "OMP_NUM_THREADS": "1"}
    preexec = make_read_only(runs)
    try:  # two pytest processes, each with half of the chapters (one per core)
        procs = [subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", *half],
                                  cwd=ROOT / "book", env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  preexec_fn=preexec) for half in (CHAPTERS[::2], CHAPTERS[1::2])]
        outs = [(p, *p.communicate()) for p in procs]
    finally:
        make_writable(runs)
    passed = 0
    for p, out, err in outs:
        assert p.returncode == 0, out[-4000:] + err[-2000:]
        passed += int(re.search(r"(\d+) passed", out).group(1))
    assert passed > 3 * len(CHAPTERS)  # nbval checks every code cell: many per chapter
    assert sorted(runs.glob("*/tsne_*.npy")) == caches[1::2]  # nothing was written
