"""Tests of the Sparse-K and Bernoulli mask samplers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from attrlens.errors import InputError, ParameterError
from attrlens.solvers.sampling import (
    bernoulli_masks,
    distinct_prefix,
    lime_masks,
    sparse_k_masks,
)

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
    masks, info = bernoulli_masks(12, 64, seed=1, min_kept=2)
    assert masks.shape == (64, 12) and masks.dtype == bool
    assert masks.sum(1).min() >= 2
    assert _n_unique(masks) == 64 and info["short_of_budget"] == 0
    np.testing.assert_array_equal(masks, bernoulli_masks(12, 64, seed=1, min_kept=2)[0])
    # keep probability
    many, _ = bernoulli_masks(50, 400, p_keep=0.3, seed=2)
    assert many.mean() == pytest.approx(0.3, abs=0.02)


def test_bernoulli_small_population_is_drawn_without_repeats():
    # n = 4, no empty mask: 15 distinct masks exist, all of them come out, and a larger
    # budget is reported short instead of looping
    masks, info = bernoulli_masks(4, 15, seed=0)
    assert _n_unique(masks) == 15 and masks.any(axis=1).all()
    masks, info = bernoulli_masks(4, 16, seed=0)
    assert len(masks) == 15 and info["short_of_budget"] == 1
    # {110, 101, 011, 111} are the only masks of 3 features with 2 kept
    masks, info = bernoulli_masks(3, 64, seed=0, min_kept=2)
    assert len(masks) == 4 and info["short_of_budget"] == 60


def test_bernoulli_sizes_and_top_up():
    # min_kept counts sizes (words per feature): one 3-word feature is enough
    sizes = np.array([3, 1, 1, 1, 1, 1])
    masks, _ = bernoulli_masks(6, 30, seed=0, min_kept=3, sizes=sizes)
    assert np.all(masks.astype(int) @ sizes >= 3)
    assert np.any(masks[:, 0] & (masks.sum(1) == 1))
    # the reference's top-up: too small masks get random extra features instead of a redraw
    masks, info = bernoulli_masks(8, 60, seed=0, min_kept=2, top_up=True)
    assert np.all(masks.sum(1) >= 2) and info["topped_up"] > 0


def test_bernoulli_parameter_errors():
    with pytest.raises(ParameterError, match="'p_keep'"):
        bernoulli_masks(5, 4, p_keep=1.5)
    with pytest.raises(ParameterError, match="'p_keep'"):
        bernoulli_masks(5, 4, p_keep=0.0)
    with pytest.raises(InputError, match="sizes"):
        bernoulli_masks(5, 4, sizes=np.ones(4))


def test_lime_text_masks_follow_the_reference():
    n, m = 7, 3000
    masks = lime_masks(n, m, seed=3)
    assert masks.shape == (m, n) and masks[0].all()
    removed = (~masks[1:]).sum(1)
    # d uniform in 1..n (all features removed is allowed), rows drawn with replacement
    assert removed.min() == 1 and removed.max() == n
    counts = np.bincount(removed, minlength=n + 1)[1:]
    assert np.all(np.abs(counts / (m - 1) - 1 / n) < 0.03)
    assert _n_unique(masks) < m  # repeats happen (2^7 = 128 masks)
    # the reference's draws: RandomState(seed).randint(1, n + 1, m - 1), then one
    # choice(n, d, replace=False) per row
    rs = np.random.RandomState(3)
    ds = rs.randint(1, n + 1, m - 1)
    for r, d in enumerate(ds[:50], start=1):
        off = rs.choice(n, d, replace=False)
        assert set(np.flatnonzero(~masks[r])) == set(off.tolist())
    # each feature removed equally often (symmetry)
    assert np.all(np.abs((~masks[1:]).mean(0) - (~masks[1:]).mean()) < 0.04)


def test_distinct_lime_masks_and_distinct_prefix():
    masks = lime_masks(6, 40, seed=0, variant="distinct")
    assert len(masks) == 40 and _n_unique(masks) == 40 and masks[0].all()
    assert np.all(masks[1:].sum(1) >= 1)  # 1..n-1 removed: never all
    # all of them when fewer exist than asked: 2^3 - 1 (the empty mask excluded)
    assert len(lime_masks(3, 100, seed=0, variant="distinct")) == 7
    assert lime_masks(1, 5, variant="distinct").tolist() == [[True], [False]]
    rows = np.array([[1, 1], [0, 1], [0, 1], [1, 0], [0, 0]], bool)
    assert distinct_prefix(rows, 2) == 3 and distinct_prefix(rows, 3) == 4
    assert distinct_prefix(rows, 10) == 5


@pytest.mark.parametrize(("n", "m", "k"), [(6, 500, 20), (3, 300, 5), (40, 300, 64),
                                           (5, 50, 1000)])
def test_lime_masks_up_to_a_budget_are_the_leading_rows_of_the_full_draw(n, m, k,
                                                                         monkeypatch):
    """lime_masks(max_distinct=k) is the full draw cut where its (k+1)-th distinct mask
    would start, built without the rows after it (walked in pieces of 7 sizes here, the
    same draws as one call); before, all num_samples rows were built first, so a large
    num_samples on a small budget ran out of memory or time."""
    from attrlens.solvers import sampling

    full = lime_masks(n, m, seed=4)
    monkeypatch.setattr(sampling, "_SIZE_CHUNK", 7)
    np.testing.assert_array_equal(lime_masks(n, m, seed=4), full)
    cut = lime_masks(n, m, seed=4, max_distinct=k)
    np.testing.assert_array_equal(cut, full[: distinct_prefix(full, k)])
    dist = lime_masks(n, m, seed=4, variant="distinct", max_distinct=k)
    np.testing.assert_array_equal(dist, lime_masks(n, min(m, k), seed=4, variant="distinct"))
