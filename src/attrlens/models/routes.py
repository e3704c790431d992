"""Log-likelihood routes of served models, and the capability probe that picks one.

A route turns "how likely is the fixed output ``o`` after the prompt ``p``" into requests a
particular kind of server answers, and reads the per-token log-probs of ``o`` back:

    prompt_logprobs  vLLM ``/v1/completions`` with ``prompt_logprobs: 0`` on ``p + o``: the
                     log-prob of every prompt token; the output's tokens are the trailing
                     ones whose text makes up ``o``
    sglang           SGLang's native ``/generate`` with ``return_logprob``,
                     ``max_new_tokens: 0`` and ``logprob_start_len`` one token before the
                     output (the log-prob at the start position comes back empty)
    echo             legacy completions (OpenAI legacy, Together, vLLM) with ``echo: true``
                     and ``logprobs``: the prompt tokens' log-probs with their text offsets
    forced_tokens    llama.cpp ``/completion``: a grammar that admits only the output's token
                     ids (``root ::= <[id1]> <[id2]> ...``), ``n_probs``,
                     ``post_sampling_probs: false`` (the model's own distribution, before
                     the grammar), ``temperature: 0``, ``cache_prompt: true``; the forced
                     tokens' log-probs are summed. Token ids come from the server's
                     ``/tokenize``.
    top_logprobs     chat APIs that give only the top-<=20 log-probs of generated tokens
                     (OpenAI, Gemini, Ollama): the log-prob of a one-token output at the
                     first generated position (absent from the top 20 -> ``floor``); the
                     ``--closed-answers`` value of evaluation/closed_values.py is the
                     difference of two such log-probs
    generate         no likelihood: the method regenerates (gSMILE)
    surrogate        no served likelihood: a local surrogate scores (RoPE-LIME)

The first five are *scoring routes* (:data:`SCORING_ROUTES`): every game-based method can
run on the served model through them. :func:`probe_routes` sends one short request per
candidate (cached like every call), picks the first that works in :data:`PROBE_ORDER`
(that conclusion is cached too, per endpoint and model: a rerun sends no probe request,
not even the ones that failed), refuses loudly a route that answers but is broken (empty
or non-finite log-probs), and an explicit route the server lacks gives one error naming
the routes it has.

Completion-style routes (all but ``top_logprobs``) send the prompt as text with the chat
template already applied (the caller renders it); ``top_logprobs`` sends chat messages.
"""

from __future__ import annotations

import abc
import math
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ..errors import (
    BackendError,
    CapabilityError,
    ParameterError,
    ServerGoneError,
    unknown_name_message,
)
from .cache import cache_key

if TYPE_CHECKING:
    from .openai import OpenAIBackend

Message = dict[str, str]
Progress = Callable[[int, int], None]

#: every route name (``--route``)
ROUTES = (
    "prompt_logprobs", "sglang", "echo", "forced_tokens", "top_logprobs", "generate",
    "surrogate",
)
#: routes that give the served model's log-likelihood of a fixed output, in probe order
PROBE_ORDER = ("prompt_logprobs", "sglang", "echo", "forced_tokens", "top_logprobs")
SCORING_ROUTES = PROBE_ORDER
#: the route of the methods that need no served likelihood
METHOD_ROUTES = {"gsmile": "generate", "rope_lime": "surrogate"}

_PROBE_PROMPT = "The capital of France is"
_PROBE_OUTPUT = " Paris"
_PROBE_MESSAGES = [{"role": "user", "content": "Answer with one word: is the sky blue?"}]
_TOP_K = 20


@dataclass(frozen=True)
class ScoreQuery:
    """One likelihood question: the output ``output`` after ``prompt``.

    ``prompt``: the prompt text as the model reads it (chat template applied) for
    completion routes; ``messages``: the same prompt as chat messages (``top_logprobs``).
    """

    prompt: str
    output: str
    messages: tuple[Message, ...] | None = None


