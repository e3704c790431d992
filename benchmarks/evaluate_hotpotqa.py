"""HotpotQA supporting facts through ``attrlens evaluate`` (METHODS.md §5.5, scaled down):
context sentences are the features, the gold supporting facts the labels; AUROC,
R-precision (P@|G|), Recall@2 and MRR of each method's scores.

Each item keeps its gold paragraphs plus ``--distractors`` random other ones (seed 0), as
benchmarks/closed_models.py does. With ``--serve`` the embedded SmolLM2 GGUF is served by
``attrlens.models.server.LlamaServer`` on 127.0.0.1: its greedy answer (8 tokens) is the
explained output of every method, gsmile queries it, and the local methods (loo, lime, spex,
rope_lime) explain that same answer on the local SmolLM2 (rope_lime as its surrogate).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/evaluate_hotpotqa.py --limit 10 \
        --serve --out out/hotpotqa

Resumable (rerun the same command); the table is DIR/summary.md.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

from attrlens.evaluation.datasets import EvalItem, resolve_data_path
from attrlens.evaluation.hotpotqa import load_hotpotqa
from attrlens.evaluation.runner import evaluate

METHODS = ("loo,lime:num_samples=64,spex:b=3,rope_lime:budget=64,gsmile:budget=64")


def items(path: str, limit: int, distractors: int) -> list[EvalItem]:
    out = []
    for h in load_hotpotqa(resolve_data_path(path), n=limit):
        t = h.truncated(distractors, seed=0)
        text, spans = t.prompt()
        out.append(EvalItem(id=f"hotpotqa-{h.dev_index}", prompt=text, granularity="span",
                            spans=tuple(spans), gold=tuple(t.gold),
                            meta={"kind": "hotpotqa", "answer": h.answer,
                                  "distractors": distractors}))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/hotpotqa_dev_distractor_100.jsonl")
    p.add_argument("--limit", type=int, default=10)
    p.add_argument("--distractors", type=int, default=1)
    p.add_argument("--methods", default=METHODS)
    p.add_argument("--metrics", default="auroc,r_precision,recall_at_2,mrr")
    p.add_argument("--max-new-tokens", type=int, default=8)
    p.add_argument("--serve", action="store_true", help="serve the embedded GGUF (gsmile)")
    p.add_argument("--out", default="out/hotpotqa")
    a = p.parse_args()
    data = items(a.data, a.limit, a.distractors)
    print(f"{len(data)} items, n = {[len(it.spans or ()) for it in data]}")
    with contextlib.ExitStack() as stack:
        kw = {}
        if a.serve:
            from attrlens.models.server import LlamaServer

            srv = stack.enter_context(LlamaServer(n_ctx=4096, n_threads=1, n_parallel=1))
            kw = {"target_url": srv.base_url, "target_model": srv.model_name}
        s = evaluate(data, methods=a.methods, metrics=a.metrics, out=Path(a.out),
                     max_new_tokens=a.max_new_tokens, **kw)
    print(s.markdown())


if __name__ == "__main__":
    main()
