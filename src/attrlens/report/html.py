"""Self-contained HTML reports: one result, a comparison of several, a data-set index.

Every page is one file with inline CSS and JavaScript (``templates/report.css``,
``templates/report.js``); it makes no network request and opens from disk. Every text that
comes from a model, a prompt, a label or a parameter goes through :func:`html.escape` (text
nodes and attribute values alike); the numbers the script needs travel in a
``<script type="application/json">`` block in which ``<``, ``>`` and ``&`` are written as
JSON ``\\u`` escapes, so no text can close the block. The script writes only through
``textContent``/``title``.

Colours: a diverging, symmetric scale from red (negative = the feature opposes the output)
through white (0) to blue (positive = the feature supports the output), scaled by the largest
magnitude shown (the legend prints the range). ``per_output_token`` is (n_features, T): row i
is feature i, column t is output token t (GiLOT: beam position t).
"""

from __future__ import annotations

import html
import json
import math
import re
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..errors import InputError
from ..result import json_safe

_TEMPLATES = Path(__file__).parent / "templates"
POS = (67, 147, 195)  #: colour of +scale (supports the output)
NEG = (214, 96, 77)  #: colour of -scale (opposes the output)
FAITHFULNESS_KEY = "faithfulness"  #: Attribution.extra key of the faithfulness panel


# ---- small helpers ---------------------------------------------------------------------------
# characters a page would drop or act on instead of showing: C0 controls but tab, newline
# and carriage return (NUL vanishes), DEL, C1 controls and the bidirectional embeddings,
# overrides and isolates (which reorder the text after them on screen)
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def visible(value: Any) -> str:
    """``value`` as text with the characters of ``_INVISIBLE`` written as escapes
    (``\\x00``, ``\\u202e``), as the terminal report shows them."""
    return _INVISIBLE.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"),
                          str(value))


def esc(value: Any) -> str:
    """``value`` as text, escaped for an HTML text node or a quoted attribute, control and
    bidirectional formatting characters shown as escapes (:func:`visible`)."""
    return html.escape(visible(value), quote=True)


