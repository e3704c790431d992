"""Perturbation-mask samplers, all in one place: leave-one-out, LIME text, Sparse-K
(RoPE-LIME), Bernoulli (gSMILE), and the coalition designs of the game-theoretic and
spectral methods: every coalition (``all_masks``), distinct uniform draws (``uniform_masks``:
Banzhaf, Faith-Banzhaf, ProxySPEX) and KernelSHAP's paired Shapley-kernel design with
complete enumeration of the sizes the budget covers (``kernel_shap_design``, as ``shap``).

Masks are bool arrays ``(n_masks, n_features)`` with True = feature kept (METHODS §0).

Sparse-K (METHODS §1(b) step 2, our reconstruction): every perturbed mask removes exactly
``K`` features, a uniformly random K-subset, and no mask appears twice; ``K = 1`` with
``budget = n`` is leave-one-out. ``budget`` counts the perturbed masks; the all-ones row
(the original input) comes first on top of them when ``include_full`` is set.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import numpy as np

from attrlens.errors import InputError, ParameterError
from attrlens.params import check_param, check_seed

__all__ = [
    "all_masks",
    "bernoulli_masks",
    "distinct_prefix",
    "kernel_shap_design",
    "lime_masks",
    "loo_masks",
    "sparse_k_masks",
    "uniform_masks",
]

_SPARSE_MODES = ("exact", "balanced", "up_to_k")
# Enumerate the whole candidate set (and draw from it without replacement) when it has at
# most this many masks and the budget is a sizeable part of it; rejection sampling would
# then spend most draws on duplicates.
_ENUM_LIMIT = 200_000
# Upper bound on rejection rounds (each round draws a batch); unreachable in practice
# because enumeration takes over whenever duplicates could dominate.
_MAX_ROUNDS = 10_000


def sparse_k_masks(
    n: int,
    budget: int,
    k: int,
    *,
    mode: str = "exact",
    seed: int = 0,
    include_full: bool = True,
) -> np.ndarray:
    """Sparse-K masks: each perturbed mask removes exactly K (or up to K) features.

    Args:
        n: number of features.
        budget: number of distinct perturbed masks wanted; capped at the number of
            possible masks (``C(n, K)``, or ``sum_{s<=K} C(n, s)`` for ``up_to_k``), in
            which case all of them are enumerated (in lexicographic order of the removed
            set, so ``K = 1, budget = n`` gives leave-one-out with row ``i`` removing
            feature ``i``).
        k: features removed per mask, ``1 <= k <= n``.
        mode: ``"exact"`` (uniform random K-subsets), ``"balanced"`` (each feature removed
            in ``floor(budget K / n)`` or ``ceil(budget K / n)`` masks; features with the
            fewest removals so far are taken first, ties broken at random, duplicate
            masks redrawn) or ``"up_to_k"`` (size uniform in ``{1..K}``, then a uniform
            subset of that size).
        seed: seed of ``np.random.default_rng``.
        include_full: put the all-ones mask (the original input) first.

    Returns:
        bool ``(m, n)`` with ``m = min(budget, n_possible) + include_full``; no two rows
        are equal.
    """
    owner = "sparse_k_masks"
    check_param(owner, "n", n, kind=int, low=1)
    check_param(owner, "budget", budget, kind=int, low=1)
    check_param(owner, "k", k, kind=int, low=1)
    if k > n:
        raise ParameterError(
            f"The 'k' parameter of {owner} must be an int in the range [1, n={n}] (a mask "
            f"cannot remove more features than there are). Got {k} instead."
        )
    check_param(owner, "mode", mode, choices=_SPARSE_MODES)
    check_seed(owner, seed)
    rng = np.random.default_rng(seed)

    if mode == "up_to_k":
        sizes = list(range(1, k + 1))
        total = sum(math.comb(n, s) for s in sizes)
    else:
        sizes = [k]
        total = math.comb(n, k)

    if budget >= total:
        removed = _enumerate_removals(n, sizes)
    elif mode == "balanced":
        removed = _balanced_removals(n, budget, k, rng)
    else:
        # Distribution over masks of the base draw: uniform size, then uniform subset.
        def weight_of(size: int) -> float:
            return 1.0 / (len(sizes) * math.comb(n, size))

        def draw(count: int) -> np.ndarray:
            sz = rng.choice(sizes, size=count) if len(sizes) > 1 else np.full(count, k)
            keys = rng.random((count, n))
            ranks = np.argsort(np.argsort(keys, axis=1), axis=1)
            return ranks < sz[:, None]  # True = removed: the sz smallest keys per row

        removed = _draw_unique(
            rng,
            budget,
            n,
            total=total,
            draw=draw,
            enumerate_all=lambda: _enumerate_removals(n, sizes),
            weight_of=weight_of,
        )
    masks = ~removed
    if include_full:
        masks = np.vstack([np.ones((1, n), dtype=bool), masks])
    return masks


def bernoulli_masks(
    n: int,
    budget: int,
    *,
    p_keep: float = 0.5,
    seed: int = 0,
    min_kept: int = 1,
    sizes: np.ndarray | None = None,
    top_up: bool = False,
    max_draws: int | None = None,
) -> tuple[np.ndarray, dict[str, int]]:
    """Distinct Bernoulli masks (gSMILE): each feature kept independently with ``p_keep``.

    The all-removed mask is always redrawn (gSMILE rejects z = 0). A mask whose kept
    ``sizes`` (e.g. words per feature; 1 each by default) sum to less than
    ``min(min_kept, sizes.sum())`` is redrawn, or with ``top_up`` completed with random
    extra features until it has enough (the gSMILE reference). No mask repeats: draws
    stop at ``budget`` distinct masks or after ``max_draws`` draws (default
    ``200 budget + 1000``), so fewer masks come back when few valid masks exist.

    Returns:
        (masks bool ``(m, n)`` with ``1 <= m <= budget``, True = kept, in draw order;
        ``{"draws", "topped_up", "short_of_budget"}``). InputError if no valid mask was
        drawn.
    """
    owner = "bernoulli_masks"
    check_param(owner, "n", n, kind=int, low=1)
    check_param(owner, "budget", budget, kind=int, low=1)
    check_param(owner, "p_keep", p_keep, low=1e-12, high=1.0)
    check_seed(owner, seed)
    check_param(owner, "min_kept", min_kept, kind=int, low=0)
    size = np.ones(n, dtype=np.int64) if sizes is None else np.asarray(sizes, dtype=np.int64)
    if size.shape != (n,) or bool((size < 0).any()):
        raise InputError(f"sizes must be {n} non-negative integers; got shape {size.shape}.")
    rng = np.random.default_rng(seed)
    need = min(int(min_kept), int(size.sum()))
    limit = 200 * budget + 1000 if max_draws is None else int(max_draws)
    seen: set[bytes] = set()
    rows: list[np.ndarray] = []
    draws = topped = 0
    while len(rows) < budget and draws < limit:
        z = rng.random(n) < p_keep
        draws += 1
        if not z.any():
            continue
        if int(size[z].sum()) < need:
            if not top_up:
                continue
            for i in rng.permutation(np.flatnonzero(~z)):
                z[i] = True
                if int(size[z].sum()) >= need:
                    break
            topped += 1
        key = np.packbits(z).tobytes()
        if key in seen:
            continue
        seen.add(key)
        rows.append(z)
    if not rows:
        raise InputError(
            f"No mask with at least {need} kept (of {n} features) was drawn; lower min_kept."
        )
    info = {"draws": draws, "topped_up": topped, "short_of_budget": budget - len(rows)}
    return np.asarray(rows, dtype=bool), info


LIME_VARIANTS = ("lime_text", "distinct")


#: sizes drawn per call when the lime_text stream is walked in pieces (same draws as one call)
_SIZE_CHUNK = 1 << 20


def lime_masks(n: int, num_samples: int, *, seed: int = 0, variant: str = "lime_text",
               max_distinct: int | None = None) -> np.ndarray:
    """LIME text masks ``(m, n)``, row 0 = the original (all kept).

    ``"lime_text"`` (the reference ``LimeTextExplainer``): each of the ``num_samples - 1``
    other rows removes d features, d uniform in 1..n, a uniform d-subset; rows are drawn
    independently, so they can repeat (m = num_samples). The draws are those of
    ``np.random.RandomState(seed)`` in the reference's order (``randint(1, n + 1)`` then one
    ``choice(n, d, replace=False)`` per row), i.e. the reference's masks for
    ``random_state=seed``.

    ``"distinct"`` (attrlens before 0.2): d uniform in 1..n-1 (all removed only when n = 1),
    and no row repeats: m = min(num_samples, number of such masks + 1) distinct rows.

    max_distinct: return only the leading rows holding at most this many distinct masks
    (a budget of distinct evaluations), without building the rows after them: the same rows
    as ``masks[:distinct_prefix(masks, max_distinct)]``, in memory for those rows only.
    """
    owner = "lime_masks"
    check_param(owner, "n", n, kind=int, low=1)
    check_param(owner, "num_samples", num_samples, kind=int, low=1)
    check_seed(owner, seed)
    check_param(owner, "variant", variant, choices=LIME_VARIANTS)
    check_param(owner, "max_distinct", max_distinct, kind=int, low=1, none_ok=True)
    if variant == "lime_text":
        return _lime_text_masks(n, num_samples, seed, max_distinct)
    if max_distinct is not None:  # the rows are distinct: the first max_distinct of them
        num_samples = min(num_samples, max_distinct)
    if n == 1:
        return np.array([[True], [False]])[: min(num_samples, 2)]
    total = 2**n - 1 if n < 63 else None  # the full mask plus every d in 1..n-1
    want = num_samples if total is None else min(num_samples, total)
    rng = np.random.default_rng(seed)
    out = [np.ones(n, dtype=bool)]
    seen = {np.packbits(out[0]).tobytes()}
    for _ in range(_MAX_ROUNDS):
        if len(out) >= want:
            break
        d_all = rng.integers(1, n, size=2 * (want - len(out)) + 16)
        for d in d_all:
            row = np.ones(n, dtype=bool)
            row[rng.choice(n, size=int(d), replace=False)] = False
            key = np.packbits(row).tobytes()
            if key not in seen:
                seen.add(key)
                out.append(row)
                if len(out) >= want:
                    break
    return np.asarray(out, dtype=bool)


def _lime_text_masks(n: int, num_samples: int, seed: int,
                     max_distinct: int | None) -> np.ndarray:
    """The reference's draws, walked in pieces: the sizes are the first num_samples - 1
    draws of RandomState(seed) and the subsets come after all of them, so one generator
    reads the sizes piece by piece while a second, moved past every size, draws the
    subsets; rows stop at the (max_distinct + 1)-th distinct mask."""
    sizes_rs, subsets_rs = np.random.RandomState(seed), np.random.RandomState(seed)
    left = num_samples - 1
    while left:  # move the subsets' generator past all the sizes
        k = min(left, _SIZE_CHUNK)
        subsets_rs.randint(1, n + 1, k)
        left -= k
    rows = [np.ones(n, dtype=bool)]
    seen = {rows[0].tobytes()}
    left = num_samples - 1
    while left:
        sizes = sizes_rs.randint(1, n + 1, min(left, _SIZE_CHUNK))
        left -= len(sizes)
        for d in sizes:
            row = np.ones(n, dtype=bool)
            row[subsets_rs.choice(n, d, replace=False)] = False
            key = row.tobytes()
            if max_distinct is not None and key not in seen and len(seen) >= max_distinct:
                return np.asarray(rows, dtype=bool)
            seen.add(key)
            rows.append(row)
    return np.asarray(rows, dtype=bool)


def distinct_prefix(masks: np.ndarray, max_distinct: int) -> int:
    """The number of leading rows of ``masks`` that hold at most ``max_distinct`` distinct
    rows (how far a with-replacement sample can go on a budget of distinct evaluations)."""
    seen: set[bytes] = set()
    for i, row in enumerate(np.asarray(masks, dtype=bool)):
        seen.add(np.packbits(row).tobytes())
        if len(seen) > max_distinct:
            return i
    return len(masks)


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _enumerate_removals(n: int, sizes: list[int]) -> np.ndarray:
    """All masks removing ``s`` features for ``s`` in sizes, True = removed, lex order."""
    rows = []
    for s in sizes:
        for combo in itertools.combinations(range(n), s):
            row = np.zeros(n, dtype=bool)
            row[list(combo)] = True
            rows.append(row)
    return np.array(rows, dtype=bool).reshape(-1, n)


def _draw_unique(
    rng: np.random.Generator,
    budget: int,
    n: int,
    *,
    total: int,
    draw: Callable[[int], np.ndarray],
    enumerate_all: Callable[[], np.ndarray],
    weight_of: Callable[[int], float],
) -> np.ndarray:
    """``budget`` distinct rows, drawn in sequence without replacement.

    Sequential sampling without replacement from the base distribution: each new row is a
    base draw conditioned on being new. Rejection sampling does exactly that; when the
    candidate set is small enough to list and the budget is a sizeable part of it, the
    same distribution is drawn from the list instead (``weight_of(row sum)`` is the base
    probability of a row), which cannot stall on duplicates.
    """
    if total <= _ENUM_LIMIT and total * n <= 50_000_000 and 4 * budget >= total:
        cands = enumerate_all()
        probs = np.array([weight_of(int(s)) for s in cands.sum(axis=1)])
        idx = rng.choice(len(cands), size=budget, replace=False, p=probs / probs.sum())
        return cands[idx]
    out = np.empty((budget, n), dtype=bool)
    seen: set[bytes] = set()
    filled = 0
    for _ in range(_MAX_ROUNDS):
        batch = draw(max(2 * (budget - filled), 16))
        for row in batch:
            key = np.packbits(row).tobytes()
            if key in seen:
                continue
            seen.add(key)
            out[filled] = row
            filled += 1
            if filled == budget:
                return out
    raise RuntimeError("mask sampling did not finish")  # pragma: no cover


def _balanced_removals(n: int, budget: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """Balanced exact-K removal sets (True = removed), ``budget < C(n, k)``.

    Each new mask removes the K features removed least often so far, ties broken by fresh
    random keys; taking the K smallest counts keeps ``max - min <= 1`` over features, so
    every feature ends up removed ``floor(budget K / n)`` or ``ceil(budget K / n)`` times.
    A duplicate is redrawn with new tie-breaking keys; if the least-removed features only
    admit masks already used (rare: it needs nearly all K-subsets of a count class to be
    taken), features one removal ahead are admitted, which may break the balance by one.
    """
    counts = np.zeros(n, dtype=np.int64)
    out = np.zeros((budget, n), dtype=bool)
    seen: set[bytes] = set()
    for i in range(budget):
        row, key = None, b""
        for attempt in range(200):
            # First tries: pure tie-breaking among equal counts. Later tries add noise of
            # growing scale, so features one removal ahead can enter before balance is
            # given up entirely.
            scale = 0.0 if attempt < 10 else 0.1 * (attempt - 9)
            noise = rng.random(n)
            order = np.lexsort((noise, counts + scale * noise))
            cand = np.zeros(n, dtype=bool)
            cand[order[:k]] = True
            key = np.packbits(cand).tobytes()
            if key not in seen:
                row = cand
                break
        while row is None:
            cand = np.zeros(n, dtype=bool)
            cand[rng.choice(n, size=k, replace=False)] = True
            key = np.packbits(cand).tobytes()
            if key not in seen:
                row = cand
        seen.add(key)
        out[i] = row
        counts += row
    return out


def loo_masks(n: int) -> np.ndarray:
    """(n + 1, n) masks: the full coalition, then each feature removed alone."""
    masks = np.ones((n + 1, n), dtype=bool)
    masks[np.arange(1, n + 1), np.arange(n)] = False
    return masks


# ---- coalition designs of the game-theoretic and spectral methods ---------------------------

# 2^n above this many coalitions is never enumerated
_MAX_ENUM_FEATURES = 30


def all_masks(n: int) -> np.ndarray:
    """(2^n, n) bool: row r keeps feature i iff bit i of r is set (binary order)."""
    check_param("all_masks", "n", n, kind=int, low=0, high=_MAX_ENUM_FEATURES)
    idx = np.arange(2**n, dtype=np.int64)
    return ((idx[:, None] >> np.arange(n)) & 1).astype(bool)


def n_coalitions(n: int) -> int | None:
    """2^n, or None when n is too large to ever enumerate."""
    return 2**n if n <= _MAX_ENUM_FEATURES else None


def uniform_masks(n: int, count: int, rng: np.random.Generator) -> np.ndarray:
    """(m, n) distinct masks drawn uniformly from {0,1}^n, m = min(count, 2^n).

    When ``count >= 2^n`` every coalition is returned once (binary order, see
    :func:`all_masks`), so small games are solved exactly; otherwise rows are distinct
    uniform draws (repeats rejected).
    """
    check_param("uniform_masks", "count", count, kind=int, low=0)
    total = n_coalitions(n)
    if total is not None and count >= total:
        return all_masks(n)
    out = np.empty((0, n), dtype=bool)
    seen: set[bytes] = set()
    for _ in range(100):
        if len(out) >= count:
            break
        cand = rng.random((2 * (count - len(out)) + 8, n)) < 0.5
        fresh = []
        for row in cand:
            key = np.packbits(row).tobytes()
            if key not in seen:
                seen.add(key)
                fresh.append(row)
                if len(out) + len(fresh) >= count:
                    break
        if fresh:
            out = np.vstack([out, np.asarray(fresh, dtype=bool)])
    return out


def _kernel_size_mass(n: int) -> np.ndarray:
    """Shapley-kernel mass of each coalition size s = 1..n-1 (normalised): ∝ (n-1)/(s(n-s))."""
    s = np.arange(1, n)
    w = (n - 1) / (s * (n - s))
    return w / w.sum()


def kernel_shap_design(
    n: int, n_samples: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """(masks (m, n), weights (m,)) for KernelSHAP, excluding the empty and full coalitions.

    Sizes are taken in pairs (s, n-s) from the outside in; a pair is enumerated completely
    when the budget left covers it at its kernel mass, and the rest of the budget is filled
    with paired random samples from the remaining sizes (duplicate draws add weight). The
    weights of each part sum to its kernel mass, so the full design's weights sum to one.
    At most ``n_samples`` distinct masks; the sampled part holds whole pairs only (an odd
    last slot is left unused).
    """
    mass = _kernel_size_mass(n)  # index s-1
    masks: list[np.ndarray] = []
    weights: list[float] = []
    left = n_samples
    remaining = mass.copy()
    for s in range(1, n // 2 + 1):  # sizes 1..floor(n/2) with their complements
        paired = s != n - s
        count = math.comb(n, s) * (2 if paired else 1)
        # the remaining kernel mass is spread over the remaining sizes; enumerate this pair
        # only if the budget share it would get covers every coalition of it
        pair_mass = remaining[s - 1] + (remaining[n - s - 1] if paired else 0.0)
        total_left = remaining.sum()
        if total_left <= 0 or left * pair_mass / total_left < count - 1e-9 or count > left:
            break
        for size in (s, n - s) if paired else (s,):
            w_each = mass[size - 1] / math.comb(n, size)
            for comb in itertools.combinations(range(n), size):
                row = np.zeros(n, dtype=bool)
                row[list(comb)] = True
                masks.append(row)
                weights.append(w_each)
            remaining[size - 1] = 0.0
        left -= count
    # whole pairs only: a coalition without its complement (an odd budget's last slot)
    # breaks the paired design's exactness on games of order <= 2 and biases every score
    left -= left % 2
    if left > 0 and remaining.sum() > 0:
        # paired random sampling over the sizes not enumerated
        p = remaining / remaining.sum()
        counts: dict[bytes, tuple[np.ndarray, list[float]]] = {}
        tries = 0
        max_tries = 50 * left + 100
        while len(counts) < left and tries < max_tries:
            tries += 1
            size = int(rng.choice(np.arange(1, n), p=p))
            row = np.zeros(n, dtype=bool)
            row[rng.choice(n, size=size, replace=False)] = True
            keys = [np.packbits(r).tobytes() for r in (row, ~row)]
            if keys[0] in counts:  # (drawn before: its complement was drawn with it)
                for key in keys:
                    counts[key][1][0] += 1.0
            else:  # (left is even and pairs come whole: both fit)
                for key, r in zip(keys, (row, ~row)):
                    counts[key] = (r, [1.0])
        if counts:
            total = sum(c[0] for _, c in counts.values())
            scale = remaining.sum() / total
            for r, c in counts.values():
                masks.append(r)
                weights.append(c[0] * scale)
    if not masks:
        return np.zeros((0, n), dtype=bool), np.zeros(0)
    return np.asarray(masks, dtype=bool), np.asarray(weights, dtype=float)
