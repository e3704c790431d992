"""Gradient and attention baselines on a white-box model: the columns of GiLOT's Tables 1-2.

All methods explain the fixed output ``o`` of a local model through the log-likelihood
``f(e) = sum_t log p(o_t | ...)`` of the output as a function of the input embeddings ``e``
(GiLOT's Eq. 9 loss with the sign flipped, so that positive = supports the output, as for
every other attrlens method). Token scores are summed over each feature's tokens (recorded as
``params["aggregation"] = "sum"``); template tokens belong to no feature and never move.

====================  =====================================================================
``ig``                integrated gradients (Sundararajan et al. 2017) on the input
                      embeddings from a baseline x' (feature tokens' embeddings set to zero,
                      or to the pad / mask token's): ``(x_i - x'_i) . int_0^1 grad_i f``,
                      20 steps. Completeness: sum of scores = f(x) - f(x'). GiLOT's Eq. 10
                      writes the right Riemann sum (``rule="right"``); the default midpoint
                      rule's error is of higher order for a smooth path, but on a wiggly one
                      (SmolLM2's zero-baseline path: gap -0.84 at 80 steps against the right
                      rule's +0.27) neither wins: read ``completeness_gap`` and add steps.
``ig_avg``            GiLOT's IG-AVG: IG of each output token's log-likelihood on its own,
                      averaged over the output tokens; 5 steps. The rows are the
                      per-output-token matrix.
``grad_x_input``      ``x_i . grad_i f(x)`` (one forward and backward).
``attention``         attention from the output-predicting positions to the prompt, heads
                      averaged, last layer or mean over layers.
``attention_rollout`` Abnar & Zuidema (2020): rows of ``A_hat^(L) ... A_hat^(s)`` with
                      ``A_hat = (A + I)/2`` (heads averaged).
``bta``, ``bta_avg``  GiLOT's BTA baselines (Eq. 11): rollout from ``start_layer`` (8) on,
                      times ReLU of the path-averaged gradient of f w.r.t. the last layer's
                      attention map (heads averaged), read at the output-predicting rows;
                      20 / 5 steps, ``bta_avg`` per output token and averaged.
====================  =====================================================================

[R] choices where the paper is silent: the gradient is that of the log-likelihood (the
ReLU keeps what supports the output; Eq. 11 writes the loss), heads are averaged before the
ReLU, the rollout uses the query-row convention of Abnar & Zuidema, and a BTA score of a
feature for output token t is row ``L - 1 + t`` of ``P * ReLU(G)``.

Per-output-token matrices follow :class:`attrlens.result.Attribution`: (n_features, T),
column t = output token t. ``ig``, ``grad_x_input`` and ``bta`` give it with
``per_token=True`` (T sequences per path point instead of one, except bta which has it
free); the ``*_avg``, attention and rollout methods always give it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import ParameterError
from ..games import BudgetedGame
from ..games.whitebox import BASELINES, CHECKPOINT, WhiteBoxGame
from ..params import Param
from ..registry import register
from ..solvers.paths import RULES, path_quadrature, rollout_rows
from .base import Explainer, Explanation

if TYPE_CHECKING:
    from ..games.model import ModelInputs, ScoringGame
    from ..models.openai import OpenAIBackend

MAX_BATCH_TOKENS = Param(
    "max_batch_tokens", 4096,
    "tokens per forward/backward chunk (path points are batched up to this; lower it to "
    "save memory)", type=int, low=1,
)
BASELINE = Param(
    "baseline", "zero",
    "path start for the feature tokens' embeddings: zero vector, the pad token's or the "
    "mask (unk) token's embedding", type=str, choices=BASELINES,
)
RULE = Param(
    "rule", "middle", "quadrature of the path integral: midpoint, right Riemann (GiLOT Eq. 10) "
    "or Gauss-Legendre (Captum's default)", type=str, choices=RULES,
)
CHECKPOINTING = Param(
    "checkpoint", "auto",
    "recompute decoder layers in the backward pass to bound activation memory (about one "
    "extra forward per chunk): on, off, or auto (on when a chunk's activations would exceed "
    "1 GiB)", type=str, choices=CHECKPOINT,
)
PER_TOKEN = Param(
    "per_token", False,
    "also compute the per-output-token matrix (one sequence per output token and step)",
    type=bool,
)


def _steps(default: int) -> Param:
    return Param("steps", default, "interpolation steps along the path", type=int, low=1,
                 high=4096)


class _WhiteBoxExplainer(Explainer):
    """Shared plumbing: a WhiteBoxGame from the prepared inputs; token -> feature sums."""

    draws = False

    needs: ClassVar[str] = "local_model"
    uses_budget: ClassVar[bool] = False
    #: gradients and attention of sum_t log p(o_t) on the whole prompt: no target, no masking
    reads: ClassVar[tuple[str, ...]] = ()
    runs_engine: ClassVar[bool] = False

    def make_game(
        self, inputs: ModelInputs, scoring: ScoringGame, *, closed: OpenAIBackend | None = None
    ) -> WhiteBoxGame:
        return WhiteBoxGame(
            inputs.model, inputs.prompt_ids, inputs.output_ids, inputs.features,
            max_batch_tokens=int(self.params["max_batch_tokens"]),
            checkpoint=str(self.params.get("checkpoint", "auto")), progress=inputs.progress,
        )

    @staticmethod
    def _white_box(game: BudgetedGame) -> WhiteBoxGame:
        inner = game.game
        if not isinstance(inner, WhiteBoxGame):
            raise ParameterError(
                "Gradient and attention methods need a local model's white-box game; use "
                "attrlens.explain with a local model (not explain_game)."
            )
        return inner

    @staticmethod
    def _check_start(game: WhiteBoxGame, start: int) -> None:
        if start >= game.n_layers:
            raise ParameterError(
                f"The 'start_layer' parameter must be below the model's {game.n_layers} "
                f"layers (0..{game.n_layers - 1}). Got {start} instead."
            )

    @staticmethod
    def _params(**kw: Any) -> dict[str, Any]:
        # (the scoring engine does not run: its settings are not read)
        return {"aggregation": "sum", "prefix_reuse": None, "scoring_batch_tokens": None,
                **kw}


class _PathExplainer(_WhiteBoxExplainer):
    """IG-type methods: integrate directional gradients along a path."""

    averaged: ClassVar[bool] = False

    def _run(self, wb: WhiteBoxGame, *, per_token: bool) -> Explanation:
        p = self.params
        alphas, weights = path_quadrature(p["steps"], p["rule"])
        n_t = wb.n_output
        out_w = np.eye(n_t) if per_token else np.ones((1, n_t))
        pg = wb.path_gradients(alphas, weights, out_w, baseline=p["baseline"])
        feat = wb.aggregate(pg.directional)  # (R, n)
        if per_token:
            pot = feat.T  # (n, T)
            scores = pot.mean(1) if self.averaged else pot.sum(1)
        else:
            pot, scores = None, feat[0]
        ll = wb.log_likelihood([0.0, 1.0], baseline=p["baseline"])  # (2, T)
        f = ll.mean(1) if self.averaged else ll.sum(1)
        delta = float(f[1] - f[0])
        extra = {
            "f_input": float(f[1]), "f_baseline": float(f[0]),
            "completeness_gap": float(scores.sum() - delta),
            "objective": "mean_t log p(o_t)" if self.averaged else "sum_t log p(o_t)",
        }
        return Explanation(scores=scores, per_output_token=pot, extra=extra,
                           params=self._params())


@register
class IntegratedGradientsExplainer(_PathExplainer):
    """Integrated gradients of the output's log-likelihood on the input embeddings."""

    name = "ig"
    description = ("Integrated gradients on input embeddings of sum_t log p(o_t) from a zero "
                   "(or pad/mask) baseline; 20 steps.")
    paper = "Sundararajan, Taly & Yan (2017), Axiomatic attribution for deep networks"
    parameters = (_steps(20), BASELINE, RULE, PER_TOKEN, MAX_BATCH_TOKENS, CHECKPOINTING)

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        return self._run(self._white_box(game), per_token=bool(self.params["per_token"]))


