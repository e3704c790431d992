"""``attrlens methods [NAME]``: the registered methods, or one method's declaration."""

from __future__ import annotations

import argparse
from typing import Any

from .common import NEEDS_WORDS, method_options


def add_parser(sub: Any) -> argparse.ArgumentParser:
    m = sub.add_parser("methods", help="list the attribution methods, or describe one")
    m.add_argument("name", nargs="?", help="a method: print its parameters, needs and paper")
    m.set_defaults(func=run)
    return m


def describe(name: str) -> str:
    """A method's declaration in words: parameters (default, constraint, help), needs,
    paper, budget."""
    from ..explainers.base import BUDGET
    from ..registry import get_explainer

    cls = get_explainer(name)
    lines = [f"{cls.name}: {cls.description}"]
    if cls.paper:
        lines.append(f"paper:   {cls.paper}")
    lines.append(f"needs:   {NEEDS_WORDS.get(cls.needs, cls.needs)}")
    if cls.uses_budget:
        lines.append(f"budget:  yes (--budget: {BUDGET.help})")
    else:
        lines.append("budget:  no (its cost is fixed by the input; --budget is refused)")
    settings = [f"default {k}: {getattr(cls, f'default_{k}')}" for k in ("masker", "target")
                if k in cls.reads]
    lines.append(" · ".join(settings) if settings else
                 "masker, target: none (its value is its own; --masker and --target are refused)")
    params = method_options(cls)
    hidden = [p for p in cls.parameters if not p.cli]
    if not params:
        lines.append("parameters: none")
    else:
        lines.append("parameters:")
        for p in params:
            lines.append(f"  {p.option}  (default {p.default!r}; {p.describe()})")
            lines.append(f"      {p.help}")
    if hidden:
        lines.append("library-only parameters (not CLI options): "
                     + ", ".join(p.name for p in hidden))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    from ..registry import list_methods
    from ..report.terminal import literal

    if args.name:
        print(literal(describe(args.name), keep_newlines=True))
        return 0
    for name, desc in list_methods().items():
        print(f"{name:<16} {desc}")
    return 0
