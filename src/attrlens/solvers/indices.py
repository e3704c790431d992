"""Conversions between sparse Fourier, Moebius and interaction-index representations.

All functions work on sparse dictionaries {sorted tuple of feature indices: value}; ``()``
is the empty set.  Conventions (METHODS.md §0 and §3 Step 4):

  * Fourier:  v(z) = sum_k F(k) (-1)^<z,k>
  * Moebius (presence basis):  v(z) = sum_{S subset supp(z)} a(S)
  * a(S) = (-2)^|S| sum_{k superset S} F(k);   F(k) = (-1)^|k| sum_{S superset k} a(S) / 2^|S|
  * Shapley  phi_i = -2 sum_{k contains i, |k| odd} F(k) / |k|;   Banzhaf  beta_i = -2 F({i})
  * SII, BII, STII, FSII, FBII from the Moebius coefficients (Grabisch et al. 2000;
    Sundararajan et al. 2020; Tsai et al. 2023, "Faith-Shap", eqs. 13 and 16), as
    spectralexplain's ``utils.py`` computes them.
  * k-SII (Bordt & von Luxburg 2023, "n-Shapley values"; shapiq's default SPEX index): the
    SII aggregated with Bernoulli numbers, Phi_k(S) = sum_{R superset S, |R| <= k}
    B_{|R|-|S|} SII(R) for 1 <= |S| <= k, and Phi_k(()) = v(0) = a(()).  Order 1 gives the
    Shapley values, order n the Moebius transform; sum_{S != ()} Phi_k(S) = v(1) - v(0).

This module is the one place for Moebius/Fourier helpers: the index conversions, the
presence-basis design matrix, first-order values of a Moebius dictionary and the
``interactions`` field {index, order, terms} the explainers return.

The cost is sum over keys of 2^|k| (all subsets of every key), which is small for the
low-degree spectra SPEX and ProxySPEX return (|k| <= t).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Iterator
from fractions import Fraction
from typing import Any, Literal

import numpy as np

from attrlens.errors import InputError, ParameterError, unknown_name_message
from attrlens.params import check_param

Coeffs = dict[tuple[int, ...], float]

INDEX_NAMES = ("fourier", "mobius", "sii", "bii", "ksii", "stii", "fsii", "fbii")
#: indices an explainer's result can be given in (INDEX_NAMES plus the first-order values)
INDICES = ("fourier", "mobius", "shapley", "banzhaf", "sii", "bii", "ksii", "fsii", "fbii",
           "stii")
#: indices defined "of order l" (their values depend on l); the others are only truncated
ORDERED_INDICES = ("ksii", "fsii", "fbii", "stii")
DEFAULT_ORDER = 2


def _subsets(key: tuple[int, ...], max_size: int | None = None) -> Iterator[tuple[int, ...]]:
    top = len(key) if max_size is None else min(max_size, len(key))
    for r in range(top + 1):
        yield from itertools.combinations(key, r)


def _add(out: Coeffs, key: tuple[int, ...], value: float) -> None:
    out[key] = out.get(key, 0.0) + value


def _prune(d: Coeffs, tol: float) -> Coeffs:
    return {k: v for k, v in d.items() if abs(v) > tol}


def _check_keys(coeffs: Coeffs, what: str) -> None:
    for k in coeffs:
        if not isinstance(k, tuple) or list(k) != sorted(set(k)):
            raise InputError(
                f"{what} keys must be sorted tuples of distinct feature indices, e.g. (0, 3); "
                f"got {k!r}."
            )


def fourier_to_mobius(coeffs: Coeffs, *, tol: float = 1e-12) -> Coeffs:
    """Moebius coefficients a(S) = (-2)^|S| sum_{k superset S} F(k); entries with |a| <= tol dropped."""
    _check_keys(coeffs, "Fourier")
    out: Coeffs = {}
    for k, f in coeffs.items():
        for s in _subsets(k):
            _add(out, s, float(f))
    return _prune({s: v * (-2.0) ** len(s) for s, v in out.items()}, tol)


def mobius_to_fourier(mobius: Coeffs, *, tol: float = 1e-12) -> Coeffs:
    """Fourier coefficients F(k) = (-1)^|k| sum_{S superset k} a(S) / 2^|S|."""
    _check_keys(mobius, "Moebius")
    out: Coeffs = {}
    for s, a in mobius.items():
        scaled = float(a) / 2.0 ** len(s)
        for k in _subsets(s):
            _add(out, k, scaled)
    return _prune({k: v * (-1.0) ** len(k) for k, v in out.items()}, tol)


def _feature_count(coeffs: Coeffs, n: int | None, owner: str) -> int:
    top = max((max(k) for k in coeffs if k), default=-1) + 1
    if n is None:
        return top
    check_param(owner, "n", n, kind=int, low=0)
    if top > n:
        raise InputError(f"{owner}: a coefficient key uses feature {top - 1} but n={n}.")
    return n


def shapley_values(coeffs: Coeffs, n: int | None = None) -> np.ndarray:
    """Shapley values from Fourier coefficients: phi_i = -2 sum_{k contains i, |k| odd} F(k)/|k|.

    Returns (n,) float64; n defaults to 1 + the largest feature index in the keys.
    Efficiency: sum_i phi_i = v(1) - v(0).
    """
    n = _feature_count(coeffs, n, "shapley_values")
    phi = np.zeros(n)
    for k, f in coeffs.items():
        if len(k) % 2 == 1:
            phi[list(k)] += -2.0 * float(f) / len(k)
    return phi


def banzhaf_values(coeffs: Coeffs, n: int | None = None) -> np.ndarray:
    """Banzhaf values from Fourier coefficients: beta_i = -2 F({i}); (n,) float64."""
    n = _feature_count(coeffs, n, "banzhaf_values")
    beta = np.zeros(n)
    for k, f in coeffs.items():
        if len(k) == 1:
            beta[k[0]] = -2.0 * float(f)
    return beta


def mobius_to_sii(mobius: Coeffs) -> Coeffs:
    """Shapley interaction index I(S) = sum_{T superset S} a(T) / (|T| - |S| + 1)."""
    _check_keys(mobius, "Moebius")
    out: Coeffs = {}
    for t_key, a in mobius.items():
        for s in _subsets(t_key):
            _add(out, s, float(a) / (len(t_key) - len(s) + 1))
    return out


def mobius_to_bii(mobius: Coeffs) -> Coeffs:
    """Banzhaf interaction index I(S) = sum_{T superset S} a(T) / 2^(|T| - |S|)."""
    _check_keys(mobius, "Moebius")
    out: Coeffs = {}
    for t_key, a in mobius.items():
        for s in _subsets(t_key):
            _add(out, s, float(a) / 2.0 ** (len(t_key) - len(s)))
    return out


def mobius_to_stii(mobius: Coeffs, order: int) -> Coeffs:
    """Shapley-Taylor index of order l: a(S) for |S| < l; sum_{T superset S} a(T)/C(|T|, l) at |S| = l."""
    check_param("mobius_to_stii", "order", order, kind=int, low=1)
    _check_keys(mobius, "Moebius")
    out: Coeffs = {}
    for t_key, a in mobius.items():
        if len(t_key) < order:
            _add(out, t_key, float(a))
            continue
        share = float(a) / math.comb(len(t_key), order)
        for s in itertools.combinations(t_key, order):
            _add(out, s, share)
    return out


def mobius_to_fbii(mobius: Coeffs, order: int) -> Coeffs:
    """Faithful Banzhaf index of order l (uniformly weighted best order-l Moebius fit).

    I(S) = a(S) + (-1)^(l-|S|) sum_{T proper superset S, |T| > l} a(T) 2^-(|T|-|S|) C(|T|-|S|-1, l-|S|)
    for |S| <= l (Faith-Shap paper, eq. 13).
    """
    check_param("mobius_to_fbii", "order", order, kind=int, low=1)
    _check_keys(mobius, "Moebius")
    out: Coeffs = {}
    for t_key, a in mobius.items():
        size = len(t_key)
        if size <= order:
            _add(out, t_key, float(a))
            continue
        for s in _subsets(t_key, order):
            gap = size - len(s)
            w = (-1.0) ** (order - len(s)) * 2.0**-gap * math.comb(gap - 1, order - len(s))
            _add(out, s, w * float(a))
    return out


def mobius_to_fsii(mobius: Coeffs, order: int) -> Coeffs:
    """Faithful Shapley index of order l (Shapley-kernel weighted best order-l Moebius fit).

    I(S) = a(S) + (-1)^(l-|S|) |S|/(|S|+l) C(l,|S|)
           * sum_{T proper superset S, |T| > l} a(T) C(|T|-1, l) / C(|T|+l-1, l+|S|)
    for |S| <= l (Faith-Shap paper, eq. 16).
    """
    check_param("mobius_to_fsii", "order", order, kind=int, low=1)
    _check_keys(mobius, "Moebius")
    out: Coeffs = {}
    for t_key, a in mobius.items():
        size = len(t_key)
        if size <= order:
            _add(out, t_key, float(a))
            continue
        for s in _subsets(t_key, order):
            k = len(s)
            w = (
                (-1.0) ** (order - k)
                * (k / (k + order))
                * math.comb(order, k)
                * math.comb(size - 1, order)
                / math.comb(size + order - 1, order + k)
            )
            _add(out, s, w * float(a))
    return out


@functools.lru_cache(maxsize=64)
def bernoulli_numbers(count: int) -> tuple[float, ...]:
    """B_0..B_{count-1} with B_1 = -1/2 (the convention of the k-SII aggregation)."""
    out: list[Fraction] = []
    for m in range(count):
        if m == 0:
            out.append(Fraction(1))
            continue
        out.append(-sum((math.comb(m + 1, j) * out[j] for j in range(m)), Fraction(0)) / (m + 1))
    return tuple(float(b) for b in out)


def _ksii_weight(s: int, t: int, k: int) -> float:
    """Share of a(T), |T| = t, in Phi_k(S), |S| = s: sum_{r=s}^{min(k,t)} C(t-s, r-s)
    B_{r-s} / (t - r + 1) (SII weight of each R between S and T, aggregated)."""
    bern = bernoulli_numbers(k + 1)
    return sum(math.comb(t - s, r - s) * bern[r - s] / (t - r + 1)
               for r in range(s, min(k, t) + 1))


def mobius_to_ksii(mobius: Coeffs, order: int) -> Coeffs:
    """k-Shapley interaction index of order k (Bordt & von Luxburg 2023) from Moebius terms.

    Phi_k(S) = sum_{T superset S} w(|S|, |T|, k) a(T) for 1 <= |S| <= k, with w the
    Bernoulli aggregation of the SII weights 1/(|T|-|R|+1) (see ``_ksii_weight``);
    Phi_k(()) = a(()) = v(0).  Efficiency: sum_{S != ()} Phi_k(S) = v(1) - v(0).
    """
    check_param("mobius_to_ksii", "order", order, kind=int, low=1)
    _check_keys(mobius, "Moebius")
    out: Coeffs = {}
    weights: dict[tuple[int, int], float] = {}
    for t_key, a in mobius.items():
        if not t_key:
            _add(out, (), float(a))
            continue
        for s in _subsets(t_key, order):
            if not s:
                continue
            key = (len(s), len(t_key))
            if key not in weights:
                weights[key] = _ksii_weight(key[0], key[1], order)
            _add(out, s, weights[key] * float(a))
    return out


def mobius_to_index(
    mobius: Coeffs,
    index: Literal["mobius", "fourier", "sii", "bii", "ksii", "stii", "fsii", "fbii"],
    order: int | None = None,
) -> Coeffs:
    """Convert a Moebius dictionary to the named index ("ksii"/"stii"/"fsii"/"fbii" need
    ``order``)."""
    name = str(index).lower()
    if name not in INDEX_NAMES:
        raise ParameterError(unknown_name_message("interaction index", str(index), INDEX_NAMES))
    if name == "mobius":
        return dict(mobius)
    if name == "fourier":
        return mobius_to_fourier(mobius)
    if name == "sii":
        return mobius_to_sii(mobius)
    if name == "bii":
        return mobius_to_bii(mobius)
    if order is None:
        raise ParameterError(f"The '{name}' index needs an 'order' (e.g. order=2); got None.")
    convert = {"ksii": mobius_to_ksii, "stii": mobius_to_stii, "fsii": mobius_to_fsii,
               "fbii": mobius_to_fbii}
    return convert[name](mobius, order)


def interaction_index(
    coeffs: Coeffs,
    index: Literal["fourier", "mobius", "sii", "bii", "ksii", "stii", "fsii", "fbii"],
    *,
    order: int | None = None,
) -> Coeffs:
    """Convert a Fourier dictionary to the named index ("ksii"/"stii"/"fsii"/"fbii" need
    ``order``)."""
    name = str(index).lower()
    if name not in INDEX_NAMES:
        raise ParameterError(unknown_name_message("interaction index", str(index), INDEX_NAMES))
    if name == "fourier":
        return dict(coeffs)
    return mobius_to_index(fourier_to_mobius(coeffs), name, order)


# ---- dictionaries -> result fields (shared by every interaction method) --------------------
def terms_of(coeffs: Coeffs, *, tol: float = 0.0) -> list[dict[str, Any]]:
    """[{features, value}] of a {subset: value} dictionary, sorted by size then features;
    terms with |value| <= tol are left out."""
    return [
        {"features": [int(i) for i in k], "value": float(v)}
        for k, v in sorted(coeffs.items(), key=lambda kv: (len(kv[0]), kv[0]))
        if abs(v) > tol
    ]


def mobius_design(masks: np.ndarray, subsets: list[tuple[int, ...]]) -> np.ndarray:
    """Presence-basis design: (m, len(subsets)) float, column j = prod_{i in S_j} z_i
    (1 for the empty set); masks (m, n) bool, 1 = kept."""
    masks = np.asarray(masks, dtype=bool)
    out = np.empty((len(masks), len(subsets)), dtype=float)
    for j, s in enumerate(subsets):
        out[:, j] = masks[:, list(s)].all(1) if s else 1.0
    return out


def values_from_mobius(mobius: Coeffs, n: int, kind: str = "shapley") -> np.ndarray:
    """Shapley (sum_{S contains i} a(S)/|S|) or Banzhaf (sum_{S contains i} a(S)/2^(|S|-1))
    values of a Moebius dictionary, shape (n,)."""
    check_param("values_from_mobius", "kind", kind, choices=("shapley", "banzhaf"))
    out = np.zeros(n)
    for s, a in mobius.items():
        if s:
            out[list(s)] += a * (1.0 / len(s) if kind == "shapley" else 0.5 ** (len(s) - 1))
    return out


def values_from_fourier(coeffs: Coeffs, n: int, kind: str = "shapley") -> np.ndarray:
    """Shapley or Banzhaf values of a Fourier dictionary, shape (n,) (positive = raises v)."""
    check_param("values_from_fourier", "kind", kind, choices=("shapley", "banzhaf"))
    return shapley_values(coeffs, n) if kind == "shapley" else banzhaf_values(coeffs, n)


def resolve_order(index: str, order: int | None) -> int | None:
    """The order an index is reported at: l for the ordered indices (default 2), 1 for the
    first-order values, else the display limit ``order`` (None = all terms)."""
    if index in ORDERED_INDICES:
        return DEFAULT_ORDER if order is None else int(order)
    if index in ("shapley", "banzhaf"):
        return 1
    return None if order is None else int(order)


def _finish(vals: Coeffs, index: str, order: int | None) -> dict[str, Any]:
    if order is not None and index not in ORDERED_INDICES:
        vals = {k: v for k, v in vals.items() if len(k) <= order}
    return {"index": index, "order": order, "terms": terms_of(vals, tol=1e-15)}


def interactions_from_mobius(
    mobius: Coeffs, n: int, index: str, order: int | None
) -> dict[str, Any]:
    """The ``interactions`` field {index, order, terms} of a Moebius dictionary on n features.

    ``order`` is l for ksii/fsii/fbii/stii (default 2); for fourier/mobius/sii/bii it only
    limits the terms shown to |S| <= order (None = all)."""
    check_param("interactions", "index", index, choices=INDICES)
    order = resolve_order(index, order)
    if index in ("shapley", "banzhaf"):
        vals = values_from_mobius(mobius, n, index)
        return _finish({(i,): float(vals[i]) for i in range(n)}, index, order)
    ordered = order if index in ORDERED_INDICES else None
    return _finish(mobius_to_index(mobius, index, ordered), index, order)  # type: ignore[arg-type]


def interactions_from_fourier(
    coeffs: Coeffs, n: int, index: str, order: int | None
) -> dict[str, Any]:
    """The ``interactions`` field {index, order, terms} of a Fourier dictionary on n features
    (see :func:`interactions_from_mobius` for ``order``)."""
    check_param("interactions", "index", index, choices=INDICES)
    if index == "fourier":
        return _finish(dict(coeffs), index, resolve_order(index, order))
    if index in ("shapley", "banzhaf"):
        vals = values_from_fourier(coeffs, n, index)
        return _finish({(i,): float(vals[i]) for i in range(n)}, index, resolve_order(index, order))
    return interactions_from_mobius(fourier_to_mobius(coeffs), n, index, order)


__all__ = [
    "INDEX_NAMES",
    "INDICES",
    "ORDERED_INDICES",
    "banzhaf_values",
    "bernoulli_numbers",
    "fourier_to_mobius",
    "interaction_index",
    "interactions_from_fourier",
    "interactions_from_mobius",
    "mobius_design",
    "mobius_to_bii",
    "mobius_to_fbii",
    "mobius_to_fourier",
    "mobius_to_fsii",
    "mobius_to_index",
    "mobius_to_ksii",
    "mobius_to_sii",
    "mobius_to_stii",
    "resolve_order",
    "shapley_values",
    "terms_of",
    "values_from_fourier",
    "values_from_mobius",
]
