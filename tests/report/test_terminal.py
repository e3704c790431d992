"""The terminal report (rich): ranking, colours, robustness to odd but valid results."""

from __future__ import annotations

import io

import numpy as np
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
