"""``attrlens aqw`` and ``attrlens compare``: the method-agnostic analyses (GiLOT §5).

``aqw PROMPT``      attribution-guided query weight of an in-context-learning prompt: the
                    query is marked ``[[...]]`` in PROMPT (markers removed before the model
                    reads it) or given as ``--query-span START:END`` (char offsets into PROMPT)
``compare A B``     two prompts that differ in a few words, attributed with the same method
                    and aligned by their differing word slot(s)

Both explain with ``functools.partial(attrlens.explain, model=..., method=..., ...)``; the
method's options are generated from its declared parameters as for ``explain`` (default
method: gilot). Everything cheap (method, parameters, names, query markers, files) is checked
before the model loads. ``--json`` is written before anything is displayed: ``aqw`` writes
the attribution (schema ``attrlens.attribution/1``, the query weight under
``metadata.aqw``), ``compare`` a comparison (schema ``attrlens.comparison/1``); ``attrlens
show`` opens both.
"""

from __future__ import annotations

import argparse
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import AttrlensError, InputError, ParameterError, unknown_name_message
from ..params import SEED_MAX
from .common import (
    Progress,
    add_chat_template_option,
    add_method_options,
    check_choice,
    check_output_paths,
    make_checked_explainer,
    method_params,
    top_rows,
    with_chat_template,
)

if TYPE_CHECKING:
    from ..analysis import Comparison, QueryWeight
    from ..result import Attribution

DEFAULT_METHOD = "gilot"
COMPARISON_SCHEMA = "attrlens.comparison/1"
COMMANDS = ("aqw", "compare")


# ---- the parsers -----------------------------------------------------------------------------
def _method_class(method: str | None) -> Any:
    from ..registry import REGISTRY, get_explainer

    if method is None:
        return None
    try:
        return get_explainer(method)
    except ParameterError:
        return REGISTRY.get(method)


def _add_common(p: argparse.ArgumentParser, method: str | None) -> None:
    p.add_argument("--method", default=DEFAULT_METHOD,
                   help=f"attribution method (see 'attrlens methods'; default: {DEFAULT_METHOD})")
    p.add_argument("--granularity", default="word", help="token | word | sentence | message")
    p.add_argument("--model", help="local model directory, .gguf file or Hub id in the local Hugging Face cache (default: embedded)")
    p.add_argument("--dtype", default="auto", help="auto | float32 | bfloat16 | float16")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    p.add_argument("--trust-remote-code", action="store_true",
                   help="run the modeling code a model directory ships (read it first)")
    add_chat_template_option(p)
    p.add_argument("--masker", help="attention_off | delete | replace (default: the method's)")
    p.add_argument("--target", help="nll | logprob | kl | js | tv (default: the method's)")
    p.add_argument("--budget", help="maximum number of value-function evaluations "
                   "(methods that take one; default: the method's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-new-tokens", type=int, default=32, help="length of the shown output")
    p.add_argument("--raw", action="store_true", help="do not apply the chat template")
    p.add_argument("--param", action="append", metavar="KEY=VALUE", default=[],
                   help="a method parameter as KEY=VALUE (same as its generated --option)")
    p.add_argument("--json", help="write the result JSON here (written before any display)")
    p.add_argument("--html", help="write an HTML report here")
    p.add_argument("--top", type=top_rows, default=5, help="rows of the top-k tables")
    p.add_argument("--quiet", action="store_true", help="no terminal output or progress")
    cls = _method_class(method)
    if cls is not None:
        add_method_options(p, cls)
    p.set_defaults(method_class=cls)


def add_parsers(sub: Any, method: str | None) -> None:
    """The ``compare`` and ``aqw`` sub-commands, with the options of ``method`` (the
    ``--method`` of the command line; None offers none)."""
    c = sub.add_parser(
        "compare", help="attribute two prompts that differ in a few words, side by side",
        description="Explain two prompts that differ in a few words with the same method and "
                    "compare the differing word slot(s): score and rank in each.")
    c.add_argument("prompt_a")
    c.add_argument("prompt_b")
    _add_common(c, method)
    c.set_defaults(func=run_compare)
    q = sub.add_parser(
        "aqw", help="attribution-guided query weight of an in-context-learning prompt",
        description="The share of the attribution on the query of an in-context prompt "
                    "(GiLOT Eq. 12). Mark the query with [[...]] or give --query-span.")
    q.add_argument("prompt", help="prompt ('-' reads stdin); mark the query with [[...]] or "
                   "give --query-span")
    q.add_argument("--query-span", help="START:END char offsets of the query in PROMPT")
    _add_common(q, method)
    q.set_defaults(func=run_aqw)


