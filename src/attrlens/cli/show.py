"""``attrlens show FILE``: render a saved result, validated against its schema on load: an
attribution (``attrlens.attribution/1``, from ``explain`` or ``aqw``) or a comparison
(``attrlens.comparison/1``, from ``compare``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..result import read_result_json
from .common import check_output_paths, top_rows


def add_parser(sub: Any) -> argparse.ArgumentParser:
    s = sub.add_parser("show", help="render a saved result JSON (explain, aqw or compare)")
    s.add_argument("file")
    s.add_argument("--top", type=top_rows, default=10)
    s.add_argument("--html", help="also write an HTML report here")
    s.set_defaults(func=run)
    return s


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
    data = read_result_json(args.file)
    source = f"'{args.file}'"
    console = Console()
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
