"""Public entry points: load_model, explain, explain_game."""

from __future__ import annotations

import inspect
import time
import warnings
from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import InputError, ParameterError, unknown_name_message
from .explainers.base import Explainer, Explanation
from .games import Game, as_game
from .models.base import require_needs, runtime_environment
from .params import check_param, check_seed
from .registry import get_explainer
from .result import Attribution
from .text.prompt import check_prompt, check_text

if TYPE_CHECKING:
    from .games.model import ModelInputs, ScoringGame

Progress = Callable[[int, int], None]


def load_model(path: str | None = None, *, device: str = "auto", dtype: str = "auto",
               trust_remote_code: bool = False, progress: bool = True) -> Any:
    """Load a local model (default: the embedded SmolLM2-135M-Instruct) from a transformers
    directory or a GGUF file. device: auto | cpu | cuda | cuda:N | mps; dtype: auto (bf16 on
    GPUs, fp16 where bf16 is unsupported, the faster of fp32/bf16 measured on a CPU) |
    float32 | bfloat16 | float16; trust_remote_code: run the modeling code a model directory
    ships (transformers' flag of that name; off: such a directory is refused); progress:
    show a GGUF file's one-time conversion on stderr. A
    transformers model object needs no loading: pass it with its tokenizer to
    explain(prompt, model=m, tokenizer=tok)."""
    from .models.hf import load_model as _load

    return _load(path, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                 progress=progress)


def make_explainer(method: str | Explainer, params: dict[str, Any]) -> Explainer:
    """An explainer from a registered name and its parameters, or a given instance (then no
    further parameters are accepted: they would be silently ignored)."""
    if isinstance(method, Explainer):
        extra = sorted(k for k, v in params.items() if v is not None)
        if extra:
            raise ParameterError(
                f"Parameters ({', '.join(extra)}) were given beside an explainer instance; "
                f"set them on the instance ({type(method).__name__}({extra[0]}=...)) or pass "
                f"the method by name."
            )
        return method
    if not isinstance(method, str):
        raise ParameterError(f"The method must be a name or an Explainer; got {method!r}.")
    cls = get_explainer(method)
    if params.get("budget") is None:
        params = {k: v for k, v in params.items() if k != "budget"}
    return cls(**params)


def explain_game(
    fn: Callable[[np.ndarray], np.ndarray] | Game,
    n_features: int,
    *,
    method: str | Explainer = "loo",
    budget: int | None = None,
    seed: int = 0,
    labels: Sequence[str] | None = None,
    progress: Progress | None = None,
    **params: Any,
) -> Attribution:
    """Explain any value function ``masks (m, n) bool -> values (m,)`` (1 = keep).

    Values are read as "higher = more of the behaviour being explained"; scores are positive
    for features whose presence raises the value.
    """
    check_seed("explain_game", seed)
    check_param("explain_game", "n_features", n_features, kind=int, low=1)
    explainer = make_explainer(method, {"budget": budget, **params})
    if explainer.needs != "game":
        raise ParameterError(
            f"The method '{explainer.name}' needs a language model; use attrlens.explain."
        )
    _check_progress(progress)
    if isinstance(labels, str):
        raise ParameterError(f"labels must be a list of strings, one per feature; got the "
                             f"string {labels!r}.")
    labels = list(labels) if labels is not None else [f"x{i}" for i in range(n_features)]
    bad = next((lab for lab in labels if not isinstance(lab, str)), None)
    if bad is not None:
        raise ParameterError(f"labels must be strings, one per feature; got "
                             f"{type(bad).__name__} {bad!r} (pass [str(x) for x in labels]).")
    if len(labels) != n_features:
        raise InputError(f"{len(labels)} labels given for {n_features} features.")
    game = as_game(fn, n_features, progress=progress, batch_size=1024)
    exp = explainer.explain(game, seed=seed)
    return Attribution(
        method=explainer.name,
        scores=exp.scores,
        labels=labels,
        params=exp.params,
        model={"id": None, "sha256": None},
        interactions=exp.interactions,
        per_output_token=exp.per_output_token,
        cost=exp.cost.as_dict(),
        seed=seed,
        extra={"metadata": exp.extra} if exp.extra else {},
    )


