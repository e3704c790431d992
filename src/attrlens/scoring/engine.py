"""ScoringEngine: batched teacher-forced scoring of a fixed output under many masked prompts.

For each perturbed prompt x(z) the engine computes, in one teacher-forced pass over the whole
output o, the model's next-token distributions at the T positions that predict o_1..o_T, and
hands them to a reducer (a target) in row chunks, so full-vocabulary tensors never pile up.

Prefix reuse: the tokens before a mask's first removed (or replaced) token are identical to the
unmasked prompt, at the same positions, so their key/value cache is the unmasked prompt's
(one :class:`~attrlens.scoring.cache.PrefixCache`, shared with GiLOT's beam runner). It is
computed once and every row reuses it up to its *own* first change: a batch attends to the
prefix of its largest cut through a read-only broadcast view (no per-row copy, nothing kept
after a layer), each row hiding the positions at or after its own cut through the attention
mask, and only the suffixes are run. Rows are grouped by suffix width, so batches carry little
padding. Right padding needs no extra masking under causal attention; pads are excluded from
counts. On an out-of-memory error the batch is halved and retried (``counters["oom_retries"]``).

A perturbed input may carry an ``attention`` vector (0 = no query attends to that token's
key): the ``attention_off`` masker uses it for a masked last prompt token, whose hidden state
(id 0, attention 0) still predicts the first output token, as in GiLOT's reference.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import CapabilityError
from ..text.mask import PerturbedInput
from .cache import PrefixCache

Reducer = Callable[[Any, Any], np.ndarray]  # (logprobs (b,T,V) torch, out_ids (T,)) -> (b, ...)


class ScoringEngine:
    """Scores a fixed output under perturbed prompts.

    model:            an HFModel backend
    prompt_ids:       (L,) token ids of the unmasked prompt
    output_ids:       (T,) token ids of the explained output (T >= 1)
    prefix_reuse:     share the unmasked prompt's key/value cache before the first change
    max_batch_tokens: padded suffix tokens per forward
    max_batch_size:   rows per forward
    max_logit_rows:   rows x T of vocabulary-sized log-probs materialised at once
    forward_cost_tokens: the fixed cost of one forward in tokens (weights read, launches),
                      traded against padding when rows are cut into batches (None: 32 on
                      CPU, 2048 on accelerators)
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
        max_batch_size: int = 128,
        max_logit_rows: int = 256,
        forward_cost_tokens: int | None = None,
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
        self.max_batch_tokens = max_batch_tokens
        self.max_batch_size = max_batch_size
        self.max_logit_rows = max_logit_rows
        if forward_cost_tokens is None:  # measured on CPU (~50 tokens); GPUs batch wider
            forward_cost_tokens = 32 if str(getattr(model, "device", "cpu")) == "cpu" else 2048
        self.forward_cost_tokens = forward_cost_tokens
        self.counters: dict[str, float] = {
            "model_forwards": 0,
            "tokens_processed": 0,
            "padded_tokens": 0,
            "rows_scored": 0,
            "oom_retries": 0,
            "wall_s": 0.0,
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
    def _batches(self, order: list[int], width: list[int]) -> list[list[int]]:
        """Cut ``order`` (rows by ascending suffix width) into consecutive batches of at most
        ``max_batch_size`` rows and ``max_batch_tokens`` padded tokens, minimising the
        modelled cost sum(forward_cost_tokens + rows x widest row) by dynamic programming:
        padding is traded against the fixed cost of one more forward."""
        n = len(order)
        w = np.asarray([width[i] for i in order], dtype=np.float64)
        c0 = float(self.forward_cost_tokens)
        best = np.full(n + 1, np.inf)
        best[0] = 0.0
        start = np.zeros(n + 1, dtype=np.int64)
        for j in range(1, n + 1):  # the batch ending at row j-1 starts at row i
            wj = w[j - 1]
            rows_max = int(min(self.max_batch_size, max(1, self.max_batch_tokens // wj), j))
            i = np.arange(j - rows_max, j)
            cost = best[i] + c0 + (j - i) * wj
            k = int(np.argmin(cost))
            best[j], start[j] = cost[k], i[k]
        cuts = []
        j = n
        while j > 0:
            cuts.append((int(start[j]), j))
            j = int(start[j])
        return [order[a:b] for a, b in reversed(cuts)]

    def run(self, inputs: Sequence[PerturbedInput], reducer: Reducer) -> list[np.ndarray]:
        """Apply ``reducer`` to the output log-probs of every perturbed input, in order.

        Each row reuses the unmasked prompt's keys/values before its own first change (its
        cut c_i, never the token that predicts o_1): a batch attends to the shared prefix of
        its largest cut through a broadcast view, each row hiding the prefix positions at or
        after its own cut through the attention mask, and runs only its suffix. Rows are
        grouped by suffix width, so batches carry little padding. On an out-of-memory error
        (CUDA) the batch is halved and retried (``counters["oom_retries"]``); a single row
        that does not fit raises :class:`~attrlens.errors.CapabilityError`."""
        import torch

        t0 = time.perf_counter()
        n = len(inputs)
        results: list[np.ndarray | None] = [None] * n
        if n == 0:
            return []
        L = self.n_prompt
        T = self.n_output
        # reusable prefix length per row: never the token whose hidden state predicts o_1
        cut = [
            max(0, min(p.first_change, len(p.ids) - 1, L - 1)) if self.prefix_reuse else 0
            for p in inputs
        ]
        width = [len(inputs[i].ids) - cut[i] + T for i in range(n)]
        order = sorted(range(n), key=lambda i: (width[i], -cut[i]))
        queue = deque(self._batches(order, width))
        oom = _oom_errors()
        while queue:
            batch = queue.popleft()
            try:
                self._run_batch(batch, inputs, cut, reducer, results)
            except oom as e:
                if len(batch) == 1:
                    raise CapabilityError(
                        f"One perturbed prompt ({width[batch[0]]} tokens with the output) does "
                        f"not fit in the device's memory ({type(e).__name__}); use a shorter "
                        "prompt or output, a smaller model or dtype, or another device."
                    ) from e
                self.counters["oom_retries"] = self.counters.get("oom_retries", 0) + 1
                half = len(batch) // 2
                # later batches stay at the size that fitted
                self.max_batch_size = max(1, min(self.max_batch_size, half))
                self.max_batch_tokens = max(1, self.max_batch_tokens // 2)
                queue.appendleft(batch[half:])
                queue.appendleft(batch[:half])
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        self.counters["wall_s"] += time.perf_counter() - t0
        return results  # type: ignore[return-value]

    def _run_batch(
        self,
        batch: list[int],
        inputs: Sequence[PerturbedInput],
        cut: list[int],
        reducer: Reducer,
        results: list[np.ndarray | None],
    ) -> None:
        """One forward over the suffixes of ``batch`` (rows of ``inputs``), reduced."""
        import torch

        L, T = self.n_prompt, self.n_output
        dev = self.model.device
        P = max(cut[i] for i in batch)  # shared prefix attended by the batch
        B = len(batch)
        n_real = [len(inputs[i].ids) - cut[i] + T for i in batch]
        S = max(n_real)
        ids_t = np.zeros((B, S), dtype=np.int64)
        pos_t = np.zeros((B, S), dtype=np.int64)
        att = np.zeros((B, P + S), dtype=np.int64)
        for r, i in enumerate(batch):
            inp, c, k = inputs[i], cut[i], n_real[r]
            start = L if inp.output_start is None else inp.output_start
            ids_t[r, :k] = np.concatenate([inp.ids[c:], self.output_ids])
            pos_t[r, :k] = np.concatenate([inp.positions[c:], np.arange(start, start + T)])
            pos_t[r, k:] = start + T + np.arange(S - k)
            att[r, :c] = 1  # the shared prefix up to this row's own cut
            att[r, P : P + k] = 1
            off = inp.attention
            if off is not None:  # keys no query may read (attention_off)
                att[r, P : P + k - T] = np.asarray(off[c:], dtype=np.int64)
        kwargs: dict[str, Any] = {}
        if P > 0:
            kwargs[self.model.cache_kwarg] = self.prefix.attend(B, P, self.counters)
        with torch.inference_mode():
            hidden = self.model.decoder(
                input_ids=torch.as_tensor(ids_t, device=dev),
                attention_mask=torch.as_tensor(att, device=dev),
                position_ids=torch.as_tensor(pos_t, device=dev),
                use_cache=P > 0,
                **kwargs,
            ).last_hidden_state
            kwargs.clear()
            # hidden states that predict o_1..o_T: the last prompt token and o_1..o_{T-1}
            # (indexed on the device of the last hidden state: differs under device_map)
            hdev = hidden.device
            starts = torch.as_tensor([k - T - 1 for k in n_real], device=hdev)
            gather = starts[:, None] + torch.arange(T, device=hdev)[None, :]
            h = hidden[torch.arange(B, device=hdev)[:, None], gather]  # (B, T, H)
            del hidden
            out_ids_t = torch.as_tensor(self.output_ids, device=h.device)
            chunk = max(1, self.max_logit_rows // T)
            for c0 in range(0, B, chunk):
                logits = self.model.output_logits(h[c0 : c0 + chunk])
                if reducer is gather_logprobs:  # log p(o_t) without a log-softmax tensor
                    idx = out_ids_t[None, :, None].expand(logits.shape[0], -1, 1)
                    lp = logits.gather(-1, idx)[..., 0] - torch.logsumexp(logits, dim=-1)
                    vals = lp.double().cpu().numpy()
                else:
                    vals = reducer(torch.log_softmax(logits, dim=-1), out_ids_t)
                del logits
                for r, v in enumerate(vals):
                    results[batch[c0 + r]] = v
        self.counters["model_forwards"] += 1
        self.counters["tokens_processed"] += int(sum(n_real))
        self.counters["padded_tokens"] += int(B * S - sum(n_real))
        self.counters["rows_scored"] += B

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


def _oom_errors() -> tuple[type[BaseException], ...]:
    """The out-of-memory exception classes of this torch (CUDA, MPS, generic)."""
    import torch

    errs = {getattr(torch, "OutOfMemoryError", None), getattr(torch.cuda, "OutOfMemoryError", None)}
    return tuple(e for e in errs if e is not None)


def gather_logprobs(logprobs: Any, out_ids: Any) -> np.ndarray:
    """Reducer: log p(o_t) at each output position, (b, T)."""
    idx = out_ids.to(logprobs.device)[None, :, None].expand(logprobs.shape[0], -1, 1)
    return logprobs.gather(-1, idx)[..., 0].double().cpu().numpy()


def unmasked_input(prompt_ids: Sequence[int]) -> PerturbedInput:
    ids = np.asarray(prompt_ids, dtype=np.int64)
    return PerturbedInput(ids, np.arange(len(ids)), len(ids))
