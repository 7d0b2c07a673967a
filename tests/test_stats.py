"""The statistics the chapters' verdicts come from, against scipy and against simulation."""

import numpy as np
import pytest
from scipy import stats

from sslnb.evaluate import (collapse_kind, collapse_tally, compare_conditions, difference_and_interval,
                            difference_verdict, finding_verdict, power_of, seeds_needed)


@pytest.mark.parametrize("a, b", [([63.4, 62.8, 63.5], [58.1, 61.0, 59.9, 60.2]),  # unequal sizes and spreads
                                  ([80.1, 79.0], [79.9, 81.2])])
def test_the_difference_interval_is_welchs(a, b):
    d = difference_and_interval(a, b)
    ref = stats.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    assert d["diff"] == pytest.approx(np.mean(a) - np.mean(b))
    assert (d["ci_low"], d["ci_high"]) == pytest.approx((ref.low, ref.high), rel=1e-10)


def test_the_verdict_reads_the_interval():
    assert difference_verdict(difference_and_interval([70.0, 70.4, 69.8], [60.0, 60.5, 59.7])) == "higher"
    assert difference_verdict(difference_and_interval([60.0, 60.5, 59.7], [70.0, 70.4, 69.8])) == "lower"
    assert difference_verdict(difference_and_interval([70.0, 60.0], [66.0, 64.0])) == "within the noise"
    with pytest.raises(ValueError, match="at least two runs"):
        difference_and_interval([70.0], [60.0, 61.0])


@pytest.mark.parametrize("effect, n", [(0.5, 64), (0.8, 26), (1.0, 17), (2.0, 6)])
def test_seeds_needed_matches_the_published_tables(effect, n):
    """Seeds per condition for 80% power, two-sided 5%, at a difference of ``effect`` standard deviations
    (Cohen's table: 64, 26 and 17 for d = 0.5, 0.8 and 1)."""
    assert seeds_needed(effect * 3.2, 3.2) == n
    assert power_of(n, effect * 3.2, 3.2) >= 0.8 > power_of(n - 1, effect * 3.2, 3.2)


def test_power_is_what_a_simulation_finds():
    """The power of 6 seeds at a difference of 1.5 standard deviations, counted over 4000 simulated
    studies, is the computed one (the binomial noise of 4000 studies is about 0.008)."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(1.5, 1.0, (4000, 6)), rng.normal(0.0, 1.0, (4000, 6))
    found = (stats.ttest_ind(a, b, axis=1).pvalue < 0.05).mean()
    assert found == pytest.approx(power_of(6, 1.5, 1.0), abs=0.025)


def test_the_collapse_tally_counts_each_seed_by_the_runs_rule():
    repeats = [{"eff_rank": 8.0}, {"eff_rank": 9.0}]
    runs = [{"z_std": 0.001, "z_std_ref": 0.06, "eff_rank": 1.0},   # spread gone: complete
            {"z_std": 0.05, "z_std_ref": 0.06, "eff_rank": 3.0},    # spread kept, few directions: partial
            {"z_std": 0.05, "z_std_ref": 0.06, "eff_rank": 8.5}]    # within the baseline's range
    kinds = [collapse_kind(r, repeats) for r in runs]
    assert collapse_tally(kinds) == "2 of 3 seeds collapse (complete 1, partial 1)"
    assert collapse_tally(kinds[2:]) == "0 of 1 seed collapses"


def test_a_comparison_says_its_difference_interval_and_verdict():
    c = compare_conditions([70.0, 70.4, 69.8], [60.0, 60.5, 59.7], "111", "011", theirs=4.56)
    assert c["verdict"] == "higher" and c["diff"] == pytest.approx(10.0, abs=1e-9)
    assert c["text"].startswith("111 against 011: +10.0 points (95% interval +9.")
    assert "beyond the noise" in c["text"] and "+4.56 (one run each), outside our interval" in c["text"]
    c = compare_conditions([70.0, 60.0], [66.0, 64.0], "111", "011", theirs=4.56)
    assert c["verdict"] == "within the noise" and "inside our interval" in c["text"]
    c = compare_conditions([70.0], [66.0, 64.0], "110", "111")
    assert c["verdict"] == "too few seeds" and c["text"] == ("110 against 111: +5.0 points from 1 and 2 seed(s), too "
                                                             "few for an interval, so no verdict.")


def test_seed_dots_draws_every_seed_and_the_interval_of_each_replicated_condition():
    import matplotlib

    matplotlib.use("agg")
    import matplotlib.pyplot as plt

    from sslnb.evaluate import mean_and_interval
    from sslnb.plots import seed_dots

    groups = {"111": [78.1, 79.4, 77.2], "011": [74.0, 77.9], "000": [55.0]}
    fig, ax = plt.subplots()
    seed_dots(ax, groups, theirs={"111": 62.74})
    dots = [y for c in ax.collections[:3] for y in c.get_offsets()[:, 1]]
    assert sorted(dots) == sorted(v for vs in groups.values() for v in vs)
    bars = [c for c in ax.containers]  # one error bar per condition with two seeds or more
    assert len(bars) == 2
    top = bars[0].lines[1][1].get_ydata()[0]  # the upper cap of 111's interval
    assert top == pytest.approx(mean_and_interval(groups["111"])["ci_high"])
    assert ax.collections[-1].get_offsets()[:, 1].tolist() == [62.74]
    plt.close(fig)


@pytest.mark.parametrize("ours, theirs, expected", [
    (([70.0, 70.4, 69.8], [60.0, 60.5, 59.7]), 4.56, "reproduces"),
    (([60.0, 60.5, 59.7], [70.0, 70.4, 69.8]), 4.56, "reversed"),
    (([60.0, 60.5, 59.7], [70.0, 70.4, 69.8]), -3.6, "reproduces"),
    (([70.0, 60.0], [66.0, 64.0]), 4.56, "not shown (within the noise)"),
    (([70.0], [66.0, 64.0]), 4.56, "too few seeds")])
def test_a_finding_of_the_seed_is_judged_by_our_interval(ours, theirs, expected):
    assert finding_verdict(compare_conditions(*ours, "a", "b", theirs=theirs), theirs) == expected
