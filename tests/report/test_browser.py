"""The report in a real browser: Playwright driving Debian's Chromium (headless).

Opens reports of loo, interaction (spex / faith_banzhaf) and gilot results, clicks output
tokens and asserts the input is recoloured by that row of the matrix, checks that
``<script>`` / ``onerror`` payloads in the prompt and in the output are shown as text and
never run, and that the page makes no network request. One screenshot per report type is
saved under ``out/`` (a CI artifact).

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` wheel
(``pip install playwright``; no ``playwright install``: Debian's Chromium is used).
"""

from __future__ import annotations

import os
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from report_helpers import XSS, add_interactions, make_attr, make_gilot

from attrlens.report.html import colour, compare_html, index_html, max_abs

CHROMIUM = os.environ.get("ATTRLENS_CHROMIUM", "/usr/bin/chromium")
OUT = Path(__file__).resolve().parents[2] / "out"
# payloads that set a global when they run (alert() also opens a dialog we listen for)
PWN = '<script>window.__pwned=1;alert(1)</script><img src=x onerror="window.__pwned=2">'

pytestmark = [
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason=f"no Chromium at {CHROMIUM} (apt-get install -y chromium)"),
]


@pytest.fixture(scope="module")
def browser():
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="the playwright wheel is not installed")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


class Opened:
    """A page opened from a file, with everything it tried: requests, dialogs, errors."""

    def __init__(self, browser: Any, html: str, path: Path):
        path.write_text(html, encoding="utf-8")
        self.url = path.as_uri()
        self.requests: list[str] = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page = browser.new_page(viewport={"width": 1200, "height": 900})
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.page.on("dialog", self._dialog)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: self.errors.append(m.text)
                     if m.type == "error" else None)
        self.page.goto(self.url)
        self.page.wait_for_load_state("load")

    def _dialog(self, d: Any) -> None:
        self.dialogs.append(d.message)
        d.dismiss()

    def check_clean(self) -> None:
        """Nothing ran, nothing was fetched, the viewer started without errors."""
        assert self.dialogs == []
        assert self.page.evaluate("window.__pwned === undefined")
        assert self.requests == [self.url], self.requests
        assert self.errors == [], self.errors

    def feats(self) -> list[dict[str, Any]]:
        return self.page.eval_on_selector_all(
            ".alr-input .alr-feat",
            "els => els.map(e => ({i: Number(e.dataset.i), v: e.dataset.v, "
            "bg: getComputedStyle(e).backgroundColor, text: e.textContent}))")

    def shot(self, name: str) -> None:
        OUT.mkdir(exist_ok=True)
        self.page.screenshot(path=str(OUT / name), full_page=True)


def _expected_bg(v: float, scale: float) -> str:
    c = colour(v, scale)
    return c if c else "rgba(0, 0, 0, 0)"


def assert_coloured(feats: list[dict[str, Any]], values: np.ndarray, scale: float) -> None:
    assert feats, "no feature spans on the page"
    for f in feats:
        v = float(values[f["i"]])
        assert float(f["v"]) == pytest.approx(v, abs=1e-9), f
        assert f["bg"] == _expected_bg(v, scale), f
        assert f["text"] == f["text"].strip() and f["text"]  # no leading space highlighted


def click_recolours(op: Opened, attr: Any, selector: str, j: int) -> None:
    """Clicking ``selector`` (column j) colours the input by column j; clicking it again
    returns to the scores; shift-click of a second column gives the mean of the two."""
    mat = np.asarray(attr.per_output_token, dtype=float)
    mscale, scale = max_abs(mat), max_abs(attr.scores)
    assert_coloured(op.feats(), attr.scores, scale)
    op.page.click(selector)
    assert_coloured(op.feats(), mat[:, j], mscale)
    status = op.page.text_content(".alr-status-text")
    assert status.startswith("output ")
    k = (j + 1) % mat.shape[1]
    op.page.click(f".alr-heat th.alr-col[data-t='{k}']", modifiers=["Shift"])
    assert_coloured(op.feats(), mat[:, [j, k]].mean(1), mscale)
    op.page.click(".alr-reset")
    assert_coloured(op.feats(), attr.scores, scale)


def assert_payload_is_text(op: Opened, attr: Any) -> None:
    page = op.page
    # no element was created from the text: no <img>, and the only scripts are the viewer's
    # two (its JSON data block and its code)
    assert page.evaluate("document.images.length") == 0
    assert page.evaluate("document.scripts.length") == 2
    inp = page.text_content(".alr-input")
    out = page.text_content(".alr-output")
    assert inp == attr.input_text
    assert out == attr.output_text
    assert "<script>" in attr.input_text or "<script>" in attr.output_text


