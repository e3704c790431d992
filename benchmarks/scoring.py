"""Scoring-engine benchmark: leave-one-out on the embedded model, three prompt sizes.

For each prompt (chat template, ~40 / ~80 / ~260 prompt tokens with word features, or "4k":
~4,000 tokens with sentence features; the model's own greedy answer of up to 16 tokens,
``delete`` masker) one subprocess loads the model in each
requested dtype and interleaves, ``--repeats`` times, for each dtype:

* ours   attrlens' ScoringEngine with prefix reuse (per-row prefixes): wall, tokens, forwards
* naive  a naive batched from-scratch LOO: every perturbed prompt + output, right-padded in
         batches of the same ``max_batch_tokens``, the decoder, the LM head at the output
         positions, log-softmax, gather (its scores are checked against ours)
* raw    the decoder part of ``naive`` timed on its own: the plain batched forward of the
         same model over the from-scratch tokens (the machine's limit)

Captum's ``LLMAttribution(FeatureAblation)`` runs in its own subprocess (fp32, same prompt,
word features deleted, same output) under ``--captum-timeout`` seconds; a run that does not
finish is reported as a lower bound. Peak memory = resident-set peak above the level at the
start of each variant (``malloc_trim`` first, so freed memory of the previous variant does
not hide a peak), sampled every 5 ms.

``--row-stride k`` scores the unmasked row and every k-th feature's LOO row (same rows for
every variant): the per-row work is unchanged, so ratios hold while the wall time on this
shared machine stays within minutes. Reported: engine tok/s ÷ raw tok/s, token ratio
naive ÷ ours, end-to-end speed-up naive ÷ ours (and raw ÷ ours), peak MB; medians.

    .venv/bin/python benchmarks/scoring.py [--repeats 3] [--threads 0] [--dtypes float32,bfloat16]
        [--prompts short,medium,long] [--row-stride 1,1,8] [--skip-captum] [--captum-timeout 300]
        [--device cpu] [--out benchmarks/scoring.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time

PROMPTS = {
    "short": "What is the capital of France? Answer with one word.",
    "medium": (
        "Read the note and answer. The museum opens at nine in the morning and closes at "
        "five in the evening, except on Mondays when it is closed all day. Tickets cost "
        "twelve euros for adults and are free for children. On which day is the museum closed?"
    ),
    "long": (
        "Summarise the following passage in one sentence. "
        "The river begins high in the mountains, where snow melts each spring and feeds a "
        "network of small streams. These streams join in a narrow valley and form a fast, "
        "cold river that carves deep channels through the rock. Further down, the valley "
        "widens and the river slows, spreading across fertile plains where farmers have grown "
        "wheat and barley for centuries. Small towns grew along its banks, each with a mill "
        "powered by the current. In the last hundred years, dams were built to produce "
        "electricity and to store water for the dry summer months. The dams changed the "
        "river: fish that once swam upstream to lay their eggs could no longer pass, and the "
        "floods that used to renew the soil each year stopped. Today, engineers and "
        "ecologists work together to build fish ladders and to release water at the right "
        "times of year, hoping to restore part of the river's natural rhythm while keeping "
        "the benefits of the dams for the people who live along it. Visitors come in summer "
        "to walk the old towpaths, swim in the quiet bends and watch the herons fishing in "
        "the shallows near the old stone bridges."
    ),
}


def _long_text(n_sentences: int = 180) -> str:
    """~4,000 tokens of numbered sentences (fixed seed): the long-input prompt."""
    import numpy as np

    words = ["river", "valley", "stone", "bridge", "farmer", "mill", "water", "summer",
             "winter", "engineer", "fish", "ladder", "town", "bank", "current", "flood",
             "soil", "dam", "heron", "path"]
    rng = np.random.default_rng(0)
    return "Summarise the text in one sentence. " + " ".join(
        f"Sentence {i} says the " + " ".join(rng.choice(words, size=14)) + "."
        for i in range(n_sentences))


PROMPTS["4k"] = _long_text()
GRANULARITY = {"4k": "sentence"}  # features of the others: words


def _setup(name: str, dtype: str = "float32", device: str = "cpu", ref=None):
    import attrlens
    from attrlens.text.prompt import build_prompt
    from attrlens.text.segment import segment

    model = attrlens.load_model(dtype=dtype, device=device)
    pr = build_prompt(PROMPTS[name], model)
    ids, offsets = model.tokenize(pr.text)
    fs = segment(pr.text, pr.regions, offsets, GRANULARITY.get(name, "word"))
    out = ref if ref is not None else model.generate(ids, max_new_tokens=16)
    return model, pr, ids, fs, out


def _trim() -> None:
    """Give freed heap memory back to the OS (so a later variant's RSS peak is its own)."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def _sync(model) -> None:
    import torch

    if str(model.device).startswith("cuda"):
        torch.cuda.synchronize()


def naive_loo(model, inputs, out, max_batch_tokens: int):
    """From-scratch batched LOO: (n, T) log p(o_t), tokens, decoder seconds, total seconds,
    LM head + log-softmax seconds."""
    import numpy as np
    import torch

    t_all = time.perf_counter()
    T = len(out)
    dev = model.device
    L = len(inputs[0].ids)  # row 0 is the unmasked prompt; delete keeps the output at L
    seqs = [(np.concatenate([x.ids, out]), np.concatenate([x.positions, np.arange(L, L + T)]))
            for x in inputs]
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i][0]))
    res = [None] * len(seqs)
    dec_s, head_s, tokens = 0.0, 0.0, 0
    out_t = torch.as_tensor(np.asarray(out), device=dev)
    i = 0
    while i < len(order):
        S = len(seqs[order[i]][0])
        j = i
        while j < len(order) and (j - i + 1) * len(seqs[order[j]][0]) <= max(
                max_batch_tokens, len(seqs[order[j]][0])):
            S = len(seqs[order[j]][0])
            j += 1
        rows = order[i:j]
        x = torch.zeros((len(rows), S), dtype=torch.long)
        pos = torch.zeros((len(rows), S), dtype=torch.long)
        att = torch.zeros((len(rows), S), dtype=torch.long)
        for r, k in enumerate(rows):
            ids, ps = seqs[k]
            x[r, :len(ids)] = torch.as_tensor(ids)
            pos[r, :len(ids)] = torch.as_tensor(ps)
            att[r, :len(ids)] = 1
            tokens += len(ids)
        with torch.inference_mode():
            t0 = time.perf_counter()
            h = model.decoder(input_ids=x.to(dev), attention_mask=att.to(dev),
                              position_ids=pos.to(dev), use_cache=False).last_hidden_state
            _sync(model)
            dec_s += time.perf_counter() - t0
            t0 = time.perf_counter()
            for r, k in enumerate(rows):
                n_k = len(seqs[k][0])
                # the library's LM head (float32 also in a reduced-precision model), as ours
                lp = torch.log_softmax(model.output_logits(h[r, n_k - T - 1:n_k - 1]), -1)
                res[k] = lp.gather(-1, out_t[:, None])[:, 0].double().cpu().numpy()
            _sync(model)
            head_s += time.perf_counter() - t0
        i = j
    _sync(model)
    return np.stack(res), tokens, dec_s, time.perf_counter() - t_all, head_s


