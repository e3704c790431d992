"""``attrlens explain``: explain a model's output for a prompt.

The method's options are generated from its declared parameters (``--method NAME`` selects
which; ``attrlens explain --method NAME --help`` lists them). Everything cheap (method,
parameters, granularity, masker, target, spans, files, prompt) is checked before the model
loads.
"""

from __future__ import annotations

import argparse
import warnings
from typing import Any

from ..errors import InputError, ParameterError
from .common import (
    Progress,
    add_chat_template_option,
    add_method_options,
    check_chat_template_options,
    check_choice,
    check_output_paths,
    check_served,
    emit,
    make_checked_explainer,
    method_params,
    parse_spans,
    read_prompt,
    target_backend,
    top_rows,
    with_chat_template,
)

DEFAULT_METHOD = "loo"


def add_parser(sub: Any, method: str | None) -> argparse.ArgumentParser:
    """The ``explain`` sub-command, with the options of ``method`` (None or an unknown name
    gets none; an unknown name is reported when the command runs)."""
    from ..registry import REGISTRY, get_explainer

    e = sub.add_parser("explain", help="explain a model's output for a prompt")
    e.add_argument("prompt", nargs="?", help="prompt text, or '-' to read stdin (UTF-8)")
    e.add_argument("--messages", help="JSON file with chat messages [{role, content}]")
    e.add_argument("--method", default=DEFAULT_METHOD,
                   help="attribution method (see 'attrlens methods'; default: loo)")
    e.add_argument("--granularity", default="word",
                   help="token | word | sentence | message | span")
    e.add_argument("--spans", help="char spans for --granularity span: 'a:b,c:d' (offsets "
                   "into your prompt text, not the chat-rendered text)")
    e.add_argument("--model", help="local model directory, .gguf file, PEFT adapter directory "
                   "or Hub id already in the local Hugging Face cache (default: embedded)")
    e.add_argument("--dtype", default="auto",
                   help="auto (the faster of float32/bfloat16 measured here; bf16/fp16 on GPUs)"
                        " | float32 | bfloat16 | float16")
    e.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N | mps")
    e.add_argument("--trust-remote-code", action="store_true",
                   help="run the modeling code a model directory ships (read it first)")
    add_chat_template_option(e)
    e.add_argument("--output-text", help="explain this output instead of the model's own answer")
    e.add_argument("--output-from", metavar="RESULT.json",
                   help="explain the output of a saved result: its very tokens (where the "
                        "result has their ids), else its text")
    e.add_argument("--contrast-text", help="alternative output for --target contrastive")
    e.add_argument("--target", help="nll | logprob | kl | js | tv | contrastive "
                   "(default: the method's)")
    e.add_argument("--masker", help="delete | replace | replace_tokens | attention_off "
                   "(default: the method's)")
    e.add_argument("--budget", help="maximum number of value-function evaluations "
                   "(default: the method's; 'none' = the method's)")
    e.add_argument("--seed", type=int, default=None,
                   help="seed of the method's random draws (default 0; methods that draw "
                        "nothing, e.g. loo, ignore it and say so)")
    e.add_argument("--max-new-tokens", type=int, default=None,
                   help="the generated answer's length limit (default 32; not with a given "
                        "output)")
    e.add_argument("--raw", action="store_true", help="do not apply the chat template")
    e.add_argument("--json", help="write the result JSON here (written before any display)")
    e.add_argument("--html", help="write an HTML report here")
    e.add_argument("--top", type=top_rows, default=10, help="rows of the top-k table")
    e.add_argument("--quiet", action="store_true", help="no terminal output or progress")
    c = e.add_argument_group("closed model (OpenAI-compatible endpoint)")
    c.add_argument("--target-url", help="base URL of the endpoint, e.g. http://127.0.0.1:8080/v1")
    c.add_argument("--target-model",
                   help="model name at the endpoint (default: the one model the server lists)")
    c.add_argument("--api-key-env",
                   help="environment variable holding the API key (default OPENAI_API_KEY)")
    c.add_argument("--no-cache", action="store_true", help="do not use the persistent call cache")
    c.add_argument("--closed-answers", help="explain the closed model's own log p(A) - log p(B) "
                   "of a one-token answer, 'A,B' (game-based methods, e.g. spex; no surrogate)")
    c.add_argument("--route", help="how the served model is scored: prompt_logprobs (vLLM) | "
                   "sglang | echo | forced_tokens (llama.cpp) | top_logprobs (one-token "
                   "outputs) | generate (gsmile) | surrogate (rope_lime; for gilot, gradient "
                   "and attention methods the local model standing in for the served one, "
                   "asked for by name); default: probe the server (game-based methods then "
                   "run on the served model itself)")
    c.add_argument("--audit", type=int, metavar="K",
                   help="with rope_lime or gsmile: spend K exact served evaluations "
                   "(leave-one-out on the top and bottom features) and report the rank and "
                   "sign agreement of the attribution with the served model's")
    cls = None
    if method is not None:
        try:
            cls = get_explainer(method)
        except ParameterError:
            cls = REGISTRY.get(method)
    if cls is not None:
        add_method_options(e, cls)
    e.set_defaults(func=run, method_class=cls)
    return e


