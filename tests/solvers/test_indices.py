"""Index conversions against brute force on full 2^n enumerations (n <= 8)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from attrlens.errors import InputError, ParameterError
from attrlens.solvers.indices import (
    banzhaf_values,
    fourier_to_mobius,
    interaction_index,
    mobius_to_bii,
    mobius_to_fbii,
    mobius_to_fourier,
    mobius_to_fsii,
    mobius_to_index,
    mobius_to_ksii,
    mobius_to_sii,
    mobius_to_stii,
    shapley_values,
)

N = 6


# ---------------------------------------------------------------- brute force
def _all_masks(n: int) -> np.ndarray:
    return np.array(list(itertools.product([0, 1], repeat=n)), dtype=bool)


def _subsets_of(n: int, max_size: int | None = None) -> list[tuple[int, ...]]:
    top = n if max_size is None else max_size
    return [s for r in range(top + 1) for s in itertools.combinations(range(n), r)]


class Game:
    """A dense game on n players: v as a dict {frozenset: value}."""

    def __init__(self, values: np.ndarray, n: int):
        self.n = n
        self.masks = _all_masks(n)
        self.v = {frozenset(np.flatnonzero(z)): float(x) for z, x in zip(self.masks, values)}
        self.values = values

    def __call__(self, s) -> float:
        return self.v[frozenset(s)]

    def delta(self, s: tuple[int, ...], t: frozenset) -> float:
        """Discrete derivative Delta_S v(T) = sum_{L subset S} (-1)^(|S|-|L|) v(T u L)."""
        return sum(
            (-1) ** (len(s) - r) * self(t | set(sub))
            for r in range(len(s) + 1)
            for sub in itertools.combinations(s, r)
        )

    def complements(self, s: tuple[int, ...]):
        rest = [i for i in range(self.n) if i not in s]
        for r in range(len(rest) + 1):
            for sub in itertools.combinations(rest, r):
                yield frozenset(sub)


def brute_fourier(game: Game) -> dict[tuple[int, ...], float]:
    z = game.masks.astype(int)
    h = (-1.0) ** (z @ z.T)  # rows: k, cols: z (z and k enumerate the same set)
    f = h @ game.values / 2**game.n
    return {tuple(np.flatnonzero(k)): float(x) for k, x in zip(game.masks, f)}


def brute_mobius(game: Game) -> dict[tuple[int, ...], float]:
    return {s: game.delta(s, frozenset()) for s in _subsets_of(game.n)}


def brute_shapley(game: Game) -> np.ndarray:
    n = game.n
    phi = np.zeros(n)
    for i in range(n):
        for t in game.complements((i,)):
            w = math.factorial(len(t)) * math.factorial(n - len(t) - 1) / math.factorial(n)
            phi[i] += w * (game(t | {i}) - game(t))
    return phi


def brute_banzhaf(game: Game) -> np.ndarray:
    n = game.n
    return np.array(
        [
            sum(game(t | {i}) - game(t) for t in game.complements((i,))) / 2 ** (n - 1)
            for i in range(n)
        ]
    )


def brute_sii(game: Game) -> dict:
    n = game.n
    out = {}
    for s in _subsets_of(n):
        out[s] = sum(
            math.factorial(n - len(t) - len(s))
            * math.factorial(len(t))
            / math.factorial(n - len(s) + 1)
            * game.delta(s, t)
            for t in game.complements(s)
        )
    return out


def brute_bii(game: Game) -> dict:
    n = game.n
    return {
        s: sum(game.delta(s, t) for t in game.complements(s)) / 2 ** (n - len(s))
        for s in _subsets_of(n)
    }


def brute_stii(game: Game, order: int) -> dict:
    n = game.n
    out = {}
    for s in _subsets_of(n, order):
        if len(s) < order:
            out[s] = game.delta(s, frozenset())
        else:
            out[s] = (
                order
                / n
                * sum(game.delta(s, t) / math.comb(n - 1, len(t)) for t in game.complements(s))
            )
    return out


def _presence_design(masks: np.ndarray, terms: list[tuple[int, ...]]) -> np.ndarray:
    return np.array([[float(all(z[i] for i in s)) for s in terms] for z in masks])


def brute_fbii(game: Game, order: int) -> dict:
    """argmin_I sum_z (v(z) - sum_{S subset z, |S| <= l} I(S))^2 (uniform weights)."""
    terms = _subsets_of(game.n, order)
    x = _presence_design(game.masks, terms)
    coef, *_ = np.linalg.lstsq(x, game.values, rcond=None)
    return dict(zip(terms, coef))


def brute_fsii(game: Game, order: int) -> dict:
    """Shapley-kernel weighted least squares with v(empty) and v(all) fitted exactly (KKT)."""
    n = game.n
    terms = _subsets_of(n, order)
    x = _presence_design(game.masks, terms)
    size = game.masks.sum(axis=1)
    inner = (size > 0) & (size < n)
    w = np.zeros(len(size))
    w[inner] = (n - 1) / (
        np.array([math.comb(n, s) for s in size[inner]]) * size[inner] * (n - size[inner])
    )
    a_eq = x[~inner]
    b_eq = game.values[~inner]
    xtwx = x.T @ (w[:, None] * x)
    kkt = np.block([[2 * xtwx, a_eq.T], [a_eq, np.zeros((a_eq.shape[0], a_eq.shape[0]))]])
    rhs = np.concatenate([2 * x.T @ (w * game.values), b_eq])
    sol = np.linalg.solve(kkt, rhs)
    return dict(zip(terms, sol[: len(terms)]))


def brute_ksii(game: Game, order: int) -> dict:
    """k-SII by its definition (Bordt & von Luxburg 2023): the brute-force SII aggregated
    with Bernoulli numbers B_0 = 1, B_1 = -1/2, B_2 = 1/6, B_3 = 0, B_4 = -1/30, B_5 = 0;
    the empty set carries the baseline v(0) (shapiq's convention)."""
    bern = [1.0, -0.5, 1.0 / 6.0, 0.0, -1.0 / 30.0, 0.0, 1.0 / 42.0]
    sii = brute_sii(game)
    out = {(): game(())}
    for s in _subsets_of(game.n, order):
        if s:
            out[s] = sum(bern[len(r) - len(s)] * v for r, v in sii.items()
                         if len(r) <= order and set(s) <= set(r))
    return out


def _dense(d: dict, keys: list[tuple[int, ...]]) -> np.ndarray:
    return np.array([d.get(k, 0.0) for k in keys])


@pytest.fixture(scope="module")
def game() -> Game:
    rng = np.random.default_rng(7)
    return Game(rng.normal(size=2**N), N)


@pytest.fixture(scope="module")
def fourier(game: Game) -> dict:
    return brute_fourier(game)


@pytest.fixture(scope="module")
def mobius(fourier: dict) -> dict:
    return fourier_to_mobius(fourier)


# ---------------------------------------------------------------- tests
def test_fourier_to_mobius_equals_brute_force(game: Game, mobius: dict) -> None:
    keys = _subsets_of(N)
    np.testing.assert_allclose(_dense(mobius, keys), _dense(brute_mobius(game), keys), atol=1e-10)


def test_mobius_to_fourier_round_trip(fourier: dict, mobius: dict) -> None:
    keys = _subsets_of(N)
    np.testing.assert_allclose(
        _dense(mobius_to_fourier(mobius), keys), _dense(fourier, keys), atol=1e-12
    )


def test_mobius_reconstructs_game(game: Game, mobius: dict) -> None:
    for s, val in game.v.items():
        pred = sum(a for k, a in mobius.items() if set(k) <= s)
        assert pred == pytest.approx(val, abs=1e-10)


def test_shapley_closed_form_and_efficiency(game: Game, fourier: dict) -> None:
    phi = shapley_values(fourier, N)
    np.testing.assert_allclose(phi, brute_shapley(game), atol=1e-10)
    assert phi.sum() == pytest.approx(game(range(N)) - game(()), abs=1e-10)


def test_banzhaf_closed_form(game: Game, fourier: dict) -> None:
    np.testing.assert_allclose(banzhaf_values(fourier, N), brute_banzhaf(game), atol=1e-10)


def test_sii_and_bii_equal_definitions(game: Game, mobius: dict) -> None:
    keys = _subsets_of(N)
    np.testing.assert_allclose(
        _dense(mobius_to_sii(mobius), keys), _dense(brute_sii(game), keys), atol=1e-10
    )
    np.testing.assert_allclose(
        _dense(mobius_to_bii(mobius), keys), _dense(brute_bii(game), keys), atol=1e-10
    )


@pytest.mark.parametrize("order", [1, 2, 3])
def test_stii_equals_definition(game: Game, mobius: dict, order: int) -> None:
    keys = _subsets_of(N, order)
    got = mobius_to_stii(mobius, order)
    assert all(len(k) <= order for k in got)
    np.testing.assert_allclose(_dense(got, keys), _dense(brute_stii(game, order), keys), atol=1e-10)
    # efficiency: STII sums to v(N) - v(empty) + v(empty)
    assert sum(got.values()) == pytest.approx(game(range(N)), abs=1e-10)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_fbii_equals_uniform_least_squares(game: Game, mobius: dict, order: int) -> None:
    keys = _subsets_of(N, order)
    got = mobius_to_fbii(mobius, order)
    np.testing.assert_allclose(_dense(got, keys), _dense(brute_fbii(game, order), keys), atol=1e-9)


@pytest.mark.parametrize("order", [1, 2, 3])
def test_fsii_equals_shapley_weighted_least_squares(game: Game, mobius: dict, order: int) -> None:
    keys = _subsets_of(N, order)
    got = mobius_to_fsii(mobius, order)
    np.testing.assert_allclose(_dense(got, keys), _dense(brute_fsii(game, order), keys), atol=1e-9)


def test_fsii_order_one_is_shapley(fourier: dict, mobius: dict) -> None:
    got = mobius_to_fsii(mobius, 1)
    np.testing.assert_allclose(
        [got.get((i,), 0.0) for i in range(N)], shapley_values(fourier, N), atol=1e-10
    )


def test_sparse_spectrum_at_n8_against_brute_force() -> None:
    """A sparse low-order spectrum on n = 8: conversions see only its support."""
    n = 8
    coeffs = {(): 0.5, (1,): -1.0, (2, 5): 0.75, (0, 3, 7): -0.4, (4,): 0.2}
    z = _all_masks(n).astype(int)
    vals = np.zeros(len(z))
    for k, f in coeffs.items():
        vals += f * (-1.0) ** z[:, list(k)].sum(axis=1)
    g = Game(vals, n)
    np.testing.assert_allclose(shapley_values(coeffs, n), brute_shapley(g), atol=1e-10)
    np.testing.assert_allclose(banzhaf_values(coeffs, n), brute_banzhaf(g), atol=1e-10)
    mob = fourier_to_mobius(coeffs)
    keys = _subsets_of(n)
    np.testing.assert_allclose(_dense(mob, keys), _dense(brute_mobius(g), keys), atol=1e-10)
    assert max(len(k) for k in mob) == 3


def test_dispatchers_and_errors(fourier: dict, mobius: dict) -> None:
    keys = _subsets_of(N, 2)
    np.testing.assert_allclose(
        _dense(interaction_index(fourier, "FSII", order=2), keys),
        _dense(mobius_to_fsii(mobius, 2), keys),
    )
    np.testing.assert_allclose(
        _dense(mobius_to_index(mobius, "sii"), keys), _dense(mobius_to_sii(mobius), keys)
    )
    assert interaction_index(fourier, "fourier") == fourier
    with pytest.raises(ParameterError, match="Did you mean 'fsii'"):
        interaction_index(fourier, "fsi", order=2)
    with pytest.raises(ParameterError, match="order"):
        mobius_to_index(mobius, "stii")
    with pytest.raises(InputError, match="sorted tuples"):
        fourier_to_mobius({(3, 1): 1.0})
    with pytest.raises(InputError, match="n=2"):
        shapley_values({(5,): 1.0}, 2)


@pytest.mark.parametrize("n", [3, 5, 6])
def test_ksii_equals_bernoulli_aggregated_sii(n: int) -> None:
    g = Game(np.random.default_rng(n).normal(size=2**n), n)
    mob = fourier_to_mobius(brute_fourier(g))
    full = g(range(n)) - g(())
    for order in range(1, n + 1):
        got = mobius_to_ksii(mob, order)
        want = brute_ksii(g, order)
        keys = _subsets_of(n, order)
        np.testing.assert_allclose(_dense(got, keys), _dense(want, keys), atol=1e-9)
        assert all(len(k) <= order for k in got)
        # efficiency: the non-empty k-SII values add up to v(1) - v(0)
        assert sum(v for k, v in got.items() if k) == pytest.approx(full, abs=1e-9)
        assert got[()] == pytest.approx(g(()), abs=1e-12)
    # order 1 = Shapley values, order n = the Moebius transform
    np.testing.assert_allclose(_dense(mobius_to_ksii(mob, 1), [(i,) for i in range(n)]),
                               brute_shapley(g), atol=1e-9)
    keys = _subsets_of(n)
    np.testing.assert_allclose(_dense(mobius_to_ksii(mob, n), keys), _dense(mob, keys), atol=1e-9)
    assert interaction_index(brute_fourier(g), "ksii", order=2).keys() == mobius_to_ksii(
        mob, 2).keys()