def forward_cost(model, repeats: int = 5) -> dict:
    """The decoder's fixed cost per forward c (s) and cost per token u (s), fitted from
    plain forwards of 8 and 8 x 64 tokens (medians): a forward of n tokens takes ~c + n u."""
    import torch

    def timed(shape):
        x = torch.randint(100, 1000, shape, device=model.device)
        ws = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            with torch.inference_mode():
                model.decoder(input_ids=x, use_cache=False)
            _sync(model)
            ws.append(time.perf_counter() - t0)
        return statistics.median(ws)

    timed((1, 8))
    small, big = timed((1, 8)), timed((8, 64))
    u = (big - small) / (512 - 8)
    return {"fixed_s": small - 8 * u, "per_token_s": u}


def engine_shapes(model, run) -> list[tuple[int, int]]:
    """The (rows, length) of every decoder forward that ``run()`` makes."""
    dec = model.decoder
    real = dec.forward
    shapes: list[tuple[int, int]] = []

    def spy(*a, **kw):
        shapes.append(tuple(kw["input_ids"].shape))
        return real(*a, **kw)

    dec.forward = spy
    try:
        run()
    finally:
        del dec.forward
    return shapes


def raw_same(model, shapes) -> float:
    """Seconds of plain causal forwards (no mask, no cache) of the given (rows, length)
    shapes: the raw forward on the engine's own token layout."""
    import torch

    xs = [torch.randint(100, 1000, s, device=model.device) for s in shapes]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in xs:
            model.decoder(input_ids=x, use_cache=False)
    _sync(model)
    return time.perf_counter() - t0