def explain(
    prompt: str | list[dict[str, str]],
    *,
    model: Any = None,
    tokenizer: Any = None,
    method: str | Explainer = "loo",
    granularity: str = "word",
    output: str | Sequence[int] | None = None,
    target: str | None = None,
    budget: int | None = None,
    seed: int = 0,
    masker: str | None = None,
    spans: Sequence[tuple[int, int]] | None = None,
    chat: bool | None = None,
    max_new_tokens: int | None = None,
    reduction: str | None = None,
    top_k: int = 100,
    contrast: str | None = None,
    prefix_reuse: bool = True,
    target_backend: Any = None,
    route: str | None = None,
    audit: int | None = None,
    progress: Progress | None = None,
    **params: Any,
) -> Attribution:
    """Explain why ``model`` gives ``output`` (default: its own greedy answer) to ``prompt``.

    prompt:      text, or chat messages [{"role", "content"}] (only user content is explained)
    model:       None (embedded default), a path, attrlens.load_model(...), or a transformers
                 causal LM object on any device(s), given with ``tokenizer``
    output:      the output to explain: text (tokenized as the continuation of the prompt),
                 or its token ids (e.g. a result's ``output_token_ids``: the very tokens)
    granularity: token | word | sentence | message | span (with ``spans``: char spans of the
                 user's text: the prompt string, or the one user message's content)
    target:      nll | logprob | kl | js | tv | contrastive (with ``contrast``); default: the
                 method's own (``logprob`` for the Shapley/Banzhaf regressions and
                 spex/proxyspex, ``nll`` for loo, lime and the closed-model methods;
                 ``attrlens methods NAME`` shows it)
    masker:      delete | replace | attention_off (default: the method's own: ``replace`` for
                 the Shapley/Banzhaf regressions and spex/proxyspex, ``attention_off`` for
                 gilot, ``delete`` for the others)
    max_new_tokens: the generated answer's length limit (default 32); only without ``output``
    target_backend: a closed-model backend (OpenAIBackend) whose output is explained
    route:       how the served model is reached (models.routes.ROUTES; default: game-based
                 methods probe the server for a log-likelihood route)
    audit:       K exact served evaluations auditing a surrogate attribution (rope_lime,
                 gsmile): result in ``extra["audit"]``
    params:      method parameters (e.g. beams=10 for gilot, k=3 for rope_lime); with a path
                 (or None) as ``model``, also load_model's device, dtype, trust_remote_code
    """
    t_start = time.perf_counter()
    loading = {k: params.pop(k) for k in _LOAD_KEYS if k in params}
    explainer, route_name = check_explain(
        prompt, method=method, budget=budget, output=output, granularity=granularity,
        target=target, seed=seed, masker=masker, spans=spans, chat=chat,
        max_new_tokens=max_new_tokens, reduction=reduction, top_k=top_k, contrast=contrast,
        prefix_reuse=prefix_reuse, target_backend=target_backend, route=route, audit=audit,
        progress=progress, **params)
    max_new_tokens = MAX_NEW_TOKENS if max_new_tokens is None else max_new_tokens
    model = _resolve_model(model, tokenizer, loading)
    with model.evaluating():  # a model object in training mode: back as it was afterwards
        api_before = _api_counters(target_backend)
        inputs, scoring = prepare(
            prompt, model=model, granularity=granularity, output=output,
            target=target or explainer.default_target, masker=masker or explainer.default_masker,
            spans=spans, chat=chat, max_new_tokens=max_new_tokens, reduction=reduction,
            top_k=top_k, contrast=contrast, prefix_reuse=prefix_reuse,
            target_backend=target_backend, progress=progress,
        )
        explainer.validate(inputs.n_features)  # before any game is built: cheap errors first
        require_needs(explainer.needs, inputs.model, target_backend, method=explainer.name)
        probe = None
        if route_name not in (None, "generate", "surrogate"):
            from .games.served import served_game

            game, probe = served_game(inputs, target_backend, route_name,
                                      target=scoring.target.name,
                                      reduction=scoring.target.reduction)
            route_name = game.route_name
        else:
            game = explainer.make_game(inputs, scoring, closed=target_backend)
        exp = explainer.explain(game, seed=seed)
        attr = finish(explainer, inputs, scoring, exp, t_start=t_start, seed=seed,
                      target_backend=target_backend, api_before=api_before)
        if route_name is not None:
            attr.params["route"] = route_name
            if probe is not None:
                attr.extra["route_probe"] = probe
                details = game.route.details()
                if details:
                    attr.extra["route_details"] = details
                attr.params["masker"] = "delete"  # what the served prompts did (above)
        if contrast is not None and scoring.target.name == "contrastive":
            attr.params["contrast_text"] = contrast
        if target_backend is not None:
            attr.model = served_provenance(inputs.model.info, target_backend, route_name)
        if audit is not None:
            from .analysis.audit import audit as run_audit
            from .games.served import served_game

            exact, probe = served_game(inputs, target_backend, None)
            result = run_audit(attr.scores, exact, audit, labels=attr.labels)
            attr.extra["audit"] = {**result.as_dict(), "route_probe": probe}
            # the audit's calls (its probe and exact values) are the run's calls too
            attr.cost.update(api_cost(target_backend, api_before))
        return attr


