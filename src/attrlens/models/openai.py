"""Client of any OpenAI-compatible chat-completions endpoint: the closed-model backend.

It exposes only what a hosted API gives: generated text and, where the server returns
them, the top-k log-probs of the generated tokens. There is no teacher forcing and no
embeddings. Around each call it adds what paid, flaky, rate-limited services need:

- timeouts; retries with exponential backoff and full jitter on 408/409/425/429, 5xx,
  dropped connections and timeouts, honouring ``Retry-After``; permanent errors (other
  4xx, 501, 505, 511) fail at once, with the server's message cut to one line (an HTML
  error page is reduced to its title);
- redirects are followed (credentials are not sent to another host) and named in every
  error, and once in a warning when a call succeeds through one;
- a concurrency limit shared by every thread that uses the backend;
- counters of real calls, cache hits, retries, tokens and (optionally) cost;
- a persistent call cache (``CallCache``): each completed call is stored at once, so an
  interrupted run resumes without repeating paid calls, and a repeated run costs nothing.
  Only answers the client accepts are stored: a malformed answer raises BackendError and
  is asked for again next time.

Secrets never leave the process: the API key is read from an environment variable at each
request and is never stored on the object, printed, logged or made part of a cache key;
credentials in the URL (``http://user:password@host/v1``) are sent as HTTP Basic auth and
kept out of ``base_url``, ``public_url``, ``repr``, the cache and every message; any server
text shown (error bodies, answers) passes through ``attrlens.redact.redact`` with both.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import email.utils
import logging
import math
import os
import random
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import httpx

from ..errors import (
    BackendError,
    CapabilityError,
    InputError,
    ParameterError,
    ServerGoneError,
)
from ..params import check_param
from ..redact import one_line, redact, redact_url, strip_userinfo
from .base import ModelInfo
from .cache import CACHE_FILE_NAME, CallCache, cache_key

Message = dict[str, str]
Messages = Sequence[Message]
_T = TypeVar("_T")

log = logging.getLogger(__name__)

_RETRY_STATUS = {408, 409, 425, 429}  # plus every 5xx but the permanent ones
# 501 Not Implemented, 505 HTTP Version Not Supported, 511 Network Authentication Required
# (a captive portal): asking again cannot help
_PERMANENT_5XX = {501, 505, 511}
_REASON_CHARS = 200
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
    """One line for an HTTP error: ``HTTP <code> <phrase>: <the server's reason>``.

    The reason is the OpenAI-form ``{"error": {"message"}}`` (or ``detail``) of a JSON body,
    the title of an HTML page, or the body's text; HTML tags, control characters and
    newlines removed, cut to about 200 characters. Not redacted here (the caller knows the
    secrets)."""
    code = resp.status_code
    phrase = resp.reason_phrase or ""
    reason = ""
    try:
        body = resp.json()
    except ValueError:
        reason = resp.text
    else:
        if isinstance(body, dict):
            err = body.get("error", body)
            if isinstance(err, dict):
                err = err.get("message") or err.get("detail") or err
            reason = err if isinstance(err, str) else str(err)
        else:
            reason = str(body)
    reason = one_line(reason, _REASON_CHARS)
    head = f"HTTP {code} {phrase}".rstrip()
    if not reason or reason.lower() in (phrase.lower(), f"{code} {phrase}".lower()):
        return head
    return f"{head}: {reason}"


class _RedactingFilter(logging.Filter):
    """Rewrites log records of the HTTP stack without secrets: httpcore logs response
    headers at DEBUG (a Location may carry credentials), httpx logs each URL at INFO."""

    key_envs: ClassVar[set[str]] = set()  # names of API-key variables in use (never their values)

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a broken record is logging's problem, not ours
            return True
        clean = redact(text, [os.environ.get(name) for name in self.key_envs])
        if clean != text:
            record.msg, record.args = clean, None
        return True


_LOG_FILTER = _RedactingFilter()
# logger filters are not inherited: every logger the HTTP stack writes to by name
_HTTP_LOGGERS = (
    "httpx",
    "httpcore.connection",
    "httpcore.connection_pool",
    "httpcore.http11",
    "httpcore.http2",
    "httpcore.proxy",
    "httpcore.socks",
)


def _install_log_redaction(key_env: str | None) -> None:
    if key_env:
        _RedactingFilter.key_envs.add(key_env)
    for name in (*_HTTP_LOGGERS, __name__):
        logger = logging.getLogger(name)
        if _LOG_FILTER not in logger.filters:
            logger.addFilter(_LOG_FILTER)


def _drop_userinfo(request: httpx.Request) -> None:
    """httpx request hook: remove userinfo from the URL (credentials travel only as the
    Authorization header set from ``base_url``), so it is neither sent nor logged."""
    if request.url.userinfo:
        request.url = request.url.copy_with(username=None, password=None)


def _int(value: object) -> int:
    """A token count from a server's ``usage`` (0 when absent or not a number)."""
    try:
        return max(0, int(value))  # type: ignore[call-overload]
    except (TypeError, ValueError, OverflowError):
        return 0