# ---- shared steps ----------------------------------------------------------------------------
def _params(args: argparse.Namespace) -> dict[str, Any]:
    """Generated options plus ``--param KEY=VALUE`` (parsed by the declarations)."""
    from ..explainers.base import BUDGET

    out = method_params(args)
    cls = args.method_class
    for item in args.param:
        key, sep, text = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise InputError(f"--param takes KEY=VALUE, e.g. --param beams=4; got {item!r}.")
        if cls is None:
            continue  # the unknown method is reported by make_checked_explainer
        decl = {p.name: p for p in cls.parameters}
        if key in out or (key == "budget" and args.budget is not None):
            # both were kept silently before, the option's or the later --param's value
            raise ParameterError(f"The parameter '{key}' was given twice (--param and "
                                 f"--{key.replace('_', '-')}, or two --param); give it once.")
        if key == "budget":
            out["budget"] = BUDGET.parse_cli(text)
        elif key not in decl:
            valid = sorted(decl) + (["budget"] if cls.uses_budget else [])
            raise ParameterError(f"--param: the method '{cls.name}' has no such parameter. "
                                 + unknown_name_message("parameter", key, valid))
        else:
            out[key] = decl[key].parse_cli(text)
    return out


def _checked(args: argparse.Namespace) -> Any:
    """The explainer, with every cheap check done (before the model loads)."""
    from ..explainers.base import BUDGET
    from ..scoring.targets import TARGETS
    from ..text.mask import MASKERS
    from ..text.segment import GRANULARITIES

    params = _params(args)
    budget = params.pop("budget", None)
    if args.budget is not None:
        budget = BUDGET.parse_cli(args.budget)
    explainer = make_checked_explainer(args.method, budget, params)
    from ..games.served import METHOD_ROUTES

    if explainer.needs == "closed_model" or explainer.name in METHOD_ROUTES:
        raise ParameterError(
            f"The method '{explainer.name}' explains a closed model; aqw and compare run "
            f"local-model methods (e.g. gilot, loo, kernel_shap)."
        )
    check_choice("granularity", args.granularity, GRANULARITIES)
    if args.granularity == "span":
        raise ParameterError("aqw and compare take --granularity token, word, sentence or "
                             "message (span features would need --spans).")
    check_choice("masker", args.masker, MASKERS)
    check_choice("target", args.target, TARGETS)
    if args.target == "contrastive":
        raise ParameterError("aqw and compare take no contrastive target (no --contrast-text).")
    if not 0 <= args.seed <= SEED_MAX:  # (before the model loads, as explain does)
        raise ParameterError(f"--seed must be an int in [0, {SEED_MAX}]; got {args.seed}.")
    if args.max_new_tokens < 1:
        raise ParameterError(f"--max-new-tokens must be an int >= 1; got {args.max_new_tokens}.")
    check_output_paths({"--json": args.json, "--html": args.html}, {"the model": args.model})
    return explainer


def _explain_fn(args: argparse.Namespace, explainer: Any, progress: Progress) -> Any:
    """``prompt -> Attribution``: attrlens.explain with the command's settings."""
    from .. import api

    model = with_chat_template(
        api.load_model(args.model, dtype=args.dtype, device=args.device,
                       trust_remote_code=args.trust_remote_code,
                       progress=not args.quiet), args)
    return functools.partial(
        api.explain, model=model, method=explainer, granularity=args.granularity,
        target=args.target, masker=args.masker, seed=args.seed,
        max_new_tokens=args.max_new_tokens, chat=False if args.raw else None,
        progress=progress,
    )


def _read_arg(text: str, what: str) -> str:
    """A prompt argument; '-' reads stdin (UTF-8; one trailing newline dropped)."""
    if text != "-":
        return text
    from .common import read_prompt

    got = read_prompt(argparse.Namespace(messages=None, prompt="-"))
    if not isinstance(got, str):  # pragma: no cover - read_prompt returns text for '-'
        raise InputError(f"{what} from stdin must be text.")
    return got


