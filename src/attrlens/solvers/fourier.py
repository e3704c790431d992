"""Sparse Walsh-Hadamard (Fourier) transform of set functions: the SPEX sampler and decoder.

Convention (METHODS.md §0): a mask z in {0,1}^n keeps feature i iff z_i = 1 and

    v(z) = sum_k F(k) (-1)^<z,k>,        F(k) = 2^-n sum_z (-1)^<z,k> v(z).

Coefficient dictionaries map a support set, as a sorted tuple of feature indices, to F(k);
``()`` is the constant term.

SPEX (Kang et al., ICML 2025; METHODS.md §3, pinned to sparse-transform 0.2.1):
  1. ``make_design``: C groups of uniform random M_c in {0,1}^(n x b) and a BCH-coded delay
     matrix D in {0,1}^((P+1) x n); queries u_{c,p}(l) = v(M_c l XOR d_p), l in {0,1}^b.
  2. ``spex_decode``: a forward-normalised WHT of each (c, p) block gives the bins
     U_{c,p}(j) = sum_{k: M_c^T k = j} (-1)^<d_p,k> F(k); a peeling decoder finds singleton
     bins (BCH hard or Chase soft decoding of the sign pattern), verifies them, and
     subtracts each found coefficient from its bin in every group until nothing changes.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from attrlens.errors import InputError, ParameterError
from attrlens.params import check_param, check_seed
from attrlens.solvers.bch import BCHCode, make_bch_code
from attrlens.solvers.regression import value_scale

Coeffs = dict[tuple[int, ...], float]

B_MIN = 3
B_MAX = 12


# ---------------------------------------------------------------------- design
def n_queries(n: int, b: int, *, t: int = 5, n_groups: int = 3) -> int:
    """Model evaluations of one SPEX design: N = C (P+1) 2^b (METHODS §3 Step 1 table)."""
    check_param("n_queries", "n", n, kind=int, low=1)
    check_param("n_queries", "b", b, kind=int, low=1, high=30)
    check_param("n_queries", "t", t, kind=int, low=1)
    check_param("n_queries", "n_groups", n_groups, kind=int, low=1)
    return n_groups * (make_bch_code(n, t).n_parity + 1) * (1 << b)


def b_for_budget(n: int, budget: int, *, t: int = 5, n_groups: int = 3) -> int:
    """Largest b in [3, 12] with C (P+1) 2^b <= budget (spectralexplain's rule).

    Raises ParameterError naming the minimum budget when even b = 3 does not fit.
    """
    check_param("b_for_budget", "budget", budget, kind=int, low=1)
    per_b = [n_queries(n, b, t=t, n_groups=n_groups) for b in range(B_MIN, B_MAX + 1)]
    if budget < per_b[0]:
        raise ParameterError(
            f"The 'budget' parameter of SPEX must be at least {per_b[0]} model calls for "
            f"n={n} features at t={t} (b=3); {per_b[1]} (b=4) is recommended. Got {budget} "
            "instead. Raise the budget, lower t, or use ProxySPEX/LIME for small budgets."
        )
    best = B_MIN
    for b, cost in zip(range(B_MIN, B_MAX + 1), per_b):
        if cost <= budget:
            best = b
    return best


def _bits_msb(b: int) -> np.ndarray:
    """All l in {0,1}^b as rows, index i <-> bits (i >> (b-1-r)) & 1 (first coordinate = MSB)."""
    idx = np.arange(1 << b)
    return ((idx[:, None] >> np.arange(b - 1, -1, -1)[None, :]) & 1).astype(np.uint8)


@dataclass(frozen=True, eq=False)
class SpexDesign:
    """A SPEX sampling design (METHODS §3 Step 1).

    Attributes: ``n`` features, ``b`` (the largest) sparsity exponent, ``t`` degree bound,
    ``n_groups`` C, ``seed``; ``Ms`` (C, n, b) uint8 subsampling matrices, ``D`` (P+1, n)
    uint8 delays.  Queries are ordered group-major, then delay, then l (first coordinate
    of l most significant): row (c*(P+1) + p)*2^b + l of ``masks()``.
    """

    n: int
    b: int
    t: int
    n_groups: int
    seed: int
    Ms: np.ndarray = field(repr=False)
    D: np.ndarray = field(repr=False)
    code: BCHCode = field(repr=False)

    @property
    def n_delays(self) -> int:
        """P+1, the number of delay rows."""
        return int(self.D.shape[0])

    @property
    def n_queries(self) -> int:
        """C (P+1) 2^b model evaluations at the design's b."""
        return self.n_groups * self.n_delays * (1 << self.b)

    def n_queries_at(self, b: int) -> int:
        """Model evaluations used by the nested sub-design with exponent b <= self.b."""
        self._check_b(b)
        return self.n_groups * self.n_delays * (1 << b)

    def _check_b(self, b: int) -> None:
        check_param("SpexDesign", "b", b, kind=int, low=1, high=self.b)

    def sample_index(self, b: int | None = None) -> np.ndarray:
        """Rows of ``masks()`` that form the nested design at exponent b: (C (P+1) 2^b,) int.

        The smaller design uses the first b columns of each M_c and every 2^(b_max-b)-th
        sample of each (c, p) block.
        """
        b = self.b if b is None else b
        self._check_b(b)
        step = 1 << (self.b - b)
        block = np.arange(self.n_groups * self.n_delays)[:, None] * (1 << self.b)
        return (block + np.arange(1 << b)[None, :] * step).reshape(-1)

    def masks(self, b: int | None = None) -> np.ndarray:
        """Query masks (1 = keep), shape (C (P+1) 2^b, n) bool, in the design's order.

        For b < self.b this equals ``masks()[sample_index(b)]``.
        """
        b = self.b if b is None else b
        self._check_b(b)
        lbits = _bits_msb(b)  # (2^b, b)
        out = np.empty((self.n_groups, self.n_delays, 1 << b, self.n), dtype=bool)
        dmat = self.D.astype(bool)
        for c in range(self.n_groups):
            ml = ((lbits.astype(np.int32) @ self.Ms[c, :, :b].T.astype(np.int32)) & 1).astype(bool)
            out[c] = ml[None, :, :] ^ dmat[:, None, :]
        return out.reshape(-1, self.n)

    def iter_masks(self, b: int | None = None, *, chunk: int = 65536) -> Iterator[np.ndarray]:
        """``masks(b)`` in consecutive row blocks of at most ``chunk`` rows (bounded memory).

        Blocks follow the design order, so ``np.concatenate(list(iter_masks(b)))`` equals
        ``masks(b)``; at n = 1000, b = 12 the full array would take 690 MB.
        """
        b = self.b if b is None else b
        self._check_b(b)
        check_param("SpexDesign.iter_masks", "chunk", chunk, kind=int, low=1)
        lbits = _bits_msb(b).astype(np.int32)
        dmat = self.D.astype(bool)
        size = 1 << b
        buf: list[np.ndarray] = []
        held = 0
        for c in range(self.n_groups):
            ml = ((lbits @ self.Ms[c, :, :b].T.astype(np.int32)) & 1).astype(bool)
            for p in range(self.n_delays):
                block = ml ^ dmat[p][None, :]
                for s in range(0, size, chunk):
                    part = block[s : s + chunk]
                    buf.append(part)
                    held += part.shape[0]
                    while held >= chunk:
                        joined = np.concatenate(buf)
                        yield joined[:chunk]
                        rest = joined[chunk:]
                        buf, held = ([rest] if rest.shape[0] else []), rest.shape[0]
        if held:
            yield np.concatenate(buf)


def make_design(n: int, *, b: int, t: int = 5, n_groups: int = 3, seed: int = 0) -> SpexDesign:
    """Build a SPEX design: C random M_c (n x b) and the BCH delay matrix (METHODS §3 Step 1).

    n: number of features; b: sparsity exponent (2^b bins per group); t: degree bound
    (BCH designed distance 2t+1); n_groups: C; seed: seeds M_c (np.random.default_rng).
    """
    check_param("make_design", "n", n, kind=int, low=1)
    check_param("make_design", "b", b, kind=int, low=1, high=20)
    check_param("make_design", "t", t, kind=int, low=1)
    check_param("make_design", "n_groups", n_groups, kind=int, low=1)
    check_seed("make_design", seed)
    code = make_bch_code(n, t)
    rng = np.random.default_rng(seed)
    ms = rng.integers(0, 2, size=(n_groups, n, b), dtype=np.uint8)
    return SpexDesign(
        n=n, b=b, t=t, n_groups=n_groups, seed=seed, Ms=ms, D=code.delay_matrix(), code=code
    )


# ---------------------------------------------------------------------- WHT
def fwht(x: np.ndarray, *, normalize: bool = True) -> np.ndarray:
    """Fast Walsh-Hadamard transform along the last axis (length 2^b), vectorised.

    X(j) = 2^-b sum_l (-1)^<l,j> x(l) when ``normalize`` (forward scaling, as
    sparse-transform's ``gwht``), else without the 2^-b.  Bit r of an index is the same
    coordinate for l and j, so the result does not depend on the bit order convention.
    """
    x = np.asarray(x, dtype=np.float64)
    size = x.shape[-1]
    b = size.bit_length() - 1
    if size != 1 << b:
        raise InputError(f"fwht needs a last axis of length 2^b; got {size}.")
    lead = x.shape[:-1]
    y = x.reshape(-1, size).copy()
    h = 1
    while h < size:
        y = y.reshape(-1, size // (2 * h), 2, h)
        a = y[:, :, 0, :]
        c = y[:, :, 1, :]
        y = np.stack([a + c, a - c], axis=2)
        h *= 2
    y = y.reshape(*lead, size)
    return y / size if normalize else y


# ---------------------------------------------------------------------- helpers
def keys_to_matrix(keys: list[tuple[int, ...]], n: int):  # -> scipy.sparse.csr_matrix
    """Sparse 0/1 matrix (len(keys), n) whose row r has ones at the indices of keys[r]."""
    from scipy import sparse

    indptr = np.zeros(len(keys) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(k) for k in keys])
    indices = np.fromiter((i for k in keys for i in k), dtype=np.int64, count=int(indptr[-1]))
    if indices.size and (indices.min() < 0 or indices.max() >= n):
        raise InputError(f"Coefficient keys use feature indices outside [0, {n}).")
    data = np.ones(indices.size, dtype=np.float32)
    return sparse.csr_matrix((data, indices, indptr), shape=(len(keys), n))


def _as_masks(masks: np.ndarray) -> np.ndarray:
    z = np.asarray(masks)
    if z.ndim == 1:
        z = z[None, :]
    if z.ndim != 2:
        raise InputError(f"masks must be a 2-D array (n_masks, n_features); got shape {z.shape}.")
    return z.astype(bool, copy=False)


def fourier_basis(keys: list[tuple[int, ...]], masks: np.ndarray) -> np.ndarray:
    """Design matrix X[i, r] = (-1)^<z_i, k_r>, shape (n_masks, len(keys)) float64."""
    z = _as_masks(masks)
    if not keys:
        return np.zeros((z.shape[0], 0))
    kmat, cols = _compact_keys(keys, z.shape[1])
    zt = np.ascontiguousarray(z[:, cols].T).astype(np.float32)
    par = np.asarray(kmat @ zt).T.astype(np.int64) & 1
    return 1.0 - 2.0 * par


def _compact_keys(keys: list[tuple[int, ...]], n: int):  # -> (csr_matrix, np.ndarray)
    """Key matrix restricted to the features the keys use, and those feature indices."""
    kmat = keys_to_matrix(keys, n)
    cols = np.unique(kmat.indices)
    return kmat[:, cols].tocsr(), cols


def predict(coeffs: Coeffs, masks: np.ndarray, *, chunk: int = 8192) -> np.ndarray:
    """Surrogate values v_hat(z) = sum_k F(k) (-1)^<z,k> for each mask row: (N, n) -> (N,).

    Sparse in the keys (cost ~ nnz(keys) * N), chunked over masks to bound memory.
    """
    z = _as_masks(masks)
    out = np.zeros(z.shape[0])
    if not coeffs:
        return out
    keys = list(coeffs)
    vals = np.array([coeffs[k] for k in keys], dtype=np.float64)
    kmat, cols = _compact_keys(keys, z.shape[1])
    for s in range(0, z.shape[0], chunk):
        # only the columns the keys touch; transposed so the sparse product streams rows
        zt = np.ascontiguousarray(z[s : s + chunk, cols].T).astype(np.float32)
        par = np.asarray(kmat @ zt).astype(np.int64) & 1  # (n_keys, chunk)
        out[s : s + chunk] = vals @ (1.0 - 2.0 * par)
    return out


def fourier_r2(coeffs: Coeffs, masks: np.ndarray, values: np.ndarray) -> float:
    """Faithfulness R^2 = 1 - ||v - v_hat||^2 / ||v - mean v||^2 on the given masks (METHODS §5.2)."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    z = _as_masks(masks)
    if v.shape[0] != z.shape[0]:
        raise InputError(f"values has {v.shape[0]} entries but masks has {z.shape[0]} rows.")
    from .regression import weighted_r2

    # constant values: 1.0 for a perfect prediction, 0.0 otherwise (sklearn's convention)
    return weighted_r2(v, predict(coeffs, z))


def _rows_to_keys(rows) -> list[tuple[int, ...]]:  # rows: iterable of (n,) bool
    return [tuple(int(i) for i in np.flatnonzero(r)) for r in rows]


# ---------------------------------------------------------------------- decoder
#: a bin whose energy per entry is at most this share of the values' variance (plus the
#: noise term) holds nothing; a resolution of the reference's absolute 1e-9, which made
#: the answer depend on the game's units
ZERO_FLOOR = 1e-9

@dataclass
class SpexDecodeResult:
    """Output of ``spex_transform``: coefficients plus decoder diagnostics."""

    coeffs: Coeffs
    b: int
    n_queries: int
    n_iterations: int
    n_peeled: int
    stopped_by: str  # "converged", "trap_exit" or "max_iter"
    n_multiton_bins: int  # bins still unexplained at the end
    residual_energy: float  # sum of squared bin residuals / sum of squared initial bins


def _bin_index(keys: np.ndarray, ms: np.ndarray) -> np.ndarray:
    """Bin j of each key in each group: keys (S, n) bool, ms (C, n, b) -> (S, C) int."""
    c, n, b = ms.shape
    flat = ms.transpose(1, 0, 2).reshape(n, c * b).astype(np.float32)
    bits = (keys.astype(np.float32) @ flat).astype(np.int64) & 1
    weights = 1 << np.arange(b - 1, -1, -1, dtype=np.int64)
    return bits.reshape(-1, c, b) @ weights


def spex_transform(
    design: SpexDesign,
    values: np.ndarray,
    *,
    b: int | None = None,
    decoder: Literal["soft", "hard"] = "soft",
    chase_depth: int | None = None,
    max_iter: int = 100,
    res_energy_cutoff: float = 0.9,
    trap_exit: int | None = 15,
    noise_sd: float = 0.0,
    refit: Literal["lasso"] | None = None,
    seed: int = 0,
) -> SpexDecodeResult:
    """SPEX peeling decoder with diagnostics; see ``spex_decode`` for the arguments."""
    owner = "spex_decode"
    check_param(owner, "decoder", decoder, choices=["soft", "hard"])
    check_param(owner, "refit", refit, choices=["lasso"], none_ok=True)
    check_param(owner, "max_iter", max_iter, kind=int, low=1)
    check_param(owner, "res_energy_cutoff", res_energy_cutoff, kind=(int, float), low=0.0)
    check_param(owner, "noise_sd", noise_sd, kind=(int, float), low=0.0)
    if trap_exit is not None:
        check_param(owner, "trap_exit", trap_exit, kind=int, low=1)
    if chase_depth is not None:
        check_param(owner, "chase_depth", chase_depth, kind=int, low=0)
    b = design.b if b is None else b
    check_param(owner, "b", b, kind=int, low=1, high=design.b)

    vals = np.asarray(values, dtype=np.float64).reshape(-1)
    if vals.shape[0] == design.n_queries:
        sub_vals = vals[design.sample_index(b)]
    elif vals.shape[0] == design.n_queries_at(b):  # only the nested b-design was evaluated
        sub_vals = vals
    else:
        raise InputError(
            f"values has {vals.shape[0]} entries but the design has {design.n_queries} queries "
            f"(n={design.n}, b={design.b}, t={design.t}; {design.n_queries_at(b)} at b={b}); "
            "pass v(design.masks()) or v(design.masks(b))."
        )
    if not np.all(np.isfinite(vals)):
        raise InputError(
            "values contains NaN or infinite entries; the value function must be finite."
        )
    # decoded at unit scale (every step is linear in the values, the thresholds relative),
    # then scaled back: squares of values near 1e±300 over- or underflow
    scale = value_scale(sub_vals)
    sub_vals = sub_vals / scale
    noise_sd = noise_sd / scale

    code = design.code
    c_groups, n_del, n_bins = design.n_groups, design.n_delays, 1 << b
    ms = design.Ms[:, :, :b]
    dmat_f = design.D.T.astype(np.float32)  # (n, P+1)
    sub = sub_vals.reshape(c_groups, n_del, n_bins)
    bins = np.ascontiguousarray(fwht(sub).transpose(0, 2, 1))  # (C, 2^b, P+1)
    init_energy = float(np.sum(bins**2))

    # zero-ton threshold per entry (gamma = 0.5): the floor is relative to the variance of
    # the values (the reference's absolute 1e-9 assumes a game of about unit variance: it
    # zeroed every effect of a game scaled by 1e-5 and a third of one scaled by 1e-4)
    cutoff = ZERO_FLOOR * float(np.var(sub_vals)) + 1.5 * noise_sd**2 / n_bins
    to_check = np.ones((c_groups, n_bins), dtype=bool)
    found: dict[bytes, list] = {}  # packed key -> [key row, summed value]
    peeled_at: list[int] = []
    it = 0
    stopped = "max_iter"
    cont = True
    while cont and it < max_iter:
        energy = np.einsum("cjp,cjp->cj", bins, bins)
        to_check &= energy > cutoff * n_del
        cs, js = np.nonzero(to_check)
        singles_k = np.zeros((0, design.n), dtype=bool)
        singles_rho = np.zeros(0)
        if cs.size:
            cols = bins[cs, js]  # (A, P+1)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratios = cols[:, 1:] / cols[:, :1]
            if decoder == "hard":
                cand, _ = code.decode_parity(np.nan_to_num(ratios, nan=0.0) < 0)
            else:
                cand, _ = code.decode_soft(ratios, chase_depth=chase_depth)
            # verification: projection on the candidate's signature and bin consistency
            sig = 1.0 - 2.0 * ((cand.astype(np.float32) @ dmat_f).astype(np.int64) & 1)
            rho = np.einsum("ap,ap->a", sig, cols) / n_del
            resid = energy[cs, js] - n_del * rho**2
            ok = resid / energy[cs, js] < res_energy_cutoff
            ok &= _bin_index(cand, ms)[np.arange(cs.size), cs] == js
            to_check[cs[~ok], js[~ok]] = False  # multitons wait until something is peeled in
            singles_k, singles_rho = cand[ok], rho[ok]
        cont = bool(to_check.any())
        if (
            trap_exit is not None
            and it >= trap_exit
            and peeled_at[it - 1] == peeled_at[it - trap_exit]
        ):
            cont = False
            stopped = "trap_exit"
        if singles_k.shape[0]:
            packed = np.packbits(singles_k, axis=1)
            _, first, inv = np.unique(packed, axis=0, return_index=True, return_inverse=True)
            inv = inv.reshape(-1)
            counts = np.bincount(inv)
            rho_u = np.bincount(inv, weights=singles_rho) / counts  # peel_average
            keys_u = singles_k[first]
            sig_u = 1.0 - 2.0 * ((keys_u.astype(np.float32) @ dmat_f).astype(np.int64) & 1)
            jidx = _bin_index(keys_u, ms)  # (U, C)
            gidx = np.broadcast_to(np.arange(c_groups)[None, :], jidx.shape)
            delta = rho_u[:, None, None] * sig_u[:, None, :]  # (U, 1, P+1)
            np.subtract.at(
                bins,
                (gidx.reshape(-1), jidx.reshape(-1)),
                np.broadcast_to(delta, (keys_u.shape[0], c_groups, n_del)).reshape(-1, n_del),
            )
            to_check[gidx.reshape(-1), jidx.reshape(-1)] = True
            for r in range(keys_u.shape[0]):
                kb = packed[first[r]].tobytes()
                if kb in found:
                    found[kb][1] += float(rho_u[r])
                else:
                    found[kb] = [keys_u[r], float(rho_u[r])]
        peeled_at.append(len(found))
        it += 1
        if not cont and stopped != "trap_exit":
            stopped = "converged"

    if stopped == "max_iter":
        warnings.warn(
            f"SPEX peeling stopped after max_iter={max_iter} rounds with bins left to check; "
            "the spectrum may be incomplete. Raise max_iter or enable trap_exit.",
            RuntimeWarning,
            stacklevel=2,
        )
    rows = [key_row for key_row, _ in found.values()]
    coeffs: Coeffs = dict(zip(_rows_to_keys(rows), (value for _, value in found.values())))
    if refit == "lasso":
        coeffs = _lasso_refit(design, sub_vals, b, coeffs, seed=seed)
    energy = np.einsum("cjp,cjp->cj", bins, bins)
    return SpexDecodeResult(
        coeffs={k: c * scale for k, c in coeffs.items()},
        b=b,
        n_queries=design.n_queries_at(b),
        n_iterations=it,
        n_peeled=len(found),
        stopped_by=stopped,
        n_multiton_bins=int(np.sum(energy > cutoff * n_del)),
        residual_energy=float(np.sum(energy)) / init_energy if init_energy > 0 else 0.0,
    )


def spex_decode(
    design: SpexDesign,
    values: np.ndarray,
    *,
    b: int | None = None,
    decoder: Literal["soft", "hard"] = "soft",
    chase_depth: int | None = None,
    max_iter: int = 100,
    res_energy_cutoff: float = 0.9,
    trap_exit: int | None = 15,
    noise_sd: float = 0.0,
    refit: Literal["lasso"] | None = None,
    seed: int = 0,
) -> Coeffs:
    """Recover a sparse Fourier spectrum from SPEX queries (METHODS §3 Steps 2-3).

    design: the ``SpexDesign``; values: (design.n_queries,) v(design.masks()) in the
    design's order, or only v(design.masks(b)).  b: use the nested sub-design with this
    exponent (default design.b).
    decoder: "soft" (hard BCH decoding, then 2-Chase when it fails) or "hard"
    (Berlekamp-Massey only).  chase_depth: least-reliable positions flipped by Chase
    (default 2t).  max_iter / trap_exit: peeling stops after max_iter rounds, or when
    nothing new was peeled in the last ``trap_exit`` rounds (None disables).
    res_energy_cutoff: a bin is a singleton iff its residual after removing the candidate
    keeps less than this fraction of the bin energy (and the candidate hashes to the bin).
    noise_sd: noise level for the zero-ton threshold ZERO_FLOOR Var(values) +
    1.5 noise_sd^2 / 2^b.
    refit: "lasso" refits the values on support + {()} + singletons (LassoCV, 5-fold).
    seed: seeds the lasso cross-validation split only.

    Returns {sorted feature tuple: F(k)}, with v(z) = sum_k F(k) (-1)^<z,k>.
    """
    return spex_transform(
        design,
        values,
        b=b,
        decoder=decoder,
        chase_depth=chase_depth,
        max_iter=max_iter,
        res_energy_cutoff=res_energy_cutoff,
        trap_exit=trap_exit,
        noise_sd=noise_sd,
        refit=refit,
        seed=seed,
    ).coeffs


def _lasso_refit(
    design: SpexDesign, vals: np.ndarray, b: int, coeffs: Coeffs, *, seed: int
) -> Coeffs:
    """LassoCV refit on support + {()} + all singletons; vals are v(design.masks(b)).

    Memory: N x (|support| + n + 1) floats (e.g. 43k x 1.3k = 450 MB at n = 1000, b = 8).
    """
    from sklearn.linear_model import LassoCV
    from sklearn.model_selection import KFold

    keys = sorted(set(coeffs) | {()} | {(i,) for i in range(design.n)}, key=lambda k: (len(k), k))
    x = fourier_basis(keys, design.masks(b))
    alphas = [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    cv = KFold(n_splits=5, shuffle=True, random_state=seed)
    reg = LassoCV(fit_intercept=False, cv=cv, alphas=alphas, random_state=seed).fit(x, vals)
    return {k: float(c) for k, c in zip(keys, reg.coef_) if c != 0.0}


__all__ = [
    "Coeffs",
    "SpexDecodeResult",
    "SpexDesign",
    "b_for_budget",
    "fourier_basis",
    "fourier_r2",
    "fwht",
    "keys_to_matrix",
    "make_design",
    "n_queries",
    "predict",
    "spex_decode",
    "spex_transform",
]
