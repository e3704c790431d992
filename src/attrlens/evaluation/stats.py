"""Aggregates over items: bootstrap 95% CIs (from :mod:`.metrics`) and paired tests.

``paired_test(a, b)`` compares two methods on the same items (NaN pairs dropped) with the
two-sided Wilcoxon signed-rank test (METHODS.md §5.8); with fewer than 2 non-zero
differences the p-value is 1.0 (no evidence of a difference).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError
from .metrics import bootstrap_ci

__all__ = ["bootstrap_ci", "paired_test", "summarize"]


def summarize(values: Sequence[float], *, n_boot: int = 1000, seed: int = 0) -> dict[str, float]:
    """{"mean", "ci_low", "ci_high", "n"} of the finite values (95% percentile bootstrap)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    n = int(np.isfinite(v).sum())
    mean, lo, hi = bootstrap_ci(v, n_boot=n_boot, seed=seed)
    return {"mean": mean, "ci_low": lo, "ci_high": hi, "n": n}


def paired_test(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Wilcoxon signed-rank test of a vs b on paired items.

    Returns {"n": pairs used, "mean_diff": mean(a - b), "p": two-sided p-value}.
    """
    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise InputError(f"Paired samples differ in length ({x.size} vs {y.size}).")
    ok = np.isfinite(x) & np.isfinite(y)
    d = x[ok] - y[ok]
    if d.size == 0:
        return {"n": 0, "mean_diff": float("nan"), "p": float("nan")}
    if int(np.count_nonzero(d)) < 2:
        return {"n": int(d.size), "mean_diff": float(d.mean()), "p": 1.0}
    from scipy.stats import wilcoxon

    p = float(wilcoxon(d).pvalue)
    return {"n": int(d.size), "mean_diff": float(d.mean()), "p": p}
