"""Tests of the Sparse-K and Bernoulli mask samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attrlens.errors import ParameterError
from attrlens.solvers.sampling import bernoulli_masks, sparse_k_masks

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings
from hypothesis import strategies as st


def _n_unique(masks: np.ndarray) -> int:
    return len(np.unique(masks, axis=0))


def test_k1_with_budget_n_is_leave_one_out():
    n = 7
    masks = sparse_k_masks(n, n, 1, seed=3)
    assert masks.dtype == bool and masks.shape == (n + 1, n)
    assert masks[0].all()
    # row i + 1 removes exactly feature i
    np.testing.assert_array_equal(masks[1:], ~np.eye(n, dtype=bool))
    # any seed and any mode give the same LOO set
    for mode in ("exact", "balanced", "up_to_k"):
        np.testing.assert_array_equal(sparse_k_masks(n, n, 1, mode=mode, seed=9), masks)


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(1, 30),
    budget=st.integers(1, 80),
    data=st.data(),
    mode=st.sampled_from(["exact", "balanced", "up_to_k"]),
    seed=st.integers(0, 2**16),
)
def test_sparse_k_invariants(n, budget, data, mode, seed):
    k = data.draw(st.integers(1, n))
    masks = sparse_k_masks(n, budget, k, mode=mode, seed=seed)
    if mode == "up_to_k":
        total = sum(math.comb(n, s) for s in range(1, k + 1))
    else:
        total = math.comb(n, k)
    assert masks.shape == (min(budget, total) + 1, n)
    assert masks[0].all()
    removed = (~masks[1:]).sum(axis=1)
    if mode == "up_to_k":
        assert removed.min() >= 1 and removed.max() <= k
    else:
        assert np.all(removed == k)
    assert _n_unique(masks) == len(masks)  # no duplicates (and the full row is unique)


def test_enumerates_all_subsets_when_the_budget_allows():
    masks = sparse_k_masks(6, 100, 2, seed=0, include_full=False)
    assert masks.shape == (15, 6)
    assert _n_unique(masks) == 15
    assert np.all((~masks).sum(1) == 2)
    upto = sparse_k_masks(5, 1000, 3, mode="up_to_k", include_full=False)
    assert upto.shape == (5 + 10 + 10, 5) and _n_unique(upto) == 25


def test_include_full_false_and_determinism():
    a = sparse_k_masks(12, 30, 3, seed=1, include_full=False)
    assert a.shape == (30, 12) and not a.all(axis=1).any()
    np.testing.assert_array_equal(a, sparse_k_masks(12, 30, 3, seed=1, include_full=False))
    b = sparse_k_masks(12, 30, 3, seed=2, include_full=False)
    assert not np.array_equal(a, b)


def test_exact_k_subsets_are_uniform():
    # every feature removed with frequency K/n, every pair with K(K-1)/(n(n-1))
    n, k, budget = 10, 3, 60  # C(10, 3) = 120: budget is half of all subsets
    counts = np.zeros(n)
    pairs = np.zeros((n, n))
    n_masks = 0
    for seed in range(150):
        rem = ~sparse_k_masks(n, budget, k, seed=seed, include_full=False)
        counts += rem.sum(0)
        pairs += rem.T.astype(float) @ rem.astype(float)
        n_masks += len(rem)
    np.testing.assert_allclose(counts / n_masks, k / n, atol=0.01)
    off = pairs[~np.eye(n, dtype=bool)] / n_masks
    np.testing.assert_allclose(off, k * (k - 1) / (n * (n - 1)), atol=0.01)


@pytest.mark.parametrize("n,budget,k", [(20, 50, 3), (5, 9, 2), (40, 512, 3), (13, 100, 5)])
def test_balanced_mode_counts(n, budget, k):
    masks = sparse_k_masks(n, budget, k, mode="balanced", seed=4, include_full=False)
    counts = (~masks).sum(0)
    lo, hi = math.floor(budget * k / n), math.ceil(budget * k / n)
    assert counts.min() >= lo and counts.max() <= hi
    assert _n_unique(masks) == budget


def test_exact_mode_is_not_balanced_by_construction():
    # guards the test above: plain uniform sampling spreads the counts wider
    masks = sparse_k_masks(40, 512, 3, seed=4, include_full=False)
    counts = (~masks).sum(0)
    assert counts.max() - counts.min() > 1


def test_up_to_k_sizes_are_uniform():
    masks = sparse_k_masks(30, 600, 3, mode="up_to_k", seed=5, include_full=False)
    sizes = (~masks).sum(1)
    freq = np.bincount(sizes, minlength=4)[1:] / len(sizes)
    # size 1 has only 30 distinct masks, so without repeats all 30 are drawn and sizes 2
    # and 3 take the rest
    assert freq[0] == pytest.approx(30 / 600, abs=1e-12)
    assert freq[1] > 0.3 and freq[2] > 0.3
    # with many features duplicates are rare and the three sizes are equally frequent
    big = sparse_k_masks(1000, 600, 3, mode="up_to_k", seed=5, include_full=False)
    bigfreq = np.bincount((~big).sum(1), minlength=4)[1:] / 600
    np.testing.assert_allclose(bigfreq, 1 / 3, atol=0.06)


def test_sparse_k_parameter_errors():
    with pytest.raises(ParameterError, match="'k'.*n=4"):
        sparse_k_masks(4, 10, 5)
    with pytest.raises(ParameterError, match="'k'"):
        sparse_k_masks(4, 10, 0)
    with pytest.raises(ParameterError, match="'budget'"):
        sparse_k_masks(4, 0, 1)
    with pytest.raises(ParameterError, match="'n'"):
        sparse_k_masks(0, 3, 1)
    with pytest.raises(ParameterError, match="'mode'"):
        sparse_k_masks(4, 3, 1, mode="upto")
    with pytest.raises(ParameterError, match="'budget'"):
        sparse_k_masks(4, 2.5, 1)


def test_bernoulli_masks_invariants():
    masks = bernoulli_masks(12, 64, seed=1, min_kept=2)
    assert masks.shape == (64, 12) and masks.dtype == bool
    assert masks.sum(1).min() >= 2
    assert _n_unique(masks) == 64
    np.testing.assert_array_equal(masks, bernoulli_masks(12, 64, seed=1, min_kept=2))
    # keep probability
    many = bernoulli_masks(50, 400, p_keep=0.3, seed=2)
    assert many.mean() == pytest.approx(0.3, abs=0.02)


def test_bernoulli_small_population_is_drawn_without_repeats():
    # n = 4, no empty mask: 15 distinct masks exist, all of them must come out
    masks = bernoulli_masks(4, 15, seed=0)
    assert _n_unique(masks) == 15 and masks.any(axis=1).all()
    with pytest.raises(ParameterError, match="at most 15"):
        bernoulli_masks(4, 16, seed=0)
    # with repeats allowed the budget is free
    rep = bernoulli_masks(2, 40, seed=0, unique=False)
    assert rep.shape == (40, 2) and _n_unique(rep) <= 3
    assert rep.any(axis=1).all()
    empty_ok = bernoulli_masks(2, 40, seed=0, unique=False, exclude_empty=False)
    assert (~empty_ok.any(axis=1)).any()


def test_bernoulli_parameter_errors():
    with pytest.raises(ParameterError, match="'p_keep'"):
        bernoulli_masks(5, 4, p_keep=1.5)
    with pytest.raises(ParameterError, match="'min_kept'"):
        bernoulli_masks(5, 4, min_kept=6)
    with pytest.raises(ParameterError, match="No mask"):
        bernoulli_masks(5, 4, p_keep=0.0)