def json_for_script(obj: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: ``<``, ``>``, ``&`` and the
    JavaScript line separators are written as ``\\u`` escapes (``</script>`` cannot occur)."""
    text = json.dumps(json_safe(obj), ensure_ascii=False, allow_nan=False)
    for ch, rep in (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"),
                    ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        text = text.replace(ch, rep)
    return text


def colour(value: float | None, scale: float) -> str:
    """CSS colour of ``value`` on the symmetric scale [-scale, scale] ("" = none); the same
    formula as the script's, so the browser tests can compare computed styles."""
    if value is None or not math.isfinite(value) or not scale > 0:
        return ""
    t = max(-1.0, min(1.0, value / scale))
    c, a = (POS if t >= 0 else NEG), abs(t)
    rgb = [math.floor(255 + (c[k] - 255) * a + 0.5) for k in range(3)]
    return f"rgb({rgb[0]}, {rgb[1]}, {rgb[2]})"


def fmt(value: Any, signed: bool = True) -> str:
    """A score for display (4 significant digits; n/a for missing or non-finite)."""
    if value is None or isinstance(value, bool):
        return "n/a" if value is None else str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not math.isfinite(v):
        return "n/a"
    return f"{v:+.4g}" if signed else f"{v:.4g}"


def max_abs(*arrays: Any) -> float:
    """Largest finite magnitude over the arrays (0.0 when there is none)."""
    best = 0.0
    for a in arrays:
        if a is None:
            continue
        x = np.asarray(a, dtype=float)
        x = x[np.isfinite(x)]
        if x.size:
            best = max(best, float(np.max(np.abs(x))))
    return best


def _asset(name: str) -> str:
    return (_TEMPLATES / name).read_text(encoding="utf-8")


def _style(v: float | None, scale: float) -> str:
    c = colour(v, scale)
    return f' style="background-color:{c}"' if c else ""


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _legend(scale: float, *, title: str = "") -> str:
    return (
        f'<div class="alr-legend">{esc(title)}<span>opposes</span>'
        f'<span class="alr-legend-lo">{esc(fmt(-scale))}</span><span class="alr-bar" '
        f'title="red = negative (opposes the output), blue = positive (supports it)"></span>'
        f'<span class="alr-legend-hi">{esc(fmt(scale))}</span><span>supports the output'
        "</span></div>"
    )


def feature_name(i: int, label: str) -> str:
    """``#i “label”`` (the index tells apart equal labels, e.g. two "a")."""
    return f"#{i} “{label.strip() or label}”"


def name_html(i: int, label: str, limit: int = 60) -> str:
    """:func:`feature_name` as escaped HTML, a label longer than ``limit`` characters
    shortened (as the terminal does) with the full name in the title."""
    full = feature_name(i, label)
    core = label.strip() or label
    if len(core) <= limit:
        return esc(full)
    return f'<span title="{esc(full)}">{esc(feature_name(i, core[:limit - 1] + "…"))}</span>'


# ---- the input -------------------------------------------------------------------------------
def _input_html(attr: Any, scores: np.ndarray, scale: float) -> str:
    """The input text, each feature's text coloured (leading/trailing whitespace left out of
    the highlight so words never run together); text outside features greyed."""
    text = attr.input_text or ""
    spans = attr.spans or []
    marks = sorted(
        (int(a), int(b), i) for i, sps in enumerate(spans) for a, b in (sps or []) if b > a
    )
    if not text or not marks:  # no text positions: the labels as chips
        chips = " ".join(_feat_span(i, lab, scores, scale, lab)
                         for i, lab in enumerate(attr.labels))
        return f'<div class="alr-box alr-input">{chips}</div>'
    out: list[str] = []
    cursor = 0
    for a, b, i in marks:
        a = max(a, cursor)
        if b <= a:
            continue
        if a > cursor:
            out.append(f'<span class="alr-frozen">{esc(text[cursor:a])}</span>')
        piece = text[a:b]
        core = piece.strip()
        lead = len(piece) - len(piece.lstrip())
        trail = len(piece) - len(piece.rstrip())
        if not core:
            out.append(esc(piece))
        else:
            out.append(esc(piece[:lead]))
            out.append(_feat_span(i, attr.labels[i], scores, scale, core))
            out.append(esc(piece[len(piece) - trail:]))
        cursor = b
    if cursor < len(text):
        out.append(f'<span class="alr-frozen">{esc(text[cursor:])}</span>')
    return f'<div class="alr-box alr-input">{"".join(out)}</div>'


def _feat_span(i: int, label: str, scores: np.ndarray, scale: float, shown: str) -> str:
    v = _num(scores[i])
    return (
        f'<span class="alr-feat" data-i="{i}" data-label="{esc(label)}" '
        f'data-v="{"" if v is None else repr(v)}" title="#{i} {esc(label)}: {esc(fmt(v))}"'
        f"{_style(v, scale)}>{esc(shown)}</span>"
    )


# ---- the output and the matrix ---------------------------------------------------------------
def _beam_meta(attr: Any, T: int) -> tuple[list[float] | None, list[dict[str, Any]]]:
    meta = (attr.extra or {}).get("metadata") or {}
    mass = meta.get("beam_mass") if isinstance(meta, dict) else None
    beams = meta.get("beams") if isinstance(meta, dict) else None
    if not isinstance(mass, list) or len(mass) != T:
        mass = None
    return mass, beams if isinstance(beams, list) else []


def _columns(attr: Any, T: int) -> tuple[list[str], bool, list[float] | None]:
    """Column labels of the matrix, whether they are the output tokens, and beam masses."""
    mass, _ = _beam_meta(attr, T)
    toks = attr_output_tokens(attr)
    if mass is not None:
        return [f"pos {j + 1}" for j in range(T)], False, mass
    if toks is not None and len(toks) == T:
        return [t["text"] for t in toks], True, None
    return [f"t{j}" for j in range(T)], False, None


def attr_output_tokens(attr: Any) -> list[dict[str, Any]] | None:
    toks = getattr(attr, "output_tokens", None)
    return toks if isinstance(toks, list) else None


def _output_html(attr: Any, clickable: bool) -> str:
    text = attr.output_text or ""
    toks = attr_output_tokens(attr)
    if not toks:
        return f'<div class="alr-box alr-output">{esc(text)}</div>'
    out, cursor = [], 0
    for j, t in enumerate(toks):
        piece = t["text"]
        if not piece:
            continue
        lead = len(piece) - len(piece.lstrip())
        core = piece.strip()
        trail = len(piece) - len(piece.rstrip())
        out.append(esc(piece[:lead]))
        if core:
            if clickable:
                out.append(f'<span class="alr-otok" data-t="{j}" role="button" tabindex="0" '
                           f'aria-pressed="false" title="output token {j}: click to colour the '
                           f'input by it (shift-click adds tokens)">{esc(core)}</span>')
            else:
                out.append(f'<span class="alr-opiece" title="output token {j}">{esc(core)}</span>')
        out.append(esc(piece[len(piece) - trail:]) if trail and core else "")
        cursor = max(cursor, int(t.get("end", 0)))
    if cursor < len(text):
        out.append(esc(text[cursor:]))
    return f'<div class="alr-box alr-output">{"".join(out)}</div>'


def _matrix_html(attr: Any, mat: np.ndarray, mscale: float, cols: list[str],
                 mass: list[float] | None) -> str:
    n = mat.shape[0]
    heads = "".join(
        f'<th class="alr-col" data-t="{j}" role="button" tabindex="0" aria-pressed="false" '
        f'title="{esc(c)} (click: colour the input by this column)">'
        f"{esc(c.strip() or repr(c))}</th>"
        for j, c in enumerate(cols)
    )
    mass_row = ""
    if mass is not None:
        mass_row = '<tr class="alr-mass"><th class="alr-row">beam mass</th>' + "".join(
            f'<td title="probability mass covered by the beams at position {j + 1}">'
            f"{esc(_mass(m))}</td>" for j, m in enumerate(mass)) + "</tr>"
    rows = []
    for i in range(n):
        cells = "".join(
            f'<td class="alr-cell" data-t="{j}" data-v="{"" if v is None else repr(v)}" '
            f'title="{esc(feature_name(i, attr.labels[i]))} → {esc(cols[j])}: {esc(fmt(v))}"'
            f"{_style(v, mscale)}></td>"
            for j, v in enumerate(_num(x) for x in mat[i])
        )
        rows.append(f'<tr><th class="alr-row">{name_html(i, attr.labels[i])}</th>'
                    f"{cells}</tr>")
    return (f'<div class="alr-scroll"><table class="alr-heat"><thead><tr><th class="alr-row">'
            f"feature \\ output</th>{heads}</tr>{mass_row}</thead><tbody>{''.join(rows)}"
            "</tbody></table></div>")


def _mass(m: Any) -> str:
    v = _num(m)
    return "n/a" if v is None else f"{v:.2f}"


def _confidence_html(attr: Any) -> str:
    """GiLOT's beam mass per output position as a table."""
    meta = (attr.extra or {}).get("metadata") or {}
    mass = meta.get("beam_mass") if isinstance(meta, dict) else None
    if not isinstance(mass, list) or not mass:
        return ""
    heads = "".join(f"<th>pos {j + 1}</th>" for j in range(len(mass)))
    cells = "".join(f"<td>{esc(_mass3(m))}</td>" for m in mass)
    return ("<h2>Confidence</h2><p class='alr-muted'>Probability mass covered by the beams at "
            "each output position (low mass = rough marginals).</p>"
            f"<table class='alr-conf'><tr>{heads}</tr><tr>{cells}</tr></table>")


def _mass3(m: Any) -> str:
    v = _num(m)
    return "n/a" if v is None else f"{v:.3f}"


def _beams_html(attr: Any, T: int) -> str:
    mass, beams = _beam_meta(attr, T)
    if not beams:
        return ""
    rows = "".join(
        f"<tr><td class='alr-num'>{k + 1}</td><td><code>{esc(b.get('text', ''))}</code></td>"
        f"<td class='alr-num'>{esc(fmt(b.get('logprob'), signed=False))}</td></tr>"
        for k, b in enumerate(beams) if isinstance(b, dict)
    )
    out = "<h3>Beams (reference input)</h3>"
    if mass is not None:
        out += ("<p class='alr-muted'>Columns of the matrix are beam positions; the row under "
                "the positions is the probability mass the beams cover there (low mass = rough "
                "marginals).</p>")
    if rows:
        out += ("<table><tr><th>beam</th><th>text</th><th>log-probability</th></tr>"
                f"{rows}</table>")
    return out


# ---- interactions ----------------------------------------------------------------------------
NOISE_RTOL = 1e-9  #: terms with |value| <= NOISE_RTOL * the largest |value| are rounding noise


def significant_terms(inter: Any) -> list[tuple[tuple[int, ...], float]]:
    """The interaction terms worth showing, largest |value| first: finite values above
    rounding noise (|value| > :data:`NOISE_RTOL` x the largest; an exact game's solved
    index leaves ~1e-16 where the truth is 0); terms without a finite value are left out."""
    out = []
    for t in (inter.get("terms", []) if isinstance(inter, dict) else []) or []:
        if not isinstance(t, dict):
            continue
        v = _num(t.get("value"))
        feats = tuple(int(j) for j in t.get("features", []) or [])
        if v is not None and feats:
            out.append((feats, v))
    vmax = max((abs(v) for _, v in out), default=0.0)
    out = [fv for fv in out if abs(fv[1]) > NOISE_RTOL * vmax]
    out.sort(key=lambda fv: -abs(fv[1]))
    return out


def _terms(attr: Any) -> list[tuple[tuple[int, ...], float]]:
    return significant_terms(getattr(attr, "interactions", None) or {})


def _interactions_html(attr: Any, top: int = 20) -> str:
    inter = getattr(attr, "interactions", None)
    if not inter:
        return ""
    terms = _terms(attr)
    labels = attr.labels
    index, order = inter.get("index"), inter.get("order")
    head = (f"<h2>Interactions</h2><p class='alr-sub'>index <b>{esc(index)}</b>"
            f"{'' if order is None else f', order ≤ {esc(order)}'}; {len(terms)} non-zero "
            "terms; positive = the features together support the output.</p>")
    vmax = max((abs(v) for _, v in terms), default=0.0)
    rows = []
    shown = [fv for fv in terms if len(fv[0]) >= 2][:top] or terms[:top]
    for feats, v in shown:
        names = " × ".join(name_html(j, labels[j]) for j in feats)
        width = 0 if vmax == 0 else 6 * abs(v) / vmax
        rows.append(
            f"<tr><td class='alr-num'>{len(feats)}</td><td>{names}</td>"
            f"<td class='alr-num'>{esc(fmt(v))}</td><td><span class='alr-w' "
            f"style='width:{width:.2f}rem;background-color:{colour(v, vmax) or '#ccc'}'></span>"
            "</td></tr>")
    table = ("<h3>Top interactions</h3><table class='alr-inter'><tr><th>order</th>"
             "<th>features</th><th>value</th><th></th></tr>" + "".join(rows) + "</table>")
    return head + "<div class='alr-grid'><div>" + table + "</div><div>" + _network_svg(
        attr, terms) + "</div></div>" + _higher_orders(attr, terms)


def _network_svg(attr: Any, terms: list[tuple[tuple[int, ...], float]], max_edges: int = 30
                 ) -> str:
    pairs = [(f, v) for f, v in terms if len(f) == 2][:max_edges]
    if not pairs:
        return "<p class='alr-muted'>No pairwise terms to draw.</p>"
    nodes = sorted({j for f, _ in pairs for j in f})
    W, H = 480, 340
    cx, cy, r = W / 2, H / 2, 125
    pos = {j: (cx + r * math.cos(2 * math.pi * k / len(nodes) - math.pi / 2),
               cy + r * math.sin(2 * math.pi * k / len(nodes) - math.pi / 2))
           for k, j in enumerate(nodes)}
    vmax = max(abs(v) for _, v in pairs) or 1.0
    smax = max_abs(attr.scores)
    parts = [(f'<svg class="alr-net" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
              'role="img" aria-label="pairwise interaction network">')]
    for (a, b), v in pairs:
        (x1, y1), (x2, y2) = pos[a], pos[b]
        c = "rgb(67,147,195)" if v >= 0 else "rgb(214,96,77)"
        parts.append(
            f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{c}" '
            f'stroke-width="{1 + 7 * abs(v) / vmax:.2f}" stroke-opacity="0.8">'
            f"<title>{esc(feature_name(a, attr.labels[a]))} × "
            f"{esc(feature_name(b, attr.labels[b]))}: {esc(fmt(v))}</title></line>")
    for j in nodes:
        x, y = pos[j]
        fill = colour(_num(attr.scores[j]), smax) or "rgb(255, 255, 255)"
        lab = attr.labels[j].strip() or attr.labels[j]
        lab = lab if len(lab) <= 14 else lab[:13] + "…"
        dx = 14 if x >= cx else -14
        anchor = "start" if x >= cx else "end"
        parts.append(
            f'<g class="alr-node" data-i="{j}"><circle cx="{x:.1f}" cy="{y:.1f}" r="9" '
            f'fill="{fill}" stroke="#24292f"><title>{esc(feature_name(j, attr.labels[j]))}: '
            f"score {esc(fmt(attr.scores[j]))}</title></circle>"
            f'<text x="{x + dx:.1f}" y="{y + 4:.1f}" font-size="11" text-anchor="{anchor}">'
            f"#{j} {esc(lab)}</text></g>")
    parts.append("</svg>")
    return ("<h3>Network (pairwise terms)</h3><p class='alr-muted'>Nodes: features (fill = "
            "score); edges: pairwise terms (width = magnitude, blue +, red −).</p>"
            + "".join(parts))


def _higher_orders(attr: Any, terms: list[tuple[tuple[int, ...], float]], top: int = 15
                   ) -> str:
    hi = [fv for fv in terms if len(fv[0]) >= 3][:top]
    if not hi:
        return ""
    rows = "".join(
        f"<tr><td class='alr-num'>{len(f)}</td><td>"
        f"{' × '.join(name_html(j, attr.labels[j]) for j in f)}</td>"
        f"<td class='alr-num'>{esc(fmt(v))}</td></tr>" for f, v in hi)
    return ("<h3>Higher-order terms (order ≥ 3)</h3><table><tr><th>order</th><th>features</th>"
            f"<th>value</th></tr>{rows}</table>")


# ---- faithfulness ----------------------------------------------------------------------------
_FAITH_NAMES = {
    "r2": "R² (surrogate / calibrated fit on uniform test masks; higher is better)",
    "abpc": "ABPC = MoRF − LeRF area (higher is better)",
    "morf": "MoRF area (most relevant removed first)",
    "lerf": "LeRF area (least relevant removed first)",
    "topk": "mean top-k removal change Δ",
}


def _audit_html(attr: Any) -> str:
    """``--audit``: the surrogate's scores of the audited features beside the served
    model's own leave-one-out effects (K paid calls), with their agreement."""
    audit = (attr.extra or {}).get("audit")
    if not isinstance(audit, dict):
        return ""
    feats, labels = audit.get("features"), audit.get("labels")
    sur, served = audit.get("surrogate"), audit.get("served")
    rows = ""
    if (isinstance(feats, list) and all(isinstance(x, list) for x in (labels, sur, served))
            and len(feats) == len(labels) == len(sur) == len(served)):
        rows = "".join(
            f"<tr><td>{name_html(int(i), str(lab)) if isinstance(i, int) else esc(lab)}</td>"
            f"<td class='alr-num'>{esc(fmt(_num(a)))}</td>"
            f"<td class='alr-num'>{esc(fmt(_num(b)))}</td></tr>"
            for i, lab, a, b in zip(feats, labels, sur, served))
    rho, sign = _num(audit.get("spearman")), _num(audit.get("sign_agreement"))
    route = audit.get("route")
    head = (f"{esc(_value_text(audit.get('k')))} exact evaluations of the served model"
            f"{f' ({esc(route)} route)' if isinstance(route, str) else ''}: Spearman "
            f"{'n/a' if rho is None else f'{rho:+.2f}'} · signs agree "
            f"{'n/a' if sign is None else f'{sign:.0%}'}")
    out = f"<h2>Audit</h2><p class='alr-audit'>{head}</p>"
    if rows:
        out += ("<table class='alr-audit-t'><tr><th>feature</th><th>score</th>"
                "<th>served leave-one-out</th></tr>" + rows + "</table>")
    return out


def _faithfulness_html(attr: Any) -> str:
    faith = (attr.extra or {}).get(FAITHFULNESS_KEY)
    if not isinstance(faith, dict) or not faith:
        return ""
    rows = []
    curve = None
    for key, val in faith.items():
        if key == "topk" and isinstance(val, dict) and isinstance(val.get("delta"), list):
            curve = val
            if "mean" in val:
                val = {"value": val.get("mean"), "ci": val.get("mean_ci")}
            else:
                continue
        if isinstance(val, dict):
            v, ci = val.get("value"), val.get("ci")
            notes = ", ".join(f"{k}: {val[k]}" for k in val if k not in ("value", "ci"))
        else:
            v, ci, notes = val, None, ""
        ci_txt = (f"[{fmt(ci[0], False)}, {fmt(ci[1], False)}]"
                  if isinstance(ci, (list, tuple)) and len(ci) == 2 else "")
        rows.append(f"<tr><td>{esc(_FAITH_NAMES.get(key, key))}</td>"
                    f"<td class='alr-num'>{esc(fmt(v, signed=False))}</td>"
                    f"<td class='alr-num'>{esc(ci_txt)}</td><td class='alr-muted'>"
                    f"{esc(notes)}</td></tr>")
    out = ("<h2>Faithfulness</h2><table class='alr-faith'><tr><th>measure</th><th>value</th>"
           "<th>95% CI</th><th>notes</th></tr>" + "".join(rows) + "</table>")
    if curve is not None:
        out += _topk_svg(curve)
    return out


def _topk_svg(curve: dict[str, Any]) -> str:
    d = [_num(x) for x in curve["delta"]]
    rs = curve.get("r") or list(range(1, len(d) + 1))
    lo, hi = curve.get("ci_low"), curve.get("ci_high")
    vals = [x for x in d + [_num(x) for x in (lo or []) + (hi or [])] if x is not None]
    if not vals:
        return ""
    W, H, pad = 420, 180, 34
    top = max(vals) or 1.0
    bottom = min(0.0, min(vals))

    def xy(k: int, v: float) -> tuple[float, float]:
        x = pad + (W - 2 * pad) * (k / max(1, len(d) - 1))
        y = H - pad - (H - 2 * pad) * (v - bottom) / ((top - bottom) or 1.0)
        return x, y

    parts = [(f'<svg class="alr-topk" viewBox="0 0 {W} {H}" width="{W}" height="{H}" '
              'role="img" aria-label="top-k removal curve">'),
             f'<line x1="{pad}" y1="{H - pad}" x2="{W - pad}" y2="{H - pad}" stroke="#8c959f"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{H - pad}" stroke="#8c959f"/>']
    if isinstance(lo, list) and isinstance(hi, list) and len(lo) == len(hi) == len(d):
        up = [xy(k, _num(v) or 0.0) for k, v in enumerate(hi)]
        dn = [xy(k, _num(v) or 0.0) for k, v in enumerate(lo)][::-1]
        pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in up + dn)
        parts.append(f'<polygon points="{pts}" fill="rgb(67,147,195)" fill-opacity="0.2"/>')
    pts = " ".join(f"{x:.1f},{y:.1f}" for x, y in (xy(k, v) for k, v in enumerate(d)
                                                     if v is not None))
    parts.append(f'<polyline points="{pts}" fill="none" stroke="rgb(33,102,172)" '
                 'stroke-width="2"/>')
    parts.append(f'<text x="{W / 2}" y="{H - 6}" font-size="11" text-anchor="middle">'
                 f"features removed r (1..{esc(rs[-1])})</text>")
    parts.append(f'<text x="4" y="{pad - 8}" font-size="11">Δ_r (max {esc(fmt(top, False))})'
                 "</text></svg>")
    return ("<h3>Top-k removal</h3><p class='alr-muted'>Relative change of the value when the "
            "r top features are removed (band: 95% CI when given).</p>" + "".join(parts))


