"""GiLOT (Li, Chen, Chai, Xiong; ICML 2024): attribution by optimal transport between
beam-marginalised output distributions.

For features a = 1..m of the prompt x (user content only; template tokens are never masked):

    S(a) = (1/J) sum_{j=1..J} L(p_x(Y_j), p_{x/a}(Y_j))                          (Eq. 1)

p_x(Y_j) is the marginal of the j-th generated token, approximated by the top-b beam-search
prefixes (Eq. 2-5, see :mod:`.gilot_beams`); x/a is x with feature a masked (default
``attention_off``: id 0 and attention 0, positions unchanged, as in the paper's code).

L is optimal transport (Eq. 7-8, default) with cost C_uv = 1 - cos(e_u, e_v) over the
model's input-embedding rows, on the union of the top-k (k = 100) tokens of the two
distributions, renormalised (the paper's dynamic vocabulary compression), or KL(p || q)
(Eq. 6, method ``gilot_kl``) over the whole vocabulary. All m x J OT problems are solved in a
few batched calls of :func:`attrlens.solvers.ot.ot_distance`. S(a) >= 0; larger = masking
the feature moves the output distribution more, i.e. the feature matters more.

Masked distributions come in two modes (parameter ``beam_mode``):

* ``"own"`` (default, the paper's definition): beam search is re-run on each masked input and
  weighted by the masked model's own prefix probabilities; m + 1 beam searches, batched
  across features.
* ``"shared"``: the unmasked input's beams are teacher-forced under each masked input (the
  reproduction code's variant; two forwards per batch of features instead of J). The prefix
  weights are the masked model's probabilities of the shared prefixes (``shared_weights=
  "masked"``, Eq. 4 restricted to the shared prefixes) or the original ones (``"original"``).

Use cases of the paper's §5 live here too: :func:`query_weight` (attribution-guided query
weight for in-context learning, Eq. 12) and :func:`compare` (the same word slot in two
prompts that differ in one word). Command line (registered through :func:`add_cli`)::

    attrlens explain "..." --method gilot --beams 10 --horizon 10 [--param beam_mode=shared]
    attrlens compare "Write a story about a female homemaker." \\
                     "Write a story about a male homemaker." [--beams 4 --horizon 6]
    attrlens aqw "Review: great. Sentiment: positive\\n[[Review: dull. Sentiment:]]"
    attrlens aqw PROMPT --query-span 120:168

``attrlens aqw`` takes the query region either as ``[[...]]`` markers in the prompt (removed
before the model sees it) or as ``--query-span a:b`` (char offsets into PROMPT) and prints
the share of the attribution that falls on the query.
"""

from __future__ import annotations

import argparse
import difflib
import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import InputError, ParameterError
from ..params import check_param
from ..registry import register
from .base import Explainer, Explanation
from .gilot_beams import BeamRunner, Beams, make_inputs

DISTANCES = ("ot", "kl")
BEAM_MODES = ("own", "shared")
SHARED_WEIGHTS = ("masked", "original")
COSTS = ("full", "half")
SOLVERS = ("auto", "ipot", "sinkhorn", "exact")

# float64 bytes of the cost matrices built for one ot_distance call (the solver chunks its
# own work further)
_OT_BATCH_BYTES = 64 * 2**20


