"""Agreement of attributions with gold feature labels (METHODS §5.5, supporting-fact recovery).

All functions take ``scores`` (n,) (higher = more important) and ``labels`` (n,) bool
(True = gold feature, e.g. a HotpotQA supporting fact). Rankings sort by descending score.

Ties (TIES = "expected"): tied features are in no order, so every metric is its expectation
over the orders of the tied features, each equally likely (random tie-breaking), as AUROC
counts a tie one half; a feature's position in the text never decides. All-equal scores thus
score as a random ranking (AUROC 1/2, precision at k = |G|/n).

One class only (no gold feature, or every feature gold): nothing separates a good ranking
from a bad one, so every metric is NaN (undefined; aggregates leave it out and show how many
items they used).

    auroc            P(score of a random gold > score of a random non-gold), ties count 1/2
    precision_at_k   E|top-k ∩ G| / k          (k = |G|: R-precision)
    recall_at_k      E|top-k ∩ G| / |G|
    top_k_exact_match P(the top-k set equals G)
    mrr              E[1 / rank of the first gold feature]
"""

from __future__ import annotations

from collections.abc import Sequence
from math import comb

import numpy as np

from ..errors import InputError

#: how tied scores are ranked (recorded with each evaluation)
TIES = "expected"

_NAN = float("nan")


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


def one_class(labels: Sequence[bool]) -> str | None:
    """"no gold features" / "every feature gold" when the labels hold one class, else None."""
    g = np.asarray(labels, dtype=bool).reshape(-1)
    if not g.any():
        return "no gold features"
    if g.all():
        return "every feature gold"
    return None


def ranking(scores: Sequence[float]) -> np.ndarray:
    """Feature indices by descending score (stable: ties in feature order; the metrics below
    do not depend on this order within ties)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def _tie_groups(s: np.ndarray, g: np.ndarray) -> list[tuple[int, int]]:
    """(size, gold count) of each group of equal scores, by descending score."""
    values, inv = np.unique(-s, return_inverse=True)  # ascending -s = descending s
    size = np.bincount(inv, minlength=len(values))
    gold = np.bincount(inv, weights=g.astype(np.float64), minlength=len(values))
    return [(int(a), int(b)) for a, b in zip(size, gold)]


def _expected_hits(s: np.ndarray, g: np.ndarray, k: int) -> float:
    """E|top-k ∩ G| under random tie-breaking: the group cut by k contributes its gold share
    of the places it gets."""
    hits, taken = 0.0, 0
    for size, gold in _tie_groups(s, g):
        if taken >= k:
            break
        r = min(size, k - taken)
        hits += r * gold / size
        taken += r
    return hits


def auroc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Area under the ROC curve of ``scores`` against ``labels`` (scikit-learn's
    ``roc_auc_score``; ties count one half). NaN when only one class is present."""
    s, g = _check(scores, labels)
    if one_class(g):
        return _NAN
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(g, s))


def precision_at_k(scores: Sequence[float], labels: Sequence[bool], k: int | None = None) -> float:
    """Expected fraction of the top-k features that are gold; k defaults to |G|
    (R-precision). NaN when only one class is present."""
    s, g = _check(scores, labels)
    if one_class(g):
        return _NAN
    k = int(g.sum()) if k is None else int(k)
    if k <= 0:
        return _NAN
    k = min(k, s.size)
    return float(_expected_hits(s, g, k) / k)


def recall_at_k(scores: Sequence[float], labels: Sequence[bool], k: int) -> float:
    """Expected fraction of the gold features found among the top-k (NaN when only one
    class is present)."""
    s, g = _check(scores, labels)
    if one_class(g):
        return _NAN
    return float(_expected_hits(s, g, max(0, int(k))) / int(g.sum()))


def top_k_exact_match(scores: Sequence[float], labels: Sequence[bool], k: int | None = None) -> float:
    """Probability that the set of the top-k features equals the gold set (k defaults to
    |G|); NaN when only one class is present."""
    s, g = _check(scores, labels)
    if one_class(g):
        return _NAN
    k = int(g.sum()) if k is None else int(k)
    if k != int(g.sum()):
        return 0.0
    taken = 0
    for size, gold in _tie_groups(s, g):
        if taken >= k:
            return 1.0 if gold == 0 else 0.0
        r = min(size, k - taken)
        if r == size:
            if gold != size:  # a whole group inside the top-k holds a non-gold feature
                return 0.0
        else:  # the group cut by k: its r places must take exactly its gold features
            return 1.0 / comb(size, r) if gold == r else 0.0
        taken += r
    return 1.0


def mrr(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """Expected reciprocal rank of the best-ranked gold feature (NaN when only one class is
    present). In the first group of tied scores holding gold features (size m, c gold, a
    features above it) the first gold is its j-th with probability C(m-j, c-1) / C(m, c)."""
    s, g = _check(scores, labels)
    if one_class(g):
        return _NAN
    above = 0
    for size, gold in _tie_groups(s, g):
        if gold:
            total = comb(size, gold)
            return float(sum(comb(size - j, gold - 1) / total / (above + j)
                             for j in range(1, size - gold + 2)))
        above += size
    return _NAN  # unreachable: some group holds the gold features


def supporting_fact_metrics(scores: Sequence[float], gold: Sequence[int], n: int | None = None) -> dict[str, float]:
    """The §5.5 metrics for one example: gold = indices of the supporting features.

    Returns auroc, precision_at_g (R-precision), recall_at_2, recall_at_5, top2_em (top-2
    set equals G) and mrr: each NaN when the example has no gold feature or only gold ones.
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
