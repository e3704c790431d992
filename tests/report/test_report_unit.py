"""Report unit tests: escaping, the data block, whitespace, colours, CSV, compare, index,
plots, output tokens in the JSON form (no browser, no model)."""

from __future__ import annotations

import csv
import html as html_mod
import io
import json
import re

import numpy as np
import pytest
from report_helpers import XSS, add_interactions, make_attr, make_gilot
from scipy.stats import kendalltau, spearmanr

from attrlens.errors import InputError
from attrlens.report.export import (
    CSV_COLUMNS,
    attribution_from_record,
    faithfulness_from_record,
    read_records,
    records_csv,
)
from attrlens.report.html import (
    colour,
    compare_html,
    index_html,
    json_for_script,
    rank_correlations,
    render_html,
    write_dataset_report,
)
from attrlens.result import Attribution


def _data_block(page: str) -> dict:
    m = re.search(r'<script type="application/json" id="[^"]+">(.*?)</script>', page, re.DOTALL)
    assert m is not None
    return json.loads(m.group(1))


def _script_tags(page: str) -> list[str]:
    return re.findall(r"<script\b[^>]*>", page, flags=re.IGNORECASE)


def test_payloads_are_escaped_everywhere():
    attr = add_interactions(make_attr())
    page = render_html(attr)
    # only our two script elements: the JSON data block and the viewer's code
    assert len(_script_tags(page)) == 2
    assert "<img" not in page.lower()
    assert "onerror=\"alert" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    # every place the payload goes (input, output, labels, model id, params, metadata,
    # warnings, interactions) shows it escaped
    assert page.count("&lt;script&gt;alert(1)") >= 8


def test_json_block_cannot_close_the_script_and_round_trips():
    obj = {"s": "</script><!-- <script>&\u2028", "x": [1.5, float("nan")]}
    text = json_for_script(obj)
    assert "<" not in text and ">" not in text and "&" not in text and "\u2028" not in text
    assert json.loads(text) == {"s": obj["s"], "x": [1.5, None]}
    page = render_html(make_attr())
    data = _data_block(page)
    attr = make_attr()
    np.testing.assert_allclose(data["scores"], attr.scores, rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(data["matrix"]), attr.per_output_token, atol=1e-12)
    assert data["cols"] == [t["text"] for t in attr.output_tokens]


def test_highlights_leave_out_the_leading_space_and_text_is_preserved():
    attr = make_attr()
    page = render_html(attr)
    inp = re.search(r'<div class="alr-box alr-input">(.*?)</div>', page, re.DOTALL).group(1)
    shown = re.findall(r'<span class="alr-feat"[^>]*>([^<]*)</span>', inp)
    assert len(shown) == attr.n_features
    assert all(s == s.strip() and s for s in shown)
    # the words are still separated: the visible text equals the input text
    assert html_mod.unescape(re.sub(r"<[^>]+>", "", inp)) == attr.input_text
    out = re.search(r'<div class="alr-box alr-output">(.*?)</div>', page, re.DOTALL).group(1)
    assert html_mod.unescape(re.sub(r"<[^>]+>", "", out)) == attr.output_text
    assert len(re.findall(r'class="alr-otok" data-t="\d+"', out)) == len(attr.output_tokens)


def test_duplicate_labels_are_told_apart_by_index():
    page = render_html(add_interactions(make_attr()))
    assert "#1 “a” × #3 “a”" in page
    assert "#0 “Is” × #1 “a” × #2 “cat”" in page  # the third-order term is listed
    assert page.count("<line ") >= 3  # the network's pairwise edges


def test_colour_scale_is_symmetric_and_diverging():
    assert colour(0.0, 2.0) == "rgb(255, 255, 255)"
    assert colour(2.0, 2.0) == "rgb(67, 147, 195)"
    assert colour(-2.0, 2.0) == "rgb(214, 96, 77)"
    assert colour(5.0, 2.0) == colour(2.0, 2.0)  # clipped
    assert colour(float("nan"), 1.0) == "" and colour(1.0, 0.0) == ""
    page = render_html(make_attr())
    lo = re.search(r'class="alr-legend-lo">([^<]*)<', page).group(1)
    hi = re.search(r'class="alr-legend-hi">([^<]*)<', page).group(1)
    assert float(lo) == -float(hi) and float(hi) == pytest.approx(
        np.max(np.abs(make_attr().scores)), rel=1e-3)