@dataclass(frozen=True)
class Scored:
    """The answer to a :class:`ScoreQuery`: per-output-token log-probs (T,), natural log,
    the tokens' texts, and whether it came from the call cache."""

    logprobs: np.ndarray
    tokens: tuple[str, ...] = ()
    cached: bool = False


class _Missing(BackendError):
    """The server answered, but without the fields this route reads (route unsupported)."""


class _Broken(CapabilityError):
    """The server answered with the fields, but they are unusable (empty, non-finite)."""


def _finite_logprob(value: Any, where: str) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise _Broken(f"{where}: log-prob {value!r} is not a number") from None
    if not math.isfinite(x) or x > 1e-6:
        raise _Broken(f"{where}: log-prob {x!r} is not a finite value <= 0")
    return min(x, 0.0)


def tail_tokens(
    texts: Sequence[str], logprobs: Sequence[Any], output: str, where: str
) -> tuple[list[str], list[float]]:
    """The trailing tokens whose texts make up ``output`` (at least its length; a token
    straddling the prompt/output boundary is counted with the output), with their
    log-probs. Raises _Missing when the tokens do not reach back over the output."""
    need = len(output)
    got = 0
    i = len(texts)
    while i > 0 and got < need:
        i -= 1
        got += len(texts[i] or "")
    if got < need:
        raise _Missing(f"{where}: the returned tokens cover {got} of the output's {need} chars")
    lps = [_finite_logprob(lp, where) for lp in logprobs[i:]]
    return list(texts[i:]), lps


class Route(abc.ABC):
    """A way to read the served model's log-likelihood of a fixed output.

    Subclasses give ``name`` and ``score_many``; :class:`RequestRoute` implements it with one
    JSON request per query (``path``, ``root``, ``body``, ``parse``), sent through the backend
    concurrently, cached and counted, in the order given.
    """

    name: ClassVar[str] = ""
    path: ClassVar[str] = ""
    root: ClassVar[bool] = False  # True: under the server root, not under base_url (/v1)
    #: whether the value is an exact log-likelihood of the whole output
    exact: ClassVar[bool] = True

    def __init__(self, backend: OpenAIBackend):
        self.backend = backend

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.backend.public_url!r})"

    # -- scoring -------------------------------------------------------------------------
    def _where(self) -> str:
        url = self.backend.root_public_url if self.root else self.backend.public_url
        return f"The '{self.name}' route of the server at {url}"

    @abc.abstractmethod
    def score_many(self, queries: Sequence[ScoreQuery], progress: Progress | None = None
                   ) -> list[Scored]:
        """Per-token log-probs of each query's output, in the order given (that order is
        the send order: put prompts that share prefixes next to each other)."""

    def score(self, query: ScoreQuery) -> Scored:
        return self.score_many([query])[0]

    def details(self) -> dict[str, Any]:
        """What a result should record of how this route scored (beyond its name)."""
        return {}

    def probe(self) -> None:
        """One short request; _Missing when the server lacks the route, _Broken when it
        answers with unusable log-probs, BackendError for HTTP refusals."""
        s = self.score(ScoreQuery(_PROBE_PROMPT, _PROBE_OUTPUT, tuple(_PROBE_MESSAGES)))
        if s.logprobs.size == 0:
            raise _Broken(f"{self._where()} returned no log-probs for the output")