def check_explain(prompt: Any, *, served: bool | None = None,
                  **arguments: Any) -> tuple[Explainer, str | None]:
    """Every check of :func:`explain`'s arguments that needs no model (the command line
    runs it before it loads one: cheap errors first); (the explainer, the served route).
    ``arguments``: explain's keywords but ``model`` and ``tokenizer`` (those left out take
    explain's defaults; method parameters as in explain; of ``output`` only whether it is
    given is checked). ``served``: whether
    a served model is explained (default: a ``target_backend`` is given; the command line
    says so before it connects to one)."""
    unread = sorted({"model", "tokenizer"} & set(arguments))
    if unread:
        raise TypeError(f"check_explain does not take {', '.join(unread)}")
    bound = inspect.signature(explain).bind(prompt, **arguments)
    bound.apply_defaults()
    a = SimpleNamespace(**bound.arguments)
    served = a.target_backend is not None if served is None else served
    explainer = make_explainer(a.method, {"budget": a.budget, **a.params})
    if explainer.needs == "closed_model" and not served:
        raise ParameterError(
            f"The method '{explainer.name}' explains a closed model: give --target-url and "
            f"--target-model (or target_backend=OpenAIBackend(...))."
        )
    from .games.served import method_route

    route_name = method_route(explainer.name, explainer.needs, a.route, served)
    if a.audit is not None and route_name not in ("generate", "surrogate"):
        raise ParameterError(
            "--audit checks a stand-in attribution against the served model: use it with "
            "--method rope_lime or gsmile and --target-url/--target-model."
        )
    if route_name not in (None, "generate", "surrogate") and a.masker not in (None, "delete"):
        # the served model takes text: its masked prompts delete the features' text
        raise ParameterError(
            f"The served model scores prompts with the masked features' text deleted (a "
            f"server takes text, not mask tokens or attention masks), so masker '{a.masker}' "
            f"cannot apply: leave it out, or use route='surrogate' (--route surrogate) to "
            f"score on the local model.")
    if a.max_new_tokens is not None and a.output is not None and not explainer.regenerates:
        raise ParameterError(
            "max_new_tokens limits a generated answer, and the output is given (output=, "
            "--output-text, --output-from): leave max_new_tokens out.")
    _check_arguments(a.granularity, a.masker,
                     MAX_NEW_TOKENS if a.max_new_tokens is None else a.max_new_tokens,
                     target=a.target,
                     reduction=a.reduction, top_k=a.top_k, contrast=a.contrast, spans=a.spans,
                     chat=a.chat, progress=a.progress)
    _check_read(explainer, target=a.target, reduction=a.reduction, contrast=a.contrast,
                masker=a.masker)
    check_param("explain", "prefix_reuse", a.prefix_reuse, kind=bool)
    if not a.prefix_reuse and not explainer.runs_engine:
        raise ParameterError(
            f"prefix_reuse is a setting of the scoring engine, which {explainer.name} does not "
            f"run (it reads one forward's gradients or attention): leave it out.")
    from .scoring.targets import DIVERGENCES

    read_target = (a.target or explainer.default_target) if "target" in explainer.reads else None
    if a.top_k != 100 and read_target not in DIVERGENCES:
        raise ParameterError(
            f"top_k is the vocabulary union of the {'/'.join(DIVERGENCES)} targets; "
            f"{explainer.name} scores "
            f"{f'the {read_target} target' if read_target else 'no target'}: leave it out.")
    if a.output is not None and not explainer.explains_output:
        # (gilot with --output-text scored its own beams and recorded the given text as the
        # output it explained)
        raise ParameterError(
            f"The method '{explainer.name}' explains the model's own output distribution "
            f"(its beams), not a given output: drop output= (--output-text/--output-from), "
            f"or use another method to explain that output.")
    check_seed("explain", a.seed)
    check_prompt(prompt, chat=a.chat, spans=a.spans)
    return explainer, route_name


