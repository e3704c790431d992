"""Shared pieces of the commands: one-line errors, safe terminal text, progress, the prompt
reader, the closed-model backend, method options generated from the declarations."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..errors import InputError, ParameterError, unknown_name_message

if TYPE_CHECKING:
    from ..explainers.base import Explainer
    from ..params import Param
    from ..result import Attribution

#: what ``Explainer.needs`` means, in words (``attrlens methods NAME``)
NEEDS_WORDS = {
    "game": "a game: any value function masks -> values (on a prompt: a local model's "
            "teacher-forced scores; with --target-url: the served model's own "
            "log-likelihood through a --route)",
    "local_model": "a local model (its generations, beams or internals)",
    "closed_model": "a closed (served) model: --target-url and --target-model, plus a local "
                    "model as surrogate",
}


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (``attrlens: error: ...``, exit 2) and no abbreviated
    options: ``--meth lime`` was read as ``--method lime`` by argparse, but not by the scan
    that picks the method's own options before parsing, which then named the wrong method."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> Any:  # type: ignore[override]
        from ..report.terminal import one_line

        print(f"attrlens: error: {one_line(message)} (see '{self.prog} --help')", file=sys.stderr)
        raise SystemExit(2)


def top_rows(text: str) -> int:
    """``--top``'s type: rows of a top-k table, 1 or more."""
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1:
        raise argparse.ArgumentTypeError(f"--top must be an int of 1 or more; got {text!r}")
    return n


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    """The parser's ``--long`` option strings, sorted."""
    return sorted(o for o in parser._option_string_actions if o.startswith("--"))


# ---- method options generated from the declarations ------------------------------------------
def method_options(cls: type[Explainer]) -> list[Param]:
    """The declared parameters offered as CLI options (``budget`` is a fixed option)."""
    return [p for p in cls.parameters if p.cli]


class _Once(argparse.Action):
    """A method option given twice with two values is refused (argparse keeps the last one
    without a word: ``--num-samples 1000 --num-samples 3`` ran 3)."""

    def __call__(self, parser: Any, namespace: Any, values: Any, option: Any = None) -> None:
        before = getattr(namespace, self.dest, None)
        if before is not None and before != values:
            raise ParameterError(f"{option} was given twice ({before} and {values}); give it "
                                 f"once.")
        setattr(namespace, self.dest, values)


def add_method_options(parser: argparse.ArgumentParser, cls: type[Explainer]) -> None:
    """One option per declared parameter of ``cls`` (``--name``; the value is parsed by the
    declaration, so a wrong value is refused with the declaration's message)."""
    params = method_options(cls)
    taken = set(parser._option_string_actions)
    g = parser.add_argument_group(
        f"parameters of method '{cls.name}' (see 'attrlens methods {cls.name}'; other methods "
        f"take others: attrlens explain --method NAME --help)"
    )
    for p in params:
        if p.option in taken:
            raise TypeError(f"{cls.__name__} declares '{p.name}', which clashes with the CLI "
                            f"option {p.option}; rename the parameter.")
        text = f"{p.help} ({p.describe()}; default {p.default!r})".replace("%", "%%")
        g.add_argument(p.option, dest=f"method_param__{p.name}", default=None, action=_Once,
                       metavar=p.type.__name__.upper() if p.choices is None else "{"
                       + ",".join(str(c) for c in p.choices) + "}", help=text)


def method_params(args: argparse.Namespace) -> dict[str, Any]:
    """The method parameters given as generated options, parsed by their declarations."""
    cls = getattr(args, "method_class", None)
    out: dict[str, Any] = {}
    if cls is None:
        return out
    for p in method_options(cls):
        text = getattr(args, f"method_param__{p.name}", None)
        if text is not None:
            out[p.name] = p.parse_cli(text)
    return out


def prescan_method(argv: Sequence[str], default: str) -> str:
    """The ``--method`` value in ``argv`` (before the parser exists), else ``default``."""
    value = default
    for i, a in enumerate(argv):
        if a == "--method" and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith("--method="):
            value = a.split("=", 1)[1]
    return value


