"""Tests of the OpenAI-compatible backend.

Unit tests talk to ``fake_openai`` (a small real HTTP server with canned answers and
scripted faults). Integration tests talk to the real llama.cpp server, directly and
through the fault-injecting proxy.
"""

from __future__ import annotations

import base64
import email.utils
import logging
import re
import time
import warnings

import pytest
from server_fixtures import FaultServer, free_port

from attrlens.errors import (
    BackendError,
    CapabilityError,
    InputError,
    ParameterError,
    ServerGoneError,
)
from attrlens.models.cache import CallCache, cache_info, cache_key
from attrlens.models.openai import OpenAIBackend, TokenLogprob, _retry_after_seconds

FAST = {"backoff_base": 0.01, "backoff_max": 0.05, "timeout": 5.0}


def make(server: FaultServer, tmp_path, **kw) -> OpenAIBackend:
    model = kw.pop("model", "fake-model")
    opts = {**FAST, "cache": CallCache(tmp_path / "calls.sqlite"), **kw}
    return OpenAIBackend(server.base_url, model, **opts)


# --- basics ---------------------------------------------------------------------------
def test_chat_returns_text_usage_and_counts(fake_openai, tmp_path):
    be = make(fake_openai, tmp_path, price_prompt_per_1k=2.0, price_completion_per_1k=10.0)
    comp = be.chat([{"role": "user", "content": "one two three"}], max_tokens=8)
    assert comp.text == "echo: one two three"
    assert comp.tokens is None  # no log-probs asked
    assert (comp.prompt_tokens, comp.completion_tokens) == (3, 4)
    assert comp.finish_reason == "stop" and comp.cached is False
    assert be.counters["api_calls"] == 1
    assert be.counters["prompt_tokens"] == 3 and be.counters["completion_tokens"] == 4
    assert be.counters["cost_usd"] == pytest.approx(3 / 1000 * 2.0 + 4 / 1000 * 10.0, abs=1e-12)
    be.reset_counters()  # documented in docs/closed_models.md
    assert be.counters == {"api_calls": 0, "cached_calls": 0, "retries": 0,
                           "prompt_tokens": 0, "completion_tokens": 0, "cost_usd": 0.0}
    # one price is a price: the other side costs nothing
    half = make(fake_openai, tmp_path, price_completion_per_1k=10.0, cache=False)
    half.chat("x y z", max_tokens=8)
    assert half.counters["cost_usd"] == pytest.approx(4 / 1000 * 10.0, abs=1e-12)


