"""What both HTTP APIs (minigpt's own and the OpenAI-compatible one) share.

- :class:`HTTPError`: an error with a status, a message that says what to change, and the request
  field it is about; each API renders it in its own JSON shape.
- :func:`read_json`: the body, size-limited, parsed strictly (a 5000-digit number or a 100,000-deep
  array is a 400, not a crash).
- :class:`Runner`: turn a prompt into a job (cache or queue) and follow its events until it ends or
  the client leaves; a client that leaves is noticed at once (its disconnect message) and its job is
  cancelled before the next token, whether it was streaming or waiting for one JSON answer.
- :class:`RateLimitedLog`: at most one log line a minute for things clients do all the time
  (disconnects, read timeouts), with a count of what it did not print.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from collections.abc import AsyncGenerator
from typing import Any

from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse

from .engine import BatchingEngine, Job, QueueFull, Sampling

__all__ = ["HTTPError", "ClientGone", "ErrorResponse", "RateLimitedLog", "Runner", "read_json"]

log = logging.getLogger("minigpt.serve")

MAX_INT_DIGITS = 30  # no field takes a bigger integer; Python refuses to parse > 4300 digits anyway
MAX_JSON_DEPTH = 32  # no field nests deeper; json's recursion would fail somewhere past ~1000


class HTTPError(Exception):
    """An error with a status and a message for the client; ``param`` names the field it is about."""

    def __init__(self, status: int, message: str, fields: dict[str, str] | None = None,
                 headers: dict[str, str] | None = None, *, param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers
        self.fields = fields or ({param: message} if param else {})
        self.param = param if param is not None else next(iter(self.fields), None)
        self.code = code


class ErrorResponse(JSONResponse):
    """JSON with every non-ASCII character escaped: error messages quote what the client sent, and a
    lone surrogate ("\\ud800" in the request) cannot be encoded as UTF-8."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, separators=(",", ":")).encode("ascii")


class ClientGone(Exception):
    """The client closed the connection before its answer; nobody is left to answer."""


