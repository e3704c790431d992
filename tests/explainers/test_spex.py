"""SPEX and ProxySPEX through explain_game: planted spectra, budgets, index conversions."""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
import pytest

import attrlens
from attrlens.errors import ParameterError
from attrlens.evaluation.faithfulness import faithfulness_r2
from attrlens.games import Game
from attrlens.registry import get_explainer
from attrlens.result import Attribution


def planted(n: int, n_terms: int, max_deg: int, seed: int) -> dict[tuple[int, ...], float]:
    """A sparse Fourier spectrum: constant + n_terms random supports of degree 1..max_deg."""
    rng = np.random.default_rng(seed)
    coeffs = {(): 0.7}
    while len(coeffs) < n_terms + 1:
        k = tuple(sorted(rng.choice(n, size=int(rng.integers(1, max_deg + 1)), replace=False)))
        coeffs[tuple(int(i) for i in k)] = float(rng.choice([-1, 1]) * rng.uniform(0.5, 2.0))
    return coeffs


def fourier_game(coeffs):
    def fn(masks):
        z = np.asarray(masks, dtype=bool)
        out = np.zeros(len(z))
        for k, f in coeffs.items():
            out += f * (-1.0) ** z[:, list(k)].sum(1) if k else f
        return out

    return fn


def all_masks(n: int) -> np.ndarray:
    return np.array(list(itertools.product([False, True], repeat=n)))


def brute_shapley(fn, n: int) -> np.ndarray:
    z = all_masks(n)
    out = np.zeros(n)
    for i in range(n):
        wo = z[~z[:, i]]
        wi = wo.copy()
        wi[:, i] = True
        s = wo.sum(1)
        w = np.array([math.factorial(k) * math.factorial(n - k - 1) / math.factorial(n) for k in s])
        out[i] = (w * (fn(wi) - fn(wo))).sum()
    return out


def brute_mobius(fn, n: int) -> dict[tuple[int, ...], float]:
    """a(S) = Σ_{T⊆S} (-1)^{|S|-|T|} v(T)."""
    out = {}
    for size in range(n + 1):
        for S in itertools.combinations(range(n), size):
            total = 0.0
            for r in range(size + 1):
                for T in itertools.combinations(S, r):
                    z = np.zeros((1, n), bool)
                    z[0, list(T)] = True
                    total += (-1) ** (size - r) * fn(z)[0]
            out[S] = total
    return out


def brute_faith(fn, n: int, order: int, kind: str) -> dict[tuple[int, ...], float]:
    """Faithful interaction indices by their definition: the best order-ℓ polynomial in the
    presence basis under the Shapley-kernel (FSII, with v(∅), v(N) matched exactly) or the
    uniform (FBII) weighting of all 2^n coalitions."""
    z = all_masks(n)
    subsets = [S for k in range(order + 1) for S in itertools.combinations(range(n), k)]
    X = np.column_stack([z[:, list(S)].all(1) if S else np.ones(len(z)) for S in subsets])
    if kind == "fbii":
        w = np.ones(len(z))
    else:
        s = z.sum(1)
        w = np.full(len(z), 1e9)  # the empty and full coalitions: (near) exact constraints
        inner = (s > 0) & (s < n)
        si = s[inner]
        w[inner] = (n - 1) / (np.array([math.comb(n, k) for k in si]) * si * (n - si))
    sw = np.sqrt(w)
    coef, *_ = np.linalg.lstsq(X * sw[:, None], fn(z) * sw, rcond=None)
    return dict(zip(subsets, coef))


def terms(attr: Attribution) -> dict[tuple[int, ...], float]:
    return {tuple(t["features"]): t["value"] for t in attr.interactions["terms"]}


# ---- SPEX ------------------------------------------------------------------------------
def test_spex_recovers_planted_fourier_terms_and_shapley_scores():
    n = 12
    coeffs = planted(n, 12, 3, seed=0)
    fn = fourier_game(coeffs)
    g = Game(fn, n)
    a = attrlens.explain_game(g, n, method="spex", budget=1344, index="fourier", seed=0)
    assert a.extra["metadata"]["exhaustive"] is False
    assert g.n_calls <= 1344
    assert a.interactions["index"] == "fourier" and a.interactions["order"] is None
    got = terms(a)
    assert set(got) == set(coeffs)
    for k, f in coeffs.items():
        assert got[k] == pytest.approx(f, abs=1e-9)
    assert [] in [t["features"] for t in a.interactions["terms"]]  # the constant term
    np.testing.assert_allclose(a.scores, brute_shapley(fn, n), atol=1e-9)
    assert faithfulness_r2(a, g, n_test=300).r2 == pytest.approx(1.0, abs=1e-9)
    meta = a.extra["metadata"]
    assert meta["b"] == 4 and meta["n_queries"] == 3 * meta["n_delays"] * 16 == 1344
    # Banzhaf scores are -2 F({i}) (positive = the feature raises v)
    bz = attrlens.explain_game(fn, n, method="spex", budget=1344, scores="banzhaf", seed=0)
    np.testing.assert_allclose(bz.scores, [-2 * coeffs.get((i,), 0.0) for i in range(n)],
                               atol=1e-9)


