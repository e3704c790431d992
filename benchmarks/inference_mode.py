"""Forwards under ``torch.inference_mode()`` vs ``torch.no_grad()``: what a model whose weights
refuse inference mode (optimum-quanto's 4- and 2-bit weights; ``HFModel.inference``) pays.
The embedded model's decoder on random token ids of 8, 64 and 512 tokens, both contexts
interleaved per repeat, medians after one warm-up.

    .venv/bin/python benchmarks/inference_mode.py --repeats 9 --out benchmarks/inference_mode.json
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
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--lengths", default="8,64,512")
    ap.add_argument("--out", default="benchmarks/inference_mode.json")
    args = ap.parse_args()
    import torch

    import attrlens

    res: dict = {"threads": torch.get_num_threads(), "load_avg_start": os.getloadavg(),
                 "torch": torch.__version__, "rows": {}}
    gen = torch.Generator().manual_seed(0)
    for dtype in args.dtypes.split(","):
        m = attrlens.load_model(dtype=dtype)
        res["model_sha256"] = m.info.sha256
        for n in (int(x) for x in args.lengths.split(",")):
            x = torch.randint(0, 40000, (1, n), generator=gen)
            walls: dict[str, list[float]] = {"inference_mode_s": [], "no_grad_s": []}
            for _ in range(args.repeats + 1):  # the first of each is a warm-up
                for key, ctx in (("inference_mode_s", torch.inference_mode),
                                 ("no_grad_s", torch.no_grad)):
                    with ctx():
                        t = time.perf_counter()
                        m.decoder(input_ids=x, use_cache=False)
                        walls[key].append(time.perf_counter() - t)
            row = {k: statistics.median(v[1:]) for k, v in walls.items()}
            row["no_grad_extra_ms"] = 1e3 * (row["no_grad_s"] - row["inference_mode_s"])
            row["ratio"] = row["no_grad_s"] / row["inference_mode_s"]
            row["walls"] = walls
            res["rows"][f"{dtype} {n} tokens"] = row
            print(dtype, n, {k: round(v, 4) for k, v in row.items() if k != "walls"},
                  flush=True)
    res["load_avg_end"] = os.getloadavg()
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
