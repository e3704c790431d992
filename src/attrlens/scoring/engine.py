"""ScoringEngine: batched teacher-forced scoring of a fixed output under many masked prompts.

For each perturbed prompt x(z) the engine computes, in one teacher-forced pass over the whole
output o, the model's next-token distributions at the T positions that predict o_1..o_T, and
hands them to a reducer (a target) in row chunks, so full-vocabulary tensors never pile up.

Prefix reuse: the tokens before a mask's first removed (or replaced) token are identical to the
unmasked prompt, at the same positions, so their key/value cache is the unmasked prompt's
(one :class:`~attrlens.scoring.cache.PrefixCache`, shared with GiLOT's beam runner). Each
perturbed prompt becomes one *segment*: its tokens from its own first change (its cut) plus
the output. Segments are packed back to back into rows (best-fit decreasing; the row length
is planned from a cost model of the forward's fixed cost, padding and attention), and one 4-D
attention mask keeps every segment causal and to itself and lets it read the shared prefix up
to its own cut, through a read-only broadcast view (no per-row copy, nothing kept after a
layer). When the prefix is not cached yet, the first forward computes it in passing: row 0
starts with the unmasked prompt (and scores the unmasked input, if one is asked for), and the
other rows of that forward read its keys in the same layer. So a small job is one forward, with
no separate prompt pass and almost no padding. Only the hidden states that predict the output
reach the LM head. On an out-of-memory error the forward is halved and retried
(``counters["oom_retries"]``).

A perturbed input may carry an ``attention`` vector (0 = no query attends to that token's
key): the ``attention_off`` masker uses it for a masked last prompt token, whose hidden state
(id 0, attention 0) still predicts the first output token, as in GiLOT's reference.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import CapabilityError
from ..models.base import out_of_memory_attempt
from ..text.mask import PerturbedInput
from .cache import PrefixCache

Reducer = Callable[[Any, Any], np.ndarray]  # (logprobs (b,T,V) torch, out_ids (T,)) -> (b, ...)


class ScoringEngine:
    """Scores a fixed output under perturbed prompts.

    model:            an HFModel backend
    prompt_ids:       (L,) token ids of the unmasked prompt
    output_ids:       (T,) token ids of the explained output (T >= 1)
    prefix_reuse:     share the unmasked prompt's key/value cache before the first change
    max_batch_tokens: key columns per forward: rows x (shared-prefix columns + row length),
                      padding included (bounds the activations and keys per layer)
    max_batch_size:   perturbed prompts per forward
    max_logit_rows:   rows x T of vocabulary-sized log-probs materialised at once (reducers
                      other than ``gather_logprobs``, which never materialises them)
    pack_tokens:      a candidate packed-row length (default 128; the planner also tries
                      1-4 times the widest segment)
    forward_cost_tokens: the fixed cost of one forward in tokens (framework overhead, weight
                      reads), traded against padding and attention when rows are planned
                      (None: 64 on CPU, 2048 on accelerators)
    attention_cost:   the cost of one attended key per query, relative to one token's
                      non-attention compute (the planner's model; 1e-3 measured on CPU)
    prefix:           the prompt's key/value cache to share (default: a new one)
    """

    def __init__(
        self,
        model: Any,
        prompt_ids: Sequence[int],
        output_ids: Sequence[int],
        *,
        prefix_reuse: bool = True,
        max_batch_tokens: int = 4096,
        max_batch_size: int = 256,
        max_logit_rows: int = 32,
        pack_tokens: int | None = None,
        forward_cost_tokens: int | None = None,
        attention_cost: float = 1e-3,
        prefix: PrefixCache | None = None,
    ):
        self.model = model
        self.prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        self.output_ids = np.asarray(output_ids, dtype=np.int64)
        if self.output_ids.size == 0:
            raise ValueError("ScoringEngine needs at least one output token.")
        if self.prompt_ids.size == 0:
            raise ValueError("ScoringEngine needs at least one prompt token.")
        self.prefix_reuse = prefix_reuse
        #: called as (inputs scored, inputs) after each forward of :meth:`run` (progress)
        self.on_progress: Callable[[int, int], None] | None = None
        self.max_batch_tokens = max_batch_tokens
        self.configured_batch_tokens = max_batch_tokens  # (max_batch_tokens drops after OOM)
        self.max_batch_size = max_batch_size
        self.max_logit_rows = max_logit_rows
        self.pack_tokens = 128 if pack_tokens is None else int(pack_tokens)
        on_cpu = str(getattr(model, "device", "cpu")) == "cpu"
        if forward_cost_tokens is None:  # measured: ~40-60 ms of framework and weight reads
            forward_cost_tokens = 64 if on_cpu else 2048
        self.forward_cost_tokens = int(forward_cost_tokens)
        self.attention_cost = float(attention_cost)
        self.counters: dict[str, float] = {
            "model_forwards": 0,
            "tokens_processed": 0,
            "padded_tokens": 0,
            "rows_scored": 0,
            "oom_retries": 0,
            "wall_s": 0.0,
            "decoder_s": 0.0,  # of wall_s: in the decoder forwards
            "head_s": 0.0,  # of wall_s: in the LM head and the reducer
        }
        if prefix is not None and not prefix.matches(model, self.prompt_ids):
            raise ValueError("The shared prefix cache belongs to another model or prompt.")
        self.prefix = prefix if prefix is not None else PrefixCache(model, self.prompt_ids)

    @property
    def n_prompt(self) -> int:
        return int(self.prompt_ids.shape[0])

    @property
    def n_output(self) -> int:
        return int(self.output_ids.shape[0])

    # ---- internals ---------------------------------------------------------------------
    def _is_unmasked(self, inp: PerturbedInput) -> bool:
        L = self.n_prompt
        return (
            inp.first_change >= L
            and len(inp.ids) == L
            and inp.attention is None
            and inp.output_start in (None, L)
            and np.array_equal(inp.ids, self.prompt_ids)
            and np.array_equal(inp.positions, np.arange(L))
        )

    def _pack(self, keys: list[int], width: dict[int, int], cut: dict[int, int],
              cap: int) -> list[list[list[int]]]:
        """Segments into rows, rows into forwards.

        Rows: best-fit decreasing (widest first, each into the open row it fills best) into
        rows of ``cap`` tokens (``cap`` 0: one segment per row), at most ``max_batch_size``
        segments each, every row open to every later segment. Forwards: consecutive rows,
        at most ``max_batch_size`` segments and ``max_batch_tokens`` key columns each, i.e.
        rows x (shared-prefix columns + longest row), since every row's keys and values span
        the prefix too: a forward holds no more per layer than a from-scratch forward of
        ``max_batch_tokens`` tokens. Returns forwards, each a list of rows of segment keys
        (at least one row)."""
        rows: list[list[int]] = []
        fill: list[int] = []
        room: list[tuple[int, int]] = []  # (free tokens, row) of rows that take more, sorted
        for g in keys:
            w = width[g]
            i = bisect.bisect_left(room, (w, -1))  # the row it fills best
            if i < len(room):
                r = room.pop(i)[1]
            else:
                rows.append([])
                fill.append(0)
                r = len(rows) - 1
            rows[r].append(g)
            fill[r] += w
            if fill[r] < cap and len(rows[r]) < self.max_batch_size:
                bisect.insort(room, (cap - fill[r], r))
        out: list[list[list[int]]] = []
        count = prefix = longest = 0
        for row, f in zip(rows, fill):
            p = max([0] + [cut[g] for g in row if g != -1])
            if not out or count + len(row) > self.max_batch_size or (
                    (len(out[-1]) + 1) * (max(prefix, p) + max(longest, f))
                    > self.max_batch_tokens):
                out.append([])
                count = prefix = longest = 0
            out[-1].append(row)
            count += len(row)
            prefix, longest = max(prefix, p), max(longest, f)
        return out

    def _cost(self, fw: list[list[list[int]]], width: dict[int, int],
              cut: dict[int, int]) -> float:
        """Modelled cost (in tokens) of packed forwards: per forward ``forward_cost_tokens``
        + rows x length x (1 + ``attention_cost`` x keys per query), where the keys are the
        shared prefix columns plus the row length (every query scores every key of its
        row, masked or not)."""
        cost = 0.0
        for rows in fw:
            P = max([cut[g] for r in rows for g in r if g != -1] or [0])
            S = max(sum(width[g] for g in r) for r in rows)
            cost += self.forward_cost_tokens + len(rows) * S * (1 + self.attention_cost * (P + S))
        return cost

    def _plan(self, keys: list[int], width: dict[int, int],
              cut: dict[int, int]) -> list[list[list[int]]]:
        """Forwards of packed rows: all segments packed together, with the row length that
        :meth:`_cost` models cheapest among a few (the widest segment up to 4 times it,
        ``pack_tokens``, or one segment per row): longer rows waste less padding but attend
        to more keys; one segment per row is cheapest on long prompts, where the key-column
        budget leaves about one row per forward and each forward then reads only the prefix
        columns its own segment needs. (Packing each width class into forwards of its own
        was measured slower on short prompts: the smaller forwards lose more to padding and
        matrix efficiency than attention saves.)"""
        widest = max(width[g] for g in keys)
        limit = max(widest, self.max_batch_tokens)
        cands = {min(limit, max(widest, c)) for c in
                 (widest, widest * 3 // 2, widest * 2, widest * 3, widest * 4, self.pack_tokens)}
        cands.add(0)  # one segment per row: no row reads prefix columns it does not need
        plans = [self._pack(keys, width, cut, cap) for cap in sorted(cands)]
        return min(plans, key=lambda fw: self._cost(fw, width, cut))

    def run(self, inputs: Sequence[PerturbedInput], reducer: Reducer) -> list[np.ndarray]:
        """Apply ``reducer`` to the output log-probs of every perturbed input, in order.

        Each input is one *segment*: its tokens from its own first change (its cut c_i, never
        the token that predicts o_1) followed by the output. Segments are packed without
        padding into rows (widest first, each forward's rows as long as its widest segment
        or ``pack_tokens``); a 4-D attention mask keeps every segment causal and to itself,
        and lets it read the unmasked prompt's keys/values at positions < c_i (the shared
        prefix, a broadcast view: no per-row copy). A forward of one sequence needs no mask
        under the model's packed attention (:meth:`HFModel.packed_attention`). When the
        prefix is not cached yet, the first forward computes it: row 0 begins with the
        unmasked prompt (and scores the unmasked input, if there is one), and the other rows
        read its keys in the same forward. On an out-of-memory error the forward is halved and retried
        (``counters["oom_retries"]``); one segment that does not fit raises
        :class:`~attrlens.errors.CapabilityError`."""

        t0 = time.perf_counter()
        n = len(inputs)
        results: list[np.ndarray | None] = [None] * n
        if n == 0:
            return []
        L, T = self.n_prompt, self.n_output
        # a model that ignores position_ids (ALiBi) or refuses 4-D masks: each perturbed
        # prompt in a row of its own, right-padded, no shared prefix (plain forwards)
        positions, masks = getattr(self.model, "packing", (True, True))
        # (and a sequence longer than a chunk of chunked attention, or a model whose attention
        # holds only under transformers' masks and caches: HFModel.shares_prefix)
        shares = getattr(self.model, "shares_prefix", lambda n: True)
        plain = not (positions and masks and shares(L + T))
        reuse = self.prefix_reuse and not plain and getattr(self.model, "keeps_cache", True)
        capture = reuse and not self.prefix.ready and self.prefix.can_capture
        if reuse and not capture:
            self.prefix.layers(self.counters)  # legacy caches: a separate prefix pass
        # segment -1 (capture): the unmasked prompt, plus the output when an input is unmasked
        twins = [i for i in range(n) if capture and self._is_unmasked(inputs[i])]
        cut = {
            i: max(0, min(inputs[i].first_change, len(inputs[i].ids) - 1, L - 1))
            if reuse else 0
            for i in range(n) if i not in twins
        }
        width = {i: len(inputs[i].ids) - cut[i] + T for i in cut}
        keys = sorted(cut, key=lambda i: (-width[i], cut[i], i))
        if capture:
            cut[-1] = 0
            width[-1] = L + T if twins else L
            keys.insert(0, -1)
        # a recurrent layer reads a row's attention holes (attention_off) in a batch other
        # than alone (transformers 4.x's Mamba-2 mixers zero the masked tokens only when a
        # forward has several rows: 2.4 nats apart): such rows run one per forward, as the
        # model runs one prompt
        alone = plain and getattr(self.model, "stateful", False) and any(
            x.attention is not None and not np.all(x.attention) for x in inputs)
        # (and layers that compress keys by tensor column read a padded row's pads)
        alone = alone or (plain and getattr(self.model, "unpadded_rows", False))
        queue = deque([[[g]] for g in keys] if alone else
                      self._pack(keys, width, cut, 0) if plain else self._plan(keys, width, cut))
        while queue:
            rows = queue.popleft()
            segs = [g for r in rows for g in r]
            _, err = out_of_memory_attempt(self._run_forward, rows, inputs, cut, width, twins,
                                           reducer, results, plain=plain, positions=positions)
            if err is None:
                if self.on_progress is not None:
                    self.on_progress(sum(r is not None for r in results), n)
                continue
            if len(segs) == 1:
                raise CapabilityError(
                    f"One perturbed prompt ({width[segs[0]]} tokens with the output) does not "
                    f"fit in the device's memory ({err}); use a shorter prompt or output, a "
                    "smaller model or dtype, or another device."
                )
            self.counters["oom_retries"] = self.counters.get("oom_retries", 0) + 1
            half = len(segs) // 2
            # this forward in two halves; it and the forwards after it (and later runs) at
            # most half its segments and key columns
            prefix = max([cut[g] for g in segs if g != -1] or [0])
            cap = max(sum(width[g] for g in r) for r in rows)
            self.max_batch_size = max(1, min(self.max_batch_size, half))
            self.max_batch_tokens = max(1, min(self.max_batch_tokens,
                                               len(rows) * (prefix + cap)) // 2)
            segs.sort(key=lambda g: (-width[g], cut[g], g))  # the prompt (-1) first
            later = [(sorted((g for r in fw for g in r), key=lambda g: (-width[g], cut[g], g)),
                      max(sum(width[g] for g in r) for r in fw)) for fw in queue]
            queue = deque(fw for part, c in [(segs[:half], cap), (segs[half:], cap), *later]
                          for fw in self._pack(part, width, cut, c))
        self.counters["wall_s"] += time.perf_counter() - t0
        return results  # type: ignore[return-value]

    def _run_forward(
        self,
        rows: list[list[int]],
        inputs: Sequence[PerturbedInput],
        cut: dict[int, int],
        width: dict[int, int],
        twins: list[int],
        reducer: Reducer,
        results: list[np.ndarray | None],
        *,
        plain: bool = False,
        positions: bool = True,
    ) -> None:
        """One forward over packed rows of segments (input rows; -1 = the unmasked prompt,
        first in row 0, whose keys become the shared prefix), reduced. ``plain``: one
        segment per row from column 0 under a 2-D padding mask (and ``position_ids`` only
        where the model reads them)."""
        import torch

        L, T = self.n_prompt, self.n_output
        dev = self.model.device
        segs = [g for r in rows for g in r]
        capture = rows[0][0] == -1 and not self.prefix.ready
        B = len(rows)
        S = max(sum(width[g] for g in r) for r in rows)
        P = max([cut[g] for g in segs if g != -1] or [0])  # shared prefix columns
        ids_t = np.zeros((B, S), dtype=np.int64)
        pos_t = np.zeros((B, S), dtype=np.int64)
        seg_t = np.full((B, S), -1, dtype=np.int64)  # segment number per column
        idx_t = np.zeros((B, S), dtype=np.int64)  # index within the segment's sequence
        cut_t = np.zeros((B, S), dtype=np.int64)  # prefix columns visible to each query
        key_ok = np.ones((B, S), dtype=bool)
        scored: list[tuple[int, int, int]] = []  # (segment, row, column of its predictor)
        last_pos = max(self.model.context_length - 1, L + T - 1)
        for r, row in enumerate(rows):
            o = 0
            for g in row:
                k = width[g]
                if g == -1:
                    ids = np.concatenate([self.prompt_ids, self.output_ids])[:k]
                    pos = np.arange(k)
                    c = 0
                else:
                    inp, c = inputs[g], cut[g]
                    start = L if inp.output_start is None else inp.output_start
                    ids = np.concatenate([inp.ids[c:], self.output_ids])
                    pos = np.concatenate([inp.positions[c:], np.arange(start, start + T)])
                    if inp.attention is not None:  # keys no query may read (attention_off)
                        key_ok[r, o : o + k - T] = np.asarray(inp.attention[c:], dtype=bool)
                ids_t[r, o : o + k] = ids
                pos_t[r, o : o + k] = pos
                seg_t[r, o : o + k] = r * S + o  # a segment's id: its first column
                idx_t[r, o : o + k] = c + np.arange(k)
                cut_t[r, o : o + k] = c
                if g != -1 or k > L:
                    scored.append((g, r, o + k - T - 1))
                o += k
            # padding: each pad column reads only itself (never read by real tokens)
            pads = np.arange(o, S)
            seg_t[r, pads] = -(r * S + pads) - 1
            # (rows are never empty; a learned position table ends at the context)
            pos_t[r, pads] = np.minimum(pos_t[r, o - 1] + 1 + np.arange(S - o), last_pos)
            idx_t[r, pads] = idx_t[r, o - 1] + 1 + np.arange(S - o)
        window, mixed = self.model.sliding_window
        if plain:  # right-padded rows: padding and switched-off keys hidden, causal inside
            mask = torch.as_tensor((seg_t >= 0) & key_ok, dtype=torch.long, device=dev)
        elif (B == 1 and len(segs) == 1 and key_ok.all() and self.model.packs_attention
                and (window is None or int(idx_t.max()) < window)):
            # one sequence: every query reads the prefix up to its cut (= P) and its own
            # sequence causally, which the packed attention does without a mask
            mask = None
        else:
            mask = _additive(self._mask(seg_t, idx_t, cut_t, key_ok, P, window, mixed), dev,
                             self.model.dtype, self.model.attention_kind)
        kwargs: dict[str, Any] = {}
        if positions:
            kwargs["position_ids"] = torch.as_tensor(pos_t, device=dev)
        sink: dict[str, Any] = {}
        if capture:
            kwargs[self.model.cache_kwarg] = self.prefix.capture(P, sink)
        elif P > 0:
            kwargs[self.model.cache_kwarg] = self.prefix.attend(B, P, self.counters)
        t_dec = time.perf_counter()
        with self.model.inference():
            # (plain rows carry a 2-D mask for transformers to make: not our attention)
            with contextlib.nullcontext() if plain else self.model.packed_attention():
                hidden = self.model.decoder(
                    input_ids=torch.as_tensor(ids_t, device=dev),
                    attention_mask=mask,
                    **({"use_cache": True} if self.model.cache_kwarg in kwargs
                       else self.model.no_cache),
                    **kwargs,
                ).last_hidden_state
            kwargs.clear()
            del mask
            _sync(hidden)
            t_head = time.perf_counter()
            self.counters["decoder_s"] += t_head - t_dec
            if capture:
                self.prefix.set_captured(sink, hidden[0, L - 1])
            if scored:  # (a forward of the prompt alone only fills the prefix cache)
                hdev = hidden.device
                flat = hidden.reshape(B * S, -1)
                base = torch.as_tensor([r * S + c for _g, r, c in scored], dtype=torch.long,
                                       device=hdev)
                h = flat[base[:, None] + torch.arange(T, device=hdev)[None, :]]  # (n, T, H)
                del hidden, flat
                out_ids_t = torch.as_tensor(self.output_ids, device=h.device)
                if reducer is gather_logprobs:  # log p(o_t) without vocabulary-sized tensors
                    parts = [self.model.output_token_logprobs(h, out_ids_t).double().cpu().numpy()]
                    chunk = len(scored)
                else:
                    chunk = max(1, self.max_logit_rows // T)
                    parts = (
                        reducer(torch.log_softmax(self.model.output_logits(h[c0 : c0 + chunk]), -1),
                                out_ids_t)
                        for c0 in range(0, len(scored), chunk)
                    )
                for c0, vals in zip(range(0, len(scored), chunk), parts):
                    for r, v in enumerate(vals):
                        g = scored[c0 + r][0]
                        for i in twins if g == -1 else [g]:
                            results[i] = v
        self.counters["head_s"] += time.perf_counter() - t_head
        real = sum(width[g] for g in segs)
        self.counters["model_forwards"] += 1
        self.counters["tokens_processed"] += int(real)
        self.counters["padded_tokens"] += int(B * S - real)
        self.counters["rows_scored"] += sum(len(twins) if g == -1 else 1 for g, _r, _c in scored)

    def _mask(self, seg_t: np.ndarray, idx_t: np.ndarray, cut_t: np.ndarray,
              key_ok: np.ndarray, P: int, window: int | None, mixed: bool) -> Any:
        """(B, 1, S, P + S) bool: query q reads prefix column p < its segment's cut, and the
        keys of its own segment up to itself (not those switched off). Sliding-window layers
        also drop keys a window or more behind (by index in the query's own sequence): a
        model with both kinds of layers gets one mask per kind."""
        own = (seg_t[:, :, None] == seg_t[:, None, :]) & (
            idx_t[:, None, :] <= idx_t[:, :, None]
        )
        own &= key_ok[:, None, :]
        cols = np.arange(P)[None, None, :]
        pre = cols < cut_t[:, :, None]
        full = np.concatenate([pre, own], axis=2)[:, None]
        if window is None or int(idx_t.max()) < window:
            return full
        near = np.concatenate(
            [pre & (idx_t[:, :, None] - cols < window),
             own & (idx_t[:, :, None] - idx_t[:, None, :] < window)], axis=2)[:, None]
        return {"full_attention": full, "sliding_attention": near} if mixed else near

    # ---- convenience -------------------------------------------------------------------
    def token_logprobs(self, inputs: Sequence[PerturbedInput]) -> np.ndarray:
        """(n, T) log p(o_t | x(z), o_<t) for each perturbed input."""
        return np.stack(self.run(inputs, gather_logprobs))

    def topk_distributions(
        self, inputs: Sequence[PerturbedInput], k: int = 100
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k next-token log-probs and their token ids, each (n, T, k)."""

        def red(lp, _out):
            v, i = lp.topk(k, dim=-1)
            return [np.stack([a, b.astype(np.float32)]) for a, b in zip(v.cpu().numpy(), i.cpu().numpy())]

        res = np.stack(self.run(inputs, red))
        return res[:, 0], res[:, 1].astype(np.int64)


def _sync(t: Any) -> None:
    """Wait for the tensor's device (so the decoder/head split of the wall time is real)."""
    import torch

    if t.device.type == "cuda":
        torch.cuda.synchronize(t.device)


def _additive(mask: Any, dev: Any, dtype: Any, kind: str = "sdpa") -> Any:
    """The boolean mask(s) as additive masks of the model's dtype on its device, made once
    per forward (a boolean mask is converted by SDPA in every layer: measured 1.4-1.5x
    slower attention on CPU). 0 where a key is read; where not, -inf for SDPA, which then
    gives a query that reads no key (``attention_off`` masking every key before it) a zero
    output, exactly as with a boolean mask and as in a plain forward, whatever else its row
    holds; the dtype's minimum for eager attention, which adds the mask to its scores and
    would turn such a query into NaN."""
    import torch

    if isinstance(mask, dict):
        return {k: _additive(v, dev, dtype, kind) for k, v in mask.items()}
    fill = -float("inf") if kind == "sdpa" else torch.finfo(dtype).min
    out = torch.zeros(mask.shape, dtype=dtype, device=dev)
    return out.masked_fill_(torch.from_numpy(~mask).to(dev), fill)


def gather_logprobs(logprobs: Any, out_ids: Any) -> np.ndarray:
    """Reducer: log p(o_t) at each output position, (b, T)."""
    idx = out_ids.to(logprobs.device)[None, :, None].expand(logprobs.shape[0], -1, 1)
    return logprobs.gather(-1, idx)[..., 0].double().cpu().numpy()


def unmasked_input(prompt_ids: Sequence[int]) -> PerturbedInput:
    ids = np.asarray(prompt_ids, dtype=np.int64)
    return PerturbedInput(ids, np.arange(len(ids)), len(ids))