def make_checked_explainer(method: str, budget: int | None,
                           params: dict[str, Any]) -> Explainer:
    """The explainer with every declared parameter checked (types, ranges, choices) before
    anything expensive runs; cross-parameter checks that need the feature count run later."""
    from ..api import make_explainer
    from ..params import validate

    explainer = make_explainer(method, {"budget": budget, **params})
    explainer.params = validate(explainer.owner(), explainer.params,
                                explainer.all_parameters())
    explainer.check_params()  # (spex's order above max_order waited for the model's load)
    return explainer


# ---- inputs --------------------------------------------------------------------------------
def read_prompt(args: argparse.Namespace) -> str | list[dict[str, str]]:
    """The prompt from the argument, stdin ('-') or a --messages JSON file (UTF-8)."""
    if args.messages and args.prompt is not None:
        raise InputError("Give a PROMPT or --messages FILE, not both (the other would be "
                         "ignored).")
    if args.messages:
        try:
            # (utf-8-sig: a byte-order mark, as some editors write, was refused as not JSON)
            with open(args.messages, encoding="utf-8-sig") as f:
                return json.load(f)
        except UnicodeDecodeError as exc:
            raise InputError(
                f"The --messages file {args.messages} is not UTF-8 text (byte {exc.start}); "
                f"save it as UTF-8."
            ) from exc
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"Could not read chat messages from {args.messages}: {exc}") from exc
    if args.prompt is None:
        raise InputError("Give a PROMPT, '-' to read it from stdin, or --messages FILE.")
    if args.prompt == "-":
        data = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read()
        if not isinstance(data, str):
            try:
                data = data.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise InputError(
                    f"The prompt on stdin is not UTF-8 text (invalid byte at offset "
                    f"{exc.start}); send UTF-8."
                ) from exc
        # `echo TEXT |` adds one line break: drop exactly one, so stdin and the argument
        # form give the same prompt; a byte-order mark is not text
        data = data.removeprefix("\ufeff")
        return data[:-2] if data.endswith("\r\n") else data.removesuffix("\n")
    return args.prompt


def parse_spans(text: str | None) -> list[tuple[int, int]] | None:
    """'a:b,c:d' -> [(a, b), (c, d)] (clear error otherwise)."""
    if not text:
        return None
    out = []
    for part in text.split(","):
        bits = part.split(":")
        try:
            a, b = (int(x) for x in bits)
        except ValueError:
            raise InputError(
                f"--spans takes char spans START:END separated by commas, e.g. '0:5,6:11'; "
                f"got {part!r}."
            ) from None
        out.append((a, b))
    return out


def check_output_path(path: str | None, option: str) -> None:
    """Refuse an output file that could not be written (its directory missing, a directory,
    ``-``, no permission, a read-only or virtual file system), before any work is done: the
    write comes after the computation, which an unwritable path used to throw away."""
    if not path:
        return
    if path == "-":
        raise InputError(f"{option} - would make a file named '-'; give a file name (or "
                         f"/dev/stdout with --quiet to print it).")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise InputError(f"{option} {path}: the directory {parent} does not exist; create it "
                         f"first or choose another path.")
    if os.path.isdir(path):
        raise InputError(f"{option} {path} is a directory; give a file name.")
    existed = os.path.exists(path)
    try:
        with open(path, "a", encoding="utf-8"):  # appends nothing: an existing file is kept
            pass
    except OSError as exc:
        raise InputError(f"{option} {path} cannot be written ({exc.strerror or exc}); choose "
                         f"another path.") from None
    if not existed:
        os.remove(path)


