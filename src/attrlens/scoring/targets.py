"""Targets: value functions of a masked prompt, computed from the output distributions.

Every target yields a per-output-token matrix (n_masks, T) and an aggregate value per mask.
Values are oriented so that **higher = the explained output is better supported** (game
convention): ``nll`` gives the negative NLL (mean log-prob), divergences give minus the
divergence from the unmasked run. Explainers therefore never flip signs; a feature whose
removal lowers the value gets a positive score.

Targets:
    nll          -(1/T) Σ_t -log p(o_t | x(z), o_<t)   (reduction "mean"; "sum" optional)
    logprob      Σ_t log p(o_t | x(z), o_<t)            (total log-prob)
    kl, js, tv   -(1/T) Σ_t D(p_t^0, p_t^z) over the union of the top-k tokens of both
                 distributions (k = 100), renormalised (GiLOT's vocabulary compression);
                 reduction "sum" drops the 1/T
    contrastive  log p(o | x(z)) - log p(o' | x(z)) for a second candidate output o'
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import InputError, unknown_name_message
from ..text.mask import PerturbedInput
from .distributions import divergence, topk_divergence  # noqa: F401  (divergence re-exported)
from .engine import ScoringEngine, gather_logprobs, unmasked_input

TARGETS = ("nll", "logprob", "kl", "js", "tv", "contrastive")
#: the targets that compare distributions over the union of their top-k tokens (``k``)
DIVERGENCES = ("kl", "js", "tv")


class Target(abc.ABC):
    """Base: ``per_token(inputs)`` -> (n, T) matrix; ``aggregate`` -> (n,) values."""

    name = "target"
    reduction = "mean"

    def __init__(self, engine: ScoringEngine):
        self.engine = engine

    @abc.abstractmethod
    def per_token(self, inputs: Sequence[PerturbedInput]) -> np.ndarray:
        """(n, T) per-output-token values of the perturbed inputs."""

    def aggregate(self, per_token: np.ndarray) -> np.ndarray:
        return per_token.sum(-1) if self.reduction == "sum" else per_token.mean(-1)

    def params(self) -> dict[str, Any]:
        return {"target": self.name, "reduction": self.reduction}


class LogProbTarget(Target):
    """Log-probs of the fixed output; ``nll`` (mean) or ``logprob`` (sum)."""

    def __init__(self, engine: ScoringEngine, *, name: str = "nll", reduction: str = "mean"):
        super().__init__(engine)
        self.name = name
        self.reduction = reduction

    def per_token(self, inputs: Sequence[PerturbedInput]) -> np.ndarray:
        return np.stack(self.engine.run(inputs, gather_logprobs))


class DivergenceTarget(Target):
    """Minus a divergence between the unmasked and masked next-token distributions."""

    def __init__(self, engine: ScoringEngine, *, kind: str = "kl", k: int = 100,
                 reduction: str = "mean"):
        super().__init__(engine)
        self.name = kind
        self.reduction = reduction
        self.kind = kind
        self.k = k
        self._ref: Any = None  # (T, V) log-probs of the unmasked prompt

    def params(self) -> dict[str, Any]:
        return {"target": self.name, "reduction": self.reduction, "top_k_union": self.k}

    def _reference(self) -> Any:
        if self._ref is None:
            import torch

            ref = self.engine.run([unmasked_input(self.engine.prompt_ids)], lambda lp, _o: [lp[0]])
            self._ref = ref[0] if isinstance(ref[0], torch.Tensor) else torch.as_tensor(ref[0])
        return self._ref

    def per_token(self, inputs: Sequence[PerturbedInput]) -> np.ndarray:
        ref = self._reference()

        def reducer(lq: Any, _out: Any) -> np.ndarray:
            d = topk_divergence(ref[None].expand_as(lq), lq, self.kind, top_k=self.k)
            return (-d).double().cpu().numpy()

        return np.stack(self.engine.run(inputs, reducer))


class ContrastiveTarget(Target):
    """log p(o | x(z)) - log p(o' | x(z)): why the output and not the alternative."""

    name = "contrastive"

    def __init__(self, engine: ScoringEngine, alt_engine: ScoringEngine):
        super().__init__(engine)
        self.alt_engine = alt_engine
        self.reduction = "sum"

    def per_token(self, inputs: Sequence[PerturbedInput]) -> np.ndarray:
        a = np.stack(self.engine.run(inputs, gather_logprobs)).sum(-1)
        b = np.stack(self.alt_engine.run(inputs, gather_logprobs)).sum(-1)
        return (a - b)[:, None]


#: each target's reduction over output tokens when none is given, and those it takes
REDUCTIONS = {"nll": ("mean", "sum"), "logprob": ("sum",), "kl": ("mean", "sum"),
              "js": ("mean", "sum"), "tv": ("mean", "sum"), "contrastive": ("sum",)}


def make_target(
    name: str,
    engine: ScoringEngine,
    *,
    reduction: str | None = None,
    k: int = 100,
    alt_engine: ScoringEngine | None = None,
) -> Target:
    """Build a target by name (one of TARGETS). reduction: over the output tokens, "mean"
    or "sum" (None = the target's own: the first of :data:`REDUCTIONS`); ``logprob`` and
    ``contrastive`` are totals by definition and take "sum" only. k: the top-k union of
    the divergence targets (an int >= 1)."""
    from ..params import check_param

    if not isinstance(name, str) or name not in TARGETS:
        raise InputError(unknown_name_message("target", name, TARGETS))
    check_param("the target", "reduction", reduction, choices=("mean", "sum"), none_ok=True)
    if reduction is None:
        reduction = REDUCTIONS[name][0]
    elif reduction not in REDUCTIONS[name]:
        raise InputError(
            f"The {name} target is a total over the output tokens (reduction 'sum'); got "
            f"reduction={reduction!r}. Use the nll target for the mean log-probability."
        )
    if name in ("nll", "logprob"):
        return LogProbTarget(engine, name=name, reduction=reduction)
    if name in DIVERGENCES:
        k = check_param("the target", "top_k", k, kind=int, low=1)
        return DivergenceTarget(engine, kind=name, k=k, reduction=reduction)
    if alt_engine is None:
        raise InputError(
            "The contrastive target needs a second candidate output (--contrast-text TEXT)."
        )
    return ContrastiveTarget(engine, alt_engine)
