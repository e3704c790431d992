"""The paper-style table of a (possibly unfinished) ``attrlens evaluate`` run directory, from
its records.jsonl alone: mean [95% bootstrap CI] per method and metric over the items each
method finished, the n-bins and paired tests (on the items both methods finished).

    .venv/bin/python benchmarks/evaluate_summarize.py out/gilot_t1 [more dirs merged ...] \
        [--export benchmarks/evaluate_gilot_t1.json]

``--export`` writes the records without their attributions (item, method, parameters, model,
settings, metrics, explained output, cost) as one JSON file to keep beside the results.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from attrlens.evaluation.runner import summarize_records
from attrlens.evaluation.store import ResultsStore


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dirs", nargs="+")
    p.add_argument("--metrics", default=None, help="comma-separated (default: all recorded)")
    p.add_argument("--export", default=None, help="write the records (no attributions) here")
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
    if a.export:
        keep = ("item_id", "label", "params", "resolved_params", "seed", "model", "eval",
                "n_features", "bin", "metrics", "output_text", "cost", "explain_s", "key")
        rows = [{k: r.get(k) for k in keep} for r in recs]
        Path(a.export).write_text(json.dumps({"dirs": a.dirs, "records": rows}, indent=1,
                                             sort_keys=True) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
