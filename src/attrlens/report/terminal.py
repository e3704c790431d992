"""Terminal rendering with rich: the prompt coloured by score, the output, top-k, cost."""

from __future__ import annotations

from typing import Any

import numpy as np


def _style(score: float, scale: float) -> str:
    """Green for support, red for opposition; brightness by |score| / scale."""
    if scale <= 0 or not np.isfinite(score):
        return ""
    a = min(1.0, abs(score) / scale)
    level = int(round(a * 4))
    if level == 0:
        return ""
    greens = ["", "on #1f3d1f", "on #2e5e2e", "on #3f8f3f", "on #4fbf4f"]
    reds = ["", "on #4a1f1f", "on #6e2b2b", "on #a33a3a", "on #d94a4a"]
    return (greens if score > 0 else reds)[level]


def render(attr: Any, *, top: int = 10, console: Any = None) -> None:
    """Print an :class:`Attribution` to the terminal."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    console = console or Console()
    scores = np.asarray(attr.scores, dtype=float)
    finite = scores[np.isfinite(scores)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    text = attr.input_text
    line = Text()
    if text and attr.spans:
        # colour every feature span inside the prompt; frozen text stays dim
        marks = sorted(
            (a, b, i) for i, sps in enumerate(attr.spans) for a, b in sps
        )
        first = marks[0][0] if marks else 0
        last = marks[-1][1] if marks else len(text)
        # show only the explainable part with a little context
        cursor = first
        for a, b, i in marks:
            if a > cursor:
                line.append(text[cursor:a], style="dim")
            line.append(text[a:b], style=_style(scores[i], scale))
            cursor = b
        if cursor < last:
            line.append(text[cursor:last], style="dim")
    else:
        for lab, s in zip(attr.labels, scores):
            line.append(lab, style=_style(s, scale))
            line.append(" ")
    console.print(Text(f"attrlens · {attr.method}", style="bold"))
    console.print(Text("input  ", style="bold cyan") + line)
    console.print(Text("output ", style="bold cyan") + Text(attr.output_text))
    table = Table(title=f"top {min(top, attr.n_features)} features", show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("feature")
    table.add_column("score", justify="right")
    for i, lab, s in attr.top_k(top):
        table.add_row(str(i), lab if len(lab) <= 60 else lab[:57] + "...", f"{s:+.4f}")
    console.print(table)
    inter = attr.interactions
    if inter and inter.get("terms"):
        t2 = Table(title=f"strongest interactions ({inter.get('index')})")
        t2.add_column("features")
        t2.add_column("value", justify="right")
        terms = sorted(
            (t for t in inter["terms"] if len(t["features"]) >= 2),
            key=lambda t: -abs(t["value"]),
        )[:top]
        for t in terms:
            t2.add_row(" × ".join(attr.labels[j] for j in t["features"]), f"{t['value']:+.4f}")
        if terms:
            console.print(t2)
    c = attr.cost
    meta = attr.extra.get("metadata", {}) if isinstance(attr.extra, dict) else {}
    conf = meta.get("beam_mass") if isinstance(meta, dict) else None
    parts = [
        f"{c.get('model_forwards', 0)} forwards",
        f"{c.get('tokens_processed', 0)} tokens",
        f"{c.get('api_calls', 0)} API calls",
        f"{c.get('wall_s', 0):.2f} s",
    ]
    if "value_calls" in c:
        parts.insert(0, f"{c['value_calls']} evaluations")
    console.print(Text("cost   ", style="bold cyan") + Text(" · ".join(parts)))
    if conf is not None:
        console.print(
            Text("confidence ", style="bold cyan")
            + Text("beam mass per position: " + " ".join(f"{x:.2f}" for x in conf))
        )
