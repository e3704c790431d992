"""Benchmark 2: faithfulness R² of SPEX, ProxySPEX and marginal baselines on LLM games.

METHODS.md §5.2 / §3(d): for each explicand, 1000 held-out masks drawn uniformly from
{0,1}^n (seed 0); every method gets the same number of model evaluations as SPEX at b
(C (P+1) 2^b); R² = 1 - Σ(v - v̂)² / Σ(v - v̄)² of each method's surrogate on the test set.

Value functions (word features, masked words replaced by the mask token, as SPEX does):
* SST-2: the embedded SmolLM2-135M-Instruct is asked whether a review is positive or
  negative; its own answer is whichever of "Positive"/"Negative" it rates higher on the
  full review; v(z) = log p(answer | review with the words outside z masked).
* DROP: question + passage; the model's greedy answer (up to 8 tokens, first line) is the
  explained output; v(z) = Σ_t log p(o_t | x(z), o_<t) (teacher forced) over passage words.

One memoising Game per item is shared by all methods and the test set, so every distinct
mask is evaluated once; evaluations are batched with prefix reuse by the ScoringEngine.

    .venv/bin/python benchmarks/faithfulness.py --sst2 10 --drop 5 --bs 4,6
    .venv/bin/python benchmarks/faithfulness.py --sst2 4 --sst2-max-words 12 --drop 1 \\
        --drop-max-words 40 --bs 4 --threads 1 --md benchmarks/RESULTS_faithfulness.md
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / ".." / "shared" / "data"  # the shared data next to the checkout
METHODS = ("spex", "proxyspex", "lime", "kernel_shap", "banzhaf")

SST2_INSTRUCTION = (
    "Is the sentiment of this movie review positive or negative? Answer with one word.\n\n"
    "Review: "
)
DROP_INSTRUCTION = (
    "Answer the question about the passage with the shortest possible answer "
    "(a number, a name or a few words).\n\nQuestion: {question}\n\nPassage: "
)


def build_item(model: Any, instruction: str, body: str, *, output: str | None,
               candidates: tuple[str, ...] | None, max_new_tokens: int) -> dict[str, Any]:
    """A Game over the words of ``body`` (the rest of the prompt is frozen), as api.explain
    builds it: chat prompt -> tokens -> word features -> replace masker -> logprob target."""
    from attrlens.games import Game
    from attrlens.scoring.engine import ScoringEngine, gather_logprobs, unmasked_input
    from attrlens.scoring.targets import make_target
    from attrlens.text.mask import Masker
    from attrlens.text.prompt import build_prompt
    from attrlens.text.segment import char_segments, segment

    pr = build_prompt([{"role": "user", "content": instruction + body}], model, chat=True)
    ids, offsets = model.tokenize(pr.text, add_special_tokens=False)
    start = pr.text.index(body, pr.text.index(instruction[:20]))
    # the body's words are the features; the rest of the user's text stays (frozen)
    # explainable text, as explain's span granularity has it: the body's first token also
    # holds the blank before it
    spans = [sp[0] for sp in char_segments(pr.text, [(start, start + len(body))], "word")]
    feats = segment(pr.text, pr.regions, offsets, "span", spans=spans)
    if candidates is not None:
        # the model's own one-word answer: the candidate it rates higher on the full prompt
        scores = []
        for cand in candidates:
            cid, _ = model.tokenize(cand)
            eng = ScoringEngine(model, ids, cid)
            lp = eng.run([unmasked_input(np.asarray(ids))], gather_logprobs)[0]
            scores.append(float(np.sum(lp)))
        output = candidates[int(np.argmax(scores))]
    if output is None:
        out_ids = model.generate(ids, max_new_tokens=max_new_tokens)
        text = model.decode(out_ids)
        first = text.strip().split("\n")[0].strip() or text.strip()
        output = first
    out_ids, _ = model.tokenize(output)
    engine = ScoringEngine(model, ids, out_ids)
    target = make_target("logprob", engine)
    masker = Masker("replace", ids, feats, mask_token_id=model.mask_token_id)

    def value_fn(masks: np.ndarray) -> np.ndarray:
        return target.aggregate(target.per_token(masker.apply(masks)))

    game = Game(value_fn, len(feats), batch_size=256)
    return {"game": game, "engine": engine, "n": len(feats), "output": output,
            "n_prompt_tokens": len(ids), "labels": feats.labels}


def run_item(item: dict[str, Any], *, bs: list[int], methods: list[str], n_test: int,
             seed: int) -> list[dict[str, Any]]:
    import attrlens
    from attrlens.evaluation.faithfulness import faithfulness_r2, uniform_test_masks
    from attrlens.solvers.fourier import n_queries

    game, n = item["game"], item["n"]
    test = uniform_test_masks(n, n_test, seed=0)
    t0 = time.perf_counter()
    calls0 = game.n_calls
    y = game(test)
    t_test = time.perf_counter() - t0
    rows = []
    base = {"item": item["name"], "n": n, "output": item["output"],
            "test_calls": game.n_calls - calls0, "test_s": round(t_test, 2),
            "test_var": float(np.var(y))}
    print(f"  test set: {base['test_calls']} evaluations in {t_test:.1f} s "
          f"({base['test_calls'] / max(t_test, 1e-9):.1f}/s), var(v) = {base['test_var']:.3f}",
          flush=True)
    for b in bs:
        budget = n_queries(n, b)
        for method in methods:
            before = game.n_calls
            t1 = time.perf_counter()
            attr = attrlens.explain_game(game, n, method=method, budget=budget, seed=seed)
            wall = time.perf_counter() - t1
            f = faithfulness_r2(attr, game, test_masks=test)
            row = {**base, "b": b, "budget": budget, "method": method, "r2": f.r2,
                   "kind": f.kind, "new_calls": game.n_calls - before, "wall_s": round(wall, 2)}
            rows.append(row)
            print(f"  b={b} budget={budget:5d} {method:12s} R2={f.r2:7.3f} "
                  f"new evaluations={row['new_calls']:5d} wall={wall:6.1f}s", flush=True)
    return rows


def summarise(rows: list[dict[str, Any]]) -> list[str]:
    """Markdown table: per dataset x b x method, median R² [IQR], mean, items."""
    lines = ["| data | b | budget (median) | method | median R² | IQR | mean R² | items |",
             "|---|---|---|---|---|---|---|---|"]
    keys = sorted({(r["data"], r["b"]) for r in rows})
    for data, b in keys:
        sub = [r for r in rows if r["data"] == data and r["b"] == b]
        budgets = statistics.median(r["budget"] for r in sub)
        for method in METHODS:
            vals = [r["r2"] for r in sub if r["method"] == method]
            if not vals:
                continue
            q = np.percentile(vals, [25, 50, 75])
            lines.append(f"| {data} | {b} | {budgets:.0f} | {method} | {q[1]:.3f} | "
                         f"{q[0]:.3f}–{q[2]:.3f} | {np.mean(vals):.3f} | {len(vals)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sst2", type=int, default=10, help="SST-2 sentences")
    ap.add_argument("--sst2-min-words", type=int, default=8)
    ap.add_argument("--sst2-max-words", type=int, default=1000)
    ap.add_argument("--drop", type=int, default=5, help="DROP items")
    ap.add_argument("--drop-min-words", type=int, default=100)
    ap.add_argument("--drop-max-words", type=int, default=300,
                    help="passages longer than this are cut to their first N words")
    ap.add_argument("--bs", default="4,6", help="SPEX sparsity exponents b (budgets)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = default)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--jsonl", default="", help="append per-method rows here")
    ap.add_argument("--md", default="", help="write the summary table here")
    args = ap.parse_args(argv)

    import torch

    import attrlens

    if args.threads:
        torch.set_num_threads(args.threads)
    bs = [int(x) for x in args.bs.split(",") if x]
    methods = [m for m in args.methods.split(",") if m]
    t_load = time.perf_counter()
    model = attrlens.load_model(dtype=args.dtype)
    print(f"model loaded in {time.perf_counter() - t_load:.1f} s; torch threads "
          f"{torch.get_num_threads()}", flush=True)
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()

    sst = [json.loads(x) for x in (DATA / "sst2_dev_100.jsonl").read_text().splitlines() if x]
    sst = [r for r in sst
           if args.sst2_min_words <= len(r["sentence"].split()) <= args.sst2_max_words]
    for r in sst[: args.sst2]:
        item = build_item(model, SST2_INSTRUCTION, r["sentence"], output=None,
                          candidates=("Positive", "Negative"), max_new_tokens=1)
        item["name"] = f"sst2:{r['dev_index']}"
        print(f"{item['name']} n={item['n']} answer={item['output']!r} "
              f"(label {r['label_text']})", flush=True)
        for row in run_item(item, bs=bs, methods=methods, n_test=args.n_test, seed=args.seed):
            rows.append({**row, "data": "sst2"})

    drop = [json.loads(x) for x in (DATA / "drop_dev_50.jsonl").read_text().splitlines() if x]
    drop = [r for r in drop if len(r["passage"].split()) >= args.drop_min_words]
    for r in drop[: args.drop]:
        words = r["passage"].split()
        passage = " ".join(words[: args.drop_max_words])
        item = build_item(model, DROP_INSTRUCTION.format(question=r["question"]), passage,
                          output=None, candidates=None, max_new_tokens=8)
        item["name"] = f"drop:{r['source_line']}"
        print(f"{item['name']} n={item['n']} (of {len(words)} words) answer="
              f"{item['output']!r} gold={r['answers'][:2]}", flush=True)
        for row in run_item(item, bs=bs, methods=methods, n_test=args.n_test, seed=args.seed):
            rows.append({**row, "data": "drop"})

    total = time.perf_counter() - t_all
    print(f"total {total:.0f} s", flush=True)
    if args.jsonl:
        with open(args.jsonl, "a", encoding="utf-8") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
    table = summarise(rows)
    print("\n".join(table))
    if args.md:
        Path(args.md).write_text("\n".join(table) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
