"""SPEX's fit R² (``metadata.fit_r2``: the R² of its recovered interactions on the values it
queried), the quantity behind its "more effects than the design separates" warning (below
0.5), on games where the answer is known and on a real prompt.

- additive games v(z) = sum(z) of n = 100, 200, 230, 250, 300 and 1,000 features at the
  default budget (b = 6): dense first-order spectra that the design's 192 bins hold up to
  about n = 200; the Shapley scores should sum to n;
- a sparse game of 1,000 features (20 first-order effects, one pair, noise 0.01);
- the embedded model on a 23-word sentiment prompt (word features, default SPEX), where the
  warning should stay silent.

    .venv/bin/python benchmarks/spex_fit.py --out benchmarks/spex_fit.json
"""

from __future__ import annotations

import argparse
import json
import time
import warnings


def _run(fn, n: int, **kw) -> dict:
    import attrlens

    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        a = (attrlens.explain_game(fn, n, method="spex") if fn is not None
             else attrlens.explain(method="spex", **kw))
    md = a.extra["metadata"]
    return {"n_features": a.n_features, "b": md.get("b"), "fit_r2": md.get("fit_r2"),
            "unexplained_bins": md.get("unexplained_bins"),
            "sum_of_scores": float(a.scores.sum()), "value_calls": a.cost["value_calls"],
            "warned": any("could not separate" in str(w.message)
                          or "of the variance" in str(w.message) for w in seen),
            "wall_s": round(time.perf_counter() - t0, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100,200,230,250,300,1000")
    ap.add_argument("--skip-model", action="store_true")
    ap.add_argument("--out", default="benchmarks/spex_fit.json")
    args = ap.parse_args()
    import numpy as np
    import torch
    from scoring import machine

    res: dict = {"machine": machine(), "threads": torch.get_num_threads(),
                 "torch": torch.__version__, "additive": [], "sparse": None, "prompt": None}
    for n in (int(x) for x in args.sizes.split(",")):
        res["additive"].append(_run(lambda m: m.sum(1) * 1.0, n))
        print("additive", res["additive"][-1], flush=True)
    rng = np.random.default_rng(0)
    n = 1000
    w = np.zeros(n)
    w[rng.choice(n, 20, replace=False)] = rng.normal(size=20)
    noise = np.random.default_rng(1)
    res["sparse"] = _run(lambda m: m @ w + 2.0 * m[:, 0] * m[:, 1]
                         + 0.01 * noise.normal(size=len(m)), n)
    print("sparse", res["sparse"], flush=True)
    if not args.skip_model:
        prompt = ("The film was long and slow, but the actors were wonderful and the ending "
                  "made me cry in the best possible way. Sentiment:")
        res["prompt"] = {"text": prompt, "output": " positive", "seed": 0,
                         **_run(None, 0, prompt=prompt, output=" positive", chat=False)}
        print("prompt", res["prompt"], flush=True)
    with open(args.out, "w") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
