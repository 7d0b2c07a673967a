"""The BatchNorm study at a preset, trained as grids and recorded: ``python bench/bn_study.py --preset laptop``.

Trains (or reuses) the BN chapter's runs at the preset with ``sslnb.runs.launch`` (grids of runs, two
jobs): the eight BN codes and the baseline's seeds, plus code 000 with every seed but the first, so that
the sharpest contrast of the study (111 against 000) has two seeds. Prints one row per run (kNN, linear
probe, the collapse diagnostics, which collapse the chapter's rules find (complete or partial), the untrained network's
kNN for comparison) and writes the table into bench/RESULTS.md between ``<!-- bn-study:PRESET:start -->``
and ``<!-- bn-study:PRESET:end -->``. Run directories are not committed; the table is the record.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from sslnb.evaluate import collapse_kind  # noqa: E402
from sslnb.experiments import BN_CODES, SEEDS, bn_chapter, bn_seeds  # noqa: E402
from sslnb.rundir import device_name  # noqa: E402
from sslnb.runs import launch  # noqa: E402

RESULTS = ROOT / "bench" / "RESULTS.md"


def configs(preset: str, data_root: str, all_runs: bool) -> dict:
    chapter = bn_chapter(preset, data_root=data_root)
    chosen = {code: chapter[code] for code in BN_CODES}
    for s in SEEDS[preset][1:]:
        chosen[f"111 seed={s}"] = chapter[f"seed={s}"]
        chosen[f"000 seed={s}"] = chapter["000"].replace(seed=s)
    for code in BN_CODES:  # the chapter's further seeds of a code (experiments.BN_SEEDS)
        for s in bn_seeds(preset, code)[1:]:
            chosen.setdefault(f"{code} seed={s}", chapter[code].replace(seed=s))
    chosen["untrained"] = chapter["random init"]
    if all_runs:
        chosen["011 affine off"] = chapter["011 affine off"]
        chosen["111 full-batch BN"] = chapter["111 full-batch BN"]
    return chosen


def table(runs: dict) -> str:
    init = runs["untrained"].result
    repeats = [run.result for label, run in runs.items() if label.split(" seed=")[0] == "111"]
    lines = ["| run | seed | kNN | gain over untrained | linear (best) | z std x sqrt(d) | eff. rank | collapse | minutes |",
             "|---|---|---|---|---|---|---|---|---|"]
    for label, run in runs.items():
        if label == "untrained":
            continue
        r, c = run.result, run.config
        probe = r.get("probe_best")
        lines.append(f"| {label.split(' seed=')[0]} | {c.seed} | {r['knn']:.1f} | {r['knn'] - init['knn']:+.1f} | "
                     f"{'–' if probe is None else f'{probe:.1f}'} | {r['z_std'] / r['z_std_ref']:.3f} | "
                     f"{r['eff_rank']:.1f} | {collapse_kind(r, repeats)} | {r['wall_s'] / 60:.1f} |")
    lines.append(f"| untrained network (seed 0) | 0 | {init['knn']:.1f} | – | – | – | – | – | – |")
    return "\n".join(lines)


def record(preset: str, text: str) -> None:
    start, end = f"<!-- bn-study:{preset}:start -->", f"<!-- bn-study:{preset}:end -->"
    body = RESULTS.read_text()
    block = f"{start}\n{text}\n{end}"
    if start in body:
        body = body[:body.index(start)] + block + body[body.index(end) + len(end):]
    else:
        body = body.rstrip() + f"\n\n## The BatchNorm study at the {preset} preset (bench/bn_study.py)\n\n{block}\n"
    RESULTS.write_text(body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python bench/bn_study.py", description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="laptop")
    p.add_argument("--run-root", default=str(ROOT / "runs"))
    p.add_argument("--data-root", default=str(ROOT / "data"))
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--all", action="store_true", help="also the chapter's 011 affine-off and full-batch-BN runs")
    p.add_argument("--no-record", action="store_true", help="print the table only")
    args = p.parse_args(argv)
    chosen = configs(args.preset, args.data_root, args.all)
    t0 = time.time()
    runs = dict(zip(chosen, launch(list(chosen.values()), args.run_root, jobs=args.jobs)))
    text = (f"Command: `python bench/bn_study.py --preset {args.preset}{' --all' if args.all else ''}`; "
            f"{device_name_of()}; {time.strftime('%Y-%m-%d')}; {len(runs)} runs, {(time.time() - t0) / 60:.0f} "
            f"minutes of wall time in this call (runs already trained are reused). Minutes per run: its share of "
            f"its grid's time plus its own measurements.\n\n{table(runs)}")
    print(text)
    if not args.no_record:
        record(args.preset, text)
    return 0


def device_name_of() -> str:
    import torch

    return f"{device_name(torch.device('cpu'))}, {platform.node()}"


if __name__ == "__main__":
    sys.exit(main())
