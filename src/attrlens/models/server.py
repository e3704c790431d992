"""A real OpenAI-compatible server on loopback: llama.cpp (``xllamacpp`` wheel) serving a GGUF.

This is the reference "closed model" of attrlens: tests and demos start it, then talk to
it over HTTP exactly as to a hosted API (``OpenAIBackend(server.base_url, server.model_name)``).

llama.cpp runs in a child process (``python -m attrlens.models.server --child ...``) rather
than in-process: it can then be stopped for real (xllamacpp's in-process server lives until
the interpreter exits), its native threads never compete with torch's in the caller, and
a crash in native code cannot take the caller down. The child exits when its stdin closes,
so it never outlives the process that started it.
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import os
import queue
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO

import httpx

from ..errors import BackendError, InputError, ParameterError
from ..params import check_param

_READY_PREFIX = "ATTRLENS_LISTENING "
_LOOPBACK_NAMES = {"localhost"}


def _is_loopback(host: str) -> bool:
    if host in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _port_in_use(host: str, port: int) -> bool:
    """True when ``port`` cannot be bound on ``host`` (a server listens there already)."""
    addr = "127.0.0.1" if host == "localhost" else host.strip("[]")
    family = socket.AF_INET6 if ":" in addr else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        # a port left in TIME_WAIT is free to a listening server (llama.cpp reuses it too)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((addr, port))
        except OSError:
            return True
    return False


def _resolve_model_path(model_path: str | os.PathLike[str] | None) -> Path:
    if model_path is None:
        from .default import default_gguf_path

        return default_gguf_path()
    path = Path(model_path).expanduser()
    if not path.is_file():
        raise InputError(
            f"The model file {path} does not exist. Give the path of a local .gguf file, or "
            "leave the model out to serve the embedded SmolLM2-135M-Instruct."
        )
    if path.suffix.lower() != ".gguf":
        raise InputError(
            f"The model file {path} is not a .gguf file; llama.cpp's server only serves GGUF "
            "models. Convert it with llama.cpp's convert_hf_to_gguf.py or pick a .gguf file."
        )
    return path


#: the name the embedded model is served under
DEFAULT_ALIAS = "smollm2"


def served_model_name(model_path: str | os.PathLike[str] | None = None) -> str:
    """The model name a GGUF file is served under when no alias is given.

    The embedded model is ``smollm2``; any other file is ``<file stem>-<first 12 hex digits
    of its sha256>``, so two different files never share a name (the call cache keys its
    rows by URL and model name: a shared name would replay one model's answers for the
    other).
    """
    path = _resolve_model_path(model_path)
    if model_path is None:
        return DEFAULT_ALIAS
    from .default import default_gguf_path
    from .hf import file_sha256

    try:
        embedded = default_gguf_path().resolve()
    except BackendError:  # the embedded model's package is not installed
        embedded = None
    if path.resolve() == embedded:
        return DEFAULT_ALIAS
    return f"{path.stem}-{file_sha256(path)[:12]}"


class LlamaServer:
    """llama.cpp's OpenAI-compatible HTTP server on loopback, in a child process.

    ``model_path``: a .gguf file (default: the embedded SmolLM2-135M-Instruct).
    ``host``: a loopback address only (the server has no authentication).
    ``port``: TCP port; None picks a free one. ``n_ctx``: context size in tokens, split
    between ``n_parallel`` slots. ``n_threads``: CPU threads for generation and prompt
    processing; None = half the CPUs this process may use (at least 1, at most 8), because
    llama.cpp's threads synchronise at every layer and slow down sharply when they
    outnumber the cores left free (2 threads on a busy 2-core machine: 10x slower).
    ``n_parallel``: requests decoded at once (slots). ``model_alias``: the model name
    clients send and ``/v1/models`` lists; None = ``served_model_name(model_path)``
    (``smollm2`` for the embedded model, ``<stem>-<sha256 prefix>`` for any other file).
    ``startup_timeout``: seconds to wait for ``/health`` to answer 200.

    Use as a context manager, or call ``start()`` / ``stop()``::

        with LlamaServer() as srv:
            backend = OpenAIBackend(srv.base_url, srv.model_name)
    """

    def __init__(
        self,
        model_path: str | os.PathLike[str] | None = None,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_parallel: int = 1,
        model_alias: str | None = None,
        startup_timeout: float = 120.0,
    ) -> None:
        self.model_path = model_path
        self.host = host
        self.port = port
        self.n_ctx = n_ctx
        self.n_threads = n_threads
        self.n_parallel = n_parallel
        self.model_alias = model_alias
        self.startup_timeout = startup_timeout
        self._proc: subprocess.Popen[str] | None = None
        self._log: IO[str] | None = None
        self._url: str | None = None
        self._name: str | None = None

    def __repr__(self) -> str:
        state = self._url if self.running else "stopped"
        return f"LlamaServer(model_alias={self.model_name!r}, {state})"

    # --- public properties ---------------------------------------------------------------
    @property
    def threads(self) -> int:
        """The number of CPU threads the server uses (``n_threads`` or the automatic one)."""
        if self.n_threads is not None:
            return self.n_threads
        try:
            n_cpus = len(os.sched_getaffinity(0))
        except AttributeError:  # not on Linux
            n_cpus = os.cpu_count() or 2
        return max(1, min(8, n_cpus // 2))

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def url(self) -> str:
        """Root URL of the server, e.g. ``http://127.0.0.1:40123`` (no /v1)."""
        if self._url is None:
            raise BackendError("The llama.cpp server is not started; call start() first.")
        return self._url

    @property
    def base_url(self) -> str:
        """OpenAI base URL, ending in ``/v1``: give it to ``OpenAIBackend``."""
        return self.url + "/v1"

    @property
    def model_name(self) -> str:
        """The model name the server answers to: ``model_alias``, or when None the name
        that identifies the file (``served_model_name``; its hash is computed once)."""
        if self.model_alias is not None:
            return self.model_alias
        if self._name is None:
            self._name = served_model_name(self.model_path)
        return self._name

    @property
    def pid(self) -> int | None:
        """Process id of the child, or None when stopped."""
        return self._proc.pid if self._proc is not None else None

    # --- life cycle ----------------------------------------------------------------------
    def _validate(self) -> Path:
        owner = "LlamaServer"
        if not isinstance(self.host, str) or not _is_loopback(self.host):
            raise ParameterError(
                f"The 'host' parameter of {owner} must be a loopback address (127.0.0.1, ::1 "
                f"or localhost); the server has no authentication. Got {self.host!r} instead."
            )
        if self.port is not None:
            check_param(owner, "port", self.port, kind=int, low=1, high=65535)
        check_param(owner, "n_ctx", self.n_ctx, kind=int, low=16)
        if self.n_threads is not None:
            check_param(owner, "n_threads", self.n_threads, kind=int, low=1)
        check_param(owner, "n_parallel", self.n_parallel, kind=int, low=1)
        check_param(owner, "startup_timeout", self.startup_timeout, low=0.1)
        if self.model_alias is not None and (
            not isinstance(self.model_alias, str) or not self.model_alias.strip()
        ):
            raise ParameterError(
                f"The 'model_alias' parameter of {owner} must be a non-empty str. "
                f"Got {self.model_alias!r} instead."
            )
        return _resolve_model_path(self.model_path)

    def start(self) -> LlamaServer:
        """Start the child process and wait until ``/health`` answers; returns self.

        Raises BackendError naming the cause (and the tail of the server log) if the server
        does not come up within ``startup_timeout`` seconds.
        """
        if self.running:
            return self
        path = self._validate()
        if self.port and _port_in_use(self.host, self.port):
            raise ParameterError(
                f"port {self.port} is in use; pick another with --port (LlamaServer's "
                "'port'), or leave it out to take a free one."
            )
        try:
            import xllamacpp  # noqa: F401  (fail here, with a clear message, not in the child)
        except ImportError as exc:
            raise BackendError(
                "The llama.cpp server needs the 'xllamacpp' package: pip install 'attrlens[server]'"
            ) from exc
        cmd = [
            sys.executable,
            "-m",
            "attrlens.models.server",
            "--child",
            "--model",
            str(path),
            "--host",
            self.host,
            "--port",
            str(self.port or 0),
            "--n-ctx",
            str(self.n_ctx),
            "--threads",
            str(self.threads),
            "--parallel",
            str(self.n_parallel),
            "--alias",
            self.model_name,
        ]
        # lives as long as the child; closed in stop()
        self._log = tempfile.TemporaryFile(  # noqa: SIM115
            mode="w+", prefix="attrlens-llama-", suffix=".log"
        )
        env = dict(os.environ)
        # the child must import this very package, even when it is run from a source tree
        src_root = str(Path(__file__).resolve().parents[2])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (src_root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            env=env,
            # own session: a Ctrl-C in the terminal reaches the parent, which stops us cleanly
            start_new_session=True,
        )
        deadline = time.monotonic() + self.startup_timeout
        try:
            self._url = self._wait_for_address(deadline)
            self._wait_for_health(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _wait_for_address(self, deadline: float) -> str:
        assert self._proc is not None and self._proc.stdout is not None  # set by start()
        lines: queue.Queue[str | None] = queue.Queue()
        stdout = self._proc.stdout

        def reader() -> None:
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=reader, daemon=True, name="llama-server-stdout").start()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise BackendError(self._failure("did not report its address in time"))
            try:
                line = lines.get(timeout=min(remaining, 0.5))
            except queue.Empty:
                continue
            if line is None:
                raise BackendError(self._failure("exited during start-up", timed=False))
            if line.startswith(_READY_PREFIX):
                return line[len(_READY_PREFIX) :].strip().rstrip("/")

    def _wait_for_health(self, deadline: float) -> None:
        last = "no answer"
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while time.monotonic() < deadline:
                if not self.running:
                    raise BackendError(self._failure("exited during start-up", timed=False))
                try:
                    resp = client.get(self.url + "/health")
                    if resp.status_code == 200:
                        return
                    last = f"HTTP {resp.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                time.sleep(0.1)
        raise BackendError(self._failure(f"/health never answered 200 (last: {last})"))

    def log_tail(self, n_chars: int = 1500) -> str:
        """The last ``n_chars`` characters of the server's log (stderr)."""
        if self._log is None:
            return ""
        try:
            self._log.flush()
            self._log.seek(0, os.SEEK_END)
            size = self._log.tell()
            self._log.seek(max(0, size - n_chars))
            return self._log.read()
        except (OSError, ValueError):
            return ""

    def _failure(self, what: str, *, timed: bool = True) -> str:
        """``timed``: the start-up timed out (else the child exited on its own)."""
        lines = [ln.strip() for ln in self.log_tail(8000).splitlines() if ln.strip()]
        # llama.cpp's own reasons (a bad file: "failed to read magic", "failed to load
        # model") come before the Python traceback of the child, which pushed them out of
        # the shown tail; the traceback's frames say nothing to the user
        frames = re.compile(r'^(File ".*", line \d+|Traceback \(|[\^~ ]+$)')
        reasons = [ln for ln in lines if re.search(r"(?i)\b(error|failed|fail|cannot|"
                                                   r"invalid|unable)\b", ln)
                   and not frames.match(ln)]
        tail = (reasons or [ln for ln in lines if not frames.match(ln)] or lines)[-8:]
        port = f" on port {self.port}" if self.port else ""
        within = f" within {self.startup_timeout:g} s" if timed else ""
        return (
            f"The llama.cpp server{port} {what}{within}. "
            f"Last lines of its log: {' | '.join(tail) or '(empty)'}"
        )

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the child process (close its stdin, then terminate, then kill)."""
        proc, self._proc = self._proc, None
        if proc is not None:
            try:
                if proc.stdin is not None:
                    proc.stdin.close()
            except OSError:
                pass
            try:
                proc.wait(timeout=timeout / 2)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=timeout / 2)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        self._url = None

    def __enter__(self) -> LlamaServer:  # noqa: PYI034
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # never leave a child behind
        if getattr(self, "_proc", None) is not None:
            with contextlib.suppress(Exception):  # interpreter shutdown: best effort only
                self.stop(timeout=2.0)


def run_server_cli(
    model: str | None = None,
    port: int | None = None,
    n_ctx: int = 4096,
    n_threads: int | None = None,
    model_alias: str | None = None,
) -> int:
    """``attrlens serve``: start the server, print its URL and model name, block until Ctrl-C.

    Returns the process exit status (0 after Ctrl-C, 3 if the server died on its own).
    """
    server = LlamaServer(model, port=port, n_ctx=n_ctx, n_threads=n_threads,
                         model_alias=model_alias)
    server.start()
    try:
        print(f"llama.cpp server running at {server.base_url}", flush=True)
        print(f"model name: {server.model_name}", flush=True)
        print("It speaks the OpenAI chat-completions API; Ctrl-C stops it.", flush=True)
        while server.running:
            time.sleep(0.5)
        print("The llama.cpp server stopped unexpectedly.", file=sys.stderr)
        print(server.log_tail(), file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        print("\nstopping the server", flush=True)
        return 0
    finally:
        server.stop()


serve_forever = run_server_cli


# --- child process ---------------------------------------------------------------------
def _child_main(argv: list[str]) -> int:
    """Entry point of the child: run xllamacpp's server until stdin closes."""
    ap = argparse.ArgumentParser(prog="python -m attrlens.models.server")
    ap.add_argument("--child", action="store_true")
    ap.add_argument("--model", required=True)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--n-ctx", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--parallel", type=int, default=1)
    ap.add_argument("--alias", default=DEFAULT_ALIAS)
    args = ap.parse_args(argv)
    if not _is_loopback(args.host):
        print(f"refusing non-loopback host {args.host}", file=sys.stderr)
        return 2

    import xllamacpp as xlc

    params = xlc.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port  # 0: the OS picks a free port, reported by listening_address
    params.n_ctx = args.n_ctx
    params.n_parallel = args.parallel
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    params.model_alias = {args.alias}
    params.use_jinja = True  # the GGUF's own chat template
    server = xlc.Server(params)  # starts the HTTP server in native threads
    print(_READY_PREFIX + str(server.listening_address), flush=True)
    # block until the parent closes our stdin (or dies); then leave without running
    # native destructors, which may wait on the server's threads
    try:
        while sys.stdin.read(4096):
            pass
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    raise SystemExit(_child_main(sys.argv[1:]))
