"""Word Mover's Distance (exact) and its relaxed lower bound RWMD (kernels: solvers.kernels).

Documents are bags of vectors: ``doc`` is ``(n_tokens, d)`` with non-negative token weights
(nBOW; uniform by default, normalised to sum 1). The ground cost is the cosine distance
``1 - cos(a, b)`` (RoPE-LIME, METHODS §1(b) step 4) or the Euclidean distance (Kusner et al.
2015; gensim's ``wmdistance``, gSMILE).

RWMD (Kusner et al. 2015): ``l1 = sum_a w_a min_b c(a, b)``, ``l2 = sum_b w_b min_a c(a, b)``,
``RWMD = max(l1, l2) <= WMD``. Each side drops one marginal constraint of the transport
problem, so each is a lower bound of WMD.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from attrlens.errors import InputError, ParameterError
from attrlens.params import check_param

__all__ = ["pairwise_cost", "rwmd", "rwmd_many", "wmd"]

_METRICS = ("cosine", "euclidean")


def pairwise_cost(doc_a: Any, doc_b: Any | None = None, *, metric: str = "cosine") -> np.ndarray:
    """Ground-cost matrix ``(n_a, n_b)`` between the rows of two documents (float64).

    ``cosine``: ``1 - cos``, clamped to [0, 2] (a zero vector has cosine 0 with anything);
    ``euclidean``: ``||a - b||_2``. With ``doc_b=None`` the diagonal is exactly 0.
    """
    check_param("pairwise_cost", "metric", metric, choices=_METRICS)
    a = _as_doc(doc_a, "doc_a")
    b = a if doc_b is None else _as_doc(doc_b, "doc_b")
    if a.shape[1] != b.shape[1]:
        raise InputError(
            f"Both documents need the same embedding size; got {a.shape[1]} and {b.shape[1]}."
        )
    if metric == "cosine":
        na = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
        nb = (
            na if doc_b is None else b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
        )
        cost = np.clip(1.0 - na @ nb.T, 0.0, 2.0)
    else:
        from scipy.spatial.distance import cdist

        # cdist sums squared differences directly: the |a|^2 + |b|^2 - 2ab expansion
        # loses ~1e-8 to cancellation for near-identical vectors.
        cost = cdist(a, b, metric="euclidean")
    if doc_b is None:
        np.fill_diagonal(cost, 0.0)
    return cost


def rwmd(
    doc_a: Any,
    doc_b: Any,
    *,
    weights_a: Any = None,
    weights_b: Any = None,
    metric: str = "cosine",
) -> float:
    """Relaxed WMD ``max(l1, l2)`` between two documents (Kusner et al. 2015).

    Args:
        doc_a, doc_b: ``(n_a, d)`` and ``(n_b, d)`` token vectors.
        weights_a, weights_b: non-negative token weights (normalised here); uniform if None.
        metric: ``"cosine"`` or ``"euclidean"`` ground cost.
    """
    check_param("rwmd", "metric", metric, choices=_METRICS)
    cost = pairwise_cost(doc_a, doc_b, metric=metric)
    wa = _weights(weights_a, cost.shape[0], "weights_a")
    wb = _weights(weights_b, cost.shape[1], "weights_b")
    l1 = float(wa @ cost.min(axis=1))
    l2 = float(wb @ cost.min(axis=0))
    return max(l1, l2)


def wmd(
    doc_a: Any,
    doc_b: Any,
    *,
    weights_a: Any = None,
    weights_b: Any = None,
    metric: str = "cosine",
) -> float:
    """Exact Word Mover's Distance (EMD over token vectors) via POT's ``ot.emd2``.

    Same arguments as :func:`rwmd`; ``metric="euclidean"`` with uniform weights over the
    words is gensim's ``wmdistance`` (used by gSMILE), up to gensim's word dedup.
    """
    import ot as pot

    check_param("wmd", "metric", metric, choices=_METRICS)
    cost = pairwise_cost(doc_a, doc_b, metric=metric)
    wa = _weights(weights_a, cost.shape[0], "weights_a")
    wb = _weights(weights_b, cost.shape[1], "weights_b")
    return float(pot.emd2(wa, wb, cost, numItermax=max(100_000, 20 * cost.size)))


def rwmd_many(
    doc0: Any,
    docs: Sequence[Any] | None = None,
    *,
    keep_masks: Any = None,
    weights0: Any = None,
    metric: str = "cosine",
) -> np.ndarray:
    """RWMD between ``doc0`` and many documents, shape ``(n_docs,)``.

    Give exactly one of:
        docs: a sequence of ``(n_i, d)`` documents (uniform weights), compared one by one.
        keep_masks: bool ``(S, n0)`` over ``doc0``'s rows; document ``s`` is
            ``doc0[keep_masks[s]]`` with the weights ``weights0`` restricted to the kept rows
            and renormalised. This is the RoPE-LIME case (``D_z`` = the kept tokens of
            ``D_0`` at their original positions); the ``(n0, n0)`` cost matrix is built once
            and every sample is a masked row/column minimum, vectorised over samples.

    Raises InputError if a keep mask keeps no row (the RWMD of an empty document is
    undefined; drop such masks or give them weight 0 yourself).
    """
    check_param("rwmd_many", "metric", metric, choices=_METRICS)
    if (docs is None) == (keep_masks is None):
        raise ParameterError(
            "rwmd_many needs exactly one of 'docs' (a list of documents) or 'keep_masks' "
            "(a bool (n_samples, n0) array over doc0's rows)."
        )
    if docs is not None:
        return np.array(
            [rwmd(doc0, d, weights_a=weights0, metric=metric) for d in docs], dtype=float
        )
    cost = pairwise_cost(doc0, metric=metric)
    n0 = cost.shape[0]
    w0 = _weights(weights0, n0, "weights0")
    keep = np.asarray(keep_masks)
    if keep.ndim == 1:
        keep = keep[None, :]
    if keep.ndim != 2 or keep.shape[1] != n0:
        raise InputError(
            f"keep_masks must be (n_samples, {n0}) over doc0's rows; got shape {keep.shape}."
        )
    keep = keep.astype(bool)
    kept_mass = keep.astype(float) @ w0
    if bool((kept_mass <= 0).any()):
        bad = int(np.flatnonzero(kept_mass <= 0)[0])
        raise InputError(
            f"keep_masks row {bad} keeps no token with positive weight; the RWMD to an "
            f"empty document is undefined. Remove empty masks before calling rwmd_many."
        )
    # l2: every kept token b is in doc0, so min_a c(a, b) is the column minimum of the full
    # cost matrix (0 for a metric cost, kept general for safety).
    col_min = cost.min(axis=0)
    l2 = (keep * (w0 * col_min)[None, :]).sum(axis=1) / kept_mass
    l1 = w0 @ _masked_row_min(cost, keep).T
    return np.maximum(l1, l2)


def _masked_row_min(cost: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """``out[s, a] = min_{b: keep[s, b]} cost[a, b]``, shape ``(S, n0)``.

    Rows are sorted once; for each (sample, row) pair we walk the row's neighbours from
    nearest to farthest until one is kept. All pairs advance together, one vectorised step
    per rank, so the work is the sum of the ranks of the first kept neighbour (1 for every
    kept row when the diagonal is the row minimum).
    """
    order = np.argsort(cost, axis=1, kind="stable")
    sorted_cost = np.take_along_axis(cost, order, axis=1)
    n_s, n0 = keep.shape
    out = np.empty((n_s, n0))
    s_idx, a_idx = np.divmod(np.arange(n_s * n0), n0)
    for rank in range(n0):
        cand = order[a_idx, rank]
        hit = keep[s_idx, cand]
        out[s_idx[hit], a_idx[hit]] = sorted_cost[a_idx[hit], rank]
        s_idx, a_idx = s_idx[~hit], a_idx[~hit]
        if s_idx.size == 0:
            break
    return out


def _as_doc(x: Any, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=float)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise InputError(
            f"'{name}' must be a non-empty (n_tokens, d) array of vectors; got shape {arr.shape}."
        )
    if not bool(np.isfinite(arr).all()):
        raise InputError(f"'{name}' contains NaN or infinite values.")
    return arr


def _weights(w: Any, n: int, name: str) -> np.ndarray:
    if w is None:
        return np.full(n, 1.0 / n)
    arr = np.asarray(w, dtype=float)
    if arr.shape != (n,):
        raise InputError(f"'{name}' must have shape ({n},); got {arr.shape}.")
    if not bool(np.isfinite(arr).all()) or bool((arr < 0).any()) or arr.sum() <= 0:
        raise InputError(f"'{name}' must be finite, non-negative and not all zero.")
    return arr / arr.sum()
