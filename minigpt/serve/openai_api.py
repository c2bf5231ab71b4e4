"""OpenAI-compatible endpoints, so the official ``openai`` client (and tools built on it) can talk to us.

``GET /v1/models``, ``GET /v1/models/{id}``, ``POST /v1/completions``, ``POST /v1/chat/completions``::

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")  # or the --api-key
    client.completions.create(model="demo", prompt="ROMEO:", max_tokens=40)
    client.chat.completions.create(model="demo", messages=[{"role": "user", "content": "Hi"}])

Supported: ``max_tokens`` (completions default 16, chat default the server's default;
``max_completion_tokens`` too), ``temperature`` in [0, 2] (0 = greedy), ``top_p`` in [0, 1] (values
under 1e-6 keep the most likely token only), ``seed``, ``stop`` (a string or up to 4), ``n`` = 1,
``stream`` (server-sent events of OpenAI chunks, then ``data: [DONE]``), ``stream_options.include_usage``,
``echo`` (completions), ``usage`` counts. ``prompt`` may be a string, a one-string list or a list of
token ids. As with OpenAI, the text stops *before* a stop string. Other options with a non-default
value (``logprobs``, penalties, ``logit_bias``, ``best_of``, ``suffix``, tools) are a 400 that names
them; unknown fields are a 400 too. ``model`` must be the served id (``GET /v1/models``) or omitted.

Chat template (our models were trained on plain text and have none of their own)::

    System: <system or developer message>
    User: <user message>
    Assistant: <assistant message>
    User: <user message>
    Assistant:

one line per message in order, and the model continues after the final ``Assistant:``. The reply stops
at the next ``\\nUser:`` (the model starting the user's next turn), which is cut from the reply like a
stop string, and its leading whitespace is dropped. A model whose vocabulary lacks the template's
characters (e.g. no capital letters) answers 400 and should be used through ``/v1/completions``.

Errors have OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``: 400 for a bad request,
401 for a missing key, 404 for an unknown model, 413 for a large body, 415 for a non-JSON body, 503
when the queue is full (with Retry-After), 500 when generation fails.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, ValidationError

from .core import ErrorResponse, HTTPError, Runner, read_json
from .engine import Job, Sampling
from .settings import ServeSettings

__all__ = ["CHAT_STOP", "VisibleText", "add_openai_routes", "chat_prompt", "is_openai_path", "openai_error"]

OPENAI_PREFIXES = ("/v1/models", "/v1/completions", "/v1/chat/")
ROLE_NAMES = {"system": "System", "developer": "System", "user": "User", "assistant": "Assistant"}
CHAT_STOP = "\nUser:"
MAX_STOPS = 4  # OpenAI's own limit
MAX_STOP_CHARS = 64
CREATED = int(time.time())  # when this server started: the "created" of its one model


def is_openai_path(path: str) -> bool:
    return path.startswith(OPENAI_PREFIXES)


_TYPES = {401: "authentication_error", 404: "invalid_request_error", 413: "invalid_request_error",
          415: "invalid_request_error", 503: "server_error", 500: "server_error"}


def openai_error(status: int, message: str, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None) -> JSONResponse:
    """An error in OpenAI's shape; 422 (our validation status) becomes OpenAI's 400."""
    if status == 422:
        status = 400
    kind = _TYPES.get(status, "invalid_request_error" if status < 500 else "server_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return ErrorResponse(body, status, headers=headers)


# --- requests -------------------------------------------------------------------------------------------
class _Options(BaseModel):
    """What both endpoints take; unknown fields are refused like OpenAI does."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = None
    stream: bool | None = None
    stream_options: dict[str, Any] | None = None
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    user: str | None = None


class CompletionRequest(_Options):
    prompt: str | list[str] | list[int]
    echo: bool | None = None
    suffix: str | None = None
    logprobs: int | None = None
    best_of: int | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")  # e.g. "refusal": null sent back by some clients

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatRequest(_Options):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    response_format: dict[str, Any] | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    store: bool | None = None
    metadata: dict[str, Any] | None = None


def _validation_error(e: ValidationError) -> HTTPError:
    err = e.errors()[0]
    param = ".".join(str(p) for p in err["loc"]) or None
    if err["type"] == "extra_forbidden":
        return HTTPError(400, f"Unrecognized request argument supplied: {param}", param=param,
                         code="unknown_parameter")
    if err["loc"] and err["loc"][0] == "prompt":
        return HTTPError(400, "prompt: must be a string, a list holding one string, or a list of token ids",
                         param="prompt", code="invalid_value")
    if err["type"] == "missing":
        return HTTPError(400, f"{param}: required", param=param, code="missing_required_parameter")
    return HTTPError(400, f"{param}: {err['msg'].removeprefix('Value error, ')}", param=param,
                     code="invalid_value")


