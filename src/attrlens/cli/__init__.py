"""Command-line front end: one module per command (explain, aqw/compare in analysis,
methods, show, serve, cache, evaluate), and ``main``. Thin: every option maps to one argument
of the library call; a method's options are generated from its declared parameters.

Errors print one line (``attrlens: error: ...``) and exit 2 (input/parameter) or 3
(backend); terminal text from models and users is always shown literally.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import sys
import warnings
from collections.abc import Sequence

from ..errors import AttrlensError, unknown_name_message
from . import analysis, cache, evaluate, explain, methods, serve, show
from .common import NOTES, Parser, long_options, method_params, note_warning, prescan_method

__all__ = ["build_parser", "main", "method_params"]


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The parser; ``argv`` selects the method whose options ``explain`` offers."""
    from .. import __version__

    p = Parser(prog="attrlens", description="Explain the outputs of large language models.")
    p.add_argument("--version", action="version", version=f"attrlens {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    # a method's options are generated only when explain runs (other commands import no
    # explainer module)
    explain.add_parser(sub, prescan_method(argv, explain.DEFAULT_METHOD)
                       if argv[:1] == ["explain"] else None)
    analysis.add_parsers(sub, prescan_method(argv, analysis.DEFAULT_METHOD)
                         if argv[:1] and argv[0] in analysis.COMMANDS else None)
    methods.add_parser(sub)
    show.add_parser(sub)
    serve.add_parser(sub)
    cache.add_parser(sub)
    evaluate.add_parser(sub)
    return p


def _unknown_options(parser: argparse.ArgumentParser, argv: Sequence[str],
                     extra: list[str]) -> str:
    """One line for unrecognised arguments, listing the valid options."""
    sub = None
    if argv and argv[0] in parser._subparsers._group_actions[0].choices:  # type: ignore[union-attr]
        sub = parser._subparsers._group_actions[0].choices[argv[0]]  # type: ignore[union-attr]
    target = sub or parser
    # nested commands (cache info / cache clear): the innermost parser named in argv
    for word in argv[1:2]:
        inner = getattr(target, "_subparsers", None)
        choices = inner._group_actions[0].choices if inner is not None else {}
        if word in choices:
            target = choices[word]
    valid = long_options(target)
    bad = next((a.split("=", 1)[0] for a in extra if a.startswith("-")), extra[0])
    if bad.startswith("--"):
        msg = unknown_name_message("option", bad, valid)
    else:
        msg = f"Unexpected argument {bad!r}. Valid options: {', '.join(valid)}."
    if sub is not None and argv[0] in ("explain", *analysis.COMMANDS):
        from ..registry import REGISTRY

        method = prescan_method(argv, explain.DEFAULT_METHOD if argv[0] == "explain"
                                else analysis.DEFAULT_METHOD)
        owners = sorted(n for n, c in REGISTRY.items()
                        if any(p.option == bad for p in c.parameters if p.cli))
        if owners:
            msg = (f"The method '{method}' has no option {bad}; it is a parameter of "
                   f"{', '.join(owners)}.")
        msg += (f" Options of method '{method}' are listed by 'attrlens {argv[0]} --method "
                f"{method} --help'.")
    return msg


def main(argv: Sequence[str] | None = None) -> int:
    from ..report.terminal import one_line

    argv = list(sys.argv[1:] if argv is None else argv)
    NOTES.clear()
    try:
        parser = build_parser(argv)
        args, extra = parser.parse_known_args(argv)
        if extra:
            print(f"attrlens: error: {one_line(_unknown_options(parser, argv, extra))}",
                  file=sys.stderr)
            return 2
        with warnings.catch_warnings():
            # attrlens's own warnings: one-line notes, recorded in the result
            warnings.showwarning = functools.partial(note_warning,
                                                     fallback=warnings.showwarning)
            return int(args.func(args) or 0)
    except AttrlensError as exc:
        print(f"attrlens: error: {one_line(str(exc))}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("attrlens: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`attrlens show r.json | head`): stop quietly, as a Unix
        # tool stopped by SIGPIPE does, and keep the interpreter's final flush from failing
        with contextlib.suppress(OSError, ValueError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except SystemExit as exc:  # argparse: --help, --version, usage errors
        return int(exc.code or 0) if isinstance(exc.code, int) else 2
    except OSError as exc:
        # a file or folder the system refused (too long a name, no permission, a read-only
        # or special file system) where no step above said so in its own words
        where = f" '{exc.filename}'" if exc.filename else ""
        print(f"attrlens: error: cannot use{where}: {exc.strerror or one_line(str(exc))}; "
              f"choose another path.", file=sys.stderr)
        return 2
    except Exception as exc:
        if os.environ.get("ATTRLENS_DEBUG"):
            raise
        print(
            f"attrlens: internal error: {type(exc).__name__}: {one_line(str(exc))} "
            f"(set ATTRLENS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
