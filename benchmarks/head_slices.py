"""The LM head's vocabulary slice width on this CPU: the running log-sum-exp over slices of
the embedded model's head (as ``HFModel.output_token_logprobs``) at the width the engine
uses (1M-element logits and weight budgets), at wider slices, and one full matmul +
logsumexp, for R rows of hidden states (R = output positions scored in one forward).

    .venv/bin/python benchmarks/head_slices.py [--repeats 9] [--rows 77,240,768]

Prints medians in ms (interleaved repeats). Run it on a quiet machine: under load each
elementwise op of a slice waits for a core (2 threads), and slicing looks 3-10x slower.
"""

from __future__ import annotations

import argparse
import statistics
import time


def main() -> None:
    import torch

    import attrlens

    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--rows", default="77,240,768")
    args = ap.parse_args()
    model = attrlens.load_model(dtype="float32")
    w_all = model.lm_head.weight.detach()
    V, H = w_all.shape

    def sliced(h, step):
        R = h.shape[0]
        zbuf = torch.empty(R * step)
        m = torch.full((R,), -float("inf"))
        acc = torch.zeros(R)
        for v0 in range(0, V, step):
            n = min(step, V - v0)
            z = torch.mm(h, w_all[v0:v0 + n].t(), out=zbuf[: R * n].view(R, n))
            m_new = torch.maximum(m, z.amax(-1))
            acc = acc * torch.exp(m - m_new) + z.sub_(m_new[:, None]).exp_().sum(-1)
            m = m_new
        return m + torch.log(acc)

    print(f"threads {torch.get_num_threads()}, vocabulary {V}, hidden {H}")
    with torch.inference_mode():
        for R in (int(r) for r in args.rows.split(",")):
            h = torch.randn(R, H)
            used = max(1024, min(V, (1 << 20) // R, (1 << 20) // H))
            wide = max(1024, min(V, (1 << 20) // R))
            wider = max(1024, min(V, (1 << 22) // R))
            runs = {f"engine ({used})": lambda h=h, s=used: sliced(h, s),
                    f"logits budget only ({wide})": lambda h=h, s=wide: sliced(h, s),
                    f"4M logits ({wider})": lambda h=h, s=wider: sliced(h, s),
                    "full matmul": lambda h=h: torch.logsumexp(torch.mm(h, w_all.t()), -1)}
            ref = runs["full matmul"]()
            walls: dict[str, list[float]] = {k: [] for k in runs}
            for k, f in runs.items():
                assert torch.allclose(f(), ref, atol=1e-3), k
            for _ in range(args.repeats):
                for k, f in runs.items():
                    t0 = time.perf_counter()
                    f()
                    walls[k].append(time.perf_counter() - t0)
            print(R, {k: round(statistics.median(v) * 1000, 1) for k, v in walls.items()},
                  flush=True)


if __name__ == "__main__":
    main()
