"""The Ray backend with a real local Ray and 2 workers gives the in-process results."""

from __future__ import annotations

import json

import numpy as np
import pytest

import attrlens

ITEMS = [
    {"id": "fox", "prompt": "The quick brown fox jumps over the lazy dog.",
     "output": " A stitch in time"},
    {"id": "paris", "prompt": "What is the capital of France? Answer with one word.",
     "output": " Paris"},
    {"id": "sky", "prompt": "Explain why the sky is blue.", "output": " Because of"},
    # longer than the tiny model's context: a failed record, in a worker as in-process
    {"id": "long", "prompt": "word " * 600, "output": " A stitch"},
]


# Ray's actors run torch on 1 thread, this process on its default: float32 sums in another
# order differ in the last bits (measured up to 4.8e-7 on log-probabilities of ~0.2)
TOL = 1e-5


def _records(path):
    recs = [json.loads(x) for x in (path / "records.jsonl").read_text().splitlines()]
    return {r["key"]: r for r in recs}


@pytest.mark.integration
def test_ray_matches_local(tiny_model, tmp_path, capfd):
    ray = pytest.importorskip("ray")
    kw = {"methods": ["loo"], "metrics": ["morf", "lerf", "abpc", "topk"], "model": tiny_model,
              "chat": False}
    local = attrlens.evaluate(ITEMS, out=tmp_path / "local", progress=False, **kw)
    dist = attrlens.evaluate(ITEMS, out=tmp_path / "ray", backend="ray", workers=2,
                             progress=True, **kw)
    assert not ray.is_initialized()  # the run shut down the Ray it started
    err = capfd.readouterr().err
    assert "4/4 records" in err and "ETA" in err and "failed: InputError" in err
    a, b = _records(tmp_path / "local"), _records(tmp_path / "ray")
    assert set(a) == set(b) and len(a) == 4
    assert dist.failed == local.failed and list(dist.failed["loo"]) == ["long"]
    for k in a:
        if a[k]["item_id"] == "long":
            assert a[k]["error"] == b[k]["error"] and b[k]["metrics"] == {}
            continue
        assert np.allclose(a[k]["curves"]["morf_curve"], b[k]["curves"]["morf_curve"],
                           rtol=0, atol=TOL)
        assert a[k]["metrics"].keys() == b[k]["metrics"].keys()
        for m in a[k]["metrics"]:
            assert a[k]["metrics"][m] == pytest.approx(b[k]["metrics"][m], rel=1e-5, abs=TOL)
        sa = json.loads((tmp_path / "local" / a[k]["attribution"]).read_text())["scores"]
        sb = json.loads((tmp_path / "ray" / b[k]["attribution"]).read_text())["scores"]
        assert np.allclose(sa, sb, rtol=0, atol=TOL), np.abs(np.subtract(sa, sb)).max()
    assert dist.table["loo"]["abpc"]["n"] == 3
    assert dist.table["loo"]["abpc"]["mean"] == pytest.approx(
        local.table["loo"]["abpc"]["mean"], rel=1e-5, abs=TOL)
    # the Ray run's store resumes like the local one
    capfd.readouterr()
    again = attrlens.evaluate(ITEMS, out=tmp_path / "ray", backend="ray", workers=2,
                              progress=False, **kw)
    assert again.computed == 1 and again.skipped == 3  # the failed item is tried again
    # without progress, Ray's own start-up lines stay off stderr too
    err = capfd.readouterr().err
    assert "Ray" not in err, err