def test_spex_budget_rules():
    cls = get_explainer("spex")
    assert cls.default_target == "logprob" and cls.default_masker == "replace"
    # n = 12, t = 5: BCH(63, 36) shortened, P + 1 = 28 delays, so b = 3 costs 3 * 28 * 8
    assert cls().min_budget(12) == 672
    fn = fourier_game({(): 1.0, (1,): 0.5, (2, 7): -0.25})
    with pytest.raises(ParameterError, match="672"):
        attrlens.explain_game(fn, 12, method="spex", budget=671)
    g = Game(fn, 12)
    a = attrlens.explain_game(g, 12, method="spex", budget=2687)  # 1344 <= 2687 < 2688
    assert a.params["b"] == 4 and g.n_calls <= 1344
    a = attrlens.explain_game(fn, 12, method="spex", budget=2688)
    assert a.params["b"] == 5
    a = attrlens.explain_game(fn, 12, method="spex", b=3)  # b instead of a budget
    assert a.params["b"] == 3 and a.cost["value_calls"] <= 672
    with pytest.raises(ParameterError, match="at least 1344"):
        attrlens.explain_game(fn, 12, method="spex", b=4, budget=600)


def test_spex_small_game_states_and_uses_the_real_count():
    """4 features: enumerating the 16 coalitions is cheaper than any design (504 queries);
    min_budget says 16, the method uses exactly 16 and returns the exact spectrum."""
    cls = get_explainer("spex")
    assert cls().min_budget(4) == 16 and cls().default_budget(4) == 16
    assert cls(b=5).min_budget(4) == 16
    coeffs = {(): 0.3, (0,): 1.0, (1, 3): -0.5, (0, 1, 2): 0.25}
    fn = fourier_game(coeffs)
    g = Game(fn, 4)
    a = attrlens.explain_game(g, 4, method="spex", index="fourier", seed=0)
    assert a.cost["value_calls"] == 16 and g.n_calls == 16 and a.params["budget"] == 16
    assert a.extra["metadata"]["exhaustive"] is True and a.params["b"] is None
    got = terms(a)
    assert set(got) == set(coeffs)
    for k, f in coeffs.items():
        assert got[k] == pytest.approx(f, abs=1e-12)
    np.testing.assert_allclose(a.scores, brute_shapley(fn, 4), atol=1e-12)
    with pytest.raises(ParameterError, match="at least 16"):
        attrlens.explain_game(fn, 4, method="spex", budget=15)
    # n = 10: 1024 coalitions cost more than the b = 4 design (1008) but less than b = 5
    assert cls().min_budget(10) == 504
    b4 = attrlens.explain_game(fourier_game(coeffs), 10, method="spex", budget=1100)
    assert b4.extra["metadata"]["exhaustive"] is False and b4.params["b"] == 4
    b5 = attrlens.explain_game(fourier_game(coeffs), 10, method="spex", budget=2016)
    assert b5.extra["metadata"]["exhaustive"] is True and b5.cost["value_calls"] == 1024


@pytest.mark.parametrize(
    ("params", "name"),
    [({"index": "shap"}, "index"), ({"decoder": "fast"}, "decoder"), ({"b": 2}, "'b'"),
     ({"max_order": 0}, "max_order"), ({"scores": "lime"}, "scores"), ({"order": 0}, "order")],
)
def test_spex_rejects_bad_parameters(params, name):
    with pytest.raises(ParameterError, match=name):
        attrlens.explain_game(fourier_game({(): 1.0}), 6, method="spex", budget=600, **params)


