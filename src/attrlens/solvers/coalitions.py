"""Coalition samplers of the game-theoretic and spectral methods (masks: True = kept).

* :func:`all_masks`          every coalition of n features once, in binary order
* :func:`uniform_masks`      distinct uniform draws from {0,1}^n (Banzhaf, Faith-Banzhaf,
                             ProxySPEX); all 2^n coalitions when the count covers them
* :func:`kernel_shap_design` KernelSHAP's paired Shapley-kernel design with complete
                             enumeration of the sizes the budget covers (as ``shap`` does)

The other samplers (leave-one-out, LIME, Sparse-K, Bernoulli) live in
:mod:`attrlens.solvers.sampling`.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from attrlens.params import check_param

__all__ = ["all_masks", "kernel_shap_design", "uniform_masks"]

# 2^n above this many coalitions is never enumerated
_MAX_ENUM_FEATURES = 30


def all_masks(n: int) -> np.ndarray:
    """(2^n, n) bool: row r keeps feature i iff bit i of r is set (binary order)."""
    check_param("all_masks", "n", n, kind=int, low=0, high=_MAX_ENUM_FEATURES)
    idx = np.arange(2**n, dtype=np.int64)
    return ((idx[:, None] >> np.arange(n)) & 1).astype(bool)


def n_coalitions(n: int) -> int | None:
    """2^n, or None when n is too large to ever enumerate."""
    return 2**n if n <= _MAX_ENUM_FEATURES else None


def uniform_masks(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(m, n) distinct masks drawn uniformly from {0,1}^n, m = min(count, 2^n).

    When ``count >= 2^n`` every coalition is returned once (binary order, see
    :func:`all_masks`), so small games are solved exactly; otherwise rows are distinct
    uniform draws (repeats rejected).
    """
    check_param("uniform_masks", "count", count, kind=int, low=0)
    total = n_coalitions(n)
    if total is not None and count >= total:
        return all_masks(n)
    out = np.empty((0, n), dtype=bool)
    seen: set[bytes] = set()
    for _ in range(100):
        if len(out) >= count:
            break
        cand = rng.random((2 * (count - len(out)) + 8, n)) < 0.5
        fresh = []
        for row in cand:
            key = np.packbits(row).tobytes()
            if key not in seen:
                seen.add(key)
                fresh.append(row)
                if len(out) + len(fresh) >= count:
                    break
        if fresh:
            out = np.vstack([out, np.asarray(fresh, dtype=bool)])
    return out


def _kernel_size_mass(n: int) -> np.ndarray:
    """Shapley-kernel mass of each coalition size s = 1..n-1 (normalised): ∝ (n-1)/(s(n-s))."""
    s = np.arange(1, n)
    w = (n - 1) / (s * (n - s))
    return w / w.sum()


def kernel_shap_design(
    n: int, n_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(masks (m, n), weights (m,)) for KernelSHAP, excluding the empty and full coalitions.

    Sizes are taken in pairs (s, n-s) from the outside in; a pair is enumerated completely
    when the budget left covers it at its kernel mass, and the rest of the budget is filled
    with paired random samples from the remaining sizes (duplicate draws add weight). The
    weights of each part sum to its kernel mass, so the full design's weights sum to one.
    At most ``n_samples`` distinct masks.
    """
    mass = _kernel_size_mass(n)  # index s-1
    masks: list[np.ndarray] = []
    weights: list[float] = []
    left = n_samples
    remaining = mass.copy()
    for s in range(1, n // 2 + 1):  # sizes 1..floor(n/2) with their complements
        paired = s != n - s
        count = math.comb(n, s) * (2 if paired else 1)
        # the remaining kernel mass is spread over the remaining sizes; enumerate this pair
        # only if the budget share it would get covers every coalition of it
        pair_mass = remaining[s - 1] + (remaining[n - s - 1] if paired else 0.0)
        total_left = remaining.sum()
        if total_left <= 0 or left * pair_mass / total_left < count - 1e-9 or count > left:
            break
        for size in (s, n - s) if paired else (s,):
            w_each = mass[size - 1] / math.comb(n, size)
            for comb in itertools.combinations(range(n), size):
                row = np.zeros(n, dtype=bool)
                row[list(comb)] = True
                masks.append(row)
                weights.append(w_each)
            remaining[size - 1] = 0.0
        left -= count
    if left > 0 and remaining.sum() > 0:
        # paired random sampling over the sizes not enumerated
        p = remaining / remaining.sum()
        counts: dict[bytes, tuple[np.ndarray, list[float]]] = {}
        tries = 0
        max_tries = 50 * left + 100
        while len(counts) < left and tries < max_tries:
            tries += 1
            size = int(rng.choice(np.arange(1, n), p=p))
            row = np.zeros(n, dtype=bool)
            row[rng.choice(n, size=size, replace=False)] = True
            for r in (row, ~row):
                key = np.packbits(r).tobytes()
                if key in counts:
                    counts[key][1][0] += 1.0
                elif len(counts) < left:
                    counts[key] = (r, [1.0])
        if counts:
            total = sum(c[0] for _, c in counts.values())
            scale = remaining.sum() / total
            for r, c in counts.values():
                masks.append(r)
                weights.append(c[0] * scale)
    if not masks:
        return np.zeros((0, n), dtype=bool), np.zeros(0)
    return np.asarray(masks, dtype=bool), np.asarray(weights, dtype=float)
