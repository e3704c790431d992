"""SPEX R² protocol (METHODS.md §5.2, scaled down) through ``attrlens evaluate``: SST-2 / DROP
items whose real passage length (features = words of the sentence / passage) falls in one of
SPEX's n-bins, every method at the SPEX budget C(P+1)2^b of that bin, one common game
(``--target logprob --method-masker replace``: log p(output | masked input), masked words
replaced by the mask token, as benchmarks/faithfulness.py), R² on uniform test masks.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/evaluate_spex.py \
        --data ../shared/data/sst2_dev_100.jsonl --bin 16-31 --b 4 --limit 2 \
        --n-test 300 --out out/spex_sst2_16_31_b4

Resumable (rerun the same command); the table is DIR/summary.md.
"""

from __future__ import annotations

import argparse

from attrlens.evaluation.datasets import load_items
from attrlens.evaluation.runner import evaluate
from attrlens.registry import get_explainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default="../shared/data/sst2_dev_100.jsonl")
    p.add_argument("--bin", default="16-31", help="n-feature bin lo-hi (SPEX's bins)")
    p.add_argument("--b", type=int, default=4, help="SPEX sparsity parameter b")
    p.add_argument("--limit", type=int, default=2, help="items of the bin (first in file order)")
    p.add_argument("--methods", default="spex,proxyspex,lime,kernel_shap,banzhaf")
    p.add_argument("--metrics", default="r2,lds,topk")
    p.add_argument("--n-test", type=int, default=300)
    p.add_argument("--target", default="logprob")
    p.add_argument("--method-masker", default="replace")
    p.add_argument("--smallest-first", action="store_true",
                   help="take the bin's shortest items first")
    p.add_argument("--out", required=True)
    a = p.parse_args()
    lo, hi = (int(x) for x in a.bin.split("-"))
    items = [it for it in load_items(a.data) if it.spans and lo <= len(it.spans) <= hi]
    if a.smallest_first:  # the cheapest items of the bin first (a small, finishable run)
        items = sorted(items, key=lambda it: len(it.spans))
    items = items[: a.limit]
    # the SPEX budget at the bin's largest n (C = 3, t = 5: the same for the whole bin here)
    budget = get_explainer("spex")(b=a.b).default_budget(hi)
    per = {"spex": {"b": a.b}, "proxyspex": {"budget": budget},
           "lime": {"num_samples": budget}, "kernel_shap": {"budget": budget},
           "banzhaf": {"budget": budget}}
    methods = [(m, per.get(m, {})) for m in a.methods.split(",")]
    print(f"{len(items)} items, n = {[len(it.spans) for it in items]}, budget {budget}")
    s = evaluate(items, methods=methods, metrics=a.metrics, out=a.out, n_test=a.n_test,
                 target=a.target, method_masker=a.method_masker)
    print(s.markdown())


if __name__ == "__main__":
    main()
