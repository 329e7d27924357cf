"""Summaries over seeds: mean with a Student-t 95% confidence interval, and medians."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and the t-interval of the mean; the interval is None for one value."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "std": None, "ci95": None, "n": int(len(x))}
    std = float(x.std(ddof=1))
    from scipy import stats  # here, not at the top: it costs a second to import and only this needs it

    half = float(stats.t.ppf((1 + confidence) / 2, df=len(x) - 1)) * std / math.sqrt(len(x))
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": int(len(x))}


def spread(values: Sequence[float]) -> dict:
    """Median and interquartile range, the robust summary used for times on a noisy machine."""
    x = np.asarray(values, dtype=np.float64)
    q1, median, q3 = np.percentile(x, [25, 50, 75])
    return {"median": float(median), "iqr": float(q3 - q1), "min": float(x.min()), "max": float(x.max()),
            "n": int(len(x))}


def format_ci(summary: dict, digits: int = 4) -> str:
    if summary["ci95"] is None:
        return f"{summary['mean']:.{digits}f}"
    half = (summary["ci95"][1] - summary["ci95"][0]) / 2
    return f"{summary['mean']:.{digits}f} ± {half:.{digits}f}"


def difference(a: dict, b: dict, confidence: float = 0.95) -> dict:
    """``a`` minus ``b`` (two ``mean_ci`` summaries over independent seeds): the difference of the
    means, its Welch 95% interval and the two-sided Welch's t-test p-value (unequal variances,
    Welch-Satterthwaite degrees of freedom). ``too_few`` says why there is no interval when either
    side has fewer than 2 seeds; with no spread on either side (identical runs) the interval is
    nothing to test against: no interval and no p-value, and ``too_few`` says so."""
    diff = a["mean"] - b["mean"]
    if a["n"] < 2 or b["n"] < 2:
        return {"difference": diff, "ci95": None, "p_value": None, "df": None,
                "too_few": f"{a['n']} and {b['n']} seeds: an interval and a p-value need 2 or more on each side"}
    va, vb = a["std"] ** 2 / a["n"], b["std"] ** 2 / b["n"]
    if va + vb == 0:
        return {"difference": diff, "ci95": None, "p_value": None, "df": None,
                "too_few": "no spread between seeds on either side: nothing to measure the difference against"}
    from scipy import stats

    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va ** 2 / (a["n"] - 1) + vb ** 2 / (b["n"] - 1))
    half = float(stats.t.ppf((1 + confidence) / 2, df)) * se
    p = float(stats.ttest_ind_from_stats(a["mean"], a["std"], a["n"], b["mean"], b["std"], b["n"],
                                         equal_var=False).pvalue)
    return {"difference": diff, "ci95": [diff - half, diff + half], "p_value": p, "df": df}


def format_difference(d: dict, digits: int = 4) -> str:
    """``+0.0123 [+0.0101, +0.0145] p=0.0002``, or the difference with why it has no interval."""
    if d["ci95"] is None:
        why = "no spread" if d.get("too_few", "").startswith("no spread") else "too few seeds"
        return f"{d['difference']:+.{digits}f} ({why})"
    low, high = d["ci95"]
    p = d["p_value"]
    p_text = f"p={p:.2g}" if p >= 1e-4 else "p<1e-4"
    return f"{d['difference']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}] {p_text}"


# --- comparisons: paired or unpaired, corrected for the family, with a verdict -------------------

EQUIVALENCE_MARGIN = 0.005  # accuracy: a difference smaller than this is "equivalent" if shown so
POWER = 0.8


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> dict:
    """``a`` minus ``b`` seed by seed (the same seeds, shuffles and initial keys on both sides):
    the mean of the differences, its t interval and the paired t-test's two-sided p-value.
    ``sd`` is the differences' standard deviation, what the power of the comparison rests on."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    n, diff = int(len(d)), float(d.mean())
    out = {"test": "paired", "n": n, "difference": diff, "ci95": None, "p_value": None, "df": None, "sd": None}
    if n < 2:
        return {**out, "too_few": f"{n} seed: an interval and a p-value need 2 or more"}
    sd = float(d.std(ddof=1))
    if sd == 0:
        same = "identical on every seed" if diff == 0 else "the same difference on every seed"
        return {**out, "sd": 0.0, "too_few": f"no spread: {same}, so there is no error to test against"}
    from scipy import stats

    se = sd / math.sqrt(n)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * se
    p = float(2 * stats.t.sf(abs(diff) / se, n - 1))
    return {**out, "ci95": [diff - half, diff + half], "p_value": p, "df": n - 1, "sd": sd, "se": se}


def welch_difference(a: dict, b: dict, confidence: float = 0.95) -> dict:
    """``difference`` (Welch's, unpaired), labelled as such, with its standard error."""
    d = difference(a, b, confidence)
    out = {**d, "test": "welch", "n": [a["n"], b["n"]]}
    if d["ci95"] is not None:
        out["se"] = math.sqrt(a["std"] ** 2 / a["n"] + b["std"] ** 2 / b["n"])
    return out


