"""Why does BN code 000 not collapse completely at the laptop preset? ``python bench/why_000.py``.

The seed's code 000 (no BatchNorm in any head) collapsed completely on CIFAR-100 (1.56% linear). At the
laptop preset it folds its projections onto a few directions (dimensional collapse) but keeps its spread.
This script tests one hypothesis at a time, each on two seeds, trained as grids beside the BN chapter's
runs (same run root: the 111 and 000 runs there are the baseline) and records the table in
bench/RESULTS.md between ``<!-- why-000:start -->`` and ``<!-- why-000:end -->``:

- ``ema``: the target moves faster here (0.99) than in the seed (0.996). A slower target might let the
  online network fall into the constant solution the seed's runs found.

Stated before measuring: if the EMA rate is the cause, 000 at 0.996 collapses completely (the spread rule)
on both seeds; if not, it stays where 000 at 0.99 is (partial by the rank rule, or not at all).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sslnb.evaluate import collapse_kind, collapse_tally  # noqa: E402
from sslnb.experiments import bn_chapter, bn_seeds  # noqa: E402
from sslnb.runs import launch  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"
HYPOTHESES = {"ema": dict(ema=0.996)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/why_000.py", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="laptop")
    p.add_argument("--run-root", default=str(ROOT / "runs"))
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--only", default=",".join(HYPOTHESES), help="hypotheses to test (default: all)")
    p.add_argument("--no-record", action="store_true")
    args = p.parse_args(argv)
    chapter = bn_chapter(args.preset, data_root=args.data_root)
    base = {s: chapter["000"].replace(seed=s) for s in (0, 1)}
    repeats = {s: (chapter["111"] if s == 0 else chapter[f"seed={s}"]) for s in bn_seeds(args.preset, "111")}
    chosen = {f"000 seed={s}": c for s, c in base.items()}
    chosen.update({f"111 seed={s}": c for s, c in repeats.items()})
    for name in args.only.split(","):
        chosen.update({f"000 {name} seed={s}": c.replace(**HYPOTHESES[name]) for s, c in base.items()})
    t0 = time.time()
    runs = dict(zip(chosen, launch(list(chosen.values()), args.run_root, jobs=2)))
    baseline = [r.result for k, r in runs.items() if k.startswith("111")]
    lines = ["| condition | seed | kNN | linear (best) | z std x sqrt(d) | eff. rank | collapse |", "|---|---|---|---|---|---|---|"]
    kinds = {}
    for label, run in runs.items():
        if label.startswith("111"):
            continue
        r = run.result
        kind = collapse_kind(r, baseline)
        condition = label.split(" seed=")[0]
        kinds.setdefault(condition, []).append(kind)
        lines.append(f"| {condition} ({', '.join(f'{k}={v}' for k, v in HYPOTHESES.get(condition[4:], {}).items()) or 'as the chapter'}) "
                     f"| {run.config.seed} | {r['knn']:.1f} | {r.get('probe_best') or 0:.1f} | "
                     f"{r['z_std'] / r['z_std_ref']:.3f} | {r['eff_rank']:.1f} | {kind} |")
    tally = "; ".join(f"{c}: {collapse_tally(k)}" for c, k in kinds.items())
    text = (f"Command: `python bench/why_000.py --preset {args.preset}`; {time.strftime('%Y-%m-%d')}; "
            f"{(time.time() - t0) / 60:.0f} minutes of wall time in this call (runs already trained are reused). "
            f"Collapse by the BN chapter's rules against the 111 runs' ranks. {tally}.\n\n" + "\n".join(lines))
    print(text)
    if not args.no_record:
        body = RESULTS.read_text()
        start, end = "<!-- why-000:start -->", "<!-- why-000:end -->"
        block = f"{start}\n{text}\n{end}"
        if start in body:
            body = body[:body.index(start)] + block + body[body.index(end) + len(end):]
        else:
            body = body.rstrip() + ("\n\n## Why code 000 does not collapse completely at the laptop preset "
                                    f"(bench/why_000.py)\n\n{block}\n")
        RESULTS.write_text(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
