"""The white-box game: input embeddings, differentiable output likelihoods and attention maps
of a local model on one (prompt, output) pair, for gradient and attention attributions.

Sequence: ``s = prompt (L tokens) + output (T tokens)``, teacher forced; the output token
``o_t`` is predicted at position ``L - 1 + t`` (:attr:`WhiteBoxGame.output_rows`).
The explained quantity is the (weighted) log-likelihood of the output

    f_w(e) = sum_t w_t log p(o_t | s_<L+t)     (= -loss; GiLOT's Eq. 9 with the sign flipped)

as a function of the input embeddings ``e`` (S, d). Only the embeddings of prompt tokens that
belong to a feature move along an integration path; template tokens and the output keep
their embeddings, so completeness holds over the features.

Memory: sequences (one per path point and output-weight row) run in chunks of at most
``max_batch_tokens`` tokens (at least one sequence); model parameters are frozen
(``requires_grad=False``, restored after) while the game runs, gradients are taken for the
input embeddings (and the last attention map when asked) only, the LM head runs at the T
output positions only (never (S, vocab) logits for prompt positions; the (B, T, vocab)
logits of a chunk are freed with it), and every accumulation is float32 whatever the
model's dtype. Activation memory is bounded by recomputing each decoder layer in the
backward pass (``torch.utils.checkpoint`` over the layers): ``checkpoint="auto"`` does so
when a chunk's estimated stored activations (:meth:`WhiteBoxGame.activation_bytes`) exceed
``ACTIVATION_BUDGET`` bytes, which costs about one extra forward per chunk; then only each
layer's input (B, S, d) is kept, and a 2,000-token prompt runs IG within a few hundred MB
above the model. Attention maps need eager attention, which the game
switches on for those calls only (restoring the model's implementation afterwards).

A white-box game is not evaluated on masks: :meth:`WhiteBoxGame.compute` raises.
"""

from __future__ import annotations

import warnings
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import CapabilityError, InputError, ParameterError
from .base import Cost, Game

if TYPE_CHECKING:
    from ..models.hf import HFModel
    from ..text.segment import FeatureSet

Progress = Callable[[int, int], None]

#: embeddings a path starts from (for the feature tokens)
BASELINES = ("zero", "pad", "mask")
#: when decoder layers are recomputed in the backward pass
CHECKPOINT = ("auto", "on", "off")
#: stored activations of one chunk above which checkpoint="auto" recomputes layers (bytes)
ACTIVATION_BUDGET = 1 << 30
#: torch's warning when a backward pass meets an operator without an autograd kernel (its
#: gradient is then whatever the operator's inner graph gives: zero for compiled kernels)
NO_AUTOGRAD_KERNEL = "an autograd kernel was not registered"


@dataclass
class PathGradients:
    """Integrated quantities along a path (``sum_k w_k g(alpha_k)``).

    directional: (R, L) per weight row r and prompt token i,
                 ``sum_k w_k <grad_{e_i} f_r(x' + alpha_k (x - x')), x_i - x'_i>``
    attention:   (R, T, S) or None; ``sum_k w_k mean_heads d f_r / d A^(last)[h, L-1+t, :]``
    """

    directional: np.ndarray
    attention: np.ndarray | None = None


