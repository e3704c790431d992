"""GiLOT's model side: beam search and beam-marginalised next-token distributions.

GiLOT (Li et al., ICML 2024, Eq. 2-5) needs, for an input x and every output position
j = 1..J, the marginal p_x(Y_j) = E_{Y_<j} p_x(Y_j | Y_<j), approximated by the top-b
beam-search prefixes:

    p_x(Y_j) ~ sum_g w_g p_x(Y_j | y^g_<j) / sum_g w_g,   w_g = P_x(y^g_<j)

where g runs over the *distinct* length-(j-1) prefixes of the b final beams (one beam search
with J-1 new tokens serves all J positions) and w_g is the prefix's sequence probability.
``sum_g w_g`` is the probability mass the beams cover at position j, the paper's
self-confidence indicator (App. D); it is 1 at j = 1 and non-increasing in j.

Conventions (our resolutions, see METHODS.md §4(b)):

* EOS is absorbing: once a beam emits EOS it stays in the beam with its probability frozen
  (later tokens count with probability 1) and its next-token distribution is a point mass
  on EOS; it competes with the live beams for the b slots.
* Every prompt is run at its original positions (explicit ``position_ids``; masking never
  shifts RoPE phases) and the first new token sits at position L (L = prompt length).
* Perturbed prompts have the prompt's length L. ``attention_off`` (the paper's masker) sets
  a masked token's id to 0 and its attention to 0; ``delete`` masks the token's key the same
  way and predicts Y_1 from the last kept token (identical to removing the tokens at fixed
  positions); ``replace`` swaps the id and keeps attention.
* Prefix reuse: tokens before a row's first change are the unmasked prompt's, so their
  key/value cache is computed once and shared (:class:`~attrlens.scoring.cache.PrefixCache`,
  the same cache the teacher-forced scoring engine uses).

The search is batched across inputs (G inputs x b beams rows) with a key/value cache; one
beam search costs J forwards (the prompt and J-1 decoding steps), and the hidden state of
every step is kept so that all J positions of the final beams come out of the search itself
without a second pass. ``teacher_force`` runs given beams under other inputs in two forwards
(GiLOT's cheaper "shared beams" variant).
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import CapabilityError, InputError
from ..models.base import out_of_memory_attempt
from .cache import PrefixCache, new_dynamic_cache

MASKER_KINDS = ("attention_off", "delete", "replace")


@dataclass(frozen=True)
class BeamInputs:
    """A batch of perturbed prompts in fixed-length form.

    ids:          (n, L) int64 token ids fed to the model
    keep:         (n, L) bool, False = no query may attend to this position (attention 0)
    predictor:    (n,) index of the position whose hidden state predicts Y_1
    first_change: (n,) first position that differs from the unmasked prompt (L if none)
    """

    ids: np.ndarray
    keep: np.ndarray
    predictor: np.ndarray
    first_change: np.ndarray

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    @property
    def n_prompt(self) -> int:
        return int(self.ids.shape[1])


def make_inputs(
    prompt_ids: Sequence[int] | np.ndarray,
    token_keep: np.ndarray,
    *,
    kind: str = "attention_off",
    mask_token_id: int = 0,
) -> BeamInputs:
    """Perturbed prompts from a token keep-matrix (n, L) (1 = keep) and a masker kind.

    attention_off: id 0 (``mask_token_id``) and attention 0 at masked tokens (GiLOT's code);
    delete:        attention 0 at masked tokens, Y_1 predicted from the last kept token;
    replace:       id ``mask_token_id``, attention kept.
    """
    if kind not in MASKER_KINDS:
        raise InputError(f"GiLOT supports the maskers {', '.join(MASKER_KINDS)}; got {kind!r}.")
    base = np.asarray(prompt_ids, dtype=np.int64)
    keep = np.atleast_2d(np.asarray(token_keep, dtype=bool))
    n, L = keep.shape
    if L != base.shape[0]:
        raise InputError(f"The keep matrix has {L} columns for a prompt of {base.shape[0]} tokens.")
    ids = np.where(keep, base[None, :], np.int64(mask_token_id))
    if kind == "replace":
        att = np.ones_like(keep)
        pred = np.full(n, L - 1, dtype=np.int64)
    else:
        att = keep.copy()
        if kind == "delete":
            ids = np.broadcast_to(base, (n, L)).copy()  # masked keys are never read
            if not keep.any(axis=1).all():
                raise InputError(
                    "Deleting the features leaves an empty prompt; keep some text or use the "
                    "attention_off masker."
                )
            pred = (L - 1 - np.argmax(keep[:, ::-1], axis=1)).astype(np.int64)
        else:
            pred = np.full(n, L - 1, dtype=np.int64)
    changed = (ids != base[None, :]) | ~att
    first = np.where(changed.any(axis=1), np.argmax(changed, axis=1), L).astype(np.int64)
    return BeamInputs(ids=ids, keep=att, predictor=pred, first_change=first)


def unmasked_inputs(prompt_ids: Sequence[int] | np.ndarray) -> BeamInputs:
    """The unmasked prompt as a one-row :class:`BeamInputs`."""
    L = len(prompt_ids)
    return make_inputs(prompt_ids, np.ones((1, L), dtype=bool))


@dataclass
class Beams:
    """The b final beams of one beam search (J-1 new tokens each).

    tokens:  (b, J-1) int64 token ids (after EOS: EOS repeated)
    token_logp: (b, J-1) log p(y_t | x, y_<t) of each token (0 after EOS: absorbing)
    ended:   (b, J-1) bool, the beam had emitted EOS before token t (t is padding)
    """

    tokens: np.ndarray
    token_logp: np.ndarray
    ended: np.ndarray

    @property
    def n_beams(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def horizon(self) -> int:
        return int(self.tokens.shape[1]) + 1

    def prefix_logp(self) -> np.ndarray:
        """(b, J) log P(y_<j) of every beam's prefix (0 at j = 1)."""
        return prefix_logp(self.token_logp)

    def distinct_nodes(self) -> int:
        """Distinct (prefix, token) nodes of the beams' prefix tree, padding excluded: the
        fewest new tokens a teacher-forced pass over these beams must process."""
        seen: set[tuple[int, ...]] = set()
        for row, end in zip(self.tokens.tolist(), self.ended.tolist()):
            for t in range(len(row)):
                if end[t]:
                    break
                seen.add(tuple(row[: t + 1]))
        return len(seen)


def prefix_owners(tokens: np.ndarray, ended: np.ndarray) -> np.ndarray:
    """(J, b) int: for each position j and beam k, the first beam with the same prefix y_<j
    (beams with equal prefixes have equal next-token distributions and prefix weights)."""
    b, Jm1 = tokens.shape
    owner = np.zeros((Jm1 + 1, b), dtype=np.int64)  # j = 1: the empty prefix, beam 0
    # padding after EOS enters the prefix only as "ended": mark it with -1
    key = np.where(ended, -1, tokens)
    for j in range(1, Jm1 + 1):
        first: dict[tuple[int, ...], int] = {}
        for k in range(b):
            owner[j, k] = first.setdefault(tuple(key[k, :j].tolist()), k)
    return owner


def prefix_logp(token_logp: np.ndarray) -> np.ndarray:
    """(b, J) cumulative log-probability of each beam's length-(j-1) prefix."""
    b = token_logp.shape[0]
    return np.concatenate([np.zeros((b, 1)), np.cumsum(token_logp, axis=1)], axis=1)


@dataclass
class Marginal:
    """Beam-marginalised next-token distributions of one input.

    logp:  (J, V) torch float64 log p_x(Y_j)
    mass:  (J,) probability mass of the distinct beam prefixes at each position
    beams: the beams that define it (own search, or the shared ones)
    """

    logp: Any
    mass: np.ndarray
    beams: Beams


@dataclass
class _Prepared:
    """Key/value cache and attention of a chunk of inputs after the prompt pass."""

    cache: Any
    attn: Any  # (G, L) long
    h_pred: Any  # (G, H)


@dataclass
class BeamRunner:
    """Runs GiLOT's beam searches and teacher-forced beam passes for one prompt.

    model:        an HFModel backend
    prompt_ids:   (L,) the unmasked prompt
    beams:        beam width b
    horizon:      output positions J (each beam has J-1 new tokens)
    max_batch_tokens: rows x key/value length per forward (bounds the cache memory)
    prefix_reuse: share the unmasked prompt's cache before each row's first change
    prefix:       that cache (default: a new one; pass the scoring engine's to share it)
    """

    model: Any
    prompt_ids: np.ndarray
    beams: int = 10
    horizon: int = 10
    max_batch_tokens: int = 8192
    prefix_reuse: bool = True
    prefix: PrefixCache | None = None
    counters: dict[str, float] = field(default_factory=lambda: {
        "model_forwards": 0, "tokens_processed": 0, "tokens_min": 0, "model_s": 0.0,
        "oom_retries": 0,
    })

    def __post_init__(self) -> None:
        self.prompt_ids = np.asarray(self.prompt_ids, dtype=np.int64)
        if getattr(self.model, "stateful", False):
            raise CapabilityError(
                f"The model {self.model.info.id} ({type(self.model.model).__name__}) is "
                f"recurrent (state-space or linear-attention layers): GiLOT's beam search "
                f"reorders a key/value cache per beam, which such a model does not keep; use "
                f"a method that scores a fixed output (loo, kernel_shap, spex, ig, ...)."
            )
        if not getattr(self.model, "keeps_cache", True):
            raise CapabilityError(
                f"The model {self.model.info.id} ({type(self.model.model).__name__}) takes no "
                f"key/value cache of transformers' kind: GiLOT's beam search extends one per "
                f"beam; use a method that scores a fixed output (loo, kernel_shap, spex, ig, "
                f"...)."
            )
        if self.prefix is not None and not self.prefix.matches(self.model, self.prompt_ids):
            raise InputError("The shared prefix cache belongs to another model or prompt.")
        shares = getattr(self.model, "shares_prefix", lambda n: True)
        if not shares(self.n_prompt + self.horizon):
            # chunked attention past one chunk (behind a shared prefix its chunked masks read
            # the wrong keys), or a model in HFModel.own_masks_only: transformers' masks, on
            # caches of its own
            self.prefix_reuse = False
        self._cache = self.prefix or PrefixCache(self.model, self.prompt_ids)
        eos = list(self.model.eos_token_ids)
        if not eos:
            raise InputError("The model has no EOS token; GiLOT's beams need one.")
        self.eos_ids = np.asarray(eos, dtype=np.int64)
        self.eos = int(eos[0])

    # ---- sizes --------------------------------------------------------------------------
    @property
    def n_prompt(self) -> int:
        return int(self.prompt_ids.shape[0])

    def chunk_inputs(self) -> int:
        """Inputs per batched search: rows (inputs x b) x cache length <= max_batch_tokens."""
        per_row = self.n_prompt + self.horizon
        return max(1, self.max_batch_tokens // (per_row * self.beams))

    # ---- model plumbing -----------------------------------------------------------------
    def _forward(self, ids: Any, attn: Any, pos: Any, cache: Any) -> Any:
        with self.model.inference():
            out = self.model.decoder(
                input_ids=ids, attention_mask=attn, position_ids=pos,
                use_cache=True, **{self.model.cache_kwarg: cache},
            )
        self.counters["model_forwards"] += 1
        self.counters["tokens_processed"] += int(ids.shape[0] * ids.shape[1])
        return out.last_hidden_state

    def _shared(self, G: int, p: int) -> Any:
        """A cache with the unmasked prompt's first p positions for G rows (copies)."""
        if not self._cache.ready:
            self.counters["tokens_min"] += self.n_prompt
        return self._cache.expand(G, p, self.counters)

    def _prompt_pass(self, inp: BeamInputs, rows: np.ndarray) -> _Prepared:
        """Run the prompts of ``rows``; returns their cache and predicting hidden states."""
        import torch

        dev = self.model.device
        L = self.n_prompt
        G = len(rows)
        # a row's reusable prefix ends before its first change and before its predictor,
        # whose hidden state must come out of this pass
        cut = np.minimum(inp.first_change[rows], inp.predictor[rows])
        if not self.prefix_reuse:
            cut = np.zeros_like(cut)
        p = int(cut.min())
        if self.prefix_reuse and (inp.first_change[rows] >= L).all():
            # unmasked rows: the prefix pass is their whole prompt pass
            cache = self._shared(G, L)
            h_last = self._cache.last_hidden(self.counters)
            attn = torch.ones((G, L), dtype=torch.long, device=dev)
            return _Prepared(cache=cache, attn=attn, h_pred=h_last.expand(G, -1))
        cache = self._shared(G, p) if p > 0 else new_dynamic_cache(self.model)
        attn = torch.as_tensor(inp.keep[rows].astype(np.int64), device=dev)
        ids = torch.as_tensor(inp.ids[rows, p:], device=dev)
        # (a tensor of its own per call: transformers 4.x's XGLM adds its offset in place)
        pos = torch.arange(p, L, device=dev)[None, :].expand(G, -1).clone()
        hidden = self._forward(ids, attn, pos, cache)
        self.counters["tokens_min"] += int((L - cut).sum())
        pred = torch.as_tensor(inp.predictor[rows] - p, device=dev)
        h_pred = hidden[torch.arange(G, device=dev), pred]
        return _Prepared(cache=cache, attn=attn, h_pred=h_pred)

    def _logprobs(self, h: Any) -> Any:
        import torch

        return torch.log_softmax(self.model.output_logits(h), dim=-1)

    # ---- beam search ---------------------------------------------------------------------
    def _search_chunk(self, inp: BeamInputs, rows: np.ndarray) -> tuple[list[Beams], Any]:
        """Beam search for ``rows``; returns their beams and hidden states (G, b, J, H)."""
        import torch

        dev = self.model.device
        b, J, L = self.beams, self.horizon, self.n_prompt
        G = len(rows)
        R = G * b
        prep = self._prompt_pass(inp, rows)
        H = prep.h_pred.shape[-1]
        hist = torch.zeros((G, b, J, H), dtype=prep.h_pred.dtype, device=dev)
        hist[:, :, 0] = prep.h_pred[:, None, :]
        tokens = torch.zeros((G, b, J - 1), dtype=torch.long, device=dev)
        tok_lp = torch.zeros((G, b, J - 1), dtype=torch.float64, device=dev)
        ended = torch.zeros((G, b, J - 1), dtype=torch.bool, device=dev)
        done = torch.zeros((G, b), dtype=torch.bool, device=dev)
        score = torch.full((G, b), float("-inf"), dtype=torch.float64, device=dev)
        score[:, 0] = 0.0  # one live hypothesis (the empty prefix) before the first step
        if J == 1:
            return self._collect(tokens, tok_lp, ended), hist
        logp = self._logprobs(prep.h_pred)[:, None, :].expand(G, b, -1)
        cache = prep.cache
        cache.batch_repeat_interleave(b)
        attn = prep.attn.repeat_interleave(b, dim=0)
        eos_t = torch.as_tensor(self.eos_ids, device=dev)
        V = logp.shape[-1]
        if V < b:
            raise InputError(f"The beam width {b} exceeds the vocabulary size {V}.")
        ar_g = torch.arange(G, device=dev)[:, None]
        for t in range(1, J):
            cand = score[:, :, None] + logp.double()
            # an ended beam has one continuation (padding) at probability 1
            cand = torch.where(done[:, :, None], float("-inf"), cand)
            cand[:, :, self.eos] = torch.where(done, score, cand[:, :, self.eos])
            val, idx = cand.reshape(G, b * V).topk(b, dim=-1)
            origin = torch.div(idx, V, rounding_mode="floor")
            tok = idx % V
            prev_done = done[ar_g, origin]
            tok_lp = tok_lp[ar_g, origin]
            tokens = tokens[ar_g, origin]
            ended = ended[ar_g, origin]
            hist = hist[ar_g, origin]
            tok_lp[:, :, t - 1] = torch.where(prev_done, 0.0, val - score[ar_g, origin])
            tokens[:, :, t - 1] = tok
            ended[:, :, t - 1] = prev_done
            score = val
            done = prev_done | torch.isin(tok, eos_t)
            flat = (ar_g * b + origin).reshape(-1)
            cache.reorder_cache(flat)
            attn = torch.cat([attn, torch.ones((R, 1), dtype=attn.dtype, device=dev)], dim=1)
            h = self._forward(
                tok.reshape(R, 1), attn,
                torch.full((R, 1), L + t - 1, dtype=torch.long, device=dev), cache,
            )[:, 0]
            hist[:, :, t] = h.reshape(G, b, H)
            if t < J - 1:
                logp = self._logprobs(h).reshape(G, b, V)
        # beam search needs b tokens per step (padding of ended beams excluded)
        self.counters["tokens_min"] += int((~ended).sum())
        return self._collect(tokens, tok_lp, ended), hist

    @staticmethod
    def _collect(tokens: Any, tok_lp: Any, ended: Any) -> list[Beams]:
        t_np, l_np, e_np = tokens.cpu().numpy(), tok_lp.cpu().numpy(), ended.cpu().numpy()
        return [Beams(t_np[g], l_np[g], e_np[g]) for g in range(t_np.shape[0])]

    def _teacher_chunk(self, inp: BeamInputs, rows: np.ndarray, beams: Beams) -> Any:
        """Hidden states (G, b, J, H) of fixed ``beams`` under each input of ``rows``."""
        import torch

        dev = self.model.device
        b, J, L = beams.n_beams, beams.horizon, self.n_prompt
        G = len(rows)
        prep = self._prompt_pass(inp, rows)
        H = prep.h_pred.shape[-1]
        hist = torch.empty((G, b, J, H), dtype=prep.h_pred.dtype, device=dev)
        hist[:, :, 0] = prep.h_pred[:, None, :]
        if J > 1:
            cache = prep.cache
            cache.batch_repeat_interleave(b)
            R = G * b
            attn = torch.cat(
                [prep.attn.repeat_interleave(b, dim=0),
                 torch.ones((R, J - 1), dtype=prep.attn.dtype, device=dev)], dim=1,
            )
            toks = torch.as_tensor(beams.tokens, device=dev).repeat(G, 1)
            pos = torch.arange(L, L + J - 1, device=dev)[None, :].expand(R, -1).clone()
            h = self._forward(toks, attn, pos, cache)
            hist[:, :, 1:] = h.reshape(G, b, J - 1, H)
            self.counters["tokens_min"] += G * beams.distinct_nodes()
        return hist

    # ---- marginals ----------------------------------------------------------------------
    def _marginal(self, h: Any, beams: Beams, token_logp: np.ndarray | None = None) -> Marginal:
        """Mixture of one input's per-beam distributions; h is (b, J, H) hidden states.

        Only one beam per distinct prefix goes through the LM head (equal prefixes give
        equal distributions). token_logp: the token log-probs of the prefix weights
        (default: recomputed from h, i.e. the weights of the model that produced h).
        """
        import torch

        dev = self.model.device
        b, J = h.shape[0], h.shape[1]
        owner = prefix_owners(beams.tokens, beams.ended)  # (J, b)
        jj, kk = np.nonzero(owner == np.arange(b)[None, :])  # representative (j, k) pairs
        row_of = np.full((J, b), -1, dtype=np.int64)
        row_of[jj, kk] = np.arange(len(jj))
        lp = self._logprobs(h[torch.as_tensor(kk), torch.as_tensor(jj)])  # (n_rep, V)
        if J > 1:
            # after EOS the next token is EOS with certainty (absorbing end)
            stop = np.zeros((b, J), dtype=bool)
            stop[:, 1:] = beams.ended | np.isin(beams.tokens, self.eos_ids)
            point = torch.full_like(lp[0], float("-inf"))
            point[self.eos] = 0.0
            lp = torch.where(torch.as_tensor(stop[kk, jj], device=dev)[:, None], point, lp)
            if token_logp is None:
                # y_t is scored by the distribution at position t of its prefix's owner
                t = np.arange(J - 1)[None, :]
                rows = row_of[t, owner[t, np.arange(b)[:, None]]]  # (b, J-1)
                tl = lp[torch.as_tensor(rows), torch.as_tensor(beams.tokens)]
                token_logp = np.where(beams.ended, 0.0, tl.double().cpu().numpy())
        else:
            token_logp = np.zeros((b, 0))
        logw = prefix_logp(token_logp)[kk, jj]  # (n_rep,)
        log_mass = np.full(J, -np.inf)
        np.logaddexp.at(log_mass, jj, logw)  # no underflow for tiny prefix weights
        lw = torch.as_tensor(logw - log_mass[jj], dtype=torch.float64, device=dev)
        mix = torch.zeros((J, lp.shape[-1]), dtype=torch.float64, device=dev)
        mix.index_add_(0, torch.as_tensor(jj, device=dev), (lp.double() + lw[:, None]).exp())
        used = Beams(beams.tokens, token_logp, beams.ended)
        return Marginal(logp=mix.log(), mass=np.exp(log_mass), beams=used)

    def search(self, inp: BeamInputs, *, progress: Any = None) -> Iterator[tuple[int, Marginal]]:
        """Own beams: beam search on every input, marginals from its own beams and weights.

        Yields (row, Marginal) pairs, ``chunk_inputs()`` rows per batch, rows sorted so that
        a batch shares a long unchanged prefix (not in row order).
        """
        yield from self._run(inp, None, "masked", progress)

    def teacher_force(
        self,
        inp: BeamInputs,
        beams: Beams,
        *,
        weights: str = "masked",
        progress: Any = None,
    ) -> Iterator[tuple[int, Marginal]]:
        """Shared beams: the given beams teacher-forced under every input.

        weights: "masked" = prefix probabilities under each input (Eq. 4 restricted to the
                 shared prefixes), "original" = the given beams' own weights.
        """
        yield from self._run(inp, beams, weights, progress)

    def _batch(self, inp: BeamInputs, rows: np.ndarray, beams: Beams | None,
               weights: str) -> list[Marginal]:
        """The marginals of one batch of inputs (own beams when ``beams`` is None)."""
        with self.model.inference():
            if beams is None:
                found, hist = self._search_chunk(inp, rows)
                return [self._marginal(hist[g], found[g], found[g].token_logp)
                        for g in range(len(rows))]
            hist = self._teacher_chunk(inp, rows, beams)
            tl = beams.token_logp if weights == "original" else None
            return [self._marginal(hist[g], beams, tl) for g in range(len(rows))]

    def _run(
        self, inp: BeamInputs, beams: Beams | None, weights: str, progress: Any
    ) -> Iterator[tuple[int, Marginal]]:

        n = len(inp)
        if inp.n_prompt != self.n_prompt:
            raise InputError("The perturbed inputs were built for another prompt.")
        # rows sharing long unchanged prefixes go together (like the scoring engine)
        order = np.argsort(-np.minimum(inp.first_change, inp.predictor), kind="stable")
        G = self.chunk_inputs()
        queue = deque(order[c0 : c0 + G] for c0 in range(0, n, G))
        done = 0
        while queue:
            rows = queue.popleft()
            t0 = time.perf_counter()
            # the least tokens needed: a failed batch's own do not count, a prefix it
            # computed (kept) does
            tmin, had_prefix = self.counters["tokens_min"], self._cache.ready
            out, err = out_of_memory_attempt(self._batch, inp, rows, beams, weights)
            if err is None:
                self.counters["model_s"] += time.perf_counter() - t0
                for g, r in enumerate(rows):
                    yield int(r), out[g]
                done += len(rows)
                if progress is not None:
                    progress(done, n)
                continue
            # out of memory: nothing of the failed batch was yielded
            self.counters["oom_retries"] += 1
            self.counters["model_s"] += time.perf_counter() - t0
            self.counters["tokens_min"] = tmin + (
                self.n_prompt if self._cache.ready and not had_prefix else 0)
            if len(rows) == 1:
                raise CapabilityError(
                    f"The beam search of one prompt ({self.beams} beams x "
                    f"{self.n_prompt + self.horizon} tokens) does not fit in the device's "
                    f"memory ({err}); use fewer beams or output positions, a shorter prompt, "
                    f"a smaller model or dtype, or another device."
                )
            # this batch and the ones after it, at half its size
            half = len(rows) // 2
            self.max_batch_tokens = half * (self.n_prompt + self.horizon) * self.beams
            rest = np.concatenate([rows, *queue])
            queue = deque(rest[c : c + half] for c in range(0, len(rest), half))
