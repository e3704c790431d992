"""A/B of the scoring engine's packed attention (``HFModel.packed_attention``).

The same LOO job as ``benchmarks/scoring.py`` (embedded model, chat template, the model's own
greedy answer, ``delete`` masker, word features; sentence features for ``4k``), timed with
the packed attention on (``packed``: grouped-query SDPA under the engine's mask, no mask at
all for a forward of one sequence) and off (``plain``: transformers' SDPA, which copies the
key/value heads per query head under a mask, and the engine's mask on every forward),
interleaved ``--repeats`` times (in turn first) in one process per prompt and dtype (medians), plus each
variant's torch allocation peak (profiler memory events, one extra pass) and the largest
score difference between the two. ``--compare split`` instead times the packed attention
with and without its split prefix attention (``packed``: a forward of one sequence after a
prefix at least as long runs two flash calls merged by their log-sum-exps; ``mask``: one
call under a mask made in the layer; ``hf.SPLIT_PREFIX_ATTENTION``).

    .venv/bin/python benchmarks/packed_attention.py [--prompts medium,long] [--row-stride 1,8]
        [--dtypes float32,bfloat16] [--repeats 5] [--compare plain|split]
        [--out benchmarks/packed_attention.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import statistics
import time
from pathlib import Path


def job(name: str, dtype: str, stride: int, repeats: int, q, compare: str = "plain") -> None:
    import numpy as np
    import torch
    from scoring import _setup, _trim, machine, torch_peak_mb

    from attrlens.models import hf
    from attrlens.scoring.engine import ScoringEngine
    from attrlens.solvers.sampling import loo_masks
    from attrlens.text.mask import Masker

    model, _pr, ids, fs, out = _setup(name, dtype)
    feats = list(range(0, len(fs), stride))
    inputs = Masker("delete", ids, fs).apply(loo_masks(len(fs))[[0] + [f + 1 for f in feats]])
    packs = hf.HFModel.packs_attention
    off = property(lambda self: False)
    other = "plain" if compare == "plain" else "mask"

    def run(variant: str):
        if compare == "plain":
            hf.HFModel.packs_attention = packs if variant == "packed" else off
        else:
            hf.SPLIT_PREFIX_ATTENTION = variant == "packed"
        try:
            eng = ScoringEngine(model, ids, out)
            return eng.token_logprobs(inputs), eng.counters
        finally:
            hf.HFModel.packs_attention = packs
            hf.SPLIT_PREFIX_ATTENTION = True

    run("packed")  # warm-up
    walls: dict[str, list[float]] = {"packed": [], other: []}
    scores = {}
    for rep in range(repeats):  # ABBA: neither variant always runs first
        for variant in (list(walls) if rep % 2 == 0 else list(walls)[::-1]):
            times = walls[variant]
            _trim()
            t0 = time.perf_counter()
            scores[variant], counters = run(variant)
            times.append(time.perf_counter() - t0)
    res = {"prompt": name, "dtype": dtype, "prompt_tokens": len(ids), "output_tokens": len(out),
           "features": len(fs), "rows_scored": len(inputs), "threads": torch.get_num_threads(),
           "forwards": int(counters["model_forwards"]), "walls": walls,
           "median_s": {k: statistics.median(v) for k, v in walls.items()},
           "torch_peak_mb": {k: torch_peak_mb(lambda k=k: run(k)) for k in walls},
           "max_abs_diff": float(np.abs(scores["packed"] - scores[other]).max()),
           "compare": compare, "machine": machine()}
    res[f"{other}_over_packed"] = res["median_s"][other] / res["median_s"]["packed"]
    q.put(res)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", default="medium,long")
    ap.add_argument("--row-stride", default="1,8")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--compare", choices=("plain", "split"), default="plain")
    ap.add_argument("--out", default="benchmarks/packed_attention.json")
    a = ap.parse_args()
    prompts = a.prompts.split(",")
    strides = [int(s) for s in a.row_stride.split(",")]
    strides += [strides[-1]] * (len(prompts) - len(strides))
    ctx = mp.get_context("spawn")
    rows = []
    for name, stride in zip(prompts, strides):
        for dtype in a.dtypes.split(","):
            q = ctx.Queue()
            p = ctx.Process(target=job, args=(name, dtype, stride, a.repeats, q, a.compare))
            p.start()
            res = q.get()
            p.join()
            print(json.dumps({k: v for k, v in res.items() if k not in ("walls", "machine")}),
                  flush=True)
            rows.append(res)
    Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":  # the script's folder is on sys.path: scoring.py's helpers
    main()