def served_provenance(local: Any, backend: Any, route: str | None) -> dict[str, Any]:
    """``Attribution.model`` of a served-model result: the model that produced the output
    (``id`` = its name, ``endpoint`` = its URL, credentials redacted) and, separately, what
    scored the perturbations (``scored_by``) and the local model (``local_*``)."""
    name = getattr(backend, "model", None)
    url = getattr(backend, "public_url", None)
    if route in (None, "surrogate"):
        scored = f"the local model {local.id} (surrogate of the served model)"
    elif route == "generate":
        scored = (f"{name}'s regenerations at {url}, compared with the local model "
                  f"{local.id}'s word embeddings")
    else:
        scored = f"the served model {name} at {url} (route {route})"
    return {"id": name, "sha256": None, "endpoint": url, "produced": "the output",
            "scored_by": scored, "local_id": local.id, "local_sha256": local.sha256,
            "local_device": getattr(local, "device", None),
            "local_dtype": getattr(local, "dtype", None)}


def _api_counters(backend: Any) -> dict[str, float]:
    return dict(getattr(backend, "counters", {}) or {})


def api_cost(backend: Any, before: dict[str, float] | None = None) -> dict[str, float]:
    """What a served backend spent since its counters were ``before`` (None: since they
    were zero): ``api_calls``, ``cached_calls``, ``retries`` (requests sent again after a
    refusal or a timeout, on top of the calls), ``prompt_tokens``, ``completion_tokens``
    and, with prices, ``cost_usd``; the keys of ``Attribution.cost`` for served models."""
    now, before = _api_counters(backend), before or {}
    return {key: now[key] - before.get(key, 0)
            for key in ("api_calls", "cached_calls", "retries", "prompt_tokens",
                        "completion_tokens", "cost_usd") if key in now}


def _as_list(output: Any) -> Any:
    """A NumPy array or torch tensor of token ids as a list (anything else as it is)."""
    if hasattr(output, "tolist") and hasattr(output, "ndim") and output.ndim == 1:
        return output.tolist()
    return output


def _token_ids(output: Any) -> bool:
    """Whether ``output`` is given as token ids (a list or tuple of ints)."""
    return isinstance(output, (list, tuple)) and all(
        isinstance(i, (int, np.integer)) and not isinstance(i, bool) for i in output)


def _checked_ids(output: Sequence[int], model: Any) -> list[int]:
    """The output's token ids, refused on one line where empty or outside the model's
    vocabulary."""
    ids = [int(i) for i in output]
    n = int(model.input_embeddings.weight.shape[0])
    bad = next((i for i in ids if not 0 <= i < n), None)
    if not ids or bad is not None:
        raise InputError(
            f"The output token ids must be a non-empty list of ids of this model's "
            f"vocabulary (0..{n - 1}); got {'an empty list' if not ids else bad}.")
    return ids


def _check_read(explainer: Explainer, **given: Any) -> None:
    """Refuse scoring settings the method does not read (``Explainer.reads``): a target for
    GiLOT or the gradient methods, a masker for gSMILE, would be silently ignored."""
    unread = [k for k, v in given.items() if v is not None and explainer.ignores(k)]
    if unread:
        names = " or ".join(f"{k}= (--{k})" for k in unread)
        raise ParameterError(
            f"The method '{explainer.name}' does not read {names}: its value does not "
            f"depend on it; drop it.")


