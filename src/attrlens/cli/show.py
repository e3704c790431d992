"""``attrlens show FILE``: render a saved result, validated against its schema on load: an
attribution (``attrlens.attribution/1``, from ``explain`` or ``aqw``), a comparison
(``attrlens.comparison/1``, from ``compare``), or an evaluation run (its folder or one of
its files: the summary tables ``evaluate`` wrote)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..result import read_result_json
from .common import check_output_paths, top_rows


def add_parser(sub: Any) -> argparse.ArgumentParser:
    s = sub.add_parser("show", help="render a saved result (explain, aqw, compare, or an evaluate run's folder)")
    s.add_argument("file")
    s.add_argument("--top", type=top_rows, default=10)
    s.add_argument("--html", help="also write an HTML report here")
    s.set_defaults(func=run)
    return s


def _evaluation_run(file: str) -> Path | None:
    """The folder of an ``attrlens evaluate`` run that ``file`` names (the folder itself, or
    its summary.json, summary.md, records.jsonl or index.html), else None."""
    from ..evaluation.store import RECORDS

    p = Path(file)
    try:
        folder = p if p.is_dir() else p.parent if p.name in _RUN_FILES else None
        if folder is None or not any((folder / f).is_file() for f in (RECORDS, "summary.json")):
            return None
    except OSError:  # (a name too long for the file system: read_result_json says so)
        return None
    return folder


_RUN_FILES = ("summary.json", "summary.md", "records.jsonl", "index.html")


def _show_run(folder: Path, args: argparse.Namespace, console: Any) -> int:
    """Print an evaluation run's summary tables (its summary.md)."""
    from rich.markdown import Markdown

    from ..errors import InputError

    if args.html:
        raise InputError(f"{folder} is an evaluation run, whose pages attrlens evaluate wrote "
                         f"({folder / 'index.html'}); --html is for one result file.")
    md = folder / "summary.md"
    if not md.is_file():
        raise InputError(f"The evaluation run {folder} has no summary yet (it was stopped "
                         f"before the end): rerun attrlens evaluate with --out {folder} to "
                         f"finish it.")
    console.print(Markdown(md.read_text(encoding="utf-8")))
    console.print(f"Per item: {folder / 'index.html'}; attributions in "
                  f"{folder / 'attributions'}/ (each opens with attrlens show).")
    return 0


def run(args: argparse.Namespace) -> int:
    from rich.console import Console

    from ..result import Attribution
    from .analysis import (
        COMPARISON_SCHEMA,
        comparison_from_dict,
        comparison_html,
        query_weight_from,
    )

    check_output_paths({"--html": args.html}, {"the result file": args.file})
    console = Console()
    folder = _evaluation_run(args.file)
    if folder is not None:
        return _show_run(folder, args, console)
    data = read_result_json(args.file)
    source = f"'{args.file}'"
    if isinstance(data, dict) and data.get("schema") == COMPARISON_SCHEMA:
        from ..report.analysis import show_comparison

        cmp = comparison_from_dict(data, source=source)
        if args.html:
            Path(args.html).write_text(comparison_html(cmp), encoding="utf-8")
        show_comparison(cmp, top=args.top, console=console)
        return 0
    attr = Attribution.from_dict(data, source=source)
    qw = query_weight_from(attr)
    if args.html:
        attr.to_html(args.html)
    if qw is not None:
        from ..report.analysis import show_query_weight

        show_query_weight(qw, top=args.top, console=console)
    else:
        attr.show(top=args.top, console=console)
    return 0