def check_output_paths(outputs: dict[str, str | None],
                       inputs: dict[str, str | None] | None = None) -> None:
    """Each output file checked (:func:`check_output_path`), then refused where two options
    name one file (the second write would replace the first) or where it is one of the
    command's inputs or inside one (a --messages file, a model file or directory: a result
    written over config.json), all before any work."""
    seen: dict[str, str] = {}
    for option, path in outputs.items():
        if path is None:
            continue
        if not path.strip():  # (an unset $OUT: the run said nothing and wrote nothing)
            raise InputError(f"{option} got an empty file name; give the file to write, or "
                             f"leave {option} out.")
        check_output_path(path, option)
        real = os.path.realpath(path)
        if real in seen:
            raise InputError(f"{seen[real]} and {option} name the same file {path}; give each "
                             f"its own.")
        seen[real] = option
        for what, src in (inputs or {}).items():
            source = os.path.realpath(src) if src else None
            if source and (real == source or real.startswith(source.rstrip(os.sep) + os.sep)):
                raise InputError(f"{option} {path} would write over {what} {src}; write it "
                                 f"elsewhere.")


def check_choice(kind: str, value: str | None, valid: Sequence[str]) -> None:
    if value is not None and value not in valid:
        raise ParameterError(unknown_name_message(kind, value, valid))


def check_served(explainer: Explainer, args: argparse.Namespace) -> None:
    """--route and --audit checked against the method and --target-url (before any work)."""
    from ..games.served import method_route

    route = method_route(explainer.name, explainer.needs, getattr(args, "route", None),
                         bool(getattr(args, "target_url", None)))
    k = getattr(args, "audit", None)
    if k is not None:
        if route not in ("generate", "surrogate"):
            raise ParameterError(
                "--audit checks a stand-in attribution against the served model: use it "
                "with --method rope_lime or gsmile and --target-url/--target-model."
            )
        if k < 3:
            raise ParameterError(
                f"--audit takes K >= 3 exact evaluations (the unmasked prompt and at least "
                f"two leave-one-out); got {k}."
            )


def target_backend(args: argparse.Namespace, *, check: bool = True) -> Any:
    """The closed-model backend of --target-url/--target-model (checked, unless ``check`` is
    False: a run that makes no call to it), or None."""
    if not getattr(args, "target_url", None):
        # options of the served model, ignored without one: said, not dropped
        given = [opt for opt, on in (("--target-model", getattr(args, "target_model", None)),
                                     ("--api-key-env", getattr(args, "api_key_env", None)),
                                     ("--no-cache", getattr(args, "no_cache", False))) if on]
        if given:
            raise InputError(f"{' and '.join(given)} need{'s' if len(given) == 1 else ''} "
                             f"--target-url (they set up the served model).")
        return None
    from ..models.openai import OpenAIBackend

    url = str(args.target_url)
    if not url.startswith(("http://", "https://")):
        raise InputError(f"--target-url must be an http(s) URL such as "
                         f"http://127.0.0.1:8080/v1; got {url!r}.")
    backend = OpenAIBackend(
        url,
        args.target_model or "default",
        api_key_env=getattr(args, "api_key_env", None) or "OPENAI_API_KEY",
        cache=not args.no_cache,
    )
    if not args.target_model and check:
        # the server's one model when it lists exactly one; the name "default" (which
        # servers that ignore model names accept) when it lists none
        names = backend.served_models()
        if names is not None and len(names) == 1:
            backend.model = names[0]
        elif names:
            shown = ", ".join(names[:30]) + (f", ... ({len(names)} in all)"
                                             if len(names) > 30 else "")
            raise InputError(f"--target-model is needed: the server at {url} serves several "
                             f"models ({shown}); name one.")
    if check:
        backend.check()
    return backend