@register
class IntegratedGradientsAvgExplainer(_PathExplainer):
    """GiLOT's IG-AVG: IG of each output token's log-likelihood, averaged over tokens."""

    name = "ig_avg"
    description = ("IG-AVG (GiLOT baseline): integrated gradients per output token, averaged; "
                   "5 steps.")
    paper = "Li et al. (2024), GiLOT, ICML (baselines, Sec. 4.2)"
    parameters = (_steps(5), BASELINE, RULE, MAX_BATCH_TOKENS, CHECKPOINTING)
    averaged = True

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        return self._run(self._white_box(game), per_token=True)


@register
class GradientXInputExplainer(_WhiteBoxExplainer):
    """Gradient x input on the input embeddings."""

    name = "grad_x_input"
    description = "Gradient x input on input embeddings of sum_t log p(o_t); one backward."
    paper = "Shrikumar et al. (2016), Not just a black box; Denil et al. (2014)"
    parameters = (PER_TOKEN, MAX_BATCH_TOKENS, CHECKPOINTING)

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        wb = self._white_box(game)
        per_token = bool(self.params["per_token"])
        n_t = wb.n_output
        out_w = np.eye(n_t) if per_token else np.ones((1, n_t))
        pg = wb.path_gradients([1.0], [1.0], out_w, direction="input")
        feat = wb.aggregate(pg.directional)
        pot = feat.T if per_token else None
        scores = feat.sum(0)
        return Explanation(scores=scores, per_output_token=pot, params=self._params())


