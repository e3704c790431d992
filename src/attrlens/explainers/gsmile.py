"""gSMILE (Dehghani et al., arXiv 2505.21657): LIME for closed generative models with
Word Mover's Distance (Wasserstein-1 over word embeddings) similarities.

Per perturbation z_j (METHODS §2, the paper's reading):

    x(z_j)   the explainable text with the masked features deleted (order and duplicates
             kept), sent as the same chat messages with the user content replaced; masks
             are i.i.d. Bernoulli(p_keep), unique, with at least ``min_kept`` kept words
             (redrawn, so z matches the text exactly)
    o_j      the closed model's greedy answer to x(z_j)           (one API call each)
    y_j      1 - minmax_j WMD(o, o_j)       similarity of the outputs (1 for all if equal)
    w_j      sqrt(exp(-WMD(x, x(z_j))^2 / σ^2)), σ = 0.25         locality in input space
    fit      weighted OLS with intercept; scores = β (positive = keeping the feature keeps
             the output close to the original)

``reference_quirks=True`` reproduces the reference code (``xwhy``) instead: the distance is
WMD(o, x(z_j)) between the original *output* and the perturbed *prompt* (so no perturbed
prompt is sent to the model), the same distance gives both y and w, repeated words are
dropped from the perturbed prompt (first occurrence kept), masks with fewer than 2 kept
words get random extra words switched on, and the ground cost is Euclidean (gensim's).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError, ParameterError
from ..params import check_param
from ..models.embeddings import EMBEDDINGS, GROUND_COSTS, WordMoversDistance, get_word_embeddings
from ..registry import register
from .base import Explainer, Explanation

WEIGHT_DISTANCES = ("input", "output")
SOLVERS = ("ols", "ridge")


def minmax_similarity(d: np.ndarray) -> np.ndarray:
    """y = 1 - (d - min d)/(max d - min d); all ones when every distance is equal [xwhy]."""
    d = np.asarray(d, dtype=np.float64)
    span = float(d.max() - d.min()) if d.size else 0.0
    if span <= 0.0:
        return np.ones_like(d)
    return 1.0 - (d - d.min()) / span


def gsmile_kernel(d: np.ndarray, sigma: float) -> np.ndarray:
    """w = sqrt(exp(-d^2/σ^2)) = exp(-d^2/(2σ^2)), rescaled so that max w = 1.

    The rescaling (done in log space) changes nothing in a weighted least-squares fit but
    keeps far-away sample sets from underflowing to all-zero weights.
    """
    logw = -(np.asarray(d, dtype=np.float64) ** 2) / (2.0 * sigma**2)
    return np.exp(logw - logw.max())


def prefix_order(masks: np.ndarray) -> np.ndarray:
    """Row order that sorts masks lexicographically by feature 0, 1, ... (kept first)."""
    masks = np.asarray(masks, dtype=bool)
    if masks.size == 0:
        return np.arange(masks.shape[0])
    # np.lexsort's primary key is the last one: feature 0 must come last
    return np.lexsort([~masks[:, j] for j in range(masks.shape[1] - 1, -1, -1)])


class PerturbedPrompts:
    """Builds the text of a perturbed prompt from a mask over the features.

    Deletes the masked features' char spans from each explainable region (their leading
    whitespace goes with them, so the remaining text stays well spaced).
    """

    def __init__(self, prompt: Any, features: Any):
        self.prompt = prompt
        self.features = features
        regions = list(prompt.regions)
        self.regions = regions
        # for each region, the (start, end, feature) pieces inside it, in text order
        self._pieces: list[list[tuple[int, int, int]]] = [[] for _ in regions]
        for f in features:
            for a, b in f.spans:
                for ri, (rs, re_) in enumerate(regions):
                    if rs <= a and b <= re_:
                        self._pieces[ri].append((a, b, f.index))
                        break
        for pieces in self._pieces:
            pieces.sort()
        self.n_words = np.asarray([len(f.label.split()) for f in features], dtype=np.int64)

    def region_texts(self, keep: np.ndarray) -> list[str]:
        """Text of every explainable region with the features where ``keep`` is False removed."""
        text = self.prompt.text
        out = []
        for (rs, re_), pieces in zip(self.regions, self._pieces):
            parts, cur = [], rs
            for a, b, fi in pieces:
                parts.append(text[cur:a])
                if keep[fi]:
                    parts.append(text[a:b])
                cur = b
            parts.append(text[cur:re_])
            out.append("".join(parts))
        return out

    def text(self, keep: np.ndarray) -> str:
        """The perturbed explainable text (all regions joined)."""
        return "".join(self.region_texts(keep))

    def messages(self, keep: np.ndarray, *, dedup_words: bool = False) -> list[dict[str, str]]:
        """Chat messages of the perturbed prompt (user content replaced region by region)."""
        texts = self.region_texts(keep)
        if dedup_words:
            texts = [" ".join(dict.fromkeys(t.split())) for t in texts]
        pr = self.prompt
        if not pr.messages:
            return [{"role": "user", "content": "".join(texts)}]
        msgs = [dict(m) for m in pr.messages]
        for ri, mi in enumerate(pr.region_messages):
            rs, re_ = self.regions[ri]
            original = pr.text[rs:re_]
            content = msgs[mi]["content"]
            # the region is the message content (or its stripped form): swap that part
            at = content.find(original)
            if at < 0:
                msgs[mi]["content"] = texts[ri]
            else:
                msgs[mi]["content"] = content[:at] + texts[ri] + content[at + len(original):]
        return msgs


@register
class GSmileExplainer(Explainer):
    """gSMILE; ``budget`` = perturbed prompts sent to the closed model (N, default 64).

    p_keep:          keep probability of each feature [C: 0.5]
    min_kept:        fewest kept words in a perturbed prompt (masks redrawn) [C: 2]
    embeddings:      'surrogate' (the local model's input embeddings, no download) |
                     'minilm' (embedded all-MiniLM-L6-v2) | a WordEmbeddings object
    cost:            WMD ground cost 'cosine' | 'euclidean' (default: cosine; euclidean
                     with reference_quirks, as gensim)
    kernel_width:    σ of the kernel, float or 'median' [C: 0.25]
    weight_distance: 'input' (WMD(x, x(z)), LIME semantics) | 'output' (WMD(o, o_j), the
                     reference's reuse) [R: input]
    solver:          'ols' (weighted OLS with intercept, as the reference) | 'ridge'
    alpha:           ridge penalty (solver='ridge')
    reference_quirks: reproduce the reference code (see the module docstring)
    """

    name = "gsmile"
    description = (
        "gSMILE: queries the closed model on every perturbed prompt; WMD output similarity, "
        "WMD locality kernel, weighted linear surrogate."
    )
    needs_model = True
    needs_closed_model = True
    default_masker = "delete"
    default_target = "nll"

    def __init__(
        self,
        *,
        budget: int | None = None,
        p_keep: float = 0.5,
        min_kept: int = 2,
        embeddings: Any = "surrogate",
        cost: str | None = None,
        kernel_width: float | str = 0.25,
        weight_distance: str = "input",
        solver: str = "ols",
        alpha: float = 1.0,
        reference_quirks: bool = False,
    ):
        super().__init__(
            budget=budget,
            p_keep=p_keep,
            min_kept=min_kept,
            embeddings=embeddings,
            cost=cost,
            kernel_width=kernel_width,
            weight_distance=weight_distance,
            solver=solver,
            alpha=alpha,
            reference_quirks=reference_quirks,
        )

    def get_params(self) -> dict[str, Any]:
        out = super().get_params()
        emb = out["embeddings"]
        if not isinstance(emb, str):  # keep the result JSON serialisable
            out["embeddings"] = getattr(emb, "name", type(emb).__name__)
        return out

    def min_budget(self, n_features: int) -> int:
        return 2

    def default_budget(self, n_features: int) -> int:
        return 64

    def validate(self, n_features: int) -> None:
        owner = "GSmileExplainer"
        p = self.params
        check_param(owner, "p_keep", p["p_keep"], low=1e-9, high=1.0)
        check_param(owner, "min_kept", p["min_kept"], kind=int, low=0)
        if isinstance(p["embeddings"], str):
            check_param(owner, "embeddings", p["embeddings"], choices=EMBEDDINGS)
        if p["cost"] is not None:
            check_param(owner, "cost", p["cost"], choices=GROUND_COSTS)
        if p["kernel_width"] != "median":
            check_param(owner, "kernel_width", p["kernel_width"], low=1e-9)
        check_param(owner, "weight_distance", p["weight_distance"], choices=WEIGHT_DISTANCES)
        check_param(owner, "solver", p["solver"], choices=SOLVERS)
        check_param(owner, "alpha", p["alpha"], low=0)
        check_param(owner, "reference_quirks", p["reference_quirks"], kind=bool)

    # -- sampling -------------------------------------------------------------------------------
    def sample_masks(
        self, n_words: np.ndarray, budget: int, seed: int
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """(m, n) unique Bernoulli(p_keep) masks with >= min_kept kept words, m <= budget.

        Masks with no kept feature are rejected [C]; masks with too few kept words are
        redrawn (or, with reference_quirks, topped up with random extra features [C]).
        """
        n = len(n_words)
        p = self.params
        rng = np.random.default_rng(seed)
        need = min(int(p["min_kept"]), int(n_words.sum()))
        quirks = bool(p["reference_quirks"])
        seen: set[bytes] = set()
        rows: list[np.ndarray] = []
        draws, topped = 0, 0
        max_draws = 200 * budget + 1000
        while len(rows) < budget and draws < max_draws:
            z = rng.random(n) < p["p_keep"]
            draws += 1
            if not z.any():
                continue
            if int(n_words[z].sum()) < need:
                if not quirks:
                    continue
                off = np.flatnonzero(~z)
                for i in rng.permutation(off):
                    z[i] = True
                    if int(n_words[z].sum()) >= need:
                        break
                topped += 1
            key = np.packbits(z).tobytes()
            if key in seen:
                continue
            seen.add(key)
            rows.append(z)
        if not rows:
            raise InputError(
                f"gSMILE found no perturbation with at least {need} kept words among "
                f"{n} features; lower min_kept."
            )
        info = {"draws": draws, "topped_up": topped, "short_of_budget": budget - len(rows)}
        return np.asarray(rows, dtype=bool), info

    # -- the method -----------------------------------------------------------------------------
    def explain_context(self, ctx: ExplainContext) -> Explanation:
        n = ctx.n_features
        self.validate(n)
        budget = self.resolve_budget(n)
        p = self.params
        quirks = bool(p["reference_quirks"])
        backend = ctx.target_backend
        if backend is None:
            raise ParameterError(
                "gSMILE explains a closed model: give --target-url and --target-model "
                "(or target_backend=OpenAIBackend(...))."
            )
        cost = p["cost"] or ("euclidean" if quirks else "cosine")
        emb = get_word_embeddings(p["embeddings"], model=ctx.model)
        wmd = WordMoversDistance(emb, cost=cost)

        pp = PerturbedPrompts(ctx.prompt, ctx.features)
        masks, sample_info = self.sample_masks(pp.n_words, budget, ctx.seed)
        msgs = [pp.messages(z, dedup_words=quirks) for z in masks]
        texts = ["".join(m["content"] for m in ms if m["role"] == "user") for ms in msgs]
        original = ctx.output_text
        calls_before = int(backend.counters.get("api_calls", 0))
        cached_before = int(backend.counters.get("cached_calls", 0))

        if quirks:
            # the reference measures WMD between the original output and the perturbed
            # prompt; the model's answers to the perturbations are never used
            outputs = None
            d_target = wmd.many(original, texts)
            d_weight = d_target
        else:
            # sent in lexicographic mask order: consecutive prompts then share the longest
            # text prefixes, which servers with a prompt cache (llama.cpp, hosted APIs)
            # do not process again; the order of samples does not matter to the fit
            order = prefix_order(masks)
            comps = backend.chat_many(
                [msgs[i] for i in order],
                max_tokens=int(ctx.options.get("max_new_tokens", 32)),
                temperature=0.0,
                progress=ctx.progress,
            )
            outputs = [""] * len(masks)
            for i, c in zip(order, comps):
                outputs[i] = c.text
            d_target = wmd.many(original, outputs)
            if p["weight_distance"] == "input":
                d_weight = wmd.many(pp.text(np.ones(n, dtype=bool)), texts)
            else:
                d_weight = d_target

        y = minmax_similarity(d_target)
        if p["kernel_width"] == "median":
            pos = d_weight[d_weight > 0]
            sigma = float(np.median(pos)) if pos.size else 1.0
        else:
            sigma = float(p["kernel_width"])
        w = gsmile_kernel(d_weight, sigma)
        coef, intercept, fid = self._fit(masks, y, w)

        extra: dict[str, Any] = {
            "intercept": intercept,
            "fit_r2_weighted": fid.pop("r2_weighted"),
            "fidelity": fid,
            "n_samples": len(masks),
            "closed_calls_by_explainer": int(backend.counters.get("api_calls", 0)) - calls_before,
            "cached_calls_by_explainer": int(backend.counters.get("cached_calls", 0)) - cached_before,
            "wmd_solves": int(wmd.n_solves),
            "target_distance": {"min": float(d_target.min()), "median": float(np.median(d_target)),
                                "max": float(d_target.max())},
            "sampling": sample_info,
            "identical_outputs": (int(sum(o.strip() == original.strip() for o in outputs))
                                  if outputs is not None else None),
        }
        params = {
            "cost_effective": cost,
            "sigma": sigma,
            "kernel": "sqrt(exp(-d^2/sigma^2))",
            "target_distance": "wmd(original output, perturbed prompt)" if quirks
            else "wmd(original output, perturbed output)",
            "weight_distance_effective": "output" if quirks else p["weight_distance"],
            "embeddings_name": emb.name,
            "wmd": "exact EMD (POT), nBOW masses, lower-cased words without punctuation",
            "max_tokens": int(ctx.options.get("max_new_tokens", 32)),
            "temperature": 0.0,
            "attribution": "coef of the similarity; positive keeps the output similar",
        }
        return Explanation(scores=coef, extra=extra, params=params)

    def _fit(self, masks: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, float, dict[str, float]]:
        """Weighted linear surrogate with intercept; (coef, intercept, fidelity metrics)."""
        from ..solvers.regression import fidelity_metrics, weighted_ols, weighted_ridge

        X = masks.astype(np.float64)
        if self.params["solver"] == "ols":
            coef, intercept = weighted_ols(X, y, w, fit_intercept=True)
        else:
            coef, intercept = weighted_ridge(X, y, w, alpha=float(self.params["alpha"]), fit_intercept=True)
        coef = np.asarray(coef, dtype=np.float64)
        fid = fidelity_metrics(y, X @ coef + float(intercept), w, n_params=X.shape[1])
        fid = {k: (v if np.isfinite(v) else None) for k, v in fid.items()}
        fid["r2_weighted"] = fid.pop("weighted_r2")
        return coef, float(intercept), fid