def _check_arguments(granularity: str, masker: str | None, max_new_tokens: int, *,
                     target: Any = None, reduction: Any = None, top_k: Any = 100,
                     contrast: Any = None, spans: Any = None, chat: Any = None,
                     progress: Any = None) -> None:
    """The arguments checked before a model is loaded (cheap errors first): their types,
    and options that would otherwise be ignored (``contrast`` without the contrastive
    target, ``spans`` without span granularity)."""
    from .scoring.targets import TARGETS
    from .text.mask import MASKERS
    from .text.segment import GRANULARITIES

    check_param("explain", "max_new_tokens", max_new_tokens, kind=int, low=1)
    if granularity not in GRANULARITIES:
        raise ParameterError(unknown_name_message("granularity", granularity, GRANULARITIES))
    if masker is not None and masker not in MASKERS:
        raise ParameterError(unknown_name_message("masker", masker, MASKERS))
    if target is not None and target not in TARGETS:
        raise ParameterError(unknown_name_message("target", target, TARGETS))
    check_param("explain", "reduction", reduction, choices=("mean", "sum"), none_ok=True)
    check_param("explain", "top_k", top_k, kind=int, low=1)
    check_param("explain", "chat", chat, kind=bool, none_ok=True)
    if contrast is not None:
        if not isinstance(contrast, str):
            raise ParameterError(
                f"The contrast must be a string (the alternative output); got "
                f"{type(contrast).__name__}.")
        if target != "contrastive":
            raise ParameterError(
                "A contrast output is read only by the contrastive target: pass "
                "target='contrastive' (--target contrastive) with it, or leave it out.")
        check_text("contrast output", contrast)
    if target == "contrastive" and not (isinstance(contrast, str) and contrast.strip()):
        raise ParameterError(
            "The contrastive target needs a non-empty contrast output (the alternative): "
            "contrast='...' (--contrast-text TEXT).")
    if spans is None and granularity == "span":
        raise ParameterError("Granularity 'span' needs spans: give spans=[(start, end), ...] "
                             "(--spans 0:5,6:11), char offsets into the user's text.")
    if spans is not None and granularity != "span":
        raise ParameterError(
            f"Spans are the features of granularity 'span'; got granularity "
            f"'{granularity}'. Pass granularity='span' (--granularity span) with them, or "
            f"leave them out.")
    _check_progress(progress)


def _check_progress(progress: Any) -> None:
    if progress is not None and not callable(progress):
        raise ParameterError(
            f"progress must be a callable (done, total) or None; got "
            f"{type(progress).__name__}.")


#: explain()'s keywords that go to load_model when the model is given as a path
_LOAD_KEYS = ("device", "dtype", "trust_remote_code")


def refuse_loading(loading: dict[str, Any]) -> None:
    """load_model's keywords given with a model object: refused (it is not moved)."""
    raise ParameterError(
        f"{', '.join(f'{k}=' for k in loading)} load a model from a path; a model object "
        f"stays where and as it is: move or convert it first (model.to(...)), or pass "
        f"the path."
    )


#: the generated answer's length limit when explain() is not given one
MAX_NEW_TOKENS = 32


def _resolve_model(model: Any, tokenizer: Any, loading: dict[str, Any] | None = None) -> Any:
    """The HFModel of ``explain``'s model argument: None (the embedded default), a path
    (loaded with ``loading``: load_model's device, dtype, trust_remote_code), an attrlens
    model, or a transformers model object with its tokenizer."""
    from .models.hf import HFModel, wrap_model

    if model is None or isinstance(model, str) or hasattr(model, "__fspath__"):
        if tokenizer is not None:  # (checked before the model loads)
            what = "The embedded model" if model is None else "A model path"
            raise ParameterError(
                f"{what} loads its own tokenizer; drop tokenizer=..., or pass a loaded "
                f"transformers model object together with its tokenizer.")
        model = load_model(model, **(loading or {}))
    elif loading:
        refuse_loading(loading)
    if not isinstance(model, HFModel) or tokenizer is not None:
        model = wrap_model(model, tokenizer)  # a transformers model object (or a clear error)
    return model


