"""Attention of the scoring engine's packed forwards, three ways, on the engine's own layouts.

The same LOO job as ``benchmarks/scoring.py`` (embedded model, chat template, the model's own
greedy answer, ``delete`` masker, word features). The engine's forwards are recorded (rows of
segments, each segment's cut), and one layer's attention of each forward is timed on random
queries/keys/values of the model's shapes and dtype (the model's own weights do not change
attention's cost):

- ``masked``: what the engine runs, one SDPA call per forward under its additive mask: every
  query scores every shared-prefix column and every key of its row;
- ``per_segment``: one SDPA call per segment over exactly the keys it reads (the prefix up
  to its cut, then its own keys; a small causal mask): the fewest scores, one call each;
- ``causal_same_shape``: plain causal SDPA on the same (rows, length) without the prefix,
  the raw forward's attention on the engine's token layout (a reference, not a candidate).

The outputs of ``masked`` and ``per_segment`` are compared on every real token. Times are
per layer, medians of ``--repeats``, summed over the job's forwards and multiplied by the
model's layer count.

    .venv/bin/python benchmarks/segment_attention.py [--prompts medium,long]
        [--row-stride 1,8] [--dtypes float32,bfloat16] [--repeats 7]
        [--out benchmarks/segment_attention.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def _median_ms(fn, repeats: int) -> float:
    fn()
    ts = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts) * 1e3


def job(name: str, dtype: str, stride: int, repeats: int) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from scoring import _setup, machine

    from attrlens.scoring.engine import ScoringEngine, _additive
    from attrlens.solvers.sampling import loo_masks
    from attrlens.text.mask import Masker

    model, _pr, ids, fs, out = _setup(name, dtype)
    feats = list(range(0, len(fs), stride))
    inputs = Masker("delete", ids, fs).apply(loo_masks(len(fs))[[0] + [f + 1 for f in feats]])
    layouts = []
    real = ScoringEngine._run_forward

    def spy(self, rows, inputs_, cut, width, *a, **k):
        layouts.append(([list(r) for r in rows], dict(cut), dict(width)))
        return real(self, rows, inputs_, cut, width, *a, **k)

    ScoringEngine._run_forward = spy
    try:
        ScoringEngine(model, ids, out).token_logprobs(inputs)
    finally:
        ScoringEngine._run_forward = real
    cfg = model.text_config
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    dt = model.dtype
    gen = torch.Generator().manual_seed(0)
    forwards = []
    for rows, cut, width in layouts:
        B = len(rows)
        S = max(sum(width[g] for g in r) for r in rows)
        P = max([cut[g] for r in rows for g in r if g != -1] or [0])
        q = torch.randn(B, heads, S, d, generator=gen).to(dt)
        k = torch.randn(B, kv, P + S, d, generator=gen).to(dt)
        v = torch.randn(B, kv, P + S, d, generator=gen).to(dt)
        seg_t = np.full((B, S), -1)
        idx_t = np.zeros((B, S), dtype=np.int64)
        cut_t = np.zeros((B, S), dtype=np.int64)
        segs = []  # (row, start, width, cut)
        for r, row in enumerate(rows):
            o = 0
            for g in row:
                w, c = width[g], cut[g]
                seg_t[r, o:o + w] = r * S + o
                idx_t[r, o:o + w] = c + np.arange(w)
                cut_t[r, o:o + w] = c
                segs.append((r, o, w, c))
                o += w
            pads = np.arange(o, S)
            seg_t[r, pads] = -(r * S + pads) - 1
            idx_t[r, pads] = idx_t[r, o - 1] + 1 + np.arange(S - o)
        own = (seg_t[:, :, None] == seg_t[:, None, :]) & (idx_t[:, None, :] <= idx_t[:, :, None])
        pre = np.arange(P)[None, None, :] < cut_t[:, :, None]
        mask = _additive(np.concatenate([pre, own], 2)[:, None], "cpu", dt)
        widest = max(w for _r, _o, w, _c in segs)
        # one causal band: rows i, columns P - c ... P + w of it are segment (c, w)'s mask
        band = torch.zeros(widest, P + widest, dtype=dt).masked_fill_(
            torch.ones(widest, P + widest, dtype=torch.bool).triu(P + 1), float("-inf"))

        def masked(q=q, k=k, v=v, mask=mask):
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)

        def per_segment(q=q, k=k, v=v, segs=segs, P=P, band=band):
            res = torch.empty_like(q)
            for r, o, w, c in segs:
                kk = torch.cat([k[r:r + 1, :, :c], k[r:r + 1, :, P + o:P + o + w]], 2)
                vv = torch.cat([v[r:r + 1, :, :c], v[r:r + 1, :, P + o:P + o + w]], 2)
                res[r:r + 1, :, o:o + w] = F.scaled_dot_product_attention(
                    q[r:r + 1, :, o:o + w], kk, vv, attn_mask=band[:w, P - c:P + w],
                    enable_gqa=True)
            return res

        def causal(q=q, k=k, v=v, P=P):
            return F.scaled_dot_product_attention(q, k[:, :, P:], v[:, :, P:], is_causal=True,
                                                  enable_gqa=True)

        a, b = masked(), per_segment()
        diff = max(float((a[r, :, o:o + w] - b[r, :, o:o + w]).abs().max())
                   for r, o, w, _c in segs)
        forwards.append({
            "rows": B, "length": S, "prefix": P, "segments": len(segs), "max_abs_diff": diff,
            "masked_ms": _median_ms(masked, repeats),
            "per_segment_ms": _median_ms(per_segment, repeats),
            "causal_same_shape_ms": _median_ms(causal, repeats),
        })
    n_layers = len(model.layers())
    total = {key: sum(f[f"{key}_ms"] for f in forwards) * n_layers / 1e3
             for key in ("masked", "per_segment", "causal_same_shape")}
    return {"prompt": name, "dtype": dtype, "row_stride": stride, "layers": n_layers,
            "threads": torch.get_num_threads(), "machine": machine(),
            "forwards": forwards, "seconds_all_layers": total}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="medium,long")
    ap.add_argument("--row-stride", default="1,8")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--out", default="benchmarks/segment_attention.json")
    args = ap.parse_args()
    prompts = args.prompts.split(",")
    strides = [int(x) for x in args.row_stride.split(",")]
    results = []
    for name, stride in zip(prompts, strides):
        for dt in args.dtypes.split(","):
            r = job(name, dt, stride, args.repeats)
            s = r["seconds_all_layers"]
            print(f"{name} {dt} stride {stride}: {len(r['forwards'])} forwards; attention s "
                  f"(all layers): masked {s['masked']:.3f}, per segment "
                  f"{s['per_segment']:.3f}, causal same shape {s['causal_same_shape']:.3f}",
                  flush=True)
            results.append(r)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
