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
