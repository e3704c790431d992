"""Locality kernels of the LIME family (LIME, gSMILE, RoPE-LIME), in one place.

All three weight a perturbed sample z by the same exponential kernel of a distance D(z)
between the perturbed and the original input (LIME's ``lime_base.py``; gSMILE's
``xwhy:surrogate/trainer.py``):

    π(z) = sqrt(exp(-D(z)^2 / w^2)) = exp(-D(z)^2 / (2 w^2))

Only the distance differs: LIME-text uses the cosine distance between the binary mask and
the all-ones mask, x100 (:func:`lime_text_distances`, width 25); gSMILE a Word Mover's
Distance; RoPE-LIME an RWMD in RoPE space. The width is a number or ``"median"``, and
``"median"`` has one rule (:func:`median_width`): the median of the positive distances
(the unperturbed sample, at distance 0, does not shrink it); width 1 when no distance is
positive (every weight is then 1 whatever the width).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import InputError
from ..params import Param, check_param

__all__ = [
    "KERNEL_FORMULA",
    "LocalityKernel",
    "WidthParam",
    "exponential_kernel",
    "lime_text_distances",
    "median_width",
]

KERNEL_FORMULA = "sqrt(exp(-d^2/width^2))"
MEDIAN_RULE = "median of the positive distances (1 if none)"


def _distances(d: Any) -> np.ndarray:
    arr = np.asarray(d, dtype=np.float64)
    if not bool(np.isfinite(arr).all()) or bool((arr < 0).any()):
        raise InputError("A locality kernel needs finite, non-negative distances.")
    return arr


def median_width(distances: Any) -> float:
    """The ``"median"`` kernel width: median of the positive distances, 1.0 if none is."""
    d = _distances(distances)
    pos = d[d > 0]
    return float(np.median(pos)) if pos.size else 1.0


def exponential_kernel(distances: Any, width: float, *, rescale: bool = False) -> np.ndarray:
    """π(d) = sqrt(exp(-d^2 / width^2)), the shape of ``distances`` (1 at d = 0).

    rescale: divide by the largest weight (computed in log space). A weighted least-squares
             fit does not change, but a sample set far from the original (no sample at
             distance 0, as gSMILE's) no longer underflows to all-zero weights.
    """
    d = _distances(distances)
    check_param("exponential_kernel", "width", width, low=1e-300)
    with np.errstate(over="ignore"):  # d / width, then squared: no overflow of width**2
        logw = -0.5 * (d / float(width)) ** 2
    if rescale and logw.size:
        logw = logw - logw.max()
    return np.exp(logw)


def lime_text_distances(masks: Any) -> np.ndarray:
    """(m,) LIME-text distances of bool masks (m, n) to the original: cosine distance
    between each mask row and the all-ones row, x100 (``lime_text``'s ``distance_fn``).

    For a binary row z with |z| kept features: 100 (1 - sqrt(|z| / n)); the empty mask is
    at 100 (sklearn's cosine distance of a zero vector is 1).
    """
    z = np.asarray(masks)
    if z.ndim != 2 or z.shape[1] == 0:
        raise InputError(f"Masks must be a (n_masks, n_features) array; got shape {z.shape}.")
    kept = z.astype(bool).sum(axis=1).astype(np.float64)
    return 100.0 * (1.0 - np.sqrt(kept / z.shape[1]))


@dataclass(frozen=True)
class LocalityKernel:
    """The exponential locality kernel with a fixed width or the ``"median"`` rule."""

    width: float | str = 0.25
    rescale: bool = False

    def __call__(self, distances: Any) -> tuple[np.ndarray, float]:
        """(weights of the shape of ``distances``, the width used).

        Warns when the weights leave fewer than 2 effective samples (Kish's (Σπ)² / Σπ²) of
        3 or more: the surrogate then fits about one sample, reports a perfect fit and
        scores nothing (LIME at width 0.25 on its 100 x cosine distances scored 0 everywhere).
        """
        w = median_width(distances) if self.width == "median" else float(self.width)
        weights = exponential_kernel(distances, w, rescale=self.rescale)
        total, sq = float(weights.sum()), float(np.square(weights).sum())
        ess = total * total / sq if sq > 0 else 0.0
        if weights.size >= 3 and ess < 2.0:
            warnings.warn(
                f"The locality kernel of width {w:g} leaves {ess:.2f} effective samples of "
                f"{weights.size} (the others weigh ~0): the surrogate fits about one sample "
                f"and its scores mean nothing; widen kernel_width (or use 'median').",
                stacklevel=4)
        return weights, w

    def describe(self) -> dict[str, Any]:
        """What the result's params record about the kernel."""
        out: dict[str, Any] = {"kernel": KERNEL_FORMULA}
        if self.width == "median":
            out["kernel_width_rule"] = MEDIAN_RULE
        return out


class WidthParam(Param):
    """A declared kernel width: a positive float, or ``"median"`` (:func:`median_width`)."""

    def describe(self) -> str:
        return "a float in the range (0, inf) or 'median'"

    def accepts(self, value: Any) -> bool:
        if isinstance(value, str):
            return value == "median"
        return super().accepts(value) and value > 0

    def check(self, owner: str, value: Any) -> Any:
        if value == "median" and isinstance(value, str):
            return value
        return super().check(owner, value)

    def parse_cli(self, text: str) -> Any:
        return "median" if text == "median" else super().parse_cli(text)

    def invalid_values(self) -> list[Any]:
        return [None, "mean", 0.0, -1.0, float("nan")]
