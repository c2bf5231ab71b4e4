"""The HTTP API: ``create_app(model, tokenizer, settings)`` -> a FastAPI app.

Endpoints: ``POST /v1/generate`` (JSON, or server-sent events with ``"stream": true`` ending in
``data: [DONE]``), ``GET /v1/model``, ``GET /healthz``, ``GET /metrics`` (Prometheus), ``GET /`` (the
playground), and the OpenAI-compatible ``/v1/models``, ``/v1/completions`` and ``/v1/chat/completions``
(:mod:`minigpt.serve.openai_api`). Every error is JSON, ``{"error": message, "status": code, "fields":
{...}}`` here and OpenAI's shape on the OpenAI paths, with a message that says what to change.

Nothing a client sends can stop the server or make it answer 500: POST bodies must be
``application/json`` (anything else is a 415, so a browser cannot send a cross-site request without a
preflight), a body that does not parse is a 400, a value out of range a 422. Sampling is finite for any
temperature > 0 and top_p > 0 (see :func:`minigpt.serve.engine.sample_row`). A client that leaves gets
its job cancelled within a second and costs one rate-limited log line, not a traceback or a 500.
``/healthz`` answers 503 when the model cannot generate (checked at start, and after a failed run).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hmac
import json
import logging
import os
import time
from collections.abc import MutableMapping
from dataclasses import asdict, is_dataclass
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from .core import ClientGone, ErrorResponse, HTTPError, Runner, read_json
from .engine import BatchingEngine, Sampling, probe_model
from .metrics import ENDPOINTS, ServeMetrics
from .openai_api import add_openai_routes, is_openai_path, openai_error
from .settings import ServeSettings

__all__ = ["GenerateRequest", "create_app"]

log = logging.getLogger(__name__)

MAX_STOP_STRINGS = 4
MAX_STOP_CHARS = 64


class GenerateRequest(BaseModel):
    """Body of ``POST /v1/generate``; limits that depend on the server are checked after parsing."""

    model_config = ConfigDict(extra="forbid")

    prompt: str = Field(description="text to continue")
    max_new_tokens: int | None = Field(None, description="tokens to generate (server default when omitted)")
    temperature: float = Field(1.0, description="> 0; lower is more focused")
    top_k: int | None = Field(None, description="keep the k most likely tokens (None = all)")
    top_p: float | None = Field(None, description="nucleus sampling, in (0, 1] (None = off)")
    greedy: bool = Field(False, description="always take the most likely token (deterministic)")
    seed: int | None = Field(None, description="fixed seed: the same request gives the same text")
    stop: list[str] | None = Field(None, description="stop after any of these strings (included in the text)")
    stream: bool = Field(False, description="send tokens as server-sent events while they are generated")

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, v: float) -> float:
        if not v > 0:  # also catches NaN
            raise ValueError(
                f"must be > 0, got {v}; use greedy=true for deterministic output, 0.3-1.0 for sampling"
            )
        if v > 100:
            raise ValueError(f"must be <= 100, got {v}; above ~2 the text is noise anyway")
        return v

    @field_validator("top_p")
    @classmethod
    def _top_p(cls, v: float | None) -> float | None:
        if v is not None and not 0.0 < v <= 1.0:
            raise ValueError(f"must be in (0, 1], got {v}; 0.9 is a common choice, 1 or null turns it off")
        return v

    @field_validator("top_k")
    @classmethod
    def _top_k(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be >= 1, got {v}; use null to sample from every token")
        return v

    @field_validator("max_new_tokens")
    @classmethod
    def _max_new_tokens(cls, v: int | None) -> int | None:
        if v is not None and v < 1:
            raise ValueError(f"must be >= 1, got {v}")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v < 2**63:
            raise ValueError(f"must be in [0, 2**63), got {v}")
        return v

    @field_validator("stop", mode="before")
    @classmethod
    def _stop(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list):
            if len(v) > MAX_STOP_STRINGS:
                raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings, got {len(v)}")
            for s in v:
                if isinstance(s, str) and not 1 <= len(s) <= MAX_STOP_CHARS:
                    raise ValueError(f"each stop string needs 1 to {MAX_STOP_CHARS} characters, got {s!r}")
        return v


def _error(status: int, message: str, fields: dict[str, str] | None = None,
           headers: dict[str, str] | None = None, *, path: str = "", param: str | None = None,
           code: str | None = None) -> JSONResponse:
    """An error in the shape of the API the path belongs to (OpenAI's on the OpenAI paths)."""
    if is_openai_path(path):
        return openai_error(status, message, param if param is not None else next(iter(fields or {}), None),
                            code, headers)
    return ErrorResponse({"error": message, "status": status, "fields": fields or {}}, status, headers=headers)


def _is_json(content_type: bytes | None) -> bool:
    """True for ``application/json`` with or without parameters (``; charset=utf-8``)."""
    if content_type is None:
        return False
    return content_type.split(b";", 1)[0].strip().lower() == b"application/json"


def _explain(e: ValidationError) -> tuple[str, dict[str, str]]:
    """Pydantic's errors as one readable sentence plus a field -> message map."""
    fields: dict[str, str] = {}
    for err in e.errors():
        name = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            known = ", ".join(GenerateRequest.model_fields)
            msg = f"unknown field; known fields: {known}"
        elif err["type"] == "missing":
            msg = "required"
        fields.setdefault(name, msg)
    return "; ".join(f"{k}: {v}" for k, v in fields.items()), fields


class _Gate:
    """Pure ASGI middleware: API key, 413 by Content-Length, and request/error counters.

    Pure ASGI (not ``BaseHTTPMiddleware``) so streamed responses and client disconnects pass straight through.
    """

    def __init__(self, app: Any, settings: ServeSettings, metrics: ServeMetrics) -> None:
        self.app, self.settings, self.metrics = app, settings, metrics

    def _authorised(self, headers: dict[bytes, bytes], api_key: str) -> bool:
        key = api_key.encode()
        given = headers.get(b"x-api-key")
        auth = headers.get(b"authorization", b"")
        if given is None and auth[:7].lower() == b"bearer ":
            given = auth[7:].strip()
        if given is None and auth[:6].lower() == b"basic ":  # the browser's own prompt, for the playground
            try:
                given = base64.b64decode(auth[6:].strip(), validate=True).partition(b":")[2]
            except (binascii.Error, ValueError):
                given = None
        return given is not None and hmac.compare_digest(given, key)

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        endpoint = path if path in ENDPOINTS else "other"
        counted = False

        def count(status: int) -> None:
            nonlocal counted
            counted = True
            self.metrics.requests.labels(endpoint=endpoint).inc()
            if status >= 400:
                self.metrics.errors.labels(endpoint=endpoint, status=str(status)).inc()

        async def send_watch(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":  # count before the client can see the answer
                count(message["status"])
            await send(message)

        headers = dict(scope.get("headers") or [])
        response = None
        api_key = self.settings.api_key
        if api_key is not None and path != "/healthz" and not self._authorised(headers, api_key):
            extra = {"WWW-Authenticate": 'Basic realm="minigpt playground"'} if path == "/" else None
            response = _error(
                401, "missing or wrong API key: send it as 'Authorization: Bearer KEY' or 'X-API-Key: KEY'",
                headers=extra, path=path, code="invalid_api_key",
            )
        elif scope["method"] in ("POST", "PUT", "PATCH") and not _is_json(headers.get(b"content-type")):
            given = headers.get(b"content-type", b"none").decode("latin-1")[:60]
            response = _error(
                415, f"the body must be JSON sent with 'Content-Type: application/json' (got {given!r})",
                path=path, code="unsupported_media_type",
            )
        else:
            length = headers.get(b"content-length", b"")
            if length.isdigit() and (len(length) > 18 or int(length) > self.settings.max_body_bytes):
                shown = int(length) if len(length) <= 18 else f"a {len(length)}-digit number of"
                response = _error(
                    413, f"request body is {shown} bytes; the limit is {self.settings.max_body_bytes}. "
                    "Send a shorter prompt.", path=path, code="request_too_large",
                )
        try:
            if response is not None:
                await response(scope, receive, send_watch)
            else:
                await self.app(scope, receive, send_watch)
        except BaseException:
            if not counted:  # the app failed before it could answer
                count(500)
            raise
        if not counted:  # the app returned without answering: the client had already left
            count(499)


def _sse(data: dict | str, event: str | None = None) -> str:
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def create_app(
    model: Any,
    tokenizer: Any,
    settings: ServeSettings | None = None,
    *,
    checkpoint_info: dict[str, Any] | None = None,
) -> FastAPI:
    """Build the app around an in-memory model (tests pass a tiny random GPT and a CharTokenizer).

    The worker thread starts with the app (or on the first request) and stops at shutdown.
    ``app.state.engine`` and ``app.state.metrics`` are there for tests and notebooks.
    """
    from contextlib import asynccontextmanager

    settings = settings or ServeSettings()
    model.eval()
    metrics = ServeMetrics()
    engine = BatchingEngine(model, tokenizer, settings, metrics)
    block_size = model.config.block_size
    vocab = list(tokenizer.chars) if hasattr(tokenizer, "chars") else None
    runner = Runner(engine, tokenizer, block_size, metrics)
    startup_problem = probe_model(model, int(tokenizer.vocab_size))
    if startup_problem is not None:
        log.error("minigpt serve: %s", startup_problem)

    def health() -> str | None:
        """Why the model cannot generate now (None when it can)."""
        return startup_problem or engine.problem

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine.start()
        yield
        engine.stop()

    app = FastAPI(title="minigpt", version="1", lifespan=lifespan, docs_url="/docs", redoc_url=None)
    app.state.engine, app.state.metrics, app.state.settings = engine, metrics, settings
    app.state.runner, app.state.health = runner, health

    @app.exception_handler(HTTPError)
    async def _http_error(request: Request, e: HTTPError) -> JSONResponse:
        return _error(e.status, e.message, e.fields, e.headers, path=request.url.path, param=e.param, code=e.code)

    @app.exception_handler(ClientGone)
    async def _client_gone(request: Request, e: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it; the status is for the metrics

    @app.exception_handler(StarletteHTTPException)
    async def _starlette_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        path = request.url.path
        message = {404: f"no endpoint {path}; see /docs for the API",
                   405: f"{request.method} is not allowed on {path}"}.get(e.status_code, str(e.detail))
        return _error(e.status_code, message, path=path, headers=getattr(e, "headers", None),
                      code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return _error(500, f"internal error ({type(e).__name__}); the server is still running, see its log",
                      path=request.url.path)

    def parse(payload: dict[str, Any]) -> GenerateRequest:
        try:
            req = GenerateRequest.model_validate(payload)
        except ValidationError as e:
            message, fields = _explain(e)
            raise HTTPError(422, message, fields) from e
        n = req.max_new_tokens or settings.default_max_new_tokens
        if n > settings.max_new_tokens_limit:
            raise HTTPError(
                422, f"max_new_tokens: {n} is above this server's limit of {settings.max_new_tokens_limit}; "
                "ask for fewer tokens (or restart the server with a larger --max-new-tokens-limit)",
                {"max_new_tokens": f"must be <= {settings.max_new_tokens_limit}"},
            )
        req.max_new_tokens = n
        return req

    @app.post("/v1/generate", openapi_extra={"requestBody": {
        "required": True, "content": {"application/json": {"schema": GenerateRequest.model_json_schema()}}}})
    async def generate(request: Request) -> Response:
        """Continue a prompt; JSON by default, server-sent events with ``"stream": true``."""
        start = time.perf_counter()
        req = parse(await read_json(request, settings.max_body_bytes, '{"prompt": "ROMEO:"}'))
        ids = runner.encode(req.prompt)
        if health() is not None:
            raise HTTPError(503, f"the model cannot generate: {health()}")
        sampling = Sampling(req.temperature, req.top_k, req.top_p, req.greedy, None if req.greedy else req.seed)
        assert req.max_new_tokens is not None  # parse() filled in the server's default
        job = runner.start(ids, req.max_new_tokens, sampling, tuple(req.stop or ()))

        def summary() -> dict[str, Any]:
            seconds = time.perf_counter() - start
            return {
                "text": job.text, "prompt_tokens": len(ids), "completion_tokens": len(job.out_ids),
                "finish_reason": job.finish_reason, "cached": job.cached, "seconds": round(seconds, 4),
                "tokens_per_s": round(len(job.out_ids) / seconds, 2) if seconds > 0 else None,
                "prompt_truncated": len(ids) > block_size,
            }

        if not req.stream:
            await runner.wait(job, request)
            return JSONResponse(summary())

        async def events():
            async with contextlib.aclosing(runner.follow(job, request, stream=True)) as job_events:
                async for event in job_events:
                    if event[0] == "token":
                        yield _sse({"token": event[2], "id": event[1]})
                    elif event[0] == "done":
                        yield _sse(summary(), event="done")
                    else:
                        yield _sse({"error": event[1], "status": 500}, event="error")
                    if event[0] != "token":
                        yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.get("/v1/model")
    async def model_info() -> dict[str, Any]:
        """What is being served: config, parameter count, vocabulary, and this server's limits."""
        config = model.config
        return {
            "name": settings.model_name,
            "model_class": type(model).__name__,
            "config": asdict(config) if is_dataclass(config) and not isinstance(config, type) else dict(config),
            "parameters": int(model.num_params()) if hasattr(model, "num_params")
            else sum(p.numel() for p in model.parameters()),
            "vocab_size": int(tokenizer.vocab_size),
            "tokenizer": type(tokenizer).__name__,
            "vocab": vocab,
            "block_size": block_size,
            "device": str(engine.device),
            "checkpoint": _public(checkpoint_info),
            "limits": {
                "max_new_tokens": settings.max_new_tokens_limit,
                "default_max_new_tokens": settings.default_max_new_tokens,
                "max_body_bytes": settings.max_body_bytes,
                "max_queue": settings.max_queue,
                "max_batch_size": settings.max_batch_size,
                "cache_size": settings.cache_size,
            },
        }

    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        """Liveness for load balancers (never needs the API key): 503 when the model cannot generate."""
        problem = health()
        body = {"status": "ok" if problem is None else "error", "queue_depth": engine.queue_depth,
                "active": engine.active}
        if problem is not None:
            body["problem"] = problem
        return JSONResponse(body, 200 if problem is None else 503)

    @app.get("/metrics")
    async def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    page = resources.files("minigpt.serve").joinpath("static/playground.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse)
    async def playground() -> HTMLResponse:
        return HTMLResponse(page)

    add_openai_routes(app, runner, settings, health)
    app.add_middleware(_Gate, settings=settings, metrics=metrics)
    return app


def _public(info: dict[str, Any] | None) -> dict[str, Any] | None:
    """Checkpoint info without absolute paths: a client learns the folder's name, not the server's disk."""
    if info is None:
        return None
    out = dict(info)
    if out.get("path") is not None:
        out["path"] = os.path.basename(os.path.normpath(str(out["path"])))
    return out
