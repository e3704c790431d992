"""The embedded model's plain decoder forward (1 row x n tokens) with its linear layers as
they are vs with weights pre-packed once for the CPU's matrix kernels (oneDNN's blocked
layout for bf16, MKL's packed GEMM for fp32; torch's private ops that inductor uses when it
freezes a model). A candidate for item 4's fixed cost per forward; not adopted (see
RESULTS.md).

    .venv/bin/python benchmarks/packed_weights.py --repeats 7 --out benchmarks/packed_weights.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time


def _timed(dec, n: int, repeats: int) -> float:
    import torch

    x = torch.randint(100, 1000, (1, n), generator=torch.Generator().manual_seed(n))
    with torch.inference_mode():
        for _ in range(2):
            dec(input_ids=x)
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            dec(input_ids=x)
            walls.append(time.perf_counter() - t0)
    return statistics.median(walls)


def _pack(model, dtype) -> None:
    """Every linear layer of the decoder through pre-packed weights (in place)."""
    import torch

    for mod in model.model.modules():
        if not isinstance(mod, torch.nn.Linear):
            continue
        w = mod.weight.detach()
        if dtype == torch.bfloat16:
            packed = torch.ops.mkldnn._reorder_linear_weight(w, None)
            mod.forward = (lambda x, p=packed, b=mod.bias:
                           torch.ops.mkldnn._linear_pointwise(x, p, b, "none", [], ""))
        else:
            packed = torch.ops.mkl._mkl_reorder_linear_weight(w, 512)
            mod.forward = (lambda x, p=packed, w=w, b=mod.bias:
                           torch.ops.mkl._mkl_linear(x, p, w, b, 512))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--sizes", default="8,240,527")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    import torch

    import attrlens

    sizes = [int(s) for s in args.sizes.split(",")]
    res: dict = {"torch": torch.__version__, "threads": torch.get_num_threads()}
    for name in ("bfloat16", "float32"):
        m = attrlens.load_model(dtype=name)
        dec = m.decoder
        plain = {n: _timed(dec, n, args.repeats) for n in sizes}
        _pack(m.model, getattr(torch, name))
        packed = {n: _timed(dec, n, args.repeats) for n in sizes}
        res[name] = {str(n): {"plain_ms": 1e3 * plain[n], "packed_ms": 1e3 * packed[n],
                              "plain_over_packed": plain[n] / packed[n]} for n in sizes}
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