# ---- provenance ------------------------------------------------------------------------------
def _flat(d: Any, prefix: str = "") -> list[tuple[str, Any]]:
    if isinstance(d, dict):
        out: list[tuple[str, Any]] = []
        for k, v in d.items():
            out.extend(_flat(v, f"{prefix}{k}."))
        return out if out else [(prefix.rstrip("."), "{}")]
    return [(prefix.rstrip("."), d)]


def _value_text(v: Any) -> str:
    if isinstance(v, float):
        return fmt(v, signed=False)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value_text(x) for x in v) + "]"
    return "—" if v is None else str(v)


def _kv_table(rows: Sequence[tuple[str, Any]], cls: str) -> str:
    body = "".join(f"<tr><th>{esc(k)}</th><td><code>{esc(_value_text(v))}</code></td></tr>"
                   for k, v in rows)
    return f"<table class='{cls}'>{body}</table>"


def _provenance_html(attr: Any) -> str:
    model = attr.model or {}
    params = attr.params or {}
    route = "local model, in process"
    if params.get("target_model") or params.get("target_url"):
        route = (f"closed model {params.get('target_model') or '?'} at "
                 f"{params.get('target_url') or '?'} (explained through its API)")
    target = params.get("target")
    target_txt = target
    if isinstance(target, dict):
        name = target.get("target", target.get("name"))
        rest = ", ".join(f"{k} {v}" for k, v in target.items() if k not in ("target", "name"))
        target_txt = f"{name} ({rest})" if rest else name
    rows: list[tuple[str, Any]] = [
        ("method", attr.method),
        ("model id", model.get("id")),
        ("model sha256", model.get("sha256")),
    ]
    rows += [(f"model {k}", v) for k, v in model.items() if k not in ("id", "sha256")]
    rows += [
        ("backend / route", route),
        ("target", target_txt),
        ("masker", params.get("masker")),
        ("granularity", params.get("granularity")),
        ("seed", attr.seed),
        ("budget", params.get("budget")),
        ("library version", f"attrlens {attr.version}"),
    ]
    env = (attr.extra or {}).get("environment")
    if isinstance(env, dict):
        rows += [(k.replace("_", " "), v) for k, v in env.items()]
    rows = [(k, v) for k, v in rows if not (v is None and k in ("target", "masker",
                                                                "granularity"))]
    cost = [(k, v) for k, v in (attr.cost or {}).items()]
    prm = _flat(params)
    meta = (attr.extra or {}).get("metadata") or {}
    meta_rows = [(k, v) for k, v in _flat(meta) if not k.startswith(("beams", "surrogate"))
                 and not (isinstance(v, list) and len(v) > 12)] if isinstance(meta, dict) else []
    out = ("<h2>Provenance</h2><div class='alr-grid'><div><h3>Run</h3>"
           + _kv_table(rows, "alr-prov") + "<h3>Cost</h3>" + _kv_table(cost, "alr-cost")
           + "</div><div><h3>Method parameters</h3>" + _kv_table(prm, "alr-params"))
    if meta_rows:
        out += "<h3>Method details</h3>" + _kv_table(meta_rows, "alr-meta")
    return out + "</div></div>"


