"""The terminal report (rich): ranking, colours, robustness to odd but valid results."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from rich.console import Console

from attrlens.analysis.compare import compare_attributions
from attrlens.report.terminal import render
from attrlens.result import Attribution


def _console(color_system: str | None = None, width: int = 200) -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    con = Console(file=buf, width=width, color_system=color_system,
                  force_terminal=color_system is not None, legacy_windows=False)
    return con, buf


def _plain(attr: Attribution, **kw) -> str:
    con, buf = _console()
    render(attr, console=con, **kw)
    return buf.getvalue()


def _top_rows(out: str) -> list[tuple[int, str, float]]:
    """(index, label, score) rows of the top-features table."""
    rows = []
    lines = out.splitlines()
    start = next(k for k, ln in enumerate(lines) if "top " in ln and "features" in ln)
    for ln in lines[start + 1:]:
        cells = [c.strip() for c in ln.strip("│┃ ").split("│")]
        if len(cells) == 3 and cells[0].isdigit():
            rows.append((int(cells[0]), cells[1], cells[2]))
        elif rows and ln.startswith("└"):
            break
    return rows


def test_top_features_are_ranked_by_magnitude():
    scores = np.array([0.1, -5.0, 0.3, 2.0, -0.2])
    attr = Attribution(method="loo", scores=scores, labels=["a", "b", "c", "d", "e"])
    out = _plain(attr, top=3)
    assert "top 3 features (by magnitude)" in " ".join(out.split())
    assert [r[0] for r in _top_rows(out)] == [1, 3, 2]  # |-5| > |2| > |0.3|


def test_comparison_rank_is_by_magnitude():
    a = Attribution(method="loo", scores=np.array([0.1, -0.9, 0.5]), labels=["x", "he", "y"])
    b = Attribution(method="loo", scores=np.array([0.1, 0.05, 0.5]), labels=["x", "she", "y"])
    row = compare_attributions(a, b).summary()[0]
    # a strongly opposing word ranks first (|-0.9| is the largest), not last
    assert row["a"]["rank"] == 1 and row["b"]["rank"] == 3
    # a non-finite score ranks last and does not displace the finite ones
    c = Attribution(method="loo", scores=np.array([np.nan, -0.9, 0.5]), labels=["x", "he", "y"])
    assert compare_attributions(c, b).summary()[0]["a"]["rank"] == 1


_SGR = re.compile(r"\x1b\[([0-9;]*)m([^\x1b]*)")


def _styled_words(out: str) -> dict[str, tuple[str, ...]]:
    """Each word of the input and output lines of the ANSI output -> the SGR codes it is
    printed with."""
    words: dict[str, tuple[str, ...]] = {}
    lines = [ln for ln in out.splitlines() if "input" in ln or "output" in ln]
    for codes, text in _SGR.findall("\x1b[0m" + "\n".join(lines)):
        for w in text.split():
            words[w] = tuple(c for c in codes.split(";") if c not in ("", "0"))
    return words


# foreground / background codes of the named ANSI colours (normal, bright)
_GREEN = {"32", "92", "42", "102"}
_RED = {"31", "91", "41", "101"}


@pytest.mark.parametrize("system", ["standard", "256", "truecolor"])
def test_colours_keep_sign_and_order_on_every_colour_system(system):
    # levels -4..4 of |score| / scale as label chips (no spans)
    labels = ["n4", "n3", "n2", "n1", "z0", "p1", "p2", "p3", "p4"]
    attr = Attribution(method="loo", scores=np.arange(-4.0, 5.0), labels=labels,
                       output_text="done")
    con, buf = _console(system)
    render(attr, console=con)
    words = _styled_words(buf.getvalue())
    styles = [words[w] for w in labels]
    assert styles[4] == ()  # zero: unstyled
    # every level has its own look, and negative and positive never share one
    assert len(set(styles)) == 9
    words = {w: set(c) for w, c in words.items()}
    if system == "standard":
        for w in labels[:4]:
            assert words[w] & _RED and not words[w] & _GREEN, (w, words[w])
        for w in labels[5:]:
            assert words[w] & _GREEN and not words[w] & _RED, (w, words[w])
        # size is ordered: plain colour < bold bright < background < bold bright background
        for side in (labels[3::-1], labels[5:]):
            assert not {"1"} & words[side[0]]
            assert "1" in words[side[1]]
            assert words[side[2]] & {"41", "42"} and words[side[3]] & {"101", "102"}
    # only the label of a line is bold cyan: the prompt and the output are not
    assert "36" not in words["p1"] and "36" not in words["done"]
    assert "36" in words["input"]


def test_interaction_table_leaves_out_noise_and_missing_values():
    attr = Attribution(method="faith_banzhaf", scores=np.array([0.8, 0.1, -0.3, 0.0, 0.2, 0.0]),
                       labels=["aa", "bb", "cc", "dd", "ee", "ff"])
    attr.interactions = {"index": "fbii", "order": 2, "terms": [
        {"features": [0], "value": 0.8}, {"features": [0, 2], "value": -0.5},
        {"features": [1, 2], "value": 0.25}, {"features": [1, 4], "value": 1.1e-16},
        {"features": [0, 4], "value": -1.3e-16}, {"features": [2, 5], "value": None},
        {"features": [3, 5]}]}
    out = _plain(attr)
    assert "aa × cc" in out and "bb × cc" in out
    for pair in ("bb × ee", "aa × ee", "cc × ff", "dd × ff"):
        assert pair not in out


@pytest.mark.parametrize("case", ["wall_null", "counts_null", "beam_null", "beam_str"])
def test_valid_results_with_missing_numbers_show_na(case, tmp_path):
    # schema-valid files (null costs, odd metadata) are shown, with n/a for what is missing
    attr = Attribution(method="gilot", scores=np.array([0.5, 0.2]), labels=["aa", "bb"],
                       cost={"model_forwards": 3, "tokens_processed": 10, "api_calls": 0,
                             "wall_s": 1.5, "value_calls": 4},
                       extra={"metadata": {"beam_mass": [0.9, 0.5]}})
    if case == "wall_null":
        attr.cost["wall_s"] = None
    elif case == "counts_null":
        attr.cost.update(model_forwards=None, value_calls=None)
    elif case == "beam_null":
        attr.extra["metadata"]["beam_mass"] = [0.9, None]
    else:
        attr.extra["metadata"]["beam_mass"] = "x"
    back = Attribution.load(attr.save(tmp_path / "r.json"))  # valid: it loads
    out = _plain(back)
    cost = next(ln for ln in out.splitlines() if ln.startswith("cost"))
    if case == "wall_null":
        assert "n/a s" in cost and "3 forwards" in cost
    elif case == "counts_null":
        assert "n/a forwards" in cost and "n/a evaluations" in cost and "1.50 s" in cost
    elif case == "beam_null":
        assert "beam mass per position: 0.90 n/a" in out
    else:
        assert "beam mass" not in out and "4 evaluations" in cost


def test_features_without_text_positions_are_shown_as_coloured_labels():
    # every span empty (valid: a feature may have no characters in the prompt)
    attr = Attribution(method="loo", scores=np.array([1.0, -1.0, 0.0]),
                       labels=["hello", "world", "foo"], spans=[[[0, 0]], [[6, 6]], []],
                       input_text="hello world foo", output_text="x")
    con, buf = _console("standard")
    render(attr, console=con)
    words = {w: set(c) for w, c in _styled_words(buf.getvalue()).items()}
    assert words["hello"] & _GREEN and words["world"] & _RED, words
    assert "2" not in words["hello"] | words["world"]  # not dim


def test_scores_use_the_reports_number_format(tmp_path):
    # %+.4g as in the HTML: n/a for null, exponent form for the very large and very small
    attr = Attribution(method="loo", scores=np.array([np.nan, 1e300, -1e-300, 12345.0, 0.5]),
                       labels=["aa", "bb", "cc", "dd", "ee"])
    rows = {lab: score for _, lab, score in _top_rows(_plain(attr))}
    assert rows == {"aa": "n/a", "bb": "+1e+300", "cc": "-1e-300", "dd": "+1.234e+04",
                    "ee": "+0.5"}


def test_nan_and_infinity_literals_are_read_as_null(tmp_path):
    attr = Attribution(method="loo", scores=np.array([0.5, np.nan, -0.25]),
                       labels=["aa", "bb", "cc"], per_output_token=np.ones((3, 1)))
    text = attr.to_json().replace("null", "NaN", 1)  # the first null is the NaN score
    text = text.replace("-0.25", "-Infinity")
    path = tmp_path / "r.json"
    path.write_text(text, encoding="utf-8")
    back = Attribution.load(path)
    assert back.scores[0] == 0.5 and np.isnan(back.scores[1]) and np.isnan(back.scores[2])
    # a file the library writes loads back the same
    same = Attribution.load(attr.save(tmp_path / "s.json"))
    np.testing.assert_array_equal(same.scores, attr.scores)


def test_an_audit_is_shown():
    """--audit's agreement with the served model (K paid calls) was only in the JSON."""
    attr = Attribution(method="rope_lime", scores=np.array([0.3, -0.2, 0.1]),
                       labels=["a", "b", "c"])
    assert "audit" not in _plain(attr)
    attr.extra["audit"] = {"k": 4, "spearman": -0.4, "sign_agreement": 0.75,
                           "route": "forced_tokens", "cost": {"value_calls": 4}}
    out = " ".join(_plain(attr).split())
    # k = 4 evaluations: the unmasked prompt and 3 features left out
    assert ("audit 3 features checked against the served model's leave-one-out (4 exact "
            "evaluations): Spearman -0.40 · signs agree 75%") in out
    attr.extra["audit"]["features"] = [0, 2]  # the recorded features count when present
    assert "audit 2 features checked" in " ".join(_plain(attr).split())
    attr.extra["audit"]["spearman"] = None  # undefined (a constant side)
    assert "Spearman n/a" in " ".join(_plain(attr).split())
