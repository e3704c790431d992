"""Model objects as users pass them: the embedded model's LOO through ``explain`` with the
module itself and with ``torch.compile(module)`` (attrlens unwraps a compiled module; before
that, generating the answer went through the compiled graph): the same prompt ``--repeats``
times, then a prompt of another length.

    .venv/bin/python benchmarks/model_objects.py --repeats 3 --out benchmarks/model_objects.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import torch

    import attrlens

    base = attrlens.load_model(dtype="float32")
    module, tok = base.model, base.tokenizer
    prompts = ["What is the capital of France? Answer with one word."] * args.repeats + [
        "Name the largest planet of the solar system, in one word please."]  # a new length
    res: dict = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                 "machine": platform.processor() or platform.machine()}
    scores = {}
    for name in ("module", "compiled"):
        obj = module if name == "module" else torch.compile(module)
        walls = []
        for i, prompt in enumerate(prompts):  # the first call includes any compiling
            t0 = time.perf_counter()
            a = attrlens.explain(prompt, model=obj, tokenizer=tok, method="loo",
                                 max_new_tokens=4)
            walls.append(time.perf_counter() - t0)
            if i == 0:
                scores[name] = a.scores
        res[name] = {"walls_s": walls, "first_s": walls[0],
                     "median_same_prompt_s": statistics.median(walls[: args.repeats]),
                     "new_prompt_s": walls[-1]}
    res["max_abs_score_diff"] = float(abs(scores["module"] - scores["compiled"]).max())
    print(json.dumps(res, indent=1))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
