"""RoPE-LIME (Picov & Goru, arXiv 2602.06275): explain a closed model's output with an open
RoPE surrogate, Sparse-K perturbations and a RoPE-space RWMD locality kernel.

The closed model is called once for its output o (by the API; zero calls when o is given).
Every perturbation is then scored by the open surrogate S on that fixed o (METHODS §1):

    masks      Sparse-K: each sample removes exactly K features (uniform K-subsets, no
               repeats; all of them when B >= C(n, K)), plus the unperturbed prompt.
               K = 1 with B = n is leave-one-out. (``budget`` = B + 1 evaluations.)
    y(z)       the game's value: -mean NLL of o under S given x(z) (or -KL/-JS/-TV against
               the unmasked run); higher = o better supported.
    D(z)       RWMD (Kusner et al. 2015) between the bags of RoPE vectors of the feature
               tokens of x and of x(z), at their original positions, ground cost 1 - cos
               (solvers.rwmd.rwmd_many).
    π(z)       sqrt(exp(-D(z)^2 / σ^2)), σ = 0.25 (π(1) = 1).
    fit        weighted ridge  min Σ π (y - β0 - βᵀz)^2 + α|β|^2, α = 1, intercept free.
    scores     β (= -β of the NLL regression: positive = keeping the feature supports o).

The paper's body could not be read; every [R] resolution of METHODS §1 is a parameter of
this class and is recorded in the result's params.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from ..errors import CapabilityError, InputError, ParameterError
from ..params import check_param
from ..registry import register
from .base import Explainer, Explanation

SPACES = ("embed_rope", "layer0_keys", "plain")
SAMPLINGS = ("exact", "balanced", "up_to_k")
COSTS = ("cosine", "euclidean")
SOLVERS = ("ridge", "ols")


# ---- RoPE space ---------------------------------------------------------------------------


def _rotate(x: Any, cos: Any, sin: Any) -> Any:
    """x (L, H, d_h) rotated like the surrogate's queries/keys: x cos + rotate_half(x) sin."""
    import torch

    half = x.shape[-1] // 2
    rot = torch.cat((-x[..., half:], x[..., :half]), dim=-1)  # HF rotate_half pairing (i, i+d/2)
    return x * cos[:, None, :] + rot * sin[:, None, :]