def _hostile(attr: Any) -> Any:
    for k in ("input_text", "output_text"):
        assert XSS in getattr(attr, k) or "<script>" in getattr(attr, k)
    return attr


def test_loo_report_click_recolours_and_payload_stays_text(browser, tmp_path):
    attr = _hostile(make_attr(prompt=f"Is a cat a pet? {PWN} Answer:", output=f" Yes {PWN} ok"))
    op = Opened(browser, attr.to_html(), tmp_path / "loo.html")
    assert op.page.get_attribute(".alr", "data-ready") == "1"
    click_recolours(op, attr, ".alr-output .alr-otok[data-t='1']", 1)
    # hover shows the score
    title = op.page.get_attribute(".alr-input .alr-feat[data-i='2']", "title")
    assert title.startswith("#2 ") and "cat" in title
    assert_payload_is_text(op, attr)
    op.check_clean()
    op.page.close()


def test_interaction_report_shows_terms_and_network(browser, tmp_path):
    attr = add_interactions(make_attr(method="faith_banzhaf",
                                      prompt=f"Is a cat a pet? {PWN} Answer:",
                                      output=f" Yes {PWN} ok"))
    op = Opened(browser, attr.to_html(), tmp_path / "inter.html")
    rows = op.page.eval_on_selector_all(".alr-inter tr td:nth-child(2)",
                                        "els => els.map(e => e.textContent)")
    assert rows[0] == "#1 “a” × #3 “a”"
    nodes = op.page.eval_on_selector_all("svg.alr-net g.alr-node text",
                                         "els => els.map(e => e.textContent)")
    assert "#1 a" in nodes and "#3 a" in nodes
    assert op.page.eval_on_selector_all("svg.alr-net line", "els => els.length") == 3
    assert op.page.is_visible("svg.alr-topk")
    assert_payload_is_text(op, attr)
    op.check_clean()
    op.page.close()


def test_gilot_report_beam_positions(browser, tmp_path):
    attr = _hostile(make_gilot())
    op = Opened(browser, attr.to_html(), tmp_path / "gilot.html")
    heads = op.page.eval_on_selector_all(".alr-heat th.alr-col",
                                         "els => els.map(e => e.textContent)")
    assert heads == ["pos 1", "pos 2", "pos 3", "pos 4"]
    mass = op.page.eval_on_selector_all(".alr-heat tr.alr-mass td",
                                        "els => els.map(e => e.textContent)")
    assert mass == ["0.90", "0.70", "0.55", "0.40"]
    click_recolours(op, attr, ".alr-heat th.alr-col[data-t='2']", 2)
    op.check_clean()
    op.page.close()


def test_compare_and_index_pages(browser, tmp_path):
    a, b = make_attr(), make_attr(method="lime", seed=4)
    op = Opened(browser, compare_html([a, b]), tmp_path / "compare.html")
    cols = op.page.eval_on_selector_all(".alr-cmp", "els => els.length")
    assert cols == 2
    scale = max_abs(a.scores, b.scores)
    spans = op.page.eval_on_selector_all(
        ".alr-cmp:nth-child(2) .alr-feat",
        "els => els.map(e => [Number(e.dataset.i), getComputedStyle(e).backgroundColor])")
    assert all(bg == _expected_bg(float(b.scores[i]), scale) for i, bg in spans)
    op.shot("report_compare.png")
    op.check_clean()
    op.page.close()
    recs = [{"key": "k1", "item_id": f"x {PWN}", "method": "loo", "label": "loo",
             "n_features": 9, "metrics": {"abpc": 0.4}}]
    op = Opened(browser, index_html(recs), tmp_path / "index.html")
    assert op.page.text_content(".alr-index a") == f"x {PWN}"
    op.check_clean()
    op.page.close()


def test_screenshots_of_each_report_type(browser, tmp_path):
    pages = {
        "report_loo.png": make_attr(),
        "report_interactions.png": add_interactions(make_attr(method="faith_banzhaf")),
        "report_gilot.png": make_gilot(),
    }
    for name, attr in pages.items():
        op = Opened(browser, attr.to_html(), tmp_path / name.replace(".png", ".html"))
        if name == "report_loo.png":
            op.page.click(".alr-output .alr-otok[data-t='0']")
        op.shot(name)
        op.check_clean()
        op.page.close()
        assert (OUT / name).stat().st_size > 10_000