@register
class AttentionExplainer(_WhiteBoxExplainer):
    """Raw attention from the output-predicting positions to the prompt."""

    name = "attention"
    description = ("Attention from the output positions to the prompt (heads averaged; last "
                   "layer or mean over layers).")
    paper = "Jain & Wallace (2019); Wiegreffe & Pinter (2019), attention as explanation"
    parameters = (
        Param("layers", "last", "which layers: the last one or the mean over all", type=str,
              choices=("last", "mean")),
        MAX_BATCH_TOKENS,
    )

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        wb = self._white_box(game)
        maps = wb.attention_maps()  # (n_layers, S, S)
        att = maps[-1] if self.params["layers"] == "last" else maps.mean(0)
        rows = att[wb.output_rows][:, : wb.n_prompt]  # (T, L)
        pot = wb.aggregate(rows).T  # (n, T)
        return Explanation(scores=pot.mean(1), per_output_token=pot,
                           params=self._params(heads="mean"))


@register
class AttentionRolloutExplainer(_WhiteBoxExplainer):
    """Attention rollout (Abnar & Zuidema 2020) from the output-predicting positions."""

    name = "attention_rollout"
    description = "Attention rollout (A+I)/2 through the layers, read at the output positions."
    paper = "Abnar & Zuidema (2020), Quantifying attention flow in transformers"
    parameters = (
        Param("start_layer", 0, "first layer in the rollout (0 = all layers)", type=int, low=0),
        Param("residual", 0.5, "weight of the identity (residual stream) in each layer, "
              "below 1", type=float, low=0.0, high=1.0),
        MAX_BATCH_TOKENS,
    )

    def check_params(self) -> None:
        if self.params["residual"] >= 1.0:  # (every score came out 0, blamed on a sink)
            raise ParameterError(
                "attention_rollout's residual 1.0 makes every layer the identity: no "
                "attention is read and every score would be 0; give a residual below 1 "
                "(default 0.5).")

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        wb = self._white_box(game)
        self._check_start(wb, self.params["start_layer"])
        maps = wb.attention_maps()
        roll = rollout_rows(maps, wb.output_rows, start=self.params["start_layer"],
                            residual=self.params["residual"])
        pot = wb.aggregate(roll[:, : wb.n_prompt]).T
        return Explanation(scores=pot.mean(1), per_output_token=pot,
                           params=self._params(heads="mean"),
                           extra=rollout_mass(self.name, wb, roll, self.params["start_layer"]))


