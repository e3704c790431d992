"""Terminal rendering with rich: the prompt coloured by score, the output, top-k, cost.

Model and user text is always shown literally: it goes into ``rich.text.Text`` objects
(never parsed as markup, so ``[INST]`` and ``arr[i]`` appear as written), and control
characters (ANSI escapes included) are shown as visible ``\\xNN`` escapes by :func:`literal`.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

# C0 controls except tab/newline, DEL, C1 controls (ESC starts ANSI sequences) and the
# bidirectional overrides/isolates (which reorder what follows them on screen)
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_NL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def literal(text: object, *, keep_newlines: bool = True) -> str:
    """``text`` with control characters made visible (``\\x1b``), safe for a terminal;
    newlines and tabs are kept unless ``keep_newlines`` is False (then shown as ``\\n``)."""
    s = str(text)
    pattern = _CONTROL if keep_newlines else _CONTROL_NL
    return pattern.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), s)


def one_line(text: object) -> str:
    """A message as one terminal-safe line (line breaks become spaces)."""
    return " ".join(literal(text).split())


# background shades by level 1..4 of |score| / scale (key: the sign), for true-colour terminals
_SHADES_RGB = {1: ["on #1f3d1f", "on #2e5e2e", "on #3f8f3f", "on #4fbf4f"],
               -1: ["on #4a1f1f", "on #6e2b2b", "on #a33a3a", "on #d94a4a"]}
# 256-colour terminals: the colour cube's greens and reds (the hex shades above downgrade
# there with levels 1 and 2 on one colour)
_SHADES_256 = {1: ["on color(22)", "on color(28)", "on color(34)", "on color(40)"],
               -1: ["on color(52)", "on color(88)", "on color(124)", "on color(160)"]}
# 16-colour terminals (the hex shades above downgrade there to greys, black and yellow):
# the named ANSI green/red, growing from plain text to bold, bright and a full background
_SHADES_16 = {1: ["green", "bold bright_green", "black on green", "bold black on bright_green"],
              -1: ["red", "bold bright_red", "black on red", "bold black on bright_red"]}


def _style(score: float, scale: float, color_system: str | None = "truecolor") -> str:
    """Green for support, red for opposition; brightness by |score| / scale (4 levels),
    from a palette that ``color_system`` (rich's: "truecolor", "256", "standard",
    "windows") shows with the sign readable and the levels ordered."""
    if scale <= 0 or not np.isfinite(score):
        return ""
    a = min(1.0, abs(score) / scale)
    level = round(a * 4)
    if level == 0:
        return ""
    shades = {"truecolor": _SHADES_RGB, "256": _SHADES_256}.get(color_system or "", _SHADES_16)
    return shades[1 if score > 0 else -1][level - 1]


def _row(label: str, body: Any) -> Any:
    """A line of the report: ``label`` in bold cyan, then ``body`` in its own styles."""
    from rich.text import Text

    return Text.assemble((label, "bold cyan"), body)


def _scored_by(params: Any) -> str:
    """'target nll (mean) · masker delete' from a result's params ('' when not recorded)."""
    if not isinstance(params, dict):
        return ""
    parts = []
    tgt = params.get("target")
    if isinstance(tgt, dict) and tgt.get("target"):
        red = f" ({tgt['reduction']})" if tgt.get("reduction") else ""
        parts.append(f"target {tgt['target']}{red}")
    elif isinstance(tgt, str):
        parts.append(f"target {tgt}")
    if params.get("masker"):
        parts.append(f"masker {params['masker']}")
    return literal(" · ".join(parts), keep_newlines=False)