def test_gilot_columns_are_beam_positions_with_mass():
    page = render_html(make_gilot())
    assert "pos 1" in page and "beam mass" in page and "0.55" in page
    assert "&lt;script&gt;alert(1)" in page and len(_script_tags(page)) == 2


def test_faithfulness_panel_and_provenance():
    page = render_html(add_interactions(make_attr()))
    assert "<h2>Faithfulness</h2>" in page and "[0.8, 0.92]" in page
    assert 'class="alr-topk"' in page
    for key in ("model sha256", "abab", "backend / route", "library version", "model_forwards",
                "tokens_processed", "budget", "seed"):
        assert key in page
    assert "<h2>Faithfulness</h2>" not in render_html(make_attr())


def test_repr_html_is_a_fragment():
    frag = make_attr()._repr_html_()
    assert "<html" not in frag and 'class="alr alr-nb"' in frag
    assert len(_script_tags(frag)) == 2


def test_csv_long_form():
    attr = make_attr()
    attr.labels[0] = "=HYPERLINK(1)"
    rows = list(csv.reader(io.StringIO(attr.to_csv(item="it-1"))))
    assert tuple(rows[0]) == CSV_COLUMNS
    n, T = attr.per_output_token.shape
    body = rows[1:]
    assert len(body) == n + n * T
    agg = [r for r in body if r[1] == ""]
    np.testing.assert_allclose([float(r[7]) for r in agg], attr.scores, atol=1e-12)
    assert agg[0][6] == "'=HYPERLINK(1)"  # no formula in a spreadsheet
    assert all(r[0] == "it-1" for r in body)
    for r in body[n:]:
        t, i = int(r[1]), int(r[5])
        assert float(r[7]) == pytest.approx(attr.per_output_token[i, t], abs=1e-12)
        tok = attr.output_tokens[t]
        assert r[4] == tok["text"] and (int(r[2]), int(r[3])) == (tok["start"], tok["end"])
    raw = list(csv.reader(io.StringIO(attr.to_csv(spreadsheet_safe=False))))
    assert raw[1][6] == "=HYPERLINK(1)"
    nomat = make_attr(matrix=False)
    assert len(nomat.to_csv().splitlines()) == 1 + nomat.n_features


def test_output_tokens_round_trip_and_validation(tmp_path):
    attr = make_attr()
    path = attr.save(tmp_path / "a.json")
    back = Attribution.load(path)
    assert back.output_tokens == attr.output_tokens
    d = attr.to_dict()
    del d["output"]["tokens"]
    assert Attribution.from_dict(d).output_tokens is None
    d["output"]["tokens"] = [{"text": 1}]
    with pytest.raises(InputError, match="output.tokens"):
        Attribution.from_dict(d)


def test_compare_uses_one_scale_and_rank_correlations():
    a, b = make_attr(seed=0), make_attr(method="lime", seed=3)
    page = compare_html([a, b])
    corr = rank_correlations([a, b])
    assert corr[0][1]["spearman"] == pytest.approx(spearmanr(a.scores, b.scores).statistic)
    assert corr[0][1]["kendall"] == pytest.approx(kendalltau(a.scores, b.scores).statistic)
    assert corr[0][0]["spearman"] == pytest.approx(1.0)
    scale = max(np.max(np.abs(a.scores)), np.max(np.abs(b.scores)))
    hi = re.search(r'class="alr-legend-hi">([^<]*)<', page).group(1)
    assert float(hi) == pytest.approx(scale, rel=1e-3)
    # the largest score anywhere gets the full colour in its own column
    i = int(np.argmax(np.abs(b.scores))) if np.max(np.abs(b.scores)) >= np.max(
        np.abs(a.scores)) else None
    if i is not None:
        assert colour(float(b.scores[i]), scale) in page.replace("background-color:", "")
    assert "<img" not in page.lower() and len(_script_tags(page)) == 0
    other = make_attr(prompt="Completely different words here", seed=1)
    with pytest.raises(InputError, match="different features"):
        compare_html([a, other])
    with pytest.raises(InputError, match="at least 2"):
        compare_html([a])


