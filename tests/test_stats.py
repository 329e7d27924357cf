"""The statistics of comparisons, held to scipy's own tests and to what their definitions say."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from bnbench.record import stats

A = [0.8712, 0.8694, 0.8731, 0.8688, 0.8705]
B = [0.8690, 0.8679, 0.8702, 0.8681, 0.8699]


def test_paired_difference_is_scipys_paired_t_test():
    d = stats.paired_difference(A, B)
    ref = sp.ttest_rel(A, B)
    assert d["test"] == "paired" and d["n"] == 5 and d["df"] == 4
    assert d["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    low, high = ref.confidence_interval(0.95)
    assert d["ci95"] == pytest.approx([low, high], rel=1e-12)
    assert d["difference"] == pytest.approx(np.mean(np.subtract(A, B)), rel=1e-12)


def test_pairing_uses_the_seed_wise_correlation_welch_does_not():
    shared = np.array([0.0, 0.004, -0.003, 0.006, -0.002])  # what a seed does to both variants
    a, b = 0.87 + shared + [0.0005, -0.0003, 0.0002, 0.0001, -0.0004], 0.868 + shared
    paired = stats.paired_difference(a, b)
    welch = stats.welch_difference(stats.mean_ci(a), stats.mean_ci(b))
    assert welch["test"] == "welch" and welch["n"] == [5, 5]
    assert welch["p_value"] == pytest.approx(sp.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    assert paired["p_value"] < 1e-3 < welch["p_value"]  # the shared part cancels only when paired


def test_too_few_or_no_spread_has_no_test():
    assert stats.paired_difference([0.8], [0.7])["too_few"].startswith("1 seed")
    same = stats.paired_difference([0.8, 0.81], [0.7, 0.71])
    assert same["ci95"] is None and same["too_few"].startswith("no spread")
    assert stats.verdict(same) == "untested"


def test_holm_steps_down_and_keeps_order():
    p = [0.01, 0.04, None, 0.03, 0.005]
    # sorted: 0.005 x4 = 0.02, 0.01 x3 = 0.03, 0.03 x2 = 0.06, 0.04 x1 = 0.04 -> running max 0.06
    assert stats.holm(p) == pytest.approx([0.03, 0.06, None, 0.06, 0.02])
    assert stats.holm([0.5, 0.9]) == [1.0, 1.0]
    assert stats.holm([]) == []


def test_equivalence_is_two_one_sided_tests_on_the_comparisons_error():
    d = stats.paired_difference(A, B)
    margin = 0.005
    t_low = (d["difference"] + margin) / d["se"]
    t_high = (d["difference"] - margin) / d["se"]
    expected = max(sp.t.sf(t_low, 4), sp.t.cdf(t_high, 4))
    assert stats.equivalence_p(d, margin) == pytest.approx(expected, rel=1e-12)
    # Equivalent at 5% exactly when the 90% interval lies within the margin.
    low, high = sp.ttest_rel(A, B).confidence_interval(0.90)
    assert (stats.equivalence_p(d, margin) < 0.05) == (-margin < low and high < margin)


@pytest.mark.parametrize("shift, expected", [(0.0, "equivalent"), (0.02, "better"), (-0.02, "worse")])
def test_verdicts(shift, expected):
    rng = np.random.default_rng(0)
    base = 0.87 + rng.normal(0, 0.003, 10)
    other = base + shift + rng.normal(0, 0.0005, 10)
    assert stats.verdict(stats.paired_difference(other, base)) == expected


def test_inconclusive_says_what_would_settle_it():
    noisy = stats.paired_difference([0.870, 0.862, 0.875], [0.866, 0.869, 0.868])
    [d] = stats.compare_family([noisy])
    assert d["verdict"] == "inconclusive"
    # The detectable difference is (t_.975 + t_.8) x se, and more seeds would bring it to the margin.
    assert d["detectable"] == pytest.approx((sp.t.ppf(0.975, 2) + sp.t.ppf(0.8, 2)) * noisy["se"])
    n = d["seeds_for_margin"]
    sd = noisy["sd"]
    assert (sp.t.ppf(0.975, n - 1) + sp.t.ppf(0.8, n - 1)) * sd / math.sqrt(n) <= 0.005
    assert (sp.t.ppf(0.975, n - 2) + sp.t.ppf(0.8, n - 2)) * sd / math.sqrt(n - 1) > 0.005
    text = stats.format_verdict(d)
    assert text.startswith("inconclusive, p=") and f"~{n} seeds would detect ±0.005" in text and "paired n=3" in text


def test_the_family_adjustment_decides_the_verdict():
    strong = stats.paired_difference([0.880, 0.879, 0.882, 0.881], [0.870, 0.871, 0.871, 0.872])
    weak = stats.paired_difference([0.8745, 0.8725, 0.8760, 0.8738], [0.870, 0.871, 0.871, 0.869])
    alone = stats.compare_family([weak])[0]
    family = stats.compare_family([strong, weak, weak, weak, weak])
    assert alone["p_holm"] == pytest.approx(weak["p_value"]) and weak["p_value"] < 0.05
    assert family[1]["p_holm"] == pytest.approx(4 * weak["p_value"]) and family[1]["p_holm"] > 0.05
    assert (alone["verdict"], family[0]["verdict"], family[1]["verdict"]) == ("better", "better", "inconclusive")


def test_equivalent_only_where_the_95_interval_lies_within_the_margin_after_holm():
    rng = np.random.default_rng(1)
    for _ in range(50):
        base = 0.87 + rng.normal(0, 0.003, 5)
        d = stats.paired_difference(base + rng.normal(0.001, 0.002, 5), base)
        [alone] = stats.compare_family([d])
        low, high = d["ci95"]
        if alone["verdict"] == "equivalent":
            assert -0.005 < low and high < 0.005
        elif alone["verdict"] == "inconclusive":
            assert low <= -0.005 or high >= 0.005 or low <= 0 <= high
    d = stats.paired_difference([0.8702, 0.8711, 0.8698, 0.8705], [0.8700, 0.8709, 0.8700, 0.8703])
    [alone] = stats.compare_family([d])
    assert alone["verdict"] == "equivalent"
    family = stats.compare_family([d] * 20)  # the same evidence among 20 tests: not enough alone
    assert family[0]["p_equivalence_holm"] == pytest.approx(min(1, 20 * alone["p_equivalence"]))
    assert family[0]["detectable"] > alone["detectable"] and family[0]["family"] == 20


def test_no_spread_says_whether_the_seeds_agree_or_differ_alike():
    assert "identical on every seed" in stats.paired_difference([0.8, 0.81], [0.8, 0.81])["too_few"]
    assert "the same difference on every seed" in stats.paired_difference([0.8, 0.81], [0.79, 0.80])["too_few"]