# ---- the report ------------------------------------------------------------------------------
def _top_html(attr: Any, scores: np.ndarray, scale: float, k: int = 15) -> str:
    order = np.argsort(-np.abs(np.where(np.isfinite(scores), scores, 0.0)), kind="stable")[:k]
    rows = "".join(
        f"<tr><td class='alr-num'>{r + 1}</td><td>{name_html(int(i), attr.labels[i])}"
        f"</td><td class='alr-num'>{esc(fmt(scores[i]))}</td><td><span class='alr-w' style='"
        f"width:{0 if scale == 0 or not np.isfinite(scores[i]) else 8 * abs(scores[i]) / scale:.2f}"
        f"rem;background-color:{colour(_num(scores[i]), scale) or '#ccc'}'></span></td></tr>"
        for r, i in enumerate(order))
    return ("<h2>Top features (by magnitude)</h2><table class='alr-top'><tr><th>rank</th>"
            f"<th>feature</th><th>score</th><th></th></tr>{rows}</table>")


def report_matrix(attr: Any) -> np.ndarray | None:
    """The result's per-output-token matrix as the report shows it (None: none, or not
    (n_features, T) with T > 0)."""
    pot = getattr(attr, "per_output_token", None)
    mat = None if pot is None else np.asarray(pot, dtype=float)
    if mat is not None and (mat.ndim != 2 or mat.shape[0] != len(attr.scores)
                            or mat.shape[1] == 0):
        return None
    return mat