def _unsupported(param: str, why: str) -> HTTPError:
    return HTTPError(400, f"{param}: {why}", param=param, code="unsupported_parameter")


def _sampling(req: _Options) -> Sampling:
    t = 1.0 if req.temperature is None else req.temperature
    if not 0.0 <= t <= 2.0:  # also NaN
        raise HTTPError(400, f"temperature: must be in [0, 2], got {t}; 0 means greedy", param="temperature")
    p = req.top_p
    if p is not None and not 0.0 <= p <= 1.0:
        raise HTTPError(400, f"top_p: must be in [0, 1], got {p}", param="top_p")
    seed = req.seed
    if seed is not None and not 0 <= seed < 2**63:
        raise HTTPError(400, f"seed: must be in [0, 2**63), got {seed}", param="seed")
    if t == 0.0:  # OpenAI's temperature 0: the most likely token every time
        return Sampling(greedy=True)
    return Sampling(temperature=t, top_p=None if p is None or p == 1.0 else p, seed=seed)


def _common_checks(req: _Options, served: str) -> None:
    if req.model is not None and req.model != served:
        raise HTTPError(404, f"The model '{req.model}' does not exist; this server serves '{served}' "
                        "(GET /v1/models)", param="model", code="model_not_found")
    if req.n not in (None, 1):
        raise _unsupported("n", f"this server returns one choice per request, got n={req.n}; "
                           "send n separate requests (with different seeds) instead")
    for name in ("presence_penalty", "frequency_penalty"):
        value = getattr(req, name)
        if value not in (None, 0, 0.0):
            raise _unsupported(name, f"is not supported by this server (got {value}); leave it out or send 0")
    if req.logit_bias:
        raise _unsupported("logit_bias", "is not supported by this server; leave it out")
    if req.stream_options is not None:
        if not req.stream:
            raise HTTPError(400, "stream_options: only allowed with stream=true", param="stream_options")
        extra = set(req.stream_options) - {"include_usage"}
        if extra or not isinstance(req.stream_options.get("include_usage", False), bool):
            raise HTTPError(400, "stream_options: only {\"include_usage\": true|false} is supported",
                            param="stream_options")


def _stops(stop: str | list[str] | None) -> tuple[str, ...]:
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    if len(stops) > MAX_STOPS:
        raise HTTPError(400, f"stop: at most {MAX_STOPS} stop sequences, got {len(stops)}", param="stop")
    for s in stops:
        if not 1 <= len(s) <= MAX_STOP_CHARS:
            raise HTTPError(400, f"stop: each stop sequence needs 1 to {MAX_STOP_CHARS} characters, got {s!r}",
                            param="stop")
    return tuple(stops)


def _max_tokens(value: int | None, default: int, limit: int, param: str = "max_tokens") -> int:
    n = default if value is None else value
    if n < 1:
        raise HTTPError(400, f"{param}: must be >= 1, got {n}", param=param)
    if n > limit:
        raise HTTPError(400, f"{param}: {n} is above this server's limit of {limit}; ask for fewer tokens "
                        "(or restart the server with a larger --max-new-tokens-limit)", param=param)
    return n


def _text_of(message: ChatMessage, i: int) -> str:
    content = message.content
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for part in content:
        if part.get("type") != "text":
            raise _unsupported(f"messages.{i}.content", "only text parts ({\"type\": \"text\", \"text\": ...}) "
                               f"are supported, got type {part.get('type')!r}")
        if not isinstance(part.get("text"), str):
            raise HTTPError(400, f"messages.{i}.content: a text part needs a string \"text\"",
                            param=f"messages.{i}.content")
        parts.append(part["text"])
    return "".join(parts)


def chat_prompt(messages: list[ChatMessage]) -> str:
    """The documented template: one "Role: text" line per message, then "Assistant:" to continue."""
    if not messages:
        raise HTTPError(400, "messages: must hold at least one message", param="messages")
    lines = []
    for i, m in enumerate(messages):
        role = ROLE_NAMES.get(m.role)
        if role is None:
            raise _unsupported(f"messages.{i}.role", f"role {m.role!r} is not supported; use system, "
                               "developer, user or assistant")
        lines.append(f"{role}: {_text_of(m, i)}\n")
    return "".join(lines) + "Assistant:"