def render(attr: Any, *, top: int = 10, console: Any = None) -> None:
    """Print an :class:`Attribution` to the terminal."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .html import fmt, significant_terms

    console = console or Console()
    system = console.color_system
    scores = np.asarray(attr.scores, dtype=float)
    finite = scores[np.isfinite(scores)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    text = attr.input_text
    line = Text()
    # the features' text positions (empty spans mark nothing)
    marks = sorted(
        (int(a), int(b), i) for i, sps in enumerate(attr.spans or []) for a, b in (sps or [])
        if b > a
    )
    if text and marks:
        # colour every feature span inside the prompt; frozen text stays dim
        first = marks[0][0]
        last = max(b for _, b, _ in marks)
        # show only the explainable part with a little context
        cursor = first
        for a, b, i in marks:
            if a > cursor:
                line.append(literal(text[cursor:a]), style="dim")
            line.append(literal(text[max(a, cursor):b]), style=_style(scores[i], scale, system))
            cursor = max(cursor, b)
        if cursor < last:
            line.append(literal(text[cursor:last]), style="dim")
    else:
        for lab, s in zip(attr.labels, scores):
            line.append(literal(lab), style=_style(s, scale, system))
            line.append(" ")
    console.print(Text(f"attrlens · {literal(attr.method, keep_newlines=False)}", style="bold"))
    console.print(_row("input  ", line))
    console.print(_row("output ", Text(literal(attr.output_text))))
    scored = _scored_by(attr.params)
    if scored:
        console.print(_row("scored ", Text(scored)))
    model = attr.model if isinstance(attr.model, dict) else {}
    if model.get("scored_by"):  # a served model's output: say who scored it
        console.print(_row("by     ", Text(literal(model["scored_by"], keep_newlines=False))))
    table = Table(title=Text(f"top {min(top, attr.n_features)} features (by magnitude)"),
                  show_lines=False)
    table.add_column("#", justify="right")
    table.add_column("feature")
    table.add_column("score", justify="right")
    for i, lab, s in attr.top_k(top, by="abs"):
        lab = literal(lab, keep_newlines=False)
        table.add_row(Text(str(i)), Text(lab if len(lab) <= 60 else lab[:57] + "..."),
                      Text(fmt(s)))
    console.print(table)
    inter = attr.interactions
    if inter and inter.get("terms"):
        t2 = Table(title=Text(f"strongest interactions ({literal(inter.get('index'))})"))
        t2.add_column("features")
        t2.add_column("value", justify="right")
        # finite values above rounding noise (as the HTML report's), pairs and higher
        terms = [fv for fv in significant_terms(inter) if len(fv[0]) >= 2][:top]
        for feats, v in terms:
            names = " × ".join(literal(attr.labels[j], keep_newlines=False) for j in feats)
            t2.add_row(Text(names), Text(fmt(v)))
        if terms:
            console.print(t2)
    c = attr.cost if isinstance(attr.cost, dict) else {}
    meta = attr.extra.get("metadata", {}) if isinstance(attr.extra, dict) else {}
    conf = meta.get("beam_mass") if isinstance(meta, dict) else None
    # (a count the result does not hold is n/a, not 0: a file without a cost, or one
    # edited by hand, was shown as costing nothing)
    parts = [
        f"{_count(c.get('model_forwards'))} forwards",
        f"{_count(c.get('tokens_processed'))} tokens",
        f"{_count(c.get('api_calls'))} API calls",
        f"{_fixed(c.get('wall_s'))} s",
    ]
    if "value_calls" in c:
        parts.insert(0, f"{_count(c['value_calls'])} evaluations")
    if c.get("oom_retries"):
        parts.append(f"{_count(c['oom_retries'])} batches halved after running out of memory")
    known = any(v is not None for v in c.values())
    console.print(_row("cost   ", Text(" · ".join(parts) if known else "not recorded")))
    if isinstance(conf, list) and conf:
        console.print(_row("confidence ", Text(
            "beam mass per position: " + " ".join(_fixed(x) for x in conf))))
    audit = attr.extra.get("audit") if isinstance(attr.extra, dict) else None
    if isinstance(audit, dict):  # (--audit's K paid calls were shown nowhere)
        rho = _finite(audit.get("spearman"))
        sign = _finite(audit.get("sign_agreement"))
        feats = audit.get("features")
        k = audit.get("k")
        # k evaluations: the unmasked prompt and k - 1 features left out
        n = (len(feats) if isinstance(feats, list)
             else k - 1 if isinstance(k, int) and not isinstance(k, bool) else None)
        console.print(_row("audit  ", Text(
            f"{_count(n)} features checked against the served model's leave-one-out "
            f"({_count(k)} exact evaluations): Spearman {'n/a' if rho is None else f'{rho:+.2f}'} · signs "
            f"agree {'n/a' if sign is None else f'{sign:.0%}'}")))


def _finite(v: Any) -> float | None:
    """``v`` as a finite float (None: missing, not a number, or non-finite)."""
    if isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError, OverflowError):
        return None
    return f if np.isfinite(f) else None


def _count(v: Any) -> str:
    """A count of the cost (n/a: missing or not a number)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(v)
    f = _finite(v)
    return "n/a" if f is None else f"{f:g}"


def _fixed(v: Any) -> str:
    """A number with 2 decimals (seconds, beam mass; n/a: missing or not a number)."""
    f = _finite(v)
    return "n/a" if f is None else f"{f:.2f}"
