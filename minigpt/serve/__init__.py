"""Serving a trained model over HTTP: ``minigpt serve --checkpoint PATH``.

The pieces, one per module, so each can be read (and tested) alone:

- :mod:`minigpt.serve.engine`: a bounded request queue and one worker thread that decodes
  compatible requests together (dynamic batching with the KV cache);
- :mod:`minigpt.serve.cache`: an LRU cache for deterministic requests (greedy, or a fixed seed);
- :mod:`minigpt.serve.metrics`: Prometheus counters, gauges and histograms;
- :mod:`minigpt.serve.app`: the FastAPI app (``create_app(model, tokenizer, settings)``) and the
  playground page in ``static/playground.html``;
- :mod:`minigpt.serve.openai_api`: the OpenAI-compatible endpoints and the chat template;
- :mod:`minigpt.serve.core`: what both APIs share (errors, JSON bodies, following a job);
- :mod:`minigpt.serve.server`: the uvicorn server with read timeouts and a connection cap;
- :mod:`minigpt.serve.settings`: ``ServeSettings``, the limits every other module reads.

Imports point one way: this package's ``__init__`` (the facade and the command line) imports its
modules, and no module imports the package ``__init__``.

``minigpt serve`` checks every option before it loads anything (one line naming the flag, exit
status 2), refuses a checkpoint that cannot generate, and prints one line once it listens:
``minigpt serve: listening on http://127.0.0.1:8000/ (model best)``.

This module stays light (no FastAPI import), so ``minigpt --help`` works without the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from .settings import _LIMITS, API_KEY_ENV, ServeSettings, _api_key_problem

__all__ = ["ServeSettings", "create_app", "load_for_serving", "settings_from_args", "add_cli", "API_KEY_ENV"]

def create_app(model: Any, tokenizer: Any, settings: ServeSettings | None = None, **kwargs: Any) -> Any:
    """The FastAPI app serving ``model``; see :func:`minigpt.serve.app.create_app`."""
    from .app import create_app as _create_app

    return _create_app(model, tokenizer, settings, **kwargs)


def load_for_serving(checkpoint: str | os.PathLike, device: str = "cpu") -> tuple[Any, Any, dict[str, Any]]:
    """(model, tokenizer, info dict) from a checkpoint folder, with a clear error when it cannot serve text."""
    from minigpt.checkpoint import load_checkpoint

    model, info = load_checkpoint(checkpoint, device=device)
    if info.tokenizer is None:
        raise ValueError(
            f"{checkpoint} has no tokenizer saved with it, so the server cannot turn text into ids; "
            "re-save it with save_checkpoint(..., tokenizer=tok)"
        )
    if not hasattr(model, "config") or not hasattr(model.config, "block_size"):
        raise ValueError(f"{info.model_class} is not a language model with a block_size; serve a GPT checkpoint")
    return model, info.tokenizer, {"path": str(info.path), "step": info.step, "model_class": info.model_class}


def settings_from_args(args: argparse.Namespace, model_name: str = "minigpt") -> ServeSettings:
    """ServeSettings from ``minigpt serve`` arguments; the API key falls back to $MINIGPT_API_KEY."""
    key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    return ServeSettings(
        max_new_tokens_limit=args.max_new_tokens_limit,
        default_max_new_tokens=min(64, args.max_new_tokens_limit),
        max_body_bytes=args.max_body_bytes,
        max_queue=args.max_queue,
        max_batch_size=1 if args.no_batching else args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        cache_size=0 if args.no_cache else args.cache_size,
        api_key=key,
        model_name=model_name,
        device=args.device,
        read_timeout_s=getattr(args, "read_timeout", ServeSettings.read_timeout_s),
        keep_alive_s=getattr(args, "keep_alive", ServeSettings.keep_alive_s),
        max_connections=getattr(args, "max_connections", ServeSettings.max_connections),
    )


class _OptionError(Exception):
    """A bad option value: one line naming the flag, exit status 2."""


def _fail(message: str) -> int:
    print(f"minigpt serve: error: {message}", file=sys.stderr, flush=True)
    return 2


def _check_options(args: argparse.Namespace) -> None:
    """What argparse types cannot check alone: the device, the API key, related limits."""
    from minigpt.device import get_device

    try:
        get_device(args.device)
    except ValueError as e:
        raise _OptionError(f"--device {args.device}: {e}") from None
    if args.api_key is not None:
        problem = _api_key_problem(args.api_key)
        if problem:
            raise _OptionError(f"--api-key {problem}")
    elif os.environ.get(API_KEY_ENV) is not None:
        problem = _api_key_problem(os.environ[API_KEY_ENV])
        if problem:
            raise _OptionError(f"${API_KEY_ENV} {problem}")


def _resolve_checkpoint(path: str) -> str:
    """An output folder means its best/ (else ckpt/) checkpoint, as for ``minigpt generate``."""
    from minigpt.checkpoint import resolve_checkpoint

    return str(resolve_checkpoint(path))


def _run_cli(args: argparse.Namespace) -> int:
    from minigpt._extras import require_installed

    require_installed("fastapi", "uvicorn", "pydantic", "prometheus_client", feature="minigpt serve")
    try:
        _check_options(args)
    except _OptionError as e:
        return _fail(str(e))
    import torch

    from .app import create_app as _create_app
    from .engine import probe_model
    from .server import bind, build_server

    if args.threads is not None:
        # One decoding thread owns the model; small models gain nothing from intra-op threads, and
        # threads spinning against the HTTP loop (and each other on a busy machine) cost a lot.
        torch.set_num_threads(args.threads)
    try:
        model, tokenizer, info = load_for_serving(_resolve_checkpoint(args.checkpoint), device=args.device)
    except Exception as e:  # a missing, damaged or unsuitable checkpoint: one line, not a traceback
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        return _fail(f"--checkpoint {args.checkpoint}: {e}")
    problem = probe_model(model, int(tokenizer.vocab_size))
    if problem is not None:
        return _fail(f"--checkpoint {args.checkpoint}: {problem}")
    # the model id (OpenAI's "model") is the name the user gave: "demo" for --checkpoint out/demo
    name = os.path.basename(os.path.abspath(os.path.expanduser(args.checkpoint))) or "minigpt"
    settings = settings_from_args(args, model_name=name)
    app = _create_app(model, tokenizer, settings, checkpoint_info=info)
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(f"warning: serving on {args.host} without an API key; anyone who can reach it can use it", flush=True)
    try:
        sock = bind(args.host, args.port)
    except OSError as e:
        print(f"minigpt serve: error: cannot listen on {args.host}:{args.port} ({e.strerror or e}); "
              "pick another --port or --host", file=sys.stderr, flush=True)
        return 1
    server = build_server(app, settings, log_level=args.log_level,
                          announce=f"minigpt serve: listening on {{url}} (model {settings.model_name})")
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return 0


def _number(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a finite ``kind`` (int or float) in [low, high], or one clear error."""

    def parse(text: str) -> Any:
        name = "a whole number" if kind is int else "a number"
        try:
            value = kind(text)
        except ValueError:
            shown = text if len(text) <= 20 else f"{text[:12]}... ({len(text)} characters)"
            raise argparse.ArgumentTypeError(f"expected {name} in [{low:g}, {high:g}], got {shown!r}") from None
        if not math.isfinite(value) or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {name} in [{low:g}, {high:g}], got {text!r}")
        return value

    parse.__name__ = kind.__name__  # argparse names the type in some messages
    return parse


