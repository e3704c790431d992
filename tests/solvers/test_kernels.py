"""The one locality kernel of the LIME family and its one 'median' width rule."""

from __future__ import annotations

import numpy as np
import pytest

from attrlens.errors import InputError, ParameterError
from attrlens.solvers.kernels import (
    LocalityKernel,
    WidthParam,
    exponential_kernel,
    lime_text_distances,
    median_width,
)


def test_exponential_kernel_is_the_reference_formula():
    d = np.array([0.0, 0.1, 0.25, 0.5, 1.0])
    w = exponential_kernel(d, 0.25)
    # LIME's lime_base kernel: sqrt(exp(-d^2 / width^2))
    np.testing.assert_allclose(w, np.sqrt(np.exp(-(d**2) / 0.25**2)), rtol=1e-12)
    assert w[0] == 1.0 and np.all(np.diff(w) < 0)
    # rescaled: the same ratios, largest weight 1, no underflow far away
    far = exponential_kernel(np.array([30.0, 30.1]), 0.25, rescale=True)
    assert far.max() == 1.0 and 0 < far.min() < 1
    with pytest.raises(InputError):
        exponential_kernel([-0.1, 0.2], 1.0)
    with pytest.raises(ParameterError):
        exponential_kernel(d, 0.0)
    # extreme widths (width**2 overflowed to OverflowError): all-equal weights when very
    # wide, the original alone when very narrow
    np.testing.assert_array_equal(exponential_kernel(d, 1e300), 1.0)
    np.testing.assert_array_equal(exponential_kernel(d, 1e-300), [1.0, 0, 0, 0, 0])


def test_median_rule_is_one_rule():
    # the unperturbed sample's 0 is left out; none positive -> width 1 (all weights 1)
    assert median_width([0.0, 0.1, 0.2, 0.3, 0.4]) == pytest.approx(0.25)
    assert median_width([0.0, 0.0, 0.0, 0.2, 0.4]) == pytest.approx(0.3)
    w, width = LocalityKernel("median")(np.zeros(3))
    assert width == 1.0
    np.testing.assert_allclose(w, 1.0)
    w, width = LocalityKernel("median")(np.array([0.0, 0.2, 0.4]))
    assert width == pytest.approx(0.3)
    np.testing.assert_allclose(w, np.sqrt(np.exp(-(np.array([0.0, 0.2, 0.4]) ** 2) / 0.09)))
    assert LocalityKernel("median").describe()["kernel_width_rule"].startswith("median")


def test_lime_text_distances_equal_sklearn_cosine_x100():
    from sklearn.metrics.pairwise import pairwise_distances

    rng = np.random.default_rng(0)
    masks = rng.random((50, 7)) < 0.5
    masks[0] = True
    masks[1] = False  # all removed: sklearn's cosine distance of a zero row is 1
    ref = pairwise_distances(masks.astype(float), np.ones((1, 7)), metric="cosine").ravel() * 100
    np.testing.assert_allclose(lime_text_distances(masks), ref, atol=1e-9)
    # LIME-text's kernel (width 25) on them: 1 at the original, exp(-8) for the empty mask
    w, _ = LocalityKernel(25.0)(lime_text_distances(masks))
    assert w[0] == 1.0 and w[1] == pytest.approx(np.sqrt(np.exp(-(100.0**2) / 25.0**2)))


def test_width_param():
    p = WidthParam("kernel_width", 0.25, "width")
    assert p.check("X", "median") == "median" and p.check("X", 2) == 2.0
    for bad in p.invalid_values():
        with pytest.raises(ParameterError, match="'median'"):
            p.check("X", bad)
    assert p.parse_cli("median") == "median" and p.parse_cli("0.5") == 0.5