# ---- distances ------------------------------------------------------------------------------
def compress(
    p_logp: Any,
    q_logp: Any,
    *,
    top_k: int = 100,
    top_p: float | None = None,
    top_p_cap: int = 1000,
) -> tuple[Any, Any, Any, Any]:
    """GiLOT's dynamic vocabulary compression of row pairs of distributions.

    p_logp, q_logp: (P, V) torch log-probabilities. Returns ids (P, N) long, p (P, N) and
    q (P, N) float64, and the support mask (P, N) bool: p and q restricted to the union of
    the top-k tokens of p and of q (or of their top-p nuclei, each capped at ``top_p_cap``
    tokens) and renormalised. Slots that repeat a token or fall outside a nucleus are
    padding (mask False, zero mass); N = 2k (or 2 x cap).
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
            valid[:, sl] = before < top_p
    # sort so that repeated ids are adjacent; a valid slot's duplicate is dropped
    key = torch.where(valid, ids, ids.new_full((), p_logp.shape[-1]))
    key, order = key.sort(dim=-1, stable=True)
    ids = ids.gather(-1, order)
    valid = valid.gather(-1, order)
    dup = torch.zeros_like(valid)
    dup[:, 1:] = key[:, 1:] == key[:, :-1]
    valid &= ~dup
    p = p_logp.gather(-1, ids).double().exp() * valid
    q = q_logp.gather(-1, ids).double().exp() * valid
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-300)
    q = q / q.sum(-1, keepdim=True).clamp_min(1e-300)
    return ids, p, q, valid


def kl_divergence(p_logp: Any, q_logp: Any, *, eps: float = 1e-12) -> np.ndarray:
    """KL(p || q) = sum_v p_v log(p_v / max(q_v, eps)) per row over the whole vocabulary.

    p_logp, q_logp: (P, V) torch log-probabilities -> (P,) float64 (GiLOT Eq. 6; the floor
    only matters where q puts (numerically) no mass on a token p can emit).
    """
    import torch

    lp = p_logp.double()
    lq = q_logp.double().clamp_min(float(np.log(eps)))
    p = lp.exp()
    terms = torch.where(p > 0, p * (lp - lq), torch.zeros_like(p))
    return terms.sum(-1).clamp_min(0.0).cpu().numpy()


def _cost_matrices(emb: Any, ids: Any, *, half: bool) -> Any:
    """(B, N, N) float64 cost 1 - cos(e_u, e_v) (or half of it) for each row of token ids
    (GiLOT Eq. 7; zero on the diagonal)."""
    from ..solvers.ot import cosine_cost

    return cosine_cost(emb[ids], half=half)


def ot_distances(
    ids: Any,
    p: Any,
    q: Any,
    valid: Any,
    emb: Any,
    *,
    cost: str = "full",
    solver: str = "ipot",
    beta: float = 1.0,
    max_iter: int = 1000,
    smoothing: float = 1e-4,
    tol: float | None = None,
) -> np.ndarray:
    """Batched OT distances between compressed distribution pairs.

    ids, p, q, valid: (P, N) as returned by :func:`compress`; emb: (V, H) input-embedding
    matrix (the cost uses float64 cosines of the gathered rows). Problems are sorted by their number of real tokens, compacted to it and
    solved in a few calls of :func:`attrlens.solvers.ot.ot_distance` (padding = zero mass
    outside the support mask; ``smoothing``, GiLOT's +1e-4, goes on the support only).
    Returns (P,) float64.
    """
    import torch

    from ..solvers.ot import ot_distance

    P = ids.shape[0]
    n_real = valid.sum(-1)
    # largest problems first: a batch is then as wide as its first problem
    order = torch.argsort(-n_real, stable=True)
    out = np.zeros(P, dtype=np.float64)
    # compact real tokens to the front of each row (stable: keeps the sorted id order)
    front = torch.argsort((~valid).to(torch.int8), dim=-1, stable=True)
    ids_c, p_c, q_c, v_c = (x.gather(-1, front) for x in (ids, p, q, valid))
    i = 0
    while i < P:
        size = max(int(n_real[order[i]]), 1)
        per = max(1, _OT_BATCH_BYTES // (8 * size * size))
        rows = order[i : i + per]
        c = _cost_matrices(emb, ids_c[rows, :size], half=cost == "half")
        mask = v_c[rows, :size]
        d = ot_distance(p_c[rows, :size], q_c[rows, :size], c, method=solver, beta=beta,
                        max_iter=max_iter, smoothing=smoothing, tol=tol, mask_p=mask,
                        mask_q=mask)
        out[rows.cpu().numpy()] = d.detach().double().cpu().numpy().reshape(-1)
        i += len(rows)
    return out


# ---- the core computation --------------------------------------------------------------------
@dataclass
class GilotResult:
    """Raw GiLOT output for m masked variants of one prompt.

    scores:        (m,) S(a) = mean over positions of the distance
    per_position:  (m, J) distance at each output position j
    beam_mass:     (J,) probability mass of the reference input's distinct beam prefixes
    masked_beam_mass: (m, J) the same under each masked input (its own or shared beams)
    beams:         the reference input's beams
    reference_logp: (J, V) torch log p_x(Y_j) of the reference input
    counters:      model_forwards, tokens_processed, tokens_min (tokens the method needs:
                   each prompt's changed suffix + beam tokens), n_inputs
    timings:       model_s (forwards, beam search, mixtures), compress_s, solver_s
    """

    scores: np.ndarray
    per_position: np.ndarray
    beam_mass: np.ndarray
    masked_beam_mass: np.ndarray
    beams: Beams
    reference_logp: Any
    counters: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    union_size: float = 0.0
    solver: str = ""


def gilot_attribution(
    model: Any,
    prompt_ids: Sequence[int] | np.ndarray,
    token_keep: np.ndarray,
    *,
    beams: int = 10,
    horizon: int = 10,
    beam_mode: str = "own",
    masker: str = "attention_off",
    mask_token_id: int = 0,
    distance: str = "ot",
    vocab_k: int = 100,
    vocab_p: float | None = None,
    vocab_cap: int = 1000,
    cost: str = "full",
    solver: str = "auto",
    ot_beta: float = 1.0,
    ot_iter: int = 1000,
    smoothing: float = 1e-4,
    ot_tol: float | None = None,
    shared_weights: str = "masked",
    reference_keep: np.ndarray | None = None,
    max_batch_tokens: int = 8192,
    prefix_reuse: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> GilotResult:
    """GiLOT distances between a reference prompt and m masked variants of it.

    prompt_ids:     (L,) token ids (template included)
    token_keep:     (m, L) bool, 1 = token kept in variant a (the reference's masked tokens
                    stay masked whatever this says)
    reference_keep: (L,) bool keep-mask of the reference input (default: all kept)
    Other parameters: see :class:`GilotExplainer`. Validated by the caller.
    """
    import torch

    solver = resolve_solver(solver, model)
    importer = None
    if distance == "ot" and solver == "exact" and "ot" not in sys.modules:
        # POT takes seconds to import; do it while the model works
        importer = threading.Thread(target=importlib.import_module, args=("ot",), daemon=True)
        importer.start()

    prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
    L = prompt_ids.shape[0]
    keep = np.atleast_2d(np.asarray(token_keep, dtype=bool))
    ref = np.ones(L, dtype=bool) if reference_keep is None else np.asarray(reference_keep, bool)
    keep = keep & ref[None, :]
    runner = BeamRunner(
        model, prompt_ids, beams=beams, horizon=horizon, max_batch_tokens=max_batch_tokens,
        prefix_reuse=prefix_reuse,
    )
    kw = {"kind": masker, "mask_token_id": mask_token_id}
    ref_inp = make_inputs(prompt_ids, ref[None, :], **kw)
    (_, reference), = list(runner.search(ref_inp))
    m = keep.shape[0]
    J = horizon
    per_pos = np.zeros((m, J))
    masked_mass = np.zeros((m, J))
    inputs = make_inputs(prompt_ids, keep, **kw)
    if beam_mode == "own":
        stream = runner.search(inputs, progress=progress)
    else:
        stream = runner.teacher_force(
            inputs, reference.beams, weights=shared_weights, progress=progress
        )
    p_logp = reference.logp
    comp: list[tuple[Any, ...]] = []
    t_comp = 0.0
    for row, marg in stream:
        masked_mass[row] = marg.mass
        t0 = time.perf_counter()
        with torch.inference_mode():
            if distance == "kl":
                per_pos[row] = kl_divergence(p_logp, marg.logp)
            else:
                comp.append((row, *compress(p_logp, marg.logp, top_k=vocab_k, top_p=vocab_p,
                                            top_p_cap=vocab_cap)))
        t_comp += time.perf_counter() - t0
    t_solve = 0.0
    union = 0.0
    if distance == "ot" and comp:
        t0 = time.perf_counter()
        if importer is not None:
            importer.join()
        with torch.no_grad():
            emb = model.input_embeddings.weight.detach()  # rows gathered per batch
            rows = [r for r, *_ in comp]
            ids, p, q, valid = (torch.cat([c[i] for c in comp]) for i in range(1, 5))
            union = float(valid.sum(-1).double().mean())
            d = ot_distances(ids, p, q, valid, emb, cost=cost, solver=solver, beta=ot_beta,
                             max_iter=ot_iter, smoothing=smoothing, tol=ot_tol)
        per_pos[np.asarray(rows)] = d.reshape(len(rows), J)
        t_solve = time.perf_counter() - t0
    c = runner.counters
    return GilotResult(
        scores=per_pos.mean(axis=1),
        per_position=per_pos,
        beam_mass=reference.mass,
        masked_beam_mass=masked_mass,
        beams=reference.beams,
        reference_logp=reference.logp,
        counters={
            "model_forwards": int(c["model_forwards"]),
            "tokens_processed": int(c["tokens_processed"]),
            "tokens_min": int(c["tokens_min"]),
            "n_inputs": m + 1,
        },
        timings={"model_s": float(c["model_s"]), "compress_s": t_comp, "solver_s": t_solve},
        union_size=union,
        solver=solver,
    )


def resolve_solver(solver: str, model: Any) -> str:
    """``"auto"``: batched IPOT (the paper's solver) when the model runs on an accelerator;
    exact network simplex on CPU, where it is several times faster than 1000 IPOT iterations
    and gives the value IPOT converges to."""
    if solver != "auto":
        return solver
    dev = getattr(model, "device", None)
    return "exact" if dev is None or getattr(dev, "type", "cpu") == "cpu" else "ipot"


# ---- explainers --------------------------------------------------------------------------
@register
class GilotExplainer(Explainer):
    """GiLOT: OT distance between beam-marginalised output distributions, one feature masked.

    beams:       beam width b (>= 1)
    horizon:     output positions J (>= 1); the beams have J - 1 new tokens
    beam_mode:   "own" (beam search on every masked input) | "shared" (original beams
                 teacher-forced under the masked inputs)
    distance:    "ot" | "kl"
    vocab_k:     tokens per side of the vocabulary union (OT); ``vocab_p`` (with
                 ``vocab_cap``) uses top-p nuclei instead (the official code: 0.9999, 1000).
                 (Not ``top_k``: that name is attrlens.explain's own target parameter.)
    cost:        "full" = 1 - cos (the paper) | "half" = (1 - cos) / 2 (reproduction code)
    solver:      OT solver of ``attrlens.solvers.ot``: auto | ipot | sinkhorn | exact;
                 auto = ipot (β, 1000 iterations, batched) on an accelerator, exact network
                 simplex on CPU (faster there, and the value IPOT converges to)
    ot_beta, ot_iter, ot_tol, smoothing: IPOT step (β), iterations, optional early-stop
                 tolerance on the marginal error, marginal smoothing (+1e-4 as the code)
    shared_weights: prefix weights in shared mode: "masked" | "original"
    per_position: also return the (m, J) matrix of per-position distances as the result's
                 ``per_output_token`` (column j = output position j of the beam marginals,
                 not a token of the displayed greedy output)
    max_batch_tokens: rows x cache length per forward (memory bound)

    ``budget`` (value-function evaluations in other methods) is the number of inputs whose
    distributions are computed: m + 1, like leave-one-out.
    """

    name = "gilot"
    description = "GiLOT: optimal transport between beam-marginalised output distributions."
    needs_model = True
    default_masker = "attention_off"
    _distance = "ot"

    def __init__(
        self,
        *,
        budget: int | None = None,
        beams: int = 10,
        horizon: int = 10,
        beam_mode: str = "own",
        distance: str | None = None,
        vocab_k: int = 100,
        vocab_p: float | None = None,
        vocab_cap: int = 1000,
        cost: str = "full",
        solver: str = "auto",
        ot_beta: float = 1.0,
        ot_iter: int = 1000,
        ot_tol: float | None = None,
        smoothing: float = 1e-4,
        shared_weights: str = "masked",
        per_position: bool = False,
        max_batch_tokens: int = 8192,
    ):
        super().__init__(
            budget=budget, beams=beams, horizon=horizon, beam_mode=beam_mode,
            distance=self._distance if distance is None else distance, vocab_k=vocab_k,
            vocab_p=vocab_p, vocab_cap=vocab_cap, cost=cost, solver=solver, ot_beta=ot_beta,
            ot_iter=ot_iter, ot_tol=ot_tol, smoothing=smoothing, shared_weights=shared_weights,
            per_position=per_position, max_batch_tokens=max_batch_tokens,
        )

    def min_budget(self, n_features: int) -> int:
        return n_features + 1

    def validate(self, n_features: int) -> None:
        own = type(self).__name__
        p = self.params
        check_param(own, "beams", p["beams"], kind=int, low=1)
        check_param(own, "horizon", p["horizon"], kind=int, low=1)
        check_param(own, "beam_mode", p["beam_mode"], choices=BEAM_MODES)
        check_param(own, "distance", p["distance"], choices=DISTANCES)
        check_param(own, "vocab_k", p["vocab_k"], kind=int, low=1)
        if p["vocab_p"] is not None:
            check_param(own, "vocab_p", p["vocab_p"], kind=float, low=1e-9, high=1.0)
        check_param(own, "vocab_cap", p["vocab_cap"], kind=int, low=1)
        check_param(own, "cost", p["cost"], choices=COSTS)
        check_param(own, "solver", p["solver"], choices=SOLVERS)
        check_param(own, "ot_beta", p["ot_beta"], low=1e-9)
        check_param(own, "ot_iter", p["ot_iter"], kind=int, low=1)
        if p["ot_tol"] is not None:
            check_param(own, "ot_tol", p["ot_tol"], low=0.0)
        check_param(own, "smoothing", p["smoothing"], low=0.0)
        check_param(own, "shared_weights", p["shared_weights"], choices=SHARED_WEIGHTS)
        check_param(own, "per_position", p["per_position"], choices=(True, False))
        check_param(own, "max_batch_tokens", p["max_batch_tokens"], kind=int, low=1)

    def explain_context(self, ctx: ExplainContext) -> Explanation:
        if ctx.model is None or ctx.masker is None:
            raise ParameterError(f"The method '{self.name}' needs a model; use attrlens.explain.")
        m = ctx.n_features
        self.validate(m)
        self.resolve_budget(m)
        p = self.params
        kind = ctx.masker.kind
        token_keep = ctx.masker.token_keep(~np.eye(m, dtype=bool))
        t0 = time.perf_counter()
        res = gilot_attribution(
            ctx.model, ctx.prompt_ids, token_keep,
            beams=p["beams"], horizon=p["horizon"], beam_mode=p["beam_mode"], masker=kind,
            # attention_off feeds id 0 like the paper's code; replace uses the masker's token
            mask_token_id=ctx.masker.mask_token_id if kind == "replace" else 0,
            distance=p["distance"], vocab_k=p["vocab_k"], vocab_p=p["vocab_p"],
            vocab_cap=p["vocab_cap"], cost=p["cost"], solver=p["solver"],
            ot_beta=p["ot_beta"], ot_iter=p["ot_iter"], ot_tol=p["ot_tol"],
            smoothing=p["smoothing"],
            shared_weights=p["shared_weights"], max_batch_tokens=p["max_batch_tokens"],
            progress=ctx.progress,
        )
        wall = time.perf_counter() - t0
        tok = ctx.model.tokenizer
        beam_rows = []
        for k in range(res.beams.n_beams):
            row = res.beams.tokens[k][~res.beams.ended[k]]
            beam_rows.append({
                "text": tok.decode(row.tolist(), skip_special_tokens=False),
                "logprob": float(res.beams.token_logp[k].sum()),
            })
        dist_s = res.timings["compress_s"] + res.timings["solver_s"]
        extra = {
            "beam_mass": [float(x) for x in res.beam_mass],
            "masked_beam_mass_min": [float(x) for x in res.masked_beam_mass.min(axis=0)],
            "beams": beam_rows,
            "distance": p["distance"],
            "model_s": res.timings["model_s"],
            "distance_s": dist_s,
            "compress_s": res.timings["compress_s"],
            "ot_solver_s": res.timings["solver_s"],
            "gilot_wall_s": wall,
            "tokens_min": res.counters["tokens_min"],
            "n_inputs": res.counters["n_inputs"],
            "_model_forwards": res.counters["model_forwards"],
            "_tokens_processed": res.counters["tokens_processed"],
        }
        if p["distance"] == "ot":
            extra["union_size_mean"] = res.union_size
            extra["ot_solver"] = res.solver
        return Explanation(
            scores=res.scores,
            per_output_token=res.per_position if p["per_position"] else None,
            extra=extra,
            # the solver actually used ("auto" resolves by device)
            params={"solver": res.solver} if p["distance"] == "ot" else {},
        )


@register
class GilotKLExplainer(GilotExplainer):
    """GiLOT with L = KL(p || q) over the whole vocabulary (the paper's KL ablation)."""

    name = "gilot_kl"
    description = "GiLOT with KL divergence instead of optimal transport (paper's ablation)."
    _distance = "kl"


# ---- use case 1: attribution-guided query weight (§5.1, Eq. 12) -----------------------------
def features_in_span(attribution: Any, span: tuple[int, int]) -> list[int]:
    """Indices of the features whose char spans lie inside ``span`` = (start, end) of the
    attribution's input text."""
    a, b = span
    out = []
    for i, sps in enumerate(attribution.spans):
        if sps and all(a <= s and e <= b for s, e in sps):
            out.append(i)
    return out


def query_weight(
    attribution: Any,
    query_features: Iterable[int] | tuple[int, int] | None = None,
    *,
    query_span: tuple[int, int] | None = None,
) -> float:
    """Attribution-guided query weight (GiLOT §5.1, Eq. 12): the share of the total
    attribution that falls on the query, sum_{i in query} a_i / sum_i a_i, in [0, 1].

    query_features: feature indices of the query, or give ``query_span`` = (start, end) char
    offsets of the attribution's input text (features inside it form the query). Scores must
    be non-negative (GiLOT's are) and not all zero.
    """
    scores = np.asarray(attribution.scores, dtype=float)
    if query_span is not None:
        if query_features is not None:
            raise InputError("Give query_features or query_span, not both.")
        idx = features_in_span(attribution, query_span)
        if not idx:
            raise InputError(f"No feature lies inside the query span {tuple(query_span)}.")
    elif query_features is None:
        raise InputError("Give the query as feature indices or as query_span=(start, end).")
    else:
        idx = sorted({int(i) for i in query_features})
        bad = [i for i in idx if not -len(scores) <= i < len(scores)]
        if bad:
            raise InputError(f"Query feature indices {bad} are out of range 0..{len(scores) - 1}.")
    if not np.isfinite(scores).all() or (scores < 0).any():
        raise InputError(
            "The query weight needs finite non-negative scores (a distance-based method such "
            "as gilot); this attribution has negative or missing scores."
        )
    total = scores.sum()
    if total <= 0:
        raise InputError("Every score is zero, so the query weight is undefined.")
    return float(scores[np.asarray(idx, dtype=int)].sum() / total)


def marked_spans(text: str, *, open: str = "[[", close: str = "]]") -> tuple[str, list[tuple[int, int]]]:
    """Remove ``open``/``close`` markers from ``text``; return the clean text and the char
    spans (start, end) of the marked regions in it, e.g. to mark the query of an in-context
    prompt, or to build ``granularity="span"`` features (one per marked region)."""
    out: list[str] = []
    spans: list[tuple[int, int]] = []
    i, n_out = 0, 0
    while True:
        a = text.find(open, i)
        if a < 0:
            break
        b = text.find(close, a + len(open))
        if b < 0:
            raise InputError(f"The marker {open!r} at char {a} is never closed with {close!r}.")
        out.append(text[i:a])
        n_out += a - i
        inner = text[a + len(open) : b]
        if open in inner:
            raise InputError(f"Nested {open!r} markers at char {a}; marked regions must not nest.")
        out.append(inner)
        if inner.strip():
            spans.append((n_out, n_out + len(inner)))
        n_out += len(inner)
        i = b + len(close)
    out.append(text[i:])
    return "".join(out), spans


@dataclass
class QueryWeight:
    """Result of :func:`explain_query_weight`: aqw, the attribution, the query features."""

    aqw: float
    attribution: Any
    query_features: list[int]
    query_span: tuple[int, int]


def explain_query_weight(
    prompt: str,
    *,
    query_span: tuple[int, int] | None = None,
    model: Any = None,
    method: str = "gilot",
    granularity: str = "word",
    markers: tuple[str, str] = ("[[", "]]"),
    **kwargs: Any,
) -> QueryWeight:
    """Explain ``prompt`` and return its attribution-guided query weight.

    The query is ``query_span`` (char offsets into ``prompt``) or, if None, the one region
    of ``prompt`` marked with ``markers`` (removed before the model reads the prompt).
    kwargs go to :func:`attrlens.explain` (beams, horizon, chat, ...).
    """
    from ..api import explain

    text = prompt
    if query_span is None:
        text, spans = marked_spans(prompt, open=markers[0], close=markers[1])
        if len(spans) != 1:
            raise InputError(
                f"Mark exactly one query region with {markers[0]}...{markers[1]} or give "
                f"query_span=(start, end); found {len(spans)} marked regions."
            )
        query_span = spans[0]
    a, b = (int(x) for x in query_span)
    if not 0 <= a < b <= len(text):
        raise InputError(f"The query span ({a}, {b}) is outside the prompt (length {len(text)}).")
    attr = explain(text, model=model, method=method, granularity=granularity, **kwargs)
    # the prompt may sit inside a chat template: shift the span to the rendered text
    shift = attr.input_text.find(text)
    if shift < 0:
        raise InputError("The prompt text could not be located in the rendered input.")
    span = (a + shift, b + shift)
    idx = features_in_span(attr, span)
    if not idx:
        raise InputError(f"No {granularity} feature lies inside the query span ({a}, {b}).")
    return QueryWeight(query_weight(attr, idx), attr, idx, span)


# ---- use case 2: contrast of two prompts (§5.2) --------------------------------------------------
@dataclass
class Comparison:
    """Two attributions of prompts that differ in a few words, aligned by word slot.

    slots: [(features in a, features in b)] for each differing region (difflib alignment of
           the feature labels); ``slots[0]`` is the slot of a one-word contrast.
    """

    a: Any
    b: Any
    slots: list[tuple[list[int], list[int]]]

    @property
    def slot_a(self) -> list[int]:
        return self.slots[0][0] if self.slots else []

    @property
    def slot_b(self) -> list[int]:
        return self.slots[0][1] if self.slots else []

    def summary(self) -> list[dict[str, Any]]:
        """Per slot: labels, summed scores, rank (1 = top) and share of the total, a vs b."""
        rows = []
        for fa, fb in self.slots:
            row: dict[str, Any] = {}
            for side, attr, feats in (("a", self.a, fa), ("b", self.b, fb)):
                s = np.asarray(attr.scores, dtype=float)
                order = np.argsort(-s, kind="stable")
                rank = [int(np.flatnonzero(order == i)[0]) + 1 for i in feats]
                tot = float(np.abs(s).sum())
                row[side] = {
                    "features": list(feats),
                    "labels": [attr.labels[i] for i in feats],
                    "score": float(s[feats].sum()) if feats else 0.0,
                    "rank": min(rank) if rank else None,
                    "share": float(s[feats].sum() / tot) if feats and tot > 0 else 0.0,
                }
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a.to_dict(), "b": self.b.to_dict(),
                "slots": [[list(x), list(y)] for x, y in self.slots], "summary": self.summary()}

    def show(self, *, top: int = 5, console: Any = None) -> None:
        """Print both attributions and the slot table to the terminal."""
        from rich.console import Console
        from rich.table import Table

        console = console or Console()
        for tag, attr in (("A", self.a), ("B", self.b)):
            console.rule(f"prompt {tag}")
            attr.show(top=top, console=console)
        table = Table(title="contrast: the differing slot(s)")
        for col in ("slot", "A", "score A", "rank A", "B", "score B", "rank B"):
            table.add_column(col, justify="right" if "score" in col or "rank" in col else "left")
        for k, row in enumerate(self.summary()):
            a, b = row["a"], row["b"]
            table.add_row(
                str(k), " ".join(a["labels"]) or "-", f"{a['score']:.4f}",
                str(a["rank"] or "-"), " ".join(b["labels"]) or "-", f"{b['score']:.4f}",
                str(b["rank"] or "-"),
            )
        console.print(table)


def align_slots(labels_a: Sequence[str], labels_b: Sequence[str]) -> list[tuple[list[int], list[int]]]:
    """Feature slots where two label sequences differ: [(indices in a, indices in b)]."""
    norm = lambda s: s.strip().lower()
    sm = difflib.SequenceMatcher(a=[norm(x) for x in labels_a], b=[norm(x) for x in labels_b],
                                 autojunk=False)
    return [
        (list(range(i1, i2)), list(range(j1, j2)))
        for tag, i1, i2, j1, j2 in sm.get_opcodes() if tag != "equal"
    ]


def compare(
    prompt_a: str | list[dict[str, str]],
    prompt_b: str | list[dict[str, str]],
    *,
    model: Any = None,
    method: str = "gilot",
    granularity: str = "word",
    **kwargs: Any,
) -> Comparison:
    """Attribute two prompts that differ in one word (e.g. "female homemaker" vs "male
    homemaker", GiLOT §5.2) with the same method and settings, and align the differing slot.

    kwargs go to :func:`attrlens.explain` (beams, horizon, beam_mode, seed, chat, ...).
    """
    from ..api import explain, load_model

    if model is None or isinstance(model, str):
        model = load_model(model)
    a = explain(prompt_a, model=model, method=method, granularity=granularity, **kwargs)
    b = explain(prompt_b, model=model, method=method, granularity=granularity, **kwargs)
    slots = align_slots(a.labels, b.labels)
    if not slots:
        raise InputError("The two prompts have the same features; give prompts that differ.")
    return Comparison(a=a, b=b, slots=slots)


# ---- command line ------------------------------------------------------------------------------
def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", default="gilot", help="attribution method (default: gilot)")
    p.add_argument("--granularity", default="word", help="token | word | sentence")
    p.add_argument("--model", help="local model directory or .gguf file (default: embedded)")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--masker", help="attention_off | delete | replace (default: the method's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=32, help="length of the shown output")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--beams", type=int, help="gilot: beam width b")
    p.add_argument("--horizon", type=int, help="gilot: output positions J")
    p.add_argument("--beam-mode", help="gilot: own | shared")
    p.add_argument("--solver", help="gilot: OT solver")
    p.add_argument("--param", action="append", help="any method parameter as KEY=VALUE")
    p.add_argument("--json", help="write the result JSON here")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--quiet", action="store_true")


def _explain_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    from ..cli import _method_params

    kw = _method_params(args)
    if getattr(args, "beam_mode", None):
        kw["beam_mode"] = args.beam_mode
    kw.update(seed=args.seed, masker=args.masker, max_new_tokens=args.max_new_tokens)
    if args.raw:
        kw["chat"] = False
    return kw


def cmd_compare(args: argparse.Namespace) -> int:
    """``attrlens compare A B``: side-by-side attribution of two prompts."""
    import json

    from ..api import load_model

    model = load_model(args.model, dtype=args.dtype)
    cmp = compare(args.prompt_a, args.prompt_b, model=model, method=args.method,
                  granularity=args.granularity, **_explain_kwargs(args))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(cmp.to_dict(), f, indent=2, ensure_ascii=False)
    if not args.quiet:
        cmp.show(top=args.top)
    return 0


def cmd_aqw(args: argparse.Namespace) -> int:
    """``attrlens aqw PROMPT``: attribution-guided query weight of an in-context prompt."""
    from ..api import load_model

    span = None
    if args.query_span:
        try:
            a, b = (int(x) for x in args.query_span.split(":"))
        except ValueError:
            raise InputError(f"--query-span takes START:END; got {args.query_span!r}.") from None
        span = (a, b)
    model = load_model(args.model, dtype=args.dtype)
    res = explain_query_weight(args.prompt, query_span=span, model=model, method=args.method,
                               granularity=args.granularity, **_explain_kwargs(args))
    if args.json:
        res.attribution.extra.setdefault("metadata", {})["aqw"] = res.aqw
        res.attribution.save(args.json)
    if not args.quiet:
        from rich.console import Console

        console = Console()
        res.attribution.show(top=args.top, console=console)
        q = " ".join(res.attribution.labels[i] for i in res.query_features)
        console.print(f"[bold cyan]query  [/bold cyan]{q}")
    print(f"aqw {res.aqw:.4f}")
    return 0


def add_cli(subparsers: Any) -> None:
    """Register ``attrlens compare`` and ``attrlens aqw`` (called by attrlens.cli)."""
    c = subparsers.add_parser(
        "compare", help="attribute two prompts that differ in one word, side by side"
    )
    c.add_argument("prompt_a")
    c.add_argument("prompt_b")
    _add_common(c)
    c.set_defaults(func=cmd_compare)
    q = subparsers.add_parser(
        "aqw", help="attribution-guided query weight of an in-context-learning prompt"
    )
    q.add_argument("prompt", help="prompt; mark the query with [[...]] or use --query-span")
    q.add_argument("--query-span", help="START:END char offsets of the query in PROMPT")
    _add_common(q)
    q.set_defaults(func=cmd_aqw)
