"""Cost of the per-model checks (``HFModel.packing``, ``HFModel.logit_map``,
``HFModel.packs_attention``): a few 8-token
forwards, once per loaded model. Each repeat wraps the embedded model afresh (the checks are
cached per wrapper), after one warm 8-token forward, and times each check; medians, with an
8-token decoder forward for scale.

    .venv/bin/python benchmarks/model_checks.py --repeats 5 --out benchmarks/model_checks.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--out", default="benchmarks/model_checks.json")
    args = ap.parse_args()
    import torch

    import attrlens
    from attrlens.models.hf import HFModel

    res: dict = {"threads": torch.get_num_threads(), "load_avg": os.getloadavg(), "rows": {}}
    for dt in args.dtypes.split(","):
        base = attrlens.load_model(dtype=dt)
        x = torch.arange(10, 18)[None]
        with torch.no_grad():
            base.model(input_ids=x)  # warm kernels
        walls: dict[str, list[float]] = {"packing_s": [], "logit_map_s": [],
                                         "packs_attention_s": [], "forward_s": []}
        for _ in range(args.repeats):
            m = HFModel(base.model, base.tokenizer, info=base.info)
            t = time.perf_counter()
            packing = m.packing
            walls["packing_s"].append(time.perf_counter() - t)
            t = time.perf_counter()
            m.logit_map()
            walls["logit_map_s"].append(time.perf_counter() - t)
            t = time.perf_counter()
            assert m.packs_attention
            walls["packs_attention_s"].append(time.perf_counter() - t)
            t = time.perf_counter()
            with torch.no_grad():
                m.decoder(input_ids=x)
            walls["forward_s"].append(time.perf_counter() - t)
        row = {k: statistics.median(v) for k, v in walls.items()}
        row.update(walls={k: v for k, v in walls.items()}, packing=list(packing),
                   model_sha256=base.info.sha256)
        res["rows"][dt] = row
        print(dt, {k: round(v, 3) for k, v in row.items() if k.endswith("_s")})
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