# --- text shown to the client ---------------------------------------------------------------------------
class VisibleText:
    """The part of a growing completion a client may see: text stops before a stop string.

    While the text ends with the beginning of a stop string, that tail is held back (it may turn
    into the stop); it is released as soon as it cannot. ``lstrip`` drops leading whitespace (chat).
    """

    def __init__(self, stops: tuple[str, ...], lstrip: bool = False) -> None:
        self.stops, self.lstrip = stops, lstrip
        self.raw = ""  # everything generated so far
        self.sent = 0  # characters of the visible text already handed out

    def _stop_at(self) -> int | None:
        """Where the first complete stop string starts (None when there is none yet)."""
        cuts = [at for s in self.stops if (at := self.raw.find(s)) >= 0]
        return min(cuts) if cuts else None

    def _held(self) -> int:
        """Length of the longest tail of the text that begins some stop string."""
        held = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.raw)), held, -1):
                if self.raw.endswith(s[:k]):
                    held = k
                    break
        return held

    def _take(self, end: int) -> str:
        visible = self.raw[:end]
        visible = visible.lstrip() if self.lstrip else visible
        new, self.sent = visible[self.sent :], len(visible)
        return new

    def feed(self, delta: str) -> str:
        """Add generated text; return what became visible."""
        self.raw += delta
        at = self._stop_at()
        return self._take(at if at is not None else len(self.raw) - self._held())

    def finish(self) -> str:
        """The generation ended: return the rest, up to the first stop string."""
        at = self._stop_at()
        return self._take(at if at is not None else len(self.raw))

    @property
    def text(self) -> str:
        """Everything handed out so far."""
        visible = self.raw.lstrip() if self.lstrip else self.raw
        return visible[: self.sent]


# --- routes ---------------------------------------------------------------------------------------------
def _sse(data: dict | str) -> str:
    return f"data: {data if isinstance(data, str) else json.dumps(data)}\n\n"