# ---- aqw -------------------------------------------------------------------------------------
def run_aqw(args: argparse.Namespace) -> int:
    """``attrlens aqw PROMPT``: the query weight, written as an attribution with
    ``metadata.aqw``, ``metadata.query_span`` and ``metadata.query_features``."""
    from ..analysis import check_query_has_features, locate_query, parse_span, query_weight_of

    explainer = _checked(args)
    prompt = _read_arg(args.prompt, "The prompt")
    span = parse_span(args.query_span) if args.query_span else None
    text, span = locate_query(prompt, span)  # marker and span errors before the model loads
    check_query_has_features(text, span, args.granularity)
    progress = Progress(not args.quiet, f"explaining ({explainer.name})")
    try:
        explain = _explain_fn(args, explainer, progress)
        attr = explain(text)
    finally:
        progress.close()
    try:
        res = query_weight_of(attr, text, span)
    except InputError as exc:
        if not args.json:
            raise
        attr.save(args.json)  # computed already: kept, without a query weight
        raise InputError(f"{exc} The attribution is saved in {args.json} (no query "
                         f"weight).") from exc
    record_query_weight(res)
    _record_notes(res.attribution)
    if args.json:
        res.attribution.save(args.json)
    if args.html:
        res.attribution.to_html(args.html)
    if not args.quiet:
        from rich.console import Console

        from ..report.analysis import show_query_weight

        show_query_weight(res, top=args.top, console=Console())
        _written(args)
    return 0


def record_query_weight(res: QueryWeight) -> None:
    """Store the query weight in the attribution (JSON ``metadata``; the HTML shows it)."""
    meta = res.attribution.extra.setdefault("metadata", {})
    meta.update(aqw=float(res.aqw), query_span=list(res.query_span),
                query_features=list(res.query_features))


def query_weight_from(attr: Attribution) -> QueryWeight | None:
    """The :class:`QueryWeight` recorded in a loaded attribution, or None."""
    from ..analysis import QueryWeight

    meta = attr.extra.get("metadata") if isinstance(attr.extra, dict) else None
    if not isinstance(meta, dict) or "aqw" not in meta:
        return None
    aqw, span, feats = meta.get("aqw"), meta.get("query_span"), meta.get("query_features")
    n, m = attr.n_features, len(attr.input_text)
    ok = (isinstance(aqw, (int, float)) and not isinstance(aqw, bool)
          and isinstance(span, list) and len(span) == 2
          and all(isinstance(x, int) and not isinstance(x, bool) for x in span)
          and 0 <= span[0] <= span[1] <= m
          and isinstance(feats, list) and feats
          and all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n for i in feats))
    if not ok:
        raise InputError("The result's query weight (metadata aqw, query_span, query_features) "
                         "is malformed.")
    return QueryWeight(float(aqw), attr, list(feats), (span[0], span[1]))


# ---- compare ---------------------------------------------------------------------------------
def run_compare(args: argparse.Namespace) -> int:
    """``attrlens compare A B``: both prompts explained alike, the differing slots compared."""
    from ..analysis import run_compare as compare

    explainer = _checked(args)
    if args.prompt_a == "-" and args.prompt_b == "-":
        raise InputError("Only one of the two prompts can be read from stdin ('-').")
    a = _read_arg(args.prompt_a, "Prompt A")
    b = _read_arg(args.prompt_b, "Prompt B")
    for tag, p in (("A", a), ("B", b)):
        if not p.strip():
            raise InputError(f"Prompt {tag} is empty: give some text to explain.")
    if a == b:
        raise InputError("The two prompts are the same; give prompts that differ in a few "
                         "words.")
    progress = Progress(not args.quiet, f"explaining ({explainer.name})")
    done: list[Attribution] = []

    def explain_kept(prompt: str) -> Attribution:
        done.append(explain(prompt))
        return done[-1]

    try:
        explain = _explain_fn(args, explainer, progress)
        cmp = compare(a, b, explain_kept)
    except AttrlensError as exc:
        if len(done) != 1:
            raise
        # prompt A's explanation is paid for: kept, as aqw keeps its attribution
        _record_notes(done[0])
        if args.json:
            done[0].save(args.json)
            kept = f"Prompt A's attribution is saved in {args.json} (no comparison)."
        else:
            kept = "Prompt A's explanation was lost: give --json to keep it next time."
        exc.args = (f"Prompt B: {exc} {kept}",)  # the same error kind (and exit status)
        raise
    finally:
        progress.close()
    _record_notes(cmp.a, cmp.b)
    if args.json:
        save_comparison(cmp, args.json)
    if args.html:
        Path(args.html).write_text(comparison_html(cmp), encoding="utf-8")
    if not args.quiet:
        from rich.console import Console

        from ..report.analysis import show_comparison

        show_comparison(cmp, top=args.top, console=Console())
        _written(args)
    return 0


