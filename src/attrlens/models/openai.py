"""Client of any OpenAI-compatible chat-completions endpoint: the closed-model backend.

It exposes only what a hosted API gives: generated text and, where the server returns
them, the top-k log-probs of the generated tokens. There is no teacher forcing and no
embeddings. Around each call it adds what paid, flaky, rate-limited services need:

- timeouts; retries with exponential backoff and full jitter on 429, 5xx, dropped
  connections and timeouts, honouring ``Retry-After``; other 4xx fail at once with the
  server's message;
- a concurrency limit shared by every thread that uses the backend;
- counters of real calls, cache hits, retries, tokens and (optionally) cost;
- a persistent call cache (``CallCache``): each completed call is stored at once, so an
  interrupted run resumes without repeating paid calls, and a repeated run costs nothing.

The API key is read from an environment variable at each request; it is never stored on
the object, printed, or made part of a cache key.
"""

from __future__ import annotations

import difflib
import email.utils
import math
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ..errors import (
    BackendError,
    CapabilityError,
    InputError,
    ParameterError,
    ServerGoneError,
    check_param,
)
from .base import ModelInfo
from .cache import CACHE_FILE_NAME, CallCache, cache_key

Message = dict[str, str]
Messages = Sequence[Message]

_RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx
_ROLES = {"system", "user", "assistant", "developer", "tool"}


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token: its text, its log-prob (natural log), and the top-k alternatives.

    ``top`` maps token text -> log-prob for the k most likely tokens at that position (the
    generated token included when it is in the top k). Distinct token ids that decode to
    the same text are merged by adding their probabilities (log-sum-exp).
    """

    token: str
    logprob: float
    top: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Completion:
    """One chat completion.

    ``tokens`` is None when log-probs were not requested (``top_logprobs=0``).
    ``prompt_tokens``/``completion_tokens`` come from the server's ``usage`` (0 if absent).
    ``cached`` is True when the response came from the call cache (no HTTP call made).
    ``raw`` is the server's full response JSON.
    """

    text: str
    tokens: list[TokenLogprob] | None
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    finish_reason: str | None
    raw: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)


class _Aborted(Exception):
    """Internal: a sibling call in ``chat_many`` failed, so this one stops retrying."""


def _retry_after_seconds(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or HTTP date), None if absent/bad."""
    if not value:
        return None
    value = value.strip()
    try:
        secs = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        if when is None:
            return None
        secs = when.timestamp() - time.time()
    if not math.isfinite(secs):
        return None
    return max(0.0, secs)


def _server_message(resp: httpx.Response) -> str:
    """The error text a server put in its body (OpenAI form ``{"error": {"message"}}``)."""
    try:
        body = resp.json()
    except ValueError:
        text = resp.text.strip()
        return text[:300] if text else resp.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict):
            msg = err.get("message") or err.get("detail") or err
            return str(msg)[:300]
        return str(err)[:300]
    return str(body)[:300]


def _parse_tokens(choice: dict[str, Any]) -> list[TokenLogprob] | None:
    """TokenLogprob list from an OpenAI ``choice.logprobs.content``; None if missing."""
    lp = choice.get("logprobs")
    if not isinstance(lp, dict):
        return None
    content = lp.get("content")
    if not isinstance(content, list):
        return None
    out = []
    for item in content:
        top: dict[str, float] = {}
        for alt in item.get("top_logprobs") or []:
            tok, val = alt.get("token"), alt.get("logprob")
            if tok is None or val is None:
                continue
            val = float(val)
            # two ids may decode to the same text (e.g. byte pieces): merge their mass
            top[tok] = float(math.log(math.exp(top[tok]) + math.exp(val))) if tok in top else val
        out.append(TokenLogprob(str(item.get("token", "")), float(item.get("logprob", 0.0)), top))
    return out


