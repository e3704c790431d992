"""Command-line front end. Thin: every flag maps to one argument of the library call."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .errors import AttrlensError, InputError


def _parse_value(v: str) -> Any:
    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def _method_params(args: argparse.Namespace) -> dict[str, Any]:
    """Method parameters given by dedicated flags or --param KEY=VALUE."""
    out: dict[str, Any] = {}
    for flag in ("beams", "horizon", "k", "index", "order", "kernel_width", "sampling", "space",
                 "solver", "decoder"):
        val = getattr(args, flag, None)
        if val is not None:
            out[flag] = val
    for item in args.param or []:
        if "=" not in item:
            raise InputError(f"--param takes KEY=VALUE; got {item!r}.")
        k, v = item.split("=", 1)
        out[k.strip().replace("-", "_")] = _parse_value(v)
    return out


class _Progress:
    """A rich progress bar shown from the first report on (transient, on stderr)."""

    def __init__(self, enabled: bool, label: str):
        self.enabled = enabled
        self.label = label
        self._bar: Any = None
        self._task: Any = None
        self._offset = 0
        self._last_total = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

            self._bar = Progress(
                "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), console=Console(stderr=True), transient=True,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=total)
        if total != self._last_total and self._last_total is not None and done <= total:
            # a new round of evaluations: extend the bar
            self._offset = self._bar.tasks[0].completed
            self._bar.update(self._task, total=self._offset + total)
        self._last_total = total
        self._bar.update(self._task, completed=self._offset + done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()


def _read_prompt(args: argparse.Namespace) -> Any:
    if args.messages:
        try:
            with open(args.messages, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, json.JSONDecodeError) as exc:
            raise InputError(f"Could not read chat messages from {args.messages}: {exc}") from exc
    if args.prompt is None:
        raise InputError("Give a PROMPT, '-' to read it from stdin, or --messages FILE.")
    if args.prompt == "-":
        return sys.stdin.read()
    return args.prompt


def _target_backend(args: argparse.Namespace) -> Any:
    if not getattr(args, "target_url", None):
        if getattr(args, "target_model", None):
            raise InputError("--target-model needs --target-url.")
        return None
    from .models.openai import OpenAIBackend

    backend = OpenAIBackend(
        args.target_url,
        args.target_model or "default",
        api_key_env=args.api_key_env,
        cache=not args.no_cache,
    )
    backend.check()
    return backend


def _explain_closed_values(args: argparse.Namespace, prompt: Any, progress: Any) -> Any:
    """Game-based methods on a closed model's own value: log p(A) - log p(B) of the first
    answer token (no surrogate); --closed-answers A,B."""
    from . import api
    from .evaluation.closed_values import closed_game

    backend = _target_backend(args)
    if backend is None:
        raise InputError("--closed-answers needs --target-url (and --target-model).")
    answers = [a.strip() for a in args.closed_answers.split(",")]
    if len(answers) != 2 or not all(answers):
        raise InputError(f"--closed-answers takes two answers 'A,B'; got {args.closed_answers!r}.")
    game = closed_game(backend, prompt, granularity=args.granularity, answers=answers,
                       progress=progress)
    attr = api.explain_game(game, game.n_features, method=args.method, budget=args.budget,
                            seed=args.seed, labels=game.labels, **_method_params(args))
    attr.output_text = f"log p({answers[0]}) - log p({answers[1]})"
    attr.cost["api_calls"] = int(backend.counters.get("api_calls", 0))
    attr.params.update(target_model=backend.model, target_url=backend.base_url,
                       closed_answers=answers, granularity=args.granularity)
    return attr


def cmd_explain(args: argparse.Namespace) -> int:
    from . import api

    prompt = _read_prompt(args)
    if args.closed_answers:
        progress = _Progress(not args.quiet, f"explaining ({args.method}, closed model)")
        try:
            attr = _explain_closed_values(args, prompt, progress)
        finally:
            progress.close()
        return _emit(attr, args)
    spans = None
    if args.spans:
        spans = [tuple(int(x) for x in s.split(":")) for s in args.spans.split(",")]
    progress = _Progress(not args.quiet, f"explaining ({args.method})")
    try:
        model = api.load_model(args.model, dtype=args.dtype)
        attr = api.explain(
            prompt,
            model=model,
            method=args.method,
            granularity=args.granularity,
            output=args.output_text,
            target=args.target,
            budget=args.budget,
            seed=args.seed,
            masker=args.masker,
            spans=spans,
            chat=False if args.raw else None,
            max_new_tokens=args.max_new_tokens,
            contrast=args.contrast_text,
            target_backend=_target_backend(args),
            progress=progress,
            **_method_params(args),
        )
    finally:
        progress.close()
    return _emit(attr, args)


def _emit(attr: Any, args: argparse.Namespace) -> int:
    if args.json:
        attr.save(args.json)
    if args.html:
        attr.to_html(args.html)
    if not args.quiet:
        from rich.console import Console

        attr.show(top=args.top, console=Console())
        if args.json:
            Console().print(f"[dim]result written to {args.json}[/dim]")
    return 0


def cmd_methods(args: argparse.Namespace) -> int:
    from .explainers.base import list_methods

    for name, desc in list_methods().items():
        print(f"{name:<16} {desc}")
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    from .result import Attribution

    attr = Attribution.load(args.file)
    if args.html:
        attr.to_html(args.html)
    attr.show(top=args.top)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from .models.server import run_server_cli

    return run_server_cli(args.model, args.port, args.n_ctx)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    p = argparse.ArgumentParser(
        prog="attrlens", description="Explain the outputs of large language models."
    )
    p.add_argument("--version", action="version", version=f"attrlens {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    e = sub.add_parser("explain", help="explain a model's output for a prompt")
    e.add_argument("prompt", nargs="?", help="prompt text, or '-' to read stdin")
    e.add_argument("--messages", help="JSON file with chat messages [{role, content}]")
    e.add_argument("--method", default="loo", help="attribution method (see 'attrlens methods')")
    e.add_argument("--granularity", default="word",
                   help="token | word | sentence | message | span")
    e.add_argument("--spans", help="char spans for --granularity span: 'a:b,c:d'")
    e.add_argument("--model", help="local model directory or .gguf file (default: embedded)")
    e.add_argument("--dtype", default="float32", help="float32 | bfloat16 | float16")
    e.add_argument("--output-text", help="explain this output instead of the model's own answer")
    e.add_argument("--contrast-text", help="alternative output for --target contrastive")
    e.add_argument("--target", help="nll | logprob | kl | js | tv | contrastive "
                   "(default: the method's)")
    e.add_argument("--masker", help="delete | replace | attention_off (default: the method's)")
    e.add_argument("--budget", type=int, help="maximum number of value-function evaluations")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--max-new-tokens", type=int, default=32)
    e.add_argument("--raw", action="store_true", help="do not apply the chat template")
    e.add_argument("--json", help="write the result JSON here")
    e.add_argument("--html", help="write an HTML report here")
    e.add_argument("--top", type=int, default=10, help="rows of the top-k table")
    e.add_argument("--quiet", action="store_true", help="no terminal output or progress")
    g = e.add_argument_group("method parameters")
    g.add_argument("--beams", type=int, help="gilot: beam width b")
    g.add_argument("--horizon", type=int, help="gilot: output positions J")
    g.add_argument("--k", type=int, help="rope_lime: features removed per sample (Sparse-K)")
    g.add_argument("--sampling", help="rope_lime: exact | balanced | up_to_k")
    g.add_argument("--space", help="rope_lime: embed_rope | layer0_keys | plain")
    g.add_argument("--index", help="spex/proxyspex: fourier | mobius | shapley | banzhaf | "
                   "sii | bii | fsii | fbii | stii")
    g.add_argument("--order", type=int, help="interaction order of --index")
    g.add_argument("--kernel-width", type=float, help="lime/rope_lime kernel width")
    g.add_argument("--solver", help="OT solver (gilot) or regression solver")
    g.add_argument("--decoder", help="spex: soft | hard")
    g.add_argument("--param", action="append", help="any method parameter as KEY=VALUE")
    c = e.add_argument_group("closed model (OpenAI-compatible endpoint)")
    c.add_argument("--target-url", help="base URL of the endpoint, e.g. http://127.0.0.1:8080/v1")
    c.add_argument("--target-model", help="model name at the endpoint")
    c.add_argument("--api-key-env", default="OPENAI_API_KEY",
                   help="environment variable holding the API key")
    c.add_argument("--no-cache", action="store_true", help="do not use the persistent call cache")
    c.add_argument("--closed-answers", help="explain the closed model's own log p(A) - log p(B) "
                   "of a one-token answer, 'A,B' (game-based methods, e.g. spex; no surrogate)")
    e.set_defaults(func=cmd_explain)

    m = sub.add_parser("methods", help="list the attribution methods")
    m.set_defaults(func=cmd_methods)

    s = sub.add_parser("show", help="render a saved result JSON")
    s.add_argument("file")
    s.add_argument("--top", type=int, default=10)
    s.add_argument("--html", help="also write an HTML report here")
    s.set_defaults(func=cmd_show)

    v = sub.add_parser("serve", help="serve a GGUF model with llama.cpp on 127.0.0.1")
    v.add_argument("--model", help=".gguf file (default: the embedded model)")
    v.add_argument("--port", type=int, help="port (default: a free one)")
    v.add_argument("--n-ctx", type=int, default=4096)
    v.set_defaults(func=cmd_serve)

    _extend_parser(sub)
    return p


def _extend_parser(sub: Any) -> None:
    """Sub-commands contributed by method families (e.g. gilot's compare)."""
    import importlib

    try:
        gilot = importlib.import_module(f"{__package__}.explainers.gilot")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__package__}.explainers.gilot":
            raise
        return
    add = getattr(gilot, "add_cli", None)
    if add is not None:
        add(sub)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AttrlensError as exc:
        print(f"attrlens: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("attrlens: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("ATTRLENS_DEBUG"):
            raise
        print(
            f"attrlens: internal error: {type(exc).__name__}: {exc} "
            f"(set ATTRLENS_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