# ---- real results from the embedded model ----------------------------------------------------
REAL_PROMPT = "Is <b>a</b> cat <script>alert(1)</script> a pet?"
REAL_OUTPUT = " Yes <img src=x onerror=\"alert(2)\"> it is."


@pytest.fixture(scope="module")
def real_results(request):
    import attrlens

    model = request.getfixturevalue("default_model")
    out = {}
    out["loo"] = attrlens.explain(REAL_PROMPT, model=model, method="loo", output=REAL_OUTPUT,
                                  chat=False)
    out["spex"] = attrlens.explain(REAL_PROMPT, model=model, method="spex",
                                   output=REAL_OUTPUT, chat=False)
    # GiLOT explains the model's own beams (a given output is refused)
    out["gilot"] = attrlens.explain(REAL_PROMPT, model=model, method="gilot", chat=False,
                                    beams=3, horizon=4, per_position=True, max_new_tokens=4)
    return out


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["loo", "spex", "gilot"])
def test_real_results_in_the_browser(browser, tmp_path, real_results, kind):
    attr = real_results[kind]
    op = Opened(browser, attr.to_html(), tmp_path / f"{kind}.html")
    assert op.page.get_attribute(".alr", "data-ready") == "1"
    if kind == "loo":
        assert attr.output_tokens is not None
        assert "".join(t["text"] for t in attr.output_tokens) == attr.output_text
        assert attr.per_output_token.shape == (attr.n_features, len(attr.output_tokens))
        T = len(attr.output_tokens)
        j = min(2, T - 1)
        click_recolours(op, attr, f".alr-output .alr-otok[data-t='{j}']", j)
    elif kind == "spex":
        assert attr.interactions is not None
        assert op.page.eval_on_selector_all(".alr-inter tr", "els => els.length") > 1
    elif attr.per_output_token is not None:
        click_recolours(op, attr, ".alr-heat th.alr-col[data-t='1']", 1)
    assert_payload_is_text(op, attr)
    assert REAL_PROMPT in op.page.text_content(".alr-input")
    op.shot(f"report_real_{kind}.png")
    op.check_clean()
    op.page.close()


def test_bidi_override_in_the_prompt_keeps_the_feature_order(browser, tmp_path):
    # U+202E (right-to-left override) would draw every feature after it in reverse order
    attr = make_attr(prompt="alpha beta \u202egamma delta epsilon zeta", output=" ok fine")
    op = Opened(browser, attr.to_html(), tmp_path / "bidi.html")
    op.check_clean()
    xs = op.page.eval_on_selector_all(
        ".alr-input .alr-feat", "els => els.map(e => e.getBoundingClientRect().left)")
    assert len(xs) == attr.n_features
    assert all(b > a + 1 for a, b in pairwise(xs)), xs  # left to right, by 1 px at least
    assert "\\u202egamma" in op.page.text_content(".alr-input")
    op.page.close()


def test_a_very_long_token_does_not_widen_the_page(browser, tmp_path):
    long = "W" * 3000
    attr = add_interactions(make_attr(prompt=f"Is a {long} cat a pet? Answer:",
                                      output=f" Yes {long} ok"))
    attr.extra["warnings"].append(f"long {long}")
    op = Opened(browser, attr.to_html(), tmp_path / "long.html")
    op.check_clean()
    # the page is no wider than the 1200 px window (was ~44,000 px)
    assert op.page.evaluate("document.documentElement.scrollWidth") <= 1200
    op.page.close()


def test_script_numbers_match_the_python_format(browser, tmp_path):
    from attrlens.report.html import fmt

    attr = make_attr(prompt="a b c d e f g h i j k l")
    attr.scores = np.array([12345.0, -1.0625, 1e-5, 0.00012345, 123.45, -0.0, 1e300, 2.5e-300,
                            99995.0, 0.1, 1234.5, float("nan")])
    op = Opened(browser, attr.to_html(), tmp_path / "fmt.html")
    op.page.click(".alr-reset")  # the script repaints: titles and legend from its fmt()
    titles = op.page.eval_on_selector_all(".alr-input .alr-feat",
                                          "els => els.map(e => [Number(e.dataset.i), e.title])")
    assert len(titles) == attr.n_features
    for i, title in titles:
        assert title.rsplit(": ", 1)[1] == fmt(attr.scores[i]), (i, title)
    assert op.page.text_content(".alr-legend-hi") == fmt(1e300)
    op.check_clean()
    op.page.close()
