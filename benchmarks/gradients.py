"""Benchmark: time and peak memory of the gradient/attention baselines on the embedded model,
beside Captum's LayerIntegratedGradients at equal steps (same path, baseline and rule).

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/gradients.py --tokens 40 200 \\
        [--methods ig grad_x_input ...] [--no-captum] [--json out.json]

Peak memory = the process's peak RSS above its RSS just before the call (sampled every
5 ms). Each row runs once (the model is warmed up by a first tiny call).
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time

import numpy as np
import psutil

import attrlens
from attrlens.api import prepare
from attrlens.registry import get_explainer

TEXT = ("The committee met on Tuesday to discuss the budget for the new library, and after a "
        "long debate about costs, staffing and opening hours, it agreed to ask the city for "
        "more money next spring. ")
OUTPUT = " The committee asked the city for more money."
METHODS = ("ig", "ig_avg", "grad_x_input", "attention", "attention_rollout", "bta", "bta_avg")


class Peak:
    """Peak RSS (MB) above the starting RSS while inside the block."""

    def __enter__(self) -> Peak:  # noqa: PYI034
        self.proc = psutil.Process()
        self.base = self.proc.memory_info().rss
        self.peak = self.base
        self.stop = False
        self.th = threading.Thread(target=self._run, daemon=True)
        self.th.start()
        return self

    def _run(self) -> None:
        while not self.stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        self.stop = True
        self.th.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.mb = (self.peak - self.base) / 2**20


def prompt_of(model, n_tokens: int) -> str:
    words = (TEXT * (n_tokens // 10 + 2)).split(" ")
    lo, hi = 1, len(words)
    while lo < hi:  # the longest word prefix with <= n_tokens tokens
        mid = (lo + hi + 1) // 2
        if len(model.tokenize(" ".join(words[:mid]))[0]) <= n_tokens:
            lo = mid
        else:
            hi = mid - 1
    return " ".join(words[:lo])


def run_method(model, prompt: str, method: str, **params):
    with Peak() as pk:
        t0 = time.perf_counter()
        a = attrlens.explain(prompt, model=model, method=method, output=OUTPUT, chat=False,
                             **params)
        wall = time.perf_counter() - t0
    return a, wall, pk.mb


def run_captum(model, prompt: str, steps: int):
    import torch
    from captum.attr import LayerIntegratedGradients

    inputs, _ = prepare(prompt, model=model, output=OUTPUT, chat=False)
    ids = np.concatenate([inputs.prompt_ids, inputs.output_ids])
    n_p = len(inputs.prompt_ids)
    owner = np.asarray(inputs.features.token_features())
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else model.mask_token_id
    base = ids.copy()
    base[:n_p][owner >= 0] = pad
    out = torch.as_tensor(inputs.output_ids)

    def forward(x):
        logits = model.model(input_ids=x).logits[:, n_p - 1:-1].float()
        return logits.log_softmax(-1).gather(-1, out[None, :, None].expand(len(x), -1, 1)
                                              )[..., 0].sum(-1)

    lig = LayerIntegratedGradients(forward, model.input_embeddings)
    with Peak() as pk:
        t0 = time.perf_counter()
        att = lig.attribute(torch.as_tensor(ids)[None], baselines=torch.as_tensor(base)[None],
                            n_steps=steps, method="riemann_middle")
        wall = time.perf_counter() - t0
    tokens = att[0, :n_p].sum(-1).detach().numpy().astype(float)
    scores = np.zeros(inputs.n_features)
    np.add.at(scores, owner[owner >= 0], tokens[owner >= 0])
    return scores, wall, pk.mb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, nargs="+", default=[40, 200])
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--steps", type=int, default=20, help="IG steps for the Captum comparison")
    ap.add_argument("--no-captum", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    import torch

    model = attrlens.load_model()
    get_explainer("ig")  # load the registry
    attrlens.explain("Hi.", model=model, method="grad_x_input", output=" Hello")  # warm-up
    rows = []
    print(f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS="
          f"{os.environ.get('OMP_NUM_THREADS')}, cpus {os.cpu_count()}", flush=True)
    for n in args.tokens:
        prompt = prompt_of(model, n)
        n_tok = len(model.tokenize(prompt)[0])
        for m in args.methods:
            a, wall, mb = run_method(model, prompt, m)
            rows.append({"tokens": n_tok, "method": m, "wall_s": wall, "peak_mb": mb,
                         "forwards": a.cost["model_forwards"]})
            print(json.dumps(rows[-1]), flush=True)
        if not args.no_captum:
            ours, wall, mb = run_method(model, prompt, "ig", steps=args.steps, baseline="pad",
                                        rule="middle")
            cap, cwall, cmb = run_captum(model, prompt, args.steps)
            diff = float(np.abs(ours.scores - cap).max())
            rows.append({"tokens": n_tok, "method": f"ig pad {args.steps} steps",
                         "wall_s": wall, "peak_mb": mb, "captum_wall_s": cwall,
                         "captum_peak_mb": cmb, "max_abs_diff": diff,
                         "max_abs_score": float(np.abs(cap).max())})
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
