"""Comparing next-token distributions: the top-k union (GiLOT's dynamic vocabulary
compression) and the divergences, in one place.

Used by the divergence targets (:mod:`.targets`: minus KL / JS / TV between the unmasked and
the masked prompt's distributions at each output token) and by GiLOT (:mod:`attrlens.games.
beams`: OT or KL between beam-marginalised distributions). All functions take torch tensors
of log-probabilities with the vocabulary on the last axis.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError, unknown_name_message

DIVERGENCES = ("kl", "js", "tv")
_EPS = 1e-12


def topk_union(
    p_logp: Any,
    q_logp: Any,
    *,
    top_k: int = 100,
    top_p: float | None = None,
    top_p_cap: int = 1000,
) -> tuple[Any, Any, Any, Any]:
    """Restrict row pairs of distributions to the union of their top tokens, renormalised.

    p_logp, q_logp: (P, V) log-probabilities (equal shapes). Returns ids (P, N) long, p (P, N) and
    q (P, N) float64, and the support mask (P, N) bool: p and q on the union of the top-k
    tokens of p and of q (or of their top-p nuclei, each capped at ``top_p_cap`` tokens),
    each renormalised to sum 1. Slots that repeat a token or fall outside a nucleus are
    padding (mask False, zero mass); N = 2k (or 2 x cap), slots sorted by token id.
    """
    import torch

    k = top_k if top_p is None else top_p_cap
    k = min(k, p_logp.shape[-1])
    vp, ip = p_logp.topk(k, dim=-1)
    vq, iq = q_logp.topk(k, dim=-1)
    ids = torch.cat([ip, iq], dim=-1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    if top_p is not None:
        # a token is in the nucleus while the mass before it is below top_p
        for v, sl in ((vp, slice(0, k)), (vq, slice(k, 2 * k))):
            before = torch.cumsum(v.double().exp(), dim=-1) - v.double().exp()
            valid[..., sl] = before < top_p
    # sort so that repeated ids are adjacent; a valid slot's duplicate is dropped
    key = torch.where(valid, ids, ids.new_full((), p_logp.shape[-1]))
    key, order = key.sort(dim=-1, stable=True)
    ids = ids.gather(-1, order)
    valid = valid.gather(-1, order)
    dup = torch.zeros_like(valid)
    dup[..., 1:] = key[..., 1:] == key[..., :-1]
    valid &= ~dup
    p = p_logp.gather(-1, ids).double().exp() * valid
    q = q_logp.gather(-1, ids).double().exp() * valid
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-300)
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-300)
    return ids, p, q, valid


def divergence(p: Any, q: Any, kind: str) -> Any:
    """KL(p || q), Jensen-Shannon or total variation along the last axis.

    p, q: (..., N) probabilities (torch) -> (...,). KL's logs are floored at 1e-12 (the
    union keeps every token p can emit inside q's support, so the floor rarely acts)."""
    import torch

    if kind == "kl":
        return torch.where(p > 0, p * (torch.log(p + _EPS) - torch.log(q + _EPS)), 0.0).sum(-1)
    if kind == "js":
        m = 0.5 * (p + q)
        return 0.5 * divergence(p, m, "kl") + 0.5 * divergence(q, m, "kl")
    if kind == "tv":
        return 0.5 * (p - q).abs().sum(-1)
    raise InputError(unknown_name_message("divergence", kind, DIVERGENCES))


def topk_divergence(p_logp: Any, q_logp: Any, kind: str, *, top_k: int = 100) -> Any:
    """A divergence between row pairs restricted to their renormalised top-k union.

    p_logp, q_logp: (..., V) log-probabilities of equal shape -> (...,) float64 tensor."""
    lead = p_logp.shape[:-1]
    V = p_logp.shape[-1]
    _, p, q, _ = topk_union(p_logp.reshape(-1, V), q_logp.reshape(-1, V), top_k=top_k)
    return divergence(p, q, kind).reshape(lead)


def kl_full(p_logp: Any, q_logp: Any, *, eps: float = 1e-12) -> np.ndarray:
    """KL(p || q) = sum_v p_v log(p_v / max(q_v, eps)) per row over the whole vocabulary.

    p_logp, q_logp: (P, V) log-probabilities -> (P,) float64 numpy (GiLOT Eq. 6; the floor
    only matters where q puts (numerically) no mass on a token p can emit)."""
    import torch

    lp = p_logp.double()
    lq = q_logp.double().clamp_min(float(np.log(eps)))
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0).cpu().numpy()
