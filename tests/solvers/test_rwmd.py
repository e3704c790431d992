"""Tests of RWMD / WMD and the locality kernel."""

from __future__ import annotations

import numpy as np
import pytest

pot = pytest.importorskip("ot")

from attrlens.errors import InputError, ParameterError
from attrlens.solvers.rwmd import (
    pairwise_cost,
    rwmd,
    rwmd_many,
    wmd,
)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_pairwise_cost_metrics(rng):
    a = rng.normal(size=(4, 3))
    b = rng.normal(size=(5, 3))
    cos = pairwise_cost(a, b)
    na = a / np.linalg.norm(a, axis=1, keepdims=True)
    nb = b / np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(cos, 1 - na @ nb.T, atol=1e-12)
    euc = pairwise_cost(a, b, metric="euclidean")
    np.testing.assert_allclose(euc, np.linalg.norm(a[:, None] - b[None], axis=-1), atol=1e-12)
    self_cost = pairwise_cost(a, metric="euclidean")
    assert np.all(np.diag(self_cost) == 0.0)


def test_rwmd_by_hand():
    # 1-D points, Euclidean: a = {0, 1}, b = {0.25, 3} with uniform weights.
    a = np.array([[0.0], [1.0]])
    b = np.array([[0.25], [3.0]])
    # l1 = (0.25 + 0.75) / 2 = 0.5 ; l2 = (0.25 + 2) / 2 = 1.125
    assert rwmd(a, b, metric="euclidean") == pytest.approx(1.125, abs=1e-12)
    # weights shift the sides: put 0.9 of b's mass on 0.25 -> l2 = 0.9*0.25 + 0.1*2 = 0.425
    d = rwmd(a, b, weights_b=[9, 1], metric="euclidean")
    assert d == pytest.approx(max(0.5, 0.425), abs=1e-12)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_rwmd_is_a_lower_bound_of_wmd(rng, metric):
    for _ in range(25):
        na, nb = rng.integers(1, 12, size=2)
        a = rng.normal(size=(na, 6))
        b = rng.normal(size=(nb, 6))
        wa = rng.random(na) + 0.05
        wb = rng.random(nb) + 0.05
        relaxed = rwmd(a, b, weights_a=wa, weights_b=wb, metric=metric)
        exact = wmd(a, b, weights_a=wa, weights_b=wb, metric=metric)
        assert relaxed <= exact + 1e-12
        assert relaxed > 0


def test_rwmd_identity_and_symmetry(rng):
    a = rng.normal(size=(7, 4))
    b = rng.normal(size=(5, 4))
    assert rwmd(a, a) == pytest.approx(0.0, abs=1e-12)
    assert wmd(a, a) == pytest.approx(0.0, abs=1e-12)
    assert rwmd(a, b) == pytest.approx(rwmd(b, a), abs=1e-12)
    # the bound is tight for single-token documents: both sides move all mass to one point
    one = rng.normal(size=(1, 4))
    assert rwmd(one, b, metric="euclidean") == pytest.approx(
        wmd(one, b, metric="euclidean"), abs=1e-12
    )


def test_wmd_equals_pot_emd_on_the_same_cost(rng):
    a = rng.normal(size=(6, 3))
    b = rng.normal(size=(4, 3))
    wa = rng.random(6)
    wb = rng.random(4)
    cost = pairwise_cost(a, b, metric="euclidean")
    ref = pot.emd2(wa / wa.sum(), wb / wb.sum(), cost)
    assert wmd(a, b, weights_a=wa, weights_b=wb, metric="euclidean") == pytest.approx(
        ref, abs=1e-12
    )


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_rwmd_many_with_keep_masks_equals_the_loop(rng, metric):
    doc0 = rng.normal(size=(15, 5))
    w0 = rng.random(15) + 0.1
    keep = rng.random((40, 15)) < 0.6
    keep[:, 0] = True  # no empty sample
    keep[3] = True  # the full document
    keep[4] = False
    keep[4, 7] = True  # a single kept token
    fast = rwmd_many(doc0, keep_masks=keep, weights0=w0, metric=metric)
    loop = [rwmd(doc0, doc0[k], weights_a=w0, weights_b=w0[k], metric=metric) for k in keep]
    np.testing.assert_allclose(fast, loop, atol=1e-12)
    assert fast[3] == pytest.approx(0.0, abs=1e-12)
    assert fast.shape == (40,)


def test_rwmd_many_sparse_k_case_grows_with_removals(rng):
    doc0 = rng.normal(size=(20, 8))
    keep = np.ones((4, 20), dtype=bool)
    keep[1, :2] = False
    keep[2, :6] = False
    keep[3, :12] = False
    d = rwmd_many(doc0, keep_masks=keep)
    assert d[0] == pytest.approx(0.0, abs=1e-12)
    assert np.all(np.diff(d) > 0)  # nested removals: l1 can only grow


def test_rwmd_many_with_a_list_of_docs(rng):
    doc0 = rng.normal(size=(6, 3))
    docs = [rng.normal(size=(n, 3)) for n in (1, 4, 9)]
    out = rwmd_many(doc0, docs)
    np.testing.assert_allclose(out, [rwmd(doc0, d) for d in docs], atol=1e-12)


def test_rwmd_many_errors(rng):
    doc0 = rng.normal(size=(5, 3))
    with pytest.raises(ParameterError, match="exactly one"):
        rwmd_many(doc0)
    with pytest.raises(ParameterError, match="exactly one"):
        rwmd_many(doc0, [doc0], keep_masks=np.ones((1, 5), dtype=bool))
    empty = np.ones((2, 5), dtype=bool)
    empty[1] = False
    with pytest.raises(InputError, match="row 1 keeps no token"):
        rwmd_many(doc0, keep_masks=empty)
    with pytest.raises(InputError, match="keep_masks"):
        rwmd_many(doc0, keep_masks=np.ones((2, 4), dtype=bool))
    with pytest.raises(ParameterError, match="'metric'"):
        rwmd(doc0, doc0, metric="manhattan")
    with pytest.raises(InputError, match="same embedding size"):
        rwmd(doc0, rng.normal(size=(2, 4)))
    with pytest.raises(InputError, match="non-empty"):
        rwmd(np.zeros((0, 3)), doc0)
    with pytest.raises(InputError, match="weights_a"):
        rwmd(doc0, doc0, weights_a=-np.ones(5))