def prepare(
    prompt: str | list[dict[str, str]],
    *,
    model: Any = None,
    tokenizer: Any = None,
    granularity: str = "word",
    output: str | Sequence[int] | None = None,
    target: str = "nll",
    masker: str = "delete",
    spans: Sequence[tuple[int, int]] | None = None,
    chat: bool | None = None,
    max_new_tokens: int = 32,
    reduction: str | None = None,
    top_k: int = 100,
    contrast: str | None = None,
    prefix_reuse: bool = True,
    target_backend: Any = None,
    progress: Progress | None = None,
    snap_spans: bool = False,
) -> tuple[ModelInputs, ScoringGame]:
    """Everything before a method runs: model, prompt, features, output, masker, and the
    teacher-forced scoring game (masks -> target values). One preparation can serve several
    methods, which then share the game's memo (benchmarks use this to evaluate a test set
    once).

    snap_spans: spans that share a token are moved to a token boundary instead of refused
    (the token stays with the span holding more of it; a span inside its neighbour's token
    joins it; ``inputs.features.snapped`` says what moved). For spans a program derived
    (evaluate's data-set sentences and words); spans a user wrote are refused as given."""
    from .games.model import ModelInputs, ScoringGame
    from .scoring.engine import ScoringEngine
    from .scoring.targets import make_target
    from .text.mask import Masker
    from .text.prompt import build_prompt, tokenize_output, tokenize_text
    from .text.segment import segment

    _check_arguments(granularity, masker, max_new_tokens, target=target, reduction=reduction,
                     top_k=top_k, contrast=contrast, spans=spans, chat=chat,
                     progress=progress)
    model = _resolve_model(model, tokenizer)
    pr = build_prompt(prompt, model, chat=chat)
    # what the user wrote (every message's content) is text: control-token strings typed
    # there never become control tokens
    prompt_ids, offsets = tokenize_text(model, pr.text, pr.text_regions(),
                                        add_special_tokens=not pr.chat, warn=True)
    shift = 0
    if spans is not None:  # offsets into the user's text -> into the rendered prompt
        given = spans
        spans = pr.text_spans(spans)
        shift = spans[0][0] - int(given[0][0])  # the user's offsets -> the rendered text's
    features = segment(pr.text, pr.regions, offsets, granularity, spans=spans, shift=shift,
                       snap_spans=bool(snap_spans))

    generated = output is None  # (by the local or the served model)
    if output is None and target_backend is not None:
        msgs = list(pr.messages) if pr.messages else [{"role": "user", "content": pr.text}]
        output = target_backend.chat(msgs, max_tokens=max_new_tokens, temperature=0.0).text
        if not output.strip():
            raise InputError("The closed model returned an empty answer; nothing to explain.")
    if output is None:
        if len(prompt_ids) >= model.context_length:
            raise InputError(
                f"The prompt has {len(prompt_ids)} tokens, more than the model's context of "
                f"{model.context_length}; shorten the prompt."
            )
        output_ids = model.generate(prompt_ids, max_new_tokens=max_new_tokens)
        if not output_ids:
            raise InputError(
                "The model's answer is empty (it ended at once); pass --output-text to "
                "explain a given output."
            )
        output_text = model.decode(output_ids)
        again = tokenize_output(model, pr.text, pr.text_regions(), prompt_ids, output_text,
                                add_special_tokens=not pr.chat)
        if again != output_ids:
            warnings.warn(
                f"The model's answer ({len(output_ids)} tokens) reads back as other tokens "
                f"({len(again)}: it wrote its text in tokens other than the tokenizer's): "
                f"passing its text back as the output scores those; to score these tokens "
                f"again pass the result: --output-from RESULT.json "
                f"(output=attr.output_token_ids).", stacklevel=3)
    elif _token_ids(output := _as_list(output)):
        if target_backend is not None:
            raise InputError("A served model's output is explained as text; give output= "
                             "(--output-text) as a string.")
        output_ids = _checked_ids(output, model)
        output_text = model.decode(output_ids)
    else:
        if not isinstance(output, str):
            raise InputError("The output must be a string (or a list of token ids).")
        check_text("output", output)
        output_ids = tokenize_output(model, pr.text, pr.text_regions(), prompt_ids, output,
                                     add_special_tokens=not pr.chat)
        if not output_ids:
            raise InputError(
                f"The output text {output!r} tokenizes to nothing; give a non-empty output."
            )
        output_text = output
    total = len(prompt_ids) + len(output_ids)
    if total > model.context_length:
        raise InputError(
            f"The prompt ({len(prompt_ids)} tokens) plus the output ({len(output_ids)} tokens) "
            f"is {total} tokens, longer than the model's context of {model.context_length}."
        )

    batch = model.scoring_batch_tokens()
    engine = ScoringEngine(model, prompt_ids, output_ids, prefix_reuse=prefix_reuse,
                           max_batch_tokens=batch)
    engines = (engine,)
    alt_engine = None
    if target == "contrastive":
        if not contrast:
            raise InputError("The contrastive target needs --contrast-text (the alternative).")
        alt_ids = tokenize_output(model, pr.text, pr.text_regions(), prompt_ids, contrast,
                                  add_special_tokens=not pr.chat)
        if not alt_ids:
            raise InputError(f"The contrast text {contrast!r} tokenizes to nothing.")
        if list(alt_ids) == list(output_ids):
            # log p(output) - log p(contrast) is then 0 under every mask: all scores 0
            raise InputError(
                f"The contrast text {contrast!r} is the explained output itself (the same "
                f"tokens), so the contrastive target is 0 for every mask: give a different "
                f"alternative output.")
        alt_engine = ScoringEngine(model, prompt_ids, alt_ids, prefix_reuse=prefix_reuse,
                                   max_batch_tokens=batch)
        engines = (engine, alt_engine)
    tgt = make_target(target, engine, reduction=reduction, k=top_k, alt_engine=alt_engine)
    mk = Masker(masker, prompt_ids, features, mask_token_id=model.mask_token_id,
                empty_context_id=getattr(model, "empty_context_id", None))
    inputs = ModelInputs(
        model=model,
        prompt=pr,
        prompt_ids=np.asarray(prompt_ids, dtype=np.int64),
        offsets=tuple(tuple(o) for o in offsets),
        features=features,
        output_ids=np.asarray(output_ids, dtype=np.int64),
        output_text=output_text,
        masker=mk,
        max_new_tokens=max_new_tokens,
        prefix_reuse=prefix_reuse,
        progress=progress,
        generated=generated,
    )
    return inputs, ScoringGame(inputs, tgt, engines=engines)


