"""The scoring head of a bf16 model: float32 log-probs of given tokens (``output_token_logprobs``:
vocabulary slices, running log-sum-exp) with plain float32 products vs the same products on
the CPU's bf16 matrix units (``HFModel.bf16_head_products``, exact for bf16 inputs).

The embedded model in bf16; hidden states drawn at random in bf16, at the row counts of the
scoring benchmark's short (11 x 7 = 77) and medium (48 x 16 = 768) LOO jobs. Both variants
interleave (ABAB...), medians; the log-probs of both are compared with a float64 computation.

    .venv/bin/python benchmarks/head.py --repeats 9 --out benchmarks/head.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--shapes", default="11x7,48x16", help="rows x output tokens, comma-separated")
    ap.add_argument("--out", default="benchmarks/head.json")
    args = ap.parse_args()
    import torch

    import attrlens

    m = attrlens.load_model(dtype="bfloat16")
    w64 = m.lm_head.weight.detach().double()
    gen = torch.Generator().manual_seed(0)
    mat = getattr(torch.backends.mkldnn, "matmul", None)
    res: dict = {"threads": torch.get_num_threads(), "load_avg_start": os.getloadavg(),
                 "torch": torch.__version__, "model_sha256": m.info.sha256,
                 "fp32_precision_setting": hasattr(mat, "fp32_precision"),
                 "avx512_bf16": torch.cpu._is_avx512_bf16_supported(),
                 "amx": torch.cpu._is_amx_tile_supported(), "rows": {}}
    for shape in args.shapes.split(","):
        n, T = (int(x) for x in shape.split("x"))
        hidden = (2 * torch.randn(n, T, w64.shape[1], generator=gen)).to(torch.bfloat16)
        tok = torch.randint(0, w64.shape[0], (T,), generator=gen)
        want = torch.log_softmax(hidden.double() @ w64.t(), -1)
        want = want.gather(-1, tok.expand(n, T)[..., None])[..., 0]
        walls: dict[str, list[float]] = {"float32_s": [], "bf16_units_s": []}
        err: dict[str, float] = {}
        for _ in range(args.repeats + 1):  # the first pass of each is a warm-up
            for key, on in (("float32_s", False), ("bf16_units_s", True)):
                m.bf16_head_products = on
                t = time.perf_counter()
                got = m.output_token_logprobs(hidden, tok)
                walls[key].append(time.perf_counter() - t)
                err[key] = float((got.double() - want).abs().max())
        row = {k: statistics.median(v[1:]) for k, v in walls.items()}
        row["speedup"] = row["float32_s"] / row["bf16_units_s"]
        row["max_abs_err_vs_float64"] = err
        row["walls"] = walls
        res["rows"][f"{n * T} rows ({shape})"] = row
        print(shape, n * T, {k: (round(v, 4) if isinstance(v, float) else v)
                             for k, v in row.items() if k != "walls"}, flush=True)
    res["load_avg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