def _record_notes(*attrs: Attribution) -> None:
    """The run's one-line notes (library warnings) recorded in the results."""
    from .common import NOTES

    for attr in attrs:
        if NOTES:
            got = attr.extra.setdefault("warnings", [])
            got.extend(n for n in NOTES if n not in got)


def _written(args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.text import Text

    for opt, path in (("result", args.json), ("report", args.html)):
        if path:
            Console().print(Text(f"{opt} written to {path}", style="dim"))


def comparison_dict(cmp: Comparison) -> dict[str, Any]:
    """The comparison's JSON form: ``{"schema": "attrlens.comparison/1", "version", "a", "b"
    (attributions, schema attrlens.attribution/1), "slots" [[features of a, features of b]],
    "summary"}``."""
    from .. import __version__

    return {"schema": COMPARISON_SCHEMA, "version": __version__, **cmp.to_dict()}


def save_comparison(cmp: Comparison, path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(comparison_dict(cmp), indent=2, ensure_ascii=False,
                               allow_nan=False), encoding="utf-8")
    return path


def comparison_from_dict(d: Any, *, source: str = "the data") -> Comparison:
    """A :class:`Comparison` from its JSON form, validated (InputError naming the first
    problem otherwise)."""
    from ..analysis import Comparison
    from ..result import Attribution

    def bad(what: str) -> InputError:
        return InputError(f"{source} is not a valid attrlens comparison: {what}.")

    if not isinstance(d, dict) or d.get("schema") != COMPARISON_SCHEMA:
        raise InputError(f"{source} is not an attrlens comparison "
                         f"(expected \"schema\": \"{COMPARISON_SCHEMA}\").")
    missing = [k for k in ("a", "b", "slots", "version") if k not in d]
    if missing:
        raise InputError(f"{source} is an incomplete attrlens comparison: missing {missing}.")
    if not isinstance(d["version"], str):
        raise bad("'version' must be a string")
    a = Attribution.from_dict(d["a"], source=f"result a of the comparison {source}")
    b = Attribution.from_dict(d["b"], source=f"result b of the comparison {source}")
    slots = d["slots"]
    if not isinstance(slots, list) or not slots:
        raise bad("'slots' must be a non-empty list of [features of a, features of b]")
    out = []
    for k, s in enumerate(slots):
        if not (isinstance(s, list) and len(s) == 2 and all(isinstance(x, list) for x in s)):
            raise bad(f"slot {k} must be [features of a, features of b]")
        for side, idx, n in (("a", s[0], a.n_features), ("b", s[1], b.n_features)):
            if not all(isinstance(i, int) and not isinstance(i, bool) and 0 <= i < n
                       for i in idx):
                raise bad(f"slot {k} names a feature of {side} outside 0..{n - 1}")
        out.append((list(s[0]), list(s[1])))
    return Comparison(a=a, b=b, slots=out)


def comparison_html(cmp: Comparison) -> str:
    """Both reports on one self-contained page, after a table of the differing slot(s)."""
    from ..report.html import esc, fmt, max_abs, render_fragment, report_matrix

    rows = "".join(
        f"<tr><td>{k}</td><td>{esc(' '.join(r['a']['labels']) or '-')}</td>"
        f"<td>{esc(fmt(r['a']['score']))}</td><td>{esc(r['a']['rank'] or '-')}</td>"
        f"<td>{esc(' '.join(r['b']['labels']) or '-')}</td>"
        f"<td>{esc(fmt(r['b']['score']))}</td><td>{esc(r['b']['rank'] or '-')}</td></tr>"
        for k, r in enumerate(cmp.summary()))
    table = ("<div class='alr'><h1>attrlens · compare</h1><h2>The differing slot(s)</h2>"
             "<table><tr><th>slot</th><th>A</th><th>score A</th><th>rank A</th><th>B</th>"
             f"<th>score B</th><th>rank B</th></tr>{rows}</table></div>")
    # one colour scale for both prompts (and one for both matrices): equal colours are
    # equal scores
    scale = max_abs(cmp.a.scores, cmp.b.scores)
    mscale = max_abs(report_matrix(cmp.a), report_matrix(cmp.b))
    body = table + "".join(
        render_fragment(r, scale=scale, matrix_scale=mscale, heading=f"Prompt {tag}")
        for tag, r in (("A", cmp.a), ("B", cmp.b)))
    title = f"attrlens · compare ({cmp.a.method})"
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
            f"<title>{esc(title)}</title></head><body>{body}</body></html>\n")

