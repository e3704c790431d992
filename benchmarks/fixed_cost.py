"""What a forward of the embedded model costs before it costs per token, and what that leaves
of issue 13's strict goal (engine tok/s >= 0.9 x raw forward tok/s) at the 42-token LOO.

The 42-token LOO (the scoring benchmark's ``short`` prompt) is 238 tokens in one engine
forward, where the from-scratch ("raw") LOO is 527 tokens in one forward. Both pay the same
per-forward cost once; the engine's per-token rate is therefore bounded by the plain forward's
own rate at 238 tokens against 527. This script measures, per dtype, on this machine's default
threads, plain decoder forwards (one row, causal, no cache, inference mode) of 8, 64, 238 and
527 tokens (interleaved, medians), the bound ``(238 / t(238)) / (527 / t(527))`` (and with the
LM head the engine runs and raw does not: 11 rows x 7 output tokens), and where a
short forward's time goes (torch profiler, 8 tokens: matrix products vs everything else), with
the bytes of weights its products read and the rate that implies.

    .venv/bin/python benchmarks/fixed_cost.py --repeats 15 --out benchmarks/fixed_cost.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--lengths", default="8,64,238,527")
    ap.add_argument("--out", default="benchmarks/fixed_cost.json")
    args = ap.parse_args()
    import torch
    from scoring import machine
    from torch.profiler import ProfilerActivity, profile

    import attrlens

    lengths = [int(x) for x in args.lengths.split(",")]
    res: dict = {"threads": torch.get_num_threads(), "torch": torch.__version__,
                 "machine": machine(), "dtypes": {}}
    gen = torch.Generator().manual_seed(0)
    for dtype in args.dtypes.split(","):
        m = attrlens.load_model(device="cpu", dtype=dtype)
        res["model_sha256"] = m.info.sha256
        dec = m.decoder
        emb = m.input_embeddings.weight
        weights = sum(p.numel() * p.element_size() for n, p in dec.named_parameters()
                      if p.dim() == 2 and p.data_ptr() != emb.data_ptr())
        xs = {n: torch.randint(100, 40000, (1, n), generator=gen) for n in lengths}
        walls: dict[int, list[float]] = {n: [] for n in lengths}
        # the engine's head at the 42-token LOO: 11 rows x 7 output tokens (raw has none)
        hidden = torch.randn(11, 7, emb.shape[1], generator=gen).to(emb.dtype)
        out_ids = torch.randint(100, 40000, (7,), generator=gen)
        heads: list[float] = []
        with torch.inference_mode():
            for _ in range(2):
                for n in lengths:
                    dec(input_ids=xs[n], **m.no_cache)
                m.output_token_logprobs(hidden, out_ids)
            for _ in range(args.repeats):
                for n in lengths:
                    t = time.perf_counter()
                    dec(input_ids=xs[n], **m.no_cache)
                    walls[n].append(time.perf_counter() - t)
                t = time.perf_counter()
                m.output_token_logprobs(hidden, out_ids)
                heads.append(time.perf_counter() - t)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for _ in range(5):
                    dec(input_ids=xs[lengths[0]], **m.no_cache)
        ka = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in ka) / 5 / 1e6
        mm = sum(e.self_cpu_time_total for e in ka
                 if e.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::linear")) / 5 / 1e6
        med = {n: statistics.median(v) for n, v in walls.items()}
        row = {
            "median_s": {str(n): med[n] for n in lengths},
            "tok_per_s": {str(n): n / med[n] for n in lengths},
            "weights_mb": weights / 1e6,
            f"profile_{lengths[0]}_tokens": {
                "ops_s": total, "matrix_products_s": mm, "matrix_share": mm / total,
                "weights_read_gb_per_s": weights / mm / 1e9},
        }
        head = statistics.median(heads)
        row["head_11x7_s"] = head
        if 238 in med and 527 in med:
            raw = 527 / med[527]
            row["bound_238_vs_527"] = (238 / med[238]) / raw
            row["bound_238_with_head_vs_527"] = (238 / (med[238] + head)) / raw
        res["dtypes"][dtype] = row
        print(dtype, json.dumps({k: v for k, v in row.items()}, default=float)[:600])
    res["load_avg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
