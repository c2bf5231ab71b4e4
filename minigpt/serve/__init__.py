"""Serving a trained model over HTTP: ``minigpt serve --checkpoint PATH``.

The pieces, one per module, so each can be read (and tested) alone:

- :mod:`minigpt.serve.engine`: a bounded request queue and one worker thread that decodes
  compatible requests together (dynamic batching with the KV cache);
- :mod:`minigpt.serve.cache`: an LRU cache for deterministic requests (greedy, or a fixed seed);
- :mod:`minigpt.serve.metrics`: Prometheus counters, gauges and histograms;
- :mod:`minigpt.serve.app`: the FastAPI app (``create_app(model, tokenizer, settings)``) and the
  playground page in ``static/playground.html``.

This module stays light (no FastAPI import), so ``minigpt --help`` works without the ``serve`` extra.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["ServeSettings", "create_app", "load_for_serving", "settings_from_args", "add_cli", "main", "API_KEY_ENV"]

API_KEY_ENV = "MINIGPT_API_KEY"


@dataclass
class ServeSettings:
    """Limits and knobs of one server; every limit is a number a client can hit, so it is configurable."""

    max_new_tokens_limit: int = 512  # largest max_new_tokens a request may ask for
    default_max_new_tokens: int = 64  # used when a request does not say
    max_body_bytes: int = 64 * 1024  # larger request bodies get 413
    max_queue: int = 64  # requests waiting for the worker; one more gets 503
    max_batch_size: int = 8  # rows decoded together; 1 turns dynamic batching off
    batch_wait_ms: float = 2.0  # how long the worker waits for more compatible requests before decoding
    cache_size: int = 256  # LRU entries for deterministic requests; 0 turns the cache off
    api_key: str | None = None  # when set, required on every endpoint but /healthz
    model_name: str = "minigpt"  # shown by /v1/model and the playground
    device: str = "cpu"  # where the model runs

    def __post_init__(self) -> None:
        for name in ("max_new_tokens_limit", "default_max_new_tokens", "max_body_bytes", "max_batch_size"):
            if not isinstance(getattr(self, name), int) or getattr(self, name) < 1:
                raise ValueError(f"ServeSettings.{name} must be an integer >= 1, got {getattr(self, name)!r}")
        if self.max_queue < 0 or self.cache_size < 0 or self.batch_wait_ms < 0:
            raise ValueError("ServeSettings.max_queue, cache_size and batch_wait_ms must be >= 0")
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            self.default_max_new_tokens = self.max_new_tokens_limit
        if self.api_key == "":
            self.api_key = None


def create_app(model: Any, tokenizer: Any, settings: ServeSettings | None = None) -> Any:
    """The FastAPI app serving ``model``; see :func:`minigpt.serve.app.create_app`."""
    from .app import create_app as _create_app

    return _create_app(model, tokenizer, settings)


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
    return ServeSettings(
        max_new_tokens_limit=args.max_new_tokens_limit,
        default_max_new_tokens=min(64, args.max_new_tokens_limit),
        max_body_bytes=args.max_body_bytes,
        max_queue=args.max_queue,
        max_batch_size=1 if args.no_batching else args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
        cache_size=0 if args.no_cache else args.cache_size,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        model_name=model_name,
        device=args.device,
    )


def _run_cli(args: argparse.Namespace) -> int:
    from minigpt._extras import require_installed

    require_installed("fastapi", "uvicorn", "pydantic", "prometheus_client", feature="minigpt serve")
    import torch
    import uvicorn

    from .app import create_app as _create_app

    if args.threads is not None:
        # One decoding thread owns the model; small models gain nothing from intra-op threads, and
        # threads spinning against the HTTP loop (and each other on a busy machine) cost a lot.
        torch.set_num_threads(args.threads)
    model, tokenizer, info = load_for_serving(args.checkpoint, device=args.device)
    settings = settings_from_args(args, model_name=os.path.basename(os.path.normpath(info["path"])))
    app = _create_app(model, tokenizer, settings, checkpoint_info=info)
    if args.host not in ("127.0.0.1", "localhost", "::1") and settings.api_key is None:
        print(f"warning: serving on {args.host} without an API key; anyone who can reach it can use it")
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level)
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``serve`` on the main CLI's subparsers; the handler is ``args.func(args)``."""
    d = ServeSettings()
    p = subparsers.add_parser(
        "serve",
        help="serve a checkpoint over HTTP: /v1/generate, /metrics and a playground page at /",
        description="Serve a checkpoint with FastAPI + uvicorn. Binds 127.0.0.1 unless told otherwise.",
    )
    p.add_argument("--checkpoint", required=True, help="checkpoint folder (e.g. out/best)")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None,
                   help=f"require this key on every endpoint but /healthz (default: ${API_KEY_ENV} if set)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or mps")
    p.add_argument("--max-new-tokens-limit", type=int, default=d.max_new_tokens_limit)
    p.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    p.add_argument("--max-queue", type=int, default=d.max_queue, help="waiting requests before 503")
    p.add_argument("--max-batch-size", type=int, default=d.max_batch_size)
    p.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_ms)
    p.add_argument("--cache-size", type=int, default=d.cache_size)
    p.add_argument("--no-batching", action="store_true", help="decode one request at a time")
    p.add_argument("--no-cache", action="store_true", help="turn the response cache off")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads for decoding (default 1; raise it for large models)")
    p.add_argument("--log-level", default="warning")
    p.set_defaults(func=_run_cli)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m minigpt.serve serve --checkpoint ...`` without the main CLI."""
    parser = argparse.ArgumentParser(prog="minigpt")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(argv)
    return args.func(args)