def _record(attr: Attribution, item: str, key: str) -> dict:
    return {"key": key, "item_id": item, "method": attr.method, "label": attr.method,
            "n_features": attr.n_features, "metrics": {"abpc": 0.5, "r2": 0.9, "topk": 0.2},
            "r2_kind": "surrogate", "topk_curve": [0.1, 0.2, 0.3],
            "attribution_data": attr.to_dict()}


def test_index_and_dataset_report(tmp_path):
    recs = [_record(make_attr(), f"item {XSS}", "k1"), _record(make_gilot(), "q2", "k2")]
    page = index_html(recs)
    assert "<img" not in page.lower() and "&lt;script&gt;" in page
    links = re.findall(r'href="([^"]+)"', page)
    assert len(links) == 2 and all(link.startswith("items/") for link in links)
    assert all(re.fullmatch(r"items/[A-Za-z0-9._-]+\.html", link) for link in links)
    with pytest.raises(InputError, match="relative"):
        index_html(recs, href=lambda r: "javascript:alert(1)")
    # a run's records.jsonl (torn last line) loads back into the viewer
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps(r) for r in recs] + ['{"key": "torn", "item']
    (run / "records.jsonl").write_text("\n".join(lines), encoding="utf-8")
    assert [r["key"] for r in read_records(run)] == ["k1", "k2"]
    # killed, then resumed: the torn line is mid-file (the store writes on after it)
    resumed = [json.dumps(recs[0]), '{"key": "torn", "item', json.dumps(recs[1])]
    (run / "records.jsonl").write_text("\n".join(resumed), encoding="utf-8")
    assert [r["key"] for r in read_records(run)] == ["k1", "k2"]
    index = write_dataset_report(run, tmp_path / "site")
    for link in re.findall(r'href="([^"]+)"', index.read_text(encoding="utf-8")):
        item_page = (index.parent / link).read_text(encoding="utf-8")
        assert "<h2>Faithfulness</h2>" in item_page
    faith = faithfulness_from_record(recs[0])
    assert faith["r2"] == {"value": 0.9, "kind": "surrogate"}
    assert faith["topk"]["delta"] == [0.1, 0.2, 0.3]
    back = attribution_from_record(recs[0])
    np.testing.assert_allclose(back.scores, make_attr().scores)
    rows = list(csv.reader(io.StringIO(records_csv(recs))))
    assert rows[1][0].startswith("item <script>")
    # a failed record (an item the method could not explain): a row with its reason, no
    # page, no CSV rows
    failed = {"key": "k3", "item_id": "long", "label": "loo", "metrics": {},
              "error": "InputError: The prompt (9000 tokens) is longer than the context."}
    page = index_html([*recs, failed])
    assert "3 records (1 failed)" in page and "failed: InputError: The prompt" in page
    assert len(re.findall(r'href="([^"]+)"', page)) == 2
    (run / "records.jsonl").write_text("\n".join(lines[:2] + [json.dumps(failed)]),
                                       encoding="utf-8")
    index = write_dataset_report(run, tmp_path / "site2")
    assert len(list((tmp_path / "site2" / "items").iterdir())) == 2
    assert "failed: InputError" in index.read_text(encoding="utf-8")
    assert records_csv([*recs, failed]) == records_csv(recs)


@pytest.mark.parametrize("suffix,magic", [(".png", b"\x89PNG"), (".svg", b"<?xml"),
                                          (".pdf", b"%PDF")])
def test_plots_save_by_suffix(tmp_path, suffix, magic):
    attr = make_attr()
    attr.plot(tmp_path / f"s{suffix}")
    attr.plot_matrix(tmp_path / f"m{suffix}")
    for name in ("s", "m"):
        assert (tmp_path / f"{name}{suffix}").read_bytes().startswith(magic)


def test_plot_errors(tmp_path):
    with pytest.raises(InputError, match="no per-output-token matrix"):
        make_attr(matrix=False).plot_matrix()
    with pytest.raises(InputError, match=r"\.png"):
        make_attr().plot(tmp_path / "x.jpg")
    fig = make_gilot().plot_matrix()
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels[:2] == ["pos 1", "pos 2"]


