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

The cost is sum over keys of 2^|k| (all subsets of every key), which is small for the
low-degree spectra SPEX and ProxySPEX return (|k| <= t).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from typing import Literal

import numpy as np

from attrlens.errors import InputError, ParameterError, unknown_name_message
from attrlens.params import check_param

Coeffs = dict[tuple[int, ...], float]

INDEX_NAMES = ("fourier", "mobius", "sii", "bii", "stii", "fsii", "fbii")


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


def mobius_to_index(
    mobius: Coeffs,
    index: Literal["mobius", "fourier", "sii", "bii", "stii", "fsii", "fbii"],
    order: int | None = None,
) -> Coeffs:
    """Convert a Moebius dictionary to the named index ("stii"/"fsii"/"fbii" need ``order``)."""
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
    return {"stii": mobius_to_stii, "fsii": mobius_to_fsii, "fbii": mobius_to_fbii}[name](
        mobius, order
    )


def interaction_index(
    coeffs: Coeffs,
    index: Literal["fourier", "mobius", "sii", "bii", "stii", "fsii", "fbii"],
    *,
    order: int | None = None,
) -> Coeffs:
    """Convert a Fourier dictionary to the named index ("stii"/"fsii"/"fbii" need ``order``)."""
    name = str(index).lower()
    if name not in INDEX_NAMES:
        raise ParameterError(unknown_name_message("interaction index", str(index), INDEX_NAMES))
    if name == "fourier":
        return dict(coeffs)
    return mobius_to_index(fourier_to_mobius(coeffs), name, order)


__all__ = [
    "INDEX_NAMES",
    "banzhaf_values",
    "fourier_to_mobius",
    "interaction_index",
    "mobius_to_bii",
    "mobius_to_fbii",
    "mobius_to_fourier",
    "mobius_to_fsii",
    "mobius_to_index",
    "mobius_to_sii",
    "mobius_to_stii",
    "shapley_values",
]