def _budget(text: str | None) -> int | None:
    from ..explainers.base import BUDGET

    return None if text is None else BUDGET.parse_cli(text)


def _output_source(args: argparse.Namespace) -> Any:
    """The saved result of --output-from (read before the model loads), or None."""
    if args.output_from is None:
        return None
    if args.output_text is not None:
        raise ParameterError("Give --output-text or --output-from, not both.")
    from ..result import Attribution

    return Attribution.load(args.output_from)


def _output(args: argparse.Namespace, source: Any, model: Any) -> str | list[int] | None:
    """The output to explain: --output-text, or the --output-from result's tokens where it
    was made with these weights (token ids are the model's own), else its text."""
    if source is None:
        return args.output_text
    ids = source.output_token_ids
    same = source.model.get("sha256") is not None and source.model.get("sha256") == getattr(
        model.info, "sha256", None)
    if ids is not None and same and not args.target_url:
        return ids
    return source.output_text  # (a served model's output is explained as text)


def run(args: argparse.Namespace) -> int:
    from .. import api
    from ..models.base import require_needs
    from ..scoring.targets import TARGETS
    from ..text.mask import MASKERS
    from ..text.segment import GRANULARITIES

    # ---- cheap checks first: method, parameters, names, spans, files, prompt ------------
    explainer = make_checked_explainer(args.method, _budget(args.budget), method_params(args))
    if args.seed is None:
        args.seed = 0
    elif not explainer.draws:
        warnings.warn(f"{explainer.name} draws nothing at random: --seed {args.seed} changes "
                      f"none of its scores (it is recorded as given).", stacklevel=1)
    check_choice("granularity", args.granularity, GRANULARITIES)
    check_choice("masker", args.masker, MASKERS)
    check_choice("target", args.target, TARGETS)
    spans = parse_spans(args.spans)
    check_output_paths({"--json": args.json, "--html": args.html},
                       {"the --messages file": args.messages, "the model": args.model,
                        "the --output-from result": args.output_from})
    prompt = read_prompt(args)
    source = _output_source(args)
    if explainer.needs == "closed_model" and not args.target_url:
        raise ParameterError(
            f"The method '{explainer.name}' explains a closed model: give --target-url and "
            f"--target-model."
        )
    if args.closed_answers:
        if args.route not in (None, "top_logprobs") or args.audit is not None:
            raise ParameterError("--closed-answers is the top_logprobs route with two answers; "
                                 "it takes no other --route and no --audit.")
        return _closed_values(args, prompt, explainer)
    check_served(explainer, args)
    # every other check of the arguments that needs no model, then the chat template's
    # options (JSON, date): cheap errors before the model loads
    _, route_name = api.check_explain(
        prompt, method=explainer, granularity=args.granularity, target=args.target,
        output=args.output_text if source is None else source.output_text,
        seed=args.seed, masker=args.masker, spans=spans, chat=False if args.raw else None,
        max_new_tokens=args.max_new_tokens, contrast=args.contrast_text,
        route=args.route, audit=args.audit, served=bool(args.target_url))
    check_chat_template_options(args)
    # the endpoint is checked before the model loads, unless the run makes no call to it: the
    # local model stands in for it on an output given here (rope_lime on a logged answer)
    given = args.output_text is not None or source is not None
    backend = target_backend(
        args, check=not (route_name == "surrogate" and given and args.audit is None))

    progress = Progress(not args.quiet, f"explaining ({explainer.name})")
    try:
        model = with_chat_template(
            api.load_model(args.model, dtype=args.dtype, device=args.device,
                           trust_remote_code=args.trust_remote_code,
                           progress=not args.quiet), args)
        require_needs(explainer.needs, model, backend, method=explainer.name)
        attr = api.explain(
            prompt,
            model=model,
            method=explainer,
            granularity=args.granularity,
            output=_output(args, source, model),
            target=args.target,
            seed=args.seed,
            masker=args.masker,
            spans=spans,
            chat=False if args.raw else None,
            max_new_tokens=args.max_new_tokens,
            contrast=args.contrast_text,
            target_backend=backend,
            route=args.route,
            audit=args.audit,
            progress=progress,
        )
    finally:
        progress.close()
    return emit(attr, args)


