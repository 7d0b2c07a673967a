"""The run lists of every chapter follow the seed's settings at the paper preset."""

import pytest

from sslnb.experiments import BN_CODES, CHAPTERS, all_runs, chapter_runs
from sslnb.rundir import run_name


def test_paper_preset_run_lists_follow_the_seed():
    insdis = chapter_runs("01_insdis", "paper")
    temps = sorted(c.temperature for k, c in insdis.items() if k.startswith("t="))
    assert temps == [0.05, 0.07, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]
    assert all((c.batch_size, c.lr, c.dataset) == (128, 0.03, "cifar100") for k, c in insdis.items() if k.startswith("t="))
    mlp = insdis["mlp head"]
    assert (mlp.insdis_head, mlp.batch_size, mlp.lr, mlp.temperature) == ("mlp", 512, 0.12, 0.3)
    bn = chapter_runs("04_bn_collapse", "paper")
    assert {bn[c].bn_code for c in BN_CODES} == set(BN_CODES)
    assert all((bn[c].augment, bn[c].batch_size, bn[c].lr, bn[c].bn_groups, bn[c].epochs) == ("aug+", 512, 0.12, 4, 201)
               for c in BN_CODES)
    assert bn["011 affine off"].bn_affine is False and bn["111 full-batch BN"].bn_groups == 1
    batch = chapter_runs("05_batch_size", "paper")
    assert [(batch[f"B={b}"].lr, batch[f"B={b}"].bn_groups) for b in (128, 512, 1024)] == [
        (pytest.approx(0.03), 4), (pytest.approx(0.12), 4), (pytest.approx(0.24), 4)]
    assert len(chapter_runs("06_variance", "paper")) == 7  # the seed's seven tries
    results = chapter_runs("00_results", "paper")
    assert (results["byol r50"].network, results["byol r50"].batch_size, results["byol r50"].lr) == ("resnet50", 256, 0.06)


@pytest.mark.parametrize("preset, pairs", [
    ("cpu", [("B=64", "B=32 full-batch BN"), ("B=128", "B=64 full-batch BN")]),
    ("laptop", [("B=128", "B=64 full-batch BN")]),  # full-batch BN at the baseline size alone
    ("paper", [("B=512", "B=128 full-batch BN")]),
    ("smoke", [])])
def test_the_batch_chapter_pairs_runs_whose_batchnorms_see_as_many_samples(preset, pairs):
    """fixed_bn_pairs: seed-like runs (BN over batch / groups) against full-batch runs of the same BN count."""
    from types import SimpleNamespace

    from sslnb.experiments import FULL_BN_SIZES, bn_samples, fixed_bn_pairs

    configs = chapter_runs("05_batch_size", preset)
    runs = {label: SimpleNamespace(name=run_name(cfg), config=cfg) for label, cfg in configs.items()}
    assert fixed_bn_pairs(runs) == pairs
    assert all(bn_samples(configs[a]) == bn_samples(configs[b]) for a, b in pairs)
    assert {int(k[2:].split()[0]) for k in configs if "full-batch" in k} == set(FULL_BN_SIZES[preset])


@pytest.mark.parametrize("preset", ["smoke", "cpu", "laptop", "paper"])
def test_shared_runs_train_once(preset):
    names = [run_name(c) for c in all_runs(preset)]
    assert len(names) == len(set(names))
    every = {run_name(c) for ch in CHAPTERS for c in chapter_runs(ch, preset).values()}
    assert every == set(names)


def test_two_seeds_where_the_book_claims_learning_or_collapse():
    """The BYOL chapter's second seed and the BN chapter's repeats are real second seeds; at the laptop
    preset the BYOL chapter's second seed is the variance chapter's run, so it trains once."""
    byol, bn = chapter_runs("03_byol", "laptop"), chapter_runs("04_bn_collapse", "laptop")
    assert (byol["byol aug+"].seed, byol["byol aug+ seed=1"].seed) == (0, 1)
    assert byol["byol aug+ seed=1"].replace(seed=0) == byol["byol aug+"]
    assert run_name(byol["byol aug+ seed=1"]) == run_name(chapter_runs("06_variance", "laptop")["seed=1"])
    assert (bn["000"].seed, bn["000 seed=1"].seed) == (0, 1)
    assert bn["000 seed=1"].replace(seed=0) == bn["000"]