def finish(
    explainer: Explainer,
    inputs: ModelInputs,
    scoring: ScoringGame,
    exp: Explanation,
    *,
    t_start: float,
    seed: int,
    target_backend: Any = None,
    api_before: dict[str, float] | None = None,
) -> Attribution:
    """Turn an explainer's output on prepared inputs into an :class:`Attribution`."""
    from .text.pieces import output_pieces

    features, pr = inputs.features, inputs.prompt
    cost = exp.cost.as_dict()
    cost["wall_s"] = time.perf_counter() - t_start
    if target_backend is not None:
        cost.update(api_cost(target_backend, api_before))
    params_out = {
        # the scoring engine's settings, before the method's own record: a method that does
        # not run the engine records them as null (Explanation.params)
        "prefix_reuse": inputs.prefix_reuse,
        "scoring_batch_tokens": scoring.engines[0].configured_batch_tokens,
        # the generated answer's length; null where the output was given
        "max_new_tokens": inputs.max_new_tokens if inputs.generated else None,
        **exp.params,
        "granularity": features.granularity,
        # (only the settings the method reads: Explainer.reads)
        **({"target": scoring.target.params()} if "target" in explainer.reads else {}),
        **({"masker": inputs.masker.kind} if "masker" in explainer.reads else {}),
        # the token standing for a prompt with every token deleted (Masker.empty_context_id)
        **({"empty_context_id": inputs.masker.empty_context_id}
           if "masker" in explainer.reads and inputs.masker.kind == "delete" else {}),
        "chat_template": pr.chat,
    }
    if target_backend is not None:
        params_out["target_model"] = getattr(target_backend, "model", None)
        params_out["target_url"] = getattr(target_backend, "public_url", None)
    return Attribution(
        method=explainer.name,
        scores=exp.scores,
        labels=features.labels,
        spans=[[list(s) for s in f.spans] for f in features],
        input_text=pr.text,
        output_text=inputs.output_text,
        params=params_out,
        model={**inputs.model.info.provenance(), "device": inputs.model.info.device,
               "dtype": inputs.model.info.dtype},
        interactions=exp.interactions,
        per_output_token=exp.per_output_token,
        cost=cost,
        seed=seed,
        extra={**({"metadata": exp.extra} if exp.extra else {}),
               "environment": runtime_environment()},
        output_tokens=output_pieces(inputs.model, inputs.output_ids, inputs.output_text),
    )