def test_output_pieces_cover_the_output(tiny_model):
    from attrlens.text.pieces import output_pieces

    text = " The capital of France is Paris. é"
    ids, _ = tiny_model.tokenize(text)
    pieces = output_pieces(tiny_model, ids, text)
    assert len(pieces) == len(ids)
    assert "".join(p["text"] for p in pieces) == text
    assert all(text[p["start"]:p["end"]] == p["text"] for p in pieces)
    # the decoding fallback (ids that do not re-tokenize to themselves)
    gen = ids[:3]
    dec = tiny_model.decode(gen)
    pieces = output_pieces(tiny_model, gen, dec)
    assert "".join(p["text"] for p in pieces) == dec and len(pieces) == 3


def test_output_pieces_cover_an_output_cut_inside_a_character(tiny_model):
    from attrlens.text.pieces import output_pieces

    ids, _ = tiny_model.tokenize(" ok \U0001f642 fine")  # the emoji is 4 byte tokens here
    for cut in (4, 5, 6):  # stopped after 1, 2 or 3 of its bytes
        gen = ids[:cut]
        dec = tiny_model.decode(gen)
        assert dec == " ok \ufffd"
        pieces = output_pieces(tiny_model, gen, dec)
        assert len(pieces) == cut
        assert "".join(p["text"] for p in pieces) == dec  # the trailing "\ufffd" too
        assert pieces[-1] == {"text": "\ufffd", "start": 4, "end": 5, "id": gen[-1]}
        assert all(dec[p["start"]:p["end"]] == p["text"] for p in pieces)


def test_beam_mass_without_a_matrix_is_shown_as_confidence():
    attr = make_gilot()
    attr.per_output_token = None  # gilot without per_position
    page = render_html(attr)
    assert "<h2>Confidence</h2>" in page and "<td>0.550</td>" in page
    assert "<h2>Confidence</h2>" not in render_html(make_attr())  # no beams, no panel


def test_provenance_shows_the_environment():
    attr = make_attr()
    attr.extra["environment"] = {"torch": "2.99.0+cpu", "transformers": "9.1.0",
                                 "torch_threads": 7}
    page = render_html(attr)
    assert "torch threads" in page and "2.99.0+cpu" in page and "9.1.0" in page
    assert "torch threads" not in render_html(make_attr())


def _noisy_interactions() -> Attribution:
    """Three real terms and the ~1e-16 residue an exact game's solve leaves where the true
    value is 0 (faith_banzhaf), plus terms with no finite value."""
    attr = make_attr()
    attr.interactions = {"index": "fbii", "order": 2, "terms": [
        {"features": [0], "value": 0.8}, {"features": [0, 2], "value": -0.5},
        {"features": [1, 2], "value": 0.25}, {"features": [1, 4], "value": 1.1e-16},
        {"features": [0, 4], "value": -1.3e-16}, {"features": [5], "value": 2.3e-16},
        {"features": [2, 5], "value": None}, {"features": [3, 5]}]}
    return attr


def test_interaction_noise_terms_are_not_shown():
    page = render_html(_noisy_interactions())
    # the three real terms; the 1e-16 residue is not drawn, listed nor counted
    assert "3 non-zero terms" in page
    assert page.count("<line ") == 2
    table = re.search(r"<table class='alr-inter'>(.*?)</table>", page, re.DOTALL).group(1)
    assert table.count("<tr>") == 1 + 2  # header + the two pairs
    assert "e-16" not in page


def test_bidi_controls_and_nul_are_shown_not_obeyed():
    prompt = "alpha beta \u202egamma delta\u2066 eps\x00ilon zeta"
    attr = make_attr(prompt=prompt, output=" ok \u202efine\x00 done")
    page = render_html(attr)
    for ch in ("\u202e", "\u2066", "\x00"):
        assert ch not in page
    assert "\\u202egamma" in page and "eps\\x00ilon" in page and "fine\\x00" in page
    assert "\\u2066" in page
    css = re.search(r"<style>(.*?)</style>", page, re.DOTALL).group(1)
    rule = re.search(r"([^}]*)\{unicode-bidi:isolate\}", css).group(1)
    for sel in (".alr-feat", ".alr-box", ".alr td", ".alr th"):
        assert sel in rule
    assert all("\u202e" not in c for c in _data_block(page)["cols"])


