"""The contract every registered method passes, generated from the declarations.

For each method in ``registry.list_methods()`` (game-based ones on a counting synthetic game;
local-model ones on the tiny random Llama; closed-model ones on the real llama.cpp server
with the tiny Llama as surrogate):

* every value in ``Param.invalid_values()`` of every declared parameter -> ParameterError
  (raised by the base class when the work runs);
* an unknown parameter is refused with the list of valid ones; an explainer instance plus
  extra parameters is refused;
* the budget holds (game.n_calls <= budget, value_calls reported <= budget); a method that
  takes no budget refuses one;
* the same seed gives the same result; the JSON round trip keeps scores and params.

A class that overrides ``explain`` cannot be defined, and a subclass that skips the base
class's ``explain`` fails these checks (tested below with a deliberately broken method).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import attrlens
from attrlens.api import make_explainer
from attrlens.errors import ParameterError
from attrlens.explainers.base import Explainer, Explanation
from attrlens.games import BudgetExceededError, Game
from attrlens.params import Param
from attrlens.registry import get_explainer, list_methods
from attrlens.result import Attribution

N = 6
W = np.array([1.0, -2.0, 0.5, 0.0, 3.0, -0.75])
PROMPT = "one two three four five six"
OUTPUT = " seven"
METHODS = sorted(list_methods())


def additive(masks):
    return masks.astype(float) @ W + 0.3


def _cases() -> list[Any]:
    out = []
    for name in METHODS:
        cls = get_explainer(name)
        for p in cls.all_parameters():
            for v in p.invalid_values():
                out.append(pytest.param(name, p.name, v, id=f"{name}-{p.name}-{v!r}"))
    return out


def _budget_for(cls: type[Explainer], n: int) -> int | None:
    if not cls.uses_budget:
        return None
    inst = cls()
    return int(max(inst.min_budget(n), min(inst.default_budget(n), 64)))


# ---- running one method, whatever it needs ---------------------------------------------------
@pytest.fixture(scope="module")
def closed_backend(request):
    """The real llama.cpp server (only requested by closed-model methods)."""
    server = request.getfixturevalue("llama_server")
    from attrlens.models.openai import OpenAIBackend

    return OpenAIBackend(server.base_url, server.model_name, cache=False)


def run_method(method: str | Explainer, request, *, seed: int = 0, budget: int | None = None,
               **params: Any) -> tuple[Attribution, int | None]:
    """(attribution, the game's distinct evaluations or None when not observable)."""
    cls = method if isinstance(method, type) else (
        type(method) if isinstance(method, Explainer) else get_explainer(method))
    if isinstance(method, type):
        method = method()
    if cls.needs == "game":
        g = Game(additive, N)
        a = attrlens.explain_game(g, N, method=method, budget=budget, seed=seed, **params)
        return a, g.n_calls
    tiny = request.getfixturevalue("tiny_model")
    backend = request.getfixturevalue("closed_backend") if cls.needs == "closed_model" else None
    given = backend is None and cls.explains_output
    # (a given output, or a generated answer of 4 tokens)
    a = attrlens.explain(PROMPT, model=tiny, method=method, budget=budget, seed=seed,
                         **({"output": OUTPUT} if given else {"max_new_tokens": 4}),
                         chat=False, target_backend=backend, **params)
    return a, None


def _needs_server(name: str) -> list[Any]:
    return [pytest.mark.integration] if get_explainer(name).needs == "closed_model" else []


def _methods_param() -> list[Any]:
    return [pytest.param(m, marks=_needs_server(m)) for m in METHODS]


# ---- declarations ---------------------------------------------------------------------------
@pytest.mark.parametrize("method", METHODS)
def test_declarations_are_well_formed(method):
    cls = get_explainer(method)
    assert cls.name == method and cls.description and cls.needs in (
        "game", "local_model", "closed_model")
    inst = cls()
    assert set(inst.get_params()) == {p.name for p in cls.all_parameters()}
    for p in cls.all_parameters():
        assert isinstance(p, Param) and p.help
        assert p.accepts(p.default), (method, p.name, p.default)


@pytest.mark.parametrize("method, name, value", _cases())
def test_every_invalid_value_is_refused_when_the_work_runs(method, name, value):
    cls = get_explainer(method)
    if name == "budget" and value is None:
        pytest.skip("budget=None means the method's default")
    inst = cls(**{name: value})  # stored as given; checked when the work runs
    with pytest.raises(ParameterError, match=name):
        if cls.needs == "game":
            inst.explain(Game(additive, N), seed=0)
        else:
            inst.validate(N)


@pytest.mark.parametrize("method", METHODS)
def test_unknown_parameter_is_refused_with_the_valid_list(method):
    cls = get_explainer(method)
    with pytest.raises(ParameterError) as info:
        cls(nonsense_parameter=1)
    msg = str(info.value)
    assert "nonsense_parameter" in msg
    for p in cls.all_parameters():
        assert p.name in msg
    with pytest.raises(ParameterError, match="nonsense_parameter"):
        make_explainer(method, {"nonsense_parameter": 1})


@pytest.mark.parametrize("method", METHODS)
def test_instance_plus_extra_parameters_is_refused(method):
    cls = get_explainer(method)
    given = next(({p.name: p.default} for p in cls.parameters if p.default is not None),
                 {"budget": 10})
    with pytest.raises(ParameterError, match="instance"):
        make_explainer(cls(), given)
    if cls.needs == "game":
        with pytest.raises(ParameterError, match="instance"):
            attrlens.explain_game(additive, N, method=cls(), budget=10)


@pytest.mark.parametrize("method", _methods_param())
def test_budget_holds_seed_repeats_and_json_round_trips(method, request, tmp_path):
    cls = get_explainer(method)
    budget = _budget_for(cls, N)
    a, n_calls = run_method(method, request, seed=3, budget=budget)
    assert a.scores.shape == (a.n_features,) and np.all(np.isfinite(a.scores))
    if budget is not None:
        assert a.params["budget"] == budget
        assert a.cost["value_calls"] <= budget
        if n_calls is not None:
            assert n_calls <= budget
    else:
        with pytest.raises(ParameterError, match="budget"):
            run_method(method, request, budget=10)
    b, _ = run_method(method, request, seed=3, budget=budget)
    np.testing.assert_allclose(b.scores, a.scores, atol=1e-9)  # same seed, same result
    back = Attribution.load(a.save(tmp_path / "r.json"))
    np.testing.assert_allclose(back.scores, a.scores, atol=1e-12)
    assert back.method == method and back.seed == 3
    assert {p.name for p in cls.all_parameters()} <= set(back.params)


@pytest.mark.parametrize("method", [m for m in METHODS if get_explainer(m).needs == "game"])
def test_a_seed_outside_the_generators_range_is_refused_and_its_largest_runs(method):
    """Seeds are 32-bit (numpy's RandomState, scikit-learn, LightGBM): a larger one failed
    deep in numpy ("Seed must be between 0 and 2**32 - 1") for lime and proxyspex; it is a
    ParameterError for every method, and the largest seed runs and repeats."""
    with pytest.raises(ParameterError, match=r"'seed' parameter .* range \[0, 4294967295\]"):
        attrlens.explain_game(Game(additive, N), N, method=method, seed=2**32)
    a, b = (attrlens.explain_game(Game(additive, N), N, method=method, seed=2**32 - 1)
            for _ in range(2))
    np.testing.assert_array_equal(a.scores, b.scores)


def test_game_budget_too_small_is_a_parameter_error():
    for method in METHODS:
        cls = get_explainer(method)
        if cls.needs != "game" or not cls.uses_budget or cls().min_budget(N) <= 1:
            continue
        with pytest.raises(ParameterError, match="at least"):
            attrlens.explain_game(additive, N, method=method, budget=cls().min_budget(N) - 1)


# ---- the base class cannot be skipped ------------------------------------------------------
def test_a_class_overriding_explain_cannot_be_defined():
    with pytest.raises(TypeError, match="overrides Explainer.explain"):
        class Sneaky(Explainer):
            name = "sneaky"

            def explain(self, game, *, seed=0):
                return Explanation(scores=np.zeros(game.n_features))

            def _explain(self, game, *, budget, seed):
                raise AssertionError


class _Honest(Explainer):
    """A tiny declared method (not registered): random masks within the budget."""

    name = "honest"
    description = "test"
    parameters = (Param("scale", 1.0, "multiplier", low=0.0),)

    def min_budget(self, n_features):
        return 2

    def _explain(self, game, *, budget, seed):
        rng = np.random.default_rng(seed)
        masks = rng.random((budget, game.n_features)) < 0.5
        v = game(masks)
        return Explanation(scores=self.params["scale"] * (masks.T.astype(float) @ v))


def _violations(cls: type[Explainer]) -> list[str]:
    """The contract checks above, as a list of what fails (empty = passes)."""
    bad = []
    try:
        cls(scale=-1.0).explain(Game(additive, N), seed=0)
        bad.append("invalid value accepted")
    except ParameterError:
        pass
    g = Game(additive, N)
    try:
        cls(budget=5).explain(g, seed=0)
        if g.n_calls > 5:
            bad.append(f"budget exceeded ({g.n_calls} > 5)")
    except (ParameterError, BudgetExceededError):  # the base class doing its job
        pass
    return bad


def test_an_honest_method_passes_and_a_bypassing_subclass_is_detected():
    assert _violations(_Honest) == []

    class Bypass(_Honest):
        pass

    def skip_the_base(self, game, *, seed=0):  # set after definition, past __init_subclass__
        return self._explain(game, budget=64, seed=seed)

    Bypass.explain = skip_the_base  # type: ignore[method-assign]
    found = _violations(Bypass)
    assert "invalid value accepted" in found
    assert any(v.startswith("budget exceeded") for v in found)
