"""Matplotlib figures of a result for papers: the scores as bars, the per-output-token matrix
as a heatmap. Saved as PNG, SVG or PDF by the path's suffix; the same diverging, symmetric
colour scale as the HTML report (red = opposes, blue = supports the output)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .html import NEG, POS, feature_name, max_abs

FORMATS = (".png", ".svg", ".pdf")


def _require_matplotlib() -> None:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        from ..errors import CapabilityError

        raise CapabilityError(
            "Plots need matplotlib: pip install 'attrlens[plots]'."
        ) from None


def _cmap() -> Any:
    _require_matplotlib()
    from matplotlib.colors import LinearSegmentedColormap

    return LinearSegmentedColormap.from_list(
        "attrlens", [tuple(c / 255 for c in NEG), (1, 1, 1), tuple(c / 255 for c in POS)])


def _save(fig: Any, path: str | Path | None, dpi: int) -> None:
    if path is None:
        return
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise InputError(f"Cannot save a figure as '{path.suffix}'; use one of "
                         f"{', '.join(FORMATS)}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")


def _figure() -> Any:
    """matplotlib's Figure class (no pyplot: no global state, no GUI backend needed)."""
    _require_matplotlib()
    from matplotlib.figure import Figure

    return Figure


def plot_scores(attr: Any, path: str | Path | None = None, *, top: int | None = None,
                ax: Any = None, dpi: int = 200) -> Any:
    """Horizontal bars of the scores (features in input order, or the ``top`` by magnitude);
    returns the Figure (saved to ``path`` if given: .png/.svg/.pdf)."""
    scores = np.asarray(attr.scores, dtype=float)
    idx = np.arange(len(scores))
    if top is not None:
        idx = np.sort(np.argsort(-np.abs(np.nan_to_num(scores)), kind="stable")[:top])
    scale = max_abs(scores) or 1.0
    if ax is None:
        Figure = _figure()
        fig = Figure(figsize=(6.0, 0.6 + 0.24 * len(idx)))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    cmap = _cmap()
    vals = np.nan_to_num(scores[idx])
    ax.barh(np.arange(len(idx)), vals, color=cmap(0.5 + 0.5 * vals / scale),
            edgecolor="#555", linewidth=0.4)
    ax.set_yticks(np.arange(len(idx)), [feature_name(int(i), attr.labels[i]) for i in idx],
                  fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#333", linewidth=0.6)
    ax.set_xlabel("score (positive = supports the output)")
    ax.set_title(f"{attr.method}", fontsize=10)
    _save(fig, path, dpi)
    return fig


def plot_matrix(attr: Any, path: str | Path | None = None, *, ax: Any = None,
                dpi: int = 200) -> Any:
    """Heatmap of ``per_output_token`` (rows: features, columns: output tokens or GiLOT's
    beam positions) on a symmetric scale with a colour bar; returns the Figure."""
    pot = getattr(attr, "per_output_token", None)
    if pot is None:
        raise InputError(f"The '{attr.method}' result has no per-output-token matrix; run a "
                         "method that gives one (e.g. loo, ig, gilot with per_position).")
    mat = np.asarray(pot, dtype=float)
    n, T = mat.shape
    scale = max_abs(mat) or 1.0
    toks = getattr(attr, "output_tokens", None)
    meta = (attr.extra or {}).get("metadata") or {}
    if isinstance(meta, dict) and meta.get("beam_mass") is not None:
        cols = [f"pos {j + 1}" for j in range(T)]
    elif toks is not None and len(toks) == T:
        cols = [repr(t["text"].strip() or t["text"])[1:-1] for t in toks]
    else:
        cols = [f"t{j}" for j in range(T)]
    if ax is None:
        Figure = _figure()
        fig = Figure(figsize=(1.8 + 0.28 * T, 1.0 + 0.24 * n))
        ax = fig.add_subplot()
    else:
        fig = ax.figure
    im = ax.imshow(np.ma.masked_invalid(mat), cmap=_cmap(), vmin=-scale, vmax=scale,
                   aspect="auto", interpolation="nearest")
    ax.set_xticks(np.arange(T), cols, rotation=90, fontsize=7)
    ax.set_yticks(np.arange(n), [feature_name(i, attr.labels[i]) for i in range(n)], fontsize=7)
    ax.set_xlabel("output")
    ax.set_title(f"{attr.method}: per output token", fontsize=10)
    fig.colorbar(im, ax=ax, label="score (+ supports)", shrink=0.8)
    _save(fig, path, dpi)
    return fig
