"""How much a quantized model's own log-probabilities move with the batch they are computed
in: a tiny random Llama (the test suite's) quantized on the CPU by bitsandbytes 8-bit (and
torchao's int8 dynamic-activation config where torchao is installed), one 30-token sequence
scored (a) alone, (b) right-padded in a batch beside a longer sequence, (c) as a 20-token
prefix in the cache plus the last 10 tokens; max and summed |difference| of its 29 token
log-probabilities against (a). Weight-only quantization (optimum-quanto, torchao int8
weight-only) gives differences at float rounding; models that quantize activations on the
fly do not, and no batched scoring (attrlens' or a naive padded batch) can be exact for them.

    PYTHONPATH=src:tests .venv/bin/python benchmarks/quantized_batch_noise.py \\
        --out benchmarks/quantized_batch_noise.json
"""

from __future__ import annotations

import argparse
import json
import tempfile


def _configs() -> dict:
    import transformers

    out = {"bitsandbytes_8bit": transformers.BitsAndBytesConfig(load_in_8bit=True),
           "quanto_int4": transformers.QuantoConfig(weights="int4")}
    try:
        import torchao.quantization as q

        out["torchao_int8_dynamic"] = transformers.TorchAoConfig(
            q.Int8DynamicActivationInt8WeightConfig())
        out["torchao_int8_weight_only"] = transformers.TorchAoConfig(q.Int8WeightOnlyConfig())
    except ImportError:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="benchmarks/quantized_batch_noise.json")
    args = ap.parse_args()
    import torch
    from conftest import make_tiny_model, save_model_dir
    from transformers import AutoModelForCausalLM

    from attrlens.models.base import LOAD_KWARGS

    d = save_model_dir(make_tiny_model(), tempfile.mkdtemp())
    g = torch.Generator().manual_seed(0)
    a = torch.randint(3, 200, (1, 30), generator=g)
    b = torch.randint(3, 200, (1, 30), generator=g)
    tok = a[0, 1:]
    res: dict = {"torch": torch.__version__, "rows": {}}
    for name, cfg in _configs().items():
        q = AutoModelForCausalLM.from_pretrained(d, quantization_config=cfg, device_map="cpu",
                                                 **LOAD_KWARGS)

        def pick(logits):
            return logits.float().log_softmax(-1)[0, :-1].gather(-1, tok[:, None])[:, 0]

        with torch.no_grad():
            alone = pick(q(a).logits)
            ab = torch.cat([torch.cat([a, torch.zeros(1, 10, dtype=torch.long)], 1),
                            torch.cat([b, b[:, :10]], 1)])
            mask = torch.ones_like(ab)
            mask[0, 30:] = 0
            padded = pick(q(ab, attention_mask=mask).logits[:1, :30])
            first = q(a[:, :20], use_cache=True)
            rest = q(a[:, 20:], past_key_values=first.past_key_values)
            cached = pick(torch.cat([first.logits, rest.logits], 1))
        row = {}
        for key, got in (("padded_batch", padded), ("prefix_cache", cached)):
            row[key] = {"max_abs": float((got - alone).abs().max()),
                        "sum_abs": float((got - alone).abs().sum())}
        res["rows"][name] = row
        print(name, row, flush=True)
    with open(args.out, "w") as f:
        json.dump(res, f, indent=1)


if __name__ == "__main__":
    main()