def test_compare_page_colours_both_prompts_on_one_scale():
    from attrlens.analysis.compare import compare_attributions
    from attrlens.cli.analysis import comparison_html

    a = make_attr(prompt="Write a story about a female homemaker.", seed=0)
    b = make_attr(prompt="Write a story about a male homemaker.", seed=1)
    a.scores = a.scores / np.max(np.abs(a.scores))  # largest |score| 1
    b.scores = 10 * b.scores / np.max(np.abs(b.scores))  # largest |score| 10
    page = comparison_html(compare_attributions(a, b))
    blocks = re.findall(r'<script type="application/json" id="[^"]+">(.*?)</script>', page,
                        re.DOTALL)
    assert len(blocks) == 2
    mscale = max(np.max(np.abs(a.per_output_token)), np.max(np.abs(b.per_output_token)))
    for blk in blocks:
        data = json.loads(blk)
        assert data["scale"] == pytest.approx(10.0, rel=1e-12)
        assert data["mscale"] == pytest.approx(mscale, rel=1e-12)
    # a's strongest feature (|score| 1) is a tenth of the full colour, as on b's scale
    i = int(np.argmax(np.abs(a.scores)))
    span = re.search(rf'<span class="alr-feat" data-i="{i}"[^>]*>', page).group(0)
    assert colour(float(a.scores[i]), 10.0) in span
    # the headings are inside the styled reports
    assert re.search(r'<div class="alr" id="[^"]+"><h2>Prompt A</h2>', page)
    assert re.search(r'<div class="alr" id="[^"]+"><h2>Prompt B</h2>', page)


def test_long_labels_are_shortened_with_the_full_name_in_the_title():
    long = "W" * 3000
    attr = add_interactions(make_attr(prompt=f"Is a {long} cat a pet? Answer:"))
    page = render_html(attr)
    full = f"#2 “{long}”"
    short = f"#2 “{'W' * 59}…”"
    top = re.search(r"<table class='alr-top'>(.*?)</table>", page, re.DOTALL).group(1)
    assert f'<span title="{full}">{short}</span>' in top and long not in top.replace(
        f'title="{full}"', "")
    heat = re.search(r'<table class="alr-heat">(.*?)</table>', page, re.DOTALL).group(1)
    assert f'<th class="alr-row"><span title="{full}">{short}</span></th>' in heat
    inter = re.search(r"<table class='alr-inter'>(.*?)</table>", page, re.DOTALL).group(1)
    assert short in inter


@pytest.mark.parametrize("target", ["//evil.example/x.html", "/etc/passwd", "\\\\host\\x.html",
                                    "\\x.html", "javascript:alert(1)", "http://x/y"])
def test_index_refuses_links_that_are_not_relative(target):
    recs = [_record(make_attr(), "q1", "k1")]
    with pytest.raises(InputError, match="relative"):
        index_html(recs, href=lambda r: target)


def test_index_escapes_hash_in_file_names():
    recs = [_record(make_attr(), "q1", "k1")]
    page = index_html(recs, href=lambda r: "items/c#1 a.html")
    assert re.findall(r'href="([^"]+)"', page) == ["items/c%231%20a.html"]


def test_an_audit_is_shown_in_the_html_report():
    """--audit's K paid calls (the served model's own leave-one-out of the top and bottom
    features) were shown in the terminal only."""
    attr = Attribution(method="rope_lime", scores=np.array([0.3, -0.2, 0.1]),
                       labels=["alpha", "beta", "gamma"], spans=[[[0, 5]], [[6, 10]], [[11, 16]]],
                       input_text="alpha beta gamma", output_text="x")
    assert "<h2>Audit</h2>" not in render_html(attr)
    attr.extra["audit"] = {"k": 3, "route": "forced_tokens", "features": [0, 1],
                           "labels": ["alpha", "beta"], "surrogate": [0.3, -0.2],
                           "served": [0.9, 0.25], "served_full": 1.0, "spearman": None,
                           "sign_agreement": 0.5, "cost": {"value_calls": 3}}
    page = render_html(attr)
    section = page[page.index("<h2>Audit</h2>"):]
    text = " ".join(re.sub(r"<[^>]+>", " ", section[:section.index("<h2>", 5)]).split())
    assert ("3 exact evaluations of the served model (forced_tokens route): Spearman n/a · "
            "signs agree 50%") in text
    # each audited feature: its surrogate score beside the served model's effect
    assert "#0 “alpha” +0.3 +0.9 #1 “beta” -0.2 +0.25" in text
    attr.extra["audit"]["labels"] = [XSS, "beta"]  # labels are escaped
    assert XSS not in render_html(attr)
