"""Served-model games: masks -> the served model's own log-likelihood of the fixed output.

:class:`ServedGame` deletes the masked features' text from the prompt (as the regenerating
game of gSMILE does), asks a log-likelihood route (``models.routes``: vLLM prompt log-probs,
SGLang, echo, llama.cpp forced tokens, top log-probs) for the per-token log-probs of the
fixed output after each perturbed prompt, and reduces them like the local ``nll``/``logprob``
targets (mean or sum of log p(o_t | x(z), o_<t)). Requests for new masks go out together,
at most the client's ``concurrency`` at once, in lexicographic mask order (kept features
first), so prompts that share a prefix meet the server's prompt cache one after another;
every call goes through the client's persistent call cache. Like every :class:`Game` it
memoises values per mask, counts distinct masks (``n_calls``, what a budget bounds) and
reports the client's API and cache calls in :meth:`ServedGame.cost`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, ParameterError
from ..models.routes import METHOD_ROUTES, ROUTES, Route, ScoreQuery, probe_routes
from ..text.mask import TextMasker
from ..text.prompt import Prompt
from ..text.segment import FeatureSet
from .base import Cost, Game
from .closed import prefix_order

if TYPE_CHECKING:
    from ..models.openai import OpenAIBackend
    from .model import ModelInputs

Progress = Callable[[int, int], None]
#: targets a served log-likelihood can give: mean (nll) or sum (logprob) of log p(o_t)
SERVED_TARGETS = ("nll", "logprob")


class MaskedPrompt:
    """The prompt text (chat template included) and its chat messages with masked
    features deleted (their char spans removed, as gSMILE's perturbed prompts)."""

    def __init__(self, prompt: Prompt, features: FeatureSet):
        self.prompt = prompt
        self.features = features
        self._spans = sorted(
            (a, b, f.index) for f in features for a, b in f.spans
        )
        self._messages = TextMasker(prompt, features)

    def text(self, keep: np.ndarray) -> str:
        """The full prompt text with the features where ``keep`` is False deleted."""
        src = self.prompt.text
        parts, cur = [], 0
        for a, b, fi in self._spans:
            if a < cur:  # overlapping spans: already handled
                continue
            parts.append(src[cur:a])
            if keep[fi]:
                parts.append(src[a:b])
            cur = b
        parts.append(src[cur:])
        return "".join(parts)

    def messages(self, keep: np.ndarray) -> tuple[dict[str, str], ...]:
        return tuple(self._messages.messages(keep))


class ServedGame(Game):
    """masks -> the served model's log-likelihood of ``output`` after the masked prompt.

    route:     a scoring :class:`~attrlens.models.routes.Route` (see :func:`probe_routes`)
    prompt:    :class:`MaskedPrompt` (masks -> prompt texts / chat messages)
    output:    the explained output text (the served model's own answer, or a given one)
    reduction: "mean" (value = -NLL per token, the ``nll`` target) or "sum" (``logprob``)
    """

    def __init__(
        self,
        route: Route,
        prompt: MaskedPrompt,
        output: str,
        *,
        reduction: str = "mean",
        progress: Progress | None = None,
    ):
        if reduction not in ("mean", "sum"):
            raise ParameterError(f"The reduction must be 'mean' or 'sum'; got {reduction!r}.")
        if not isinstance(output, str) or not output:
            raise InputError("A served game needs a non-empty output text to score.")
        super().__init__(None, len(prompt.features), progress=progress)
        self.route = route
        self.prompt = prompt
        self.output = output
        self.reduction = reduction
        self.api_calls = 0
        self.cached_calls = 0
        self.n_output_tokens: int | None = None

    @property
    def route_name(self) -> str:
        return self.route.name

    @property
    def backend(self) -> OpenAIBackend:
        return self.route.backend

    @classmethod
    def from_inputs(cls, inputs: ModelInputs, route: Route, *, reduction: str = "mean"
                    ) -> ServedGame:
        """The served game of one prepared explanation (its prompt, features, output)."""
        return cls(route, MaskedPrompt(inputs.prompt, inputs.features), inputs.output_text,
                   reduction=reduction, progress=inputs.progress)

    def query(self, keep: np.ndarray) -> ScoreQuery:
        keep = np.asarray(keep, dtype=bool)
        return ScoreQuery(self.prompt.text(keep), self.output, self.prompt.messages(keep))

    def compute(self, masks: np.ndarray) -> list[float]:
        order = prefix_order(masks)
        counters = self.backend.counters
        calls0, cached0 = int(counters.get("api_calls", 0)), int(counters.get("cached_calls", 0))
        scored = self.route.score_many([self.query(masks[i]) for i in order],
                                       progress=self.progress)
        counters = self.backend.counters
        self.api_calls += int(counters.get("api_calls", 0)) - calls0
        self.cached_calls += int(counters.get("cached_calls", 0)) - cached0
        out = [0.0] * len(masks)
        for i, s in zip(order, scored):
            if s.logprobs.size == 0:
                raise InputError(f"The route '{self.route.name}' scored no output token.")
            self.n_output_tokens = int(s.logprobs.size)
            lp = s.logprobs
            out[int(i)] = float(lp.sum() if self.reduction == "sum" else lp.mean())
        return out

    def cost(self) -> Cost:
        return Cost(value_calls=self.n_calls, api_calls=self.api_calls,
                    cached_calls=self.cached_calls)


def method_route(method: str, needs: str, route: str | None, has_backend: bool) -> str | None:
    """The route a method runs through on a served model (None: no served model), or a
    ParameterError for a route that does not fit the method."""
    if route is not None and route not in ROUTES:
        from ..errors import unknown_name_message

        raise ParameterError(unknown_name_message("route", route, ROUTES))
    if not has_backend:
        if route is not None:
            raise ParameterError(
                f"--route {route} needs a served model: give --target-url and --target-model."
            )
        return None
    own = METHOD_ROUTES.get(method)
    if own is not None:
        if route not in (None, own):
            raise ParameterError(
                f"The method '{method}' runs through the route '{own}', not '{route}'; drop "
                f"--route, or use a game-based method (loo, lime, spex, ...) with --route "
                f"{route}."
            )
        return own
    if needs != "game":
        # the local model's beams, gradients or attention: on a served output it can only
        # stand in for the served model, which the user asks for by name
        if route == "surrogate":
            return route
        if route is not None:
            raise ParameterError(
                f"The method '{method}' needs the local model's internals; it cannot run "
                f"through a served route (drop --route {route})."
            )
        raise ParameterError(
            f"The method '{method}' needs a model's internals, which a served model does not "
            f"give: add --route surrogate (route='surrogate') to explain the served answer "
            f"with the local model standing in for it, or use a game-based method (loo, "
            f"lime, spex, ...), which scores the served model itself."
        )
    if route in METHOD_ROUTES.values():
        raise ParameterError(
            f"The route '{route}' gives no served log-likelihood; it belongs to "
            f"{'gsmile' if route == 'generate' else 'rope_lime'}. Pick a scoring route "
            f"(prompt_logprobs, sglang, echo, forced_tokens, top_logprobs) or leave --route "
            f"out to probe the server."
        )
    return route or "auto"


def served_game(
    inputs: ModelInputs,
    backend: OpenAIBackend,
    route: str | None = None,
    *,
    target: str = "nll",
    reduction: str = "mean",
) -> tuple[ServedGame, dict[str, Any]]:
    """The :class:`ServedGame` of a prepared explanation on ``backend``, through ``route``
    (None/"auto" = probe), and the probe's report. ``target``: nll (mean) or logprob (sum).
    """
    if target not in SERVED_TARGETS:
        raise ParameterError(
            f"The target '{target}' needs the model's full distribution; a served model "
            f"gives log-likelihoods only: use --target nll or logprob."
        )
    model = inputs.model
    add_special = not inputs.prompt.chat

    def count_tokens(text: str) -> int:
        return len(model.tokenize(text, add_special_tokens=add_special)[0])

    r, report = probe_routes(backend, None if route in (None, "auto") else route,
                             count_tokens=count_tokens)
    game = ServedGame.from_inputs(inputs, r, reduction="sum" if target == "logprob"
                                  else reduction)
    if r.name == "top_logprobs":
        full = game(np.ones((1, game.n_features), dtype=bool))[0]
        if full <= getattr(r, "floor", -100.0):
            asked = getattr(r, "top_k", 20)
            got = getattr(r, "fewest_received", None)
            listed = (f"top {asked}" if got is None or got >= asked
                      else f"top {got} (of {asked} asked; the server sent {got})")
            raise InputError(
                f"The route top_logprobs explains one-token outputs only, and the output "
                f"{inputs.output_text!r} is not among the served model's {listed} first "
                "tokens. Give a one-token output (--output-text, e.g. a label or an answer "
                "letter) or use another route."
            )
    return game, report.as_dict()
