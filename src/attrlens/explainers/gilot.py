"""GiLOT (Li, Chen, Chai, Xiong; ICML 2024): attribution by optimal transport between
beam-marginalised output distributions.

For features a = 1..m of the prompt x (user content only; template tokens are never masked):

    S(a) = (1/J) sum_{j=1..J} L(p_x(Y_j), p_{x/a}(Y_j))                          (Eq. 1)

p_x(Y_j) is the marginal of the j-th generated token, approximated by the top-b beam-search
prefixes (Eq. 2-5, :mod:`attrlens.scoring.beams`); x/a is x with feature a masked (default
``attention_off``: id 0 and attention 0, positions unchanged, as in the paper's code). L is
optimal transport (Eq. 7-8, default) with cost 1 - cos(e_u, e_v) over input-embedding rows,
on the renormalised union of the top-k (k = 100) tokens of both distributions, or
KL(p || q) (Eq. 6, method ``gilot_kl``) over the whole vocabulary. S(a) >= 0; larger =
masking the feature moves the output distribution more.

The method is a leave-one-out over a :class:`~attrlens.games.beams.BeamGame` (masks -> (J,)
distances), so it costs m + 1 evaluations. Masked distributions come in two modes
(``beam_mode``): ``"own"`` (the paper: beam search on each masked input, weighted by the
masked model's own prefix probabilities) and ``"shared"`` (the reference's beams
teacher-forced under each masked input, the reproduction code's cheaper variant).

The paper's use cases (query weight, comparing two prompts) work with any method's
attribution and live in :mod:`attrlens.analysis`.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import ParameterError
from ..games import BudgetedGame, Game
from ..games.beams import BeamGame, BeamSettings
from ..params import Param
from ..registry import register
from ..solvers.sampling import loo_masks
from .base import Explainer, Explanation

if TYPE_CHECKING:
    from ..games.model import ModelInputs, ScoringGame
    from ..models.openai import OpenAIBackend

DISTANCES = ("ot", "kl")
BEAM_MODES = ("own", "shared")
SHARED_WEIGHTS = ("masked", "original")
COSTS = ("full", "half")
SOLVERS = ("auto", "ipot", "sinkhorn", "exact")
#: parameters of the transport only (not read with the KL distance)
OT_ONLY = ("vocab_k", "vocab_p", "vocab_cap", "cost", "solver", "ot_beta", "ot_iter", "ot_tol")


def _parameters(distance: str) -> tuple[Param, ...]:
    return (
        Param("beams", 10, "beam width b", type=int, low=1),
        Param("horizon", 10, "output positions J (the beams have J - 1 new tokens)",
              type=int, low=1),
        Param("beam_mode", "own", "own: beam search on every masked input (the paper); "
              "shared: the reference's beams teacher-forced", type=str, choices=BEAM_MODES),
        Param("distance", distance, "ot (optimal transport) or kl", type=str,
              choices=DISTANCES),
        Param("vocab_k", 100, "tokens per side of the top-k vocabulary union (OT)", type=int,
              low=1),
        Param("vocab_p", None, "top-p nuclei instead of top-k (the official code: 0.9999)",
              type=float, low=1e-9, high=1.0, none_ok=True),
        Param("vocab_cap", 1000, "cap on a top-p nucleus (tokens)", type=int, low=1),
        Param("cost", "full", "OT ground cost: full = 1 - cos (the paper), half = (1 - cos)/2",
              type=str, choices=COSTS),
        Param("solver", "auto", "OT solver; auto = exact on CPU, ipot on an accelerator",
              type=str, choices=SOLVERS),
        Param("ot_beta", 1.0, "IPOT step beta", low=1e-9),
        Param("ot_iter", 1000, "IPOT / Sinkhorn iterations", type=int, low=1),
        Param("ot_tol", None, "early stop on the marginal error (None = run all iterations)",
              low=0.0, none_ok=True),
        Param("smoothing", 1e-4, "marginal smoothing added on the support (the code's +1e-4)",
              low=0.0),
        Param("shared_weights", "masked", "prefix weights in shared mode: masked | original",
              type=str, choices=SHARED_WEIGHTS),
        Param("per_position", False, "also return the (m, J) per-position distances",
              type=bool),
        Param("max_batch_tokens", 8192, "rows x cache length per forward (memory bound)",
              type=int, low=1),
    )


@register
class GilotExplainer(Explainer):
    """GiLOT: OT distance between beam-marginalised output distributions, one feature masked.

    ``budget`` is the number of evaluations (inputs whose distributions are computed):
    m + 1, like leave-one-out. ``per_position`` adds the (m, J) matrix of per-position
    distances as the result's ``per_output_token`` (column j = output position j of the
    beam marginals, not a token of the displayed greedy output).
    """

    draws = False

    name = "gilot"
    description = "GiLOT: optimal transport between beam-marginalised output distributions."
    paper = "Li, Chen, Chai, Xiong (ICML 2024), GiLOT: interpreting generative language models"
    needs = "local_model"
    default_masker = "attention_off"
    reads = ("masker",)  # its value is a distance between beam distributions
    explains_output = False  # of the model's own beams, whatever output is given
    parameters = _parameters("ot")

    def min_budget(self, n_features: int) -> int:
        return n_features + 1

    def _unread(self) -> list[str]:
        """The parameters this configuration does not read: the transport's with the KL
        distance (the whole vocabulary, no solver), shared_weights with own beams."""
        p = self.params
        out = list(OT_ONLY) if p["distance"] == "kl" else []
        if p["beam_mode"] == "own":
            out.append("shared_weights")
        return out

    def check_params(self) -> None:
        # (they were recorded as if they ran: gilot_kl's vocab_k=5, solver=ipot changed
        # nothing and the result said vocab_k 5, solver ipot)
        defaults = {q.name: q.default for q in self.parameters}
        given = [k for k in self._unread() if self.params[k] != defaults[k]]
        if given:
            why = ("the KL distance uses the whole vocabulary and no transport solver"
                   if self.params["distance"] == "kl" and set(given) & set(OT_ONLY)
                   else "own beams have no shared prefix weights")
            raise ParameterError(
                f"The method '{self.name}' does not read {', '.join(given)} here ({why}); "
                f"drop {'it' if len(given) == 1 else 'them'}.")

    def settings(self) -> BeamSettings:
        p = self.params
        return BeamSettings(
            beams=p["beams"], horizon=p["horizon"], beam_mode=p["beam_mode"],
            shared_weights=p["shared_weights"], distance=p["distance"], vocab_k=p["vocab_k"],
            vocab_p=p["vocab_p"], vocab_cap=p["vocab_cap"], cost=p["cost"],
            solver=p["solver"], ot_beta=p["ot_beta"], ot_iter=p["ot_iter"],
            ot_tol=p["ot_tol"], smoothing=p["smoothing"],
            max_batch_tokens=p["max_batch_tokens"],
        )

    def make_game(
        self, inputs: ModelInputs, scoring: ScoringGame, *, closed: OpenAIBackend | None = None
    ) -> Game:
        """A :class:`BeamGame` on the prepared prompt, sharing the scoring engine's prefix
        key/value cache."""
        prefix = None
        if inputs.prefix_reuse and scoring.engines:
            prefix = scoring.engines[0].prefix
        return BeamGame.from_inputs(inputs, self.settings(), prefix=prefix)

    def _explain(self, game: BudgetedGame, *, budget: int | None, seed: int) -> Explanation:
        if game.value_kind != "beam_distances":
            raise ParameterError(
                f"The method '{self.name}' needs a local model (its beam game); use "
                f"attrlens.explain."
            )
        p = self.params
        t0 = time.perf_counter()
        masks = loo_masks(game.n_features)
        dist = game.per_token_values(masks)  # (m + 1, J); row 0 is the reference (zeros)
        per_pos = dist[1:]
        scores = per_pos.mean(axis=1)
        t = game.timings
        extra = {
            "beam_mass": [float(x) for x in game.reference().mass],
            "masked_beam_mass_min": [float(x) for x in game.masked_mass(masks[1:]).min(axis=0)],
            "beams": game.reference_beams(),
            "distance": p["distance"],
            "model_s": t["model_s"],
            "distance_s": t["compress_s"] + t["solver_s"],
            "compress_s": t["compress_s"],
            "ot_solver_s": t["solver_s"],
            "tokens_min": game.tokens_min,
            "gilot_wall_s": time.perf_counter() - t0,
        }
        if p["distance"] == "ot":
            extra["union_size_mean"] = game.union_size_mean
            extra["ot_solver"] = game.solver
        # the solver actually used ("auto" resolves by device); null: not read (_unread)
        ran: dict[str, Any] = {"solver": game.solver} if p["distance"] == "ot" else {}
        ran["scoring_batch_tokens"] = None  # its beam runner's batches are max_batch_tokens
        ran.update({k: None for k in self._unread()})
        return Explanation(
            scores=scores,
            per_output_token=per_pos if p["per_position"] else None,
            extra=extra,
            params=ran,
        )


@register
class GilotKLExplainer(GilotExplainer):
    """GiLOT with L = KL(p || q) over the whole vocabulary (the paper's KL ablation)."""

    name = "gilot_kl"
    description = "GiLOT with KL divergence instead of optimal transport (paper's ablation)."
    parameters = _parameters("kl")

    def check_params(self) -> None:
        if self.params["distance"] != "kl":  # (it ran gilot, recorded as gilot_kl)
            raise ParameterError(
                f"gilot_kl is GiLOT with the KL distance; for distance="
                f"{self.params['distance']} use --method gilot.")
        super().check_params()
