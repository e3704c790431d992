"""Scoring-engine benchmark: leave-one-out on the embedded model, three prompt sizes.

For each prompt (chat template, ~20 / ~60 / ~200 prompt tokens, the model's own greedy answer
of up to 16 tokens, word features) it measures, in one subprocess per prompt with the three
engine jobs interleaved (so each sees the same machine load) and Captum in its own
subprocess; peak memory is the resident-set peak above the loaded model, sampled every 5 ms:

* ours       attrlens LOO with prefix reuse: wall time, tokens processed, forwards
* scratch    attrlens LOO without prefix reuse (tokens processed from scratch)
* raw        the machine's limit: plain batched forwards of the same model over the same
             number of tokens (sequences of the prompt+output length, batch of the same size)
* captum     Captum's LLMAttribution(FeatureAblation) on the same model, prompt, word
             features (deleted) and output

Reported: efficiency = engine tokens/s ÷ raw tokens/s, token ratio scratch ÷ ours, speed-up
captum ÷ ours, peak RSS. Medians over --repeats runs.

    .venv/bin/python benchmarks/scoring.py [--repeats 3] [--threads 2] [--skip-captum]
        [--prompts short,medium,long] [--out benchmarks/scoring.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
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


def _setup(name: str):
    import attrlens
    from attrlens.text.prompt import build_prompt
    from attrlens.text.segment import segment

    model = attrlens.load_model()
    pr = build_prompt(PROMPTS[name], model)
    ids, offsets = model.tokenize(pr.text)
    fs = segment(pr.text, pr.regions, offsets, "word")
    out = model.generate(ids, max_new_tokens=16)
    return model, pr, ids, fs, out


class PeakRSS:
    """Peak resident memory above the level at entry, sampled every 5 ms in a thread."""

    def __enter__(self):
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
        self._stop.set()
        self._t.join()
        self.mb = (self.peak - self.base) / 2**20


def job(kind: str, name: str, repeats: int, q: mp.Queue, threads: int = 2) -> None:
    """kind "engine": ours / scratch / raw interleaved in one process (same load for each);
    kind "captum": Captum alone."""
    import numpy as np
    import torch

    torch.set_num_threads(threads)
    model, pr, ids, fs, out = _setup(name)
    meta = {"prompt": name, "prompt_tokens": len(ids), "output_tokens": len(out),
            "features": len(fs)}
    res: dict = {}
    if kind == "engine":
        from attrlens.explainers.loo import loo_masks
        from attrlens.scoring.engine import ScoringEngine
        from attrlens.text.mask import Masker

        masks = loo_masks(len(fs))
        mk = Masker("delete", ids, fs)
        rows, width = len(fs) + 1, len(ids) + len(out)
        x = torch.as_tensor(np.tile(np.concatenate([ids, out]), (rows, 1)))
        bs = max(1, 8192 // width)
        walls = {"ours": [], "scratch": [], "raw": []}
        mem = {"ours": 0.0, "scratch": 0.0, "raw": 0.0}
        for _ in range(repeats):
            for k in ("ours", "scratch"):
                eng = ScoringEngine(model, ids, out, prefix_reuse=(k == "ours"))
                with PeakRSS() as pk:
                    t0 = time.perf_counter()
                    lp = eng.token_logprobs(mk.apply(masks))
                    walls[k].append(time.perf_counter() - t0)
                mem[k] = max(mem[k], pk.mb)
                res[k] = {"tokens": int(eng.counters["tokens_processed"]),
                          "padded": int(eng.counters["padded_tokens"]),
                          "forwards": int(eng.counters["model_forwards"])}
                if k == "ours":
                    res["loo_top"] = [fs.labels[i] for i in
                                      np.argsort(-(lp[0].mean() - lp[1:].mean(1)))[:3]]
            # the machine's limit: plain batched forwards over the same number of tokens as a
            # from-scratch LOO, equal-length rows
            with PeakRSS() as pk:
                t0 = time.perf_counter()
                with torch.inference_mode():
                    for s in range(0, rows, bs):
                        model.decoder(input_ids=x[s:s + bs],
                                      attention_mask=torch.ones_like(x[s:s + bs]))
                walls["raw"].append(time.perf_counter() - t0)
            mem["raw"] = max(mem["raw"], pk.mb)
            res["raw"] = {"tokens": rows * width}
        for k, ws in walls.items():
            res[k]["wall_s"] = statistics.median(ws)
            res[k]["walls"] = ws
            res[k]["peak_mb_over_model"] = mem[k]
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
        walls = []
        with PeakRSS() as pk:
            for _ in range(repeats if name == "short" else 1):  # Captum is slow: one run
                t0 = time.perf_counter()
                with torch.no_grad():
                    r = fa.attribute(inp, target=target)
                walls.append(time.perf_counter() - t0)
        seq = np.asarray(r.seq_attr.detach().cpu().numpy())
        res["captum"] = {"wall_s": statistics.median(walls), "walls": walls,
                         "peak_mb_over_model": pk.mb,
                         "captum_top": [values[i].strip() for i in np.argsort(-seq)[:3]]}
    res["meta"] = meta
    q.put(res)


def run_job(kind: str, name: str, repeats: int, threads: int = 2) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=job, args=(kind, name, repeats, q, threads))
    p.start()
    out = q.get()
    p.join()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip-captum", action="store_true")
    ap.add_argument("--prompts", default="short,medium,long")
    ap.add_argument("--out", default="benchmarks/scoring.json")
    ap.add_argument("--threads", type=int, default=2,
                    help="torch threads (1 is faster when other jobs load the machine)")
    args = ap.parse_args()
    kinds = ["engine"] + ([] if args.skip_captum else ["captum"])
    results = []
    for name in args.prompts.split(","):
        row: dict = {}
        for kind in kinds:
            r = run_job(kind, name, args.repeats, args.threads)
            row.update(r)
            print(json.dumps(r), flush=True)
        ours, scratch, raw = row["ours"], row["scratch"], row["raw"]
        summary = {
            **row["meta"],
            "ours_wall_s": ours["wall_s"],
            "ours_tokens": ours["tokens"],
            "ours_forwards": ours["forwards"],
            "scratch_tokens": scratch["tokens"],
            "token_ratio_scratch_over_ours": scratch["tokens"] / ours["tokens"],
            "engine_tok_per_s": ours["tokens"] / ours["wall_s"],
            "raw_tok_per_s": raw["tokens"] / raw["wall_s"],
            "scratch_wall_s": scratch["wall_s"],
            "raw_wall_s": raw["wall_s"],
            "peak_mb_over_model": {k: row[k]["peak_mb_over_model"] for k in
                                   ("ours", "scratch", "raw", "captum") if k in row},
        }
        # issue formula: raw throughput / engine throughput (lower is better; the goal reads
        # engine >= 0.8 x raw, i.e. engine/raw >= 0.8); both are reported
        summary["engine_over_raw_throughput"] = summary["engine_tok_per_s"] / summary["raw_tok_per_s"]
        summary["raw_over_engine_throughput"] = 1 / summary["engine_over_raw_throughput"]
        summary["wall_speedup_vs_raw_scratch"] = raw["wall_s"] / ours["wall_s"]
        if "captum" in row:
            summary["captum_wall_s"] = row["captum"]["wall_s"]
            summary["speedup_vs_captum"] = row["captum"]["wall_s"] / ours["wall_s"]
            summary["captum_top"] = row["captum"]["captum_top"]
            summary["ours_top"] = row["loo_top"]
        results.append(summary)
        print(json.dumps(summary), flush=True)
    with open(args.out, "w") as f:
        json.dump({"argv": sys.argv, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
