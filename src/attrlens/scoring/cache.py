"""The prefix key/value cache of one unmasked prompt, shared by every model-side runner.

Tokens before a perturbed prompt's first change are the unmasked prompt's, at the same
positions, so their keys and values are the unmasked prompt's. :class:`PrefixCache` runs the
unmasked prompt once (lazily, on first use) and hands out the first ``p`` positions of its
cache, expanded to a batch, as a fresh ``transformers.DynamicCache`` (:meth:`PrefixCache.expand`,
for runners that grow the cache, e.g. beam search) or as a read-only view
(:meth:`PrefixCache.attend`, for one forward that only appends: every layer attends to the
shared prefix through a broadcast view, and the batch's own keys are not kept after the
layer has used them, so no per-row copy of the prefix outlives one layer). Instead of its own
pass, the prompt can also be computed in passing by another forward whose row 0 starts with
it (:meth:`PrefixCache.capture`: the scoring engine's first forward). The teacher-forced
scoring engine (:mod:`.engine`) and GiLOT's beam runner (:mod:`.beams`) both use it; one
instance can serve both when they explain the same prompt.

A forward of its own that fills the cache is counted once, in the counters of the caller that
triggered it (a dict with ``model_forwards`` and ``tokens_processed``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


class PrefixCache:
    """Key/value cache and last hidden state of the unmasked prompt.

    model:      an HFModel backend (``decoder``, ``device``)
    prompt_ids: (L,) token ids of the unmasked prompt (L >= 1)
    """

    def __init__(self, model: Any, prompt_ids: Sequence[int] | np.ndarray):
        self.model = model
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        if self.prompt_ids.ndim != 1 or self.prompt_ids.size == 0:
            raise ValueError("PrefixCache needs a non-empty 1-D prompt.")
        self._layers: list[tuple[Any, Any]] | None = None
        self._last_hidden: Any = None

    @property
    def n_prompt(self) -> int:
        return int(self.prompt_ids.shape[0])

    @property
    def ready(self) -> bool:
        """Whether the prompt has been run already (a later use costs no forward)."""
        return self._layers is not None

    @property
    def can_capture(self) -> bool:
        """Whether another forward can compute this prefix in passing (:meth:`capture`)."""
        return _prefix_layer_class() is not None

    def matches(self, model: Any, prompt_ids: Sequence[int] | np.ndarray) -> bool:
        """Whether this cache is the one of ``model`` on ``prompt_ids``."""
        ids = np.asarray(prompt_ids, dtype=np.int64)
        return model is self.model and np.array_equal(ids, self.prompt_ids)

    def _fill(self, counters: dict[str, float] | None) -> None:
        import torch

        dev = self.model.device
        L = self.n_prompt
        ids = torch.as_tensor(self.prompt_ids[None, :], device=dev)
        # capture every layer's keys as they are made: a cache of the model's own keeps only
        # the last window of a sliding layer (Gemma-2, gpt-oss), not positions 0..L-1
        sink: dict[str, Any] = {}
        given = {self.model.cache_kwarg: self.capture(0, sink)} if self.can_capture else {}
        with self.model.inference():
            out = self.model.decoder(
                input_ids=ids,
                attention_mask=torch.ones((1, L), dtype=torch.long, device=dev),
                position_ids=torch.arange(L, device=dev)[None, :],
                use_cache=True,
                **given,
            )
        if given:
            self.set_captured(sink, out.last_hidden_state[0, -1])
        else:  # older transformers: a legacy tuple cache
            self._layers = [(k, v) for k, v in self.model.output_cache(out)]
            self._last_hidden = out.last_hidden_state[0, -1]
        if counters is not None:
            counters["model_forwards"] = counters.get("model_forwards", 0) + 1
            counters["tokens_processed"] = counters.get("tokens_processed", 0) + L

    def layers(self, counters: dict[str, float] | None = None) -> list[tuple[Any, Any]]:
        """Key/value tensors (1, heads, L, d) per layer (the prompt runs on first use)."""
        if self._layers is None:
            self._fill(counters)
        return self._layers or []

    def last_hidden(self, counters: dict[str, float] | None = None) -> Any:
        """(H,) final hidden state of the last prompt token (predicts the first new token)."""
        self.layers(counters)
        return self._last_hidden

    def expand(
        self,
        batch: int,
        p: int,
        counters: dict[str, float] | None = None,
        *,
        copy: bool = True,
    ) -> Any:
        """A DynamicCache holding the first ``p`` positions (1 <= p <= L) for ``batch`` rows.

        copy: contiguous copies, so a runner may reorder them in place (beam search); False
        gives broadcast views (enough for one forward that only appends)."""
        if not 1 <= p <= self.n_prompt:
            raise ValueError(f"A prefix of {p} tokens does not fit a prompt of {self.n_prompt}.")
        cache = new_dynamic_cache(self.model)
        shared = _shared_kv_layers(cache)
        for li, (k_, v_) in enumerate(self.layers(counters)):
            if li in shared:  # reads another layer's keys (Gemma-3n): nothing of its own
                continue
            cache.update(
                _rows(k_[:, :, :p], batch, copy), _rows(v_[:, :, :p], batch, copy), li
            )
        return cache


    def attend(self, batch: int, p: int, counters: dict[str, float] | None = None) -> Any:
        """A read-only cache: each layer sees the first ``p`` prompt positions (broadcast to
        ``batch`` rows, never copied) followed by the forward's own keys, which it does not
        keep. For one forward per cache (teacher forcing); rows may hide prefix positions
        through the 2-D attention mask. Falls back to :meth:`expand` (views) on transformers
        versions without cache layers."""
        if not 1 <= p <= self.n_prompt:
            raise ValueError(f"A prefix of {p} tokens does not fit a prompt of {self.n_prompt}.")
        layers = self.layers(counters)
        layer_cls = _prefix_layer_class()
        if layer_cls is None:
            return self.expand(batch, p, counters, copy=False)
        from transformers import DynamicCache

        cache = DynamicCache()
        cache.layers = [layer_cls(k_[:, :, :p], v_[:, :, :p], p) for k_, v_ in layers]
        return cache

    def capture(self, p: int, sink: dict[str, Any]) -> Any:
        """A cache for one forward whose row 0 begins with this prompt at positions
        0..L-1: each layer copies that row's first L keys and values into ``sink["k"]`` and
        ``sink["v"]`` (one buffer each for all layers, allocated at the first layer, so
        nothing small is left between the forward's large transient tensors; keys and
        values may differ in width, as in multi-head latent attention, and a layer whose
        shapes differ from the first layer's gets its own copies) and hands every row the
        first ``p`` of them (a broadcast view) followed by the forward's own keys.
        :meth:`set_captured` then makes them this cache's, so the prompt costs no forward
        of its own."""
        if not 0 <= p <= self.n_prompt:
            raise ValueError(f"A prefix of {p} tokens does not fit a prompt of {self.n_prompt}.")
        layer_cls = _prefix_layer_class()
        if layer_cls is None:
            raise RuntimeError("This transformers version has no cache layers to capture into.")
        from transformers import DynamicCache

        n_layers = int(self.model.text_config.num_hidden_layers)
        sink["n_layers"] = n_layers
        cache = DynamicCache()
        cache.layers = [layer_cls(None, None, p, capture=(sink, i, self.n_prompt))
                        for i in range(n_layers)]
        return cache

    def set_captured(self, sink: dict[str, Any], last_hidden: Any) -> None:
        """Adopt the per-layer keys/values a :meth:`capture` forward collected."""
        own = sink.get("own", {})
        self._layers = [own.get(i) or (sink["k"][i], sink["v"][i])
                        for i in range(sink["k"].shape[0])]
        self._last_hidden = last_hidden.clone()


_LAYER_CLS: list[Any] = []


def _prefix_layer_class() -> Any:
    """The read-only prefix layer class (built once; None without ``DynamicLayer``)."""
    if _LAYER_CLS:
        return _LAYER_CLS[0]
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:  # older transformers: legacy caches
        _LAYER_CLS.append(None)
        return None

    class PrefixLayer(DynamicLayer):
        """Keys/values (1, heads, p, d) of a shared prefix for a batch of rows: ``update``
        returns prefix ++ new keys without storing them (the sequence length stays p).

        capture=(sink, layer, L): the prefix is not known yet; it is row 0's first L new
        keys (copied into ``sink["kv"][layer]``), of which the first p are prepended to
        every row."""

        def __init__(self, keys: Any, values: Any, p: int, capture: Any = None):
            super().__init__()
            self.keys, self.values = keys, values
            self.p = p
            self.capture = capture
            if keys is not None:
                self.device = keys.device
                self.dtype = keys.dtype
            self.is_initialized = keys is not None

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any):
            import torch

            keys, values = self.keys, self.values
            if self.capture is not None:
                sink, layer, n = self.capture
                kn, vn = key_states[:1, :, :n], value_states[:1, :, :n]
                if "k" not in sink:
                    sink["k"] = kn.new_empty((sink["n_layers"], *kn.shape))
                    sink["v"] = vn.new_empty((sink["n_layers"], *vn.shape))
                if sink["k"].shape[1:] == kn.shape and sink["v"].shape[1:] == vn.shape:
                    keys, values = sink["k"][layer], sink["v"][layer]
                    keys.copy_(kn)
                    values.copy_(vn)
                else:  # a layer of other widths or heads than the first
                    keys, values = kn.clone(), vn.clone()
                    sink.setdefault("own", {})[layer] = (keys, values)
            if self.p == 0:
                return key_states, value_states
            b = key_states.shape[0]
            k = torch.cat([keys[:, :, : self.p].expand(b, -1, -1, -1), key_states], dim=-2)
            v = torch.cat([values[:, :, : self.p].expand(b, -1, -1, -1), value_states], dim=-2)
            return k, v

        def get_seq_length(self) -> int:
            return self.p

    _LAYER_CLS.append(PrefixLayer)
    return PrefixLayer


def _shared_kv_layers(cache: Any) -> set[int]:
    """Indices of the cache's layers that store nothing (transformers' ``DummyLayer``: a
    layer that reads another layer's keys and values)."""
    try:
        from transformers.cache_utils import DummyLayer
    except ImportError:
        return set()
    return {i for i, lay in enumerate(getattr(cache, "layers", None) or [])
            if isinstance(lay, DummyLayer)}


def _rows(x: Any, batch: int, copy: bool) -> Any:
    x = x.expand(batch, -1, -1, -1)
    return x.contiguous() if copy else x


def new_dynamic_cache(model: Any) -> Any:
    """An empty ``DynamicCache`` for ``model``, with sliding-window layers where the model
    has them: transformers builds each layer's 2-D-mask attention mask for that layer's
    kind of cache, so a sliding layer behind a full-length cache gets a mask of the wrong
    width (models that mix full and sliding layers: Gemma-2, Qwen2 with
    ``max_window_layers``); and the layers its config names for a model in
    ``HFModel.own_masks_only`` (a sparse-attention indexer keeps its keys there)."""
    from transformers import DynamicCache

    if model.sliding_window[0] is None and not getattr(model, "own_masks_only", False):
        return DynamicCache()
    try:
        return DynamicCache(config=model.text_config)
    except TypeError:  # transformers without per-layer caches
        return DynamicCache()
