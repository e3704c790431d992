"""Tests of the batched OT solvers (IPOT, log-domain Sinkhorn, exact EMD via POT)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pot = pytest.importorskip("ot")

from attrlens.errors import InputError, ParameterError
from attrlens.solvers.ot import cosine_cost, ot_distance, solve_ot


@pytest.fixture(autouse=True)
def _one_torch_thread():
    # The test machine is shared and oversubscribed; two OpenMP threads spinning against
    # other processes make these small problems 10-30x slower.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _exact(p: np.ndarray, q: np.ndarray, c: np.ndarray) -> np.ndarray:
    return np.array([pot.emd2(p[i], q[i], c[i]) for i in range(len(p))])


def _problems(kind: str, b: int, n: int, rng: np.random.Generator):
    """Random problem classes of the kind GiLOT solves (cosine costs in [0, 2])."""
    if kind == "euclidean":
        x = rng.normal(size=(b, n, 2))
        y = rng.normal(size=(b, n, 2)) + 0.5
        c = np.linalg.norm(x[:, :, None] - y[:, None], axis=-1)
        c = 2 * c / c.max(axis=(1, 2), keepdims=True)
        return rng.dirichlet(np.ones(n), b), rng.dirichlet(np.ones(n), b), c
    c = cosine_cost(rng.normal(size=(b, n, 16)))
    if kind == "dirichlet":
        return rng.dirichlet(np.ones(n), b), rng.dirichlet(np.ones(n), b), c
    if kind == "sparse":
        return rng.dirichlet(0.1 * np.ones(n), b), rng.dirichlet(0.1 * np.ones(n), b), c
    # "softmax": peaked next-token-like distributions and a perturbed copy
    logits = 3 * rng.normal(size=(b, n))
    p = np.exp(logits)
    q = np.exp(logits + rng.normal(size=(b, n)))
    return p / p.sum(1, keepdims=True), q / q.sum(1, keepdims=True), c


def _naive_gilot_ipot(c, a1, a2, beta=1.0, max_iter=1000):
    """The textbook IPOT loop (one problem), written out as the reference."""
    c = torch.as_tensor(c)
    a1 = torch.as_tensor(a1) + 1e-4
    a2 = torch.as_tensor(a2) + 1e-4
    n = len(a1)
    v = torch.ones(n, dtype=torch.float64)
    plan = torch.ones(n, n, dtype=torch.float64) / n**2
    g = torch.exp(-c / beta)
    for _ in range(max_iter):
        q = g * plan
        u = a1 / (q @ v)
        v = a2 / (q.T @ u)
        plan = u[:, None] * q * v[None, :]
    return float((plan * c).sum())


# ---- accuracy against exact EMD -------------------------------------------------------


@pytest.mark.parametrize("kind", ["dirichlet", "sparse", "softmax", "euclidean"])
@pytest.mark.parametrize("n", [5, 50, 200])
def test_ipot_within_2_percent_of_exact_emd(kind, n):
    rng = np.random.default_rng(100 + n)
    p, q, c = _problems(kind, 3, n, rng)
    exact = _exact(p, q, c)
    ipot = ot_distance(p, q, c, method="ipot", beta=1.0, max_iter=1000, smoothing=0.0)
    np.testing.assert_allclose(ipot, exact, rtol=0.02)


@pytest.mark.parametrize("kind", ["dirichlet", "sparse", "softmax"])
def test_ipot_with_gilot_smoothing_within_2_percent_on_zero_diagonal_costs(kind):
    # GiLOT's +1e-4 on both marginals lands on the zero-cost diagonal, so it is free.
    rng = np.random.default_rng(7)
    p, q, c = _problems(kind, 3, 200, rng)
    np.testing.assert_allclose(ot_distance(p, q, c), _exact(p, q, c), rtol=0.02)


# Default eps = 0.01 on cosine costs (max error seen over 20 problems per cell: 1.1%).
# Euclidean point clouds have near neighbours ~0.05 apart, so eps = 0.01 blurs them (up to
# 3.3% at N = 200); eps = 0.003 with 2000 iterations stays below 0.6%.
@pytest.mark.parametrize(
    "kind,eps,max_iter",
    [("dirichlet", 0.01, 1000), ("softmax", 0.01, 1000), ("euclidean", 0.003, 2000)],
)
@pytest.mark.parametrize("n", [5, 50, 200])
def test_sinkhorn_within_2_percent_of_exact_emd(kind, eps, max_iter, n):
    rng = np.random.default_rng(200 + n)
    p, q, c = _problems(kind, 2, n, rng)
    sink = ot_distance(p, q, c, method="sinkhorn", eps=eps, max_iter=max_iter)
    np.testing.assert_allclose(sink, _exact(p, q, c), rtol=0.02)


def test_sinkhorn_error_shrinks_with_eps():
    rng = np.random.default_rng(3)
    p, q, c = _problems("euclidean", 2, 40, rng)
    exact = _exact(p, q, c)
    errs = [
        np.abs(ot_distance(p, q, c, method="sinkhorn", eps=e, max_iter=1500) - exact).max()
        for e in (0.2, 0.05, 0.01)
    ]
    assert errs[0] > errs[1] > errs[2]


def test_exact_matches_pot():
    rng = np.random.default_rng(4)
    p, q, c = _problems("dirichlet", 3, 30, rng)
    np.testing.assert_allclose(ot_distance(p, q, c, method="exact"), _exact(p, q, c), atol=1e-12)


def test_ipot_equals_the_textbook_gilot_loop():
    # The solver keeps the plan in factored form; the iterates must be those of GiLOT's loop.
    rng = np.random.default_rng(5)
    p, q, c = _problems("softmax", 2, 20, rng)
    for beta in (1.0, 0.3):
        ours = ot_distance(p, q, c, beta=beta, max_iter=300)
        ref = [_naive_gilot_ipot(c[i], p[i], q[i], beta=beta, max_iter=300) for i in range(2)]
        np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-14)


def test_ipot_small_beta_stays_finite():
    rng = np.random.default_rng(1)
    p, q, c = _problems("dirichlet", 4, 5, rng)
    d = ot_distance(p, q, c, beta=0.05, max_iter=1000, smoothing=0.0)
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, _exact(p, q, c), rtol=0.05)


# ---- plans and marginals --------------------------------------------------------------


def test_plan_marginals():
    rng = np.random.default_rng(6)
    p, q, c = _problems("dirichlet", 2, 25, rng)
    _, plan = ot_distance(p, q, c, method="exact", return_plan=True)
    np.testing.assert_allclose(plan.sum(-1), p, atol=1e-12)
    np.testing.assert_allclose(plan.sum(-2), q, atol=1e-12)

    _, plan = ot_distance(
        p, q, c, method="sinkhorn", eps=0.05, tol=1e-10, max_iter=5000, return_plan=True
    )
    np.testing.assert_allclose(plan.sum(-1), p, atol=1e-9)
    np.testing.assert_allclose(plan.sum(-2), q, atol=1e-12)

    # IPOT: the column marginal is exact after each v-step; the row marginal converges.
    _, plan = ot_distance(p, q, c, smoothing=0.0, return_plan=True)
    np.testing.assert_allclose(plan.sum(-2), q, atol=1e-12)
    np.testing.assert_allclose(plan.sum(-1), p, atol=1e-4)
    # GiLOT smoothing: marginals are p + 1e-4, q + 1e-4 (not renormalised)
    _, plan = ot_distance(p, q, c, return_plan=True)
    np.testing.assert_allclose(plan.sum(-2), q + 1e-4, atol=1e-12)
    assert plan.sum() == pytest.approx(2 * (1 + 25e-4), abs=1e-4)


def test_plan_distance_is_plan_times_cost():
    rng = np.random.default_rng(8)
    p, q, c = _problems("dirichlet", 2, 10, rng)
    for method in ("ipot", "sinkhorn", "exact"):
        d, plan = ot_distance(p, q, c, method=method, return_plan=True)
        np.testing.assert_allclose(d, (plan * c).sum((-1, -2)), rtol=1e-12)


# ---- basic properties -----------------------------------------------------------------


def test_identical_distributions_have_zero_distance():
    rng = np.random.default_rng(9)
    p, _, c = _problems("dirichlet", 2, 30, rng)
    assert np.abs(ot_distance(p, p, c, method="exact")).max() < 1e-12
    assert np.abs(ot_distance(p, p, c, method="ipot")).max() < 1e-6
    # the entropic plan spreads a little mass off the diagonal: small, not zero
    assert np.abs(ot_distance(p, p, c, method="sinkhorn", eps=0.01)).max() < 5e-3
    different = ot_distance(p, p[::-1], c, method="ipot")
    assert different.min() > 1e-2


def test_symmetric_cost_gives_symmetric_distance():
    rng = np.random.default_rng(10)
    p, q, c = _problems("dirichlet", 3, 40, rng)
    # IPOT is symmetric only in the limit; after 1000 iterations to ~1e-4.
    for method, kw, rtol in (
        ("exact", {}, 1e-12),
        ("ipot", {}, 1e-4),
        ("sinkhorn", {"eps": 0.05, "tol": 1e-11, "max_iter": 5000}, 1e-8),
    ):
        np.testing.assert_allclose(
            ot_distance(p, q, c, method=method, **kw),
            ot_distance(q, p, c, method=method, **kw),
            rtol=rtol,
        )


def test_batched_equals_looped_and_chunking_does_not_matter():
    rng = np.random.default_rng(11)
    p, q, c = _problems("softmax", 5, 15, rng)
    for method in ("ipot", "sinkhorn", "exact"):
        batched = ot_distance(p, q, c, method=method, max_iter=200)
        looped = [ot_distance(p[i], q[i], c[i], method=method, max_iter=200) for i in range(5)]
        np.testing.assert_allclose(batched, looped, rtol=1e-12)
    one = ot_distance(p, q, c, max_iter=200, chunk_size=1)
    allin = ot_distance(p, q, c, max_iter=200, chunk_size=5)
    np.testing.assert_allclose(one, allin, rtol=1e-12)


def test_shared_cost_broadcasts_over_the_batch():
    rng = np.random.default_rng(12)
    p, q, c = _problems("dirichlet", 4, 12, rng)
    shared = ot_distance(p, q, c[0])
    expanded = ot_distance(p, q, np.broadcast_to(c[0], c.shape).copy())
    np.testing.assert_allclose(shared, expanded, rtol=1e-12)
    assert shared.shape == (4,)
    # extra leading dimensions are kept
    grid = ot_distance(p.reshape(2, 2, 12), q.reshape(2, 2, 12), c[0])
    assert grid.shape == (2, 2)
    np.testing.assert_allclose(grid.reshape(-1), shared, rtol=1e-12)


@pytest.mark.parametrize("method", ["ipot", "sinkhorn", "exact"])
def test_zero_mass_padding_equals_the_unpadded_problem(method):
    rng = np.random.default_rng(13)
    n, small = 12, 7
    p, q, c = _problems("dirichlet", 2, n, rng)
    ps = rng.dirichlet(np.ones(small))
    qs = rng.dirichlet(np.ones(small))
    pp, qq = p.copy(), q.copy()
    pp[1] = 0.0
    qq[1] = 0.0
    pp[1, :small], qq[1, :small] = ps, qs
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no log(0) / 0-division warnings
        d, plan = ot_distance(pp, qq, c, method=method, return_plan=True)
    assert np.isfinite(d).all() and np.isfinite(plan).all()
    alone = ot_distance(ps, qs, c[1, :small, :small], method=method)
    np.testing.assert_allclose(d[1], alone, rtol=1e-10)
    np.testing.assert_allclose(d[0], ot_distance(p[0], q[0], c[0], method=method), rtol=1e-10)
    assert np.abs(plan[1, small:, :]).max() == 0.0
    assert np.abs(plan[1, :, small:]).max() == 0.0


def test_explicit_masks_keep_smoothing_off_padding():
    rng = np.random.default_rng(14)
    p, q, c = _problems("dirichlet", 1, 6, rng)
    p[0, 4:] = 0.0
    q[0, 4:] = 0.0
    p /= p.sum()
    q /= q.sum()
    mask = np.array([[True] * 4 + [False] * 2])
    d = ot_distance(p, q, c, mask_p=mask, mask_q=mask)
    np.testing.assert_allclose(d, ot_distance(p[:, :4], q[:, :4], c[:, :4, :4]), rtol=1e-10)
    with pytest.raises(InputError, match="outside its mask"):
        ot_distance(q[:, ::-1].copy(), q, c, mask_p=mask, mask_q=mask)


def test_rectangular_problem():
    rng = np.random.default_rng(15)
    p = rng.dirichlet(np.ones(6), 2)
    q = rng.dirichlet(np.ones(9), 2)
    c = rng.random((2, 6, 9)) * 2
    exact = _exact(p, q, c)
    np.testing.assert_allclose(ot_distance(p, q, c, method="exact"), exact, atol=1e-12)
    np.testing.assert_allclose(ot_distance(p, q, c, smoothing=0.0), exact, rtol=0.02)


# ---- input/output kinds, convergence reporting and errors -----------------------------


def test_numpy_in_numpy_out_and_torch_in_torch_out():
    rng = np.random.default_rng(16)
    p, q, c = _problems("dirichlet", 2, 8, rng)
    single = ot_distance(p[0], q[0], c[0])
    assert isinstance(single, float)
    assert isinstance(ot_distance(p, q, c), np.ndarray)
    t = ot_distance(torch.tensor(p), torch.tensor(q), torch.tensor(c))
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float64 and t.shape == (2,)
    np.testing.assert_allclose(t.numpy(), ot_distance(p, q, c), rtol=1e-12)
    t0 = ot_distance(torch.tensor(p[0]), q[0], c[0])
    assert isinstance(t0, torch.Tensor) and t0.dim() == 0
    # float32 input is computed in float64
    t32 = ot_distance(torch.tensor(p, dtype=torch.float32), torch.tensor(q), torch.tensor(c))
    assert t32.dtype == torch.float64


def test_tolerance_stops_early_and_reports_convergence():
    rng = np.random.default_rng(17)
    p, q, c = _problems("dirichlet", 3, 10, rng)
    res = solve_ot(p, q, c, method="sinkhorn", eps=0.1, tol=1e-8, max_iter=5000)
    assert bool(res.converged.all())
    assert res.n_iter < 5000
    assert float(res.marginal_error.max()) <= 1e-8
    res = solve_ot(p, q, c, method="ipot", tol=1e-5, max_iter=5000)
    assert bool(res.converged.all()) and res.n_iter < 5000
    assert solve_ot(p, q, c).converged is None


def test_non_convergence_warns_names_the_knob_and_returns_best_iterate():
    rng = np.random.default_rng(18)
    p, q, c = _problems("softmax", 2, 30, rng)
    with pytest.warns(RuntimeWarning, match="max_iter"):
        res = solve_ot(p, q, c, method="sinkhorn", eps=0.002, tol=1e-12, max_iter=80)
    assert not bool(res.converged.any())
    assert np.isfinite(res.distance.numpy()).all()
    with pytest.warns(RuntimeWarning, match="max_iter"):
        res = solve_ot(p, q, c, method="ipot", tol=1e-14, max_iter=20)
    assert not bool(res.converged.any())


def test_errors():
    p = np.full(3, 1 / 3)
    c = np.ones((3, 3))
    with pytest.raises(ParameterError, match="'method'"):
        ot_distance(p, p, c, method="emd")
    with pytest.raises(ParameterError, match="'beta'"):
        ot_distance(p, p, c, beta=0.0)
    with pytest.raises(ParameterError, match="'max_iter'"):
        ot_distance(p, p, c, max_iter=0)
    with pytest.raises(InputError, match="Shape mismatch"):
        ot_distance(p, p, np.ones((3, 4)))
    with pytest.raises(InputError, match="non-negative"):
        ot_distance(np.array([1.5, -0.5, 0.0]), p, c)
    with pytest.raises(InputError, match="NaN"):
        ot_distance(p, p, np.full((3, 3), np.nan))
    with pytest.raises(InputError, match="equal total mass"):
        ot_distance(p, 2 * p, c, method="exact")
    with pytest.raises(InputError, match="positive total mass"):
        ot_distance(np.zeros(3), np.zeros(3), c, smoothing=0.0)
    # IPOT accepts unequal masses (GiLOT's smoothed marginals are not renormalised)
    assert np.isfinite(ot_distance(p, 2 * p, c))


# ---- cosine cost ----------------------------------------------------------------------


def test_cosine_cost():
    rng = np.random.default_rng(19)
    e = rng.normal(size=(6, 4))
    c = cosine_cost(e)
    un = e / np.linalg.norm(e, axis=1, keepdims=True)
    np.testing.assert_allclose(c, 1 - un @ un.T, atol=1e-12)
    assert np.all(np.diag(c) == 0.0)
    assert c.min() >= 0.0 and c.max() <= 2.0
    np.testing.assert_allclose(cosine_cost(e, half=True), c / 2, atol=1e-12)
    # antipodal vectors hit the upper end of both ranges
    pair = np.array([[1.0, 0.0], [-1.0, 0.0]])
    assert cosine_cost(pair)[0, 1] == pytest.approx(2.0)
    assert cosine_cost(pair, half=True)[0, 1] == pytest.approx(1.0)
    # two sets, batched, torch in -> torch out
    f = rng.normal(size=(2, 5, 4))
    g = rng.normal(size=(2, 3, 4))
    ct = cosine_cost(torch.tensor(f), torch.tensor(g))
    assert isinstance(ct, torch.Tensor) and ct.shape == (2, 5, 3)
    np.testing.assert_allclose(ct[1].numpy(), cosine_cost(f[1], g[1]), atol=1e-12)
    with pytest.raises(InputError):
        cosine_cost(e, rng.normal(size=(3, 5)))
