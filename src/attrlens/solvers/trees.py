"""ProxySPEX numerics: exact Fourier spectrum of LightGBM tree ensembles, truncation, refit.

ProxySPEX (Butler et al., NeurIPS 2025; METHODS.md §3.1, pinned to spectralexplain's
``proxy_spex``): fit gradient-boosted trees to (z, v(z)) on uniform random masks, read off
the trees' exact Walsh-Hadamard spectrum, keep the largest coefficients covering 95% of the
non-constant energy and refit them with ridge regression in the basis (-1)^<z,k>.

A tree over binary inputs is a sum over its leaves of the leaf value times the indicator of
the leaf's path.  At a split on feature i with child A taken when z_i = 0 and child B when
z_i = 1,

    f(z) = (A(z) + B(z))/2 + (-1)^{z_i} (A(z) - B(z))/2,

so F(S) += (A(S) + B(S))/2 and F(S xor {i}) += (A(S) - B(S))/2 (METHODS §3.1 step 3; the
symmetric difference keeps the formula exact when a feature repeats along a path).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from attrlens.errors import CapabilityError, InputError, ParameterError
from attrlens.params import check_param, check_seed
from attrlens.solvers.fourier import fourier_basis
from attrlens.solvers.regression import value_scale

Coeffs = dict[tuple[int, ...], float]

_ZERO_THRESHOLD = 1e-35  # LightGBM's kZeroThreshold: |x| <= this counts as zero


def _goes_left(node: dict[str, Any], value: float) -> bool:
    """LightGBM's routing of a feature value (0.0 or 1.0) at a split node."""
    decision = node.get("decision_type", "<=")
    missing = node.get("missing_type", "None")
    if decision == "<=":
        if missing == "Zero" and abs(value) <= _ZERO_THRESHOLD:
            return bool(node.get("default_left", True))
        return value <= float(node["threshold"])
    if decision == "==":  # categorical: threshold lists the categories sent left, "0||3"
        cats = {int(c) for c in str(node["threshold"]).split("||") if c != ""}
        return int(value) in cats
    raise InputError(f"Unsupported LightGBM decision_type {decision!r} in the tree dump.")


def _tree_spectrum(node: dict[str, Any], n: int) -> Coeffs:
    """Fourier coefficients of one (sub)tree of a LightGBM ``dump_model`` structure."""
    if "leaf_value" in node:
        if "leaf_coeff" in node:
            raise InputError("Linear-tree LightGBM models are not supported (leaf_coeff present).")
        return {(): float(node["leaf_value"])}
    feat = int(node["split_feature"])
    if not 0 <= feat < n:
        raise InputError(
            f"The booster splits on feature {feat}, outside [0, {n}); pass the right n."
        )
    left = _tree_spectrum(node["left_child"], n)
    right = _tree_spectrum(node["right_child"], n)
    at_zero = left if _goes_left(node, 0.0) else right
    at_one = left if _goes_left(node, 1.0) else right
    if at_zero is at_one:  # both values take the same branch: the split is inert
        return at_zero
    out: Coeffs = {}
    for key in set(at_zero) | set(at_one):
        a, b = at_zero.get(key, 0.0), at_one.get(key, 0.0)
        out[key] = out.get(key, 0.0) + 0.5 * (a + b)
        flip = tuple(sorted(set(key) ^ {feat}))
        out[flip] = out.get(flip, 0.0) + 0.5 * (a - b)
    return out


def lightgbm_to_fourier(booster: Any, n: int) -> Coeffs:
    """Exact Fourier spectrum of a LightGBM regressor on {0,1}^n (sum over its trees).

    booster: ``lightgbm.Booster`` or a fitted ``LGBMRegressor``; n: number of features.
    Returns {sorted feature tuple: F(k)} with sum_k F(k) (-1)^<z,k> = booster.predict(z) for
    every 0/1 mask z (exact zeros dropped).
    """
    check_param("lightgbm_to_fourier", "n", n, kind=int, low=1)
    bst = getattr(booster, "booster_", booster)
    if not hasattr(bst, "dump_model"):
        raise InputError("lightgbm_to_fourier needs a lightgbm.Booster or a fitted LGBMRegressor.")
    dump = bst.dump_model()
    if dump.get("num_tree_per_iteration", 1) != 1:
        raise InputError("Only single-output (regression) LightGBM models can be converted.")
    total: Coeffs = {}
    for tree in dump["tree_info"]:
        for key, val in _tree_spectrum(tree["tree_structure"], n).items():
            total[key] = total.get(key, 0.0) + val
    if dump.get("average_output", False):  # random-forest mode averages the trees
        n_trees = max(1, len(dump["tree_info"]))
        total = {k: v / n_trees for k, v in total.items()}
    return {k: v for k, v in total.items() if v != 0.0}