def render_fragment(attr: Any, *, notebook: bool = False, root_id: str | None = None,
                    scale: float | None = None, matrix_scale: float | None = None,
                    heading: str | None = None) -> str:
    """The report as an HTML fragment (scoped CSS, data block and script included): the body
    of :func:`render_html` and ``Attribution._repr_html_`` (``notebook=True``: sized for a
    cell). ``scale`` / ``matrix_scale``: the colour scales of the scores and of the matrix
    (default: their own largest magnitude; give one shared by several reports on a page);
    ``heading``: a heading above the report, inside it."""
    rid = root_id or f"alr-{uuid.uuid4().hex[:12]}"
    scores = np.asarray(attr.scores, dtype=float)
    scale = max_abs(scores) if scale is None else float(scale)
    mat = report_matrix(attr)
    T = 0 if mat is None else mat.shape[1]
    cols, cols_are_tokens, mass = _columns(attr, T) if mat is not None else ([], False, None)
    mscale = max_abs(mat) if matrix_scale is None else float(matrix_scale)
    model_id = (attr.model or {}).get("id")
    warnings = (attr.extra or {}).get("warnings") or []
    parts = [
        f'<div class="alr{" alr-nb" if notebook else ""}" id="{esc(rid)}">',
        "" if heading is None else f"<h2>{esc(heading)}</h2>",
        f"<h1>attrlens · {esc(attr.method)}</h1>",
        (f"<p class='alr-sub'>model <code>{esc(model_id)}</code> · {len(scores)} features"
         f"{f' · output matrix {len(scores)} × {T}' if mat is not None else ''}</p>"),
    ]
    if isinstance(warnings, list):
        parts += [f"<div class='alr-warn'>{esc(w)}</div>" for w in warnings]
    parts += [
        "<h2>Input</h2>",
        _legend(scale),
        '<div class="alr-status">Input coloured by: <span class="alr-status-text">all output '
        "tokens (the scores)</span>"
        + (' <button type="button" class="alr-reset">show the scores</button>'
           if mat is not None else "") + "</div>",
        _input_html(attr, scores, scale),
        "<h2>Output</h2>",
    ]
    if mat is not None and cols_are_tokens:
        parts.append("<p class='alr-muted'>Click an output token to colour the input by its row "
                     "of the matrix (shift-click to add tokens).</p>")
    parts.append(_output_html(attr, clickable=mat is not None and cols_are_tokens))
    if mat is not None:
        parts += [
            "<h2>Per-output-token attribution</h2>",
            "<p class='alr-muted'>Rows: input features; columns: "
            + ("output tokens" if cols_are_tokens else
               "beam positions" if mass is not None else "output positions")
            + ". Click a column to colour the input by it.</p>",
            _legend(mscale, title="matrix scale: "),
            _matrix_html(attr, mat, mscale, cols, mass),
            _beams_html(attr, T),
        ]
    parts.append(_confidence_html(attr))
    parts += [
        _interactions_html(attr),
        _faithfulness_html(attr),
        _audit_html(attr),
        _top_html(attr, scores, scale),
        _provenance_html(attr),
        "</div>",
    ]
    data = {"scores": scores, "scale": scale, "matrix": mat, "mscale": mscale,
            "cols": [visible(c) for c in cols]}
    return (f"<style>{_asset('report.css')}</style>" + "".join(parts)
            + f'<script type="application/json" id="{esc(rid)}-data">{json_for_script(data)}'
            + f"</script><script>{_asset('report.js')}({json.dumps(rid)});</script>")


