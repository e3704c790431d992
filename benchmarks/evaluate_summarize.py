"""The paper-style table of a (possibly unfinished) ``attrlens evaluate`` run directory, from
its records.jsonl alone: mean [95% bootstrap CI] per method and metric over the items each
method finished, the n-bins and paired tests (on the items both methods finished).

    .venv/bin/python benchmarks/evaluate_summarize.py out/gilot_t1 [more dirs merged ...]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from attrlens.evaluation.runner import summarize_records
from attrlens.evaluation.store import ResultsStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--metrics", default=None, help="comma-separated (default: all recorded)")
    a = p.parse_args()
    recs = [r for d in a.dirs for r in ResultsStore(d).records()]
    methods = list(dict.fromkeys(r["label"] for r in recs))
    metrics = (a.metrics.split(",") if a.metrics else
               list(dict.fromkeys(m for r in recs for m in r["metrics"])))
    first = recs[0]
    settings = {"data": ", ".join(a.dirs), "model_id": first["model"]["id"],
                "seed": first["seed"], **{k: v for k, v in first["eval"].items()
                                          if k != "metrics"}}
    items = {r["item_id"] for r in recs}
    s = summarize_records(recs, methods, metrics, out=Path(a.dirs[0]), settings=settings,
                          n_items=len(items))
    print(s.markdown())
    print(f"model sha256: {first['model']['sha256']}; records: {len(recs)}")


if __name__ == "__main__":
    main()
