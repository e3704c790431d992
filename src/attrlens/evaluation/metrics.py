"""Agreement of attributions with gold feature labels (METHODS §5.5, supporting-fact recovery).

All functions take ``scores`` (n,) (higher = more important) and ``labels`` (n,) bool
(True = gold feature, e.g. a HotpotQA supporting fact). Rankings sort by descending score;
ties keep feature order (a stable sort), so results are deterministic.

    auroc            P(score of a random gold > score of a random non-gold), ties count 1/2
    precision_at_k   |top-k ∩ G| / k          (k = |G|: R-precision)
    recall_at_k      |top-k ∩ G| / |G|
    top_k_exact_match 1 if the top-k set equals G
    mrr              1 / rank of the first gold feature
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..errors import InputError


def _check(scores: Sequence[float], labels: Sequence[bool]) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    g = np.asarray(labels).reshape(-1)
    if s.shape != g.shape:
        raise InputError(f"scores has {s.size} entries but labels has {g.size}; they must match.")
    if s.size == 0:
        raise InputError("scores and labels are empty.")
    if not np.all(np.isfinite(s)):
        raise InputError("scores contain NaN or inf.")
    return s, g.astype(bool)


def ranking(scores: Sequence[float]) -> np.ndarray:
    """Feature indices by descending score (stable: ties in feature order)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` against ``labels`` (scikit-learn's
    ``roc_auc_score``; ties count one half).

    0.5 when only one class is present (the gSMILE reference's convention).
    """
    s, g = _check(scores, labels)
    if g.all() or not g.any():
        return 0.5
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(g, s))


def precision_at_k(scores: Sequence[float], labels: Sequence[bool], k: int | None = None) -> float:
    """Fraction of the top-k features that are gold; k defaults to |G| (R-precision)."""
    s, g = _check(scores, labels)
    k = int(g.sum()) if k is None else int(k)
    if k <= 0:
        return float("nan")
    k = min(k, s.size)
    return float(g[ranking(s)[:k]].sum() / k)


def recall_at_k(scores: Sequence[float], labels: Sequence[bool], k: int) -> float:
    """Fraction of the gold features found among the top-k (NaN without gold features)."""
    s, g = _check(scores, labels)
    n_pos = int(g.sum())
    if n_pos == 0:
        return float("nan")
    return float(g[ranking(s)[: max(0, int(k))]].sum() / n_pos)


def top_k_exact_match(scores: Sequence[float], labels: Sequence[bool], k: int | None = None) -> float:
    """1.0 if the set of the top-k features equals the gold set, else 0.0 (k defaults to |G|)."""
    s, g = _check(scores, labels)
    k = int(g.sum()) if k is None else int(k)
    top = set(ranking(s)[:k].tolist())
    return float(top == set(np.flatnonzero(g).tolist()))


def mrr(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Reciprocal rank of the best-ranked gold feature (0 without gold features)."""
    s, g = _check(scores, labels)
    hits = np.flatnonzero(g[ranking(s)])
    return float(1.0 / (hits[0] + 1)) if hits.size else 0.0


def supporting_fact_metrics(scores: Sequence[float], gold: Sequence[int], n: int | None = None) -> dict[str, float]:
    """The §5.5 metrics for one example: gold = indices of the supporting features.

    Returns auroc, precision_at_g (R-precision), recall_at_2, recall_at_5, top2_em (top-2
    set equals G) and mrr.
    """
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    n = s.size if n is None else int(n)
    if n != s.size:
        raise InputError(f"{s.size} scores given for {n} features.")
    labels = np.zeros(n, dtype=bool)
    idx = np.asarray(list(gold), dtype=np.int64)
    if idx.size and (idx.min() < 0 or idx.max() >= n):
        raise InputError(f"Gold indices {idx.tolist()} are outside [0, {n}).")
    labels[idx] = True
    return {
        "auroc": auroc(s, labels),
        "precision_at_g": precision_at_k(s, labels),
        "recall_at_2": recall_at_k(s, labels, 2),
        "recall_at_5": recall_at_k(s, labels, 5),
        "top2_em": top_k_exact_match(s, labels, 2),
        "mrr": mrr(s, labels),
    }


def bootstrap_ci(
    values: Sequence[float], *, n_boot: int = 1000, level: float = 0.95, seed: int = 0
) -> tuple[float, float, float]:
    """(mean, low, high): the mean and a percentile bootstrap CI over examples (NaNs dropped)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(v.mean()), float(lo), float(hi)
