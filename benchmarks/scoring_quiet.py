"""The scoring engine against the naive batched LOO and the raw forward, with nothing else
in the process: no memory measure at all (``scoring.py`` reads the kernel's high-water
mark since session 25; before, it sampled the resident set every 5 ms in a thread, which took
CPU time from a 2-core machine's torch threads), one dtype, interleaved repeats, medians.

    .venv/bin/python benchmarks/scoring_quiet.py --prompt medium [--row-stride 1]
        [--dtype float32] [--repeats 5] [--out benchmarks/scoring_quiet_medium.json]

Reported: ours (engine, LM head included), its decoder and head, raw on ours' shapes (plain
causal forwards of the same (rows, length)), naive's decoder (raw) and naive end to end;
engine ÷ raw = (ours' tokens / ours s) ÷ (naive's tokens / raw s), and the speed-up naive ÷ ours.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from scoring import _setup, machine, naive_loo, raw_same


def main() -> None:
    import torch

    from attrlens.scoring.engine import ScoringEngine
    from attrlens.solvers.sampling import loo_masks
    from attrlens.text.mask import Masker

    ap = argparse.ArgumentParser()
    ap.add_argument("--prompt", default="medium")
    ap.add_argument("--row-stride", type=int, default=1)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--max-batch-tokens", type=int, default=4096)
    ap.add_argument("--out")
    a = ap.parse_args()
    mach = machine()
    model, _pr, ids, fs, out = _setup(a.prompt, a.dtype)
    feats = list(range(0, len(fs), a.row_stride))
    inputs = Masker("delete", ids, fs).apply(loo_masks(len(fs))[[0] + [f + 1 for f in feats]])

    def ours() -> ScoringEngine:
        eng = ScoringEngine(model, ids, out, max_batch_tokens=a.max_batch_tokens)
        eng.token_logprobs(inputs)
        return eng

    shapes: list[tuple[int, int]] = []
    dec, real = model.decoder, model.decoder.forward

    def spy(*args, **kw):
        shapes.append(tuple(kw["input_ids"].shape))
        return real(*args, **kw)

    ours()
    naive_loo(model, inputs[:4], out, a.max_batch_tokens)  # one-time set-up out of the timing
    dec.forward = spy
    try:
        eng = ours()
    finally:
        del dec.forward
    walls: dict[str, list[float]] = {k: [] for k in ("ours", "ours_decoder", "ours_head",
                                                     "raw_same", "raw", "naive")}
    for _ in range(a.repeats):
        t0 = time.perf_counter()
        eng = ours()
        walls["ours"].append(time.perf_counter() - t0)
        walls["ours_decoder"].append(eng.counters["decoder_s"])
        walls["ours_head"].append(eng.counters["head_s"])
        walls["raw_same"].append(raw_same(model, shapes))
        _lp, tokens, dec_s, tot, _head = naive_loo(model, inputs, out, a.max_batch_tokens)
        walls["raw"].append(dec_s)
        walls["naive"].append(tot)
    med = {k: statistics.median(v) for k, v in walls.items()}
    t_ours = int(eng.counters["tokens_processed"])
    res = {
        "argv": sys.argv, "machine": mach, "prompt": a.prompt, "dtype": a.dtype,
        "threads": torch.get_num_threads(), "features": len(fs), "rows": len(inputs),
        "shapes": shapes, "tokens_ours": t_ours, "tokens_naive": tokens,
        "median_s": med, "walls": walls,
        "engine_over_raw": (t_ours / med["ours"]) / (tokens / med["raw"]),
        "decoder_over_raw_same": med["raw_same"] / med["ours_decoder"],
        "speedup_vs_naive": med["naive"] / med["ours"],
        "loadavg_end": list(__import__("os").getloadavg()),
    }
    print(json.dumps({k: v for k, v in res.items() if k not in ("walls", "machine")}))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
