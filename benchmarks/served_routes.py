"""Benchmark (issue 14): explaining a served model on HotpotQA through its own
log-likelihood (LOO over the llama.cpp forced_tokens route) vs RoPE-LIME (local surrogate,
K = 1, 3, 5) vs gSMILE (regenerations).

The served model is llama.cpp (xllamacpp) serving the embedded SmolLM2-135M-Instruct GGUF
on loopback; the surrogate is the same GGUF loaded with transformers (float32). Features:
the context sentences of the SPEX-format prompt (gold paragraphs + ``--distractors``
random others). Per item one greedy served call gives the output o; then

    served_loo     leave-one-out on the served model (route forced_tokens): n + 1 calls
    rope_lime_kK   budget 64 surrogate evaluations, 0 served calls
    gsmile         budget ``--gsmile-budget`` regenerations

Reported per method: served API calls (served_loo: with the route probe and the output's
/tokenize; the one call for o excluded),
wall time, and the Spearman correlation of its scores with the served LOO.

    .venv/bin/python benchmarks/served_routes.py --n 5 --out /tmp/served.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

DATA = str(Path(__file__).resolve().parents[2] / "shared/data/hotpotqa_dev_distractor_100.jsonl")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=DATA)
    ap.add_argument("--n", type=int, default=5)
    ap.add_argument("--distractors", type=int, default=1)
    ap.add_argument("--gsmile-budget", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--out", default="/tmp/served_routes.json")
    args = ap.parse_args()

    from scipy.stats import spearmanr

    import attrlens
    from attrlens import api
    from attrlens.evaluation.hotpotqa import load_hotpotqa
    from attrlens.models.cache import CallCache
    from attrlens.models.openai import OpenAIBackend
    from attrlens.models.server import LlamaServer

    items = [it.truncated(args.distractors, seed=0) for it in load_hotpotqa(args.data, n=args.n)]
    model = attrlens.load_model()
    rows = []
    cache = CallCache(Path(args.out).with_suffix(".calls.sqlite"))
    with LlamaServer(n_ctx=4096, n_threads=args.threads) as srv:
        be = OpenAIBackend(srv.base_url, srv.model_name, cache=cache, concurrency=1,
                           timeout=600.0)
        for idx, it in enumerate(items):
            prompt, spans = it.prompt()
            out = be.chat([{"role": "user", "content": prompt}],
                          max_tokens=args.max_new_tokens, temperature=0.0).text
            base = {"model": model, "granularity": "span", "spans": spans, "output": out,
                        "max_new_tokens": args.max_new_tokens, "target_backend": be}
            runs = {"served_loo": {"method": "loo", "route": "forced_tokens"}}
            for k in (1, 3, 5):
                runs[f"rope_lime_k{k}"] = {"method": "rope_lime", "k": k, "budget": 64}
            runs["gsmile"] = {"method": "gsmile", "budget": args.gsmile_budget}
            res = {}
            for name, kw in runs.items():
                t0 = time.perf_counter()
                attr = api.explain(prompt, **base, **kw)
                res[name] = {"scores": attr.scores.tolist(),
                             "api_calls": int(attr.cost.get("api_calls", 0)),
                             "cached_calls": int(attr.cost.get("cached_calls", 0)),
                             "value_calls": int(attr.cost.get("value_calls", 0)),
                             "wall_s": time.perf_counter() - t0}
            ref = np.asarray(res["served_loo"]["scores"])
            for r in res.values():
                rho = spearmanr(ref, r["scores"]).statistic
                r["spearman_vs_served_loo"] = None if not np.isfinite(rho) else float(rho)
            rows.append({"item": idx, "n_features": len(spans), "output": out, "methods": res})
            print(idx, len(spans), repr(out), {k: (v["api_calls"], round(v["wall_s"], 1),
                                                   v["spearman_vs_served_loo"])
                                               for k, v in res.items()}, flush=True)
            Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    names = list(rows[0]["methods"])
    print("\nmethod | served calls (mean) | wall s (mean) | Spearman vs served LOO (mean, min)")
    for m in names:
        calls = np.mean([r["methods"][m]["api_calls"] for r in rows])
        wall = np.mean([r["methods"][m]["wall_s"] for r in rows])
        rhos = [r["methods"][m]["spearman_vs_served_loo"] for r in rows]
        rhos = [x for x in rhos if x is not None]
        print(f"{m} | {calls:.1f} | {wall:.1f} | {np.mean(rhos):.2f}, {np.min(rhos):.2f}")


if __name__ == "__main__":
    main()
