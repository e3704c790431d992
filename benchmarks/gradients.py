"""Benchmark: time and peak memory of the gradient/attention baselines on the embedded model,
beside Captum at equal steps (same path, baseline and rule), each measurement in a fresh
subprocess so that peak RSS is clean.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/gradients.py --tokens 40 200 1000 \\
        [--methods ig grad_x_input ...] [--compare-steps 8] [--timeout 300] [--json out.json]

Rows:
* ``ours <method>``: ``attrlens.explain(..., method=<method>)`` at its defaults.
* ``ours ig pad``: IG with the pad-token baseline on the prompt tokens, midpoint rule,
  ``--compare-steps`` steps (the Captum comparison).
* ``captum LIG summed``: ``LayerIntegratedGradients`` on the input embeddings of a forward
  returning ``sum_t log p(o_t)`` (one target, full logits), ``riemann_middle``.
* ``captum LLM wrapper``: ``LLMGradientAttribution(LayerIntegratedGradients(model,
  model.model.embed_tokens), tokenizer)`` with ``TextTokenInput`` (one IG per output token,
  full logits each), the same baseline ids and rule; its ``seq_attr`` is the sum over output
  tokens, i.e. IG of the same objective.

Peak memory: ``peak_mb`` = peak RSS above the RSS before the call (sampled every 5 ms, the
model loaded and warmed up); ``maxrss_mb`` = the subprocess's ``ru_maxrss`` (whole process,
model included). A row that runs past ``--timeout`` is killed and reported as a lower bound
(``timed_out``); the Captum LLM wrapper reports its per-output-token times as it goes, so its
full time is also extrapolated. A row whose RSS passes ``--mem-cap-mb`` is killed too.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import threading
import time

import numpy as np
import psutil

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


def _emit(row: dict) -> None:
    print("ROW " + json.dumps(row), flush=True)


def _scores_file(path: str | None, scores: np.ndarray) -> None:
    if path:
        np.save(path, np.asarray(scores, dtype=np.float64))


# ---- child: one measurement ------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    import torch

    import attrlens
    from attrlens.api import prepare

    model = attrlens.load_model(dtype="float32")
    attrlens.explain("Hi.", model=model, method="grad_x_input", output=" Hello")  # warm-up
    prompt = prompt_of(model, args.n)
    n_tok = len(model.tokenize(prompt)[0])
    row = {"tokens": n_tok, "kind": args.kind, "method": args.method, "steps": args.steps,
           "threads": torch.get_num_threads()}
    _emit({**row, "status": "started"})
    if args.kind == "ours":
        params = {} if args.steps is None else {"steps": args.steps}
        if args.pad:
            params.update(baseline="pad", rule="middle")
        if args.checkpoint:
            params["checkpoint"] = args.checkpoint
            row["checkpoint"] = args.checkpoint
        with Peak() as pk:
            t0 = time.perf_counter()
            a = attrlens.explain(prompt, model=model, method=args.method, output=OUTPUT,
                                 chat=False, **params)
            wall = time.perf_counter() - t0
        _scores_file(args.scores, a.scores)
        _emit({**row, "status": "done", "wall_s": wall, "peak_mb": pk.mb,
               "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "forwards": a.cost["model_forwards"]})
        return
    from captum.attr import LayerIntegratedGradients

    inputs, _ = prepare(prompt, model=model, output=OUTPUT, chat=False)
    n_p = len(inputs.prompt_ids)
    owner = np.asarray(inputs.features.token_features())
    tok = model.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else model.mask_token_id
    hf = model.model
    out = torch.as_tensor(inputs.output_ids)
    if args.kind == "captum_lig":
        ids = np.concatenate([inputs.prompt_ids, inputs.output_ids])
        base = ids.copy()
        base[:n_p][owner >= 0] = pad

        def forward(x):
            logits = hf(input_ids=x).logits[:, n_p - 1:-1].float()
            return logits.log_softmax(-1).gather(
                -1, out[None, :, None].expand(len(x), -1, 1))[..., 0].sum(-1)

        lig = LayerIntegratedGradients(forward, hf.model.embed_tokens)
        with Peak() as pk:
            t0 = time.perf_counter()
            att = lig.attribute(torch.as_tensor(ids)[None],
                                baselines=torch.as_tensor(base)[None],
                                n_steps=args.steps, method="riemann_middle")
            wall = time.perf_counter() - t0
        tokens = att[0, :n_p].sum(-1).detach().numpy().astype(float)
    else:  # the LLM wrapper, one IG per output token
        from captum.attr import LLMGradientAttribution, TextTokenInput

        # the wrapper's input is an indicator (ones); LIG's default zero baseline replaces
        # every prompt token by TextTokenInput's baseline id: the pad token here
        if not np.all(owner >= 0):
            raise SystemExit("every prompt token must be a feature for this comparison")
        inp = TextTokenInput(prompt, tok, baselines=int(pad))
        got = inp.itp_tensor[0].numpy()
        if not np.array_equal(got, inputs.prompt_ids):
            raise SystemExit(f"Captum tokenized the prompt differently ({len(got)} vs {n_p})")
        llm = LLMGradientAttribution(LayerIntegratedGradients(hf, hf.model.embed_tokens), tok)
        inner = llm.attr_method.attribute
        t_start = time.perf_counter()
        done = [0]

        def timed(*a, **k):
            res = inner(*a, **k)
            done[0] += 1
            _emit({**row, "status": "progress", "targets_done": done[0],
                   "n_targets": len(inputs.output_ids),
                   "elapsed_s": time.perf_counter() - t_start})
            return res

        llm.attr_method.attribute = timed
        with Peak() as pk:
            t0 = time.perf_counter()
            res = llm.attribute(inp, target=out, n_steps=args.steps, method="riemann_middle")
            wall = time.perf_counter() - t0
        tokens = res.seq_attr.detach().numpy().astype(float)
    scores = np.zeros(inputs.n_features)
    np.add.at(scores, owner[owner >= 0], tokens[owner >= 0])
    _scores_file(args.scores, scores)
    _emit({**row, "status": "done", "wall_s": wall, "peak_mb": pk.mb,
           "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
           "n_output": len(inputs.output_ids)})


# ---- parent: run children with a timeout and a memory cap -------------------------------------
def run_child(argv: list[str], timeout: float, mem_cap_mb: float) -> list[dict]:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    rows: list[dict] = []
    reader = threading.Thread(
        target=lambda: [rows.append(json.loads(line[4:])) for line in proc.stdout
                        if line.startswith("ROW ")], daemon=True)
    reader.start()
    t0, killed, peak = time.perf_counter(), None, 0.0
    ps = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            rss = ps.memory_info().rss / 2**20
        except psutil.NoSuchProcess:
            break
        peak = max(peak, rss)
        started = any(r.get("status") == "started" for r in rows)
        if started and time.perf_counter() - t0 > timeout:
            killed = "timeout"
        elif rss > mem_cap_mb:
            killed = "memory cap"
        if killed:
            proc.kill()
            break
        time.sleep(0.05)
    proc.wait()
    reader.join(timeout=5)
    err = proc.stderr.read() if proc.stderr else ""
    if killed or not any(r.get("status") == "done" for r in rows):
        prog = [r for r in rows if r.get("status") == "progress"]
        last = rows[-1] if rows else {}
        row = {k: v for k, v in last.items() if k not in ("status",)}
        row.update(status=killed or "failed", wall_s_lower_bound=time.perf_counter() - t0,
                   rss_seen_mb=peak)
        if prog:
            p = prog[-1]
            row["extrapolated_wall_s"] = p["elapsed_s"] / p["targets_done"] * p["n_targets"]
        if not killed:
            row["error"] = err[-800:]
        return [row]
    return [r for r in rows if r.get("status") == "done"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", default="ours", help=argparse.SUPPRESS)
    ap.add_argument("--method", default="ig", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=40, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--pad", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--scores", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tokens", type=int, nargs="+", default=[40, 200])
    ap.add_argument("--methods", nargs="*", default=list(METHODS))
    ap.add_argument("--compare-steps", type=int, nargs="+", default=[8],
                    help="IG steps for the Captum comparison, one per --tokens (or one for all)")
    ap.add_argument("--captum", nargs="*", default=["lig", "llm"], choices=["lig", "llm"])
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds per row")
    ap.add_argument("--mem-cap-mb", type=float, default=12000.0)
    ap.add_argument("--checkpoint", default=None, choices=["auto", "on", "off"],
                    help="checkpoint parameter of the 'ours ig pad' rows (default: auto); "
                    "given, that row runs even with no Captum rows")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.child:
        child(args)
        return
    import tempfile

    load = os.getloadavg()
    meta = {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_start": load}
    print(json.dumps(meta), flush=True)
    rows: list[dict] = []
    tmp = tempfile.mkdtemp()

    def record(new: list[dict]) -> None:
        for r in new:
            r["loadavg_1m"] = os.getloadavg()[0]
            rows.append(r)
            print(json.dumps(r), flush=True)

    for i, n in enumerate(args.tokens):
        for m in args.methods:
            record(run_child(["--n", str(n), "--method", m], args.timeout, args.mem_cap_mb))
        steps = args.compare_steps[min(i, len(args.compare_steps) - 1)]
        if not args.captum and not args.checkpoint:
            continue
        ours_f = os.path.join(tmp, f"ours{n}.npy")
        ck = ["--checkpoint", args.checkpoint] if args.checkpoint else []
        record(run_child(["--n", str(n), "--method", "ig", "--pad", "--steps", str(steps),
                          "--scores", ours_f, *ck], args.timeout, args.mem_cap_mb))
        for kind in args.captum:
            f = os.path.join(tmp, f"{kind}{n}.npy")
            new = run_child(["--n", str(n), "--kind", f"captum_{kind}", "--steps", str(steps),
                             "--scores", f], args.timeout, args.mem_cap_mb)
            if os.path.exists(f) and os.path.exists(ours_f):
                a, b = np.load(ours_f), np.load(f)
                new[0]["max_abs_diff_vs_ours"] = float(np.abs(a - b).max())
                new[0]["max_abs_score"] = float(np.abs(b).max())
            record(new)
    meta["loadavg_end"] = os.getloadavg()
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