def _closed_values(args: argparse.Namespace, prompt: Any, explainer: Any) -> int:
    """Game-based methods on a closed model's own value: log p(A) - log p(B) of the first
    answer token (no surrogate); --closed-answers A,B."""
    from .. import api
    from ..evaluation.closed_values import closed_game

    if not args.target_url:
        raise InputError("--closed-answers needs --target-url (and --target-model).")
    answers = [a.strip() for a in args.closed_answers.split(",")]
    if len(answers) != 2 or not all(answers):
        raise InputError(f"--closed-answers takes two answers 'A,B'; got {args.closed_answers!r}.")
    if explainer.needs != "game":
        raise ParameterError(
            f"--closed-answers runs game-based methods; '{explainer.name}' needs "
            f"{explainer.needs.replace('_', ' ')}."
        )
    backend = target_backend(args)
    progress = Progress(not args.quiet, f"explaining ({explainer.name}, closed model)")
    try:
        game = closed_game(backend, prompt, granularity=args.granularity, answers=answers,
                           masker=args.masker or "replace", progress=progress)
        attr = api.explain_game(game, game.n_features, method=explainer, seed=args.seed,
                                labels=game.labels)
    finally:
        progress.close()
    attr.output_text = f"log p({answers[0]}) - log p({answers[1]})"
    attr.cost.update(api.api_cost(backend))  # a fresh backend: its counters are this run's
    attr.params.update(target_model=backend.model, target_url=backend.public_url,
                       closed_answers=answers, granularity=args.granularity,
                       masker=game.value_fn.masker)
    attr.model = {"id": backend.model, "sha256": None, "endpoint": backend.public_url,
                  "produced": "the output", "scored_by": f"the served model {backend.model} "
                  f"at {backend.public_url} (top log-probs of the first answer token)"}
    attr.input_text, attr.spans = closed_input(game)
    return emit(attr, args)


def closed_input(game: Any) -> tuple[str, list[list[list[int]]]]:
    """The explained messages' contents (joined by a blank line) and each feature's char
    spans in that text, for a closed game's result."""
    vf = game.value_fn
    order = sorted({mi for mi, _ in vf.features})
    starts, parts, pos = {}, [], 0
    for mi in order:
        starts[mi] = pos
        parts.append(vf.messages[mi]["content"])
        pos += len(parts[-1]) + 2
    spans = [[[starts[mi] + a, starts[mi] + b] for a, b in sps] for mi, sps in vf.features]
    return "\n\n".join(parts), spans