def _page(title: str, body: str) -> str:
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            # no network: nothing may be fetched, whatever the text holds
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
            f"<title>{esc(title)}</title></head><body style=\"margin:0;background:#fff\">"
            f"{body}</body></html>\n")


def render_html(attr: Any) -> str:
    """The full report of one result as a self-contained HTML document."""
    return _page(f"attrlens · {attr.method}", render_fragment(attr))


# ---- comparison ------------------------------------------------------------------------------
def rank_correlations(results: Sequence[Any]) -> list[list[dict[str, float | None]]]:
    """Pairwise ``{"spearman", "kendall"}`` of the results' scores (k x k; None when fewer
    than 3 features are finite in both or a ranking is constant)."""
    from scipy.stats import kendalltau, spearmanr

    k = len(results)
    out: list[list[dict[str, float | None]]] = [[{} for _ in range(k)] for _ in range(k)]
    for a in range(k):
        for b in range(k):
            x = np.asarray(results[a].scores, dtype=float)
            y = np.asarray(results[b].scores, dtype=float)
            ok = np.isfinite(x) & np.isfinite(y)
            if ok.sum() < 3 or np.ptp(x[ok]) == 0 or np.ptp(y[ok]) == 0:
                out[a][b] = {"spearman": None, "kendall": None}
                continue
            out[a][b] = {"spearman": _num(spearmanr(x[ok], y[ok]).statistic),
                         "kendall": _num(kendalltau(x[ok], y[ok]).statistic)}
    return out