class RequestRoute(Route):
    """A route that scores each query with one JSON request: ``body`` builds it, ``parse``
    reads the answer (routes over chat completions override ``score_many`` instead)."""

    # -- hooks ---------------------------------------------------------------------------
    def prepare(self, output: str) -> None:
        """Per-output set-up before scoring (e.g. the output's token ids); default none."""

    @abc.abstractmethod
    def body(self, query: ScoreQuery) -> dict[str, Any]:
        """The JSON request that scores one query."""

    def check_shape(self, data: Any) -> None:
        """Raise _Missing/_Broken for an answer that is unusable whatever the query
        (such answers are never cached)."""

    @abc.abstractmethod
    def parse(self, query: ScoreQuery, data: Any) -> Scored:
        """The scored output of one answer."""

    def score_many(self, queries: Sequence[ScoreQuery], progress: Progress | None = None
                   ) -> list[Scored]:
        """Per-token log-probs of each query's output, in the order given (that order is
        the send order: put prompts that share prefixes next to each other)."""
        if not queries:
            return []
        for out in dict.fromkeys(q.output for q in queries):
            self.prepare(out)
        return self._send(queries, [self.body(q) for q in queries], progress)

    def _send(self, queries: Sequence[ScoreQuery], bodies: list[dict[str, Any]],
              progress: Progress | None) -> list[Scored]:
        """Post the request bodies (concurrently, cached, counted) and parse the answers."""
        answers = self.backend.post_many(self.path, bodies, root=self.root,
                                         validate=self.check_shape, progress=progress)
        out = []
        for q, (data, cached) in zip(queries, answers):
            s = self.parse(q, data)
            out.append(Scored(s.logprobs, s.tokens, cached))
        return out


class PromptLogprobsRoute(RequestRoute):
    """vLLM: ``/v1/completions`` with ``prompt_logprobs: 0`` on the prompt + output text."""

    name = "prompt_logprobs"
    path = "/completions"

    def body(self, query: ScoreQuery) -> dict[str, Any]:
        return {
            "model": self.backend.model,
            "prompt": query.prompt + query.output,
            "max_tokens": 1,
            "temperature": 0.0,
            "prompt_logprobs": 0,
        }

    def check_shape(self, data: Any) -> None:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Missing(f"{self._where()} answered without 'choices'")
        plp = choices[0].get("prompt_logprobs")
        if plp is None:
            raise _Missing(f"{self._where()} answered without 'prompt_logprobs'")
        if not isinstance(plp, list) or not any(isinstance(e, dict) and e for e in plp):
            raise _Broken(f"{self._where()} answered with empty 'prompt_logprobs'")

    def parse(self, query: ScoreQuery, data: Any) -> Scored:
        choice = data["choices"][0]
        ids = choice.get("prompt_token_ids")
        texts: list[str] = []
        lps: list[Any] = []
        for pos, entry in enumerate(choice["prompt_logprobs"]):
            if not entry:  # the first position has no log-prob
                texts.append("")
                lps.append(None)
                continue
            if isinstance(ids, list) and pos < len(ids) and str(ids[pos]) in entry:
                item = entry[str(ids[pos])]
            elif len(entry) == 1:
                item = next(iter(entry.values()))
            else:
                raise _Broken(
                    f"{self._where()} returned {len(entry)} candidates at prompt position "
                    f"{pos} and no prompt_token_ids to tell the prompt's token"
                )
            texts.append(str(item.get("decoded_token") or ""))
            lps.append(item.get("logprob"))
        toks, vals = tail_tokens(texts, lps, query.output, self._where())
        return Scored(np.asarray(vals, dtype=np.float64), tuple(toks))