def holm(p_values: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjustment of a family's p-values (None, a comparison without a test, is
    left out of the family and stays None): controls the chance of any false "different" at the
    level the adjusted values are read at."""
    tested = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(tested):
        running = max(running, min(1.0, (len(tested) - rank) * p))
        adjusted[i] = running
    return adjusted


def equivalence_p(d: dict, margin: float = EQUIVALENCE_MARGIN) -> float | None:
    """Two one-sided tests: the p-value that the true difference lies within ±``margin`` (the
    larger of the two one-sided p-values), on the comparison's own standard error and df."""
    if d.get("ci95") is None or not d.get("se"):
        return None
    from scipy import stats

    lower = float(stats.t.sf((d["difference"] + margin) / d["se"], d["df"]))
    upper = float(stats.t.cdf((d["difference"] - margin) / d["se"], d["df"]))
    return max(lower, upper)


def detectable(d: dict, power: float = POWER, alpha: float = 0.05) -> float | None:
    """The smallest true difference this comparison would call different with probability
    ``power`` at level ``alpha`` (two-sided): (t_{1-alpha/2} + t_{power}) x its standard error."""
    if d.get("ci95") is None or not d.get("se"):
        return None
    from scipy import stats

    return float((stats.t.ppf(1 - alpha / 2, d["df"]) + stats.t.ppf(power, d["df"])) * d["se"])


def seeds_for(d: dict, margin: float = EQUIVALENCE_MARGIN, power: float = POWER, alpha: float = 0.05,
              most: int = 1000) -> int | None:
    """About how many seeds (per side) would detect a difference of ``margin`` with ``power``, at
    the spread this comparison saw; None without a spread, ``most`` + 1 for "more than ``most``"."""
    if d.get("ci95") is None or not d.get("se"):
        return None
    from scipy import stats

    n_now = d["n"] if d["test"] == "paired" else min(d["n"])
    sd = d["se"] * math.sqrt(n_now)  # per-seed spread (paired: of the differences; Welch: pooled-ish)
    for n in range(2, most + 1):
        if (stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * sd / math.sqrt(n) <= margin:
            return n
    return most + 1


def verdict(d: dict, adjusted_p: float | None = None, margin: float = EQUIVALENCE_MARGIN,
            alpha: float = 0.05, adjusted_equivalence_p: float | None = None) -> str:
    """better / worse (different at ``alpha``, on the family-adjusted p-value when given), else
    equivalent (within ±``margin`` by two one-sided tests at ``alpha``/2 each, so that exactly when
    the 95% interval shown lies within the margin; family-adjusted when given), else inconclusive."""
    p = adjusted_p if adjusted_p is not None else d.get("p_value")
    if p is None:
        return "untested"
    if p < alpha:
        return "better" if d["difference"] > 0 else "worse"
    tost = adjusted_equivalence_p if adjusted_equivalence_p is not None else equivalence_p(d, margin)
    if tost is not None and tost < alpha / 2:
        return "equivalent"
    return "inconclusive"


def compare_family(differences: Sequence[dict], margin: float = EQUIVALENCE_MARGIN, alpha: float = 0.05
                   ) -> list[dict]:
    """Each comparison of one family with its Holm-adjusted p-values (of the difference and of
    equivalence), verdict, and the smallest difference it detects at 80% power and the seeds that
    would detect a difference of ``margin``, both at the family's Bonferroni level (``alpha`` over the tests), so
    that they speak to the adjusted verdict."""
    adjusted = holm([d.get("p_value") for d in differences])
    equivalence = [equivalence_p(d, margin) for d in differences]
    adjusted_equivalence = holm(equivalence)
    tests = max(1, sum(p is not None for p in adjusted))
    out = []
    for d, p_holm, p_eq, p_eq_holm in zip(differences, adjusted, equivalence, adjusted_equivalence):
        out.append({**d, "p_holm": p_holm, "margin": margin, "family": tests,
                    "verdict": verdict(d, p_holm, margin, alpha, p_eq_holm),
                    "p_equivalence": p_eq, "p_equivalence_holm": p_eq_holm,
                    "detectable": detectable(d, alpha=alpha / tests),
                    "seeds_for_margin": seeds_for(d, margin, alpha=alpha / tests)})
    return out


def format_verdict(d: dict, digits: int = 4) -> str:
    """``worse, p=0.003 (Holm 0.01), paired n=5`` / ``inconclusive (detects 0.0071 at 80% power; ~9 seeds
    would detect ±0.005), Welch n=3+3``."""
    n = d["n"] if d["test"] == "paired" else "+".join(map(str, d["n"]))
    test = f"{'paired' if d['test'] == 'paired' else 'Welch'} n={n}"
    if d["verdict"] == "untested":
        return f"untested ({d.get('too_few', 'no interval')}), {test}"
    p_text = _p(d["p_value"]) + (f" (Holm {_p(d['p_holm'])[2:]})" if d.get("p_holm") is not None else "")
    if d["verdict"] in ("better", "worse"):
        return f"{d['verdict']}, {p_text}, {test}"
    if d["verdict"] == "equivalent":
        return f"equivalent within ±{d['margin']:g} (TOST Holm {_p(d['p_equivalence_holm'])}), {test}"
    seeds = d.get("seeds_for_margin")
    settle = "" if seeds is None else (f"; ~{seeds} seeds would detect ±{d['margin']:g}" if seeds <= 1000
                                        else f"; over 1000 seeds to detect ±{d['margin']:g}")
    return f"inconclusive, {p_text} (detects {d['detectable']:.{digits}f} at 80% power{settle}), {test}"


def _p(p: float) -> str:
    return f"p={p:.2g}" if p >= 1e-4 else "p<1e-4"
