"""Run a server in the background: in a thread (tests) or a child process (notebook, load test).

Both only ever bind 127.0.0.1 and wait for ``/healthz`` a bounded time, so a broken server fails
fast with its log instead of hanging a notebook.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from typing import Any, TextIO

__all__ = ["free_port", "ThreadServer", "ServerProcess"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ThreadServer:
    """``with ThreadServer(app) as url:`` serves ``app`` with uvicorn in a daemon thread.

    The server is the one ``minigpt serve`` runs (:func:`minigpt.serve.server.build_server`), with the
    limits of ``app.state.settings``.
    """

    def __init__(self, app: Any, port: int | None = None, startup_timeout: float = 20.0) -> None:
        from .server import bind, build_server
        from .settings import ServeSettings

        self.sock = bind("127.0.0.1", port or 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        settings = getattr(app.state, "settings", None) or ServeSettings()
        self.server = build_server(app, settings)
        self.startup_timeout = startup_timeout
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name="minigpt-uvicorn", daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + self.startup_timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"uvicorn did not start on {self.url} within {self.startup_timeout} s")
            time.sleep(0.02)
        return self.url

    def __exit__(self, *exc: Any) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


class ServerProcess:
    """``minigpt serve`` as a child process: ``start()`` waits for /healthz, ``stop()`` ends it.

    Output goes to a log file (``self.log_path``) so a full pipe can never block the server.
    """

    def __init__(self, checkpoint: str | os.PathLike, port: int | None = None, extra_args: Sequence[str] = (),
                 env: dict[str, str] | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = [sys.executable, "-m", "minigpt.serve", "serve", "--checkpoint", str(checkpoint),
                     "--host", "127.0.0.1", "--port", str(self.port), *extra_args]
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None
        self._log: TextIO | None = None  # the server's output, open between start and stop
        self.log_path = os.path.join(tempfile.gettempdir(), f"minigpt-serve-{self.port}.log")

    def start(self, timeout: float = 60.0) -> ServerProcess:
        import httpx

        self._log = open(self.log_path, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT, env=self.env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with code {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the server did not answer /healthz within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        try:
            with open(self.log_path) as f:
                return f.read()[-4000:]
        except OSError:
            return ""

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # uvicorn shuts down cleanly on SIGTERM
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout)
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