def torch_peak_mb(run) -> float:
    """Peak of the bytes torch holds (its CPU allocations, from the profiler's memory
    events) above the level at the start of ``run()``: deterministic, unlike the
    resident-set peak, which also counts memory the C allocator keeps after a free."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events()
                    if e.self_cpu_memory_usage)
    cur = peak = 0
    for _t, b in events:
        cur += b
        peak = max(peak, cur)
    return peak / 2**20


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


class PeakRSS:
    """Peak resident memory above the level at entry.

    On Linux the kernel's own high-water mark (``VmHWM``), reset at entry by writing 5 to
    ``/proc/self/clear_refs``: exact, and nothing runs beside the measured code. Elsewhere
    (or where the reset is refused) a thread samples the resident set every 5 ms, which
    takes CPU time from torch's threads on a small machine; ``how`` says which was used."""

    def __enter__(self):
        self.how = "sampled"
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            base = _status_kb("VmRSS")
            if base is not None and _status_kb("VmHWM") is not None:
                self.how = "hwm"
                self.base = base * 1024
                return self
        except OSError:
            pass
        import threading

        import psutil

        self._proc = psutil.Process()
        self.base = self._proc.memory_info().rss
        self.peak = self.base
        self._stop = threading.Event()

        def watch():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._proc.memory_info().rss)
                self._stop.wait(0.005)

        self._t = threading.Thread(target=watch, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        if self.how == "hwm":
            self.peak = _status_kb("VmHWM") * 1024
        else:
            self._stop.set()
            self._t.join()
        self.mb = (self.peak - self.base) / 2**20


def job(kind: str, name: str, args: dict, q) -> None:
    """kind "engine": ours / naive (raw inside) interleaved per dtype in one process (same
    load for each); kind "captum": Captum alone (fp32)."""
    import numpy as np
    import torch

    if args["threads"] > 0:
        torch.set_num_threads(args["threads"])
    dtypes = args["dtypes"] if kind == "engine" else ["float32"]
    models = {}
    out = None
    for dt in dtypes:
        models[dt] = _setup(name, dt, args["device"], ref=out)
        out = models[dt][4]  # every dtype scores the first dtype's answer
    model, pr, ids, fs, out = models[dtypes[0]]
    stride = args["row_stride"]
    feats = list(range(0, len(fs), stride))
    meta = {"prompt": name, "prompt_tokens": len(ids), "output_tokens": len(out),
            "features": len(fs), "rows_scored": len(feats) + 1, "row_stride": stride,
            "threads": torch.get_num_threads(), "device": args["device"]}
    with PeakRSS() as probe:
        pass
    meta["peak_rss_measure"] = probe.how  # "hwm": the kernel's mark; "sampled": a thread
    res: dict = {"meta": meta}
    if kind == "engine":
        from attrlens.scoring.engine import ScoringEngine
        from attrlens.solvers.sampling import loo_masks
        from attrlens.text.mask import Masker

        masks = loo_masks(len(fs))[[0] + [f + 1 for f in feats]]
        inputs = Masker("delete", ids, fs).apply(masks)
        mbt = args["max_batch_tokens"]
        walls: dict = {}
        mem: dict = {}
        for dt in dtypes:  # one untimed pass each: one-time model caches (the float32 head
            m = models[dt][0]  # copy of a bf16 model, kernel set-up) stay out of the peaks
            ScoringEngine(m, ids, out).token_logprobs(inputs[:4])
            naive_loo(m, inputs[:4], out, mbt)
            res[f"{dt}/forward_cost"] = forward_cost(m)
            res[f"{dt}/engine_shapes"] = engine_shapes(
                m, lambda m=m: ScoringEngine(m, ids, out, max_batch_tokens=mbt)
                .token_logprobs(inputs))
        for _ in range(args["repeats"]):
            for dt in dtypes:
                m = models[dt][0]
                for k in ("ours", "naive", "raw_same"):
                    _trim()
                    if k == "raw_same":  # the raw forward on ours' token layout
                        walls.setdefault((dt, k), []).append(
                            raw_same(m, res[f"{dt}/engine_shapes"]))
                        continue
                    gpu = str(m.device).startswith("cuda")
                    if gpu:
                        torch.cuda.reset_peak_memory_stats()
                        base = torch.cuda.memory_allocated()
                    with PeakRSS() as pk:
                        if k == "ours":
                            t0 = time.perf_counter()
                            eng = ScoringEngine(m, ids, out, max_batch_tokens=mbt)
                            lp = eng.token_logprobs(inputs)
                            _sync(m)
                            walls.setdefault((dt, "ours"), []).append(time.perf_counter() - t0)
                            res[f"{dt}/ours"] = {
                                "tokens": int(eng.counters["tokens_processed"]),
                                "padded": int(eng.counters["padded_tokens"]),
                                "forwards": int(eng.counters["model_forwards"])}
                            walls.setdefault((dt, "ours_decoder"), []).append(
                                eng.counters["decoder_s"])
                            walls.setdefault((dt, "ours_head"), []).append(eng.counters["head_s"])
                            lp_ours = lp
                        else:
                            lp, tokens, dec_s, tot, head_s = naive_loo(m, inputs, out, mbt)
                            walls.setdefault((dt, "naive"), []).append(tot)
                            walls.setdefault((dt, "raw"), []).append(dec_s)
                            # the raw forward with its LM head at the output positions
                            walls.setdefault((dt, "raw_head"), []).append(dec_s + head_s)
                            res[f"{dt}/naive"] = {"tokens": tokens}
                            res[f"{dt}/raw"] = {"tokens": tokens}
                            res[f"{dt}/max_abs_diff_ours_vs_naive"] = float(
                                np.abs(lp - lp_ours).max())
                    mem[(dt, k)] = max(mem.get((dt, k), 0.0), pk.mb)
                    if gpu:  # device memory above the loaded model
                        mb = (torch.cuda.max_memory_allocated() - base) / 2**20
                        res[f"{dt}/{k}"]["gpu_peak_mb"] = max(
                            res[f"{dt}/{k}"].get("gpu_peak_mb", 0.0), mb)
                    if k == "naive":
                        mem[(dt, "raw")] = float("nan")
                del eng
        if not str(args["device"]).startswith("cuda"):
            for dt in dtypes:  # one profiled pass each: the bytes torch held at the peak
                m = models[dt][0]
                res[f"{dt}/torch_peak_mb"] = {
                    "ours": torch_peak_mb(lambda m=m: ScoringEngine(
                        m, ids, out, max_batch_tokens=mbt).token_logprobs(inputs)),
                    "naive": torch_peak_mb(lambda m=m: naive_loo(m, inputs, out, mbt))}
        for (dt, k), ws in walls.items():
            res.setdefault(f"{dt}/{k}", {}).update(
                wall_s=statistics.median(ws), walls=ws, peak_mb=mem.get((dt, k), float("nan")))
    else:
        from captum.attr import FeatureAblation, LLMAttribution, TextTemplateInput

        text = pr.text
        template, values, cursor = "", [], 0
        for f in fs:
            a, b = f.spans[0][0], f.spans[-1][1]
            template += text[cursor:a].replace("{", "{{").replace("}", "}}") + "{}"
            values.append(text[a:b])
            cursor = b
        template += text[cursor:].replace("{", "{{").replace("}", "}}")
        inp = TextTemplateInput(template, values=values, baselines=[""] * len(values))
        target = model.decode(out, skip_special_tokens=False)
        fa = LLMAttribution(FeatureAblation(model.model), model.tokenizer)
        _trim()
        with PeakRSS() as pk:
            t0 = time.perf_counter()
            with torch.no_grad():
                fa.attribute(inp, target=target)
            wall = time.perf_counter() - t0
        res["captum"] = {"wall_s": wall, "peak_mb": pk.mb, "features": len(values)}
    q.put(res)


def _orphan_safe(parent: int, *job_args) -> None:
    """``job`` in a child that ends itself when its parent is gone (a killed benchmark would
    otherwise leave a job loading the machine under the next measurement)."""
    import threading

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
    job(*job_args)


def run_job(kind: str, name: str, args: dict, timeout: float | None = None) -> dict | None:
    """Run ``job`` in a fresh spawned process; None when it ran past ``timeout`` s."""
    import queue as _queue

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_orphan_safe, args=(os.getpid(), kind, name, args, q))
    t0 = time.perf_counter()
    p.start()
    while True:  # a job that dies (e.g. captum not installed) is not waited for to the end
        try:
            out = q.get(timeout=1.0)
            break
        except _queue.Empty:
            if not p.is_alive():
                return {"failed": f"the {kind} job exited with {p.exitcode} (its error is "
                                  "above)"}
            if timeout is not None and time.perf_counter() - t0 > timeout:
                p.kill()
                p.join()
                return {"timed_out_s": time.perf_counter() - t0}
    p.join()
    return out


