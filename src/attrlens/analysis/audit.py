"""Surrogate audit: how far a stand-in attribution (RoPE-LIME's local surrogate, gSMILE's
regenerations) agrees with the served model's own log-likelihood.

It spends exactly ``k`` evaluations of an exact game on the served model (a
:class:`~attrlens.games.served.ServedGame`): the unmasked prompt, then leave-one-out on the
``ceil((k-1)/2)`` highest- and ``floor((k-1)/2)`` lowest-scored features. The served
model's leave-one-out effect of feature i is ``v(all) - v(all but i)`` (positive = the
feature supports the output, the sign convention of every attribution). Reported: the
Spearman rank correlation of the surrogate's scores and those effects on the audited
features, the fraction of them whose signs agree, and what the audit cost.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError, ParameterError
from ..games import BudgetedGame, Game


@dataclass
class AuditResult:
    """One audit. ``features``: audited feature indices (top first, then bottom);
    ``surrogate``/``served``: their surrogate scores and served leave-one-out effects;
    ``spearman``: rank agreement (None when undefined or empty of meaning: fewer than 3
    features, whose ranks always agree or disagree wholly, or a constant side);
    ``sign_agreement``: fraction with equal signs; ``cost``: the exact evaluations
    (``value_calls`` = k) and the API/cache calls they took."""

    k: int
    route: str | None
    features: list[int]
    labels: list[str]
    surrogate: list[float]
    served: list[float]
    served_full: float
    spearman: float | None
    sign_agreement: float
    cost: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def audit_features(scores: np.ndarray, n_loo: int) -> list[int]:
    """Indices of the ``ceil(n_loo/2)`` highest then ``floor(n_loo/2)`` lowest scores."""
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    n_top = (n_loo + 1) // 2
    top = [int(i) for i in order[:n_top]]
    bottom = [int(i) for i in order[::-1] if int(i) not in top][: n_loo - n_top]
    return top + bottom


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:  # (any two points rank +-1)
        return None
    from scipy.stats import spearmanr

    value = float(spearmanr(a, b).statistic)
    return value if np.isfinite(value) else None


def audit(
    scores: np.ndarray,
    game: Game,
    k: int,
    *,
    labels: list[str] | None = None,
) -> AuditResult:
    """Audit ``scores`` (n,) against ``game`` (n features; the served model's exact value)
    with ``k`` >= 3 evaluations (1 unmasked + k-1 leave-one-out; k is clipped to n + 1).

    The k evaluations are enforced by a budget; the game's memo may answer some for free
    (counted as cached by the client when the call cache answers)."""
    scores = np.asarray(scores, dtype=float).reshape(-1)
    n = int(game.n_features)
    if scores.shape[0] != n:
        raise InputError(f"The audit got {scores.shape[0]} scores for a game of {n} features.")
    if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 3:
        raise ParameterError(
            f"--audit takes the number of exact evaluations K >= 3 (the unmasked prompt and "
            f"at least two leave-one-out); got {k!r}."
        )
    k_used = int(min(k, n + 1))
    feats = audit_features(scores, k_used - 1)
    masks = np.ones((1 + len(feats), n), dtype=bool)
    for r, i in enumerate(feats, start=1):
        masks[r, i] = False
    before = game.cost()
    view = BudgetedGame(game, k_used, owner="the surrogate audit")
    values = view(masks)
    spent = game.cost() - before
    served = values[0] - values[1:]
    sur = scores[feats]
    signs = float(np.mean(np.sign(sur) == np.sign(served))) if len(feats) else float("nan")
    return AuditResult(
        k=k_used,
        route=getattr(game, "route_name", None),
        features=feats,
        labels=[labels[i] for i in feats] if labels is not None else [str(i) for i in feats],
        surrogate=[float(x) for x in sur],
        served=[float(x) for x in served],
        served_full=float(values[0]),
        spearman=_spearman(sur, served),
        sign_agreement=signs,
        cost={"value_calls": int(view.n_calls), "api_calls": int(spent.api_calls),
              "cached_calls": int(spent.cached_calls)},
    )
