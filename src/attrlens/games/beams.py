"""BeamGame: masks -> per-output-position distances between beam-marginalised distributions.

GiLOT (Li et al., ICML 2024) compares, at each output position j = 1..J, the reference
input's beam-marginalised next-token distribution p_x(Y_j) with the masked input's
p_{x/z}(Y_j) (Eq. 2-5, :mod:`attrlens.scoring.beams`). The value of a mask z is the vector

    d(z) = ( L(p_x(Y_j), p_{x/z}(Y_j)) )_{j=1..J}        (J,) float64, >= 0

with L = optimal transport over the renormalised top-k vocabulary union with cost
1 - cos(e_u, e_v) of input-embedding rows (Eq. 7-8), or KL(p || q) over the whole vocabulary
(Eq. 6). The scalar value is the mean over j (GiLOT's S for a leave-one-out mask). Unlike the
scoring game's values, larger = *further* from the reference output (0 for the reference).

Memory stays bounded: each masked input's (J, V) marginal is compressed (or reduced to KL)
as soon as its beam search ends; only (J,) distances, (J,) beam masses and the compressed
supports of one :meth:`compute` call are kept. The game memoises and counts like every
:class:`~attrlens.games.base.Game`; :meth:`cost` reports the beam runner's forwards and tokens.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InputError, ParameterError
from ..scoring.beams import BeamRunner, Marginal, make_inputs
from ..scoring.cache import PrefixCache
from ..scoring.distributions import kl_full, topk_union
from .base import Cost, Game

if TYPE_CHECKING:
    from ..models.hf import HFModel
    from .model import ModelInputs

Progress = Callable[[int, int], None]
TokenKeep = Callable[[np.ndarray], np.ndarray]


@dataclass(frozen=True)
class BeamSettings:
    """How beam marginals are built and compared (GiLOT's parameters; see GilotExplainer).

    beams, horizon: beam width b and output positions J (beams have J - 1 new tokens)
    beam_mode:      "own" (beam search on each masked input) | "shared" (the reference's
                    beams teacher-forced under each masked input)
    shared_weights: prefix weights in shared mode: "masked" | "original"
    distance:       "ot" | "kl"
    vocab_k, vocab_p, vocab_cap: top-k union size per side, or top-p nuclei capped at
                    vocab_cap tokens (vocab_p not None)
    cost:           "full" (1 - cos) | "half" ((1 - cos) / 2)
    solver:         "auto" | "ipot" | "sinkhorn" | "exact" (auto: exact on CPU, ipot else)
    ot_beta, ot_iter, ot_tol, smoothing: IPOT step, iterations, tolerance, smoothing
    max_batch_tokens: rows x cache length per forward
    """

    beams: int = 10
    horizon: int = 10
    beam_mode: str = "own"
    shared_weights: str = "masked"
    distance: str = "ot"
    vocab_k: int = 100
    vocab_p: float | None = None
    vocab_cap: int = 1000
    cost: str = "full"
    solver: str = "auto"
    ot_beta: float = 1.0
    ot_iter: int = 1000
    ot_tol: float | None = None
    smoothing: float = 1e-4
    max_batch_tokens: int = 8192


def resolve_solver(solver: str, device: Any) -> str:
    """``"auto"``: batched IPOT (the paper's solver) on an accelerator; exact network simplex
    on CPU, where it is several times faster than 1000 IPOT iterations and gives the value
    IPOT converges to."""
    if solver != "auto":
        return solver
    return "exact" if device is None or getattr(device, "type", "cpu") == "cpu" else "ipot"


def _check_finite(marginal: Marginal) -> None:
    """A one-line refusal of next-token distributions that are NaN (or +inf) somewhere: a
    model that overflows (float16), which the distances would otherwise meet as a solver
    error. (-inf is a token of probability 0: after an ended beam's EOS, every other.)"""
    import torch

    lp = marginal.logp
    if bool(torch.isnan(lp).any()) or bool(torch.isposinf(lp).any()):
        raise InputError(
            "The model gave NaN or inf next-token probabilities (it overflows in its dtype); "
            "load it in float32 (--dtype float32) or bfloat16."
        )


# bytes per support cell while one transport problem is solved: the float64 cost matrix,
# its cosine intermediate and the solver's plan (vocab_k=3000 gave a 3,348-token union;
# the whole process, model included, peaked at 1.6 GB)
SUPPORT_BYTES_PER_CELL = 32


class BeamGame(Game):
    """masks (m, n) -> (J,) distances between the reference's and each masked input's
    beam-marginalised output distributions (see the module docstring).

    model:          an HFModel
    prompt_ids:     (L,) the prompt's token ids (template included)
    token_keep:     masks (m, n) bool -> (m, L) bool, which tokens each mask keeps
    n_features:     n
    masker:         "attention_off" (id 0, attention 0; the paper's) | "delete" | "replace"
    mask_token_id:  the id ``replace`` feeds
    settings:       :class:`BeamSettings`
    prefix:         the prompt's key/value cache to share (e.g. the scoring engine's)
    reference_keep: (L,) tokens kept in the reference input (default all); its masked
                    tokens stay masked in every variant
    """

    nonfinite_hint = ("the model overflows in its dtype (its activations or gradients): "
                      "load it in float32 (--dtype float32) or bfloat16")

    value_kind = "beam_distances"

    def __init__(
        self,
        model: HFModel,
        prompt_ids: np.ndarray,
        token_keep: TokenKeep,
        n_features: int,
        *,
        masker: str = "attention_off",
        mask_token_id: int = 0,
        settings: BeamSettings | None = None,
        prefix: PrefixCache | None = None,
        prefix_reuse: bool = True,
        reference_keep: np.ndarray | None = None,
        progress: Progress | None = None,
    ):
        super().__init__(None, n_features, per_token=True, reduce=lambda m: m.mean(-1))
        self.value_kind = "beam_distances"
        self.model = model
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        self.token_keep = token_keep
        self.masker = masker
        self.mask_token_id = int(mask_token_id)
        self.settings = settings or BeamSettings()
        s = self.settings
        L = self.prompt_ids.shape[0]
        self.reference_keep = (np.ones(L, dtype=bool) if reference_keep is None
                               else np.asarray(reference_keep, dtype=bool))
        if self.reference_keep.shape != (L,):
            raise InputError(f"reference_keep must have shape ({L},).")
        self.runner = BeamRunner(model, self.prompt_ids, beams=s.beams, horizon=s.horizon,
                                 max_batch_tokens=s.max_batch_tokens, prefix=prefix,
                                 prefix_reuse=prefix_reuse)
        self.runner_progress = progress
        self.solver = resolve_solver(s.solver, getattr(model, "device", None))
        if s.distance == "ot":
            self._check_support_memory()
        self.timings = {"model_s": 0.0, "compress_s": 0.0, "solver_s": 0.0}
        self._union_sum = 0.0
        self._union_n = 0
        self._reference: Marginal | None = None
        self._mass: dict[bytes, np.ndarray] = {}

    @classmethod
    def from_inputs(
        cls,
        inputs: ModelInputs,
        settings: BeamSettings,
        *,
        prefix: PrefixCache | None = None,
    ) -> BeamGame:
        """The game of one prepared explanation (its model, prompt, features, masker; its
        ``prefix_reuse``, which the beam runner follows too)."""
        mk = inputs.masker
        if mk.kind not in ("attention_off", "delete", "replace"):
            raise InputError(
                f"GiLOT supports the maskers attention_off, delete and replace; got "
                f"{mk.kind!r}."
            )
        return cls(
            inputs.model, inputs.prompt_ids, mk.token_keep, inputs.n_features,
            masker=mk.kind,
            # attention_off feeds id 0 like the paper's code; replace uses the masker's token
            mask_token_id=mk.mask_token_id if mk.kind == "replace" else 0,
            settings=settings, prefix=prefix, progress=inputs.progress,
            prefix_reuse=inputs.prefix_reuse,
        )

    def _check_support_memory(self) -> None:
        """Refuse a transport support whose cost matrix cannot fit in memory (one problem
        is one matrix, which no batching can split): a vocab_k of 100,000 asked for a
        49,152-token support, about 58 GiB, and the process was killed."""
        s = self.settings
        name, k = ("vocab_cap", s.vocab_cap) if s.vocab_p is not None else ("vocab_k",
                                                                            s.vocab_k)
        try:
            vocab = int(self.model.embedding_matrix().shape[0])
        except (AttributeError, TypeError, IndexError):
            return
        size = min(2 * int(k), vocab)  # the union of two top-k lists
        need = SUPPORT_BYTES_PER_CELL * size * size
        free = getattr(self.model, "free_memory", lambda: None)()
        if not free or need <= 0.5 * free:
            return
        fit = max(1, int((0.5 * free / SUPPORT_BYTES_PER_CELL) ** 0.5) // 2)
        raise ParameterError(
            f"GiLOT's transport support of up to {size} tokens ({name}={k} per side) needs "
            f"about {need / 2**30:.1f} GiB for its cost matrix; {free / 2**30:.1f} GiB is "
            f"free. Lower {name} to at most {fit}.")

    # ---- the reference ------------------------------------------------------------------
    def reference(self) -> Marginal:
        """The reference input's beam marginal (computed once; costs one beam search)."""
        if self._reference is None:
            inp = make_inputs(self.prompt_ids, self.reference_keep[None, :], kind=self.masker,
                              mask_token_id=self.mask_token_id)
            t0 = time.perf_counter()
            with self.runner.model.inference():
                ((_, ref),) = list(self.runner.search(inp))
            self.timings["model_s"] += time.perf_counter() - t0
            _check_finite(ref)
            self._reference = ref
        return self._reference

    # ---- values -------------------------------------------------------------------------
    def compute(self, masks: np.ndarray) -> list[np.ndarray]:
        import torch

        s = self.settings
        J = s.horizon
        keep = np.atleast_2d(np.asarray(self.token_keep(masks), dtype=bool))
        keep &= self.reference_keep[None, :]
        same = (keep == self.reference_keep[None, :]).all(axis=1)
        out = [np.zeros(J) for _ in range(len(masks))]
        keys = [self.key(r) for r in masks]
        importer = None
        if s.distance == "ot" and self.solver == "exact" and "ot" not in sys.modules:
            # POT takes seconds to import; do it while the model works
            importer = threading.Thread(target=importlib.import_module, args=("ot",),
                                        daemon=True)
            importer.start()
        ref = self.reference()
        for i in np.flatnonzero(same):  # the reference itself: distance 0 by definition
            self._mass[keys[i]] = ref.mass
        todo = np.flatnonzero(~same)
        if len(todo) == 0:
            return out
        inp = make_inputs(self.prompt_ids, keep[todo], kind=self.masker,
                          mask_token_id=self.mask_token_id)
        if s.beam_mode == "own":
            stream = self.runner.search(inp, progress=self.runner_progress)
        else:
            stream = self.runner.teacher_force(inp, ref.beams, weights=s.shared_weights,
                                               progress=self.runner_progress)
        comp: list[tuple[int, Any, Any, Any, Any]] = []
        model_s0 = self.runner.counters["model_s"]
        for row, marg in stream:
            i = int(todo[row])
            _check_finite(marg)
            self._mass[keys[i]] = marg.mass
            t0 = time.perf_counter()
            with torch.inference_mode():
                if s.distance == "kl":
                    out[i] = kl_full(ref.logp, marg.logp)
                else:
                    comp.append((i, *topk_union(ref.logp, marg.logp, top_k=s.vocab_k,
                                                top_p=s.vocab_p, top_p_cap=s.vocab_cap)))
            self.timings["compress_s"] += time.perf_counter() - t0
        self.timings["model_s"] += self.runner.counters["model_s"] - model_s0
        if comp:
            from ..solvers.ot import ot_distances_on_support

            t0 = time.perf_counter()
            if importer is not None:
                importer.join()
            with torch.no_grad():
                emb = self.model.embedding_matrix()
                ids, p, q, valid = (torch.cat([c[k] for c in comp]) for k in range(1, 5))
                self._union_sum += float(valid.sum(-1).double().sum())
                self._union_n += int(valid.shape[0])
                d = ot_distances_on_support(
                    ids, p, q, valid, emb, half=s.cost == "half", method=self.solver,
                    beta=s.ot_beta, max_iter=s.ot_iter, smoothing=s.smoothing, tol=s.ot_tol,
                ).reshape(len(comp), J)
            for r, (i, *_) in enumerate(comp):
                out[i] = d[r]
            self.timings["solver_s"] += time.perf_counter() - t0
        return out

    # ---- read-only diagnostics ------------------------------------------------------------
    def masked_mass(self, masks: np.ndarray) -> np.ndarray:
        """(m, J) beam mass of each (already evaluated) mask's own or shared prefixes."""
        masks = self.check_masks(masks)
        try:
            return np.stack([self._mass[self.key(r)] for r in masks])
        except KeyError:
            raise InputError("masked_mass is read after the masks were evaluated.") from None

    def reference_beams(self) -> list[dict[str, Any]]:
        """The reference's beams as text with their log-probabilities."""
        beams = self.reference().beams
        tok = self.model.tokenizer
        rows = []
        for k in range(beams.n_beams):
            ids = beams.tokens[k][~beams.ended[k]]
            rows.append({"text": tok.decode(ids.tolist(), skip_special_tokens=False),
                         "logprob": float(beams.token_logp[k].sum())})
        return rows

    @property
    def union_size_mean(self) -> float:
        """Mean size of the top-k vocabulary unions solved so far (OT)."""
        return self._union_sum / self._union_n if self._union_n else 0.0

    @property
    def tokens_min(self) -> int:
        """Tokens the method needs (changed suffixes + beam tokens), for overhead figures."""
        return int(self.runner.counters["tokens_min"])

    def cost(self) -> Cost:
        c = self.runner.counters
        return Cost(value_calls=self.n_calls, model_forwards=int(c["model_forwards"]),
                    tokens_processed=int(c["tokens_processed"]),
                    oom_retries=int(c.get("oom_retries", 0)))
