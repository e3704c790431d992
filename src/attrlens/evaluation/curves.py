"""Perturbation curves: MoRF / LeRF / ABPC (GiLOT's protocol, METHODS.md §4(d), §5.3).

Features are ranked by attribution (descending for MoRF, ascending for LeRF; ties keep
feature order). At each mask rate ρ ∈ {0, .1, ..., 1} the first ⌊ρ·n⌋ features of the
ranking are masked and the discrepancy d(ρ) of the model's behaviour from ρ = 0 is measured:

* fixed output (cheap, deterministic): d(ρ) = mean NLL(o | x_ρ) - mean NLL(o | x_0) of the
  explained output o, teacher forced. On a game whose value is the mean log-prob (the
  ``nll`` target) this is v(x_0) - v(x_ρ).
* regenerate (GiLOT): greedy regeneration o_ρ under x_ρ and
  d(ρ) = 100·(1 - cos(SE(o_ρ), SE(o_0))) with a sentence encoder SE (MiniLM-L6-v2).

AUC = mean of d over the 11 rates (option: trapezoid over ρ ∈ [0, 1]); ABPC = AUC_MoRF -
AUC_LeRF (higher = the ranking separates important from unimportant features better).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..params import check_param

N_RATES = 11  # ρ = 0, .1, ..., 1
DIRECTIONS = ("morf", "lerf")


def mask_rates() -> np.ndarray:
    """(11,) the rates 0, .1, ..., 1."""
    return np.arange(N_RATES) / (N_RATES - 1)


def n_masked(n: int) -> np.ndarray:
    """(11,) ⌊ρ·n⌋ computed exactly in integers (no 0.3·10 = 2.999... pitfalls)."""
    return (np.arange(N_RATES) * int(n)) // (N_RATES - 1)


def ranking(scores: Sequence[float], direction: str) -> np.ndarray:
    """Feature indices in masking order: by descending score (morf) or ascending (lerf)."""
    check_param("ranking", "direction", direction, choices=DIRECTIONS)
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if not np.all(np.isfinite(s)):
        raise InputError("The attribution scores contain NaN or inf; cannot rank them.")
    return np.argsort(-s if direction == "morf" else s, kind="stable")


def curve_masks(scores: Sequence[float], direction: str) -> np.ndarray:
    """(11, n) bool masks (1 = keep): row j masks the first ⌊ρ_j·n⌋ ranked features."""
    order = ranking(scores, direction)
    n = order.size
    masks = np.ones((N_RATES, n), dtype=bool)
    for j, k in enumerate(n_masked(n)):
        masks[j, order[:k]] = False
    return masks


def auc(d: Sequence[float], *, kind: str = "mean") -> float:
    """Area under a curve over the 11 rates: "mean" (GiLOT) or "trapezoid" over [0, 1]."""
    check_param("auc", "kind", kind, choices=("mean", "trapezoid"))
    d = np.asarray(d, dtype=np.float64).reshape(-1)
    if d.size != N_RATES:
        raise InputError(f"A curve has {N_RATES} points; got {d.size}.")
    if kind == "mean":
        return float(d.mean())
    return float(((d[1:] + d[:-1]) / 2).sum() / (N_RATES - 1))


@dataclass(frozen=True)
class Curves:
    """MoRF and LeRF curves d(ρ) (11 points each) and their AUCs; ``abpc`` = morf - lerf."""

    morf_curve: tuple[float, ...]
    lerf_curve: tuple[float, ...]
    morf: float
    lerf: float
    variant: str

    @property
    def abpc(self) -> float:
        return self.morf - self.lerf

    def as_dict(self) -> dict[str, object]:
        return {"variant": self.variant, "morf": self.morf, "lerf": self.lerf,
                "abpc": self.abpc, "morf_curve": list(self.morf_curve),
                "lerf_curve": list(self.lerf_curve)}


def fixed_output_curves(
    scores: Sequence[float],
    value: Callable[[np.ndarray], np.ndarray],
    *,
    auc_kind: str = "mean",
) -> Curves:
    """MoRF/LeRF with the fixed-output discrepancy d(ρ) = v(x_0) - v(x_ρ).

    value: masks (m, n) bool -> (m,) mean log-probs of the explained output (a ScoringGame
           with the ``nll`` target, mean reduction; any memoising Game works)
    """
    masks = np.concatenate([curve_masks(scores, "morf"), curve_masks(scores, "lerf")])
    v = np.asarray(value(masks), dtype=np.float64).reshape(-1)
    if v.size != len(masks):
        raise InputError(f"The value function gave {v.size} values for {len(masks)} masks.")
    d = v[0] - v  # row 0 (and row 11) is the unmasked prompt
    dm, dl = d[:N_RATES], d[N_RATES:]
    return Curves(tuple(dm), tuple(dl), auc(dm, kind=auc_kind), auc(dl, kind=auc_kind),
                  "fixed_output")


def embedding_discrepancy(ref: np.ndarray, others: np.ndarray) -> np.ndarray:
    """100·(1 - cos) between a reference vector (d,) and rows of ``others`` (m, d)."""
    ref = np.asarray(ref, dtype=np.float64)
    others = np.asarray(others, dtype=np.float64)
    nr = np.linalg.norm(ref)
    no = np.linalg.norm(others, axis=1)
    cos = (others @ ref) / np.maximum(nr * no, 1e-12)
    return 100.0 * (1.0 - np.clip(cos, -1.0, 1.0))


def regenerate_curves(
    scores: Sequence[float],
    generate: Callable[[np.ndarray], list[str]],
    embed: Callable[[list[str]], np.ndarray],
    *,
    auc_kind: str = "mean",
) -> Curves:
    """MoRF/LeRF with GiLOT's regenerate discrepancy.

    generate: masks (m, n) -> m greedy responses (texts) under the masked prompts
    embed:    texts -> (m, d) sentence embeddings
    d(ρ) = 100·(1 - cos(SE(o_ρ), SE(o_0))); identical texts give exactly 0.
    """
    masks = np.concatenate([curve_masks(scores, "morf"), curve_masks(scores, "lerf")])
    texts = list(generate(masks))
    if len(texts) != len(masks):
        raise InputError(f"generate gave {len(texts)} texts for {len(masks)} masks.")
    uniq = sorted(set(texts))
    vecs = np.asarray(embed(uniq), dtype=np.float64)
    row = {t: i for i, t in enumerate(uniq)}
    v = vecs[[row[t] for t in texts]]
    d = embedding_discrepancy(v[0], v)
    d[[i for i, t in enumerate(texts) if t == texts[0]]] = 0.0
    dm, dl = d[:N_RATES], d[N_RATES:]
    return Curves(tuple(dm), tuple(dl), auc(dm, kind=auc_kind), auc(dl, kind=auc_kind),
                  "regenerate")