# ---- outputs -------------------------------------------------------------------------------
class Progress:
    """A rich progress bar shown from the first report on (transient, on stderr)."""

    def __init__(self, enabled: bool, label: str):
        self.enabled = enabled
        self.label = label
        self._bar: Any = None
        self._task: Any = None
        self._offset = 0
        self._last_total: int | None = None
        self._last_done = 0

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as Bar

            self._bar = Bar(
                TextColumn("{task.description}", markup=False), BarColumn(),
                MofNCompleteColumn(), TimeElapsedColumn(), console=Console(stderr=True),
                transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total)
        if self._last_total is not None and done <= total and (
                total != self._last_total or done < self._last_done):
            # a new round of evaluations (a game call starts at 0): extend the bar
            self._offset = self._bar.tasks[0].completed
            self._bar.update(self._task, total=self._offset + total)
        self._last_total, self._last_done = total, done
        self._bar.update(self._task, completed=self._offset + done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


#: the library's warnings of this run, shown as one-line notes and recorded in the result
NOTES: list[str] = []


def note_warning(message: Any, category: Any, filename: str, lineno: int, file: Any = None,
                 line: Any = None, *, fallback: Any = None) -> None:
    """``warnings.showwarning`` for the CLI: a warning raised inside attrlens becomes one line
    (``attrlens: note: ...``, no source line) and is recorded in :data:`NOTES`; others go to
    ``fallback``."""
    from ..report.terminal import one_line

    pkg = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.abspath(filename).startswith(pkg + os.sep) and fallback is not None:
        fallback(message, category, filename, lineno, file, line)
        return
    text = one_line(str(message))
    if text not in NOTES:
        NOTES.append(text)
        print(f"attrlens: note: {text}", file=sys.stderr)


def emit(attr: Attribution, args: argparse.Namespace) -> int:
    """Write the JSON first (a display failure then loses nothing), then HTML, then show."""
    if NOTES:
        recorded = attr.extra.setdefault("warnings", [])
        recorded.extend(n for n in NOTES if n not in recorded)
    if args.json:
        attr.save(args.json)
    if getattr(args, "html", None):
        attr.to_html(args.html)
    if not args.quiet:
        from rich.console import Console
        from rich.text import Text

        console = Console()
        attr.show(top=args.top, console=console)
        if args.json:
            console.print(Text(f"result written to {args.json}", style="dim"))
    return 0


def add_chat_template_option(parser: Any) -> None:
    """``--chat-template-kwargs JSON``: the model's chat template keyword arguments."""
    parser.add_argument("--chat-template-kwargs", metavar="JSON",
                        help="keyword arguments of the model's chat template, as a JSON "
                        "object, e.g. '{\"enable_thinking\": false}' (Qwen3); recorded "
                        "with the results")
    parser.add_argument("--template-date", metavar="YYYY-MM-DD",
                        help="the date a chat template that writes today's date into the "
                        "prompt renders (Llama 3.2); default: the day the model is loaded "
                        "(evaluate: that of the run's earlier records); recorded with the "
                        "results as model.template_date")


def chat_template_kwargs(args: argparse.Namespace) -> dict[str, Any] | None:
    """The parsed ``--chat-template-kwargs`` (None when not given), or a one-line error."""
    text = getattr(args, "chat_template_kwargs", None)
    if text is None:
        return None
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise InputError(
            f"--chat-template-kwargs is not valid JSON ({exc.msg} at char {exc.pos}); give a "
            f"JSON object, e.g. '{{\"enable_thinking\": false}}'."
        ) from None
    if not isinstance(value, dict):
        raise InputError(
            f"--chat-template-kwargs must be a JSON object of keyword arguments, e.g. "
            f"'{{\"enable_thinking\": false}}'; got {type(value).__name__}."
        )
    return value


def check_chat_template_options(args: argparse.Namespace) -> None:
    """``--chat-template-kwargs`` and ``--template-date`` checked without a model."""
    from ..models.hf import parse_template_date

    chat_template_kwargs(args)
    if getattr(args, "template_date", None) is not None:
        parse_template_date(args.template_date)


def with_chat_template(model: Any, args: argparse.Namespace) -> Any:
    """``model`` with the command's ``--chat-template-kwargs`` and ``--template-date``
    (unchanged without)."""
    kwargs = chat_template_kwargs(args)
    if kwargs is not None:
        model = model.with_chat_template(**kwargs)
    date = getattr(args, "template_date", None)
    return model if date is None else model.with_template_date(date)