class RateLimitedLog:
    """Log ``what`` at most once per ``every`` seconds, with how many happened since the last line."""

    def __init__(self, what: str, every: float = 60.0, logger: logging.Logger = log) -> None:
        self.what, self.every, self.logger = what, every, logger
        self.count = 0  # all of them, for tests and metrics
        self._unreported = 0
        self._last = float("-inf")
        self._lock = threading.Lock()

    def __call__(self) -> None:
        with self._lock:
            self.count += 1
            self._unreported += 1
            now = time.monotonic()
            if now - self._last < self.every:
                return
            n, self._unreported, self._last = self._unreported, 0, now
        self.logger.warning("minigpt serve: %d %s (at most one such line a minute)", n, self.what)


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"a number with {len(text)} digits; no field accepts more than {MAX_INT_DIGITS}")
    return int(text)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed JSON, stopping early past ``limit``."""
    stack, deepest = [(value, 1)], 0
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        if deepest > limit:
            return deepest
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return deepest


async def read_json(request: Request, limit: int, example: str) -> Any:
    """The body as JSON: over ``limit`` bytes is a 413 (also when chunked), unparseable is a 400."""
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise HTTPError(413, f"request body is over the limit of {limit} bytes. Send a shorter prompt.")
            chunks.append(chunk)
    except ClientDisconnect as e:
        raise ClientGone from e
    body = b"".join(chunks)
    try:
        payload = json.loads(body, parse_int=_parse_int)
    except RecursionError:
        raise HTTPError(400, f"the body nests too deeply to be a request; send e.g. {example}") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError, so is _parse_int's
        raise HTTPError(400, f"the body is not valid JSON ({e}); send e.g. {example}") from None
    if _depth(payload, MAX_JSON_DEPTH) > MAX_JSON_DEPTH:
        raise HTTPError(400, f"the body nests deeper than {MAX_JSON_DEPTH} levels; send e.g. {example}")
    if not isinstance(payload, dict):
        raise HTTPError(400, f"the body must be a JSON object such as {example}")
    return payload


class Runner:
    """Start jobs and follow them for an HTTP handler (one per app, shared by both APIs)."""

    def __init__(self, engine: BatchingEngine, tokenizer: Any, block_size: int, metrics: Any) -> None:
        self.engine, self.tokenizer, self.block_size, self.metrics = engine, tokenizer, block_size, metrics
        self.disconnects = RateLimitedLog("client(s) left before their answer; their requests were cancelled")

    def encode(self, prompt: str, param: str = "prompt", where: str = "") -> list[int]:
        """Token ids of ``prompt``; unknown characters are a client error that lists them."""
        if not prompt:
            raise HTTPError(422, f"{param}: is empty; give at least one character (e.g. a newline)", param=param)
        try:
            return list(self.tokenizer.encode(prompt))
        except ValueError as e:  # UnknownCharacterError lists every unknown character
            unknown = getattr(e, "unknown", None)
            if unknown is not None:
                shown = " ".join(repr(c) for c in unknown[:20])
                subject = f"{param}: {where} contains" if where else f"{param}: contains"
                msg = (f"{subject} {len(unknown)} character(s) this model does not know: {shown}. "
                       "Remove or replace them (GET /v1/model lists the vocabulary).")
            else:
                msg = f"{param}: cannot be tokenized: {e}"
            raise HTTPError(422, msg, param=param) from e

    def start(self, ids: list[int], max_new_tokens: int, sampling: Sampling, stop: tuple[str, ...]) -> Job:
        """A job answered from the cache, or queued for the worker (503 when the queue is full)."""
        events: asyncio.Queue = asyncio.Queue()
        job = Job(ids=ids[-self.block_size :], max_new_tokens=max_new_tokens, sampling=sampling, stop=stop,
                  loop=asyncio.get_running_loop(), events=events)
        self.metrics.prompt_tokens.inc(len(ids))
        if self.engine.lookup(job):
            for i, tok in enumerate(job.out_ids):  # replay so streamed and plain answers look the same
                events.put_nowait(("token", tok, job.text if i == len(job.out_ids) - 1 else ""))
            events.put_nowait(("done", job.finish_reason))
            return job
        try:
            self.engine.submit(job)
        except QueueFull as e:
            self.metrics.rejected.inc()
            raise HTTPError(503, str(e), headers={"Retry-After": "1"}, code="server_busy") from e
        return job

    async def follow(self, job: Job, request: Request, stream: bool) -> AsyncGenerator[tuple, None]:
        """The job's events up to ("done", reason) or ("error", message).

        A watcher waits for the client's disconnect message (the ASGI server sends it as soon as the
        connection closes) and cancels the job at once; the worker drops it before the next token.
        Ending early for any other reason (the handler was cancelled) cancels the job too.
        """
        finished = False
        events = job.events
        if events is None:
            raise RuntimeError("the job was submitted without an event queue")

        async def watch() -> None:
            while True:
                message = await request.receive()
                if message["type"] == "http.disconnect":
                    job.cancelled.set()
                    events.put_nowait(("gone",))
                    return

        watcher = asyncio.ensure_future(watch())
        try:
            while True:
                event = await events.get()
                if event[0] == "gone":  # nobody is waiting for the answer any more
                    return
                finished = event[0] in ("done", "error")  # set before yielding: the caller may stop here
                yield event
                if finished:
                    return
        finally:  # also runs when the handler is cancelled because the client hung up
            watcher.cancel()
            if not finished:
                self.disconnects()
            self.engine.cancel(job)
            self.metrics.latency.labels(stream=str(stream).lower()).observe(time.perf_counter() - job.created)

    async def wait(self, job: Job, request: Request) -> None:
        """Wait for a non-streamed job; ClientGone when the client left, HTTPError(500) on a failure."""
        async with contextlib.aclosing(self.follow(job, request, stream=False)) as events:
            async for event in events:
                if event[0] == "error":
                    if "shutting down" in event[1]:
                        raise HTTPError(503, event[1], headers={"Retry-After": "5"}, code="shutting_down")
                    raise HTTPError(500, event[1], code="generation_failed")
                if event[0] == "done":
                    return
        raise ClientGone
