"""BCH code construction and batched decoding used by the SPEX delays (METHODS §3 Steps 1, 3)."""

from __future__ import annotations

import os

import numpy as np
import pytest

from attrlens.errors import ParameterError
from attrlens.solvers import bch
from attrlens.solvers.bch import make_bch_code


@pytest.mark.parametrize(
    ("n", "t", "delays"),
    [
        (8, 5, 21),
        (16, 5, 28),
        (32, 5, 28),
        (64, 5, 36),
        (100, 5, 41),
        (128, 5, 41),
        (256, 5, 46),
        (512, 5, 51),
        (1000, 5, 56),
        (128, 3, 25),
    ],
)
def test_parity_length_matches_methods_table(n: int, t: int, delays: int) -> None:
    code = make_bch_code(n, t)
    assert code.n_parity + 1 == delays
    assert code.k_code >= n
    # shortest: the next smaller field cannot hold n message bits
    if code.m > 4:
        assert bch.bch_dimension(code.m - 1, t) < n


# galois.BCH(n_code, d=2t+1).generator_poly, computed once with galois 0.4.11 (each code
# takes several seconds to build there); the fields behind them use MATLAB's default
# primitive polynomials for m = 7, 8, 11, 12.
_GALOIS_GENERATORS = {
    (64, 5): (127, 92, 54347703511),
    (128, 5): (255, 215, 1320665984273),
    (1000, 5): (2047, 1992, 60000916472962765),
    (128, 3): (255, 231, 29073845),
    (4000, 5): (4095, 4035, 1364209695925637015),
}


@pytest.mark.parametrize(("n", "t"), list(_GALOIS_GENERATORS))
def test_generator_polynomials_equal_galois(n: int, t: int) -> None:
    code = make_bch_code(n, t)
    assert (code.n_code, code.k_code, code.generator) == _GALOIS_GENERATORS[(n, t)]


def _random_supports(rng: np.random.Generator, count: int, n: int, max_w: int) -> np.ndarray:
    k = np.zeros((count, n), dtype=bool)
    for i in range(count):
        k[i, rng.choice(n, size=rng.integers(0, max_w + 1), replace=False)] = True
    return k


# Reference values computed once with galois 0.4.11: ``galois.BCH(63, d=7)`` (n=20, t=3).
# Live galois takes ~20 s here (code construction and decoder JIT), so it is opt-in below.
_GALOIS_GEN = 492239
_GALOIS_D_COLS = [
    84110,
    42055,
    234308,
    117154,
    58577,
    242447,
    137440,
    68720,
    34360,
    17180,
    8590,
    4295,
    248068,
    124034,
    62017,
    243783,
    138564,
    69282,
    34641,
    230095,
]
_GALOIS_ERR = [
    -1,
    0,
    1,
    1,
    -1,
    0,
    1,
    2,
    3,
    2,
    -1,
    -1,
    1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    2,
    -1,
    2,
    -1,
    -1,
    -1,
    -1,
    -1,
    3,
    -1,
    -1,
    3,
    -1,
    0,
    3,
    2,
    -1,
    1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    3,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
    -1,
]
_GALOIS_MSG = {
    3: (8,),
    7: (7, 17),
    8: (8, 13),
    9: (14,),
    20: (13,),
    22: (2, 7),
    28: (6, 9),
    31: (3, 6, 11),
    34: (2, 11),
    35: (10, 18),
    37: (0,),
    52: (4,),
}


def _golden_words(dmat: np.ndarray) -> np.ndarray:
    """60 received parity words: noisy parities of random supports, then random words."""
    n, t = 20, 3
    rng = np.random.default_rng(3)
    n_par = dmat.shape[0]
    ks = np.zeros((40, n), dtype=int)
    for i in range(40):
        ks[i, rng.choice(n, size=rng.integers(0, t + 3), replace=False)] = 1
    words = (ks @ dmat.T) % 2 ^ (rng.random((40, n_par)) < 0.05)
    return np.vstack([words, rng.integers(0, 2, size=(20, n_par))]).astype(np.uint8)


