"""One attention layer of a sequence after a cached prefix, three ways, on random tensors of
the embedded model's shapes (9 query heads, 3 key/value heads, 64 dims):

- ``mask``: one SDPA call under a boolean mask made in the layer (grouped-query SDPA);
- ``zeroq``: one square causal SDPA call over k zero queries + the real ones;
- ``split``: attrlens' ``_prefix_then_causal`` (two flash calls merged by log-sum-exp).

Medians of ``--repeats`` after a warm call; the largest difference from ``mask``.

    .venv/bin/python benchmarks/prefix_attention.py [--repeats 5] \
        [--out benchmarks/prefix_attention.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from segment_attention import _median_ms  # (the script's folder is on sys.path)

from attrlens.models.hf import _prefix_then_causal

H, KV, D = 9, 3, 64
SHAPES = [(2000, 2000), (1000, 3000), (200, 3800), (16, 4000), (3500, 500)]  # (queries, prefix)


def one(dt: torch.dtype, q_len: int, k: int, repeats: int) -> dict:
    sdpa = torch.nn.functional.scaled_dot_product_attention
    g = torch.Generator().manual_seed(0)
    q = torch.randn(1, H, q_len, D, generator=g).to(dt)
    key = torch.randn(1, KV, k + q_len, D, generator=g).to(dt)
    val = torch.randn(1, KV, k + q_len, D, generator=g).to(dt)

    def mask():
        m = torch.ones(q_len, q_len + k, dtype=torch.bool).tril(k)[None, None]
        return sdpa(q, key, val, attn_mask=m, enable_gqa=True)

    def zeroq():
        qq = torch.cat([q.new_zeros(1, H, k, D), q], 2)
        return sdpa(qq, key, val, is_causal=True, enable_gqa=True)[:, :, k:]

    def split():
        return _prefix_then_causal(q, key, val, k, H // KV, None)

    ref = mask().float()
    row = {"dtype": str(dt).split(".")[1], "queries": q_len, "prefix": k,
           "threads": torch.get_num_threads(),
           "ms": {n: _median_ms(f, repeats) for n, f in
                  (("mask", mask), ("zeroq", zeroq), ("split", split))},
           "max_abs_diff_split": float((split().float() - ref).abs().max())}
    row["mask_over_split"] = row["ms"]["mask"] / row["ms"]["split"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--out", default="benchmarks/prefix_attention.json")
    a = ap.parse_args()
    rows = []
    for dt in (torch.float32, torch.bfloat16):
        for q_len, k in SHAPES:
            row = one(dt, q_len, k, a.repeats)
            print(json.dumps(row), flush=True)
            rows.append(row)
    Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