#: below this share of the rollout's mass on the features, the result says where the rest is
SINK_SHARE = 0.01


def rollout_mass(name: str, wb: WhiteBoxGame, roll: np.ndarray, start: int) -> dict[str, Any]:
    """Where the rollout rows ``roll`` (T, S) put their mass: the share on the features (mean
    over output rows) and the prompt token holding most of it. On decoder LLMs most of the
    mass flows to the first token (an attention sink, often a template token outside the
    features): the embedded model's chat prompts kept ~1e-6 of it, and every score printed
    as 0. That is the method's answer, so it is recorded and said, not changed."""
    on_prompt = roll[:, : wb.n_prompt]
    share = float(wb.aggregate(on_prompt).sum(-1).mean())
    top = int(np.argmax(on_prompt.mean(0)))
    top_share = float(on_prompt.mean(0)[top])
    if share < SINK_SHARE:
        import warnings

        warnings.warn(
            f"{name}: the features hold {share:.2g} of the attention rollout's mass; "
            f"{top_share:.4f} sits on prompt token {top} (an attention sink"
            f"{'' if wb.owner[top] >= 0 else ', outside the features'}), so the scores are "
            f"small; a later --start-layer (now {start}) rolls out fewer layers.",
            stacklevel=3)
    return {"rollout_feature_share": share, "rollout_top_token": top,
            "rollout_top_token_share": top_share}


class _BTAExplainer(_WhiteBoxExplainer):
    averaged: ClassVar[bool] = False

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        wb = self._white_box(game)
        p = self.params
        start = p["start_layer"]
        if start is None:
            start = min(8, wb.n_layers - 1)
        self._check_start(wb, start)
        n_t = wb.n_output
        alphas, weights = path_quadrature(p["steps"], p["rule"])
        out_w = np.eye(n_t) if self.averaged else np.ones((1, n_t))
        pg = wb.path_gradients(alphas, weights, out_w, baseline=p["baseline"], attention=True)
        assert pg.attention is not None  # asked for above
        if self.averaged:  # row t: gradient of log p(o_t) at o_t's own row
            grad = pg.attention[np.arange(n_t), np.arange(n_t)]  # (T, S)
        else:
            grad = pg.attention[0]  # (T, S)
        maps = wb.attention_maps()
        roll = rollout_rows(maps, wb.output_rows, start=start)  # (T, S)
        rel = (roll * np.maximum(grad, 0.0))[:, : wb.n_prompt]
        pot = wb.aggregate(rel).T  # (n, T)
        scores = pot.mean(1) if self.averaged else pot.sum(1)
        return Explanation(scores=scores, per_output_token=pot,
                           params=self._params(heads="mean", start_layer=start),
                           extra=rollout_mass(self.name, wb, roll, start))


_BTA_PARAMS = (
    Param("start_layer", None, "first layer of the attention rollout; None = GiLOT's 8, or "
          "the last layer on models with 8 layers or fewer", type=int, low=0, none_ok=True),
    BASELINE, RULE, MAX_BATCH_TOKENS, CHECKPOINTING,
)


@register
class BTAExplainer(_BTAExplainer):
    """GiLOT's BTA baseline: rollout x ReLU(path-averaged attention gradient)."""

    name = "bta"
    description = ("BTA (GiLOT baseline): attention rollout from layer 8 x ReLU of the "
                   "integrated last-layer attention gradient; 20 steps.")
    paper = "Chen et al. (2022), Beyond intuition (BTA); Li et al. (2024), GiLOT Eq. 11"
    parameters = (_steps(20), *_BTA_PARAMS)


@register
class BTAAvgExplainer(_BTAExplainer):
    """GiLOT's BTA-AVG: BTA per output token, averaged."""

    name = "bta_avg"
    description = "BTA-AVG (GiLOT baseline): BTA per output token, averaged; 5 steps."
    paper = "Li et al. (2024), GiLOT, ICML (baselines, Sec. 4.2)"
    parameters = (_steps(5), *_BTA_PARAMS)
    averaged = True
