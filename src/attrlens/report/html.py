"""Self-contained HTML report of an Attribution (every text escaped, no string-built markup
from untrusted input without escaping)."""

from __future__ import annotations

import html
import json
from typing import Any

import numpy as np


def _bg(score: float, scale: float) -> str:
    if scale <= 0 or not np.isfinite(score):
        return "transparent"
    a = min(1.0, abs(score) / scale) * 0.85
    return f"rgba(46,160,67,{a:.3f})" if score > 0 else f"rgba(218,54,51,{a:.3f})"


def render_html(attr: Any) -> str:
    """The report as one HTML string."""
    scores = np.asarray(attr.scores, dtype=float)
    finite = scores[np.isfinite(scores)]
    scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    text = attr.input_text or ""
    pieces: list[str] = []
    marks = sorted((a, b, i) for i, sps in enumerate(attr.spans or []) for a, b in sps)
    cursor = 0
    for a, b, i in marks:
        if a > cursor:
            pieces.append(f'<span class="frozen">{html.escape(text[cursor:a])}</span>')
        pieces.append(
            f'<span class="feat" style="background:{_bg(scores[i], scale)}" '
            f'title="#{i} {html.escape(attr.labels[i])}: {scores[i]:+.4f}">'
            f"{html.escape(text[a:b])}</span>"
        )
        cursor = b
    if cursor < len(text):
        pieces.append(f'<span class="frozen">{html.escape(text[cursor:])}</span>')
    rows = "".join(
        f"<tr><td>{i}</td><td>{html.escape(lab)}</td><td>{s:+.4f}</td></tr>"
        for i, lab, s in attr.top_k(min(20, attr.n_features))
    )
    cost = html.escape(json.dumps(attr.cost))
    meta = attr.extra.get("metadata") if isinstance(attr.extra, dict) else None
    conf = ""
    if isinstance(meta, dict) and meta.get("beam_mass") is not None:
        cells = "".join(
            f"<td>{float(m):.3f}</td>" for m in meta["beam_mass"]
        )
        heads = "".join(f"<th>{j + 1}</th>" for j in range(len(meta["beam_mass"])))
        conf = (
            "<h2>Confidence</h2><p>Probability mass covered by the beams at each output "
            f"position (low mass = rough marginals):</p><table><tr>{heads}</tr><tr>{cells}</tr>"
            "</table>"
        )
    params = html.escape(json.dumps(attr.params, default=str))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>attrlens · {html.escape(attr.method)}</title>
<style>
body{{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;line-height:1.6}}
.prompt{{white-space:pre-wrap;border:1px solid #ccc;padding:1rem;border-radius:6px}}
.frozen{{color:#999}} .feat{{border-radius:3px}}
table{{border-collapse:collapse}} td,th{{padding:.2rem .6rem;border-bottom:1px solid #eee}}
code{{font-size:.8rem}}
</style></head><body>
<h1>attrlens · {html.escape(attr.method)}</h1>
<p>model: <code>{html.escape(str(attr.model.get("id")))}</code></p>
<h2>Input</h2><div class="prompt">{"".join(pieces)}</div>
<h2>Output</h2><div class="prompt">{html.escape(attr.output_text)}</div>
<h2>Top features</h2><table><tr><th>#</th><th>feature</th><th>score</th></tr>{rows}</table>
{conf}
<h2>Cost</h2><code>{cost}</code>
<h2>Parameters</h2><code>{params}</code>
</body></html>
"""