def test_generator_delays_and_decoder_equal_galois_reference() -> None:
    """Generator, delay matrix and decode results (failures included) equal galois.BCH's."""
    code = make_bch_code(20, 3)
    assert (code.n_code, code.k_code) == (63, 45)
    assert code.generator == _GALOIS_GEN
    cols = code.delay_matrix()[1:].T.astype(int)  # (n, P), bit p is row p, MSB first
    got = [int("".join(map(str, c)), 2) for c in cols]
    assert got == _GALOIS_D_COLS
    msgs, n_err = code.decode_parity(_golden_words(code.delay_matrix()[1:].astype(int)))
    np.testing.assert_array_equal(n_err, _GALOIS_ERR)
    for i, row in enumerate(msgs):
        assert tuple(np.flatnonzero(row)) == _GALOIS_MSG.get(i, ()), i


@pytest.mark.skipif(
    not os.environ.get("ATTRLENS_LIVE_GALOIS"), reason="slow; set ATTRLENS_LIVE_GALOIS=1"
)
def test_decoder_equals_live_galois() -> None:  # pragma: no cover - opt-in
    galois = pytest.importorskip("galois")
    for m in range(3, 21):
        assert bch._PRIMITIVE_POLY[m] == int(galois.matlab_primitive_poly(2, m)), m
    code = make_bch_code(20, 3)
    ref = galois.BCH(code.n_code, d=7)
    assert int(ref.generator_poly) == code.generator
    words = _golden_words(code.delay_matrix()[1:].astype(int))
    full = np.hstack([np.zeros((words.shape[0], 20), dtype=int), words.astype(int)])
    ref_msgs, ref_err = ref.decode(galois.GF2(full), errors=True)
    msgs, n_err = code.decode_parity(words)
    np.testing.assert_array_equal(n_err, np.asarray(ref_err))
    np.testing.assert_array_equal(msgs, np.asarray(ref_msgs).astype(bool))


def test_delay_rows_are_parity_bits() -> None:
    code = make_bch_code(64, 5)
    rng = np.random.default_rng(0)
    ks = _random_supports(rng, 50, 64, 5)
    dmat = code.delay_matrix().astype(int)
    assert dmat.shape == (code.n_parity + 1, 64)
    np.testing.assert_array_equal(dmat[0], 0)
    np.testing.assert_array_equal((ks.astype(int) @ dmat[1:].T) % 2, code.encode_parity(ks))


# t = 12 needs over 63 parity bits (they once overflowed a C long when the code was built)
@pytest.mark.parametrize(("n", "t"), [(64, 5), (1000, 5), (128, 3), (64, 12), (1000, 12)])
def test_hard_decoding_recovers_supports_up_to_t_errors(n: int, t: int) -> None:
    code = make_bch_code(n, t)
    rng = np.random.default_rng(n + t)
    ks = _random_supports(rng, 200, n, t)
    parity = code.encode_parity(ks)
    # extra parity errors keep the total error weight <= t
    noisy = parity.copy()
    for i in range(200):
        spare = t - int(ks[i].sum())
        if spare:
            flip = rng.choice(code.n_parity, size=rng.integers(0, spare + 1), replace=False)
            noisy[i, flip] ^= 1
    msgs, n_err = code.decode_parity(noisy)
    np.testing.assert_array_equal(msgs, ks)
    assert np.all(n_err >= ks.sum(axis=1)) and np.all(n_err <= t)
    _msgs0, n_err0 = code.decode_parity(parity)
    np.testing.assert_array_equal(n_err0, ks.sum(axis=1))


def test_soft_chase_decoding_fixes_unreliable_bits_hard_decoding_cannot() -> None:
    n, t = 128, 5
    code = make_bch_code(n, t)
    k = np.zeros((1, n), dtype=bool)
    k[0, [3, 40, 99]] = True
    sign = 1.0 - 2.0 * code.encode_parity(k).astype(float)  # exact ratios U_p/U_0 = +-1
    bad = np.array([2, 7, 11, 30])  # 3 + 4 = 7 > t errors, all on unreliable bits
    sign[0, bad] *= -0.1
    _hard_msgs, hard_err = code.decode_parity(sign < 0)
    assert hard_err[0] == -1
    soft_msgs, soft_err = code.decode_soft(sign)
    np.testing.assert_array_equal(soft_msgs[0], k[0])
    # first-found decode of k: 2-4 unreliable bits flipped back, 3 + (4 - flipped) errors
    assert 3 <= soft_err[0] <= t
    # with chase depth 0 the soft decoder reduces to hard decoding
    _, err0 = code.decode_soft(sign, chase_depth=0)
    assert err0[0] == -1


