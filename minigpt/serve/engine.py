"""The request queue and the worker that decodes requests in batches.

One worker thread owns the model: PyTorch runs one forward pass at a time well, and a single owner
means no locks around the weights or the KV cache. HTTP handlers (asyncio) put a :class:`Job` in a
bounded queue and read its events back; the queue answers "full" instead of growing without limit.

Dynamic batching: the worker takes the oldest waiting job and every other waiting job whose prompt
has the same length (up to ``max_batch_size``), and decodes them together, one forward pass per step
for the whole batch with one KV cache. The GPT has no padding mask, so prompts of different lengths
cannot share a pass without changing the answer; equal lengths keep every row exactly what it would
be alone. Sampling is done row by row with each job's own settings and its own seeded generator, so
a seeded request draws the same tokens whether it ran alone or in a batch. A row that ends (length,
stop string, or its client went away) leaves the batch at once: its rows of the KV cache are dropped
and the others continue. A cancelled job (its client left) is dropped between two tokens, so an
abandoned request stops costing compute within one decoding step.

Sampling at the edges (:func:`sample_row`): every temperature > 0 and top_p > 0 gives a finite
distribution. When ``logits / temperature`` would overflow float32 (temperature 1e-300), the logits are
shifted by their maximum first (softmax does not change), so the best token gets probability 1 as
the limit temperature -> 0 says; top_p below ``MIN_TOP_P`` (1e-6) is raised to it, which keeps the most
likely token only, exactly what any smaller positive top_p means for a vocabulary under a million.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from minigpt.generation import NextTokenLogits, sample_next
from minigpt.model import LanguageModel

from .cache import LRUCache
from .metrics import ServeMetrics

__all__ = ["Sampling", "Job", "QueueFull", "BatchingEngine", "sample_row", "probe_model", "MIN_TOP_P"]

log = logging.getLogger(__name__)


MIN_TOP_P = 1e-6  # smaller top_p values keep the same single token and underflow float32 to 0
_TINY = torch.finfo(torch.float32).tiny  # the smallest temperature float32 can divide by


class QueueFull(RuntimeError):
    """The bounded queue has no room; the HTTP layer answers 503."""


@dataclass(frozen=True)
class Sampling:
    """How to pick each next token (hashable: part of the cache key)."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    greedy: bool = False
    seed: int | None = None

    @property
    def deterministic(self) -> bool:
        return self.greedy or self.seed is not None


@dataclass
class Job:
    """One generate request as the worker sees it, plus the channel back to its HTTP handler."""

    ids: list[int]  # prompt token ids (already cropped to the block size)
    max_new_tokens: int
    sampling: Sampling
    stop: tuple[str, ...] = ()
    loop: asyncio.AbstractEventLoop | None = None  # the handler's event loop
    events: asyncio.Queue | None = None  # ("token", id, text_delta) ... then ("done", reason) or ("error", msg)
    cancelled: threading.Event = field(default_factory=threading.Event)
    out_ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None
    cached: bool = False
    created: float = field(default_factory=time.perf_counter)
    generator: torch.Generator | None = None

    @property
    def cache_key(self) -> tuple:
        return (tuple(self.ids), self.max_new_tokens, self.sampling, self.stop)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def emit(self, event: tuple) -> None:
        """Hand an event to the handler's loop from any thread; a closed loop means nobody listens."""
        if self.loop is None or self.events is None:
            return
        try:
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)
        except RuntimeError:  # the loop is closed: the client and its handler are gone
            self.cancelled.set()


def sample_row(logits: torch.Tensor, s: Sampling, generator: torch.Generator | None) -> torch.Tensor:
    """:func:`minigpt.generation.sample_next` for one (1, V) row, finite for any temperature/top_p > 0.

    Ordinary settings go straight to ``sample_next`` (same draws as the library for a given seed);
    only the overflowing edge cases take the shifted path described in the module docstring.
    """
    if s.greedy:
        return sample_next(logits, greedy=True)
    top_p = None if s.top_p is None else max(s.top_p, MIN_TOP_P)
    temperature = s.temperature
    if not bool(torch.isfinite(logits.float() / temperature).all()):
        logits = logits.float()
        logits = logits - logits.amax(dim=-1, keepdim=True)  # best token at 0: (x - max) / t is finite or -inf
        temperature = max(temperature, _TINY)
    return sample_next(logits, temperature=temperature, top_k=s.top_k, top_p=top_p, generator=generator)