def compare_html(results: Sequence[Any], *, names: Sequence[str] | None = None,
                 title: str = "attrlens · comparison") -> str:
    """Several results on the same input side by side, on one shared colour scale, with
    pairwise Spearman and Kendall rank correlations of their scores."""
    results = list(results)
    if len(results) < 2:
        raise InputError(f"A comparison needs at least 2 results; got {len(results)}.")
    n = results[0].n_features
    for r in results[1:]:
        if r.n_features != n or list(r.labels) != list(results[0].labels):
            raise InputError(
                f"The results explain different features ({results[0].method}: {n}, "
                f"{r.method}: {r.n_features}); compare results of the same prompt, output and "
                "granularity.")
    names = list(names) if names is not None else [r.method for r in results]
    if len(names) != len(results):
        raise InputError(f"{len(names)} names given for {len(results)} results.")
    scale = max_abs(*[r.scores for r in results])
    cols = "".join(
        f"<div class='alr-cmp'><h3>{esc(nm)}</h3><p class='alr-muted'>cost: "
        f"{esc(fmt((r.cost or {}).get('model_forwards'), False))} forwards, "
        f"{esc(fmt((r.cost or {}).get('wall_s'), False))} s</p>"
        f"{_input_html(r, np.asarray(r.scores, dtype=float), scale)}</div>"
        for nm, r in zip(names, results))
    corr = rank_correlations(results)
    head = "".join(f"<th>{esc(nm)}</th>" for nm in names)
    corr_rows = "".join(
        f"<tr><th>{esc(names[a])}</th>" + "".join(
            f"<td class='alr-num'>{esc(fmt(corr[a][b]['spearman'], False))} / "
            f"{esc(fmt(corr[a][b]['kendall'], False))}</td>" for b in range(len(results)))
        + "</tr>" for a in range(len(results)))
    score_rows = "".join(
        f"<tr><td>{name_html(i, results[0].labels[i])}</td>" + "".join(
            f"<td class='alr-num'{_style(_num(r.scores[i]), scale)}>{esc(fmt(r.scores[i]))}</td>"
            for r in results) + "</tr>" for i in range(n))
    out = results[0].output_text or ""
    body = (
        f'<div class="alr" id="alr-compare"><h1>{esc(title)}</h1>'
        f"<p class='alr-sub'>{len(results)} results · {n} features · one shared scale</p>"
        "<h2>Output explained</h2>" f"<div class='alr-box'>{esc(out)}</div>"
        "<h2>Inputs</h2>" + _legend(scale, title="shared scale: ")
        + f"<div class='alr-grid'>{cols}</div>"
        "<h2>Rank correlations</h2><p class='alr-muted'>Spearman ρ / Kendall τ of the scores "
        "(1 = same ranking).</p>"
        f"<table class='alr-corr'><tr><th></th>{head}</tr>{corr_rows}</table>"
        f"<h2>Scores</h2><table class='alr-scores'><tr><th>feature</th>{head}</tr>{score_rows}"
        "</table></div>")
    return _page(title, f"<style>{_asset('report.css')}</style>{body}")


# ---- data-set index --------------------------------------------------------------------------
def record_page_name(record: dict[str, Any]) -> str:
    """The file name of a record's page: ``<item>-<method label>-<key[:10]>.html``, with
    every character outside [A-Za-z0-9._-] replaced."""
    def clean(s: Any) -> str:
        return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "_"
                       for c in str(s))[:40]

    key = str(record.get("key", ""))[:10]
    label = record.get("label") or record.get("method", "method")
    return f"{clean(record.get('item_id', 'item'))}-{clean(label)}-{clean(key)}.html"