def add_openai_routes(app: FastAPI, runner: Runner, settings: ServeSettings, health: Callable[[], str | None]) -> None:
    """Register the OpenAI-compatible endpoints on ``app``."""
    served = settings.model_name
    model_card = {"id": served, "object": "model", "created": CREATED, "owned_by": "minigpt"}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        return {"object": "list", "data": [model_card]}

    @app.get("/v1/models/{model_id:path}")
    async def get_model(model_id: str) -> dict[str, Any]:
        if model_id != served:
            raise HTTPError(404, f"The model '{model_id}' does not exist; this server serves '{served}'",
                            param="model", code="model_not_found")
        return model_card

    async def parse(request: Request, cls: type[_Options], example: str) -> Any:
        payload = await read_json(request, settings.max_body_bytes, example)
        try:
            req = cls.model_validate(payload)
        except ValidationError as e:
            raise _validation_error(e) from e
        _common_checks(req, served)
        problem = health()
        if problem is not None:
            raise HTTPError(503, f"the model cannot generate: {problem}", code="model_unavailable")
        return req

    async def respond(request: Request, job: Job, *, kind: Literal["text_completion", "chat.completion"],
                      prompt_tokens: int, visible: VisibleText, stream: bool, include_usage: bool,
                      echo: str = "") -> Response:
        rid = ("cmpl-" if kind == "text_completion" else "chatcmpl-") + secrets.token_hex(12)
        created = int(time.time())

        def usage() -> dict[str, int]:
            done = len(job.out_ids)
            return {"prompt_tokens": prompt_tokens, "completion_tokens": done, "total_tokens": prompt_tokens + done}

        def finish_reason() -> str:
            return "stop" if job.finish_reason == "stop" else "length"

        if not stream:
            await runner.wait(job, request)
            visible.raw = job.text
            text = visible.finish()
            if kind == "text_completion":
                choice = {"index": 0, "text": echo + text, "logprobs": None, "finish_reason": finish_reason()}
            else:
                choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                          "logprobs": None, "finish_reason": finish_reason()}
            return JSONResponse({"id": rid, "object": kind, "created": created, "model": served,
                                 "choices": [choice], "usage": usage()})

        chunk_kind = kind if kind == "text_completion" else "chat.completion.chunk"

        def chunk(text: str | None, reason: str | None = None, role: bool = False) -> str:
            if kind == "text_completion":
                choice = {"index": 0, "text": text or "", "logprobs": None, "finish_reason": reason}
            else:
                delta: dict[str, Any] = {}
                if role:
                    delta["role"] = "assistant"
                if text is not None:
                    delta["content"] = text
                choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": reason}
            body = {"id": rid, "object": chunk_kind, "created": created, "model": served, "choices": [choice]}
            if include_usage:
                body["usage"] = None
            return _sse(body)

        async def events() -> AsyncIterator[str]:
            if kind == "chat.completion":
                yield chunk("", role=True)
            elif echo:
                yield chunk(echo)
            async with contextlib.aclosing(runner.follow(job, request, stream=True)) as stream_events:
                async for event in stream_events:
                    if event[0] == "token":
                        new = visible.feed(event[2])
                        if new:
                            yield chunk(new)
                    elif event[0] == "done":
                        rest = visible.finish()
                        if rest:
                            yield chunk(rest)
                        yield chunk(None, finish_reason())
                        if include_usage:
                            yield _sse({"id": rid, "object": chunk_kind, "created": created, "model": served,
                                        "choices": [], "usage": usage()})
                        yield _sse("[DONE]")
                    else:
                        yield _sse({"error": {"message": event[1], "type": "server_error", "param": None,
                                              "code": "generation_failed"}})
                        yield _sse("[DONE]")

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        """OpenAI's legacy completions: continue ``prompt``."""
        example = json.dumps({"model": served, "prompt": "ROMEO:"})
        req: CompletionRequest = await parse(request, CompletionRequest, example)
        if req.best_of not in (None, 1):
            raise _unsupported("best_of", f"only best_of=1 is supported, got {req.best_of}")
        if req.logprobs is not None:
            raise _unsupported("logprobs", "is not supported by this server; leave it out")
        if req.suffix:
            raise _unsupported("suffix", "is not supported by this server (no infilling); leave it out")
        prompt: Any = req.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(x, str) for x in prompt):
            if len(prompt) != 1:
                raise _unsupported("prompt", f"one prompt per request, got {len(prompt)}; send them separately")
            prompt = prompt[0]
        if isinstance(prompt, str):
            ids = runner.encode(prompt)
            text = prompt
        else:  # token ids
            vocab = runner.tokenizer.vocab_size
            if not prompt or not all(isinstance(t, int) and 0 <= t < vocab for t in prompt):
                raise HTTPError(400, f"prompt: token ids must be a non-empty list of integers in [0, {vocab})",
                                param="prompt")
            ids, text = list(prompt), runner.tokenizer.decode(list(prompt))
        n = _max_tokens(req.max_tokens, 16, settings.max_new_tokens_limit)
        stops = _stops(req.stop)
        job = runner.start(ids, n, _sampling(req), stops)
        include_usage = bool(req.stream and (req.stream_options or {}).get("include_usage"))
        return await respond(request, job, kind="text_completion", prompt_tokens=len(ids),
                             visible=VisibleText(stops), stream=bool(req.stream), include_usage=include_usage,
                             echo=text if req.echo else "")

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        """OpenAI's chat completions through the documented template."""
        example = json.dumps({"model": served, "messages": [{"role": "user", "content": "Hi"}]})
        req: ChatRequest = await parse(request, ChatRequest, example)
        if req.logprobs or req.top_logprobs is not None:
            raise _unsupported("logprobs", "is not supported by this server; leave it out")
        if req.tools or req.functions or req.tool_choice not in (None, "none"):
            raise _unsupported("tools", "tool calls are not supported by this server; leave them out")
        if req.response_format not in (None, {"type": "text"}):
            raise _unsupported("response_format", "only {\"type\": \"text\"} is supported")
        if req.max_tokens is not None and req.max_completion_tokens is not None:
            raise HTTPError(400, "max_tokens: give max_tokens or max_completion_tokens, not both", param="max_tokens")
        param = "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
        n = _max_tokens(req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens,
                        settings.default_max_new_tokens, settings.max_new_tokens_limit, param)
        prompt = chat_prompt(req.messages)
        ids = runner.encode(prompt, param="messages", where="the chat prompt (messages in the chat template)")
        stops = (*_stops(req.stop), CHAT_STOP)
        job = runner.start(ids, n, _sampling(req), stops)
        include_usage = bool(req.stream and (req.stream_options or {}).get("include_usage"))
        return await respond(request, job, kind="chat.completion", prompt_tokens=len(ids),
                             visible=VisibleText(stops, lstrip=True), stream=bool(req.stream),
                             include_usage=include_usage)