def _one_line_errors(parser: argparse.ArgumentParser) -> None:
    """argparse prints the whole usage before an error; ``minigpt serve`` prints the error alone."""

    def error(message: str) -> NoReturn:
        parser.exit(2, f"minigpt serve: error: {message} (see minigpt serve --help)\n")

    parser.error = error  # type: ignore[method-assign]


_EXAMPLES = """examples:
  minigpt serve --checkpoint out/demo               # playground at http://127.0.0.1:8000/
  minigpt serve --checkpoint out/demo --host 0.0.0.0 --api-key "$(openssl rand -hex 16)"
  curl -s 127.0.0.1:8000/v1/generate -H 'Content-Type: application/json' -d '{"prompt": "ROMEO:"}'
  # Python: OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="-").completions.create(model="demo", prompt="Hi")
"""


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on the main CLI's subparsers; the handler is ``args.func(args)``."""
    d = ServeSettings()
    lim = _LIMITS
    p = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over HTTP: /v1/generate, OpenAI-compatible /v1/*, /metrics and a playground",
        description="Serve a checkpoint with FastAPI + uvicorn. Binds 127.0.0.1 unless told otherwise. "
        "Also speaks OpenAI's API: OpenAI(base_url='http://127.0.0.1:8000/v1', api_key=...).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=_EXAMPLES,
    )
    _one_line_errors(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint folder, or a train --out-dir (uses its best/)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=_number(int, 0, 65535), default=8000, help="TCP port (0: any free port)")
    p.add_argument("--api-key", default=None,
                   help=f"require this key on every endpoint but /healthz (default: ${API_KEY_ENV} if set)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N, mps or auto")
    p.add_argument("--max-new-tokens-limit", type=_number(int, *lim["max_new_tokens_limit"]),
                   default=d.max_new_tokens_limit)
    p.add_argument("--max-body-bytes", type=_number(int, *lim["max_body_bytes"]), default=d.max_body_bytes)
    p.add_argument("--max-queue", type=_number(int, *lim["max_queue"]), default=d.max_queue,
                   help="waiting requests before 503")
    p.add_argument("--max-batch-size", type=_number(int, *lim["max_batch_size"]), default=d.max_batch_size)
    p.add_argument("--batch-wait-ms", type=_number(float, *lim["batch_wait_ms"]), default=d.batch_wait_ms)
    p.add_argument("--cache-size", type=_number(int, *lim["cache_size"]), default=d.cache_size)
    p.add_argument("--no-batching", action="store_true", help="decode one request at a time")
    p.add_argument("--no-cache", action="store_true", help="turn the response cache off")
    p.add_argument("--threads", type=_number(int, 1, 1024), default=1,
                   help="torch intra-op threads for decoding (default 1; raise it for large models)")
    p.add_argument("--read-timeout", type=_number(float, *lim["read_timeout_s"]), default=d.read_timeout_s,
                   help="seconds a client has to send a whole request (default %(default)s)")
    p.add_argument("--keep-alive", type=_number(float, *lim["keep_alive_s"]), default=d.keep_alive_s,
                   help="seconds an idle keep-alive connection stays open (default %(default)s)")
    p.add_argument("--max-connections", type=_number(int, *lim["max_connections"]), default=d.max_connections,
                   help="open connections before new requests get 503 (default %(default)s)")
    p.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    p.set_defaults(func=_run_cli)
    return p

