"""``attrlens evaluate``: run methods over a data set with the papers' metrics (resumable,
in-process or on Ray). A thin front end of :func:`attrlens.evaluate`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from ..evaluation.runner import BACKENDS, EVAL_MASKERS, METRICS
from .common import add_chat_template_option, chat_template_kwargs


def add_parser(sub: Any) -> argparse.ArgumentParser:
    p = sub.add_parser("evaluate", help="evaluate methods over a data set (MoRF/LeRF/ABPC, "
                                        "R², top-k removal, supporting facts)")
    add_arguments(p)
    p.set_defaults(func=run)
    return p


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``attrlens evaluate``."""
    p.add_argument("data", help="JSONL data set (prompt/messages records, or a shared "
                                "Alpaca/SST-2/DROP/MMLU/HotpotQA file)")
    p.add_argument("--methods", required=True,
                   help="comma-separated methods, parameters as name:key=value "
                        "(e.g. loo,lime:num_samples=64)")
    p.add_argument("--metrics", default="abpc",
                   help=f"comma-separated metrics from {','.join(METRICS)} (default abpc)")
    p.add_argument("--out", required=True, help="output directory, new or empty (a run's is resumed)")
    p.add_argument("--limit", type=int, default=None, help="first N items only")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backend", choices=BACKENDS, default="local")
    p.add_argument("--workers", type=int, default=1, help="Ray actors (backend ray)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: local Ray)")
    p.add_argument("--model", default=None, help="local model path or Hub id in the local Hugging Face cache (default: embedded)")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the modeling code a model directory ships (read it first)")
    add_chat_template_option(p)
    p.add_argument("--granularity", default="word")
    p.add_argument("--dtype", default="auto",
                   help="auto (the faster of float32/bfloat16 measured here; bf16/fp16 on GPUs)"
                        " | float32 (records comparable across machines and backends) | "
                        "bfloat16 | float16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--eval-masker", choices=EVAL_MASKERS, default="attention_off",
                   help="masking for MoRF/LeRF (GiLOT: attention_off)")
    p.add_argument("--n-test", type=int, default=1000, help="R² test masks")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--n-lds", type=int, default=100, help="LDS held-out ablations")
    p.add_argument("--target", default=None,
                   help="value explained by every method (default: each method's own)")
    p.add_argument("--method-masker", default=None,
                   help="explainers' masking for every method (default: each method's own)")
    p.add_argument("--target-url", default=None,
                   help="served model API root (with --target-model): its answer is explained")
    p.add_argument("--target-model", default=None, help="served model name")
    p.add_argument("--no-report", action="store_true",
                   help="skip the per-item pages (items/) and index.html")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")


def run(args: argparse.Namespace) -> int:
    """Run :func:`attrlens.evaluate` from parsed arguments; print where the tables are."""
    from ..evaluation.runner import evaluate

    summary = evaluate(
        args.data, methods=args.methods, metrics=args.metrics, model=args.model, out=args.out,
        limit=args.limit, seed=args.seed, backend=args.backend, workers=args.workers,
        address=args.address, granularity=args.granularity, masker=args.eval_masker,
        n_test=args.n_test, max_new_tokens=args.max_new_tokens, progress=not args.quiet,
        n_lds=args.n_lds, target=args.target, method_masker=args.method_masker,
        target_url=args.target_url, target_model=args.target_model, report=not args.no_report,
        trust_remote_code=args.trust_remote_code, device=args.device, dtype=args.dtype,
        chat_template_kwargs=chat_template_kwargs(args), template_date=args.template_date,
    )
    failed = sum(len(v) for v in summary.failed.values())
    print(f"{summary.computed - failed} records computed, {summary.skipped} resumed"
          + (f", {failed} failed (the reasons are in summary.md; a rerun tries them again)"
             if failed else "")
          + f"; tables in {args.out}/summary.md and {args.out}/summary.json"
          + ("" if args.no_report else f"; pages linked from {args.out}/index.html"))
    if failed and summary.computed == failed and not summary.skipped:
        print("attrlens: error: every record failed (nothing to compare); the first reason: "
              + next(iter(next(iter(summary.failed.values())).values())), file=sys.stderr)
        return 1
    return 0
