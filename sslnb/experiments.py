"""What runs each chapter needs, as named configs for a preset.

A chapter gets its runs with one call, ``load_chapter("03_byol", preset, ...)``: the named configs of
``chapter_runs`` handed to ``sslnb.runs.launch``. ``make book`` trains the union of every chapter's list
before executing them (runs shared by chapters, such as the random-init reference, train once), so the
chapters themselves only load finished runs.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from .config import Config
from .data import FOLDER, is_folder, write_example_folder
from .methods import CLASSES
from .rundir import git_commit, run_name
from .runs import Run, launch, load_run

# InsDis temperature sweeps. The seed's: 0.05 ... 0.80, plus 0.90 and 1.00 in early README versions.
INSDIS_TEMPERATURES = {
    "paper": (0.05, 0.07, 0.10, 0.20, 0.30, 0.40, 0.50, 0.60, 0.70, 0.80, 0.90, 1.00),
    "cpu": (0.05, 0.07, 0.20, 0.30, 0.50),
    "laptop": (0.07, 0.20, 0.50),
    "smoke": (0.10, 0.50),
}


# The BatchNorm, batch-size and variance studies train many BYOL runs. At the cpu preset each gets a
# shorter budget than the BYOL chapter's runs (10 epochs instead of 20; 6 before grids of runs made the
# BN and variance studies about twice as cheap, bench/RESULTS.md) so that the whole book stays within
# half an hour on two cores; the paper preset keeps the seed's 201 epochs.
# The laptop preset's studies keep its whole 40 epochs: that is where BYOL starts to learn.
STUDY = {"paper": {}, "cpu": dict(epochs=10, lr_milestones=(8, 9)), "laptop": {}, "smoke": {}}
BN_CODES = ("111", "101", "011", "110", "010", "100", "001", "000")  # the seed's table order
BATCH_SIZES = {"paper": (128, 512, 1024), "cpu": (32, 64, 128), "laptop": (32, 64, 128), "smoke": (32, 64)}
# The batch sizes that also train with BatchNorm over the whole batch. The laptop preset has it at its
# baseline size alone: the runs of another batch size train alone (no grid), and the two at 32 and 128
# cost 28 core-minutes, a quarter of the book's two hours (bench/RESULTS.md, "The laptop book end to end
# on the canvas"). Batch and BatchNorm samples still come apart there: B=128 with the seed-like groups and
# B=64 with full-batch BN both normalise over 64 samples (``fixed_bn_pairs``). The smoke preset follows
# laptop, so that the tests execute the batch chapter's partial design; cpu and paper keep the whole one.
FULL_BN_SIZES = {"paper": BATCH_SIZES["paper"], "cpu": BATCH_SIZES["cpu"], "laptop": (64,), "smoke": (64,)}
SEEDS = {"paper": tuple(range(7)), "cpu": (0, 1, 2), "laptop": (0, 1), "smoke": (0, 1)}  # the seed repeated its run 7 times
# The seeds of each condition of the BN study besides the baseline 111 (which has SEEDS): a claim that a
# code collapses needs two seeds at least, so 000, the seed's clearest collapse, has two everywhere.
BN_SEEDS = {preset: {"000": (0, 1)} for preset in SEEDS}
# At laptop the study must separate codes on two seeds (issue 25's bar): the baseline 111, and the seed's two
# collapses, 100 and 000.
BN_SEEDS["laptop"]["100"] = (0, 1)
# The seeds of each batch size's runs (the baseline's batch size with BatchNorm groups has SEEDS).
BATCH_SEEDS = {preset: (0,) for preset in SEEDS}


def bn_seeds(preset: str, condition: str) -> tuple[int, ...]:
    """The seeds the BN chapter trains condition ``condition`` (a code, or ``"011 affine off"``...) with."""
    return SEEDS[preset] if condition == "111" else BN_SEEDS[preset].get(condition, (0,))


def by_condition(runs: dict[str, Run]) -> dict[str, list[Run]]:
    """A chapter's runs grouped by condition: the run labelled ``"X"`` and those labelled ``"X seed=N"`` are
    the seeds of condition ``X`` (a run under two labels counts once), in the order of the labels."""
    groups: dict[str, dict[str, Run]] = {}
    for label, run in runs.items():
        condition = label.rpartition(" seed=")[0] or label
        groups.setdefault(condition, {}).setdefault(run.name, run)
    return {k: list(v.values()) for k, v in groups.items()}


def _extra(device: str, data_root: str, dataset: str | None) -> dict:
    return {"device": device, "data_root": data_root, **({"dataset": dataset} if dataset else {})}


def references(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
               data_root: str = "data") -> dict[str, Config]:
    """What every SSL number is compared with: the untrained network and, at every preset but ``paper``
    (whose seed study has none), supervised training of the same backbone (how much the images allow)."""
    extra = _extra(device, data_root, dataset)
    base = Config.from_preset(preset, "byol", **extra)
    # epochs = 0: the backbone is built from the same seed as every method's, so it is *the* random init.
    runs = {"random init": base.replace(augment="normal", epochs=0)}
    if preset != "paper":
        runs["supervised"] = Config.from_preset(preset, "supervised", **extra)
    return runs


def byol_chapter(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
                 data_root: str = "data") -> dict[str, Config]:
    """BYOL with the seed's two augmentation pipelines (``normal``: its first row; ``aug+``), each on two
    seeds (a claim that BYOL learns needs two seeds; at the laptop preset ``aug+`` seed 1 is the variance
    chapter's run), SimSiam (BYOL without the moving-average target) like ``aug+`` on the same
    two seeds (``simsiam``, ``simsiam seed=1``), plus the references."""
    extra = _extra(device, data_root, dataset)
    base = Config.from_preset(preset, "byol", **extra)
    siam = Config.from_preset(preset, "simsiam", augment="aug+", **extra)
    return {"byol": base.replace(augment="normal"), "byol seed=1": base.replace(augment="normal", seed=1),
            "byol aug+": base.replace(augment="aug+"),
            "byol aug+ seed=1": base.replace(augment="aug+", seed=1), "simsiam": siam,
            "simsiam seed=1": siam.replace(seed=1), **references(preset, dataset, device, data_root)}


def insdis_chapter(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
                   data_root: str = "data") -> dict[str, Config]:
    """The temperature sweep (``t=0.2`` ...), the MLP-head variant at the seed's best CIFAR-100 t = 0.3
    (``mlp head``), the original paper's NCE at its t = 0.07 (``nce``), and the references."""
    base = Config.from_preset(preset, "insdis", **_extra(device, data_root, dataset))
    runs = {f"t={t:g}": base.replace(temperature=t) for t in INSDIS_TEMPERATURES[preset]}
    mlp = base.replace(temperature=0.3, insdis_head="mlp")
    if preset == "paper":  # the seed's MLP-head run used batch 512 and lr 0.12 (bn_groups keeps 128 per GPU)
        mlp = mlp.replace(batch_size=512, lr=0.12)
    runs["mlp head"] = mlp
    runs["nce"] = base.replace(temperature=0.07, insdis_loss="nce")
    return {**runs, **references(preset, dataset, device, data_root)}


def simclr_chapter(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
                   data_root: str = "data") -> dict[str, Config]:
    """SimCLR with the seed's loss (``seed``, on two seeds: a claim that it learns needs two) and the
    paper's NT-Xent (``standard``), same everything else, plus the references."""
    base = Config.from_preset(preset, "simclr", **_extra(device, data_root, dataset))
    return {"seed": base.replace(simclr_loss="seed"), "seed seed=1": base.replace(simclr_loss="seed", seed=1),
            "standard": base.replace(simclr_loss="standard"),
            **references(preset, dataset, device, data_root)}


def results_chapter(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
                    data_root: str = "data") -> dict[str, Config]:
    """The main comparison: the runs of the three method chapters, plus ResNet-50 rows at the paper
    preset (the seed's R50 BYOL setting is inferred: batch 256, lr 0.06; its R50 InsDis setting is not
    stated, so the R18 one is used)."""
    runs = {f"insdis {k}": c for k, c in insdis_chapter(preset, dataset, device, data_root).items()
            if k.startswith("t=")}
    runs.update({"byol": (b := byol_chapter(preset, dataset, device, data_root))["byol"],
                 "byol aug+": b["byol aug+"],
                 "simclr": simclr_chapter(preset, dataset, device, data_root)["seed"],
                 **references(preset, dataset, device, data_root)})
    if preset == "paper":
        r50 = dict(network="resnet50", batch_size=256, lr=0.06)
        runs["byol r50"] = runs["byol"].replace(**r50)
        runs["byol aug+ r50"] = runs["byol aug+"].replace(**r50)
        best_t = 0.3 if runs["byol"].dataset == "cifar100" else 0.2  # the seed's best per dataset
        runs["insdis r50"] = runs[f"insdis t={best_t:g}"].replace(network="resnet50")
    return runs


def _study_base(preset: str, dataset: str | None, device: str, data_root: str) -> Config:
    """The baseline of the BatchNorm, batch-size and variance studies: the seed's BN-table setting
    (BYOL, code 111, ``aug+``) at the preset's study budget."""
    base = Config.from_preset(preset, "byol", **_extra(device, data_root, dataset))
    return base.replace(augment="aug+", **STUDY[preset])


def variance_chapter(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
                     data_root: str = "data") -> dict[str, Config]:
    """The study baseline repeated with different seeds (``seed=0`` ...): the run-to-run noise."""
    base = _study_base(preset, dataset, device, data_root)
    return {f"seed={s}": base.replace(seed=s) for s in SEEDS[preset]}


def bn_chapter(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
               data_root: str = "data") -> dict[str, Config]:
    """All eight BN codes (named by their code; ``"000 seed=1"`` is code 000's second seed, and so on: the
    seeds of :func:`bn_seeds`, the baseline 111's being the variance chapter's), code 011 with
    ``bn_affine = False`` (``011 affine off``), code 111 with BatchNorm over the whole batch (``111
    full-batch BN``), the repeats of the baseline also as ``seed=N``, and the untrained network.
    :func:`by_condition` groups them by condition."""
    base = _study_base(preset, dataset, device, data_root)
    conditions = {code: base.replace(bn_code=code) for code in BN_CODES}
    conditions["011 affine off"] = base.replace(bn_code="011", bn_affine=False)
    conditions["111 full-batch BN"] = base.replace(bn_groups=1)
    runs = {}
    for label, cfg in conditions.items():
        for s in bn_seeds(preset, label):
            runs[label if s == 0 else f"{label} seed={s}"] = cfg.replace(seed=s)
    runs.update(variance_chapter(preset, dataset, device, data_root))
    runs["random init"] = references(preset, dataset, device, data_root)["random init"]
    return runs


def batch_chapter(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
                  data_root: str = "data") -> dict[str, Config]:
    """The study baseline at the preset's batch sizes, the learning rate scaled linearly from the
    preset's (0.12 at 512 for the paper preset; the seed does not state its rates): ``B=N`` keeps the
    preset's BN groups (the seed's per-GPU statistics, batch/4 on four GPUs), ``B=N full-batch BN`` uses
    one group (at the sizes of :data:`FULL_BN_SIZES`); ``"B=N seed=S"`` is seed S of a size
    (:data:`BATCH_SEEDS`; the baseline's size with BatchNorm groups is the baseline, whose seeds are the
    variance chapter's). Plus the repeats of the baseline (``seed=N``)."""
    base = _study_base(preset, dataset, device, data_root)
    runs = {}
    for b in BATCH_SIZES[preset]:
        scaled = base.replace(batch_size=b, lr=base.lr * b / base.batch_size)
        series = [(f"B={b}", scaled)]
        if b in FULL_BN_SIZES[preset]:
            series.append((f"B={b} full-batch BN", scaled.replace(bn_groups=1)))
        for label, cfg in series:
            seeds = SEEDS[preset] if cfg == base else BATCH_SEEDS[preset]  # the baseline's repeats are free
            runs.update({label if s == 0 else f"{label} seed={s}": cfg.replace(seed=s) for s in seeds})
    runs.update(variance_chapter(preset, dataset, device, data_root))
    return runs


def bn_samples(cfg: Config) -> int:
    """How many samples each BatchNorm of a run normalises over (its batch over its groups)."""
    return cfg.batch_size // cfg.bn_groups


def fixed_bn_pairs(runs: dict[str, Run]) -> list[tuple[str, str]]:
    """Pairs ``(larger, smaller)`` of the batch chapter's conditions whose BatchNorms see the same number of
    samples but whose batches differ: their difference is the batch's own (with its learning rate), not
    BatchNorm's. Conditions are labels without ``" seed=N"``, in the order of ``runs``."""
    conditions = {k: v[0].config for k, v in by_condition(runs).items() if k.startswith("B=")}
    return [(a, b) for a, ca in conditions.items() for b, cb in conditions.items()
            if bn_samples(ca) == bn_samples(cb) and ca.batch_size > cb.batch_size]


def own_images_chapter(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
                       data_root: str = "data") -> dict[str, Config]:
    """BYOL and SimCLR at the preset's settings on an image folder, with the untrained network: the folder
    ``dataset`` names (``folder:PATH``, your images), or else the example folder of digits written once under
    ``data_root`` (:func:`sslnb.data.write_example_folder`; a dataset that is not a folder is ignored here)."""
    if not (dataset and is_folder(dataset)):
        dataset = FOLDER + str(write_example_folder(Path(data_root).resolve()))
    extra = {"device": device, "data_root": data_root, "dataset": dataset}
    byol = Config.from_preset(preset, "byol", **extra)
    return {"BYOL": byol, "SimCLR": Config.from_preset(preset, "simclr", **extra), "untrained": byol.replace(epochs=0)}


def no_runs(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
            data_root: str = "data") -> dict[str, Config]:
    """A page that trains nothing (the compute map draws bench/byol_map.json, made by bench/byol_map.py)."""
    return {}


# The runs whose trained weights a chapter reads (``Run.model_state``), by chapter and label: a bundle
# (:mod:`sslnb.bundle`) carries their model; every other run travels without weights.
MODEL_READERS = {"04_bn_collapse": ("011", "011 affine off")}

CHAPTERS = {"00_results": results_chapter, "01_insdis": insdis_chapter, "02_simclr": simclr_chapter,
            "03_byol": byol_chapter, "04_bn_collapse": bn_chapter, "05_batch_size": batch_chapter,
            "06_variance": variance_chapter, "08_byol_compute": no_runs, "09_own_images": own_images_chapter}


def chapter_runs(chapter: str, preset: str = "cpu", dataset: str | None = None, device: str = "auto",
                 data_root: str = "data") -> dict[str, Config]:
    """The named configs chapter ``chapter`` needs at ``preset`` (``dataset`` overrides the preset's)."""
    if chapter not in CHAPTERS:
        raise ValueError(f"chapter={chapter!r} is not known; choose one of: {', '.join(CHAPTERS)}")
    return CHAPTERS[chapter](preset, dataset, device, data_root)


def load_chapter(chapter: str, preset: str = "cpu", dataset: str | None = None, devices: str = "auto",
                 data_root: str = "data", run_root: str | Path = "runs") -> dict[str, Run]:
    """The finished runs chapter ``chapter`` shows, by label, training any that are missing (the
    chapters' one call: their papermill parameters go straight in)."""
    configs = chapter_runs(chapter, preset, dataset, devices, data_root)
    return dict(zip(configs, launch(list(configs.values()), run_root)))


def finished_runs(chapter: str, preset: str = "cpu", dataset: str | None = None, devices: str = "auto",
                  data_root: str = "data", run_root: str | Path = "runs") -> dict[str, Run]:
    """The runs of chapter ``chapter`` already finished under ``run_root``, by label, training nothing (for a
    page that summarises other chapters: opened first in JupyterLab, it must not start their studies)."""
    out = {}
    for label, cfg in chapter_runs(chapter, preset, dataset, devices, data_root).items():
        path = Path(run_root) / run_name(cfg)
        if (path / "config.json").exists() and (run := load_run(path)).done:
            out[label] = run
    return out


def all_runs(preset: str = "cpu", dataset: str | None = None, device: str = "auto",
             data_root: str = "data") -> list[Config]:
    """Every config the book needs at ``preset``, each once, longest first (so parallel training ends
    together)."""
    unique = {}
    for chapter in CHAPTERS:
        for cfg in chapter_runs(chapter, preset, dataset, device, data_root).values():
            unique.setdefault(run_name(cfg), cfg)
    return sorted(unique.values(), key=lambda c: -_cost(c))


def _cost(cfg: Config) -> float:
    """Rough relative training cost: forwards per image times epochs."""
    return CLASSES[cfg.method].forwards * cfg.epochs * (4 if cfg.network == "resnet50" else 1) * (1.3 if cfg.batch_size < 64 else 1)


# ---------------------------------------------------------------------- what a chapter costs
# The training cost of each chapter at each preset, as measured on some machine: written by
# `python -m bench --only budget --preset P --run-root R` from a run root where the chapter's runs are all
# trained, read by each chapter's opening line.
BUDGETS = Path(__file__).resolve().parent.parent / "bench" / "budgets.json"


def run_cost(run: Run) -> tuple[str, float, str]:
    """``(unit, minutes, machine)`` of one run's training: core-minutes on a CPU (wall time times the
    threads it had; a run trained in a grid counts its share of the grid's time), GPU-minutes on GPUs."""
    wall = (run.result.get("wall_s") or 0.0) / 60
    name = str(run.provenance.get("device_name", "an unrecorded machine"))
    if str(run.provenance.get("device", "cpu")).startswith("cuda"):
        return "GPU-minutes", wall * max(run.config.world_size, 1), name
    found = re.fullmatch(r"(.*), (\d+) threads?", name)
    return ("core-minutes", wall * int(found[2]), found[1]) if found else ("core-minutes", wall, name)


def chapter_cost(runs: dict[str, Run]) -> dict:
    """The training cost of a chapter's runs ({label: Run}, each run once): ``{"runs": n, "cost": {unit:
    minutes}, "machines": [...]}``."""
    cost, machines, seen = {}, set(), set()
    for run in runs.values():
        if run.name in seen:
            continue
        seen.add(run.name)
        unit, minutes, machine = run_cost(run)
        cost[unit] = cost.get(unit, 0.0) + minutes
        machines.add(machine)
    return {"runs": len(seen), "cost": cost, "machines": sorted(machines)}


def _cost_words(entry: dict) -> str:
    amounts = " and ".join(f"{m:,.1f} {unit}" for unit, m in sorted(entry["cost"].items())) or "no recorded time"
    return f"{entry['runs']} runs, {amounts} on {', '.join(entry['machines']) or 'an unrecorded machine'}"


def record_budget(preset: str, run_root: str | Path, path: Path = BUDGETS, dataset: str | None = None) -> dict:
    """Record in ``path`` (JSON, by preset) what each chapter's runs under ``run_root`` cost at ``preset``;
    a chapter with a run not yet trained is left out. Returns this preset's record."""
    chapters = {}
    for chapter in CHAPTERS:
        paths = {label: Path(run_root) / run_name(cfg) for label, cfg in chapter_runs(chapter, preset, dataset).items()}
        if paths and all((p / "result.json").exists() for p in paths.values()):
            runs = {label: load_run(p) for label, p in paths.items()}
            if all(r.done for r in runs.values()):
                chapters[chapter] = chapter_cost(runs)
    record = {"date": time.strftime("%Y-%m-%d"), "commit": git_commit(), "dataset": dataset, "chapters": chapters}
    budgets = json.loads(path.read_text()) if path.exists() else {}
    budgets[preset] = record
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(budgets, indent=1, sort_keys=True) + "\n")
    tmp.replace(path)
    return record


def cost_markdown(chapter: str, runs: dict[str, Run], path: Path = BUDGETS) -> str:
    """The line a chapter opens with: what its runs cost to train and on which machine (from their own
    records), and what the same chapter cost at the other presets (``path``, by :func:`record_budget`)."""
    first = next(iter(runs.values())).config if runs else None
    preset = first.preset if first else None
    text = (f"**What this chapter costs.** At the `{preset or 'custom'}` preset its runs took: "
            f"{_cost_words(chapter_cost(runs))}" if runs else "**What this chapter costs.** It trains no runs of its own")
    try:
        budgets = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        budgets = {}
    others = [f"`{p}` {_cost_words(b['chapters'][chapter])} ({b['date']})" for p, b in sorted(budgets.items())
              if p != preset and chapter in b.get("chapters", {})]
    text += (". Recorded at the other presets: " + "; ".join(others) + "." if others else
             ". Its cost at the other presets is not recorded yet (`python -m bench --only budget --preset P` "
             "records it).")
    return text + " Training time only; a run trained in a grid counts its share of the grid's time."
