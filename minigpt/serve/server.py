"""The uvicorn server around the app, hardened against clients that misbehave.

uvicorn's defaults trust the client: a connection that sends half a request and then nothing is held
forever, and every malformed request or refused connection is one warning line. Here:

- ``read_timeout_s``: a connection must deliver a whole request (headers and body) within this many
  seconds of its first byte (or of connecting); otherwise it gets a 408 and is closed. The clock stops
  while the server is answering, so long generations and streams are not affected.
- ``keep_alive_s``: an idle keep-alive connection is closed after this (uvicorn's ``timeout_keep_alive``).
- ``max_connections``: open connections above this get uvicorn's 503 (``limit_concurrency``).
- a request head still incomplete after 16 KiB is a 400 (h11's ``max_incomplete_event_size``); the
  body limit is the app's (``max_body_bytes``, 413).
- no WebSocket upgrades (nothing here uses them);
- uvicorn's repeated warnings ("Invalid HTTP request received.", the concurrency limit) are
  rate-limited to one line a minute per message, with a count of the ones not printed.

:func:`build_server` is used by ``minigpt serve`` and by :class:`~minigpt.serve.background.ThreadServer`,
so the tests exercise the same configuration.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import time
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["MAX_HEADER_BYTES", "bind", "build_server", "url_of"]

MAX_HEADER_BYTES = 16 * 1024


class _TimedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a deadline for reading each request."""

    read_timeout: float = 10.0  # set per server by build_server

    def connection_made(self, transport: Any) -> None:
        self._read_timer: asyncio.TimerHandle | None = None
        super().connection_made(transport)
        self._watch_read()

    def data_received(self, data: bytes) -> None:
        try:
            super().data_received(data)
        except (ValueError, h11.LocalProtocolError):  # e.g. a Content-Length with thousands of digits
            if not self.transport.is_closing():
                self._raw_close(400, "Bad Request", "the request could not be parsed")
            return
        self._watch_read()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_read_timer()
        super().connection_lost(exc)

    def on_response_complete(self) -> None:
        self._stop_read_timer()  # from here uvicorn's keep-alive timer watches the idle connection
        super().on_response_complete()

    def _watch_read(self) -> None:
        """Arm the deadline while a request is incomplete; stop it once the request is in."""
        if self.conn.their_state in (h11.IDLE, h11.SEND_BODY) and not self.transport.is_closing():
            if self._read_timer is None:
                self._read_timer = self.loop.call_later(self.read_timeout, self._read_timed_out)
        else:
            self._stop_read_timer()

    def _stop_read_timer(self) -> None:
        timer = getattr(self, "_read_timer", None)
        if timer is not None:
            timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self.transport.is_closing():
            return
        _read_timeouts()
        if self.cycle is None or not self.cycle.response_started:
            self._raw_close(408, "Request Timeout", f"the request did not arrive within {self.read_timeout:g} s")
        else:
            self.transport.close()

    def _raw_close(self, status: int, reason: str, message: str) -> None:
        """Answer with a small JSON error outside h11 (its state may be broken) and close."""
        body = json.dumps({"error": message, "status": status}).encode()
        head = (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\nconnection: close\r\n"
                f"content-length: {len(body)}\r\n\r\n").encode()
        self.transport.write(head + body)
        self.transport.close()
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # the app sees a disconnect and stops reading
            self.cycle.message_event.set()


class _RateLimit(logging.Filter):
    """Let each distinct plain warning through once per ``every`` seconds; count the rest."""

    def __init__(self, every: float = 60.0) -> None:
        super().__init__()
        self.every = every
        self.last: dict[str, float] = {}
        self.suppressed: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info or record.levelno >= logging.ERROR:
            return True
        key = str(record.msg)
        now = time.monotonic()
        if now - self.last.get(key, float("-inf")) < self.every:
            self.suppressed[key] = self.suppressed.get(key, 0) + 1
            return False
        self.last[key] = now
        n = self.suppressed.pop(key, 0)
        if n:
            record.msg = f"{record.msg} ({n} more like this in the last minute, not shown)"
        return True


_read_timeout_log: Any = None


def _read_timeouts() -> None:
    global _read_timeout_log
    if _read_timeout_log is None:
        from .core import RateLimitedLog

        _read_timeout_log = RateLimitedLog("connection(s) closed for not sending a whole request in time")
    _read_timeout_log()


def _quiet_uvicorn_warnings() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _RateLimit) for f in logger.filters):
        logger.addFilter(_RateLimit())


def bind(host: str, port: int, backlog: int = 2048) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); OSError says why not."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


class _Server(uvicorn.Server):
    """uvicorn's server that says where it listens (one line, once it really does) and stops the
    decoding worker before it waits for open requests."""

    announce: str | None = None

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        if self.started and self.announce and sockets:
            print(self.announce.format(url=url_of(sockets[0])), flush=True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # Stop the decoding worker first: running and queued requests end at once with a 503
        # ("shutting down") instead of being cut off, with a traceback each, after the grace period.
        engine = getattr(getattr(self.config.app, "state", None), "engine", None)
        if engine is not None:
            await asyncio.get_running_loop().run_in_executor(None, engine.stop)
        await super().shutdown(sockets=sockets)


def build_server(app: Any, settings: Any, log_level: str = "warning", announce: str | None = None) -> uvicorn.Server:
    """A uvicorn server for ``app`` with the limits in ``settings`` (a ServeSettings); run it with
    ``server.run(sockets=[bind(host, port)])``. ``announce`` ("... {url} ...") is printed once listening."""
    protocol = type("MinigptH11Protocol", (_TimedH11Protocol,), {"read_timeout": float(settings.read_timeout_s)})
    config = uvicorn.Config(
        app, http=protocol, ws="none", log_level=log_level, lifespan="on",
        timeout_keep_alive=settings.keep_alive_s,
        limit_concurrency=settings.max_connections,
        h11_max_incomplete_event_size=MAX_HEADER_BYTES,
        timeout_graceful_shutdown=5,
        access_log=False,
    )
    _quiet_uvicorn_warnings()
    server = _Server(config)
    server.announce = announce
    return server