class EchoRoute(RequestRoute):
    """Legacy completions: ``echo: true``, ``logprobs: 0``; tokens chosen by text offset."""

    name = "echo"
    path = "/completions"

    def body(self, query: ScoreQuery) -> dict[str, Any]:
        return {
            "model": self.backend.model,
            "prompt": query.prompt + query.output,
            "max_tokens": 1,
            "temperature": 0.0,
            "echo": True,
            "logprobs": 0,
        }

    def check_shape(self, data: Any) -> None:
        choices = data.get("choices") if isinstance(data, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise _Missing(f"{self._where()} answered without 'choices'")
        lp = choices[0].get("logprobs")
        if not isinstance(lp, dict) or not isinstance(lp.get("text_offset"), list):
            raise _Missing(f"{self._where()} answered without echoed logprobs/text_offset")
        if not lp.get("tokens") or not lp.get("token_logprobs"):
            raise _Broken(f"{self._where()} answered with empty echoed log-probs")

    def parse(self, query: ScoreQuery, data: Any) -> Scored:
        lp = data["choices"][0]["logprobs"]
        toks, offs, vals = lp["tokens"], lp["text_offset"], lp["token_logprobs"]
        start, end = len(query.prompt), len(query.prompt) + len(query.output)
        keep = [
            i for i, (t, o) in enumerate(zip(toks, offs))
            if int(o) < end and int(o) + len(t or "") > start
        ]
        covered = sum(len(toks[i] or "") for i in keep)
        if not keep or covered < len(query.output) or int(offs[keep[0]]) > start:
            raise _Missing(f"{self._where()} did not echo the prompt's tokens (no echo support)")
        return Scored(
            np.asarray([_finite_logprob(vals[i], self._where()) for i in keep]),
            tuple(str(toks[i]) for i in keep),
        )


class SGLangRoute(RequestRoute):
    """SGLang native ``/generate``: ``return_logprob``, ``max_new_tokens: 0``,
    ``logprob_start_len`` one token before the output (from ``count_tokens`` of the
    prompt; 0 = the whole prompt when no counter is given or it fell short)."""

    name = "sglang"
    path = "/generate"
    root = True

    def __init__(self, backend: OpenAIBackend,
                 count_tokens: Callable[[str], int] | None = None):
        super().__init__(backend)
        self.count_tokens = count_tokens

    def body(self, query: ScoreQuery, *, start: int | None = None) -> dict[str, Any]:
        if start is None:
            n = self.count_tokens(query.prompt) if self.count_tokens is not None else 0
            # one token before the output, and one more: the prompt's last token may merge
            # with the output's first when the two are tokenized together
            start = max(0, int(n) - 2)
        return {
            "text": query.prompt + query.output,
            "sampling_params": {"max_new_tokens": 0, "temperature": 0.0},
            "return_logprob": True,
            "logprob_start_len": start,
            "return_text_in_logprobs": True,
        }

    def check_shape(self, data: Any) -> None:
        meta = data.get("meta_info") if isinstance(data, dict) else None
        if isinstance(data, list) and data:  # batch form: one answer per text
            meta = data[0].get("meta_info") if isinstance(data[0], dict) else None
        if not isinstance(meta, dict) or "input_token_logprobs" not in meta:
            raise _Missing(f"{self._where()} answered without meta_info.input_token_logprobs")
        if not meta["input_token_logprobs"]:
            raise _Broken(f"{self._where()} answered with empty input_token_logprobs")

    def parse(self, query: ScoreQuery, data: Any) -> Scored:
        if isinstance(data, list):
            data = data[0]
        entries = data["meta_info"]["input_token_logprobs"]
        texts = [str(e[2]) if len(e) > 2 and e[2] is not None else "" for e in entries]
        lps = [e[0] for e in entries]
        # the entry at the start position has no log-prob: it is never an output token
        toks, vals = tail_tokens(texts[1:], lps[1:], query.output, self._where())
        return Scored(np.asarray(vals, dtype=np.float64), tuple(toks))

    def score_many(self, queries: Sequence[ScoreQuery], progress: Progress | None = None
                   ) -> list[Scored]:
        try:
            return super().score_many(queries, progress)
        except (_Missing, _Broken):
            if self.count_tokens is None:
                raise
        # the start estimate was too late for some prompt: ask from the prompt's start
        return self._send(queries, [self.body(q, start=0) for q in queries], progress)


class ForcedTokensRoute(RequestRoute):
    """llama.cpp ``/completion`` with a grammar that admits only the output's token ids."""

    name = "forced_tokens"
    path = "/completion"
    root = True

    def __init__(self, backend: OpenAIBackend):
        super().__init__(backend)
        self._ids: dict[str, tuple[int, ...]] = {}

    def output_ids(self, output: str) -> tuple[int, ...]:
        """The served model's token ids of ``output`` (its ``/tokenize``, cached)."""
        if output not in self._ids:
            def check(data: Any) -> None:
                toks = data.get("tokens") if isinstance(data, dict) else None
                if not isinstance(toks, list):
                    raise _Missing(f"{self._where()}: the server has no /tokenize")

            data, _ = self.backend.post("/tokenize", {"content": output, "add_special": False},
                                        root=True, validate=check)
            ids = tuple(int(t["id"]) if isinstance(t, dict) else int(t) for t in data["tokens"])
            if not ids:
                raise ParameterError(f"The output {output!r} tokenizes to nothing on the server.")
            self._ids[output] = ids
        return self._ids[output]

    def prepare(self, output: str) -> None:
        self.output_ids(output)

    def body(self, query: ScoreQuery) -> dict[str, Any]:
        ids = self.output_ids(query.output)
        return {
            "prompt": query.prompt,
            "n_predict": len(ids),
            "grammar": "root ::= " + " ".join(f"<[{i}]>" for i in ids),
            "n_probs": 1,
            "post_sampling_probs": False,
            "temperature": 0.0,
            "cache_prompt": True,
        }

    def check_shape(self, data: Any) -> None:
        probs = data.get("completion_probabilities") if isinstance(data, dict) else None
        if probs is None:
            raise _Missing(f"{self._where()} answered without completion_probabilities")
        if not isinstance(probs, list) or not probs:
            raise _Broken(f"{self._where()} answered with empty completion_probabilities")

    def parse(self, query: ScoreQuery, data: Any) -> Scored:
        ids = self.output_ids(query.output)
        probs = data["completion_probabilities"]
        got = tuple(int(p.get("id", -1)) for p in probs)
        if got != ids:
            # a prefix of the forced tokens: the server stopped early (its token limit, a
            # stop string); other tokens: it did not apply the grammar
            why = (f"it stopped after {len(got)} of the {len(ids)} forced tokens (a token "
                   f"limit or a stop string of the server's)"
                   if len(got) < len(ids) and got == ids[: len(got)]
                   else "the server ignored the grammar")
            raise _Broken(
                f"{self._where()} generated token ids {list(got)} instead of the forced "
                f"{list(ids)}: {why}"
            )
        vals = [_finite_logprob(p.get("logprob"), self._where()) for p in probs]
        return Scored(np.asarray(vals, dtype=np.float64),
                      tuple(str(p.get("token", "")) for p in probs))


def answer_logprob(
    top: Mapping[str, float], answer: str, *, strip: bool = True, case_sensitive: bool = True
) -> float | None:
    """Log-prob of ``answer`` among top-k tokens {text: log-prob}, or None if absent.

    With ``strip`` token texts are compared without surrounding whitespace (" True" and
    "True" are one answer) and variants are merged by adding their probabilities."""
    want = answer.strip() if strip else answer
    if not case_sensitive:
        want = want.lower()
    hits = []
    for tok, lp in top.items():
        t = tok.strip() if strip else tok
        if not case_sensitive:
            t = t.lower()
        if t == want:
            hits.append(float(lp))
    if not hits:
        return None
    m = max(hits)
    return m + math.log(sum(math.exp(h - m) for h in hits))


class TopLogprobsRoute(Route):
    """Chat APIs with top-k log-probs of generated tokens only: log p(output) at the first
    generated position, for one-token outputs; ``floor`` when outside the top k."""

    name = "top_logprobs"
    exact = False  # exact only while the output is in the top k

    def __init__(self, backend: OpenAIBackend, *, top_k: int = _TOP_K, floor: float = -100.0):
        super().__init__(backend)
        self.top_k = int(top_k)
        self.floor = float(floor)
        self.fewest_received: int | None = None  # the shortest top list a response gave
        self.floored = 0  # values set to the floor (the output outside the list)
        self.floored_short = 0  # ... of which the list was shorter than asked
        self._warned = False

    def score_many(self, queries: Sequence[ScoreQuery], progress: Progress | None = None
                   ) -> list[Scored]:
        for q in queries:
            if q.messages is None:
                raise ParameterError("The top_logprobs route needs chat messages.")
        comps = self.backend.chat_many(
            [list(q.messages or ()) for q in queries], max_tokens=1, temperature=0.0,
            top_logprobs=self.top_k, progress=progress,
        )
        out = []
        for q, c in zip(queries, comps):
            top = c.tokens[0].top if c.tokens else {}
            if not top:
                raise _Broken(f"{self._where()} returned no top log-probs")
            got = len(top)
            self.fewest_received = got if self.fewest_received is None else min(
                self.fewest_received, got)
            lp = answer_logprob(top, q.output)
            if lp is None:
                self.floored += 1
                self.floored_short += got < self.top_k
            out.append(Scored(np.asarray([self.floor if lp is None else lp]),
                              (q.output.strip(),), c.cached))
        if self.floored_short and not self._warned:
            # a server that sends fewer alternatives than asked floors outputs that a full
            # list would have scored (a list of 1 turned a 0.7 score into 98.9)
            self._warned = True
            warnings.warn(
                f"{self._where()} sent {self.fewest_received} of the {self.top_k} top "
                f"log-probs asked for, and the output was outside the list it sent "
                f"{self.floored_short} time(s): those values are the floor {self.floor:g}, "
                f"not the model's; use a route with full log-likelihoods (--route).",
                stacklevel=2)
        return out

    def details(self) -> dict[str, Any]:
        return {"top_k": self.top_k, "fewest_received": self.fewest_received,
                "floor": self.floor, "floored": self.floored,
                "floored_short_list": self.floored_short}

    def probe(self) -> None:
        comp = self.backend.chat(list(_PROBE_MESSAGES), max_tokens=1, temperature=0.0,
                                 top_logprobs=self.top_k)
        if not comp.tokens or not comp.tokens[0].top:
            raise _Broken(f"{self._where()} returned no top log-probs")
        for v in comp.tokens[0].top.values():
            _finite_logprob(v, self._where())


_CLASSES: dict[str, type[Route]] = {
    "prompt_logprobs": PromptLogprobsRoute,
    "sglang": SGLangRoute,
    "echo": EchoRoute,
    "forced_tokens": ForcedTokensRoute,
    "top_logprobs": TopLogprobsRoute,
}


def make_route(name: str, backend: OpenAIBackend, *,
               count_tokens: Callable[[str], int] | None = None) -> Route:
    """The scoring route ``name`` on ``backend`` (not probed)."""
    if name not in SCORING_ROUTES:
        if name in ROUTES:
            raise ParameterError(
                f"The route '{name}' gives no served log-likelihood; it belongs to "
                f"{'gsmile' if name == 'generate' else 'rope_lime'} (--method "
                f"{'gsmile' if name == 'generate' else 'rope_lime'})."
            )
        raise ParameterError(unknown_name_message("route", name, ROUTES))
    if name == "sglang":
        return SGLangRoute(backend, count_tokens)
    return _CLASSES[name](backend)


@dataclass
class ProbeReport:
    """What the probe found: the chosen route, the working ones, the refused ones and why."""

    chosen: str | None = None
    working: list[str] = field(default_factory=list)
    missing: dict[str, str] = field(default_factory=dict)
    broken: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"chosen": self.chosen, "working": list(self.working),
                "missing": dict(self.missing), "broken": dict(self.broken)}


