"""Tests of the llama.cpp server launcher (``attrlens serve``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from server_fixtures import free_port

from attrlens.errors import BackendError, InputError, ParameterError, ServerGoneError
from attrlens.models.openai import OpenAIBackend
from attrlens.models.server import LlamaServer, _is_loopback


def test_loopback_detection():
    for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
        assert _is_loopback(host)
    for host in ("0.0.0.0", "192.168.1.10", "example.com", "::"):
        assert not _is_loopback(host)


def test_refuses_non_loopback_host():
    with pytest.raises(ParameterError, match="loopback"):
        LlamaServer(host="0.0.0.0").start()


def test_missing_or_non_gguf_model_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        LlamaServer(tmp_path / "nope.gguf").start()
    other = tmp_path / "model.bin"
    other.write_bytes(b"x")
    with pytest.raises(InputError, match="not a .gguf"):
        LlamaServer(other).start()


def test_bad_parameters():
    with pytest.raises(ParameterError, match="port"):
        LlamaServer(port=70000).start()
    with pytest.raises(ParameterError, match="n_threads"):
        LlamaServer(n_threads=0).start()


def test_url_before_start_is_an_error():
    with pytest.raises(BackendError, match="not started"):
        _ = LlamaServer().base_url


@pytest.mark.integration
def test_broken_gguf_fails_with_log(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    server = LlamaServer(bad, n_threads=1, startup_timeout=30)
    with pytest.raises(BackendError, match="llama.cpp server.*(exited|never)") as e:
        server.start()
    assert not server.running
    # llama.cpp's reason, not the child's Python traceback (which pushed it out of the tail)
    assert "failed to load model" in str(e.value)
    assert 'File "' not in str(e.value) and "^^^" not in str(e.value)
    text = tmp_path / "text.gguf"
    text.write_text("hi\n")
    with pytest.raises(BackendError, match="failed to read magic"):
        LlamaServer(text, n_threads=1, startup_timeout=30).start()


@pytest.mark.integration
def test_fixture_server_is_up(llama_server):
    assert llama_server.running
    assert llama_server.base_url.startswith("http://127.0.0.1:")
    assert llama_server.base_url.endswith("/v1")
    health = httpx.get(llama_server.url + "/health", timeout=5, trust_env=False)
    assert health.status_code == 200
    models = httpx.get(llama_server.base_url + "/models", timeout=5, trust_env=False).json()
    assert llama_server.model_name in [m["id"] for m in models["data"]]


@pytest.mark.integration
def test_chat_template_is_applied(llama_server):
    resp = httpx.post(
        llama_server.url + "/apply-template",
        json={"messages": [{"role": "user", "content": "Hello there"}]},
        timeout=10,
        trust_env=False,
    ).json()
    assert "<|im_start|>user\nHello there<|im_end|>" in resp["prompt"]


@pytest.mark.integration
def test_stopped_server_is_gone(tmp_path):
    port = free_port()
    with LlamaServer(port=port, n_ctx=512, n_threads=1) as srv:
        assert srv.base_url == f"http://127.0.0.1:{port}/v1"
        pid = srv.pid
        be = OpenAIBackend(
            srv.base_url, srv.model_name, cache=False, max_retries=1, backoff_base=0.01
        )
        assert be.chat("Hi", max_tokens=2).completion_tokens > 0
    assert not srv.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ServerGoneError, match=str(port)):
        be.chat("Hi again", max_tokens=2)


@pytest.mark.integration
def test_serve_cli_prints_url_and_stops_on_ctrl_c(tmp_path):
    port = free_port()
    code = (
        "import sys; from attrlens.models.server import run_server_cli; "
        f"sys.exit(run_server_cli(None, {port}, 512))"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        first = proc.stdout.readline()
        second = proc.stdout.readline()
        assert f"http://127.0.0.1:{port}/v1" in first
        assert "smollm2" in second
        r = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5, trust_env=False)
        assert r.status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # the llama.cpp child went with it: the port is closed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=1, trust_env=False)
        except httpx.TransportError:
            break
        time.sleep(0.2)
    else:
        pytest.fail("the server still answers after Ctrl-C")


def test_default_model_name_identifies_the_gguf_file(tmp_path):
    """Two different GGUF files served without an alias get different model names (the
    call cache keys its rows by URL and model name); the embedded model stays 'smollm2'
    and an alias overrides the name. No server is started."""
    from attrlens.models.default import default_gguf_path

    embedded = default_gguf_path()
    a = tmp_path / "model.gguf"
    a.write_bytes(b"GGUF" + b"\0" * 64)
    sub = tmp_path / "other"
    sub.mkdir()
    b = sub / "model.gguf"  # same file name, one byte of content different
    b.write_bytes(b"GGUF" + b"\0" * 63 + b"\1")
    name_a, name_b = LlamaServer(a).model_name, LlamaServer(b).model_name
    assert name_a != name_b
    assert name_a.startswith("model-") and len(name_a) == len("model-") + 12
    assert LlamaServer().model_name == "smollm2"
    assert LlamaServer(embedded).model_name == "smollm2"
    assert LlamaServer(a, model_alias="mine").model_name == "mine"


def test_port_in_use_is_refused_at_once():
    """A port another server listens on is named at once, before the child starts."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        t0 = time.monotonic()
        server = LlamaServer(port=port, n_threads=1)
        with pytest.raises(ParameterError, match=rf"^port {port} is in use; pick another "
                           r"with --port"):
            server.start()
        assert time.monotonic() - t0 < 5.0 and not server.running
