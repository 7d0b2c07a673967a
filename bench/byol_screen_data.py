"""Screen one BYOL variant whose *data* differs from the preset's: the embedded digits rendered with
another style and/or another crop-scale range (the Config fields ``digits_style`` and ``crop_scale``,
so both are part of the run's identity). It trains in this process, in a run directory of its own
(refused if that name already holds other settings), and prints one row like ``bench/byol_screen.py``
(kNN at the end, kNN vs the same network untrained on the same data, best probe, effective rank, kNN per
epoch), plus raw-pixel kNN on the patched data: a friendlier dataset also helps raw pixels.

    python bench/byol_screen_data.py NAME '{"lr": 0.03}' --style '{"scale": [0.5, 0.75]}' --crop 0.35 1

The config overrides, ``--style`` (``digits_style``: entries of ``sslnb.data.DIGITS_STYLE``) and ``--crop``
(``crop_scale``) are all optional. One thread per run, so two can train side by side. Runs go to ``--run-root``/NAME and are
resumed or reused there (the caller keeps names unique). The numbers are for people; no test asserts them.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("name")
    p.add_argument("overrides", nargs="?", default="{}", help="Config overrides as JSON")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--style", default="{}", help="DIGITS_STYLE entries as JSON")
    p.add_argument("--crop", type=float, nargs=2, default=None, metavar=("LO", "HI"))
    p.add_argument("--run-root", default="runs/screen-data")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    from sslnb.config import Config, ConfigError
    from sslnb.evaluate import raw_pixel_knn
    from sslnb.rundir import config_difference
    from sslnb.runs import load_run
    from sslnb.train import train

    run_dir = Path(args.run_root) / args.name
    try:  # JSON errors are ValueErrors too: one line, exit status 2
        overrides = json.loads(args.overrides)
        if not isinstance(overrides, dict):
            raise ValueError(f"overrides must be a JSON object, not {args.overrides!r}")
        overrides["digits_style"] = {**overrides.get("digits_style", {}), **json.loads(args.style)}
        if args.crop:
            overrides["crop_scale"] = tuple(args.crop)
        cfg = Config.from_preset(args.preset, overrides.pop("method", "byol"), **overrides)
        diff = config_difference(run_dir, cfg)
        if diff:
            raise ValueError(f"{run_dir} was trained with other settings ({diff}); choose another name")
    except (ValueError, ConfigError) as e:
        print(f"byol_screen_data.py: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    start = time.time()
    train(cfg, run_dir, progress=False)
    run = load_run(run_dir)
    _, knn = run.metric("knn")  # the measured epochs, the untrained network first
    r = run.result
    print(f"{args.name:24s} raw pixels {raw_pixel_knn(cfg):4.1f}  untrained {knn[0]:4.1f}  "
          f"final {r['knn']:4.1f} ({r['knn'] - knn[0]:+.1f})  best {max(knn):4.1f}  "
          f"probe {r.get('probe_best', float('nan')):4.1f}  rank {r.get('eff_rank', float('nan')):4.1f}  "
          f"{time.time() - start:.0f}s | " + " ".join(f"{v:.0f}" for v in knn), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