def _try(route: Route) -> tuple[str, str]:
    """("ok"|"missing"|"broken", reason) of one probe request."""
    try:
        route.probe()
    except _Broken as exc:
        return "broken", str(exc)
    except CapabilityError as exc:  # e.g. a chat answer without log-probs
        return "missing", str(exc)
    except ServerGoneError:
        raise
    except BackendError as exc:  # HTTP 404/405/400: no such route or parameter
        return "missing", str(exc)
    return "ok", ""


#: the probe's finding per backend object (one probe per client, not per explanation)
_PROBED: weakref.WeakKeyDictionary[Any, ProbeReport] = weakref.WeakKeyDictionary()


def _probe_request(candidates: Sequence[str]) -> dict[str, Any]:
    """The call-cache request under which the probe's conclusion is stored (with the
    backend's endpoint and model, like any call): the routes tried, in order."""
    return {"probe_routes": list(candidates)}


def _cached_probe(backend: OpenAIBackend, candidates: Sequence[str]) -> ProbeReport | None:
    """The conclusion of an earlier probe of this endpoint and model, from the call cache
    (None when there is none, or no cache): a rerun sends no probe requests at all, not
    even the ones that failed."""
    if backend.cache is None:
        return None
    hit = backend.cache.get(cache_key(backend.base_url, backend.model,
                                      _probe_request(candidates)))
    if not isinstance(hit, dict) or hit.get("chosen") not in candidates:
        return None
    try:
        return ProbeReport(str(hit["chosen"]), [str(w) for w in hit.get("working") or []],
                           dict(hit.get("missing") or {}), dict(hit.get("broken") or {}))
    except (TypeError, ValueError):
        return None


