"""Terminal rendering of the analysis results (query weight, comparison of two prompts).

Model and user text is always shown literally (rich ``Text`` objects, never markup)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..analysis import Comparison, QueryWeight


def show_comparison(cmp: Comparison, *, top: int = 5, console: Any = None) -> None:
    """Both attributions, then a table of the differing slot(s): labels, score, rank."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .html import fmt
    from .terminal import literal, render

    console = console or Console()
    for tag, attr in (("A", cmp.a), ("B", cmp.b)):
        console.rule(Text(f"prompt {tag}"))
        render(attr, top=top, console=console)
    table = Table(title="contrast: the differing slot(s)")
    for col in ("slot", "A", "score A", "rank A", "B", "score B", "rank B"):
        table.add_column(col, justify="right" if "score" in col or "rank" in col else "left")
    for k, row in enumerate(cmp.summary()):
        a, b = row["a"], row["b"]
        table.add_row(
            str(k), Text(literal(" ".join(a["labels"]), keep_newlines=False) or "-"),
            fmt(a["score"]), str(a["rank"] or "-"),
            Text(literal(" ".join(b["labels"]), keep_newlines=False) or "-"), fmt(b["score"]),
            str(b["rank"] or "-"),
        )
    console.print(table)


def show_query_weight(res: QueryWeight, *, top: int = 5, console: Any = None) -> None:
    """The attribution, the query's features and the query weight."""
    from rich.console import Console
    from rich.text import Text

    from .terminal import _row, literal, render

    console = console or Console()
    render(res.attribution, top=top, console=console)
    q = " ".join(res.attribution.labels[i] for i in res.query_features)
    console.print(_row("query  ", Text(literal(q, keep_newlines=False))))
    console.print(_row("aqw    ", Text(f"{res.aqw:.4f}")))