def test_the_bn_chapter_groups_its_runs_by_condition_each_seed_once():
    from types import SimpleNamespace

    from sslnb.experiments import BN_CODES, bn_seeds, by_condition

    configs = chapter_runs("04_bn_collapse", "cpu")
    runs = {label: SimpleNamespace(name=run_name(c), seed=c.seed) for label, c in configs.items()}
    groups = by_condition(runs)
    assert [r.seed for r in groups["111"]] == list(bn_seeds("cpu", "111")) == [0, 1, 2]
    assert [r.seed for r in groups["000"]] == [0, 1]
    assert all(len(groups[code]) == len(bn_seeds("cpu", code)) for code in BN_CODES)
    assert [r.seed for r in groups["011 affine off"]] == [0]
    assert {r.name for r in groups["111"]} == {run_name(configs[f"seed={s}"]) for s in (0, 1, 2)}  # the repeats


def _run(name, wall_s, device_name, device="cpu", world_size=1):
    from types import SimpleNamespace

    return SimpleNamespace(name=name, result={"wall_s": wall_s}, config=SimpleNamespace(world_size=world_size),
                           provenance={"device_name": device_name, "device": device})


def test_a_chapters_cost_counts_each_run_once_by_its_threads_and_devices():
    from sslnb.experiments import chapter_cost

    runs = {"a": _run("r1", 600, "Xeon, 1 threads"), "a again": _run("r1", 600, "Xeon, 1 threads"),
            "b": _run("r2", 300, "Xeon, 2 threads"), "c": _run("r3", 120, "H100", device="cuda:0", world_size=2)}
    cost = chapter_cost(runs)
    assert cost["runs"] == 3 and cost["machines"] == ["H100", "Xeon"]
    assert cost["cost"] == {"core-minutes": pytest.approx(10 + 5 * 2), "GPU-minutes": pytest.approx(2 * 2)}


def test_every_chapter_opens_with_its_cost_here_and_at_the_recorded_presets(executed, tmp_path):
    """From the smoke book: the budget is recorded for every chapter that trains runs; a chapter's opening
    line gives its own runs' cost and another preset's from the record; each executed chapter shows it."""
    import json

    import nbformat

    from sslnb.experiments import cost_markdown, record_budget
    from sslnb.runs import load_run

    book_root, outs, _ = executed
    record = tmp_path / "budgets.json"
    record.write_text(json.dumps({"cpu": {"date": "2026-01-01", "chapters": {"03_byol": {
        "runs": 4, "cost": {"core-minutes": 12.5}, "machines": ["a test machine"]}}}}))
    smoke = record_budget("smoke", book_root / "runs", record)
    assert set(smoke["chapters"]) == set(CHAPTERS) - {"08_byol_compute"}
    assert all(c["cost"]["core-minutes"] > 0 for c in smoke["chapters"].values())
    assert set(json.loads(record.read_text())) == {"cpu", "smoke"}, "the other presets' records are kept"
    runs = {label: load_run(book_root / "runs" / run_name(cfg)) for label, cfg in chapter_runs("03_byol", "smoke").items()}
    line = cost_markdown("03_byol", runs, record)
    assert f"{smoke['chapters']['03_byol']['runs']} runs" in line and "`cpu` 4 runs, 12.5 core-minutes on a test machine" in line
    for out in outs:
        if out.stem in smoke["chapters"]:
            text = "".join(str(o.get("data", {}).get("text/markdown", ""))
                           for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", []))
            assert "What this chapter costs" in text, out.name