def test_bad_arguments_raise_parameter_error() -> None:
    with pytest.raises(ParameterError):
        make_bch_code(0, 5)
    with pytest.raises(ParameterError):
        make_bch_code(10, 0)
    code = make_bch_code(16, 2)
    with pytest.raises(ParameterError, match="chase_depth"):
        code.decode_soft(np.ones((1, code.n_parity)), chase_depth=17)
    with pytest.raises(ParameterError, match="shape"):
        code.decode_parity(np.zeros((2, code.n_parity + 1), dtype=np.uint8))


# galois.BCH(n_code, k_code).t for codes whose generator roots hold more consecutive powers
# than the 2t asked for (computed once with galois 0.4.11; building them there takes ~30 s)
_DESIGNED = {(11, 4): (31, 11, 5), (6, 6): (31, 6, 7), (18, 8): (63, 18, 10),
             (64, 8): (127, 71, 9), (64, 5): (127, 92, 5)}


def _error_patterns(rng: np.random.Generator, code, count: int) -> tuple[np.ndarray, np.ndarray]:
    """Random supports k plus parity flips, total weight <= code.t: (supports, noisy parity)."""
    ks = _random_supports(rng, count, code.n, min(code.t, code.n))
    noisy = code.encode_parity(ks)
    for i in range(count):
        spare = code.t - int(ks[i].sum())
        if spare > 0:
            flip = rng.choice(code.n_parity, size=rng.integers(0, spare + 1), replace=False)
            noisy[i, flip] ^= 1
    return ks, noisy


@pytest.mark.parametrize(("n", "t"), list(_DESIGNED))
def test_decoder_corrects_up_to_the_designed_distance(n: int, t: int) -> None:
    code = make_bch_code(n, t)
    n_code, k_code, t_code = _DESIGNED[(n, t)]
    assert (code.n_code, code.k_code, code.t, code.t_requested) == (n_code, k_code, t_code, t)
    rng = np.random.default_rng(7 * n + t)
    ks, noisy = _error_patterns(rng, code, 300)
    msgs, n_err = code.decode_parity(noisy)
    np.testing.assert_array_equal(msgs, ks)
    assert np.all((n_err >= ks.sum(1)) & (n_err <= t_code))
    if t_code > t:  # words with more than t errors: those a decoder stopping at t refuses
        assert (n_err > t).sum() > 20


def test_decoder_equals_galois_on_random_error_patterns() -> None:
    """galois.BCH(31, 6) (designed distance 15, t = 7): decode words with up to 7 errors (and
    some with more) exactly as galois does, failures included."""
    galois = pytest.importorskip("galois")
    code = make_bch_code(6, 6)
    ref = galois.BCH(code.n_code, code.k_code)
    assert ref.t == code.t == 7
    assert int(ref.generator_poly) == code.generator
    rng = np.random.default_rng(3)
    ks, noisy = _error_patterns(rng, code, 60)
    heavy = rng.integers(0, 2, size=(20, code.n_parity)).astype(np.uint8)  # mostly > t
    words = np.vstack([noisy, heavy])
    full = np.hstack([np.zeros((words.shape[0], code.n), dtype=int), words.astype(int)])
    ref_msgs, ref_err = ref.decode(galois.GF2(full), errors=True)
    msgs, n_err = code.decode_parity(words)
    np.testing.assert_array_equal(n_err, np.asarray(ref_err))
    np.testing.assert_array_equal(msgs, np.asarray(ref_msgs).astype(bool))
    np.testing.assert_array_equal(msgs[:60], ks)