def test_spex_is_deterministic_and_round_trips(tmp_path):
    n = 8
    fn = fourier_game(planted(n, 6, 2, seed=5))
    a = attrlens.explain_game(fn, n, method="spex", budget=2100, seed=4, index="fsii", order=2)
    b = attrlens.explain_game(fn, n, method="spex", budget=2100, seed=4, index="fsii", order=2)
    assert a.interactions == b.interactions
    back = Attribution.load(a.save(tmp_path / "spex.json"))
    assert back.interactions == a.interactions
    np.testing.assert_allclose(back.scores, a.scores, atol=0)
    assert back.extra["metadata"]["surrogate"]["basis"] == "fourier"


# ---- index conversions through explain_game ------------------------------------------------
@pytest.fixture(scope="module")
def spex6():
    n = 6
    coeffs = planted(n, 10, 4, seed=11)
    return n, fourier_game(coeffs)


def test_mobius_index_equals_brute_force(spex6):
    n, fn = spex6
    a = attrlens.explain_game(fn, n, method="spex", budget=2100, index="mobius", seed=0)
    got = terms(a)
    for S, v in brute_mobius(fn, n).items():
        assert got.get(S, 0.0) == pytest.approx(v, abs=1e-8), S


@pytest.mark.parametrize("index", ["fsii", "fbii"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_faithful_indices_equal_brute_force(spex6, index, order):
    n, fn = spex6
    a = attrlens.explain_game(fn, n, method="spex", budget=2100, index=index, order=order)
    assert a.interactions["index"] == index and a.interactions["order"] == order
    got = terms(a)
    for S, v in brute_faith(fn, n, order, index).items():
        assert got.get(S, 0.0) == pytest.approx(v, abs=1e-5), S


def test_shapley_index_and_default_order(spex6):
    n, fn = spex6
    a = attrlens.explain_game(fn, n, method="spex", budget=2100, index="shapley")
    assert a.interactions["order"] == 1
    np.testing.assert_allclose([terms(a).get((i,), 0.0) for i in range(n)], brute_shapley(fn, n),
                               atol=1e-9)
    d = attrlens.explain_game(fn, n, method="spex", budget=2100)  # default: FSII of order 2
    assert d.interactions["index"] == "fsii" and d.interactions["order"] == 2


# ---- ProxySPEX -------------------------------------------------------------------------
def test_proxyspex_fits_a_planted_low_order_game():
    n = 12
    # a hierarchical low-order game (pairs come with their singletons) with a decaying
    # spectrum, the shape ProxySPEX assumes; 95% energy truncation keeps the big terms
    coeffs = {(): 0.5, (0,): -2.0, (3,): 1.5, (0, 3): 1.2, (7,): -0.9, (3, 7): 0.7,
              (10,): 0.5, (0, 10): -0.35, (5,): 0.2}
    fn = fourier_game(coeffs)
    g = Game(fn, n)
    assert get_explainer("proxyspex").default_target == "logprob"
    # 95% of the non-constant energy is first reached at (3, 7): the default keeps it (the
    # terms covering 95%), the reference code's rule keeps only the terms above it; so
    # R² = 1 - (dropped energy / total)
    for cut, kept in (("covering", [(0,), (3,), (0, 3), (7,), (3, 7)]),
                      ("strict", [(0,), (3,), (0, 3), (7,)])):
        a = attrlens.explain_game(g, n, method="proxyspex", budget=400, index="fourier",
                                  seed=0, energy_cut=cut)
        assert a.cost["value_calls"] <= 400
        got = terms(a)
        assert set(got) == {()} | set(kept), cut
        for k in kept:  # (the terms left out, energy 0.41, are noise of sd ~0.03 here)
            assert got[k] == pytest.approx(coeffs[k], abs=0.1), k
        energy = {k: v**2 for k, v in coeffs.items() if k}
        expected = 1 - sum(e for k, e in energy.items() if k not in kept) / sum(energy.values())
        assert faithfulness_r2(a, g, n_test=1000, seed=1).r2 == pytest.approx(expected,
                                                                               abs=0.03)
    # shapiq's smaller LightGBM grid keeps this second fit faster
    full = attrlens.explain_game(g, n, method="proxyspex", budget=400, energy=1.0, grid="small")
    assert faithfulness_r2(full, g, n_test=1000, seed=1).r2 > 0.98
    np.testing.assert_allclose(full.scores, brute_shapley(fn, n), atol=0.1)
    assert a.extra["metadata"]["cv_r2"] > 0.95


# ---- on a language model ---------------------------------------------------------------
def test_spex_explains_a_model_output_with_the_logprob_target(tiny_model):
    seen = []
    a = attrlens.explain("The quick brown fox jumps over the lazy dog.", model=tiny_model,
                         method="spex", b=3, target="logprob", output=" Paris", chat=False,
                         index="fourier", progress=lambda d, t: seen.append((d, t)))
    n = a.n_features
    assert n == 9 and a.cost["value_calls"] <= get_explainer("spex")().min_budget(n)
    assert np.all(np.isfinite(a.scores)) and a.interactions["index"] == "fourier"
    assert seen and seen[-1][0] == seen[-1][1]  # progress reached queries done == total
    # the Shapley scores are those of the recovered dictionary (closed form, METHODS §0)
    coeffs = {tuple(t["features"]): t["value"] for t in a.interactions["terms"]}
    phi = np.zeros(n)
    for k, f in coeffs.items():
        if len(k) % 2:
            phi[list(k)] += -2 * f / len(k)
    np.testing.assert_allclose(a.scores, phi, atol=1e-9)



def test_proxyspex_on_a_tiny_game_uses_the_exact_spectrum():
    w = np.array([1.0, -2.0, 0.5])
    fn = lambda m: m.astype(float) @ w + 0.25 * m[:, 0] * m[:, 2]
    a = attrlens.explain_game(fn, 3, method="proxyspex", budget=64, energy=1.0)
    assert a.extra["metadata"]["exhaustive"] is True
    assert get_explainer("proxyspex")().min_budget(3) == 8 and a.cost["value_calls"] == 8
    np.testing.assert_allclose(a.scores, brute_shapley(fn, 3), atol=1e-9)


@pytest.mark.parametrize("n", [5, 6, 8])
def test_proxyspex_with_every_coalition_evaluated_is_exact(n):
    """The default budget covers all 2^n coalitions up to n = 10; at n = 5 the trees got 32
    rows, fitted a constant and scored every feature 0, and at n = 6 / 8 the energy cut
    dropped one of several equal features."""
    rng = np.random.default_rng(n)
    w = rng.normal(size=n)
    fn = lambda m: m.astype(float) @ w + 0.7 * m[:, 0] * m[:, 1] - 0.4 * m[:, 1] * m[:, 2]
    a = attrlens.explain_game(fn, n, method="proxyspex")
    assert a.extra["metadata"]["exhaustive"] is True and a.cost["value_calls"] == 2**n
    np.testing.assert_allclose(a.scores, brute_shapley(fn, n), atol=1e-9)
    ones = attrlens.explain_game(lambda m: m.sum(1) * 1.0, n, method="proxyspex")
    np.testing.assert_allclose(ones.scores, 1.0, atol=1e-9)


@pytest.mark.parametrize("method,n", [("spex", 7), ("proxyspex", 7), ("proxyspex", 10)])
def test_every_coalition_evaluated_keeps_terms_above_max_order(method, n):
    """The unanimity game's only effects are of degree n > max_order (5): a spectrum cut at
    max_order scored 0.1406 (n = 7) and 0.0746 (n = 10) where Shapley gives 1/n, and the
    scores missed efficiency without a word."""
    fn = lambda m: np.asarray(m, bool).all(1).astype(float)
    a = attrlens.explain_game(fn, n, method=method)
    assert a.extra["metadata"]["exhaustive"] is True
    np.testing.assert_allclose(a.scores, 1.0 / n, atol=1e-12)
    assert a.scores.sum() == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("method", ["spex", "proxyspex"])
def test_exact_spectrum_is_not_cut_relative_to_the_constant(method):
    """A constant of 1e12 set the cut at 1e-12 of itself and dropped the effects 1 and 2;
    a game too large for float64 sums is refused, not scored [0, 0, 0]."""
    w = np.arange(1.0, 6.0)
    a = attrlens.explain_game(lambda m: m.astype(float) @ w + 1e12, 5, method=method)
    np.testing.assert_allclose(a.scores, w, rtol=1e-3)
    huge = lambda m: np.where(np.asarray(m)[:, 0], 1.5e308, -1.5e308)
    with pytest.raises(attrlens.errors.InputError, match="overflows.*rescale"):
        attrlens.explain_game(huge, 3, method=method)


@pytest.mark.parametrize("scale", [1e-9, 1e-5, 1.0, 1e4])
def test_spex_design_does_not_depend_on_the_game_units(scale):
    """The zero-ton floor was an absolute 1e-9: an additive game of 16 features scaled by
    1e-5 came back all 0 (with a warning blaming the design), and by 1e-4 with 62% error."""
    w = np.random.default_rng(0).normal(size=16)
    a = attrlens.explain_game(lambda m: scale * (m.astype(float) @ w), 16, method="spex")
    assert a.extra["metadata"]["exhaustive"] is False
    np.testing.assert_allclose(a.scores / scale, w, atol=1e-9)


def test_proxyspex_refuses_budgets_its_trees_cannot_use_and_says_when_it_fits_badly():
    """Below 40 masks no tree splits (leaves hold 20): every score was 0. At 40-50 the
    proxy predicted held-out masks worse than their mean (R² -0.22 at 40) and 11 of 12
    scores were 0, without a word."""
    w = np.arange(1.0, 13.0)
    with pytest.raises(ParameterError, match="needs at least 40"):
        attrlens.explain_game(lambda m: m @ w, 12, method="proxyspex", budget=39)
    with pytest.warns(UserWarning, match=r"worse than their mean \(cross-validated R² -0\.\d+ "
                                         r"on 40 masks\).*raise --budget"):
        a = attrlens.explain_game(lambda m: m @ w, 12, method="proxyspex", budget=40,
                                  grid="small")
    assert a.extra["metadata"]["cv_r2"] < 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        good = attrlens.explain_game(lambda m: m @ w, 12, method="proxyspex", budget=80,
                                     grid="small")
    assert good.extra["metadata"]["cv_r2"] > 0.9


def test_ksii_index_through_spex_and_faith_banzhaf(spex6):
    """k-SII of order 2 from SPEX's (exact, 64-coalition) spectrum equals the conversion of
    the brute-force Möbius transform; efficiency: the non-empty values sum to v(1) - v(0)."""
    from attrlens.solvers.indices import mobius_to_ksii

    n, fn = spex6
    a = attrlens.explain_game(fn, n, method="spex", index="ksii", order=2)
    assert a.interactions["index"] == "ksii" and a.interactions["order"] == 2
    want = mobius_to_ksii(brute_mobius(fn, n), 2)
    got = terms(a)
    for S, v in want.items():
        assert got.get(S, 0.0) == pytest.approx(v, abs=1e-8), S
    ends = fn(np.array([[True] * n, [False] * n]))
    assert sum(v for S, v in got.items() if S) == pytest.approx(ends[0] - ends[1], abs=1e-8)
    fb = attrlens.explain_game(fn, n, method="faith_banzhaf", order=n, budget=2**n,
                               index="ksii")
    assert fb.interactions["index"] == "ksii"
    assert fb.interactions["order"] == n  # k-SII of order n is the Möbius transform
    for S, v in brute_mobius(fn, n).items():
        assert terms(fb).get(S, 0.0) == pytest.approx(v, abs=1e-6), S


def test_spex_says_when_the_game_has_more_effects_than_its_bins():
    """250 equal first-order effects at the default b = 6 (192 bins): the peeling stalled
    and the scores summed to 49 of 250, silently; a sparse game of as many features (with
    noise) is recovered and says nothing. The fit is recorded either way."""
    with pytest.warns(UserWarning, match=r"explain 1\d% of the variance of the \d+ values"):
        dense = attrlens.explain_game(lambda m: m.sum(1) * 1.0, 250, method="spex")
    assert dense.extra["metadata"]["fit_r2"] < 0.2 and dense.scores.sum() < 60
    rng = np.random.default_rng(0)
    w = np.zeros(250)
    w[rng.choice(250, 20, replace=False)] = rng.normal(size=20)
    noise = np.random.default_rng(1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        a = attrlens.explain_game(lambda m: m @ w + 0.01 * noise.normal(size=len(m)), 250,
                                  method="spex")
    np.testing.assert_allclose(a.scores, w, atol=0.01)
    assert a.extra["metadata"]["fit_r2"] > 0.99


def test_a_max_order_above_n_is_capped_at_n():
    """max_order has no upper bound; a value of 100000 built a BCH code of that degree on a
    2-feature prompt and never returned (23 s of budget arithmetic at 1000 on 30 features).
    No interaction has more than n features: the bound in use is min(max_order, n)."""
    import attrlens

    w = np.arange(1.0, 31.0)

    def game(m):
        return np.asarray(m, dtype=float) @ w[: np.asarray(m).shape[1]]

    r = attrlens.explain_game(game, 2, method="spex", max_order=100000)
    np.testing.assert_allclose(r.scores, [1.0, 2.0], atol=1e-9)
    r = attrlens.explain_game(game, 12, method="spex", max_order=100000, b=3)
    np.testing.assert_allclose(r.scores, w[:12], atol=1e-2)
    assert r.extra["metadata"]["max_order"] == 12
    assert r.params["max_order"] == 100000  # what was asked, as given
