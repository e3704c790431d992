"""``attrlens show FILE``: render a saved result (validated against its schema on load)."""

from __future__ import annotations

import argparse
from typing import Any

from .common import check_output_path


def add_parser(sub: Any) -> argparse.ArgumentParser:
    s = sub.add_parser("show", help="render a saved result JSON")
    s.add_argument("file")
    s.add_argument("--top", type=int, default=10)
    s.add_argument("--html", help="also write an HTML report here")
    s.set_defaults(func=run)
    return s


def run(args: argparse.Namespace) -> int:
    from ..result import Attribution

    check_output_path(args.html, "--html")
    attr = Attribution.load(args.file)
    if args.html:
        attr.to_html(args.html)
    attr.show(top=args.top)
    return 0