def _store_probe(backend: OpenAIBackend, candidates: Sequence[str],
                 report: ProbeReport) -> None:
    if backend.cache is None:
        return
    request = _probe_request(candidates)
    backend.cache.put(cache_key(backend.base_url, backend.model, request), report.as_dict(),
                      endpoint=backend.base_url, model=backend.model, request=request)


def probe_routes(
    backend: OpenAIBackend,
    route: str | None = None,
    *,
    candidates: Sequence[str] = PROBE_ORDER,
    count_tokens: Callable[[str], int] | None = None,
) -> tuple[Route, ProbeReport]:
    """The scoring route to use on ``backend``: ``route`` if given and working, else the
    first of ``candidates`` that works (one short request each, cached; the conclusion is
    stored in the call cache per endpoint and model, so a rerun sends no probe request).

    A route that answers with unusable log-probs is refused with a warning (and is an
    error when asked for by name); a requested route the server lacks raises
    CapabilityError naming the routes it has; no working route at all raises
    CapabilityError suggesting ``--route generate`` (gSMILE) or ``surrogate`` (RoPE-LIME).
    """
    report = ProbeReport()
    known = _PROBED.get(backend)
    if route is None and (known is None or known.chosen is None):
        known = _cached_probe(backend, candidates)
        if known is not None:
            _PROBED[backend] = known
    if route is None and known is not None and known.chosen is not None:
        return make_route(known.chosen, backend, count_tokens=count_tokens), known
    if route is not None:
        chosen = make_route(route, backend, count_tokens=count_tokens)
        state, why = _try(chosen)
        if state == "ok":
            report.chosen, report.working = route, [route]
            return chosen, report
        (report.broken if state == "broken" else report.missing)[route] = why
        others = [c for c in candidates if c != route]
        for name in others:
            st, reason = _try(make_route(name, backend, count_tokens=count_tokens))
            if st == "ok":
                report.working.append(name)
            else:
                (report.broken if st == "broken" else report.missing)[name] = reason
        has = ", ".join(report.working) or "none of the scoring routes"
        what = "answers with broken log-probs on" if state == "broken" else "does not offer"
        raise CapabilityError(
            f"The server at {backend.public_url} {what} the route '{route}' ({why}). It has: "
            f"{has}; the routes generate (gsmile) and surrogate (rope_lime) need no served "
            "log-probs. Pass one of these with --route."
        )
    for name in candidates:
        r = make_route(name, backend, count_tokens=count_tokens)
        state, why = _try(r)
        if state == "ok":
            report.chosen, report.working = name, [name]
            _PROBED[backend] = report
            _store_probe(backend, candidates, report)
            return r, report
        if state == "broken":
            warnings.warn(
                f"Route '{name}' refused: {why}. Trying the next route.", UserWarning,
                stacklevel=2,
            )
            report.broken[name] = why
        else:
            report.missing[name] = why
    raise CapabilityError(
        f"The server at {backend.public_url} gives no log-likelihood of a fixed output by "
        f"any route ({', '.join(candidates)}"
        + (f"; broken: {', '.join(report.broken)}" if report.broken else "")
        + "). Explain it with --method gsmile (route generate) or --method rope_lime "
        "(route surrogate)."
    )
