"""Screen BYOL variants at a preset: train each (two at a time, one thread each) and print their kNN
accuracy per epoch and at the end beside the untrained network's, so the search for a cpu-preset BYOL
that beats random weights (issue 2) can be repeated and extended.

    python bench/byol_screen.py                                  # the preset's BYOL, 20 epochs
    python bench/byol_screen.py "lr=0.03" "target_init='copy', ema_schedule='cos'"
    python bench/byol_screen.py --epochs 100 "" "target_init='copy', ema_schedule='cos'"

Each positional argument is one variant: Python keyword arguments for :class:`sslnb.config.Config`
("" is the preset's BYOL unchanged). ``--epochs`` keeps the preset's learning-rate milestones at the
same fractions of training. Runs go to ``--run-root`` (default ``runs/screen``) and are reused there.
The untrained network is the preset's: a variant that changes the network (``width=16``) is still
compared with the preset's random init, so train that reference yourself (``epochs=0``).
The numbers are measurements for people; no test asserts any of them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sslnb.config import Config, ConfigError  # noqa: E402
from sslnb.experiments import references  # noqa: E402
from sslnb.runs import launch  # noqa: E402


def variant(base: Config, spec: str) -> Config:
    """``base`` with the overrides in ``spec`` ("lr=0.03, ema=0.9")."""
    return base.replace(**eval(f"dict({spec})", {"__builtins__": {}, "dict": dict}))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("variants", nargs="*", default=[""], help="Config overrides per variant, e.g. \"lr=0.03\"")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--epochs", type=int, default=0, help="0: the preset's")
    p.add_argument("--run-root", default="runs/screen")
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args(argv)

    base = Config.from_preset(args.preset, "byol")
    if args.epochs:
        scale = args.epochs / base.epochs
        base = base.replace(epochs=args.epochs, lr_milestones=tuple(round(m * scale) for m in base.lr_milestones))
    configs = {}
    for spec in args.variants or [""]:
        try:
            configs[spec or "(preset)"] = variant(base, spec)
        except (ConfigError, SyntaxError, TypeError, NameError) as e:  # one line, exit status 2, no traceback
            print(f"byol_screen.py: bad variant {spec!r}: {e}", file=sys.stderr)
            return 2
    init = references(args.preset)["random init"]
    runs = launch([init, *configs.values()], args.run_root, progress=False, jobs=args.jobs)
    init_knn = runs[0].result["knn"]
    print(f"preset {args.preset}, {base.dataset}, {base.epochs} epochs; untrained network kNN {init_knn:.1f}%")
    print(f"{'variant':44s} {'kNN':>5s} {'vs init':>7s} {'kNN z':>5s} {'probe':>5s} {'rank':>5s}  kNN per epoch")
    for label, run in zip(configs, runs[1:]):
        r = run.result
        per_epoch = " ".join(f"{v:.0f}" for v in run.metric("knn")[1])
        print(f"{label[:44]:44s} {r['knn']:5.1f} {r['knn'] - init_knn:+7.1f} {r.get('knn_z', float('nan')):5.1f} "
              f"{r.get('probe_best', float('nan')):5.1f} {r.get('eff_rank', float('nan')):5.1f}  {per_epoch}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
