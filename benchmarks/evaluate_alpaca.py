"""GiLOT Table 1 protocol (scaled down): MoRF / LeRF / ABPC on Alpaca prompts, word features,
the embedded model, fixed-output variant (mean-NLL change), attention_off evaluation masking.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/evaluate_alpaca.py --limit 5 \
        --methods loo,lime:num_samples=128,kernel_shap:budget=128 --out out/eval_alpaca5

Resumable (rerun the same command to finish a killed run); the table is DIR/summary.md.
"""

from __future__ import annotations

import argparse

from attrlens.evaluation.runner import evaluate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/alpaca_50.jsonl")
    p.add_argument("--limit", type=int, default=5)
    p.add_argument("--methods", default="loo,lime:num_samples=128,kernel_shap:budget=128")
    p.add_argument("--metrics", default="morf,lerf,abpc")
    p.add_argument("--eval-masker", default="attention_off")
    p.add_argument("--max-new-tokens", type=int, default=16)
    p.add_argument("--backend", default="local")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--out", default="out/eval_alpaca5")
    a = p.parse_args()
    s = evaluate(a.data, methods=a.methods, metrics=a.metrics, out=a.out, limit=a.limit,
                 masker=a.eval_masker, max_new_tokens=a.max_new_tokens, backend=a.backend,
                 workers=a.workers)
    print(s.markdown())


if __name__ == "__main__":
    main()
