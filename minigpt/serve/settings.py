"""``ServeSettings``: the limits and knobs of one server, checked when they are made.

Every other module of :mod:`minigpt.serve` reads them from here (not from the package), so the
imports inside the package point one way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["API_KEY_ENV", "ServeSettings"]

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
    model_name: str = "minigpt"  # shown by /v1/model, /v1/models (the OpenAI model id) and the playground
    device: str = "cpu"  # where the model runs
    read_timeout_s: float = 10.0  # a connection must send a whole request (headers + body) within this
    keep_alive_s: float = 5.0  # idle keep-alive connections are closed after this
    max_connections: int = 256  # open connections above this get 503

    def __post_init__(self) -> None:
        for name, (low, high) in _LIMITS.items():
            value = getattr(self, name)
            kind = float if name in _FLOATS else int
            if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int) \
                    or not math.isfinite(value) or not low <= value <= high:
                raise ValueError(f"ServeSettings.{name} must be a finite {kind.__name__} in [{low:g}, {high:g}], "
                                 f"got {value!r}")
        if self.default_max_new_tokens > self.max_new_tokens_limit:
            self.default_max_new_tokens = self.max_new_tokens_limit
        if self.api_key is not None:
            problem = _api_key_problem(self.api_key)
            if problem:
                raise ValueError(f"ServeSettings.api_key {problem}")


# (lowest, highest) accepted for each number; the same ranges check the command line's flags.
_LIMITS: dict[str, tuple[float, float]] = {
    "max_new_tokens_limit": (1, 1_000_000), "default_max_new_tokens": (1, 1_000_000),
    "max_body_bytes": (1, 64 * 2**20), "max_queue": (0, 100_000), "max_batch_size": (1, 1024),
    "batch_wait_ms": (0, 10_000), "cache_size": (0, 1_000_000), "read_timeout_s": (0.1, 3600),
    "keep_alive_s": (0.1, 3600), "max_connections": (1, 100_000),
}
_FLOATS = {"batch_wait_ms", "read_timeout_s", "keep_alive_s"}


def _api_key_problem(key: str) -> str | None:
    """Why ``key`` cannot be an API key (None when it can)."""
    if key == "":
        return "is empty: an empty key would let everyone in; give a real key or leave the option out"
    if key != key.strip() or any(ord(c) < 33 or ord(c) > 126 for c in key):
        return "must be printable ASCII without spaces (it travels in an HTTP header)"
    return None