def _index_provenance(records: Sequence[dict[str, Any]]) -> str:
    """What the records were computed with: each model (name, weights hash, dtype), the
    seeds, and the evaluation settings (one line when every record shares them)."""
    def distinct(values: Any) -> list[str]:
        out: list[str] = []
        for v in values:
            if v not in out:
                out.append(v)
        return out

    models = distinct(
        f"{m.get('id', '?')} (sha256 {m.get('sha256') or 'none: an in-memory model'}"
        f"{', ' + str(m['dtype']) if m.get('dtype') else ''})"
        for m in (r.get("model") or {} for r in records if r.get("model") is not None))
    seeds = distinct(str(r["seed"]) for r in records if r.get("seed") is not None)
    evals = distinct(json.dumps({k: v for k, v in (r.get("eval") or {}).items()
                                 if k != "metrics"}, sort_keys=True)
                     for r in records if r.get("eval") is not None)
    params = distinct(f"{r.get('label') or r.get('method')}: "
                      f"{json.dumps(r.get('params') or {}, sort_keys=True)}"
                      for r in records if r.get("params") is not None)
    if not (models or seeds or evals):
        return ""
    lines = [f"<b>model</b> {esc(' · '.join(models) or '?')}",
             f"<b>seed</b> {esc(', '.join(seeds) or '?')}"]
    details = "".join(f"<pre>{esc(e)}</pre>" for e in evals)
    details += "".join(f"<pre>{esc(p)}</pre>" for p in params)
    return (f"<p class='alr-sub alr-provenance'>{' · '.join(lines)}</p>"
            f"<details><summary>evaluation settings and method parameters</summary>"
            f"{details}</details>")


def index_html(records: Sequence[dict[str, Any]], *,
               href: Callable[[dict[str, Any]], str] | None = None,
               title: str = "attrlens · evaluation") -> str:
    """An index page of a data-set run: one row per record (item, method, n features, its
    metrics) linking to the record's page (``href(record)``; default: ``record["page"]`` or
    ``items/`` + :func:`record_page_name`). Links are relative paths, URL-quoted. A failed
    record (``error``: an item the method could not explain) is a row with its reason and
    no link."""
    records = list(records)
    metrics: list[str] = []
    for r in records:
        for m in (r.get("metrics") or {}):
            if m not in metrics:
                metrics.append(m)

    def link(r: dict[str, Any]) -> str:
        target = href(r) if href is not None else r.get("page") or "items/" + record_page_name(r)
        target = str(target)
        # a scheme (javascript:, http:), a root or network path (/etc/passwd, //host/x,
        # \\host): not a relative link
        if (":" in target.replace("\\", "/").split("/")[0]
                or target.startswith(("/", "\\"))):
            raise InputError(f"The index links relative paths only; got {target!r}.")
        return quote(target, safe="/._-")  # '#' too is a character of the file's name

    head = "".join(f"<th>{esc(m)}</th>" for m in metrics)
    rows = []
    for r in sorted(records, key=lambda r: (str(r.get("item_id")), str(r.get("label")))):
        if r.get("error"):
            rows.append(
                f"<tr class='alr-failed'><td>{esc(r.get('item_id', '?'))}</td>"
                f"<td>{esc(r.get('label') or r.get('method', '?'))}</td><td></td>"
                f"<td colspan='{max(1, len(metrics))}'>failed: {esc(r['error'])}</td></tr>")
            continue
        cells = "".join(
            f"<td class='alr-num'>{esc(fmt((r.get('metrics') or {}).get(m), False))}</td>"
            for m in metrics)
        rows.append(
            f"<tr><td><a href=\"{esc(link(r))}\">{esc(r.get('item_id', '?'))}</a></td>"
            f"<td>{esc(r.get('label') or r.get('method', '?'))}</td>"
            f"<td class='alr-num'>{esc(r.get('n_features', ''))}</td>{cells}</tr>")
    failed = sum(1 for r in records if r.get("error"))
    body = (f'<div class="alr" id="alr-index"><h1>{esc(title)}</h1><p class="alr-sub">'
            f"{len(records)} records{f' ({failed} failed)' if failed else ''} · "
            f"{len({str(r.get('item_id')) for r in records})} items</p>"
            f"{_index_provenance(records)}"
            f"<table class='alr-index'><tr><th>item</th><th>method</th><th>features</th>{head}"
            f"</tr>{''.join(rows)}</table></div>")
    return _page(title, f"<style>{_asset('report.css')}</style>{body}")


def write_dataset_report(records: Sequence[dict[str, Any]] | str | Path, out_dir: str | Path,
                         *, title: str = "attrlens · evaluation") -> Path:
    """Write one page per record (``items/…html``, from the record's ``attribution_data``,
    with its faithfulness numbers) and ``index.html`` linking them; returns the index path.
    ``records`` may be a run directory or its ``records.jsonl``."""
    from .export import attribution_from_record, read_records

    if isinstance(records, (str, Path)):
        records = read_records(records)
    out = Path(out_dir)
    (out / "items").mkdir(parents=True, exist_ok=True)
    for r in records:
        if r.get("error"):  # a failed record has no result (the index gives its reason)
            continue
        (out / "items" / record_page_name(r)).write_text(
            render_html(attribution_from_record(r)), encoding="utf-8")
    index = out / "index.html"
    index.write_text(index_html(records, title=title), encoding="utf-8")
    return index