def _validate_messages(messages: object) -> list[Message]:
    if isinstance(messages, str):
        return [{"role": "user", "content": messages}]
    if not isinstance(messages, Sequence) or not messages:
        raise InputError(
            "messages must be a non-empty list of {'role': ..., 'content': ...} dicts "
            f"(or one string for a single user message). Got {type(messages).__name__}."
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise InputError(
                f"Message {i} must be a dict with 'role' and 'content' keys. Got {m!r}."
            )
        if m["role"] not in _ROLES:
            raise InputError(
                f"Message {i} has role {m['role']!r}; expected one of {', '.join(sorted(_ROLES))}."
            )
        out.append(dict(m))
    return out


class OpenAIBackend:
    """A chat model behind an OpenAI-compatible HTTP API (hosted, vLLM, llama.cpp, ...).

    ``base_url``: API root including the version, e.g. ``https://api.openai.com/v1`` or
    ``LlamaServer().base_url``. ``model``: model name sent with each request.
    ``api_key_env``: name of the environment variable holding the key (read per request;
    unset = no Authorization header, fine for local servers).
    ``timeout``: seconds per HTTP request. ``max_retries``: retries after the first try on
    429/5xx/connection errors/timeouts. ``backoff_base``/``backoff_max``: the delay before
    retry r (0-based) is uniform in [0, min(backoff_max, backoff_base * 2**r)] ("full
    jitter"); a ``Retry-After`` header replaces it (capped at ``backoff_max``).
    ``concurrency``: most requests in flight at once, over all threads.
    ``cache``: True = the default ``CallCache`` (or one in ``cache_dir``), a ``CallCache``
    to share one, False/None = no cache. ``price_prompt_per_1k``/``price_completion_per_1k``:
    USD per 1000 tokens, to fill ``counters['cost_usd']``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        max_retries: int = 6,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        concurrency: int = 4,
        cache: bool | CallCache | None = True,
        cache_dir: str | os.PathLike[str] | None = None,
        price_prompt_per_1k: float | None = None,
        price_completion_per_1k: float | None = None,
    ) -> None:
        owner = "OpenAIBackend"
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ParameterError(
                f"The 'base_url' parameter of {owner} must be an http(s) URL such as "
                f"'http://127.0.0.1:8080/v1'. Got {base_url!r} instead."
            )
        if not isinstance(model, str) or not model:
            raise ParameterError(
                f"The 'model' parameter of {owner} must be a non-empty str. Got {model!r} instead."
            )
        check_param(owner, "timeout", timeout, low=0.001)
        check_param(owner, "max_retries", max_retries, kind=int, low=0)
        check_param(owner, "backoff_base", backoff_base, low=0)
        check_param(owner, "backoff_max", backoff_max, low=0)
        check_param(owner, "concurrency", concurrency, kind=int, low=1)
        for name, price in (
            ("price_prompt_per_1k", price_prompt_per_1k),
            ("price_completion_per_1k", price_completion_per_1k),
        ):
            if price is not None:
                check_param(owner, name, price, low=0)
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.timeout = float(timeout)
        self.max_retries = max_retries
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.concurrency = concurrency
        self.price_prompt_per_1k = price_prompt_per_1k
        self.price_completion_per_1k = price_completion_per_1k
        if isinstance(cache, CallCache):
            self.cache: CallCache | None = cache
        elif cache is True:
            self.cache = CallCache(Path(cache_dir) / CACHE_FILE_NAME if cache_dir else None)
        elif cache in (False, None):
            self.cache = None
        else:
            raise ParameterError(
                f"The 'cache' parameter of {owner} must be True, False, None or a CallCache. "
                f"Got {cache!r} instead."
            )
        self._slots = threading.BoundedSemaphore(concurrency)
        # jitter only spreads retries in time; it never affects a result, so no seed
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        self._checked = False
        self._logprobs_supported: bool | None = None
        self._client = httpx.Client(
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            # hosted endpoints sit behind proxies users configure; loopback never does
            trust_env=not self._is_loopback_url(),
        )
        self.counters: dict[str, float] = {
            "api_calls": 0,
            "cached_calls": 0,
            "retries": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "cost_usd": 0.0,
        }

    # --- presentation --------------------------------------------------------------------
    def __repr__(self) -> str:
        # the key's variable name only, never its value
        return (
            f"OpenAIBackend(base_url={self.base_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, cache={self.cache!r})"
        )

    @property
    def model_id(self) -> str:
        """Identifier recorded in results' provenance: ``model@base_url``."""
        return f"{self.model}@{self.base_url}"

    @property
    def info(self) -> ModelInfo:
        """Provenance, like local backends' ``info`` (no weights file to hash: sha256=None)."""
        return ModelInfo(self.model_id, None)

    @property
    def capabilities(self) -> set[str]:
        """``{"generate", "top_logprobs"}``; ``top_logprobs`` is dropped once the server has
        answered a log-prob request without them."""
        caps = {"generate"}
        if self._logprobs_supported is not False:
            caps.add("top_logprobs")
        return caps

    def _is_loopback_url(self) -> bool:
        host = httpx.URL(self.base_url).host
        return host in ("127.0.0.1", "localhost", "::1") or host.startswith("127.")

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = os.environ.get(self.api_key_env) if self.api_key_env else None
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _count(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.counters[k] = self.counters.get(k, 0) + v

    def reset_counters(self) -> None:
        """Set every counter back to zero."""
        with self._lock:
            for k in self.counters:
                self.counters[k] = 0.0 if k == "cost_usd" else 0

    def close(self) -> None:
        """Close HTTP connections (the cache stays usable)."""
        self._client.close()

    def __enter__(self) -> OpenAIBackend:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- HTTP with retries ---------------------------------------------------------------
    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.backoff_max)
        cap = min(self.backoff_max, self.backoff_base * (2.0**attempt))
        # full jitter: retries of many clients spread out instead of arriving together
        return self._rng.uniform(0.0, cap)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: dict[str, Any] | None = None,
        max_retries: int | None = None,
        abort: threading.Event | None = None,
        count_retries: bool = True,
    ) -> httpx.Response:
        """One logical request with retries; returns a 2xx response or raises.

        4xx other than the retryable ones -> BackendError at once; retryable failures after
        every retry -> ServerGoneError. ``abort`` (set by a failed sibling) stops retrying.
        """
        url = self.base_url + path
        retries = self.max_retries if max_retries is None else max_retries
        started = time.monotonic()
        last = ""
        for attempt in range(retries + 1):
            if abort is not None and abort.is_set():
                raise _Aborted()
            retry_after: float | None = None
            try:
                with self._slots:
                    resp = self._client.request(method, url, json=json, headers=self._headers())
            except httpx.TimeoutException as exc:
                last = f"no answer within {self.timeout:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                # refused, reset, dropped without a response, DNS failure, ...
                last = f"{type(exc).__name__}: {exc or 'connection failed'}"
            else:
                code = resp.status_code
                if code < 400:
                    return resp
                msg = _server_message(resp)
                if code >= 500 or code in _RETRY_STATUS:
                    last = f"HTTP {code}: {msg}"
                    retry_after = _retry_after_seconds(resp.headers.get("retry-after"))
                else:
                    raise BackendError(self._client_error_message(code, msg, path))
            if attempt == retries:
                break
            if count_retries:
                self._count(retries=1)
            delay = self._backoff(attempt, retry_after)
            if abort is not None:
                if abort.wait(delay):
                    raise _Aborted()
            else:
                time.sleep(delay)
        elapsed = time.monotonic() - started
        raise ServerGoneError(
            f"The server at {self.base_url} gave no usable answer to {method} {path} in "
            f"{retries + 1} attempt(s) over {elapsed:.1f} s; last error: {last}. Check that "
            "it is running and the URL is right; completed calls are kept in the cache, so a "
            "rerun resumes where this one stopped."
        )

    def _client_error_message(self, code: int, msg: str, path: str) -> str:
        where = f"The server at {self.base_url}"
        if code in (401, 403):
            return (
                f"{where} refused the request (HTTP {code}: {msg}). Put a valid API key in "
                f"the environment variable {self.api_key_env}."
            )
        if code == 404 and path == "/chat/completions":
            return (
                f"{where} has no {path} route or no model {self.model!r} (HTTP 404: {msg}). "
                "The base URL must be the API root including the version, e.g. "
                "'http://127.0.0.1:8080/v1', and the model a name the server serves."
            )
        return f"{where} rejected the request to {path} (HTTP {code}): {msg}"

    # --- endpoint validation -------------------------------------------------------------
    def served_models(self) -> list[str] | None:
        """Model names listed by ``GET /models``; None when the server has no such route."""
        try:
            resp = self._request(
                "GET", "/models", max_retries=min(self.max_retries, 2), count_retries=False
            )
        except BackendError as exc:
            if isinstance(exc, ServerGoneError):
                raise
            return None  # no /models (404/405): nothing to validate against
        try:
            body = resp.json()
        except ValueError:
            return None
        names: list[str] = []
        for entry in body.get("data") or [] if isinstance(body, dict) else []:
            if isinstance(entry, dict):
                if entry.get("id"):
                    names.append(str(entry["id"]))
                names.extend(str(a) for a in entry.get("aliases") or [])
        return sorted(set(names)) if names else None

    def check(self) -> None:
        """Validate the endpoint once: reachable, and serving ``model``.

        Unreachable -> ServerGoneError naming the URL and the cause. A model name the
        server does not list in ``/models`` -> BackendError naming the served models.
        """
        with self._check_lock:
            if self._checked:
                return
            names = self.served_models()
            if names is not None and self.model not in names:
                close = difflib.get_close_matches(self.model, names, n=1, cutoff=0.5)
                hint = f" Did you mean {close[0]!r}?" if close else ""
                shown = ", ".join(names[:30]) + (
                    f", ... ({len(names)} in all)" if len(names) > 30 else ""
                )
                raise BackendError(
                    f"The server at {self.base_url} does not serve a model named "
                    f"{self.model!r}; it serves: {shown}.{hint} Pass one of these as the "
                    "model name."
                )
            self._checked = True

    # --- chat completions ----------------------------------------------------------------
    def build_request(
        self,
        messages: Messages | str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
    ) -> dict[str, Any]:
        """The JSON body of one chat-completions request (also the cache key's content)."""
        owner = "OpenAIBackend.chat"
        check_param(owner, "max_tokens", max_tokens, kind=int, low=1)
        check_param(owner, "temperature", temperature, low=0, high=2)
        check_param(owner, "top_logprobs", top_logprobs, kind=int, low=0)
        if seed is not None:
            check_param(owner, "seed", seed, kind=int)
        body: dict[str, Any] = {
            "model": self.model,
            "messages": _validate_messages(messages),
            "max_tokens": max_tokens,
            "temperature": float(temperature),
            "n": 1,
        }
        if seed is not None:
            body["seed"] = seed
        if stop:
            body["stop"] = [stop] if isinstance(stop, str) else list(stop)
        if top_logprobs > 0:
            # llama.cpp, vLLM and OpenAI all read these two fields; with top_logprobs 0
            # llama.cpp returns no log-probs at all, so "no log-probs asked" is left out
            body["logprobs"] = True
            body["top_logprobs"] = top_logprobs
        return body

    def _completion(self, resp_json: dict[str, Any], cached: bool, wants_lp: bool) -> Completion:
        choices = resp_json.get("choices") if isinstance(resp_json, dict) else None
        if not choices or not isinstance(choices[0], dict):
            raise BackendError(
                f"The server at {self.base_url} answered without 'choices'; it does not look "
                f"like an OpenAI-compatible chat-completions endpoint. Answer: {str(resp_json)[:200]}"
            )
        choice = choices[0]
        msg = choice.get("message") or {}
        text = msg.get("content") or ""
        usage = resp_json.get("usage") or {}
        tokens = _parse_tokens(choice) if wants_lp else None
        if wants_lp:
            generated = bool(text) or int(usage.get("completion_tokens") or 0) > 0
            missing = tokens is None or (generated and not tokens) or not all(t.top for t in tokens)
            if missing:
                self._logprobs_supported = False
                raise CapabilityError(self._no_logprobs_message())
            if tokens:
                self._logprobs_supported = True
        return Completion(
            text=text,
            tokens=tokens,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            cached=cached,
            finish_reason=choice.get("finish_reason"),
            raw=resp_json,
        )

    def _chat_body(self, body: dict[str, Any], abort: threading.Event | None) -> Completion:
        wants_lp = int(body.get("top_logprobs", 0)) > 0
        # a sampled request without a seed is not reproducible: neither read nor write it
        cacheable = self.cache is not None and (body["temperature"] == 0 or "seed" in body)
        key = cache_key(self.base_url, self.model, body) if cacheable else None
        if key is not None:
            hit = self.cache.get(key)  # type: ignore[union-attr]
            if hit is not None:
                self._count(cached_calls=1)
                return self._completion(hit, cached=True, wants_lp=wants_lp)
        if abort is not None and abort.is_set():
            raise _Aborted()
        self.check()
        resp = self._request("POST", "/chat/completions", json=body, abort=abort)
        try:
            data = resp.json()
        except ValueError as exc:
            raise BackendError(
                f"The server at {self.base_url} answered /chat/completions with non-JSON "
                f"text: {resp.text[:200]!r}"
            ) from exc
        usage = data.get("usage") or {} if isinstance(data, dict) else {}
        p_tok = int(usage.get("prompt_tokens") or 0)
        c_tok = int(usage.get("completion_tokens") or 0)
        cost = 0.0
        if self.price_prompt_per_1k is not None:
            cost += p_tok / 1000.0 * self.price_prompt_per_1k
        if self.price_completion_per_1k is not None:
            cost += c_tok / 1000.0 * self.price_completion_per_1k
        self._count(api_calls=1, prompt_tokens=p_tok, completion_tokens=c_tok, cost_usd=cost)
        completion = self._completion(data, cached=False, wants_lp=wants_lp)
        if key is not None:
            # stored right away: a crash after this line cannot cost this call again
            self.cache.put(  # type: ignore[union-attr]
                key, data, endpoint=self.base_url, model=self.model, request=body
            )
        return completion

    def chat(
        self,
        messages: Messages | str,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
    ) -> Completion:
        """One chat completion (from the cache when the same request was made before).

        ``messages``: list of {"role", "content"} dicts (a str = one user message).
        ``top_logprobs``: k > 0 asks for the k most likely tokens at each generated position
        (CapabilityError if the server returns none). Temperature 0 (greedy) plus a ``seed``
        gives reproducible answers on servers that honour them.
        """
        body = self.build_request(
            messages,
            max_tokens=max_tokens,
            temperature=temperature,
            top_logprobs=top_logprobs,
            seed=seed,
            stop=stop,
        )
        return self._chat_body(body, None)

    def chat_many(
        self,
        list_of_messages: Sequence[Messages | str],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_logprobs: int = 0,
        seed: int | None = None,
        stop: Sequence[str] | str | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[Completion]:
        """Many chat completions, at most ``concurrency`` in flight; results in input order.

        ``progress(done, total)`` is called from this thread after each completion. On the
        first failure the remaining calls are cancelled and that error is raised; every call
        that completed before it is already in the cache, so a rerun makes only the rest.
        """
        bodies = [
            self.build_request(
                m,
                max_tokens=max_tokens,
                temperature=temperature,
                top_logprobs=top_logprobs,
                seed=seed,
                stop=stop,
            )
            for m in list_of_messages
        ]
        total = len(bodies)
        results: list[Completion | None] = [None] * total
        if total == 0:
            return []
        abort = threading.Event()
        done = 0
        with ThreadPoolExecutor(
            max_workers=min(self.concurrency, total), thread_name_prefix="attrlens-api"
        ) as pool:
            futures: dict[Future[Completion], int] = {
                pool.submit(self._chat_body, body, abort): i for i, body in enumerate(bodies)
            }
            pending = set(futures)
            error: BaseException | None = None
            try:
                while pending:
                    finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
                    for fut in finished:
                        exc = fut.exception()
                        if exc is not None:
                            if error is None or isinstance(error, _Aborted):
                                error = exc
                            continue
                        results[futures[fut]] = fut.result()
                        done += 1
                        if progress is not None:
                            progress(done, total)
                    if error is not None:
                        break
            except BaseException:  # KeyboardInterrupt: stop the workers before leaving
                abort.set()
                for fut in pending:
                    fut.cancel()
                raise
            if error is not None:
                abort.set()
                for fut in pending:
                    fut.cancel()
        if error is not None:
            raise error
        return results  # type: ignore[return-value]

    # --- log-prob helpers ----------------------------------------------------------------
    def _no_logprobs_message(self) -> str:
        return (
            f"The server at {self.base_url} returned no log-probs for model {self.model!r}; "
            "methods that need them (spex with a closed model, log-prob targets) cannot run "
            "on it. Use a server that supports logprobs/top_logprobs (llama.cpp, vLLM, "
            "OpenAI) or pick a method that needs only generated text (e.g. ropelime, or "
            "gsmile with a text-similarity target)."
        )

    def require_logprobs(self) -> None:
        """Raise CapabilityError unless the server returns top-k log-probs.

        Costs at most one one-token request (cached like any other), once per backend.
        """
        if self._logprobs_supported is None:
            self.chat([{"role": "user", "content": "Hi"}], max_tokens=1, top_logprobs=1)
        if self._logprobs_supported is False:
            raise CapabilityError(self._no_logprobs_message())

    def complete_logprobs(
        self,
        messages: Messages | str,
        *,
        top_logprobs: int = 5,
        seed: int | None = None,
    ) -> dict[str, float]:
        """Top-k log-probs of the first generated token: {token text: log-prob}.

        One greedy one-token completion; CapabilityError if the server returns no log-probs.
        """
        comp = self.chat(
            messages, max_tokens=1, temperature=0.0, top_logprobs=top_logprobs, seed=seed
        )
        if not comp.tokens:
            return {}
        return dict(comp.tokens[0].top)