def probe_model(model: torch.nn.Module, vocab_size: int) -> str | None:
    """None when ``model`` can continue a text (one next-token pass gives finite logits), else why not."""
    try:
        device = next(model.parameters()).device
        idx = torch.zeros((1, 1), dtype=torch.long, device=device)
        if not isinstance(model, LanguageModel):
            raise TypeError("it has no config.block_size (not a language model)")
        with torch.no_grad():
            logits = NextTokenLogits(model, use_cache=True)(idx, None)
    except Exception as e:  # any failure here means every request would fail the same way
        return (f"{type(model).__name__} cannot continue a text: a next-token pass failed "
                f"({type(e).__name__}: {str(e)[:200]}); serve a decoder-only checkpoint (GPT)")
    if tuple(logits.shape) != (1, vocab_size):
        return (f"{type(model).__name__} gives next-token logits of shape {tuple(logits.shape)}, "
                f"expected (1, {vocab_size}) for the tokenizer's vocabulary; the checkpoint does not match")
    if not bool(torch.isfinite(logits).all()):
        return f"{type(model).__name__} gives non-finite logits (NaN or inf weights?); the checkpoint is damaged"
    return None


class BatchingEngine:
    """A bounded queue of :class:`Job` and one worker thread that decodes them in batches."""

    def __init__(self, model: torch.nn.Module, tokenizer: Any, settings: Any, metrics: ServeMetrics) -> None:
        if not isinstance(model, LanguageModel):
            raise TypeError(f"{type(model).__name__} does not follow the minigpt model contract (config.block_size, "
                            "model(idx) -> (logits, loss)); see minigpt.model.LanguageModel")
        self.model = model
        self.tokenizer = tokenizer
        self.settings = settings
        self.metrics = metrics
        self.cache = LRUCache(settings.cache_size)
        self.device = next(model.parameters()).device
        self._pending: deque[Job] = deque()
        self._cv = threading.Condition()
        self._paused = False
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.active = 0  # rows being decoded now
        self.problem: str | None = None  # why the last decoding run failed (cleared by the next success)

    # --- life cycle -------------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker (idempotent)."""
        with self._cv:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping = False
            self._thread = threading.Thread(target=self._work, name="minigpt-serve-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the worker after the current step; waiting jobs get an error event."""
        with self._cv:
            self._stopping = True
            pending, self._pending = list(self._pending), deque()
            self._cv.notify_all()
        for job in pending:
            job.finish_reason = "error"
            job.emit(("error", "the server is shutting down"))
        self._update_queue_gauge()
        if self._thread is not None:
            self._thread.join(timeout)
        self._thread = None

    def pause(self) -> None:
        """Stop taking new batches (running ones finish); jobs keep queueing up to the limit."""
        with self._cv:
            self._paused = True

    def resume(self) -> None:
        with self._cv:
            self._paused = False
            self._cv.notify_all()

    @property
    def queue_depth(self) -> int:
        return len(self._pending)

    # --- called by the HTTP layer ------------------------------------------------------------------
    def lookup(self, job: Job) -> bool:
        """Fill ``job`` from the cache when it is deterministic and was seen before; True on a hit."""
        if self.cache.capacity == 0 or not job.sampling.deterministic:
            return False
        hit = self.cache.get(job.cache_key)
        if hit is None:
            self.metrics.cache_misses.inc()
        else:
            self.metrics.cache_hits.inc()
            job.out_ids, job.text, job.finish_reason = list(hit[0]), hit[1], hit[2]
            job.cached = True
        self.metrics.cache_hit_rate.set(self.cache.hit_rate)
        return hit is not None

    def submit(self, job: Job) -> None:
        """Queue a job, or raise :class:`QueueFull` when ``max_queue`` jobs are already waiting."""
        seed = job.sampling.seed if job.sampling.seed is not None else secrets.randbits(62)
        job.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.start()
        with self._cv:
            if len(self._pending) >= self.settings.max_queue:
                raise QueueFull(
                    f"the server is busy: {len(self._pending)} requests are already waiting "
                    f"(limit {self.settings.max_queue}); retry in a moment"
                )
            self._pending.append(job)
            self._cv.notify_all()
        self._update_queue_gauge()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job from the queue, or from its batch at the next step."""
        if job.done:
            return
        job.cancelled.set()
        with self._cv:
            try:
                self._pending.remove(job)
                removed = True
            except ValueError:
                removed = False
        if removed:
            job.finish_reason = "cancelled"
            self.metrics.cancelled.inc()
            self._update_queue_gauge()

    # --- the worker ---------------------------------------------------------------------------------
    def _update_queue_gauge(self) -> None:
        self.metrics.queue_depth.set(len(self._pending))

    def _take_batch(self) -> list[Job]:
        s = self.settings
        with self._cv:
            while not self._stopping and (self._paused or not self._pending):
                self._cv.wait(timeout=0.5)
            if self._stopping:
                return []
            head_len = len(self._pending[0].ids)

            def compatible() -> list[Job]:
                return [j for j in self._pending if len(j.ids) == head_len][: s.max_batch_size]

            # Wait a moment for more requests of the same shape: a tiny delay buys a bigger batch.
            deadline = time.monotonic() + s.batch_wait_ms / 1000
            while s.max_batch_size > 1 and len(compatible()) < s.max_batch_size and not self._stopping:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cv.wait(timeout=remaining)
            if not self._pending:  # everything was cancelled while we waited
                return []
            head_len = len(self._pending[0].ids)
            batch = compatible()
            for job in batch:
                self._pending.remove(job)
        self._update_queue_gauge()
        return batch

    def _work(self) -> None:
        torch.set_grad_enabled(False)  # grad mode is per thread
        while not self._stopping:
            batch = self._take_batch()
            if not batch:
                continue
            try:
                self._decode(batch)
                self.problem = None
            except Exception as e:  # a bug or an odd model must not kill the worker
                log.exception("generation failed")
                self.problem = f"generation failed: {type(e).__name__}: {str(e)[:200]}"
                for job in batch:
                    if not job.done:
                        job.finish_reason = "error"
                        job.emit(("error", f"generation failed: {type(e).__name__}: {e}"))
            finally:
                self.active = 0
                self.metrics.active.set(0)

    def _push(self, job: Job, token: int) -> str | None:
        """Record one new token, send its text, and say why the job ends now (or None)."""
        job.out_ids.append(token)
        full = self.tokenizer.decode(job.out_ids)
        if full.endswith("\ufffd"):  # half of a multi-byte character (BPE): wait for the rest
            delta = ""
        else:
            delta, before = full[len(job.text) :], len(job.text)
            job.text = full
            for s in job.stop:
                at = job.text.find(s, max(0, before - len(s) + 1))
                if at >= 0:
                    job.text = job.text[: at + len(s)]
                    delta = job.text[before:]
                    job.emit(("token", token, delta))
                    return "stop"
        job.emit(("token", token, delta))
        if len(job.out_ids) >= job.max_new_tokens:
            return "length"
        return None

    def _finish(self, job: Job, reason: str) -> None:
        job.finish_reason = reason
        if reason == "cancelled":
            self.metrics.cancelled.inc()
            return
        if job.sampling.deterministic:
            self.cache.put(job.cache_key, (tuple(job.out_ids), job.text, reason))
        job.emit(("done", reason))

    def _decode(self, batch: list[Job]) -> None:
        rows = batch
        self.metrics.batch_size.observe(len(rows))
        self.active = len(rows)
        self.metrics.active.set(self.active)
        idx = torch.tensor([j.ids for j in rows], dtype=torch.long, device=self.device)  # (B, T)
        next_logits = NextTokenLogits(self.model, use_cache=True)
        n_new = None
        while rows:
            if self._stopping:  # shutting down: tell the clients instead of leaving them hanging
                for job in rows:
                    job.finish_reason = "error"
                    job.emit(("error", "the server is shutting down"))
                return
            keep = [i for i, j in enumerate(rows) if not j.cancelled.is_set()]
            if len(keep) < len(rows):
                for j in rows:
                    if j.cancelled.is_set():
                        self._finish(j, "cancelled")
                rows, idx = self._select(rows, idx, keep, next_logits)
                if not rows:
                    break
            logits = next_logits(idx, n_new)  # (B, V), the KV cache grows by one position per step
            nxt = torch.cat(
                [sample_row(logits[i : i + 1], j.sampling, j.generator) for i, j in enumerate(rows)]
            )  # (B, 1)
            idx = torch.cat([idx, nxt], dim=1)  # (B, T + 1)
            n_new = 1
            self.metrics.tokens.inc(len(rows))
            ended = {}
            for i, (job, tok) in enumerate(zip(rows, nxt[:, 0].tolist())):
                reason = self._push(job, int(tok))
                if reason is not None:
                    ended[i] = reason
            if ended:
                for i, reason in ended.items():
                    self._finish(rows[i], reason)
                keep = [i for i in range(len(rows)) if i not in ended]
                rows, idx = self._select(rows, idx, keep, next_logits)

    def _select(self, rows: list[Job], idx: torch.Tensor, keep: list[int], next_logits: Any):
        """Keep only the rows in ``keep``: the batch, the context and the KV cache shrink together."""
        if len(keep) == len(rows):
            return rows, idx
        index = torch.tensor(keep, dtype=torch.long, device=idx.device)
        if next_logits.cache is not None and keep:
            next_logits.cache.reorder(index)
        self.active = len(keep)
        self.metrics.active.set(self.active)
        return [rows[i] for i in keep], idx.index_select(0, index)