def truncate_energy(coeffs: Coeffs, energy: float = 0.95, *, inclusive: bool = False) -> Coeffs:
    """Keep the largest non-constant coefficients covering ``energy`` of sum_{k != ()} F(k)^2.

    As spectralexplain: find the first coefficient (by decreasing |F|) at which the
    cumulative energy share reaches ``energy`` and keep those strictly larger in magnitude
    than it (``inclusive=True`` also keeps it and its ties, as shapiq does).  The constant
    term is always kept.
    """
    check_param("truncate_energy", "energy", energy, kind=(int, float), low=0.0, high=1.0)
    const = {(): coeffs[()]} if () in coeffs else {}
    rest = {k: v for k, v in coeffs.items() if k != ()}
    if not rest:
        return const
    mags = np.abs(np.array(list(rest.values()), dtype=np.float64))
    sq = np.sort(mags**2)[::-1]
    total = sq.sum()
    if total == 0.0:
        return const
    share = np.cumsum(sq) / total
    idx = int(np.argmax(share >= energy)) if np.any(share >= energy) else len(sq) - 1
    thresh = float(np.sqrt(sq[idx]))
    keep = mags >= thresh if inclusive else mags > thresh
    out = dict(const)
    out.update({k: v for (k, v), kp in zip(rest.items(), keep) if kp})
    return out


def ridge_refit(keys: list[tuple[int, ...]], masks: np.ndarray, values: np.ndarray) -> Coeffs:
    """Refit coefficients on a fixed support: RidgeCV(alphas=logspace(-6, 6, 100)).

    keys: the support (the constant () should be among them); masks (N, n) bool; values (N,).
    The constant term is the fit's unpenalised intercept (a resolution: spectralexplain fits
    the constant as one more penalised column, so a constant added to the game shrank the
    other coefficients: an offset of 1e8 moved Banzhaf values by 0.04, 1e10 by 4.0); without
    () among the keys there is no intercept.
    """
    from sklearn.linear_model import RidgeCV

    keys = list(keys)
    if not keys:
        return {}
    const = () in keys
    rest = [k for k in keys if k != ()]
    y = np.asarray(values, dtype=np.float64)
    s = value_scale(y)  # solved at unit scale: the ridge solution is scale-equivariant
    if not rest:
        return {(): float(y.mean())}
    x = fourier_basis(rest, masks)
    reg = RidgeCV(alphas=np.logspace(-6, 6, 100), fit_intercept=const).fit(x, y / s)
    out = {(): float(reg.intercept_) * s} if const else {}
    out.update({k: float(c) * s for k, c in zip(rest, reg.coef_)})
    return {k: out[k] for k in keys}


#: LightGBM grids besides max_depth in {max(1, t-2), t}: "reference" is spectralexplain's
#: ``proxy_spex`` default (METHODS.md §3.1 step 2); "small" is shapiq's (faster)
GRIDS = {
    "reference": {"n_estimators": [500, 1000, 5000], "learning_rate": [0.01, 0.1]},
    "small": {"n_estimators": [500, 1000], "learning_rate": [0.01, 0.1]},
}