class WhiteBoxGame(Game):
    """Gradients and attentions of a local model for one prompt and its fixed output.

    model:            an HFModel (any device, any dtype)
    prompt_ids:       (L,) prompt token ids (template included)
    output_ids:       (T,) output token ids (T >= 1)
    features:         the FeatureSet of the prompt (token indices per feature)
    max_batch_tokens: tokens per forward/backward chunk (at least one sequence per chunk)
    checkpoint:       recompute decoder layers in the backward pass: "on", "off", or "auto"
                      (on when a chunk's activations would exceed ACTIVATION_BUDGET)
    """

    nonfinite_hint = ("the model overflows in its dtype (its activations or gradients): "
                      "load it in float32 (--dtype float32) or bfloat16")

    value_kind = "white_box"

    def __init__(
        self,
        model: HFModel,
        prompt_ids: Sequence[int] | np.ndarray,
        output_ids: Sequence[int] | np.ndarray,
        features: FeatureSet,
        *,
        max_batch_tokens: int = 4096,
        checkpoint: str = "auto",
        progress: Progress | None = None,
    ):
        super().__init__(None, len(features), progress=progress)
        self.model = model
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int64).reshape(-1)
        self.output_ids = np.asarray(output_ids, dtype=np.int64).reshape(-1)
        if len(self.prompt_ids) < 1 or len(self.output_ids) < 1:
            raise InputError("A white-box game needs a non-empty prompt and output.")
        if features.n_tokens != len(self.prompt_ids):
            raise InputError(
                f"The features cover {features.n_tokens} prompt tokens but the prompt has "
                f"{len(self.prompt_ids)}; build them from the same tokenization."
            )
        if int(max_batch_tokens) < 1:
            raise ParameterError(
                f"max_batch_tokens must be >= 1. Got {max_batch_tokens!r} instead."
            )
        if checkpoint not in CHECKPOINT:
            raise ParameterError(
                f"checkpoint must be one of {', '.join(CHECKPOINT)}. Got {checkpoint!r} instead."
            )
        self.features = features
        self.max_batch_tokens = int(max_batch_tokens)
        self.checkpoint = checkpoint
        self.owner = np.asarray(features.token_features(), dtype=np.int64)
        self.counters = {"model_forwards": 0, "tokens_processed": 0, "backward_passes": 0,
                         "checkpointed_chunks": 0, "oom_retries": 0}
        kinds = getattr(model.text_config, "mlp_layer_types", None) or []
        if "hash_moe" in kinds:
            raise CapabilityError(
                f"The model {model.info.id} ({type(model.model).__name__}) routes tokens to "
                f"experts by their ids (hash routing), which a forward from embeddings, as "
                f"gradient methods run, cannot take; use a perturbation method (loo, "
                f"kernel_shap, spex, ...)."
            )
        # the head's one-time probe runs forwards of its own: now, before any hook, eager
        # switch or checkpointing of this game's forwards could see them
        model.logit_map()
        # (the same for the check whether the model reads position_ids)
        self._positions = bool(getattr(model, "packing", (True, True))[0])

    # ---- shape helpers -------------------------------------------------------------------
    @property
    def n_prompt(self) -> int:
        return len(self.prompt_ids)

    @property
    def n_output(self) -> int:
        return len(self.output_ids)

    @property
    def seq_len(self) -> int:
        return self.n_prompt + self.n_output

    @property
    def output_rows(self) -> np.ndarray:
        """(T,) the positions whose logits predict the output tokens."""
        return np.arange(self.n_prompt - 1, self.seq_len - 1)

    @property
    def n_layers(self) -> int:
        return len(self._layers())

    def aggregate(self, token_scores: np.ndarray) -> np.ndarray:
        """(..., L) prompt-token scores -> (..., n_features): sum over each feature's tokens
        (tokens of no feature, e.g. the chat template, are dropped)."""
        token_scores = np.asarray(token_scores, dtype=float)
        out = np.zeros(token_scores.shape[:-1] + (self.n_features,))
        keep = self.owner >= 0
        np.add.at(np.moveaxis(out, -1, 0), self.owner[keep],
                  np.moveaxis(token_scores[..., keep], -1, 0))
        return out

    # ---- Game contract -------------------------------------------------------------------
    def compute(self, masks: np.ndarray) -> list[Any]:
        raise InputError(
            "A white-box game is not evaluated on masks: gradient and attention methods call "
            "its path_gradients / log_likelihood / attention_maps instead. Use a game-based "
            "method (e.g. loo) for mask values."
        )

    def cost(self) -> Cost:
        return Cost(
            value_calls=0,
            model_forwards=int(self.counters["model_forwards"]),
            tokens_processed=int(self.counters["tokens_processed"]),
            oom_retries=int(self.counters["oom_retries"]),
        )

    # ---- torch plumbing ------------------------------------------------------------------
    def _layers(self) -> Any:
        return self.model.layers()

    @contextmanager
    def _frozen(self, *, eager: bool = False) -> Iterator[None]:
        """Parameters frozen (restored after); eager attention while inside if asked, else
        the model's packed attention (:meth:`HFModel.packed_attention`): these forwards are
        whole causal sequences without padding, so it runs the same SDPA, but on a torch
        whose CPU flash kernel has no grouped-query attention it copies keys and values per
        head instead of falling to the math path, which keeps every score map for the
        backward pass. Not for a sliding window shorter than the sequences (the packed
        attention takes windows from the scoring engine's masks)."""
        mdl = self.model.model
        flags = [p.requires_grad for p in mdl.parameters()]
        for p in mdl.parameters():
            p.requires_grad_(False)
        old = getattr(mdl.config, "_attn_implementation", None)
        switch = eager and old != "eager" and self.model.on_attention_interface
        # a model with attention code of its own cannot be switched by transformers, but its
        # code reads the setting per forward (Falcon: with "sdpa" set, its output_attentions
        # path adds sdpa's boolean causal mask to its scores, which leaves them non-causal)
        direct = eager and old not in (None, "eager") and not self.model.on_attention_interface
        window = self.model.sliding_window[0]
        packed = (not eager and (window is None or self.seq_len <= window)
                  and self.model.shares_prefix(self.seq_len))
        if direct:
            mdl.config._attn_implementation = "eager"
        if switch:
            if not hasattr(mdl, "set_attn_implementation"):
                raise CapabilityError(
                    "Attention maps need eager attention, and this transformers version cannot "
                    "switch a loaded model to it; load the model with attn_implementation="
                    "'eager'."
                )
            mdl.set_attn_implementation("eager")
        try:
            with self.model.packed_attention() if packed else nullcontext():
                yield
        finally:
            if switch:
                mdl.set_attn_implementation(old)
            if direct:
                mdl.config._attn_implementation = old
            for p, f in zip(mdl.parameters(), flags):
                p.requires_grad_(f)

    def activation_bytes(self, n_seqs: int, *, eager: bool = False) -> int:
        """Rough bytes of the activations autograd stores for a chunk of ``n_seqs`` sequences
        without recomputation: per token and layer about 10 hidden-size and 4
        intermediate-size vectors (norms, q/k/v/o, gated MLP) in the model's dtype, plus two
        (heads, S, S) maps (scores, probabilities) when attention is eager."""
        cfg = self.model.text_config
        hidden = int(getattr(cfg, "hidden_size", 0) or 0)
        inter = int(getattr(cfg, "intermediate_size", 0) or 4 * hidden)
        heads = int(getattr(cfg, "num_attention_heads", 0) or 1)
        dtype = getattr(self.model.model, "dtype", None)
        item = int(getattr(dtype, "itemsize", 4))
        per_tok = (10 * hidden + 4 * inter) * item
        if eager or getattr(cfg, "_attn_implementation", None) == "eager":
            per_tok += 2 * heads * self.seq_len * item
        return int(n_seqs * self.seq_len * self.n_layers * per_tok)

    def uses_checkpoint(self, n_seqs: int, *, eager: bool = False) -> bool:
        """Whether a chunk of ``n_seqs`` sequences recomputes its decoder layers."""
        if self.checkpoint != "auto":
            return self.checkpoint == "on"
        return self.activation_bytes(n_seqs, eager=eager) > ACTIVATION_BUDGET

    @contextmanager
    def _recompute_layers(self, on: bool, *, keep_last: bool = False) -> Iterator[None]:
        """Decoder layers wrapped in non-reentrant ``torch.utils.checkpoint`` while inside
        (restored after); ``keep_last`` leaves the last layer alone (its attention map is
        differentiated). Only each layer's input is stored; the layer runs again in the
        backward pass."""
        if not on:
            yield
            return
        from functools import partial

        from torch.utils.checkpoint import checkpoint

        layers = list(self._layers())
        if keep_last:
            layers = layers[:-1]
        wrapped = []
        for layer in layers:
            had = "forward" in vars(layer)
            old = vars(layer).get("forward")
            fwd = old if had else type(layer).forward.__get__(layer)
            layer.forward = partial(checkpoint, fwd, use_reentrant=False)
            wrapped.append((layer, had, old))
        try:
            yield
        finally:
            for layer, had, old in wrapped:
                if had:
                    layer.forward = old
                else:
                    del layer.forward

    def _ids(self, which: str) -> Any:
        import torch

        ids = self.prompt_ids if which == "prompt" else np.concatenate(
            [self.prompt_ids, self.output_ids])
        return torch.as_tensor(ids, device=self.model.device)

    def embeddings(self) -> Any:
        """(S, d) input embeddings of prompt + output (detached, model dtype and device)."""
        import torch

        with torch.no_grad():
            return self.model.input_embeddings(self._ids("all")).detach()

    def baseline_embeddings(self, baseline: str = "zero") -> Any:
        """(S, d) the path's start x': the input embeddings with every feature token's
        embedding replaced by zeros ("zero"), the pad token's ("pad") or the masking token's
        ("mask", unk/pad/eos as the replace masker uses)."""
        import torch

        x = self.embeddings()
        if baseline not in BASELINES:
            raise ParameterError(
                f"The baseline must be one of {', '.join(BASELINES)}. Got {baseline!r} instead."
            )
        if baseline == "zero":
            fill = torch.zeros_like(x[0])
        else:
            tok = self.model.tokenizer
            tid = tok.pad_token_id if baseline == "pad" else self.model.mask_token_id
            if tid is None:
                tid = self.model.mask_token_id
            with torch.no_grad():
                fill = self.model.input_embeddings(
                    torch.as_tensor([int(tid)], device=self.model.device))[0]
        out = x.clone()
        idx = torch.as_tensor(np.flatnonzero(self.owner >= 0), device=x.device)
        out[idx] = fill
        return out

    def _chunks(self, n_items: int) -> list[range]:
        per = max(1, self.max_batch_tokens // self.seq_len)
        return [range(s, min(s + per, n_items)) for s in range(0, n_items, per)]

    def _in_chunks(self, n_items: int, run: Callable[[list[int], bool], None], *,
                   eager: bool = False, what: str = "forward", report: bool = True) -> None:
        """``run(items, recompute)`` over items 0..n-1, ``max_batch_tokens`` tokens per chunk
        (``report``: the game's progress callback gets the items done after each).

        On an out-of-memory error nothing of the failed chunk is kept (``run`` accumulates
        only after its backward pass): it and the chunks after it run again at half its
        size (``counters["oom_retries"]``; ``max_batch_tokens`` keeps the size). One
        sequence that does not fit is retried once with its decoder layers recomputed in
        the backward pass (``what="backward"``, ``checkpoint="auto"``; later chunks keep
        recomputing), then refused with a one-line error."""
        from ..models.base import out_of_memory_attempt

        queue = deque(list(ch) for ch in self._chunks(n_items))
        forced = False  # layers recomputed since one sequence did not fit without
        done = 0
        while queue:
            items = queue.popleft()
            recompute = what == "backward" and (forced or self.uses_checkpoint(len(items),
                                                                              eager=eager))
            _, err = out_of_memory_attempt(run, items, recompute)
            if err is None:
                done += len(items)
                if report and self.progress is not None:
                    self.progress(done, n_items)
                continue
            self.counters["oom_retries"] += 1
            if len(items) > 1:
                # this chunk and the ones after it, at half its size
                half = len(items) // 2
                self.max_batch_tokens = half * self.seq_len
                rest = items + [i for ch in queue for i in ch]
                queue = deque(rest[c:c + half] for c in range(0, len(rest), half))
            elif what == "backward" and not recompute and self.checkpoint == "auto":
                forced = True
                queue.appendleft(items)
            else:
                raise CapabilityError(
                    f"One sequence of {self.seq_len} tokens (the prompt with the output) does "
                    f"not fit in the device's memory for a {what} pass ({err}, layers "
                    f"recomputed: {'yes' if recompute else 'no'}); use a shorter prompt or "
                    f"output, a smaller model or dtype, or another device."
                )

    @staticmethod
    def _points(x: Any, x0: Any, alphas: Sequence[float]) -> Any:
        """(B, S, d) path points x0 + alpha (x - x0), interpolated in float32 and cast
        back to the model's dtype."""
        import torch

        a = torch.as_tensor(list(alphas), device=x.device, dtype=torch.float32)
        x32, x032 = x.float(), x0.float()
        return (x032[None] + a[:, None, None] * (x32 - x032)[None]).to(x.dtype)

    def _decode(self, embeds: Any, *, attentions: bool = False) -> Any:
        """The decoder's output on (B, S, d) embeddings (``attentions``: with every layer's
        attention weights, from the model's own ``output_attentions``)."""
        import torch

        b, s, _ = embeds.shape
        if attentions:
            self._check_attention_memory(b, s)
        extra: dict[str, Any] = {"output_attentions": True} if attentions else {}
        if self._positions:  # (ALiBi models ignore them, and Bloom warns)
            extra["position_ids"] = torch.arange(s, device=embeds.device)[None, :].expand(b, s)
        out = self.model.decoder(inputs_embeds=embeds, **self.model.no_cache, **extra)
        if attentions and len(getattr(out, "attentions", None) or ()) != self.n_layers:
            raise CapabilityError(
                f"The model {self.model.info.id} ({type(self.model.model).__name__}) returned "
                f"no attention weights (output_attentions) and does not run its attention "
                f"through transformers' attention interface; use a method without attention "
                f"(loo, ig, ...)."
            )
        return out

    def _require_attention(self) -> None:
        """Refuse attention methods on a recurrent model (some or all layers are not
        attention over the tokens)."""
        if self.model.stateful:
            raise CapabilityError(
                f"The model {self.model.info.id} ({type(self.model.model).__name__}) is "
                f"recurrent (state-space or linear-attention layers), so attention methods "
                f"do not explain it; use a method without attention (loo, ig, ...)."
            )

    def _check_attention_memory(self, b: int, s: int) -> None:
        """Refuse a forward whose ``output_attentions`` would hold every layer's weights at
        once, (b, heads, s, s) each, beyond half the device's free memory (the hooks of
        models on the attention interface keep one layer's at a time)."""
        heads = getattr(self.model.text_config, "num_attention_heads", None)
        free = self.model.free_memory()
        if not isinstance(heads, int) or free is None:
            return
        item = self.model.dtype.itemsize
        need = b * self.n_layers * heads * s * s * item
        if need > 0.5 * free:
            raise CapabilityError(
                f"The model {self.model.info.id} gives its attention weights only for all "
                f"{self.n_layers} layers at once (output_attentions): {s} tokens need "
                f"{need / 2**30:.1f} GiB for them, and {free / 2**30:.1f} GiB is free; use a "
                f"shorter prompt, a smaller max_batch_tokens, or a method without attention "
                f"(loo, ig, ...)."
            )

    def _forward(self, embeds: Any, captured: dict[str, Any] | None = None) -> Any:
        """(B, S, d) embeddings -> (B, T) float32 log p(o_t) (differentiable). ``captured``:
        a model off transformers' attention interface also returns its last layer's
        attention weights there (``"attn"``; models on it are read through a hook)."""
        import torch

        b, s = embeds.shape[:2]
        out = self._decode(embeds, attentions=captured is not None)
        if captured is not None:
            captured["attn"] = out.attentions[-1]
        hidden = out.last_hidden_state[:, self.n_prompt - 1: s - 1]
        logits = self.model.output_logits(hidden)
        tgt = torch.as_tensor(self.output_ids, device=embeds.device)[None, :, None].expand(b, -1, 1)
        self.counters["model_forwards"] += 1
        self.counters["tokens_processed"] += b * s
        return logits.log_softmax(-1).gather(-1, tgt)[..., 0]

    # ---- what methods call ---------------------------------------------------------------
    def log_likelihood(self, alphas: Sequence[float] = (1.0,), *, baseline: str = "zero"
                       ) -> np.ndarray:
        """(K, T) log p(o_t) at the path points x' + alpha_k (x - x') (no gradients)."""
        import torch

        x = self.embeddings()
        x0 = self.baseline_embeddings(baseline)
        alphas = [float(a) for a in alphas]
        out = np.zeros((len(alphas), self.n_output))

        def run(items: list[int], _recompute: bool) -> None:
            emb = self._points(x, x0, [alphas[k] for k in items])
            out[items] = self._forward(emb).cpu().numpy().astype(np.float64)

        with self._frozen(), torch.no_grad():
            self._in_chunks(len(alphas), run, report=False)
        return out

    def path_gradients(
        self,
        alphas: Sequence[float],
        step_weights: Sequence[float],
        out_weights: np.ndarray,
        *,
        baseline: str = "zero",
        direction: str = "path",
        attention: bool = False,
    ) -> PathGradients:
        """See :meth:`_path_gradients`; gradients are on here whatever the caller's mode (an
        explain inside ``torch.no_grad()`` or ``inference_mode()`` was refused as a model
        whose forward "leaves the autograd graph"), and the caller's mode is left as it was."""
        import torch

        with torch.inference_mode(False), torch.enable_grad():
            return self._path_gradients(alphas, step_weights, out_weights, baseline=baseline,
                                        direction=direction, attention=attention)

    def _path_gradients(
        self,
        alphas: Sequence[float],
        step_weights: Sequence[float],
        out_weights: np.ndarray,
        *,
        baseline: str = "zero",
        direction: str = "path",
        attention: bool = False,
    ) -> PathGradients:
        """Gradients of f_r along the straight path from x' (``baseline``) to x, integrated.

        alphas, step_weights: (K,) quadrature points in [0, 1] and weights
        out_weights:          (R, T) output-token weights w of each f_r (ones(1, T): the
                              whole output; eye(T): each output token on its own)
        direction:            "path": dot gradients with (x - x'); "input": with x itself
                              (gradient x input)
        attention:            also integrate the gradient of f_r w.r.t. the last layer's
                              attention map (eager attention)
        One sequence per (k, r) pair, in chunks of ``max_batch_tokens`` tokens.
        """
        import torch

        w_out = np.asarray(out_weights, dtype=np.float32)
        if w_out.ndim != 2 or w_out.shape[1] != self.n_output:
            raise InputError(
                f"out_weights must have shape (R, {self.n_output}); got {w_out.shape}."
            )
        alphas = [float(a) for a in alphas]
        step_w = [float(w) for w in step_weights]
        if len(alphas) != len(step_w) or not alphas:
            raise InputError("alphas and step_weights must be non-empty and of equal length.")
        n_r = w_out.shape[0]
        x = self.embeddings()
        x0 = self.baseline_embeddings(baseline)
        d_path = (x - x0)[: self.n_prompt].float()
        d_dot = d_path if direction == "path" else x[: self.n_prompt].float()
        directional = torch.zeros(n_r, self.n_prompt, dtype=torch.float32, device=x.device)
        att_acc = (torch.zeros(n_r, self.n_output, self.seq_len, dtype=torch.float32,
                               device=x.device) if attention else None)
        wt = torch.as_tensor(w_out, device=x.device)
        pairs = [(k, r) for k in range(len(alphas)) for r in range(n_r)]
        rows_t = torch.as_tensor(self.output_rows, device=x.device)
        captured: dict[str, Any] = {}
        hook = None
        if attention:
            self._require_attention()
        from_outputs = attention and not self.model.hooks_attention
        if attention and not from_outputs:
            last = self.model.attention_module(self._layers()[-1])
            hook = last.register_forward_hook(
                lambda _m, _a, out: captured.__setitem__("attn", out[1]))

        def run(items: list[int], recompute: bool) -> None:
            captured.clear()
            ks = [pairs[i][0] for i in items]
            rs = torch.as_tensor([pairs[i][1] for i in items], device=x.device)
            emb = self._points(x, x0, [alphas[k] for k in ks]).detach()
            emb.requires_grad_(True)
            with self._recompute_layers(recompute, keep_last=attention):
                logp = (self._forward(emb, captured) if from_outputs
                        else self._forward(emb))  # (B, T)
            f = (logp * wt[rs]).sum()
            if not f.requires_grad:
                raise self._no_gradient("its forward leaves the autograd graph")
            targets = [emb]
            if attention:
                amap = captured.pop("attn", None)
                if amap is None:
                    raise CapabilityError(
                        "The model's last attention layer returned no differentiable "
                        "attention map; attention methods need eager attention."
                    )
                if not amap.requires_grad:
                    raise self._no_gradient("its last attention map does not depend on the "
                                            "input (the forward leaves the autograd graph)")
                targets.append(amap)
            with warnings.catch_warnings(record=True) as seen:
                warnings.simplefilter("always")
                grads = torch.autograd.grad(f, targets, allow_unused=True)
            for w in seen:
                if NO_AUTOGRAD_KERNEL in str(w.message):
                    raise self._no_gradient(
                        f"the operator {str(w.message).split(': ')[0]} on the way has no "
                        f"backward (autograd) kernel, so torch cannot give its gradient (it "
                        f"reads zero through bitsandbytes' 4-bit layers on the CPU)")
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
            if grads[0] is None:
                raise self._no_gradient("its forward leaves the autograd graph")
            if attention and grads[1] is None:
                raise CapabilityError(
                    f"The attention weights that {type(self.model.model).__name__} "
                    f"returns are not the ones its forward uses (no gradient "
                    f"reaches them); use an attention method without gradients "
                    f"(attention, attention_rollout) or another method."
                )
            self.counters["backward_passes"] += 1
            self.counters["checkpointed_chunks"] += int(recompute)
            sw = torch.as_tensor([step_w[k] for k in ks], device=x.device,
                                 dtype=torch.float32)
            g = grads[0][:, : self.n_prompt].float()  # (B, L, d)
            # positions before the last prompt token reach the output through attention only
            reached[0] |= g[:, : self.n_prompt - 1].ne(0).any()  # (read once, at the end)
            contrib = (g * d_dot[None]).sum(-1) * sw[:, None]  # (B, L)
            # accumulated only now: a chunk that ran out of memory above added nothing
            directional.index_add_(0, rs, contrib)
            if attention and att_acc is not None:
                ga = grads[1].float().mean(1)[:, rows_t]  # (B, T, S)
                att_acc.index_add_(0, rs, ga * sw[:, None, None])

        # whether a non-zero gradient reached an earlier prompt embedding (a device flag)
        reached = [torch.zeros((), dtype=torch.bool, device=x.device)]
        try:
            with self._frozen(eager=attention):
                self._in_chunks(len(pairs), run, eager=attention, what="backward")
        finally:
            if hook is not None:
                hook.remove()
        if self.n_prompt > 1 and not bool(reached[0]):
            raise self._no_gradient(
                "every gradient with respect to the embeddings of the prompt's tokens before "
                "its last was exactly zero (nothing before it reaches the output)")
        return PathGradients(
            directional=directional.cpu().numpy().astype(np.float64),
            attention=None if att_acc is None else att_acc.cpu().numpy().astype(np.float64),
        )

    def _no_gradient(self, why: str) -> CapabilityError:
        """The one-line refusal of gradient methods on a model whose gradients do not reach
        the prompt's embeddings (``why``: what was seen)."""
        return CapabilityError(
            f"Gradient methods cannot explain the model {self.model.info.id} "
            f"({type(self.model.model).__name__}): no trustworthy gradient of the output's "
            f"log-probability reaches its prompt; {why}. Use a perturbation method (loo, "
            f"lime, kernel_shap, spex), or load the model without that quantization or kernel."
        )

    def attention_maps(self) -> np.ndarray:
        """(n_layers, S, S) float32 attention of every layer at the input, averaged over
        heads (query rows, key columns); one forward with eager attention. Read by hooks on
        the attention modules of models on transformers' attention interface (one layer's
        heads at a time), from the model's ``output_attentions`` otherwise (Bloom, Falcon,
        MPT, models with their own code: every layer's heads at once)."""

        from ..models.base import out_of_memory_attempt

        self._require_attention()
        maps, err = out_of_memory_attempt(self._attention_maps)
        if err is None:
            return maps
        self.counters["oom_retries"] += 1  # (one sequence: nothing to halve)
        raise CapabilityError(
            f"The attention-map pass over the {self.seq_len} tokens of the prompt with the "
            f"output does not fit in the device's memory ({err}); use a shorter prompt or "
            f"output, a smaller model or dtype, another device, or a method without attention "
            f"maps (loo, ig, ...)."
        )

    def _attention_maps(self) -> np.ndarray:
        import torch

        if not self.model.hooks_attention:  # the model's own output_attentions
            with self._frozen(eager=True), torch.no_grad():
                out = self._decode(self.embeddings()[None], attentions=True)
            maps = np.stack([a[0].float().mean(0).cpu().numpy() for a in out.attentions])
            causal = np.abs(np.triu(maps, 1)).max() <= 1e-4
            if not (causal and np.allclose(maps.sum(-1), 1.0, atol=1e-2)):
                raise CapabilityError(
                    f"The attention weights that {type(self.model.model).__name__} returns "
                    f"(output_attentions) are not causal probabilities over the keys, so "
                    f"attention methods cannot read them; use another method."
                )
            return maps
        layers = self._layers()
        maps: list[np.ndarray | None] = [None] * len(layers)

        def grab(i: int) -> Callable[..., None]:
            def hook(_m: Any, _a: Any, out: Any) -> None:
                if out[1] is None:
                    raise CapabilityError(
                        "The model's attention returned no weights; attention methods need "
                        "eager attention."
                    )
                maps[i] = out[1][0].float().mean(0).cpu().numpy()
            return hook

        hooks = [self.model.attention_module(layer).register_forward_hook(grab(i))
                 for i, layer in enumerate(layers)]
        try:
            with self._frozen(eager=True), torch.no_grad():
                self._forward(self.embeddings()[None])
        finally:
            for h in hooks:
                h.remove()
        return np.stack([m for m in maps if m is not None])
