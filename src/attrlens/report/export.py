"""Exports: CSV long form of results, and data-set records back into results.

CSV long form, one row per (output span, feature): columns ``item, output_index,
output_start, output_end, output_span, feature_index, feature, score``. The rows with an
empty ``output_index`` hold the result's scores (the whole output); the others hold one
column of ``per_output_token`` (output token ``output_index`` = the text ``output_span`` at
chars [output_start, output_end) of the output; GiLOT: beam position, no char span).
Text cells that a spreadsheet would read as a formula (starting with ``= + - @`` or a tab
or carriage return) are prefixed with ``'`` unless ``spreadsheet_safe=False``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError

CSV_COLUMNS = ("item", "output_index", "output_start", "output_end", "output_span",
               "feature_index", "feature", "score")
_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def _cell(text: str, safe: bool) -> str:
    return "'" + text if safe and text.startswith(_FORMULA) else text


def _score(v: float) -> str:
    return repr(float(v)) if math.isfinite(float(v)) else ""


def csv_rows(attr: Any, *, item: str = "", spreadsheet_safe: bool = True) -> list[list[str]]:
    """The long-form rows of one result (without the header)."""
    labels = [_cell(lab, spreadsheet_safe) for lab in attr.labels]
    item = _cell(str(item), spreadsheet_safe)
    scores = np.asarray(attr.scores, dtype=float)
    rows = [[item, "", "", "", "", str(i), labels[i], _score(scores[i])]
            for i in range(len(scores))]
    pot = getattr(attr, "per_output_token", None)
    if pot is None:
        return rows
    mat = np.asarray(pot, dtype=float)
    toks = getattr(attr, "output_tokens", None)
    meta = (getattr(attr, "extra", None) or {}).get("metadata") or {}
    positional = isinstance(meta, dict) and meta.get("beam_mass") is not None
    T = mat.shape[1]
    for t in range(T):
        if toks is not None and len(toks) == T and not positional:
            tok = toks[t]
            start, end, text = str(tok["start"]), str(tok["end"]), tok["text"]
        else:
            start, end, text = "", "", f"pos {t + 1}"
        text = _cell(text, spreadsheet_safe)
        rows += [[item, str(t), start, end, text, str(i), labels[i], _score(mat[i, t])]
                 for i in range(mat.shape[0])]
    return rows


def _write(rows: list[list[str]], path: str | Path | None) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_COLUMNS)
    w.writerows(rows)
    text = buf.getvalue()
    if path is not None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text, encoding="utf-8", newline="")
    return text


def to_csv(attr: Any, path: str | Path | None = None, *, item: str = "",
           spreadsheet_safe: bool = True) -> str:
    """One result in CSV long form (returned; also written to ``path`` if given)."""
    return _write(csv_rows(attr, item=item, spreadsheet_safe=spreadsheet_safe), path)


def records_csv(records: Sequence[dict[str, Any]], path: str | Path | None = None, *,
                spreadsheet_safe: bool = True) -> str:
    """A data-set run's records in CSV long form (``item`` = the record's item id and
    method label, ``<item>/<label>``); failed records (``error``: no result) are left out."""
    rows: list[list[str]] = []
    for r in records:
        if r.get("error"):
            continue
        attr = attribution_from_record(r)
        item = f"{r.get('item_id', '')}/{r.get('label') or r.get('method', '')}"
        rows += csv_rows(attr, item=item, spreadsheet_safe=spreadsheet_safe)
    return _write(rows, path)


# ---- data-set records ------------------------------------------------------------------------
def read_records(source: str | Path) -> list[dict[str, Any]]:
    """The records of a data-set run: a run directory (its ``records.jsonl``) or the file
    itself; torn lines (a killed run, resumed after: the torn line is then mid-file) are
    skipped, as the run's own store skips them."""
    from ..evaluation.store import read_record_lines

    path = Path(source)
    if path.is_dir():
        path = path / "records.jsonl"
    if not path.is_file():
        raise InputError(f"No records file at '{path}'; give a run directory of "
                         "`attrlens evaluate` or its records.jsonl.")
    return list(read_record_lines(path)[0].values())


def faithfulness_from_record(record: dict[str, Any]) -> dict[str, Any]:
    """The ``extra["faithfulness"]`` panel of a record of ``attrlens evaluate``: its r2,
    abpc/morf/lerf (with CIs where the record has them) and the top-k removal curve."""
    metrics = record.get("metrics") or {}
    cis = record.get("metric_ci") or {}
    out: dict[str, Any] = {}
    for key in ("r2", "abpc", "morf", "lerf", "abpc_regen", "morf_regen", "lerf_regen"):
        if key in metrics:
            entry: dict[str, Any] = {"value": metrics[key]}
            if key in cis:
                entry["ci"] = cis[key]
            if key == "r2" and record.get("r2_kind"):
                entry["kind"] = record["r2_kind"]
            out[key] = entry
    curve = record.get("topk_curve")
    if isinstance(curve, list) and curve:
        out["topk"] = {"r": list(range(1, len(curve) + 1)), "delta": curve,
                       "mean": metrics.get("topk")}
        for k in ("ci_low", "ci_high"):
            if isinstance(record.get(f"topk_{k}"), list):
                out["topk"][k] = record[f"topk_{k}"]
    return out


def attribution_from_record(record: dict[str, Any]) -> Any:
    """The result stored in a record (``attribution_data``), with its faithfulness numbers in
    ``extra["faithfulness"]`` (when the result has none of its own)."""
    from ..result import Attribution

    data = record.get("attribution_data")
    if not isinstance(data, dict):
        raise InputError(f"The record {record.get('key', '?')!r} holds no attribution_data.")
    attr = Attribution.from_dict(data, source=f"record {record.get('key', '?')!r}")
    faith = faithfulness_from_record(record)
    if faith and "faithfulness" not in attr.extra:
        attr.extra["faithfulness"] = faith
    return attr
