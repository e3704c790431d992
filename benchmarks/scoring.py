"""Scoring-engine benchmark: leave-one-out on the embedded model, three prompt sizes.

For each prompt (chat template, ~20 / ~60 / ~200 prompt tokens, the model's own greedy answer
of up to 16 tokens, word features) it measures, each job in a fresh subprocess so that peak
memory is its own:

* ours       attrlens LOO with prefix reuse: wall time, tokens processed, forwards
* scratch    attrlens LOO without prefix reuse (tokens processed from scratch)
* raw        the machine's limit: plain batched forwards of the same model over the same
             number of tokens (sequences of the prompt+output length, batch of the same size)
* captum     Captum's LLMAttribution(FeatureAblation) on the same model, prompt, word
             features (deleted) and output

Reported: efficiency = engine tokens/s ÷ raw tokens/s, token ratio scratch ÷ ours, speed-up
captum ÷ ours, peak RSS. Medians over --repeats runs.

    .venv/bin/python benchmarks/scoring.py [--repeats 3] [--skip-captum] [--out benchmarks/scoring.json]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
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


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


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


def job(kind: str, name: str, repeats: int, q: mp.Queue) -> None:
    import numpy as np
    import torch

    torch.set_num_threads(2)
    model, pr, ids, fs, out = _setup(name)
    base_rss = _rss_mb()
    res: dict = {"kind": kind, "prompt": name, "prompt_tokens": len(ids), "output_tokens": len(out),
                 "features": len(fs)}
    walls = []
    if kind in ("ours", "scratch"):
        from attrlens.explainers.loo import loo_masks
        from attrlens.scoring.engine import ScoringEngine
        from attrlens.text.mask import Masker

        masks = loo_masks(len(fs))
        mk = Masker("delete", ids, fs)
        for _ in range(repeats):
            eng = ScoringEngine(model, ids, out, prefix_reuse=(kind == "ours"))
            t0 = time.perf_counter()
            lp = eng.token_logprobs(mk.apply(masks))
            walls.append(time.perf_counter() - t0)
        res.update(tokens=int(eng.counters["tokens_processed"]),
                   padded=int(eng.counters["padded_tokens"]),
                   forwards=int(eng.counters["model_forwards"]),
                   loo_top=[fs.labels[i] for i in np.argsort(-(lp[0].mean() - lp[1:].mean(1)))[:3]])
    elif kind == "raw":
        # the same number of tokens as a from-scratch LOO, as equal-length batched rows
        rows, width = len(fs) + 1, len(ids) + len(out)
        x = torch.as_tensor(np.tile(np.concatenate([ids, out]), (rows, 1)))
        for _ in range(repeats):
            t0 = time.perf_counter()
            bs = max(1, 8192 // width)
            with torch.inference_mode():
                for s in range(0, rows, bs):
                    model.decoder(input_ids=x[s:s + bs], attention_mask=torch.ones_like(x[s:s + bs]))
            walls.append(time.perf_counter() - t0)
        res.update(tokens=rows * width)
    elif kind == "captum":
        from captum.attr import FeatureAblation, LLMAttribution, TextTemplateInput

        text = pr.text
        template, values, cursor = "", [], 0
        for f in fs:
            (a, b), = f.spans if len(f.spans) == 1 else [(f.spans[0][0], f.spans[-1][1])]
            template += text[cursor:a].replace("{", "{{").replace("}", "}}") + "{}"
            values.append(text[a:b])
            cursor = b
        template += text[cursor:].replace("{", "{{").replace("}", "}}")
        inp = TextTemplateInput(template, values=values, baselines=[""] * len(values))
        target = model.decode(out, skip_special_tokens=False)
        fa = LLMAttribution(FeatureAblation(model.model), model.tokenizer)
        for _ in range(min(repeats, 2 if name == "long" else repeats)):
            t0 = time.perf_counter()
            with torch.no_grad():
                r = fa.attribute(inp, target=target)
            walls.append(time.perf_counter() - t0)
        seq = np.asarray(r.seq_attr.detach().cpu().numpy())
        res.update(captum_top=[values[i].strip() for i in np.argsort(-seq)[:3]])
    res["wall_s"] = statistics.median(walls)
    res["walls"] = walls
    res["peak_rss_mb"] = _rss_mb()
    res["rss_over_model_mb"] = _rss_mb() - base_rss
    q.put(res)


def run_job(kind: str, name: str, repeats: int) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=job, args=(kind, name, repeats, q))
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
    args = ap.parse_args()
    kinds = ["ours", "scratch", "raw"] + ([] if args.skip_captum else ["captum"])
    results = []
    for name in args.prompts.split(","):
        row = {}
        for kind in kinds:
            r = run_job(kind, name, args.repeats)
            row[kind] = r
            print(json.dumps({k: v for k, v in r.items() if k != "walls"}), flush=True)
        ours, scratch, raw = row["ours"], row["scratch"], row["raw"]
        summary = {
            "prompt": name,
            "prompt_tokens": ours["prompt_tokens"],
            "output_tokens": ours["output_tokens"],
            "features": ours["features"],
            "ours_wall_s": ours["wall_s"],
            "ours_tokens": ours["tokens"],
            "scratch_tokens": scratch["tokens"],
            "token_ratio_scratch_over_ours": scratch["tokens"] / ours["tokens"],
            "engine_tok_per_s": ours["tokens"] / ours["wall_s"],
            "raw_tok_per_s": raw["tokens"] / raw["wall_s"],
            "scratch_wall_s": scratch["wall_s"],
        }
        summary["efficiency_engine_over_raw"] = summary["engine_tok_per_s"] / summary["raw_tok_per_s"]
        summary["speedup_vs_raw_scratch_wall"] = (raw["wall_s"] / ours["wall_s"])
        summary["peak_rss_mb"] = {k: row[k]["peak_rss_mb"] for k in row}
        if "captum" in row:
            summary["captum_wall_s"] = row["captum"]["wall_s"]
            summary["speedup_vs_captum"] = row["captum"]["wall_s"] / ours["wall_s"]
            summary["captum_top"] = row["captum"]["captum_top"]
            summary["ours_top"] = ours["loo_top"]
        results.append(summary)
        print(json.dumps(summary), flush=True)
    with open(args.out, "w") as f:
        json.dump({"argv": sys.argv, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
