"""Binary BCH codes for the SPEX delay design, with a batched (vectorised) decoder.

SPEX (Kang et al., ICML 2025; METHODS.md §3 Step 1 and 3) encodes the support ``k`` of a
Fourier coefficient with the parity bits of a shortened primitive narrow-sense binary BCH
code: the delay rows ``d_1..d_P`` are chosen so that ``(<d_1,k>, ..., <d_P,k>)`` is the
parity of message ``k``.  A singleton bin then yields the received word ``[0^n ; parity(k)]``
which equals ``codeword(k) + [k ; 0]``, so ``k`` (weight <= t) is recovered as an error
pattern by bounded-distance decoding.

The code is the one ``galois.BCH(2^m - 1, d=2t+1)`` builds: GF(2^m) is defined by MATLAB's
default primitive polynomial (as galois.BCH does), alpha = x, and the generator polynomial
is the least common multiple of the minimal polynomials of alpha^1..alpha^(2t).  We construct it
here directly because building ``galois.BCH`` takes several seconds per code (JIT and
minimal-polynomial search), and its per-word decoder costs tens of milliseconds; the tests
check our generator, delay matrix and decoder against galois on small codes.

Decoding works on whole batches of received words:
  * syndromes are GF(2)-linear in the received bits, so all of them come from one matrix
    product of the parity bits with a precomputed (P, 2t*m) bit matrix;
  * Berlekamp-Massey runs on all words at once (t vectorised steps: for binary codes every
    second discrepancy vanishes);
  * a cheap splitting test (x^(2^m) = x mod Lambda) discards locators without L distinct
    roots in the field, which is nearly every undecodable word;
  * the Chien search evaluates the remaining locators at all positions of the shortened word.
A word is declared decodable iff the locator has degree L <= t and exactly L roots inside
the shortened word (a root in the removed positions means a decoding failure), exactly as
galois does.

The error capability ``t`` of a code is that of its *designed distance*, as
``galois.BCH(n_code, k_code)`` defines it: the generator's roots may hold more consecutive
powers alpha^1..alpha^(2t') than the 2t asked for (e.g. asking t = 4 at m = 5 gives the
(31, 11) code, whose roots include alpha^1..alpha^10, so it corrects t = 5 errors), and the
decoder then corrects up to that t'.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np

from attrlens.errors import ParameterError

# Primitive polynomials defining GF(2^m), as integers whose bit d is the coefficient of x^d.
# These are MATLAB's defaults, which ``galois.BCH`` uses for its extension field
# (``galois.matlab_primitive_poly(2, m)``); the test suite re-checks them against galois.
_PRIMITIVE_POLY = {
    2: 7,
    3: 11,
    4: 19,
    5: 37,
    6: 67,
    7: 137,
    8: 285,
    9: 529,
    10: 1033,
    11: 2053,
    12: 4179,
    13: 8219,
    14: 17475,
    15: 32771,
    16: 69643,
    17: 131081,
    18: 262183,
    19: 524327,
    20: 1048585,
}
_MAX_M = max(_PRIMITIVE_POLY)
_MAX_CHASE_DEPTH = 16


def _gf_tables(m: int) -> tuple[np.ndarray, np.ndarray]:
    """Antilog table ``exp`` and log table ``log`` of GF(2^m), q = 2^m - 1.

    exp has length 4q+1: exp[i] = alpha^(i mod q) for i < 2q (so exp[log a + log b] needs no
    modulo) and 0 beyond; log[0] is the sentinel 2q, so a product with 0 lands in the zero
    tail without a separate test.
    """
    q = (1 << m) - 1
    poly = _PRIMITIVE_POLY[m]
    exp = np.zeros(4 * q + 1, dtype=np.int32)
    log = np.zeros(q + 1, dtype=np.int32)
    x = 1
    for i in range(q):
        exp[i] = x
        log[x] = i
        x <<= 1
        if x >> m:
            x ^= poly
    exp[q : 2 * q] = exp[:q]
    log[0] = 2 * q
    return exp, log


def _cyclotomic_union(m: int, t: int) -> list[int]:
    """Exponents j of all conjugates of alpha^1..alpha^(2t) (the roots of the generator)."""
    q = (1 << m) - 1
    roots: set[int] = set()
    for i in range(1, 2 * t + 1):
        j = i % q
        while j not in roots:
            roots.add(j)
            j = (2 * j) % q
    return sorted(roots)


def designed_t(m: int, t: int) -> int:
    """Error capability of the BCH code built for t: the largest t' whose 2t' consecutive
    powers alpha^1..alpha^(2t') are all roots of the generator (designed distance 2t'+1)."""
    roots = set(_cyclotomic_union(m, t))
    top = 0
    while top + 1 in roots:
        top += 1
    return top // 2


def bch_dimension(m: int, t: int) -> int:
    """Dimension k of the primitive narrow-sense binary BCH code of length 2^m-1, distance 2t+1."""
    return (1 << m) - 1 - len(_cyclotomic_union(m, t))


def bch_parameter_search(n: int, t: int) -> tuple[int, int, int]:
    """Shortest primitive BCH code with designed distance 2t+1 and dimension k >= n.

    Search starts at m = ceil(log2(2t+2)) and increases m (as sparse-transform's
    ``BCH.parameter_search``).  Returns (m, n_code = 2^m - 1, k_code).
    """
    m = max(2, math.ceil(math.log2(2 * t + 2)))
    while m <= _MAX_M:
        k = bch_dimension(m, t)
        if k >= n:
            return m, (1 << m) - 1, k
        m += 1
    raise ParameterError(
        f"No binary BCH code with m <= {_MAX_M} has dimension >= n={n} at t={t}; "
        "use fewer features (n <= ~10^6) or a smaller degree t."
    )


def _generator_poly(m: int, t: int, exp: np.ndarray, log: np.ndarray) -> int:
    """Generator polynomial prod_j (x - alpha^j) over the conjugate roots, as a GF(2) bitmask."""
    q = (1 << m) - 1
    coeffs = [1]  # ascending degree, entries in GF(2^m)
    for j in _cyclotomic_union(m, t):
        root = int(exp[j])
        new = [0] * (len(coeffs) + 1)
        for d, c in enumerate(coeffs):
            new[d + 1] ^= c  # c * x
            if c:
                new[d] ^= int(exp[(int(log[c]) + int(log[root])) % q])  # c * root
        coeffs = new
    if any(c not in (0, 1) for c in coeffs):  # pragma: no cover - guards the construction
        raise RuntimeError("BCH generator polynomial is not binary; field tables are wrong.")
    return sum(1 << d for d, c in enumerate(coeffs) if c)


@dataclass(frozen=True, eq=False)
class BCHCode:
    """Shortened binary BCH code used to build the SPEX delays and decode singleton bins.

    Attributes: ``n`` message length after shortening (= number of features), ``t`` error
    capability of the code (its designed distance is 2t+1, as galois.BCH reports; at least
    the ``t_requested`` it was built for), ``m`` field degree, ``n_code``/``k_code`` the
    unshortened length/dimension,
    ``n_parity`` P = n_code - k_code, ``generator`` the generator polynomial as a bitmask.
    """

    n: int
    t: int
    m: int
    t_requested: int
    n_code: int
    k_code: int
    generator: int
    _exp: np.ndarray = field(repr=False)
    _log: np.ndarray = field(repr=False)
    _parity_rows: np.ndarray = field(repr=False)  # (n, P) uint8: parity bits of e_j
    _syn_matrix: np.ndarray = field(repr=False)  # (P, 2t*m) float32
    _chien_exp: np.ndarray = field(repr=False)  # (t, n+P) int32: -(i*j) mod q, j=1..t

    @property
    def n_parity(self) -> int:
        """Number of parity bits P; the SPEX design uses P+1 delays."""
        return self.n_code - self.k_code

    def delay_matrix(self) -> np.ndarray:
        """Delay matrix D, shape (P+1, n), uint8: row 0 zeros, rows 1..P the parity bits.

        ``D[1:] @ k mod 2`` equals the parity bits of message ``k`` (galois'
        ``G[-n:, k_code:].T``).
        """
        return np.vstack([np.zeros((1, self.n), dtype=np.uint8), self._parity_rows.T])

    def encode_parity(self, messages: np.ndarray) -> np.ndarray:
        """Parity bits of a batch of messages: (B, n) {0,1} -> (B, P) uint8."""
        msg = np.asarray(messages, dtype=np.float32)
        return (msg @ self._parity_rows.astype(np.float32)).astype(np.int64).astype(np.uint8) & 1

    # ------------------------------------------------------------------ decoding
    def _mul(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        """Element-wise product in GF(2^m) (integer representation)."""
        # log[0] is a sentinel 2q and exp[>= 2q] = 0, so zeros need no separate test
        return self._exp[self._log[a] + self._log[b]]

    def _inv(self, a: np.ndarray) -> np.ndarray:
        q = self.n_code
        return self._exp[(q - self._log[a]) % q]

    def syndromes(self, parity_bits: np.ndarray) -> np.ndarray:
        """Syndromes S_1..S_2t of received words [0^n ; h]: (B, P) bits -> (B, 2t) GF(2^m) ints."""
        h = np.asarray(parity_bits, dtype=np.float32)
        bits = (h @ self._syn_matrix).astype(np.int32) & 1  # (B, 2t*m)
        bits = bits.reshape(h.shape[0], 2 * self.t, self.m)
        return bits @ (1 << np.arange(self.m, dtype=np.int32))

    def _berlekamp_massey(self, syn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Error-locator polynomials (B, 2t+1) ascending degree and their lengths L (B,)."""
        nb, two_t = syn.shape
        width = two_t + 1
        conn = np.zeros((nb, width), dtype=np.int32)
        conn[:, 0] = 1
        prev = conn.copy()
        length = np.zeros(nb, dtype=np.int64)
        shift = np.ones(nb, dtype=np.int64)
        prev_disc = np.ones(nb, dtype=np.int32)
        cols = np.arange(width)
        rows = np.arange(nb)[:, None]
        for r in range(two_t):
            if r % 2 == 1:
                # binary BCH: S_2i = S_i^2 makes every second discrepancy zero (Berlekamp)
                shift += 1
                continue
            disc = syn[:, r].copy()
            if r:
                prods = self._mul(conn[:, 1 : r + 1], syn[:, r - 1 :: -1][:, :r])
                disc ^= np.bitwise_xor.reduce(prods, axis=1)
            nz = disc != 0
            coef = self._mul(disc, self._inv(prev_disc))
            src = cols[None, :] - shift[:, None]
            shifted = np.where(src >= 0, prev[rows, np.clip(src, 0, None)], 0)
            new_conn = conn ^ self._mul(coef[:, None], shifted)
            upd = nz & (2 * length <= r)
            prev = np.where(upd[:, None], conn, prev)
            length = np.where(upd, r + 1 - length, length)
            prev_disc = np.where(upd, disc, prev_disc)
            shift = np.where(upd, 1, shift + 1)
            conn = np.where(nz[:, None], new_conn, conn)
        return conn, length

    def _splits(self, locator: np.ndarray, length: np.ndarray) -> np.ndarray:
        """Whether each locator of degree L splits into L distinct factors over GF(2^m).

        Test: x^(2^m) = x (mod Lambda), by m squarings of the residue (squaring is
        coefficient-wise in characteristic 2).  About 30x cheaper than a Chien search, and a
        random (undecodable) word passes with probability ~1/L!, so the Chien search that
        follows only runs on few words.  locator: (B, t+1); length: (B,) -> (B,) bool.
        """
        ok = np.zeros(locator.shape[0], dtype=bool)
        for deg in range(1, self.t + 1):
            rows = np.nonzero(length == deg)[0]
            if rows.size == 0:
                continue
            lead = locator[rows, deg]
            rows = rows[lead != 0]  # true degree < L: cannot have L roots
            if rows.size == 0:
                continue
            mon = self._mul(locator[rows, :deg], self._inv(locator[rows, deg])[:, None])
            x_res = np.zeros((rows.size, deg), dtype=np.int32)
            if deg == 1:
                x_res[:, 0] = mon[:, 0]  # x = -mon_0 = mon_0 (mod x + mon_0)
            else:
                x_res[:, 1] = 1
            res = x_res
            for _ in range(self.m):
                sq = np.zeros((rows.size, 2 * deg - 1), dtype=np.int32)
                sq[:, 0::2] = self._mul(res, res)
                for d in range(2 * deg - 2, deg - 1, -1):
                    sq[:, d - deg : d] ^= self._mul(sq[:, d : d + 1], mon)
                res = sq[:, :deg]
            ok[rows] = np.all(res == x_res, axis=1)
        return ok

    def _chien(self, locator: np.ndarray) -> np.ndarray:
        """Roots of each locator among the n+P positions of the shortened word: (B, n+P) bool.

        Column a is array position a of the word [message ; parity] (degree n+P-1-a).
        """
        nb = locator.shape[0]
        n_pos = self.n + self.n_parity
        vals = np.ones((nb, n_pos), dtype=np.int32)  # lambda_0 = 1
        for j in range(1, self.t + 1):
            vals ^= self._exp[self._log[locator[:, j]][:, None] + self._chien_exp[j - 1][None, :]]
        return (vals == 0)[:, ::-1]  # degree order -> array order

    def decode_parity(
        self, parity_bits: np.ndarray, *, chunk: int = 4096
    ) -> tuple[np.ndarray, np.ndarray]:
        """Bounded-distance decoding of received words [0^n ; h] for a batch of parity words h.

        parity_bits: (B, P) in {0,1}.  Returns (messages (B, n) bool, n_errors (B,) int) with
        n_errors = -1 and an all-zero message where decoding fails (as galois' ``decode``
        with ``errors=True`` on the shortened code).
        """
        h = np.asarray(parity_bits)
        if h.ndim != 2 or h.shape[1] != self.n_parity:
            raise ParameterError(
                f"parity_bits must have shape (B, {self.n_parity}); got {h.shape}."
            )
        nb = h.shape[0]
        msgs = np.zeros((nb, self.n), dtype=bool)
        n_err = np.full(nb, -1, dtype=np.int64)
        for start in range(0, nb, chunk):
            sl = slice(start, min(nb, start + chunk))
            syn = self.syndromes(h[sl])
            zero = ~syn.any(axis=1)
            n_err[sl][zero] = 0
            idx = np.nonzero(~zero)[0]
            if idx.size == 0:
                continue
            loc, length = self._berlekamp_massey(syn[idx])
            ok = length <= self.t
            idx, loc, length = idx[ok], loc[ok, : self.t + 1], length[ok]
            ok = self._splits(loc, length)
            idx, loc, length = idx[ok], loc[ok], length[ok]
            if idx.size == 0:
                continue
            roots = self._chien(loc)
            good = roots.sum(axis=1) == length
            gidx = idx[good] + start
            msgs[gidx] = roots[good, : self.n]
            n_err[gidx] = length[good]
        return msgs, n_err

    def decode_soft(
        self, reliab: np.ndarray, *, chase_depth: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Hard decoding, then Chase decoding for the words where it fails.

        reliab: (B, P) real soft values r_p; the hard bit is 1[r_p < 0] and |r_p| its
        reliability.  For failed words, the ``chase_depth`` least reliable positions (default
        2 t_requested, as the reference) are
        taken and the chase_depth*(chase_depth+1)/2 lowest-total-reliability flip patterns
        (the empty one included) are decoded; among the distinct successful decodes (first
        occurrence in increasing-reliability order) the one with the fewest corrected errors
        wins (sparse-transform's ``parity_decode_2chase_t2_max_likelihood``).
        Returns (messages (B, n) bool, n_errors (B,)), -1 where every pattern fails.
        """
        r = np.nan_to_num(np.asarray(reliab, dtype=np.float64), nan=0.0)
        hard = r < 0
        msgs, n_err = self.decode_parity(hard)
        failed = np.nonzero(n_err < 0)[0]
        if chase_depth is None:
            depth = min(2 * self.t_requested, _MAX_CHASE_DEPTH)
        else:
            depth = int(chase_depth)
        if depth > _MAX_CHASE_DEPTH:
            raise ParameterError(
                f"The 'chase_depth' parameter must be at most {_MAX_CHASE_DEPTH} (all 2^depth "
                f"flip patterns are ranked). Got {depth} instead."
            )
        depth = min(depth, self.n_parity)
        if failed.size == 0 or depth <= 0:
            return msgs, n_err
        n_pat = depth * (depth + 1) // 2
        # all 2^depth subsets of the chase positions; pick the n_pat cheapest per word
        subsets = ((np.arange(1 << depth)[:, None] >> np.arange(depth)[None, :]) & 1).astype(
            np.float64
        )
        absr = np.abs(r[failed])
        chase_pos = np.argsort(absr, axis=1, kind="stable")[:, :depth]  # (F, depth)
        chase_rel = np.take_along_axis(absr, chase_pos, axis=1)
        rows_per = max(1, (1 << 22) >> depth)  # bound the (rows, 2^depth) cost matrix
        order = np.concatenate(
            [
                np.argsort(chase_rel[s : s + rows_per] @ subsets.T, axis=1, kind="stable")[
                    :, :n_pat
                ]
                for s in range(0, failed.size, rows_per)
            ]
        )  # (F, n_pat) cheapest flip patterns, by total reliability
        order = order[:, 1:] if n_pat > 1 else order[:, :0]  # drop the empty pattern (failed)
        n_try = order.shape[1]
        if n_try == 0:
            return msgs, n_err
        flips = subsets[order].astype(bool)  # (F, n_try, depth)
        words = np.repeat(hard[failed][:, None, :], n_try, axis=1)  # (F, n_try, P)
        fi = np.arange(failed.size)[:, None, None]
        ti = np.arange(n_try)[None, :, None]
        words[fi, ti, chase_pos[:, None, :]] ^= flips
        cand, cerr = self.decode_parity(words.reshape(-1, self.n_parity))
        cand = cand.reshape(failed.size, n_try, self.n)
        cerr = cerr.reshape(failed.size, n_try)
        for row in np.nonzero((cerr >= 0).any(axis=1))[0]:
            succ = np.nonzero(cerr[row] >= 0)[0]
            best = succ[0]
            if succ.size > 1:
                # keep only first occurrences of each distinct codeword, then fewest errors
                seen: set[bytes] = set()
                firsts = []
                for s in succ:
                    key = np.packbits(cand[row, s]).tobytes()
                    if key not in seen:
                        seen.add(key)
                        firsts.append(s)
                firsts_arr = np.asarray(firsts)
                best = firsts_arr[np.argmin(cerr[row, firsts_arr])]  # first minimum wins
            msgs[failed[row]] = cand[row, best]
            n_err[failed[row]] = cerr[row, best]
        return msgs, n_err


@functools.lru_cache(maxsize=32)
def make_bch_code(n: int, t: int) -> BCHCode:
    """Shortest primitive binary BCH code with designed distance >= 2t+1 and k >= n, shortened
    to n; it corrects ``code.t >= t`` errors (the code's own designed distance)."""
    if not isinstance(n, int) or n < 1:
        raise ParameterError(f"The 'n' parameter of make_bch_code must be an int >= 1. Got {n!r}.")
    if not isinstance(t, int) or t < 1:
        raise ParameterError(f"The 't' parameter of make_bch_code must be an int >= 1. Got {t!r}.")
    m, n_code, k_code = bch_parameter_search(n, t)
    t_req = t
    t = designed_t(m, t_req)  # decode up to the designed distance (as galois.BCH)
    exp, log = _gf_tables(m)
    gen = _generator_poly(m, t, exp, log)
    n_par = n_code - k_code
    q = n_code
    # parity of message e_j (array index j <-> degree n+P-1-j) = x^(n+P-1-j) mod g(x);
    # parity array index p <-> degree P-1-p.
    low = gen ^ (1 << n_par)  # x^P = g_low (mod g) over GF(2)
    rem = low
    rems = [0] * n  # rems[d] = x^(P+d) mod g
    for d in range(n):
        rems[d] = rem
        rem <<= 1
        if rem >> n_par:
            rem ^= (1 << n_par) | low
    parity_rows = np.zeros((n, n_par), dtype=np.uint8)
    for j in range(n):  # the bits of a Python int (n_par may exceed 63), highest first
        parity_rows[j] = np.frombuffer(
            format(rems[n - 1 - j], f"0{n_par}b").encode(), dtype=np.uint8) - ord("0")
    # syndrome bit matrix: S_l = sum_p h_p alpha^(l * (P-1-p)), l = 1..2t
    deg = np.arange(n_par - 1, -1, -1, dtype=np.int64)
    powers = exp[(np.arange(1, 2 * t + 1)[None, :] * deg[:, None]) % q]  # (P, 2t)
    syn_bits = (powers[:, :, None] >> np.arange(m)[None, None, :]) & 1
    syn_matrix = syn_bits.reshape(n_par, 2 * t * m).astype(np.float32)
    pos = np.arange(n + n_par, dtype=np.int64)
    chien_exp = ((-(np.arange(1, t + 1)[:, None] * pos[None, :])) % q).astype(np.int32)
    return BCHCode(
        n=n,
        t=t,
        m=m,
        t_requested=t_req,
        n_code=n_code,
        k_code=k_code,
        generator=gen,
        _exp=exp,
        _log=log,
        _parity_rows=parity_rows,
        _syn_matrix=syn_matrix,
        _chien_exp=chien_exp,
    )