def _bound(cost: dict, ours: dict, naive: dict, mbt: int) -> float:
    c, u = cost["fixed_s"], cost["per_token_s"]
    n_raw = max(1, -(-naive["tokens"] // mbt))  # raw forwards (at least)
    ours_s = ours["forwards"] * c + (ours["tokens"] + ours["padded"]) * u
    raw_s = n_raw * c + naive["tokens"] * u
    return (ours["tokens"] / ours_s) / (naive["tokens"] / raw_s)


def machine() -> dict:
    """CPU model, flags of interest, load average (recorded with the results)."""
    import os
    import platform
    import subprocess

    info: dict = {"platform": platform.platform(), "cpus": os.cpu_count(),
                  "loadavg_start": os.getloadavg()}
    try:
        ls = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
        for line in ls.splitlines():
            k, _, v = line.partition(":")
            if k.strip() == "Model name":
                info["cpu"] = v.strip()
            if k.strip() == "Flags":
                flags = v.split()
                info["flags"] = [f for f in flags if f.startswith(("avx", "amx", "fma"))]
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def main() -> None:
    import os

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-captum", action="store_true")
    ap.add_argument("--captum-timeout", type=float, default=300.0)
    ap.add_argument("--captum-prompts", default="short,medium")
    ap.add_argument("--prompts", default="short,medium,long")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--row-stride", default="1",
                    help="one stride for all prompts, or one per prompt (comma-separated)")
    ap.add_argument("--max-batch-tokens", type=int, default=4096)
    ap.add_argument("--out", default="benchmarks/scoring.json")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (0: torch's default for this machine)")
    a = ap.parse_args()
    args = {"threads": a.threads, "dtypes": a.dtypes.split(","), "device": a.device,
            "repeats": a.repeats,
            "max_batch_tokens": a.max_batch_tokens}
    mach = machine()
    print(json.dumps(mach), flush=True)
    results = []
    names = a.prompts.split(",")
    strides = [int(x) for x in a.row_stride.split(",")]
    strides = strides * len(names) if len(strides) == 1 else strides
    if len(strides) != len(names):
        ap.error("--row-stride: one value, or one per prompt")
    for name, stride in zip(names, strides):
        args["row_stride"] = stride
        row = run_job("engine", name, args)
        print(json.dumps(row), flush=True)
        meta = row["meta"]
        summary: dict = dict(meta)
        for dt in args["dtypes"]:
            ours, naive, raw = row[f"{dt}/ours"], row[f"{dt}/naive"], row[f"{dt}/raw"]
            eng_tps = ours["tokens"] / ours["wall_s"]
            raw_tps = raw["tokens"] / raw["wall_s"]
            summary[dt] = {
                "ours_wall_s": ours["wall_s"], "naive_wall_s": naive["wall_s"],
                "raw_wall_s": raw["wall_s"],
                "ours_tokens": ours["tokens"], "ours_padded": ours["padded"],
                "ours_forwards": ours["forwards"], "naive_tokens": naive["tokens"],
                "token_ratio_naive_over_ours": naive["tokens"] / ours["tokens"],
                "engine_tok_per_s": eng_tps, "raw_tok_per_s": raw_tps,
                "engine_over_raw_throughput": eng_tps / raw_tps,
                # the same with the LM head at the output positions on both sides (the
                # raw forward that scoring needs; the head's work is the same for both)
                "engine_over_raw_with_head": eng_tps / (
                    raw["tokens"] / row[f"{dt}/raw_head"]["wall_s"]),
                "engine_over_raw_with_head_paired_median": statistics.median(
                    (ours["tokens"] / o_) / (raw["tokens"] / r_)
                    for o_, r_ in zip(ours["walls"], row[f"{dt}/raw_head"]["walls"])),
                # decoder against decoder: the engine's forwards (packing, mask, shared
                # prefix) against the plain forward, the head left out of both
                "engine_decoder_over_raw": (ours["tokens"] / row[f"{dt}/ours_decoder"]["wall_s"])
                / raw_tps,
                "ours_head_s": row[f"{dt}/ours_head"]["wall_s"],
                "naive_head_s": row[f"{dt}/raw_head"]["wall_s"] - raw["wall_s"],
                "speedup_vs_naive": naive["wall_s"] / ours["wall_s"],
                "speedup_vs_raw": raw["wall_s"] / ours["wall_s"],
                # paired per repeat (each pair ran back to back: robust to load drifts)
                "speedup_vs_naive_paired_median": statistics.median(
                    n_ / o_ for n_, o_ in zip(naive["walls"], ours["walls"])),
                "engine_over_raw_paired_median": statistics.median(
                    (ours["tokens"] / o_) / (raw["tokens"] / r_)
                    for o_, r_ in zip(ours["walls"], raw["walls"])),
                "peak_mb": {"ours": ours["peak_mb"], "naive": naive["peak_mb"]},
                "torch_peak_mb": row.get(f"{dt}/torch_peak_mb"),
                # the raw forward on the engine's own packed shapes (same tokens, same rows,
                # plain causal attention, no prefix): what the engine's forwards cost over
                # plain ones, and the whole engine (LM head included) against it
                "raw_same_s": row[f"{dt}/raw_same"]["wall_s"],
                "engine_over_raw_same": row[f"{dt}/raw_same"]["wall_s"] / ours["wall_s"]
                * ours["tokens"] / (ours["tokens"] + ours["padded"]),
                "engine_decoder_over_raw_same": row[f"{dt}/raw_same"]["wall_s"]
                / row[f"{dt}/ours_decoder"]["wall_s"],
                "forward_cost": row[f"{dt}/forward_cost"],
                # engine / raw throughput if both ran at the plain forward's speed (c + n u
                # per forward): what the fixed cost per forward alone allows
                "engine_over_raw_bound": _bound(row[f"{dt}/forward_cost"], ours, naive,
                                                args["max_batch_tokens"]),
                "gpu_peak_mb": {"ours": ours.get("gpu_peak_mb"), "naive": naive.get("gpu_peak_mb")},
                "max_abs_diff_ours_vs_naive": row[f"{dt}/max_abs_diff_ours_vs_naive"],
                "walls": {"ours": ours["walls"], "naive": naive["walls"], "raw": raw["walls"]},
            }
        if len(args["dtypes"]) > 1:
            d0, d1 = args["dtypes"][:2]
            summary[f"ours_{d0}_over_{d1}_wall"] = (summary[d0]["ours_wall_s"]
                                                    / summary[d1]["ours_wall_s"])
        if not a.skip_captum and name in a.captum_prompts.split(","):
            cap = run_job("captum", name, {**args, "row_stride": 1}, timeout=a.captum_timeout)
            print(json.dumps(cap), flush=True)
            full = meta["features"] / max(1, meta["rows_scored"] - 1)  # ours at all rows
            ours_full = summary[args["dtypes"][0]]["ours_wall_s"] * full
            if "captum" in cap:
                summary["captum_wall_s"] = cap["captum"]["wall_s"]
                summary["captum_peak_mb"] = cap["captum"]["peak_mb"]
                summary["speedup_vs_captum"] = cap["captum"]["wall_s"] / ours_full
            elif "failed" in cap:
                summary["captum_failed"] = cap["failed"]
            else:
                summary["captum_wall_s_lower_bound"] = cap["timed_out_s"]
                summary["speedup_vs_captum_lower_bound"] = cap["timed_out_s"] / ours_full
        summary["loadavg_end"] = os.getloadavg()
        results.append(summary)
        print(json.dumps(summary), flush=True)
    with open(a.out, "w") as f:
        json.dump({"argv": sys.argv, "machine": mach, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
