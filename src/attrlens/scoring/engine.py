"""ScoringEngine: batched teacher-forced scoring of a fixed output under many masked prompts.

For each perturbed prompt x(z) the engine computes, in one teacher-forced pass over the whole
output o, the model's next-token distributions at the T positions that predict o_1..o_T, and
hands them to a reducer (a target) in row chunks, so full-vocabulary tensors never pile up.

Prefix reuse: the tokens before a mask's first removed (or replaced) token are identical to the
unmasked prompt, at the same positions, so their key/value cache is the unmasked prompt's
(one :class:`~attrlens.scoring.cache.PrefixCache`, shared with GiLOT's beam runner). It is
computed once; each batch takes the shortest common prefix of its rows, and only the
suffixes are run. Rows are sorted by their first change so that batches share long prefixes.
Right padding needs no extra masking under causal attention; pads are excluded from counts.

A perturbed input may carry an ``attention`` vector (0 = no query attends to that token's
key): the ``attention_off`` masker uses it for a masked last prompt token, whose hidden state
(id 0, attention 0) still predicts the first output token, as in GiLOT's reference.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

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
    max_logit_rows:   rows x T of vocabulary-sized log-probs materialised at once
    prefix:           the prompt's key/value cache to share (default: a new one)
    """

    def __init__(
        self,
        model: Any,
        prompt_ids: Sequence[int],
        output_ids: Sequence[int],
        *,
        prefix_reuse: bool = True,
        max_batch_tokens: int = 8192,
        max_batch_size: int = 128,
        max_logit_rows: int = 512,
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
        self.counters: dict[str, float] = {
            "model_forwards": 0,
            "tokens_processed": 0,
            "padded_tokens": 0,
            "rows_scored": 0,
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
    def _batches(self, order: list[int], inputs: Sequence[PerturbedInput], cut: list[int]):
        """Group rows (sorted by decreasing cut) into batches bounded by padded tokens."""
        batch: list[int] = []
        p = 0
        max_ids = 0
        for i in order:
            p_new = min(p, cut[i]) if batch else cut[i]
            max_new = max(max_ids, len(inputs[i].ids))
            width = max_new - p_new + self.n_output
            if batch and (
                len(batch) >= self.max_batch_size
                or (len(batch) + 1) * width > self.max_batch_tokens
            ):
                yield batch
                batch, p_new, max_new = [], cut[i], len(inputs[i].ids)
            batch.append(i)
            p, max_ids = p_new, max_new
        if batch:
            yield batch

    def run(self, inputs: Sequence[PerturbedInput], reducer: Reducer) -> list[np.ndarray]:
        """Apply ``reducer`` to the output log-probs of every perturbed input, in order."""
        import torch

        t0 = time.perf_counter()
        n = len(inputs)
        results: list[np.ndarray | None] = [None] * n
        if n == 0:
            return []
        L = self.n_prompt
        T = self.n_output
        dev = self.model.device
        # reusable prefix length per row: never the last prompt token, whose hidden state
        # predicts o_1 and must be recomputed
        cut = [min(p.first_change, L - 1) if self.prefix_reuse else 0 for p in inputs]
        order = sorted(range(n), key=lambda i: (-cut[i], len(inputs[i].ids)))
        out_pos_offset = np.arange(L, L + T)
        head = self.model.lm_head
        out_ids_t = torch.as_tensor(self.output_ids, device=dev)

        for batch in self._batches(order, inputs, cut):
            p = min(cut[i] for i in batch)
            seqs, poss, n_real = [], [], []
            for i in batch:
                inp = inputs[i]
                ids = np.concatenate([inp.ids[p:], self.output_ids])
                out_pos = out_pos_offset if inp.output_start is None else np.arange(
                    inp.output_start, inp.output_start + T)
                pos = np.concatenate([inp.positions[p:], out_pos])
                seqs.append(ids)
                poss.append(pos)
                n_real.append(len(ids))
            S = max(n_real)
            B = len(batch)
            ids_t = torch.zeros((B, S), dtype=torch.long)
            pos_t = torch.zeros((B, S), dtype=torch.long)
            att = torch.zeros((B, p + S), dtype=torch.long)
            att[:, :p] = 1
            for r, (i, ids, pos) in enumerate(zip(batch, seqs, poss)):
                k = len(ids)
                ids_t[r, :k] = torch.as_tensor(ids)
                pos_t[r, :k] = torch.as_tensor(pos)
                pos_t[r, k:] = int(pos[-1]) + 1 + torch.arange(S - k)
                att[r, p : p + k] = 1
                off = getattr(inputs[i], "attention", None)
                if off is not None:  # keys no query may read (attention_off)
                    n_in = len(inputs[i].ids) - p
                    att[r, p : p + n_in] = torch.as_tensor(
                        np.asarray(off[p:], dtype=np.int64)
                    )
            kwargs: dict[str, Any] = {}
            if p > 0 and self.prefix_reuse:
                kwargs[self.model.cache_kwarg] = self.prefix.expand(B, p, self.counters, copy=False)
            with torch.inference_mode():
                hidden = self.model.decoder(
                    input_ids=ids_t.to(dev),
                    attention_mask=att.to(dev),
                    position_ids=pos_t.to(dev),
                    use_cache=p > 0,
                    **kwargs,
                ).last_hidden_state
                # hidden states that predict o_1..o_T: the last prompt token and o_1..o_{T-1}
                # index on the device of the last hidden state (differs under device_map)
                hdev = hidden.device
                starts = torch.as_tensor([k - T - 1 for k in n_real], device=hdev)
                gather = starts[:, None] + torch.arange(T, device=hdev)[None, :]
                h = hidden[torch.arange(B, device=hdev)[:, None], gather]  # (B, T, H)
                chunk = max(1, self.max_logit_rows // T)
                for c0 in range(0, B, chunk):
                    logits = head(h[c0 : c0 + chunk]).float()
                    logprobs = torch.log_softmax(logits, dim=-1)
                    vals = reducer(logprobs, out_ids_t)
                    for r, v in enumerate(vals):
                        results[batch[c0 + r]] = v
            self.counters["model_forwards"] += 1
            self.counters["tokens_processed"] += int(sum(n_real))
            self.counters["padded_tokens"] += int(B * S - sum(n_real))
            self.counters["rows_scored"] += B
        self.counters["wall_s"] += time.perf_counter() - t0
        return results  # type: ignore[return-value]

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


def gather_logprobs(logprobs: Any, out_ids: Any) -> np.ndarray:
    """Reducer: log p(o_t) at each output position, (b, T)."""
    idx = out_ids.to(logprobs.device)[None, :, None].expand(logprobs.shape[0], -1, 1)
    return logprobs.gather(-1, idx)[..., 0].double().cpu().numpy()


def unmasked_input(prompt_ids: Sequence[int]) -> PerturbedInput:
    ids = np.asarray(prompt_ids, dtype=np.int64)
    return PerturbedInput(ids, np.arange(len(ids)), len(ids))
