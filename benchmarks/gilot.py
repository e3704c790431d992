"""GiLOT benchmark on the embedded model: time split (model vs OT), tokens, own vs shared.

    .venv/bin/python benchmarks/gilot.py [--beams 10] [--horizon 10] [--repeats 3]
        [--n-prompts 10] [--time-budget 600] [--out benchmarks/RESULTS_gilot.md]

Part 1: one explanation (word granularity) of a ~20-token and a ~60-token prompt (user
content) for beam_mode own and shared: wall time, model time, OT time (vocabulary
compression + batched solver), forwards, tokens processed vs the minimum the method needs,
and the raw forward throughput of the same model on a batch of the same size for scale.
Part 2: Spearman correlation of own-beam vs shared-beam attributions over Alpaca prompts
(as many of the first ``--n-prompts`` as fit in ``--time-budget`` seconds).
Timings are medians over ``--repeats`` runs (the machine is shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import attrlens

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT / ".." / "shared" / "data"  # the shared data next to the checkout
ALPACA = SHARED_DATA / "alpaca_50.jsonl"


def alpaca_prompts() -> list[str]:
    rows = [json.loads(line) for line in ALPACA.read_text().splitlines() if line.strip()]
    return [r["instruction"] + ("\n" + r["input"] if r["input"] else "") for r in rows]


def pick_prompts(model, prompts: list[str]) -> dict[str, str]:
    """A ~20-token prompt (the Alpaca prompt closest to 20 content tokens) and a ~60-token
    one (Alpaca records joined in file order until >= 55 content tokens)."""
    n = [len(model.tokenize(p)[0]) for p in prompts]
    short = prompts[int(np.argmin([abs(k - 20) for k in n]))]
    parts, total = [], 0
    for p, k in zip(prompts, n):
        parts.append(p)
        total += k
        if total >= 55:
            break
    return {"~20 tokens": short, "~60 tokens": "\n\n".join(parts)}


def raw_throughput(model, n_rows: int, length: int) -> float:
    """Tokens/s of one plain batched forward of (n_rows, length) random tokens."""
    import torch

    ids = torch.randint(100, 1000, (n_rows, length))
    with torch.inference_mode():
        model.decoder(input_ids=ids[:1, :8])  # warm-up
        t0 = time.perf_counter()
        model.decoder(input_ids=ids, attention_mask=torch.ones_like(ids))
        dt = time.perf_counter() - t0
    return n_rows * length / dt


def run_one(model, prompt: str, mode: str, b: int, J: int, solver: str = "auto") -> dict:
    t0 = time.perf_counter()
    a = attrlens.explain(prompt, model=model, method="gilot", beams=b, horizon=J, beam_mode=mode,
                         solver=solver, max_new_tokens=1)
    wall = time.perf_counter() - t0
    meta = a.extra["metadata"]
    return {
        "scores": a.scores,
        "n_features": a.n_features,
        "wall_s": wall,
        "gilot_s": meta["gilot_wall_s"],
        "model_s": meta["model_s"],
        "ot_s": meta["distance_s"],
        "solver_s": meta["ot_solver_s"],
        "compress_s": meta["compress_s"],
        "forwards": a.cost["model_forwards"],
        "tokens": a.cost["tokens_processed"],
        "tokens_min": meta["tokens_min"],
        "beam_mass_last": meta["beam_mass"][-1],
        "union": meta.get("union_size_mean"),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--beams", type=int, default=10)
    ap.add_argument("--horizon", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n-prompts", type=int, default=10)
    ap.add_argument("--time-budget", type=float, default=600.0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "RESULTS_gilot.md"))
    ap.add_argument("--skip-timing", action="store_true")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: fastest on the shared, oversubscribed machine)")
    args = ap.parse_args(argv)
    import torch
    from scipy.stats import spearmanr

    torch.set_num_threads(args.threads)

    b, J = args.beams, args.horizon
    model = attrlens.load_model()
    prompts = alpaca_prompts()
    command = f"`.venv/bin/python benchmarks/gilot.py {' '.join(argv or sys.argv[1:])}`"
    lines = [
        "# GiLOT benchmark (embedded SmolLM2-135M-Instruct, CPU)",
        "",
        f"Command: {command.replace(' `', '`')}",
        "",
        (
            f"Machine: {platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s) (shared 2-core machine, noisy: medians "
            f"quoted). b = {b}, J = {J}, word granularity, attention_off masker, OT distance "
            f"(solver auto = exact network simplex on CPU) on the top-100 union, chat "
            f"template on (template tokens frozen)."
        ),
        "",
    ]
    if not args.skip_timing:
        lines += [
            "## Time per explanation",
            "",
            (
                "| prompt | features | mode | wall s | model s | OT s (compress + solver) "
                "| OT share | forwards | tokens processed | tokens min | ratio | model tok/s "
                "| raw fwd tok/s | beam mass j=J |"
            ),
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for label, prompt in pick_prompts(model, prompts).items():
            n_tok = len(model.tokenize(prompt)[0])
            L = len(model.tokenize(model.render_chat([{"role": "user", "content": prompt}]))[0])
            thr = raw_throughput(model, 16, L)
            for mode, solver in (("own", "auto"), ("shared", "auto"), ("shared", "ipot")):
                reps = args.repeats if solver == "auto" else 1
                runs = [run_one(model, prompt, mode, b, J, solver) for _ in range(reps)]
                med = {k: statistics.median(r[k] for r in runs)
                       for k in ("gilot_s", "model_s", "ot_s", "solver_s", "compress_s")}
                r0 = runs[0]
                share = med["ot_s"] / max(med["gilot_s"], 1e-12)
                lines.append(
                    f"| {label} ({n_tok} tok, {L} with template) | {r0['n_features']} | {mode}"
                    f"{'' if solver == 'auto' else ', IPOT 1000 it'} | "
                    f"{med['gilot_s']:.1f} | {med['model_s']:.1f} | {med['ot_s']:.2f} "
                    f"({med['compress_s']:.2f} + {med['solver_s']:.2f}) | {100 * share:.1f}% | "
                    f"{r0['forwards']} | {r0['tokens']} | {r0['tokens_min']} | "
                    f"{r0['tokens'] / max(r0['tokens_min'], 1):.2f} | "
                    f"{r0['tokens'] / max(med['model_s'], 1e-9):.0f} | {thr:.0f} | "
                    f"{r0['beam_mass_last']:.3f} |"
                )
                print(lines[-1], flush=True)
        lines += [
            "",
            (
                f"Medians of {args.repeats} runs (IPOT rows: 1 run; the solver 'auto' picks "
                "the exact network simplex on CPU, IPOT on an accelerator). wall s = GiLOT's "
                "own work (beam searches, mixtures, distances), without the greedy display "
                "output; model s = forwards + beam search + mixtures; tokens min = each "
                "input's changed prompt suffix + the beam tokens the method needs (own: b per "
                "step; shared: the distinct nodes of the beams' prefix tree); model tok/s = "
                "tokens processed / model s; raw fwd tok/s = one plain forward of 16 x L "
                "tokens of the same model (the machine's limit for this model)."
            ),
            "",
        ]

    lines += ["## Own vs shared beams (Spearman over Alpaca prompts)", ""]
    rhos, rows = [], []
    t_start = time.perf_counter()
    for i, prompt in enumerate(prompts[: args.n_prompts]):
        if time.perf_counter() - t_start > args.time_budget:
            break
        own = run_one(model, prompt, "own", b, J)
        shared = run_one(model, prompt, "shared", b, J)
        if own["n_features"] < 3:
            continue
        rho = float(spearmanr(own["scores"], shared["scores"]).statistic)
        rhos.append(rho)
        rows.append(f"| {i} | {own['n_features']} | {rho:.3f} | {own['gilot_s']:.1f} | "
                    f"{shared['gilot_s']:.1f} |")
        print(rows[-1], flush=True)
    elapsed = time.perf_counter() - t_start
    lines += ["| Alpaca record | features | Spearman own vs shared | own s | shared s |",
              "|---|---|---|---|---|", *rows, ""]
    lines.append(
        f"Mean Spearman over {len(rhos)} prompts: **{np.mean(rhos):.3f}** (median "
        f"{np.median(rhos):.3f}, min {np.min(rhos):.3f}); {elapsed:.0f} s for this part"
        + (f" (stopped after the {args.time_budget:.0f} s budget)"
           if len(rows) < args.n_prompts else "")
        + "."
    )
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
