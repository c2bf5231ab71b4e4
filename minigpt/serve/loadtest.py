"""A bounded load test: a fixed number of requests at a fixed concurrency, every outcome counted.

Used by ``bench/load_test.py`` and notebook 15. Latency is measured per request on the client
(send to last byte); throughput is over the wall time of the whole run. Nothing is retried, and a
request is never dropped silently: each ends as ``ok``, ``rejected`` (503, the queue was full) or
``failed`` (anything else, with the reason kept), and the three add up to the number sent.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["LoadResult", "make_requests", "run_load", "percentile", "markdown_table"]


@dataclass
class LoadResult:
    """What one run measured."""

    label: str
    concurrency: int
    sent: int
    ok: int = 0
    rejected: int = 0  # 503: queue full
    failed: int = 0  # other statuses or transport errors
    wall_s: float = 0.0
    tokens: int = 0  # completion tokens of the ok requests
    cached: int = 0  # ok requests answered from the server's cache
    latencies_s: list[float] = field(default_factory=list)  # of the ok requests
    errors: list[str] = field(default_factory=list)  # first few failure reasons

    @property
    def p50_s(self) -> float:
        return percentile(self.latencies_s, 50)

    @property
    def p95_s(self) -> float:
        return percentile(self.latencies_s, 95)

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.wall_s if self.wall_s else 0.0

    @property
    def requests_per_s(self) -> float:
        return self.ok / self.wall_s if self.wall_s else 0.0

    def summary(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("latencies_s")
        d.update(p50_s=self.p50_s, p95_s=self.p95_s, tokens_per_s=self.tokens_per_s,
                 requests_per_s=self.requests_per_s)
        return d


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    if not values:
        return math.nan
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def make_requests(prompts: list[str], n: int, max_new_tokens: int, *, distinct: int = 8,
                  seed_offset: int = 0) -> list[dict[str, Any]]:
    """``n`` seeded sampling requests cycling through ``distinct`` (prompt, seed) pairs.

    Seeded, so each is deterministic and cacheable: with the cache on, all but ``distinct`` of them
    can be hits. Give equal-length prompts to let the server batch them.
    """
    return [
        {"prompt": prompts[i % distinct % len(prompts)], "max_new_tokens": max_new_tokens, "temperature": 0.8,
         "top_k": 40, "seed": seed_offset + i % distinct}
        for i in range(n)
    ]


async def _run(url: str, requests: list[dict[str, Any]], concurrency: int, label: str, timeout: float,
               headers: dict[str, str] | None) -> LoadResult:
    import httpx

    result = LoadResult(label=label, concurrency=concurrency, sent=len(requests))
    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def one(client: httpx.AsyncClient, body: dict[str, Any]) -> None:
        async with sem:
            t0 = time.perf_counter()
            try:
                r = await client.post("/v1/generate", json=body)
            except httpx.HTTPError as e:
                result.failed += 1
                result.errors.append(f"{type(e).__name__}: {e}"[:200])
                return
            if r.status_code == 200:
                data = r.json()
                result.ok += 1
                result.tokens += data["completion_tokens"]
                result.cached += bool(data.get("cached"))
                result.latencies_s.append(time.perf_counter() - t0)
            elif r.status_code == 503:
                result.rejected += 1
            else:
                result.failed += 1
                result.errors.append(f"HTTP {r.status_code}: {r.text[:200]}")

    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits, headers=headers) as client:
        t0 = time.perf_counter()
        await asyncio.gather(*(one(client, body) for body in requests))
        result.wall_s = time.perf_counter() - t0
    result.errors = result.errors[:5]
    assert result.ok + result.rejected + result.failed == result.sent  # nothing lost
    return result


def run_load(url: str, requests: list[dict[str, Any]], concurrency: int, *, label: str = "",
             timeout: float = 300.0, headers: dict[str, str] | None = None) -> LoadResult:
    """Send ``requests`` to ``url`` with at most ``concurrency`` in flight; blocks until all are answered.

    Works from a script and from a notebook (whose event loop is already running: the run then
    goes to a worker thread with its own loop).
    """
    coro = _run(url, requests, concurrency, label, timeout, headers)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def markdown_table(results: list[LoadResult]) -> str:
    """One row per run: throughput, latency percentiles and every outcome counted."""
    lines = [
        "| setting | concurrency | requests | ok | 503 | failed | cache hits | tokens/s | requests/s | "
        "p50 latency (s) | p95 latency (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.label} | {r.concurrency} | {r.sent} | {r.ok} | {r.rejected} | {r.failed} | {r.cached} | "
            f"{r.tokens_per_s:.0f} | {r.requests_per_s:.2f} | {r.p50_s:.3f} | {r.p95_s:.3f} |"
        )
    return "\n".join(lines)
