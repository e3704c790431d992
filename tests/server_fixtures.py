"""Pytest fixtures and helpers for the closed-model path.

- ``llama_server`` (session): the real llama.cpp server (xllamacpp) on a free loopback
  port, serving the embedded SmolLM2 GGUF with its chat template.
- ``fault_proxy`` (function): a real HTTP proxy on loopback in front of ``llama_server``
  that injects scripted faults (429 with Retry-After, 5xx, HTML error pages, redirects,
  ``content: null`` and non-JSON 200s, key-echoing 401s, delays, dropped connections,
  sudden death, stripped log-probs).
- ``fake_openai`` (function): a tiny OpenAI-compatible server answering canned, deterministic
  completions with the same fault script, for fast unit tests of retry logic.

Registered for every test from ``tests/conftest.py`` with ``from server_fixtures import *``.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

__all__ = [
    "Fault",
    "FaultServer",
    "fake_completion",
    "fake_openai",
    "fault_proxy",
    "free_port",
    "llama_server",
]

# one scripted action per chat-completions request; tuples carry an argument:
#   "ok"                      answer normally
#   ("status", code, retry_after_or_None)   answer with an HTTP error (429, 500, 503, 400, ...)
#   ("html", code)            an HTTP error whose body is a multi-line nginx-style HTML page
#   ("redirect", code, location)   a redirect (301, 302, 307, 308) to ``location``
#   "null_content"            a 200 whose message has ``content: null``
#   "not_json"                a 200 whose body is an HTML page, not JSON
#   "echo_key"                a 401 whose message repeats the Authorization header it got
#   ("delay", seconds)        wait, then answer normally (the client may time out first)
#   "drop"                    close the connection without any response
#   "drop_after"              do the work upstream, then close without a response
#   "die"                     drop this connection and stop the whole server (port closed)
Fault = Any


def html_error_page(code: int, phrase: str) -> bytes:
    """An nginx-style error page (several lines of HTML)."""
    return (
        f"<html>\r\n<head><title>{code} {phrase}</title></head>\r\n<body>\r\n"
        f"<center><h1>{code} {phrase}</h1></center>\r\n<hr><center>nginx/1.24.0</center>\r\n"
        "</body>\r\n</html>\r\n"
    ).encode()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fake_completion(body: dict[str, Any]) -> dict[str, Any]:
    """A deterministic OpenAI chat completion for a request: echoes the last message.

    Top-k log-probs are made up but well formed (sorted, generated token first).
    """
    content = str(body["messages"][-1]["content"])
    words = (["echo:"] + content.split())[: int(body.get("max_tokens", 16))]
    text = " ".join(words)
    choice: dict[str, Any] = {
        "index": 0,
        "message": {"role": "assistant", "content": text},
        "finish_reason": "stop",
    }
    k = int(body.get("top_logprobs") or 0) if body.get("logprobs") else 0
    if k:
        toks = []
        for i, w in enumerate(words):
            tok = w if i == 0 else " " + w
            top = [{"token": tok, "logprob": -0.1}]
            top += [{"token": f"alt{j}", "logprob": -1.0 - j} for j in range(k - 1)]
            toks.append({"token": tok, "logprob": -0.1, "top_logprobs": top})
        choice["logprobs"] = {"content": toks}
    return {
        "id": "fake",
        "object": "chat.completion",
        "model": body.get("model"),
        "choices": [choice],
        "usage": {
            "prompt_tokens": sum(len(str(m["content"]).split()) for m in body["messages"]),
            "completion_tokens": len(words),
        },
    }


class FaultServer:
    """A loopback HTTP server that forwards to ``upstream`` (or fakes an OpenAI API) and
    applies one scripted fault per ``POST .../chat/completions``.

    ``upstream``: root URL of a real server (e.g. ``llama_server.url``); None = answer
    itself with ``fake_completion``. ``models``: names ``GET /v1/models`` lists in fake mode
    (None = no /models route, 404). ``strip_logprobs``: remove ``logprobs`` from every
    answer (a server without log-prob support). ``script``: list of faults used in order;
    when it runs out every request is answered normally.

    Counters: ``n_chat`` (chat requests received), ``n_answered`` (answered with 200),
    ``max_in_flight`` (most chat requests handled at once), ``auth_headers`` (the
    Authorization headers seen), ``requests`` (every (method, path) received).
    """

    def __init__(
        self,
        upstream: str | None = None,
        *,
        port: int = 0,
        script: list[Fault] | None = None,
        strip_logprobs: bool = False,
        models: list[str] | None = None,
    ) -> None:
        self.upstream = upstream.rstrip("/") if upstream else None
        self.port = port
        self.script: list[Fault] = list(script or [])
        self.strip_logprobs = strip_logprobs
        self.models = models
        self.n_chat = 0
        self.n_answered = 0
        self.max_in_flight = 0
        self.auth_headers: list[str | None] = []
        self.requests: list[tuple[str, str]] = []
        self._in_flight = 0
        self._lock = threading.Lock()
        self._dead = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopper: threading.Thread | None = None  # a "die" fault's stop, in flight
        self._client = httpx.Client(timeout=120.0, trust_env=False)

    # --- life cycle ----------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return self.url + "/v1"

    def start(self) -> FaultServer:
        """Listen (again) on ``port`` (the same port after a restart)."""
        stopper, self._stopper = self._stopper, None
        if stopper is not None:  # a "die" fault is still closing the old socket
            stopper.join()
        self.stop()
        self._dead.clear()
        httpd = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler_class())
        httpd.daemon_threads = True  # stopping never waits on a handler
        self.port = httpd.server_address[1]
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening: new connections are refused, kept-alive ones are dropped."""
        self._dead.set()
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def close(self) -> None:
        self.stop()
        self._client.close()

    def _next_fault(self) -> Fault:
        with self._lock:
            self.n_chat += 1
            return self.script.pop(0) if self.script else "ok"

    # --- request handling ----------------------------------------------------------------
    def _answer(self, method: str, path: str, body: bytes, headers: dict[str, str]):
        """(status, headers, body bytes) for one request, from upstream or the fake."""
        if self.upstream is not None:
            resp = self._client.request(
                method, self.upstream + path, content=body or None, headers=headers
            )
            return resp.status_code, resp.headers.get("content-type", ""), resp.content
        if path.rstrip("/").endswith("/models") and method == "GET":
            if self.models is None:
                return 404, "application/json", b'{"error":{"message":"no such route"}}'
            data = {"object": "list", "data": [{"id": m, "object": "model"} for m in self.models]}
            return 200, "application/json", json.dumps(data).encode()
        if path.rstrip("/").endswith("/chat/completions") and method != "POST":
            return 405, "application/json", b'{"error":{"message":"method not allowed"}}'
        if path.rstrip("/").endswith("/chat/completions") and method == "POST":
            req = json.loads(body)
            if self.models is not None and req.get("model") not in self.models:
                msg = {"error": {"message": f"model {req.get('model')!r} not found"}}
                return 404, "application/json", json.dumps(msg).encode()
            return 200, "application/json", json.dumps(fake_completion(req)).encode()
        return 404, "application/json", b'{"error":{"message":"no such route"}}'

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, like real servers

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def _drop(self) -> None:
                self.close_connection = True
                try:
                    self.connection.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

            def _send(self, status: int, ctype: str, payload: bytes, extra: dict[str, str]):
                self.send_response(status)
                self.send_header("Content-Type", ctype or "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for k, v in extra.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(payload)

            def _handle(self, method: str) -> None:
                if owner._dead.is_set():
                    self._drop()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with owner._lock:
                    owner.requests.append((method, self.path))
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() in ("content-type", "authorization")
                }
                is_chat = method == "POST" and self.path.rstrip("/").endswith("/chat/completions")
                fault: Fault = owner._next_fault() if is_chat else "ok"
                if is_chat:
                    with owner._lock:
                        owner.auth_headers.append(self.headers.get("Authorization"))
                        owner._in_flight += 1
                        owner.max_in_flight = max(owner.max_in_flight, owner._in_flight)
                try:
                    self._apply(method, fault, body, headers)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout) before we answered
                finally:
                    if is_chat:
                        with owner._lock:
                            owner._in_flight -= 1

            def _apply(self, method: str, fault: Fault, body: bytes, headers: dict[str, str]):
                kind = fault[0] if isinstance(fault, tuple) else fault
                if kind == "drop":
                    self._drop()
                    return
                if kind == "die":
                    self._drop()
                    owner._dead.set()
                    owner._stopper = threading.Thread(target=owner.stop, daemon=True)
                    owner._stopper.start()
                    return
                if kind == "status":
                    _, code, retry_after = fault
                    extra = {} if retry_after is None else {"Retry-After": str(retry_after)}
                    msg = json.dumps({"error": {"message": f"injected HTTP {code}"}}).encode()
                    self._send(code, "application/json", msg, extra)
                    return
                if kind == "html":
                    code = int(fault[1])
                    phrase = self.responses.get(code, ("Error",))[0]
                    self._send(code, "text/html", html_error_page(code, phrase), {})
                    return
                if kind == "redirect":
                    _, code, location = fault
                    self._send(int(code), "text/html", b"", {"Location": str(location)})
                    return
                if kind == "echo_key":
                    got = self.headers.get("Authorization") or ""
                    key = got.split(" ", 1)[-1]
                    msg = {
                        "error": {
                            "message": f"Incorrect API key provided: {key}. Header was "
                            f"'{got}'. You can find your API key at https://example.invalid.",
                            "type": "invalid_request_error",
                            "code": "invalid_api_key",
                        }
                    }
                    self._send(401, "application/json", json.dumps(msg).encode(), {})
                    return
                if kind == "not_json":
                    page = b"<html><body><p>Welcome to the portal</p></body></html>"
                    with owner._lock:
                        owner.n_answered += 1
                    self._send(200, "text/html", page, {})
                    return
                if kind == "delay":
                    time.sleep(float(fault[1]))
                status, ctype, payload = owner._answer(method, self.path, body, headers)
                if kind == "drop_after":
                    self._drop()
                    return
                if owner._dead.is_set():  # died while this request was upstream
                    self._drop()
                    return
                if owner.strip_logprobs and status == 200 and "json" in ctype:
                    data = json.loads(payload)
                    for ch in data.get("choices") or []:
                        ch.pop("logprobs", None)
                    payload = json.dumps(data).encode()
                if kind == "null_content" and status == 200 and "json" in ctype:
                    data = json.loads(payload)
                    for ch in data.get("choices") or []:
                        ch["message"]["content"] = None
                        ch.pop("logprobs", None)
                    payload = json.dumps(data).encode()
                if status == 200 and method == "POST":
                    with owner._lock:
                        owner.n_answered += 1
                self._send(status, ctype, payload, {})

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        return Handler


@pytest.fixture(scope="session")
def llama_server() -> Iterator[Any]:
    """The real llama.cpp server on a free loopback port (one per test session)."""
    pytest.importorskip("xllamacpp", reason="the llama.cpp server needs the xllamacpp wheel")
    from attrlens.models.server import LlamaServer

    # one thread: the test machine's cores are shared, and extra spinning threads slow it
    server = LlamaServer(n_ctx=2048, n_threads=1, n_parallel=1, startup_timeout=120.0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture()
def fault_proxy(llama_server: Any) -> Iterator[FaultServer]:
    """A fault-injecting proxy in front of ``llama_server``; set ``.script`` before use."""
    proxy = FaultServer(llama_server.url).start()
    try:
        yield proxy
    finally:
        proxy.close()


@pytest.fixture()
def fake_openai() -> Iterator[FaultServer]:
    """A fake OpenAI-compatible server (model 'fake-model') with the same fault script."""
    server = FaultServer(None, models=["fake-model"]).start()
    try:
        yield server
    finally:
        server.close()