def _head_dim(cfg: Any) -> int:
    hd = getattr(cfg, "head_dim", None)
    return int(hd) if hd else int(cfg.hidden_size // cfg.num_attention_heads)


def rope_vectors(
    model: Any,
    token_ids: np.ndarray,
    positions: np.ndarray,
    *,
    space: str = "embed_rope",
) -> np.ndarray:
    """RoPE-space vectors of tokens at given absolute positions: (L, D) float64.

    embed_rope:  the input embedding E[t] (d), split into d/d_h chunks of the head size,
                 each rotated by the surrogate's own rotary module at position p (so
                 rope_theta and any rope scaling match the model exactly); D = d.
    layer0_keys: the post-RoPE layer-0 keys RoPE(W_K · norm(E[t])), all KV heads
                 concatenated; D = n_kv_heads * d_h.
    plain:       E[t] without rotation (ablation).
    """
    import torch

    if space not in SPACES:
        raise ParameterError(
            f"The 'space' parameter of RopeLimeExplainer must be one of "
            f"{', '.join(repr(s) for s in SPACES)}. Got {space!r} instead."
        )
    ids = torch.as_tensor(np.asarray(token_ids, dtype=np.int64), device=model.device)
    pos = torch.as_tensor(np.asarray(positions, dtype=np.int64), device=model.device)
    with torch.inference_mode():
        emb = model.input_embeddings(ids)  # (L, d)
        if space == "plain":
            return emb.double().cpu().numpy()
        rot = model.rotary_module()
        cfg = model.config
        d_h = _head_dim(cfg)
        if space == "embed_rope":
            if emb.shape[-1] % d_h:
                raise CapabilityError(
                    f"The surrogate's embedding size {emb.shape[-1]} is not a multiple of its "
                    f"head size {d_h}; use space='layer0_keys' or 'plain'."
                )
            x = emb.view(emb.shape[0], -1, d_h)
        else:
            layer = model.decoder.layers[0]
            h = layer.input_layernorm(emb[None])[0]
            x = layer.self_attn.k_proj(h).view(emb.shape[0], -1, d_h)
        cos, sin = rot(x, pos[None])  # (1, L, d_h) each, in x's dtype
        out = _rotate(x, cos[0], sin[0])
        return out.reshape(out.shape[0], -1).double().cpu().numpy()


# ---- the explainer ---------------------------------------------------------------------------


@register
class RopeLimeExplainer(Explainer):
    """RoPE-LIME. ``budget`` = surrogate evaluations, the unperturbed prompt included (the
    house convention), i.e. METHODS' B = budget - 1 Sparse-K samples; K = 1 with budget
    n + 1 is leave-one-out. Default min(512, max(64, 2n)). Parameters ([R] = our
    resolution, METHODS §1):

    k:            features removed per sample (Sparse-K) [R: 3]; clipped to n-1 (warned
                  and recorded as k_effective)
    sampling:     'exact' (uniform K-subsets) | 'balanced' (each feature removed about
                  equally often) | 'up_to_k' (size uniform in 1..K) [R: exact]
    space:        'embed_rope' | 'layer0_keys' | 'plain' [R: embed_rope]
    cost:         RWMD ground cost 'cosine' (1 - cos) | 'euclidean' [R: cosine]
    kernel_width: σ of π = sqrt(exp(-D^2/σ^2)), a float or 'median' [R: 0.25]
    alpha:        ridge penalty (intercept unpenalised) [R: 1.0]
    solver:       'ridge' | 'ols' (weighted least squares) [R: ridge]
    rwmd_filter_quantile: None, or q in (0, 1]: keep only masks whose D(z) is at most the
                  q-quantile of a pilot draw of 4(budget-1) masks [R: None]
    return_samples: put the masks, values and weights in the result's metadata
    """

    name = "rope_lime"
    description = (
        "RoPE-LIME: one closed-model call, Sparse-K perturbations scored by an open RoPE "
        "surrogate, RoPE-space RWMD kernel, weighted ridge."
    )
    needs_model = True
    needs_closed_model = False
    default_masker = "delete"
    default_target = "nll"

    def __init__(
        self,
        *,
        budget: int | None = None,
        k: int = 3,
        sampling: str = "exact",
        space: str = "embed_rope",
        cost: str = "cosine",
        kernel_width: float | str = 0.25,
        alpha: float = 1.0,
        solver: str = "ridge",
        rwmd_filter_quantile: float | None = None,
        return_samples: bool = False,
    ):
        super().__init__(
            budget=budget,
            k=k,
            sampling=sampling,
            space=space,
            cost=cost,
            kernel_width=kernel_width,
            alpha=alpha,
            solver=solver,
            rwmd_filter_quantile=rwmd_filter_quantile,
            return_samples=return_samples,
        )

    def min_budget(self, n_features: int) -> int:
        return 2  # the unperturbed prompt and one Sparse-K sample

    def default_budget(self, n_features: int) -> int:
        return int(min(512, max(64, 2 * n_features)))

    def validate(self, n_features: int) -> None:
        owner = "RopeLimeExplainer"
        p = self.params
        check_param(owner, "k", p["k"], kind=int, low=1)
        check_param(owner, "sampling", p["sampling"], choices=SAMPLINGS)
        check_param(owner, "space", p["space"], choices=SPACES)
        check_param(owner, "cost", p["cost"], choices=COSTS)
        if p["kernel_width"] != "median":
            check_param(owner, "kernel_width", p["kernel_width"], low=1e-9)
        check_param(owner, "alpha", p["alpha"], low=0)
        check_param(owner, "solver", p["solver"], choices=SOLVERS)
        if p["rwmd_filter_quantile"] is not None:
            check_param(owner, "rwmd_filter_quantile", p["rwmd_filter_quantile"], low=1e-9, high=1.0)
        check_param(owner, "return_samples", p["return_samples"], kind=bool)

    # -- pieces, usable on their own ----------------------------------------------------------
    def sample_masks(self, n: int, budget: int, seed: int) -> np.ndarray:
        """(m, n) distinct Sparse-K masks, row 0 = the unperturbed prompt; m <= budget
        (fewer when all C(n, K) subsets fit in the budget: then every one is taken)."""
        from ..solvers.sampling import sparse_k_masks

        k = min(int(self.params["k"]), n - 1)
        return np.asarray(
            sparse_k_masks(n, budget - 1, k, mode=self.params["sampling"], seed=seed,
                           include_full=True),
            dtype=bool,
        )

    def kernel(self, distances: np.ndarray) -> tuple[np.ndarray, float]:
        """Locality weights π = sqrt(exp(-D^2/σ^2)) and the σ used ('median': of D)."""
        from ..solvers.rwmd import kernel_weights

        w, sigma = kernel_weights(distances, sigma=self.params["kernel_width"], return_sigma=True)
        return np.asarray(w, dtype=np.float64), float(sigma)

    def fit(self, masks: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float, float]:
        """Weighted linear surrogate: (coef (n,) or (n, T), intercept, weighted R^2)."""
        from ..solvers.regression import weighted_r2, weighted_ridge

        X = masks.astype(np.float64)
        alpha = 0.0 if self.params["solver"] == "ols" else float(self.params["alpha"])
        coef, intercept = weighted_ridge(X, y, w, alpha=alpha, fit_intercept=True)
        r2 = weighted_r2(y, X @ coef + intercept, w)
        return np.asarray(coef, dtype=np.float64), float(intercept), float(r2)

    # -- the method -----------------------------------------------------------------------------
    def explain_context(self, ctx: ExplainContext) -> Explanation:
        n = ctx.n_features
        if n < 2:
            raise InputError(
                "RoPE-LIME needs at least 2 features to perturb; use a finer granularity "
                "(e.g. --granularity word)."
            )
        self.validate(n)
        budget = self.resolve_budget(n)
        p = self.params
        k_eff = min(int(p["k"]), n - 1)
        if k_eff != p["k"]:
            warnings.warn(
                f"rope_lime: k={p['k']} is not below the {n} features; each sample removes "
                f"k={k_eff} instead (recorded as k_effective).",
                stacklevel=2,
            )
        model = ctx.model

        # RoPE vectors of every feature token of the prompt, at its original position
        owner = np.asarray(ctx.features.token_features(), dtype=np.int64)
        feat_tok = np.flatnonzero(owner >= 0)
        vecs = rope_vectors(model, np.asarray(ctx.prompt_ids)[feat_tok], feat_tok, space=p["space"])

        def distances(masks: np.ndarray) -> np.ndarray:
            # D_z = the kept feature tokens of D_0 at their original positions: RWMD over
            # one (|D0|, |D0|) cost matrix, uniform token masses
            from ..solvers.rwmd import rwmd_many

            keep = ctx.masker.token_keep(masks)[:, feat_tok]
            return np.asarray(rwmd_many(vecs, keep_masks=keep, metric=p["cost"]), dtype=np.float64)

        masks = self.sample_masks(n, budget, ctx.seed)
        filter_info = None
        q = p["rwmd_filter_quantile"]
        if q is not None:
            masks, filter_info = self._filter(masks, n, budget, ctx.seed, float(q), distances)

        D = distances(masks)
        w, sigma = self.kernel(D)
        y = ctx.game(masks)
        coef, intercept, r2 = self.fit(masks, y, w)

        per_token = None
        if ctx.game.per_token:
            # the fit is linear in y: per-output-token coefficients average to ``coef``
            # (mean reduction) or sum to it (sum reduction)
            mat = ctx.game.per_token_values(masks)  # memoised: no extra surrogate passes
            cols = [self.fit(masks, mat[:, t], w)[0] for t in range(mat.shape[1])]
            per_token = np.stack(cols, axis=1)

        extra: dict[str, Any] = {
            "intercept": intercept,
            "fit_r2_weighted": r2,
            "n_samples": len(masks),
            "surrogate_evaluations": int(ctx.game.n_calls),
            "rwmd": {
                "min": float(D[1:].min()) if len(D) > 1 else 0.0,
                "median": float(np.median(D[1:])) if len(D) > 1 else 0.0,
                "max": float(D.max()),
            },
            "kernel_weight_sum": float(w.sum()),
        }
        if filter_info is not None:
            extra["rwmd_filter"] = filter_info
        if p["return_samples"]:
            extra["samples"] = {
                "masks": masks.astype(int).tolist(),
                "values": y.tolist(),
                "weights": w.tolist(),
                "distances": D.tolist(),
            }
        cfg = model.config
        params = {
            "k_effective": k_eff,
            "n_perturbations": int(len(masks) - 1),
            "sigma": sigma,
            "kernel": "sqrt(exp(-D^2/sigma^2))",
            "distance": "rwmd",
            "rwmd_masses": "uniform over feature tokens",
            "rwmd_positions": "original",
            "surrogate": getattr(model.info, "id", None),
            "rope_theta": getattr(cfg, "rope_theta", None)
            or (getattr(cfg, "rope_parameters", None) or {}).get("rope_theta"),
            "attribution": "coef of the value (= -coef of NLL); positive supports the output",
        }
        return Explanation(scores=coef, per_output_token=per_token, extra=extra, params=params)

    def _filter(
        self, masks: np.ndarray, n: int, budget: int, seed: int, q: float, distances: Any
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Keep the masks whose D(z) is at most the q-quantile of a pilot draw (METHODS §1(f)9)."""
        pilot = self.sample_masks(n, 4 * (budget - 1) + 1, seed + 1)[1:]
        if len(pilot) == 0:
            return masks, {"quantile": q, "threshold": None, "kept": int(len(masks) - 1)}
        d_pilot = distances(pilot)
        thr = float(np.quantile(d_pilot, q))
        pool = pilot[d_pilot <= thr + 1e-12][: budget - 1]
        out = np.vstack([masks[:1], pool])
        return out, {"quantile": q, "threshold": thr, "pilot": len(pilot), "kept": len(pool)}
