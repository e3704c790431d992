"""Benchmark (issue 14): explaining a served model on HotpotQA through its own
log-likelihood (LOO over the llama.cpp forced_tokens route) vs RoPE-LIME (local surrogate,
K = 1, 3, 5) vs gSMILE (regenerations).

The served model is llama.cpp (xllamacpp) serving the embedded SmolLM2-135M-Instruct GGUF
on loopback; the surrogate is the same GGUF loaded with transformers (float32). Features:
the context sentences of the SPEX-format prompt (gold paragraphs + ``--distractors``
random others). Per item one greedy served call gives the output o; then

    served_loo     leave-one-out on the served model (route forced_tokens): n + 1 calls
    rope_lime_kK   budget ``--rope-budget`` surrogate evaluations (default 64), 0 served calls
    gsmile         budget ``--gsmile-budget`` regenerations

Reported per method: served API calls (served_loo: with the route probe and the output's
/tokenize; the one call for o excluded),
wall time, and the Spearman correlation of its scores with the served LOO.

    .venv/bin/python benchmarks/served_routes.py --n 5 --out /tmp/served.json

Resumable: each item's row is written to ``--out`` as soon as it finishes, and a rerun with
the same ``--out`` skips the items already there (the arguments that change the rows must
match). ``--deadline-s`` stops starting new items after that many seconds, so a long run can
be done in chunks.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import tempfile
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
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rope-budget", type=int, default=64)
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="start no new item after this many seconds (resume with a rerun)")
    ap.add_argument("--out", default=str(Path(tempfile.gettempdir()) / "served_routes.json"))
    ap.add_argument("--cache", default=None,
                    help="call cache (sqlite); default: --out with suffix .calls.sqlite")
    args = ap.parse_args()
    t_start = time.perf_counter()

    from scipy.stats import spearmanr

    import attrlens
    from attrlens import api
    from attrlens.evaluation.hotpotqa import load_hotpotqa
    from attrlens.models.cache import CallCache
    from attrlens.models.default import default_gguf_path
    from attrlens.models.openai import OpenAIBackend
    from attrlens.models.server import LlamaServer

    out_path = Path(args.out)
    keys = ("data", "distractors", "gsmile_budget", "max_new_tokens", "seed", "rope_budget")
    rows: list[dict] = []
    runs_log: list[dict] = []
    if out_path.is_file():
        prev = json.loads(out_path.read_text())
        for k in keys:
            if prev["args"].get(k) != getattr(args, k):
                raise SystemExit(f"{out_path}: --{k.replace('_', '-')} differs from the "
                                 f"finished rows ({prev['args'].get(k)!r}); use another --out")
        rows = prev["rows"]
        runs_log = prev.get("runs", [])
    done = {r["item"] for r in rows}
    gguf = default_gguf_path()
    sha = hashlib.sha256(gguf.read_bytes()).hexdigest()
    cpu = next((ln.split(":", 1)[1].strip() for ln in subprocess.run(
        ["lscpu"], check=False, capture_output=True, text=True).stdout.splitlines()
        if ln.startswith("Model name")), platform.processor())
    runs_log.append({"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu": cpu,
                     "cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg()),
                     "items_done_before": sorted(done), "niceness": os.nice(0)})
    meta = {"gguf": gguf.name, "gguf_sha256": sha}

    def save() -> None:
        rows.sort(key=lambda r: r["item"])
        out_path.write_text(json.dumps({"args": {k: getattr(args, k) for k in keys}
                                        | {"n": max(args.n, len(rows))}, **meta,
                                        "runs": runs_log, "rows": rows}, indent=1))

    items = [it.truncated(args.distractors, seed=0) for it in load_hotpotqa(args.data, n=args.n)]
    todo = [i for i in range(len(items)) if i not in done]
    if not todo:
        print("all", len(items), "items done")
    model = attrlens.load_model() if todo else None
    cache = CallCache(Path(args.cache or out_path.with_suffix(".calls.sqlite")))
    with LlamaServer(n_ctx=4096, n_threads=args.threads) if todo else _Null() as srv:
        be = OpenAIBackend(srv.base_url, srv.model_name, cache=cache, concurrency=1,
                           timeout=600.0) if todo else None
        for idx in todo:
            if args.deadline_s is not None and time.perf_counter() - t_start > args.deadline_s:
                print(f"deadline: stopping before item {idx}; rerun to resume", flush=True)
                break
            it = items[idx]
            t_item = time.perf_counter()
            prompt, spans = it.prompt()
            out = be.chat([{"role": "user", "content": prompt}],
                          max_tokens=args.max_new_tokens, temperature=0.0).text
            base = {"model": model, "granularity": "span", "spans": spans, "output": out,
                    "target_backend": be}
            runs = {"served_loo": {"method": "loo", "route": "forced_tokens"}}
            for k in (1, 3, 5):
                runs[f"rope_lime_k{k}"] = {"method": "rope_lime", "k": k,
                                           "budget": args.rope_budget}
            runs["gsmile"] = {"method": "gsmile", "budget": args.gsmile_budget,
                              "max_new_tokens": args.max_new_tokens}  # (its regenerations)
            res = {}
            for name, kw in runs.items():
                t0 = time.perf_counter()
                attr = api.explain(prompt, **base, **kw, seed=args.seed)
                res[name] = {"scores": attr.scores.tolist(),
                             "api_calls": int(attr.cost.get("api_calls", 0)),
                             "cached_calls": int(attr.cost.get("cached_calls", 0)),
                             "value_calls": int(attr.cost.get("value_calls", 0)),
                             "wall_s": time.perf_counter() - t0}
            ref = np.asarray(res["served_loo"]["scores"])
            for r in res.values():
                rho = spearmanr(ref, r["scores"]).statistic
                r["spearman_vs_served_loo"] = None if not np.isfinite(rho) else float(rho)
            rows.append({"item": idx, "id": it.id,
                         "n_features": len(spans), "output": out,
                         "item_wall_s": time.perf_counter() - t_item,
                         "loadavg_end": list(os.getloadavg()), "methods": res})
            print(idx, len(spans), repr(out), {k: (v["api_calls"], round(v["wall_s"], 1),
                                                   v["spearman_vs_served_loo"])
                                               for k, v in res.items()}, flush=True)
            save()
    runs_log[-1]["loadavg_end"] = list(os.getloadavg())
    runs_log[-1]["wall_s"] = time.perf_counter() - t_start
    save()
    if not rows:
        return
    names = list(rows[0]["methods"])
    print(f"\n{len(rows)} items; medians (per-item values in {out_path})")
    print("method | served calls | wall s | Spearman vs served LOO (median, min, max)")
    for m in names:
        calls = np.median([r["methods"][m]["api_calls"] for r in rows])
        wall = np.median([r["methods"][m]["wall_s"] for r in rows])
        rhos = [r["methods"][m]["spearman_vs_served_loo"] for r in rows]
        rhos = [x for x in rhos if x is not None]
        print(f"{m} | {calls:g} | {wall:.1f} | {np.median(rhos):.2f}, {np.min(rhos):.2f}, "
              f"{np.max(rhos):.2f}")


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *a: object) -> None:
        return None


if __name__ == "__main__":
    main()