def proxyspex_fit(
    masks: np.ndarray,
    values: np.ndarray,
    *,
    max_order: int = 5,
    seed: int = 0,
    energy: float = 0.95,
    grid: Literal["reference", "small"] | dict[str, list] = "reference",
    n_jobs: int = 1,
    cv: int = 5,
    return_info: bool = False,
    inclusive: bool = True,
) -> Coeffs | tuple[Coeffs, dict[str, Any]]:
    """ProxySPEX: LightGBM proxy -> exact spectrum -> energy truncation -> ridge refit.

    masks: (N, n) {0,1} (1 = keep), ideally uniform random; values: (N,) v(masks).
    max_order: t; the depth grid is {max(1, t-2), t}.  grid: "reference" (500/1000/5000
    trees x learning rate 0.01/0.1, spectralexplain's default), "small" (500/1000 trees, as
    shapiq) or an explicit sklearn param_grid dict.  Model selection: ``cv``-fold CV R^2
    with shuffled folds (KFold(shuffle=True, random_state=seed): masks may arrive in binary
    order when every coalition is evaluated).  n_jobs: LightGBM threads.  seed: LightGBM
    random_state and the fold split.  energy: truncation share (0.95).  inclusive: keep the
    coefficient whose energy reaches the share, and its ties (:func:`truncate_energy`;
    shapiq, and METHODS' "covering 95%"); False keeps only those above it (spectralexplain),
    which dropped one feature of an additive game whose 12 effects were all equal.
    Returns {sorted feature tuple: F(k)}; with return_info also a dict holding best_params,
    cv_r2, n_tree_coeffs and n_kept.
    """
    try:
        import lightgbm as lgb
    except ImportError as exc:
        raise CapabilityError(
            "ProxySPEX needs the 'lightgbm' package: pip install 'attrlens[proxyspex]'"
        ) from exc
    from sklearn.model_selection import GridSearchCV, KFold

    owner = "proxyspex_fit"
    check_param(owner, "max_order", max_order, kind=int, low=1)
    check_seed(owner, seed)
    check_param(owner, "n_jobs", n_jobs, kind=int, low=-1)
    check_param(owner, "cv", cv, kind=int, low=2)
    z = np.asarray(masks)
    y = np.asarray(values, dtype=np.float64).reshape(-1)
    if z.ndim != 2:
        raise InputError(f"masks must be 2-D (n_masks, n_features); got shape {z.shape}.")
    if y.shape[0] != z.shape[0]:
        raise InputError(f"values has {y.shape[0]} entries but masks has {z.shape[0]} rows.")
    if z.shape[0] < 2 * cv:
        raise InputError(
            f"ProxySPEX needs at least {2 * cv} samples for {cv}-fold CV; got {z.shape[0]}."
        )
    if not np.all(np.isfinite(y)):
        raise InputError("values contains NaN or infinite entries.")
    if isinstance(grid, str):
        if grid not in GRIDS:
            raise ParameterError(
                f"The 'grid' parameter of proxyspex_fit must be one of {', '.join(GRIDS)} or a "
                f"dict. Got {grid!r} instead."
            )
        param_grid: dict[str, list] = {
            "max_depth": sorted({max(1, max_order - 2), max_order}),
            **GRIDS[grid],
        }
    elif isinstance(grid, dict):
        param_grid = dict(grid)
    else:
        raise ParameterError(
            f"The 'grid' parameter of proxyspex_fit must be a str or dict. Got {grid!r}."
        )
    x = z.astype(np.float64)
    base = lgb.LGBMRegressor(verbose=-1, n_jobs=n_jobs, random_state=seed)
    search = GridSearchCV(
        base, param_grid=param_grid, scoring="r2",
        cv=KFold(n_splits=cv, shuffle=True, random_state=seed), n_jobs=1
    )
    # LightGBM keeps labels in float32: centred and at unit scale they neither overflow
    # (1e300) nor underflow (1e-300), nor lose the effects of a game on a large offset
    # (1e8 + effects of 1 round to multiples of 8); only the tree's support is used below
    centred = y - y.mean()
    search.fit(x, centred / value_scale(centred))
    tree_coeffs = lightgbm_to_fourier(search.best_estimator_, z.shape[1])
    kept = truncate_energy(tree_coeffs, energy, inclusive=inclusive)
    keys = sorted(set(kept) | {()}, key=lambda k: (len(k), k))
    coeffs = ridge_refit(keys, z, y)
    if not return_info:
        return coeffs
    info = {
        "best_params": dict(search.best_params_),
        "cv_r2": float(search.best_score_),
        "n_tree_coeffs": len(tree_coeffs),
        "n_kept": len(keys),
    }
    return coeffs, info


__all__ = ["GRIDS", "lightgbm_to_fourier", "proxyspex_fit", "ridge_refit", "truncate_energy"]