def _usage_tokens(data: Any) -> tuple[int, int]:
    """(prompt tokens, completion tokens) of one answer: its ``usage``, or llama.cpp's
    ``tokens_evaluated``/``tokens_predicted`` (its native ``/completion`` has no usage)."""
    if not isinstance(data, dict):
        return 0, 0
    usage = data.get("usage")
    if isinstance(usage, dict) and ("prompt_tokens" in usage or "completion_tokens" in usage):
        return _int(usage.get("prompt_tokens")), _int(usage.get("completion_tokens"))
    return _int(data.get("tokens_evaluated")), _int(data.get("tokens_predicted"))


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


def server_root(base_url: str) -> str:
    """The root URL of the server behind an API base URL: without a trailing ``/v1``
    (``http://host:8080/v1`` -> ``http://host:8080``); routes at the root are sent there."""
    return base_url.removesuffix("/v1")


class _Hidden:
    """Holds secrets without showing them in ``repr``/``vars`` dumps."""

    __slots__ = ("values",)

    def __init__(self, values: tuple[str, ...]) -> None:
        self.values = values

    def __repr__(self) -> str:
        return "<hidden>"


class OpenAIBackend:
    """A chat model behind an OpenAI-compatible HTTP API (hosted, vLLM, llama.cpp, ...).

    ``base_url``: API root including the version, e.g. ``https://api.openai.com/v1`` or
    ``LlamaServer().base_url``; credentials in it (``http://user:password@host/v1``) are
    sent as HTTP Basic auth and never shown: the attribute ``base_url`` holds the URL
    without them, ``public_url`` the URL with them replaced by ``***`` (record that one).
    ``model``: model name sent with each request.
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
                f"'http://127.0.0.1:8080/v1'. Got {redact_url(str(base_url))!r} instead."
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
        url = base_url.strip().rstrip("/")
        try:
            parsed = httpx.URL(url)
        except (httpx.InvalidURL, ValueError) as exc:
            raise ParameterError(
                f"The 'base_url' parameter of {owner} is not a valid URL "
                f"({type(exc).__name__}): {redact_url(url)!r}. Give one such as "
                "'http://127.0.0.1:8080/v1'."
            ) from None
        # userinfo: sent as Basic auth, kept out of every URL the object shows or stores
        raw_userinfo = url.split("://", 1)[1].split("/", 1)[0].rpartition("@")[0]
        auth = (
            httpx.BasicAuth(parsed.username, parsed.password)
            if parsed.username or parsed.password
            else None
        )
        basic = (
            base64.b64encode(f"{parsed.username}:{parsed.password}".encode()).decode()
            if auth is not None
            else ""
        )
        # what a server could echo: the userinfo as typed, decoded, and as the Basic header
        self._url_secrets = _Hidden(
            tuple(
                x
                for x in (raw_userinfo, parsed.password, basic, basic.rstrip("="))
                if x
            )
        )
        self.base_url = strip_userinfo(url)
        self.public_url = redact_url(url)
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
        _install_log_redaction(api_key_env)
        self._slots = threading.BoundedSemaphore(concurrency)
        # jitter only spreads retries in time; it never affects a result, so no seed
        self._rng = random.Random()
        self._lock = threading.Lock()
        self._check_lock = threading.Lock()
        self._checked = False
        self._warned_redirect = False
        self._logprobs_supported: bool | None = None
        self._client = httpx.Client(
            auth=auth,
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
            # hosted endpoints sit behind proxies users configure; loopback never does
            trust_env=not self._is_loopback_url(),
            # httpx drops the Authorization header when a redirect leaves the origin
            follow_redirects=True,
            max_redirects=5,
            # a redirect's Location may carry userinfo: never send, log or show it
            event_hooks={"request": [_drop_userinfo]},
        )
        self.counters: dict[str, float] = {}
        self.reset_counters()

    def reset_counters(self) -> None:
        """Zero :attr:`counters`. ``cost_usd`` is there only when a price is given: without
        prices the cost is unknown, not zero."""
        with self._lock:
            self.counters.clear()
            self.counters.update(api_calls=0, cached_calls=0, retries=0, prompt_tokens=0,
                                 completion_tokens=0)
            if self._priced:
                self.counters["cost_usd"] = 0.0

    @property
    def _priced(self) -> bool:
        return self.price_prompt_per_1k is not None or self.price_completion_per_1k is not None

    # --- presentation --------------------------------------------------------------------
    def __repr__(self) -> str:
        # the key's variable name only, never its value; the URL without credentials
        return (
            f"OpenAIBackend(base_url={self.public_url!r}, model={self.model!r}, "
            f"api_key_env={self.api_key_env!r}, cache={self.cache!r})"
        )

    @property
    def model_id(self) -> str:
        """Identifier recorded in results' provenance: ``model@public_url``."""
        return f"{self.model}@{self.public_url}"

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

    def _api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        return headers

    def _say(self, message: str) -> str:
        """``message`` safe to show: secrets (API key, URL credentials, anything key-like)
        replaced by ``***``, on one line."""
        text = redact(message, (self._api_key(), *self._url_secrets.values))
        return " ".join(text.split())

    def _redirect_note(self, resp: httpx.Response) -> str:
        """`` (redirected: 301 to https://...)`` when ``resp`` came through a redirect whose
        final URL differs from the one asked for; else ''."""
        if not resp.history or str(resp.url) == str(resp.history[0].request.url):
            return ""
        codes = ", ".join(str(r.status_code) for r in resp.history)
        note = f" (redirected: {codes} to {redact_url(str(resp.url))}"
        if resp.request.method != resp.history[0].request.method:
            note += (
                f"; the redirect turned {resp.history[0].request.method} into "
                f"{resp.request.method}: give the final URL as the base URL"
            )
        return note + ")"

    def _count_call(self, data: Any) -> None:
        """Count one answered HTTP call: ``api_calls``, its tokens (``_usage_tokens``) and,
        with prices, ``cost_usd``."""
        p_tok, c_tok = _usage_tokens(data)
        priced: dict[str, float] = {}
        if self._priced:
            priced["cost_usd"] = (p_tok / 1000.0 * (self.price_prompt_per_1k or 0.0)
                                  + c_tok / 1000.0 * (self.price_completion_per_1k or 0.0))
        self._count(api_calls=1, prompt_tokens=p_tok, completion_tokens=c_tok, **priced)

    def _count(self, **deltas: float) -> None:
        with self._lock:
            for k, v in deltas.items():
                self.counters[k] = self.counters.get(k, 0) + v

    def close(self) -> None:
        """Close HTTP connections (the cache stays usable)."""
        self._client.close()

    def __enter__(self) -> OpenAIBackend:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # a backend dropped without close() closes its pooled connections (an open socket
        # left to the garbage collector is a ResourceWarning, or worse, an fd held open)
        client = self.__dict__.get("_client")
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()

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
        root: bool = False,
        resumable: bool = True,
    ) -> httpx.Response:
        """One logical request with retries; returns a 2xx response or raises.

        Permanent errors (4xx other than 408/409/425/429; 501, 505, 511) -> BackendError at
        once; retryable failures after every retry -> ServerGoneError. ``abort`` (set by a
        failed sibling) stops retrying. Every message is one line, without secrets.
        """
        url = (self.root_url if root else self.base_url) + path
        # errors name the URL the request went to: the server root for root-level routes
        shown = server_root(self.public_url) if root else self.public_url
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
            except httpx.TooManyRedirects as exc:
                raise BackendError(
                    self._say(
                        f"The server at {shown} redirected {method} {path} more than "
                        f"5 times ({exc}). Give the URL the redirects end at as the base URL."
                    )
                ) from None
            except httpx.TimeoutException as exc:
                last = f"no answer within {self.timeout:g} s ({type(exc).__name__})"
            except httpx.TransportError as exc:
                # refused, reset, dropped without a response, DNS failure, ...
                last = f"{type(exc).__name__}: {one_line(str(exc)) or 'connection failed'}"
            else:
                code = resp.status_code
                note = self._redirect_note(resp)
                if code < 300:
                    if note and not self._warned_redirect:
                        self._warned_redirect = True
                        msg = self._say(
                            f"The server at {shown} answered {method} {path}{note}. "
                            "Give the final URL as the base URL to skip the detour."
                        )
                        warnings.warn(msg, UserWarning, stacklevel=4)
                    return resp
                msg = _server_message(resp) + note
                if code < 400:  # a redirect httpx could not follow (no Location, 304, ...)
                    raise BackendError(
                        self._say(
                            f"The server at {shown} answered {method} {path} with "
                            f"a redirect it gives no usable target for ({msg}). Check the URL."
                        )
                    )
                if (code >= 500 and code not in _PERMANENT_5XX) or code in _RETRY_STATUS:
                    last = msg
                    retry_after = _retry_after_seconds(resp.headers.get("retry-after"))
                else:
                    raise BackendError(
                        self._say(self._client_error_message(code, msg, path, shown))
                    )
            if attempt == retries:
                break
            if count_retries:
                self._count(retries=1)
            delay = self._backoff(attempt, retry_after)
            log.debug(
                "%s", self._say(f"{method} {path} failed ({last}); retry in {delay:.2f} s")
            )
            if abort is not None:
                if abort.wait(delay):
                    raise _Aborted()
            else:
                time.sleep(delay)
        elapsed = time.monotonic() - started
        raise ServerGoneError(
            self._say(
                f"The server at {shown} gave no usable answer to {method} {path} in "
                f"{retries + 1} attempt(s) over {elapsed:.1f} s; last error: {last}. Check "
                "that it is running and the URL is right"
                + ("; completed calls are kept in the cache, so a rerun resumes where this "
                   "one stopped." if resumable else ".")
            )
        )

    def _client_error_message(self, code: int, msg: str, path: str,
                              shown: str | None = None) -> str:
        """Message for a permanent HTTP error; ``msg`` is ``HTTP <code> <phrase>: reason``;
        ``shown``: the URL the request went to (default ``public_url``)."""
        where = f"The server at {shown or self.public_url}"
        if code in (401, 403):
            return (
                f"{where} refused the request ({msg}). Put a valid API key in the environment "
                f"variable {self.api_key_env} (or valid credentials in the URL)."
            )
        if code == 404 and path == "/chat/completions":
            return (
                f"{where} has no {path} route or no model {self.model!r} ({msg}). The base "
                "URL must be the API root including the version, e.g. "
                "'http://127.0.0.1:8080/v1', and the model a name the server serves."
            )
        if code in (405, 501):
            return (
                f"{where} does not support the request to {path} ({msg}). Check that the "
                "base URL is the root of an OpenAI-compatible API (e.g. ending in /v1)."
            )
        return f"{where} rejected the request to {path} ({msg})."

    # --- endpoint validation -------------------------------------------------------------
    def served_models(self) -> list[str] | None:
        """Model names listed by ``GET /models``; None when the server has no such route."""
        try:
            resp = self._request(
                "GET", "/models", max_retries=min(self.max_retries, 2), count_retries=False,
                resumable=False,  # the first request: no call has run yet
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
                    self._say(
                        f"The server at {self.public_url} does not serve a model named "
                        f"{self.model!r}; it serves: {shown}.{hint} Pass one of these as the "
                        "model name."
                    )
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

    def _completion(
        self, resp_json: Any, cached: bool, wants_lp: bool, note: str = ""
    ) -> Completion:
        """The Completion of a server answer; BackendError when the answer is malformed
        (not an object, no ``choices``, no text in ``message.content``), CapabilityError
        when log-probs were asked for and are missing. ``note``: redirect note for errors."""
        where = f"The server at {self.public_url}{note}"
        choices = resp_json.get("choices") if isinstance(resp_json, dict) else None
        if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
            raise BackendError(
                self._say(
                    f"{where} answered without 'choices'; it does not look like an "
                    "OpenAI-compatible chat-completions endpoint. Answer: "
                    f"{one_line(str(resp_json), _REASON_CHARS)}"
                )
            )
        choice = choices[0]
        msg = choice.get("message")
        text = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(text, str):
            got = "no 'message'" if not isinstance(msg, dict) else f"content {text!r}"
            raise BackendError(
                self._say(
                    f"{where} answered with no text ({got}, finish_reason "
                    f"{choice.get('finish_reason')!r}) for model {self.model!r}. The answer "
                    "was not cached; retry once the server is fixed, or use another model."
                )
            )
        usage = resp_json.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        tokens = _parse_tokens(choice) if wants_lp else None
        if wants_lp:
            generated = bool(text) or _int(usage.get("completion_tokens")) > 0
            missing = tokens is None or (generated and not tokens) or not all(t.top for t in tokens)
            if missing:
                self._logprobs_supported = False
                raise CapabilityError(self._no_logprobs_message())
            if tokens:
                self._logprobs_supported = True
        return Completion(
            text=text,
            tokens=tokens,
            prompt_tokens=_int(usage.get("prompt_tokens")),
            completion_tokens=_int(usage.get("completion_tokens")),
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
                try:
                    completion = self._completion(hit, cached=True, wants_lp=wants_lp)
                except CapabilityError:
                    raise
                except BackendError:
                    # stored by an older version that cached malformed answers: ask again
                    self.cache.delete(key)  # type: ignore[union-attr]
                else:
                    self._count(cached_calls=1)
                    return completion
        if abort is not None and abort.is_set():
            raise _Aborted()
        self.check()
        resp = self._request("POST", "/chat/completions", json=body, abort=abort)
        note = self._redirect_note(resp)
        try:
            data = resp.json()
        except ValueError as exc:
            raise BackendError(
                self._say(
                    f"The server at {self.public_url}{note} answered /chat/completions with "
                    f"non-JSON text: {one_line(resp.text, _REASON_CHARS)!r}. The answer was "
                    "not cached."
                )
            ) from exc
        self._count_call(data)
        # validated before it is stored: a rejected answer is never replayed from the cache
        completion = self._completion(data, cached=False, wants_lp=wants_lp, note=note)
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
        return self._run_concurrent(
            [lambda abort, b=body: self._chat_body(b, abort) for body in bodies], progress
        )

    def _run_concurrent(
        self,
        calls: Sequence[Callable[[threading.Event], _T]],
        progress: Callable[[int, int], None] | None = None,
    ) -> list[_T]:
        """Run ``calls`` (each given the shared abort event) with at most ``concurrency`` in
        flight; results in input order. Submitted in order, so the first calls start first.
        On the first failure the rest are cancelled and that error is raised."""
        total = len(calls)
        results: list[Any] = [None] * total
        if total == 0:
            return []
        abort = threading.Event()
        done = 0
        with ThreadPoolExecutor(
            max_workers=min(self.concurrency, total), thread_name_prefix="attrlens-api"
        ) as pool:
            futures: dict[Future[_T], int] = {
                pool.submit(call, abort): i for i, call in enumerate(calls)
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
        return results

    # --- raw JSON requests (log-likelihood routes) ------------------------------------------
    @property
    def root_url(self) -> str:
        """The server's root URL: ``base_url`` without a trailing ``/v1`` (where llama.cpp's
        ``/completion`` and ``/tokenize`` and SGLang's ``/generate`` live)."""
        return server_root(self.base_url)

    @property
    def root_public_url(self) -> str:
        """``public_url`` of the server root (credentials replaced by ``***``)."""
        return server_root(self.public_url)

    def post(
        self,
        path: str,
        body: dict[str, Any],
        *,
        root: bool = False,
        validate: Callable[[Any], None] | None = None,
        cache: bool = True,
        abort: threading.Event | None = None,
    ) -> tuple[Any, bool]:
        """One POST of a JSON ``body`` to ``path`` (under ``base_url``, or under ``root_url``
        with ``root=True``), with the same retries, redaction and call cache as ``chat``.

        Returns ``(response JSON, cached)``. ``validate(response)`` raises BackendError (or
        CapabilityError) for an answer the caller cannot use: such an answer is not stored
        (and a stored one that fails is asked for again). Counted in ``counters``
        (``api_calls`` or ``cached_calls``; tokens from ``usage``, or llama.cpp's
        ``tokens_evaluated``/``tokens_predicted``; ``cost_usd`` with prices).
        """
        endpoint = self.root_url if root else self.base_url
        key = None
        if cache and self.cache is not None:
            key = cache_key(endpoint, self.model, {"path": path, "body": body})
            hit = self.cache.get(key)
            if hit is not None:
                try:
                    if validate is not None:
                        validate(hit)
                except CapabilityError:
                    raise
                except BackendError:
                    self.cache.delete(key)
                else:
                    self._count(cached_calls=1)
                    return hit, True
        if abort is not None and abort.is_set():
            raise _Aborted()
        if not root:
            self.check()
        resp = self._request("POST", path, json=body, abort=abort, root=root)
        note = self._redirect_note(resp)
        try:
            data = resp.json()
        except ValueError as exc:
            raise BackendError(
                self._say(
                    f"The server at {self.root_public_url if root else self.public_url}{note} "
                    f"answered {path} with non-JSON "
                    f"text: {one_line(resp.text, _REASON_CHARS)!r}. The answer was not cached."
                )
            ) from exc
        self._count_call(data)
        if validate is not None:
            validate(data)
        if key is not None:
            self.cache.put(  # type: ignore[union-attr]
                key, data, endpoint=endpoint, model=self.model, request={"path": path,
                                                                          "body": body}
            )
        return data, False

    def post_many(
        self,
        path: str,
        bodies: Sequence[dict[str, Any]],
        *,
        root: bool = False,
        validate: Callable[[Any], None] | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> list[tuple[Any, bool]]:
        """Many ``post`` calls, at most ``concurrency`` in flight, sent in the given order
        (callers order them so that shared prompt prefixes meet the server's prompt cache);
        results in input order. On the first failure the rest are cancelled and it is
        raised; completed calls are already cached."""
        return self._run_concurrent(
            [
                lambda abort, b=body: self.post(path, b, root=root, validate=validate,
                                                abort=abort)
                for body in bodies
            ],
            progress,
        )

    # --- log-prob helpers ----------------------------------------------------------------
    def _no_logprobs_message(self) -> str:
        return (
            f"The server at {self.public_url} returned no log-probs for model {self.model!r}; "
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
