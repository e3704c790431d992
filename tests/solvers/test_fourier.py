"""SPEX sampling design, WHT, peeling decoder, surrogate prediction (METHODS §3)."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pytest

from attrlens.errors import InputError, ParameterError
from attrlens.solvers.fourier import (
    b_for_budget,
    fourier_basis,
    fourier_r2,
    fwht,
    make_design,
    n_queries,
    predict,
    spex_decode,
    spex_transform,
)


def planted_spectrum(n: int, size: int, seed: int, *, max_order: int = 3) -> dict:
    """`size` random supports of order 1..max_order, |F| in [0.5, 2], random signs, plus a constant."""
    rng = np.random.default_rng(seed)
    coeffs: dict = {(): float(rng.uniform(-2, 2))}
    while len(coeffs) < size + 1:
        order = int(rng.integers(1, max_order + 1))
        key = tuple(sorted(int(i) for i in rng.choice(n, size=order, replace=False)))
        coeffs[key] = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 2.0))
    return coeffs


def assert_same_spectrum(got: dict, want: dict, atol: float = 1e-8) -> None:
    assert set(got) == set(want), set(got) ^ set(want)
    np.testing.assert_allclose([got[k] for k in want], [want[k] for k in want], atol=atol)


# ---------------------------------------------------------------- query counts
@pytest.mark.parametrize(
    ("n", "b", "t", "count"),
    [
        (128, 8, 5, 31_488),
        (1000, 8, 5, 43_008),
        (64, 8, 5, 27_648),
        (8, 4, 5, 1_008),
        (512, 10, 5, 156_672),
        (128, 8, 3, 19_200),
    ],
)
def test_query_counts_match_methods_table(n: int, b: int, t: int, count: int) -> None:
    assert n_queries(n, b, t=t) == count
    design = make_design(n, b=b, t=t)
    assert design.n_queries == count
    if count < 50_000:
        assert design.masks().shape == (count, n)


def test_b_for_budget() -> None:
    assert b_for_budget(128, 31_488) == 8
    assert b_for_budget(128, 31_487) == 7
    assert b_for_budget(1000, 10**9) == 12
    assert b_for_budget(128, 3 * 41 * 8) == 3
    with pytest.raises(ParameterError, match="at least 984"):
        b_for_budget(128, 983)


# ---------------------------------------------------------------- design
def test_masks_follow_the_documented_order() -> None:
    design = make_design(40, b=5, seed=1)
    masks = design.masks()
    n_del = design.n_delays
    rng = np.random.default_rng(0)
    for _ in range(20):
        c, p, l = int(rng.integers(3)), int(rng.integers(n_del)), int(rng.integers(32))
        lbits = np.array([(l >> (4 - r)) & 1 for r in range(5)])
        want = ((design.Ms[c].astype(int) @ lbits) + design.D[p]) % 2
        np.testing.assert_array_equal(masks[(c * n_del + p) * 32 + l], want.astype(bool))
    assert masks.dtype == bool


def test_nested_b_is_a_subset_of_the_design() -> None:
    design = make_design(50, b=7, seed=2)
    full = design.masks()
    for b in (3, 5, 7):
        idx = design.sample_index(b)
        assert idx.shape == (design.n_queries_at(b),)
        np.testing.assert_array_equal(design.masks(b), full[idx])
        # the sub-design is exactly the design made from the first b columns of each M_c
        sub = full[idx].reshape(3, design.n_delays, 2**b, 50)
        lbits = np.array(list(itertools.product([0, 1], repeat=b)))
        for c in range(3):
            ml = (lbits @ design.Ms[c, :, :b].T.astype(int)) % 2
            np.testing.assert_array_equal(sub[c, 0], ml.astype(bool))
    with pytest.raises(ParameterError):
        design.masks(8)


@pytest.mark.parametrize("chunk", [1, 7, 32, 100, 10_000])
def test_iter_masks_streams_the_same_rows(chunk: int) -> None:
    design = make_design(20, b=5, seed=3)
    for b in (5, 3):
        blocks = list(design.iter_masks(b, chunk=chunk))
        assert all(blk.shape[0] <= chunk for blk in blocks)
        np.testing.assert_array_equal(np.concatenate(blocks), design.masks(b))


def test_design_is_seeded() -> None:
    a, b_, c = (
        make_design(30, b=4, seed=5),
        make_design(30, b=4, seed=5),
        make_design(30, b=4, seed=6),
    )
    np.testing.assert_array_equal(a.Ms, b_.Ms)
    assert not np.array_equal(a.Ms, c.Ms)


def test_fwht_equals_dense_hadamard() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2, 16))
    bits = np.array(list(itertools.product([0, 1], repeat=4)))
    h = (-1.0) ** (bits @ bits.T)
    np.testing.assert_allclose(fwht(x), x @ h.T / 16, atol=1e-12)
    np.testing.assert_allclose(fwht(x, normalize=False), x @ h.T, atol=1e-12)
    with pytest.raises(InputError):
        fwht(np.zeros(12))


# ---------------------------------------------------------------- prediction
def test_predict_and_basis_equal_definition() -> None:
    rng = np.random.default_rng(1)
    coeffs = {(): 0.3, (2,): -1.0, (0, 4): 0.5, (1, 3, 4): 2.0}
    z = rng.integers(0, 2, size=(50, 6)).astype(bool)
    want = np.array([sum(f * (-1) ** int(sum(zz[list(k)])) for k, f in coeffs.items()) for zz in z])
    np.testing.assert_allclose(predict(coeffs, z), want, atol=1e-12)
    np.testing.assert_allclose(predict(coeffs, z, chunk=7), want, atol=1e-12)
    x = fourier_basis(list(coeffs), z)
    np.testing.assert_allclose(x @ np.array(list(coeffs.values())), want, atol=1e-12)
    np.testing.assert_array_equal(predict({}, z), np.zeros(50))
    assert fourier_r2(coeffs, z, want) == pytest.approx(1.0)
    # R^2 of the constant-only surrogate at the mean is exactly 0
    assert fourier_r2({(): float(want.mean())}, z, want) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(InputError, match="outside"):
        predict({(9,): 1.0}, z)


# ---------------------------------------------------------------- decoding
@functools.lru_cache(maxsize=8)
def _planted_case(n: int, size: int, seed: int):
    coeffs = planted_spectrum(n, size, seed)
    design = make_design(n, b=8, seed=seed)
    return coeffs, design, predict(coeffs, design.masks())


@pytest.mark.parametrize(
    ("n", "size", "seed"), [(64, 15, 0), (64, 20, 1), (1000, 20, 2), (1000, 12, 3)]
)
@pytest.mark.parametrize("decoder", ["hard", "soft"])
def test_planted_sparse_spectrum_is_recovered_exactly(
    decoder: str, n: int, size: int, seed: int
) -> None:
    coeffs, design, values = _planted_case(n, size, seed)
    assert design.n_queries == {64: 27_648, 1000: 43_008}[n]
    res = spex_transform(design, values, decoder=decoder)
    assert_same_spectrum(res.coeffs, coeffs)
    assert res.stopped_by == "converged"
    assert res.n_multiton_bins == 0
    assert res.residual_energy < 1e-20


def test_nested_b_decodes_from_the_same_samples() -> None:
    n = 128
    coeffs = planted_spectrum(n, 15, seed=4)
    design = make_design(n, b=8, seed=4)
    values = predict(coeffs, design.masks())
    for b in (6, 7, 8):
        res = spex_transform(design, values, b=b)
        assert res.n_queries == n_queries(n, b)
        assert_same_spectrum(res.coeffs, coeffs)
    # decoding the sub-design alone (its own values) gives the same answer
    sub_vals = predict(coeffs, design.masks(6))
    np.testing.assert_allclose(sub_vals, values[design.sample_index(6)], atol=1e-12)
    assert_same_spectrum(spex_decode(design, sub_vals, b=6), coeffs)


def test_noisy_values_degrade_gracefully() -> None:
    n = 128
    coeffs = planted_spectrum(n, 15, seed=5)
    design = make_design(n, b=8, seed=5)
    rng = np.random.default_rng(5)
    values = predict(coeffs, design.masks())
    values = values + rng.normal(scale=0.05, size=values.shape)
    got = spex_decode(design, values, noise_sd=0.05)
    for k, f in coeffs.items():
        assert k in got
        assert got[k] == pytest.approx(f, abs=0.05)
    test = rng.integers(0, 2, size=(1000, n)).astype(bool)
    assert fourier_r2(got, test, predict(coeffs, test)) > 0.99


def test_heavier_noise_still_finds_the_large_coefficients() -> None:
    n = 64
    coeffs = planted_spectrum(n, 10, seed=6)
    design = make_design(n, b=7, seed=6)
    rng = np.random.default_rng(6)
    values = predict(coeffs, design.masks()) + rng.normal(scale=0.5, size=design.n_queries)
    got = spex_decode(design, values, noise_sd=0.5)
    for k, f in coeffs.items():
        assert got.get(k, 0.0) == pytest.approx(f, abs=0.2)
    test = rng.integers(0, 2, size=(1000, n)).astype(bool)
    assert fourier_r2(got, test, predict(coeffs, test)) > 0.95


def test_lasso_refit_shrinks_noise_to_the_true_support() -> None:
    n = 16
    coeffs = planted_spectrum(n, 6, seed=7, max_order=2)
    design = make_design(n, b=4, seed=7)
    rng = np.random.default_rng(7)
    values = predict(coeffs, design.masks()) + rng.normal(scale=0.1, size=design.n_queries)
    got = spex_decode(design, values, refit="lasso", noise_sd=0.1)
    for k, f in coeffs.items():
        assert got.get(k, 0.0) == pytest.approx(f, abs=0.05)
    extra = {k: v for k, v in got.items() if k not in coeffs}
    assert all(abs(v) < 0.05 for v in extra.values())


def test_decoder_rejects_bad_inputs() -> None:
    design = make_design(16, b=4)
    good = np.zeros(design.n_queries)
    with pytest.raises(InputError, match="queries"):
        spex_decode(design, good[:-1])
    bad = good.copy()
    bad[3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        spex_decode(design, bad)
    with pytest.raises(ParameterError, match="decoder"):
        spex_decode(design, good, decoder="chase")
    with pytest.raises(ParameterError, match="'b'"):
        spex_decode(design, good, b=5)
    with pytest.raises(ParameterError):
        make_design(16, b=0)
    # the all-zero function decodes to the empty spectrum
    assert spex_decode(design, good) == {}


def test_max_iter_stop_warns_and_is_reported() -> None:
    coeffs, design, values = _planted_case(64, 20, 1)
    with pytest.warns(RuntimeWarning, match="max_iter"):
        res = spex_transform(design, values, max_iter=1)
    assert res.stopped_by == "max_iter" and res.n_iterations == 1
    assert 0 < len(res.coeffs) <= len(coeffs)


def test_trap_exit_stops_a_stagnant_decoder() -> None:
    """Pure noise: the same few keys get re-peeled forever; trap_exit ends it."""
    design = make_design(32, b=4, seed=9)
    values = np.random.default_rng(0).normal(size=design.n_queries)
    for trap in (15, 3):
        res = spex_transform(design, values, trap_exit=trap)
        assert res.stopped_by == "trap_exit"
        assert res.n_iterations == trap + 1  # nothing new after the first round
    with pytest.warns(RuntimeWarning, match="max_iter"):
        res = spex_transform(design, values, trap_exit=None, max_iter=40)
    assert res.stopped_by == "max_iter" and res.n_iterations == 40