def test_root_route_answers_count_llama_cpp_token_fields(tmp_path):
    """llama.cpp's /completion answers carry tokens_evaluated/tokens_predicted, no usage:
    they are the call's prompt and completion tokens (and priced)."""
    import httpx

    def answer(request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/completion"
        return httpx.Response(200, json={"content": " Paris", "tokens_evaluated": 7,
                                         "tokens_predicted": 2})

    be = OpenAIBackend("http://127.0.0.1:9/v1", "m", cache=False, max_retries=0,
                       price_prompt_per_1k=1.0, price_completion_per_1k=3.0)
    be._client = httpx.Client(transport=httpx.MockTransport(answer))
    be.post("/completion", {"prompt": "x"}, root=True)
    be.post("/completion", {"prompt": "y"}, root=True)
    assert be.counters["api_calls"] == 2
    assert be.counters["prompt_tokens"] == 14 and be.counters["completion_tokens"] == 4
    assert be.counters["cost_usd"] == pytest.approx((14 * 1.0 + 4 * 3.0) / 1000, abs=1e-12)


def test_without_prices_the_cost_is_unknown_not_zero(fake_openai, tmp_path):
    be = make(fake_openai, tmp_path, cache=False)
    be.chat("one two", max_tokens=8)
    assert be.counters["api_calls"] == 1 and "cost_usd" not in be.counters
    be.reset_counters()
    assert be.counters["api_calls"] == 0 and "cost_usd" not in be.counters


def test_string_prompt_is_one_user_message(fake_openai, tmp_path):
    assert make(fake_openai, tmp_path).chat("a b").text == "echo: a b"


def test_capabilities_and_provenance(fake_openai, tmp_path):
    from attrlens.models.base import require

    be = make(fake_openai, tmp_path)
    assert be.capabilities == {"generate", "top_logprobs"}
    assert be.info.id == f"fake-model@{fake_openai.base_url}" and be.info.sha256 is None
    with pytest.raises(CapabilityError, match="score"):
        require(be, "score", method="lime")


def test_top_logprobs_are_parsed(fake_openai, tmp_path):
    be = make(fake_openai, tmp_path)
    comp = be.chat("red green", top_logprobs=3)
    assert comp.tokens is not None and len(comp.tokens) == 3
    first = comp.tokens[0]
    assert isinstance(first, TokenLogprob)
    assert first.token == "echo:" and first.logprob == pytest.approx(-0.1, abs=1e-12)
    assert first.top == pytest.approx({"echo:": -0.1, "alt0": -1.0, "alt1": -2.0}, abs=1e-12)
    assert "top_logprobs" in be.capabilities
    top = be.complete_logprobs("x y", top_logprobs=2)
    assert top == pytest.approx({"echo:": -0.1, "alt0": -1.0}, abs=1e-12)


def test_repeated_request_is_served_from_cache(fake_openai, tmp_path):
    be = make(fake_openai, tmp_path)
    first = be.chat("same prompt", seed=3)
    again = be.chat("same prompt", seed=3)
    assert again.cached is True and again.text == first.text
    assert fake_openai.n_chat == 1
    assert be.counters["api_calls"] == 1 and be.counters["cached_calls"] == 1
    # a second backend on the same cache file (a later run) pays nothing either
    be2 = make(fake_openai, tmp_path)
    assert be2.chat("same prompt", seed=3).cached is True
    assert be2.counters["api_calls"] == 0 and fake_openai.n_chat == 1
    # a different request is a different call
    be2.chat("same prompt", seed=4)
    assert fake_openai.n_chat == 2


def test_a_dropped_backend_closes_its_connections(fake_openai, tmp_path):
    import gc

    be = make(fake_openai, tmp_path, cache=False)
    be.chat("p")
    client = be._client
    assert not client.is_closed
    del be
    gc.collect()
    assert client.is_closed


def test_no_cache_makes_every_call(fake_openai, tmp_path):
    be = make(fake_openai, tmp_path, cache=False)
    assert be.cache is None
    be.chat("p")
    be.chat("p")
    assert fake_openai.n_chat == 2 and be.counters["api_calls"] == 2


def test_sampling_without_seed_is_not_cached(fake_openai, tmp_path):
    be = make(fake_openai, tmp_path)
    be.chat("p", temperature=0.7)
    be.chat("p", temperature=0.7)
    assert fake_openai.n_chat == 2
    be.chat("p", temperature=0.7, seed=1)
    be.chat("p", temperature=0.7, seed=1)
    assert fake_openai.n_chat == 3


def test_cache_dir_argument(fake_openai, tmp_path):
    be = OpenAIBackend(fake_openai.base_url, "fake-model", cache_dir=tmp_path / "cd")
    be.chat("p")
    assert (tmp_path / "cd" / "calls.sqlite").is_file()


# --- retries --------------------------------------------------------------------------
def test_retries_through_every_kind_of_fault(fake_openai, tmp_path):
    fake_openai.script = [
        ("status", 429, 0),
        ("status", 500, None),
        "drop",
        ("status", 503, None),
        "drop_after",
        ("status", 502, None),
    ]
    be = make(fake_openai, tmp_path)
    comp = be.chat("hello there")
    assert comp.text == "echo: hello there"
    assert fake_openai.n_chat == 7
    assert be.counters["retries"] == 6 and be.counters["api_calls"] == 1


def test_retry_after_is_honoured(fake_openai, tmp_path):
    fake_openai.script = [("status", 429, "0.4")]
    be = make(fake_openai, tmp_path, backoff_base=0.0, backoff_max=5.0)
    t0 = time.monotonic()
    be.chat("p")
    assert time.monotonic() - t0 >= 0.4
    assert be.counters["retries"] == 1


def test_retry_after_is_capped_by_backoff_max(fake_openai, tmp_path):
    fake_openai.script = [("status", 429, "30")]
    be = make(fake_openai, tmp_path, backoff_base=0.0, backoff_max=0.1)
    t0 = time.monotonic()
    be.chat("p")
    assert time.monotonic() - t0 < 5.0


def test_timeout_is_retried(fake_openai, tmp_path):
    fake_openai.script = [("delay", 1.0)]
    be = make(fake_openai, tmp_path, timeout=0.5)
    t0 = time.monotonic()
    assert be.chat("slow one").text == "echo: slow one"
    assert time.monotonic() - t0 < 1.0  # did not wait for the slow answer
    assert be.counters["retries"] >= 1 and fake_openai.n_chat == be.counters["retries"] + 1


def test_gives_up_with_one_clear_error(fake_openai, tmp_path):
    fake_openai.script = [("status", 500, None)] * 10
    be = make(fake_openai, tmp_path, max_retries=3)
    with pytest.raises(ServerGoneError) as info:
        be.chat("p")
    msg = str(info.value)
    assert fake_openai.base_url in msg and "HTTP 500" in msg and "4 attempt" in msg
    assert "\n" not in msg
    assert fake_openai.n_chat == 4 and be.counters["api_calls"] == 0


def test_client_errors_are_not_retried(fake_openai, tmp_path):
    fake_openai.script = [("status", 400, None)]
    be = make(fake_openai, tmp_path)
    with pytest.raises(BackendError, match="injected HTTP 400") as info:
        be.chat("p")
    assert not isinstance(info.value, ServerGoneError)
    assert fake_openai.n_chat == 1


def test_backoff_is_full_jitter_within_cap(fake_openai, tmp_path):
    be = make(fake_openai, tmp_path, backoff_base=0.5, backoff_max=3.0)
    for attempt, cap in [(0, 0.5), (1, 1.0), (2, 2.0), (5, 3.0)]:
        delays = [be._backoff(attempt, None) for _ in range(200)]
        assert min(delays) >= 0.0 and max(delays) <= cap
        assert max(delays) > 0.5 * cap  # spread over the range, not a constant
    assert be._backoff(4, 1.25) == pytest.approx(1.25, abs=1e-12)


def test_retry_after_parsing():
    assert _retry_after_seconds("2") == pytest.approx(2.0, abs=1e-12)
    assert _retry_after_seconds("0.5") == pytest.approx(0.5, abs=1e-12)
    future = email.utils.formatdate(time.time() + 10, usegmt=True)
    assert _retry_after_seconds(future) == pytest.approx(10.0, abs=1.5)
    assert _retry_after_seconds("soon") is None
    assert _retry_after_seconds(None) is None
    assert _retry_after_seconds("-3") == pytest.approx(0.0, abs=1e-12)


# --- concurrency ----------------------------------------------------------------------
def test_chat_many_keeps_order_limits_concurrency_and_reports_progress(fake_openai, tmp_path):
    fake_openai.script = [("delay", 0.05)] * 12
    be = make(fake_openai, tmp_path, concurrency=3)
    prompts = [f"prompt {i}" for i in range(12)]
    seen: list[tuple[int, int]] = []
    out = be.chat_many(prompts, progress=lambda d, t: seen.append((d, t)))
    assert [c.text for c in out] == [f"echo: prompt {i}" for i in range(12)]
    assert seen == [(i, 12) for i in range(1, 13)]
    assert 2 <= fake_openai.max_in_flight <= 3
    assert be.counters["api_calls"] == 12


def test_chat_many_failure_keeps_completed_calls_and_resumes(fake_openai, tmp_path):
    prompts = [f"item {i}" for i in range(8)]
    fake_openai.script = ["ok", "ok", "ok", "die"]
    be = make(fake_openai, tmp_path, concurrency=1, max_retries=2)
    with pytest.raises(ServerGoneError, match=fake_openai.base_url):
        be.chat_many(prompts)
    done = fake_openai.n_answered
    assert done == 3 and len(be.cache) == 3
    fake_openai.start()  # back on the same port
    be2 = make(fake_openai, tmp_path, concurrency=2)
    out = be2.chat_many(prompts)
    assert [c.text for c in out] == [f"echo: item {i}" for i in range(8)]
    assert be2.counters["api_calls"] == 8 - done
    assert be2.counters["cached_calls"] == done
    assert [c.cached for c in out[:3]] == [True] * 3


# --- bad input ------------------------------------------------------------------------
def test_unreachable_url_names_the_url(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    be = OpenAIBackend(url, "m", cache=False, max_retries=1, backoff_base=0.01)
    with pytest.raises(ServerGoneError, match=r"127\.0\.0\.1") as info:
        be.check()
    assert "ConnectError" in str(info.value)
    with pytest.raises(ServerGoneError, match=url):
        be.chat("p")


def test_wrong_model_name_lists_served_models(fake_openai, tmp_path):
    be = make(fake_openai, tmp_path, model="gpt-nonexistent")
    with pytest.raises(BackendError, match="gpt-nonexistent.*fake-model"):
        be.chat("p")
    assert fake_openai.n_chat == 0  # refused before any paid call
    typo = make(fake_openai, tmp_path, model="fake-modle")
    with pytest.raises(BackendError, match="Did you mean 'fake-model'"):
        typo.check()


def test_server_without_models_route_is_accepted(tmp_path):
    server = FaultServer(None, models=None).start()
    try:
        be = make(server, tmp_path, model="anything")
        be.check()
        assert be.chat("q").text == "echo: q"
    finally:
        server.close()


def test_server_without_logprobs_is_a_capability_error(tmp_path):
    server = FaultServer(None, models=["fake-model"], strip_logprobs=True).start()
    try:
        be = make(server, tmp_path)
        assert be.chat("fine without").text == "echo: fine without"
        with pytest.raises(CapabilityError) as info:
            be.chat("needs them", top_logprobs=5)
        msg = str(info.value)
        assert server.base_url in msg and "fake-model" in msg and "log-probs" in msg
        assert "top_logprobs" not in be.capabilities
        with pytest.raises(CapabilityError):
            be.require_logprobs()
    finally:
        server.close()


def test_bad_parameters_and_messages(fake_openai, tmp_path):
    with pytest.raises(ParameterError, match="base_url"):
        OpenAIBackend("ftp://x", "m")
    with pytest.raises(ParameterError, match="concurrency"):
        OpenAIBackend("http://127.0.0.1:1/v1", "m", concurrency=0)
    with pytest.raises(ParameterError, match="cache"):
        OpenAIBackend("http://127.0.0.1:1/v1", "m", cache="yes")
    be = make(fake_openai, tmp_path)
    with pytest.raises(ParameterError, match="max_tokens"):
        be.chat("p", max_tokens=0)
    with pytest.raises(InputError, match="role"):
        be.chat([{"content": "no role"}])
    with pytest.raises(InputError, match="non-empty"):
        be.chat([])
    assert fake_openai.n_chat == 0


def test_api_key_is_sent_but_never_shown_or_stored(fake_openai, tmp_path, monkeypatch):
    secret = "sk-test-SECRET-123456"
    monkeypatch.setenv("ATTRLENS_TEST_KEY", secret)
    be = make(fake_openai, tmp_path, api_key_env="ATTRLENS_TEST_KEY")
    be.chat("p")
    assert fake_openai.auth_headers == [f"Bearer {secret}"]
    assert secret not in repr(be) and "ATTRLENS_TEST_KEY" in repr(be)
    assert secret not in str(vars(be))
    be.cache.close()
    for f in tmp_path.iterdir():
        assert secret.encode() not in f.read_bytes()


def test_unauthorized_names_the_variable(fake_openai, tmp_path):
    fake_openai.script = [("status", 401, None)]
    be = make(fake_openai, tmp_path, api_key_env="MY_KEY_VAR")
    with pytest.raises(BackendError, match="MY_KEY_VAR"):
        be.chat("p")


# --- error pages, permanent errors, redirects --------------------------------------------
_TAG = re.compile(r"</?[A-Za-z][^>]*>")


def _one_line(msg: str) -> None:
    assert "\n" not in msg and "\r" not in msg, msg
    assert not _TAG.search(msg), msg
    assert len(msg) < 600, msg


@pytest.mark.parametrize(
    ("code", "phrase"),
    [
        (400, "Bad Request"),
        (401, "Unauthorized"),
        (403, "Forbidden"),
        (404, "Not Found"),
        (405, "Method Not Allowed"),
        (501, "Not Implemented"),
    ],
)
def test_permanent_errors_are_one_line_and_not_retried(fake_openai, tmp_path, code, phrase):
    fake_openai.script = [("html", code)] * 10
    be = make(fake_openai, tmp_path, max_retries=6, backoff_base=1.0, backoff_max=5.0)
    t0 = time.monotonic()
    with pytest.raises(BackendError) as info:
        be.chat("p")
    assert time.monotonic() - t0 < 2.0  # one request, no back-off sleeps
    assert not isinstance(info.value, ServerGoneError)
    assert fake_openai.n_chat == 1 and be.counters["retries"] == 0
    msg = str(info.value)
    _one_line(msg)
    assert f"HTTP {code} {phrase}" in msg and "nginx" not in msg
    assert len(be.cache) == 0


def test_html_5xx_pages_are_retried_then_reported_on_one_line(fake_openai, tmp_path):
    fake_openai.script = [("html", 502), ("html", 503)]
    be = make(fake_openai, tmp_path)
    assert be.chat("p").text == "echo: p"
    assert be.counters["retries"] == 2 and fake_openai.n_chat == 3
    fake_openai.script = [("html", 500)] * 5
    with pytest.raises(ServerGoneError) as info:
        make(fake_openai, tmp_path, max_retries=2).chat("q")
    msg = str(info.value)
    _one_line(msg)
    # the page's title repeats the status line: said once
    assert "HTTP 500 Internal Server Error: 500 Internal Server Error" not in msg
    assert "HTTP 500 Internal Server Error" in msg and "3 attempt" in msg


def test_redirect_is_followed_and_named(fake_openai, tmp_path, monkeypatch):
    monkeypatch.setenv("ATTRLENS_TEST_KEY", "sk-redirect-SECRET-1234")
    other = FaultServer(None, models=["fake-model"]).start()
    try:
        target = other.base_url + "/chat/completions"
        fake_openai.script = [("redirect", 307, target)]
        be = make(fake_openai, tmp_path, api_key_env="ATTRLENS_TEST_KEY")
        with pytest.warns(UserWarning, match=r"redirected: 307 to http://127\.0\.0\.1:\d+/v1"):
            assert be.chat("moved").text == "echo: moved"
        assert fake_openai.n_chat == 1 and other.n_chat == 1
        # the key went to the endpoint asked for, not to the other origin
        assert fake_openai.auth_headers == ["Bearer sk-redirect-SECRET-1234"]
        assert other.auth_headers == [None]
        # 301 turns the POST into a GET, which the target refuses: one line, not retried
        fake_openai.script = [("redirect", 301, target)]
        with pytest.raises(BackendError) as info:
            be.chat("moved again")
        msg = str(info.value)
        _one_line(msg)
        assert "HTTP 405" in msg and f"redirected: 301 to {target}" in msg
        assert "POST into GET" in msg
        assert other.requests[-1] == ("GET", "/v1/chat/completions")
        assert fake_openai.n_chat == 2 and len(be.cache) == 1
    finally:
        other.close()


# --- answers the client rejects are never cached -------------------------------------------
@pytest.mark.parametrize("fault", ["null_content", "not_json"])
def test_rejected_answer_is_not_cached_and_retried_later(fake_openai, tmp_path, fault):
    fake_openai.script = [fault]
    be = make(fake_openai, tmp_path)
    with pytest.raises(BackendError) as info:
        be.chat("fine later", seed=1)
    _one_line(str(info.value))
    assert ("no text" if fault == "null_content" else "non-JSON") in str(info.value)
    assert len(be.cache) == 0
    # the server is fixed: the same request now reaches it and its answer is kept
    good = be.chat("fine later", seed=1)
    assert good.text == "echo: fine later" and good.cached is False
    assert fake_openai.n_chat == 2 and len(be.cache) == 1
    assert make(fake_openai, tmp_path).chat("fine later", seed=1).cached is True
    assert fake_openai.n_chat == 2


def test_malformed_row_of_an_older_version_is_asked_again(fake_openai, tmp_path):
    be = make(fake_openai, tmp_path)
    body = be.build_request("poisoned")
    key = cache_key(be.base_url, be.model, body)
    be.cache.put(key, {"choices": [{"message": {"content": None}}]})
    comp = be.chat("poisoned")
    assert comp.text == "echo: poisoned" and comp.cached is False
    assert fake_openai.n_chat == 1 and be.cache.get(key)["choices"][0]["message"]["content"]


# --- secrets ----------------------------------------------------------------------------
def test_key_echoing_401_is_redacted(fake_openai, tmp_path, monkeypatch):
    secret = "sk-live-SECRET-0a1b2c3d4e"
    monkeypatch.setenv("ATTRLENS_TEST_KEY", secret)
    fake_openai.script = ["echo_key"]
    be = make(fake_openai, tmp_path, api_key_env="ATTRLENS_TEST_KEY")
    with pytest.raises(BackendError) as info:
        be.chat("p")
    msg = str(info.value)
    _one_line(msg)
    assert fake_openai.auth_headers == [f"Bearer {secret}"]  # the server did echo it
    assert secret not in msg and "SECRET-0a1b" not in msg
    assert "Incorrect API key provided: ***" in msg and "ATTRLENS_TEST_KEY" in msg
    assert fake_openai.n_chat == 1


def test_planted_secrets_reach_no_artifact(fake_openai, tmp_path, monkeypatch, caplog):
    """Credentials in the URL and an API key: sent where they belong, found nowhere else
    (errors, warnings, logs, repr, attributes, provenance, the cache file and its info)."""
    password, key = "pw-SECRET-9f8e7d", "sk-SECRET-key-5566778899"
    monkeypatch.setenv("ATTRLENS_TEST_KEY", key)
    caplog.set_level(logging.DEBUG)  # httpx, httpcore and attrlens, everything
    port = fake_openai.port
    url = f"http://alice:{password}@127.0.0.1:{port}/v1"
    cache_dir = tmp_path / "cache"
    be = OpenAIBackend(
        url, "fake-model", api_key_env="ATTRLENS_TEST_KEY", cache_dir=cache_dir,
        max_retries=1, **FAST,
    )
    assert be.base_url == f"http://127.0.0.1:{port}/v1"
    assert be.public_url == f"http://***@127.0.0.1:{port}/v1"
    basic = base64.b64encode(f"alice:{password}".encode()).decode()
    fake_openai.script = [
        "echo_key",
        ("html", 500), ("html", 500),
        "null_content",
        ("redirect", 307, f"http://alice:{password}@127.0.0.1:{port}/v2/chat/completions"),
        "ok",
        ("status", 400, None),
    ]
    shown: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for prompt in ("one", "two", "three", "four", "five"):
            try:
                be.chat(prompt)
            except BackendError as exc:
                shown.append(str(exc))
    assert len(shown) == 4 and len(be.cache) == 1  # 401, gone, null content, 400
    redirects = [str(w.message) for w in caught if issubclass(w.category, UserWarning)]
    assert len(redirects) == 1 and "redirected: 307" in redirects[0]
    shown += redirects
    assert fake_openai.auth_headers[0] == f"Basic {basic}"  # the credentials were used
    be.cache.close()
    be.close()
    texts = [
        *shown,
        *(str(w.message) for w in caught),
        caplog.text,
        repr(be),
        str(vars(be)),
        be.model_id,
        str(be.info),
        str(cache_info(cache_dir)),
    ]
    for forbidden in (password, key, basic):
        for text in texts:
            assert forbidden not in text, text
        for f in cache_dir.iterdir():
            assert forbidden.encode() not in f.read_bytes(), f.name
    for msg in shown:
        _one_line(msg)


# --- the real llama.cpp server ----------------------------------------------------------
PROMPTS = [
    "What is the capital of France?",
    "Name three colours.",
    "What is 2+2?",
    "Who wrote Hamlet?",
    "Describe a cat.",
    "What is water made of?",
]


def _msgs(p: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": p}]


@pytest.fixture(scope="module")
def reference_texts(llama_server):
    """Greedy answers of the real server to PROMPTS, no proxy, no cache."""
    be = OpenAIBackend(llama_server.base_url, llama_server.model_name, cache=False)
    return [c.text for c in be.chat_many([_msgs(p) for p in PROMPTS], max_tokens=8, seed=0)]


@pytest.mark.integration
def test_real_server_chat_and_logprobs(llama_server, tmp_path):
    be = OpenAIBackend(
        llama_server.base_url, llama_server.model_name, cache=CallCache(tmp_path / "c.sqlite")
    )
    be.check()
    comp = be.chat(_msgs("Say hello."), max_tokens=6, top_logprobs=4, seed=0)
    assert comp.text.strip() != ""
    assert comp.prompt_tokens > 5 and comp.completion_tokens == len(comp.tokens) > 0
    assert comp.finish_reason in ("stop", "length")
    for tok in comp.tokens:
        assert len(tok.top) >= 2 and all(v <= 1e-6 for v in tok.top.values())
        best = max(tok.top.values())
        # greedy decoding: the generated token is the most likely one
        assert tok.logprob == pytest.approx(best, abs=1e-5)
    assert "".join(t.token for t in comp.tokens) == comp.text
    top = be.complete_logprobs(_msgs("Say hello."), top_logprobs=4, seed=0)
    assert list(top) == list(comp.tokens[0].top)
    assert be.counters["api_calls"] == 2


@pytest.mark.integration
def test_real_server_repeat_is_free(llama_server, tmp_path, reference_texts):
    be = OpenAIBackend(
        llama_server.base_url, llama_server.model_name, cache=CallCache(tmp_path / "c.sqlite")
    )
    first = be.chat_many([_msgs(p) for p in PROMPTS[:3]], max_tokens=8, seed=0)
    assert [c.text for c in first] == reference_texts[:3]
    calls = be.counters["api_calls"]
    again = be.chat_many([_msgs(p) for p in PROMPTS[:3]], max_tokens=8, seed=0)
    assert be.counters["api_calls"] == calls == 3
    assert [c.text for c in again] == reference_texts[:3] and all(c.cached for c in again)


@pytest.mark.integration
def test_real_server_through_faults_gives_same_texts(fault_proxy, tmp_path, reference_texts):
    fault_proxy.script = [
        ("status", 429, 0),
        ("status", 500, None),
        ("delay", 0.2),
        "drop",
        "drop_after",
        ("status", 503, "0"),
        "ok",
        "drop",
    ]
    be = OpenAIBackend(
        fault_proxy.base_url,
        "smollm2",
        cache=CallCache(tmp_path / "c.sqlite"),
        concurrency=3,
        backoff_base=0.02,
        backoff_max=0.1,
    )
    out = be.chat_many([_msgs(p) for p in PROMPTS], max_tokens=8, seed=0)
    assert [c.text for c in out] == reference_texts
    assert be.counters["retries"] >= 6
    assert be.counters["api_calls"] == len(PROMPTS) == len(be.cache)


@pytest.mark.integration
def test_real_server_killed_mid_run_then_resumed(fault_proxy, tmp_path, reference_texts):
    fault_proxy.script = ["ok", "ok", "die"]
    cache = CallCache(tmp_path / "c.sqlite")
    be = OpenAIBackend(
        fault_proxy.base_url,
        "smollm2",
        cache=cache,
        concurrency=1,
        max_retries=2,
        backoff_base=0.02,
    )
    with pytest.raises(ServerGoneError, match=fault_proxy.base_url):
        be.chat_many([_msgs(p) for p in PROMPTS], max_tokens=8, seed=0)
    done = fault_proxy.n_answered
    assert done == 2 and len(cache) == 2
    fault_proxy.start()  # the server is back, same address
    be2 = OpenAIBackend(fault_proxy.base_url, "smollm2", cache=cache, concurrency=2)
    out = be2.chat_many([_msgs(p) for p in PROMPTS], max_tokens=8, seed=0)
    assert [c.text for c in out] == reference_texts
    assert be2.counters["api_calls"] == len(PROMPTS) - done
    assert fault_proxy.n_answered == len(PROMPTS)


@pytest.mark.integration
def test_real_server_wrong_model_name(llama_server):
    be = OpenAIBackend(llama_server.base_url, "gpt-4o", cache=False)
    with pytest.raises(BackendError, match="'gpt-4o'.*smollm2"):
        be.chat("hi", max_tokens=2)


@pytest.mark.integration
def test_real_server_without_logprobs(fault_proxy, tmp_path):
    fault_proxy.strip_logprobs = True
    be = OpenAIBackend(fault_proxy.base_url, "smollm2", cache=False)
    with pytest.raises(CapabilityError, match="returned no log-probs for model 'smollm2'"):
        be.complete_logprobs(_msgs("Hi"), top_logprobs=3)


@pytest.mark.integration
def test_real_server_behind_a_broken_proxy(fault_proxy, tmp_path, reference_texts):
    """A 501 page is reported on one line without retries; a null answer is rejected and
    not cached; once the proxy behaves, the real answer is returned and cached."""
    fault_proxy.script = [("html", 501), "null_content"]
    cache = CallCache(tmp_path / "c.sqlite")
    opts = {**FAST, "timeout": 60.0}  # the real server on a busy machine
    be = OpenAIBackend(fault_proxy.base_url, "smollm2", cache=cache, max_retries=6, **opts)
    with pytest.raises(BackendError) as info:
        be.chat(_msgs(PROMPTS[0]), max_tokens=8, seed=0)
    _one_line(str(info.value))
    assert "HTTP 501 Not Implemented" in str(info.value) and fault_proxy.n_chat == 1
    with pytest.raises(BackendError, match="no text"):
        be.chat(_msgs(PROMPTS[0]), max_tokens=8, seed=0)
    assert len(cache) == 0
    comp = be.chat(_msgs(PROMPTS[0]), max_tokens=8, seed=0)
    assert comp.text == reference_texts[0] and len(cache) == 1
    assert be.chat(_msgs(PROMPTS[0]), max_tokens=8, seed=0).cached is True
    assert fault_proxy.n_chat == 3


def test_errors_name_the_url_the_request_went_to_and_promise_nothing_before_a_call():
    """An unreachable server at the model-name check: nothing ran, so nothing is said to be
    kept for a rerun. A root-level route's error names the root URL, not the /v1 one."""
    import httpx

    gone = OpenAIBackend("http://127.0.0.1:9/v1", "m", cache=False, max_retries=0)
    with pytest.raises(ServerGoneError) as info:
        gone.check()
    assert "127.0.0.1:9/v1" in str(info.value) and "rerun" not in str(info.value)

    be = OpenAIBackend("http://127.0.0.1:9/v1", "m", cache=False, max_retries=0)
    be._client = httpx.Client(transport=httpx.MockTransport(
        lambda request: httpx.Response(404, json={"error": {"message": "File Not Found"}})))
    with pytest.raises(BackendError) as info:
        be.post("/generate", {"text": "x"}, root=True)
    msg = str(info.value)
    assert "http://127.0.0.1:9 " in msg and "/v1" not in msg and "/generate" in msg
