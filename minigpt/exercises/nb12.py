"""Checkers for notebook 12 (serving a model over HTTP).

The references are written here from the definitions (the SSE wire format, numpy's percentile,
least-recently-used eviction, retry on 503 only), not taken from :mod:`minigpt.serve`.
"""

from __future__ import annotations

import json

from ._core import checker, expect

__all__ = ["check_parse_sse", "check_percentile", "check_lru_cache", "check_post_with_retry"]


@checker("12.1 parse server-sent events")
def check_parse_sse(fn) -> None:
    """fn(text) -> list of (event, data dict) for every complete 'event:/data:' block."""
    cases = [
        ('data: {"token": "a"}\n\n', [("message", {"token": "a"})]),
        ('data: {"token": "a"}\n\ndata: {"token": "b"}\n\n',
         [("message", {"token": "a"}), ("message", {"token": "b"})]),
        ('data: {"token": "x"}\n\nevent: done\ndata: {"text": "x"}\n\n',
         [("message", {"token": "x"}), ("done", {"text": "x"})]),
        ('event: error\ndata: {"error": "bad"}\n\n', [("error", {"error": "bad"})]),
        ('data: {"token": "\\n"}\n\n', [("message", {"token": "\n"})]),
        ("", []),
    ]
    for text, want in cases:
        got = fn(text)
        expect(isinstance(got, list), f"return a list of (event, data) pairs, got {type(got).__name__}")
        got = [tuple(x) for x in got]
        if got != want:
            names_got = [e for e, _ in got]
            names_want = [e for e, _ in want]
            expect(names_got == names_want or len(got) != len(want),
                   f"for {text!r} the event names should be {names_want}, got {names_got}: a block without an "
                   "'event:' line is a plain 'message'; 'event: done' names the block it is in")
            expect(len(got) == len(want),
                   f"for {text!r} expected {len(want)} event(s), got {len(got)}: every block ends with a blank "
                   "line ('\\n\\n'), and an empty body has no events")
            expect(False, f"for {text!r} expected {want}, got {got}: parse the JSON after 'data: ' with json.loads")
    _ = json  # the reference data above is what json.loads gives


def _percentile(values: list[float], q: float) -> float:
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@checker("12.2 latency percentile")
def check_percentile(fn) -> None:
    """fn(values, q) -> the q-th percentile with linear interpolation (numpy.percentile's default)."""
    cases = [([1.0, 2.0, 3.0, 4.0], 50), ([5.0, 1.0, 4.0, 2.0, 3.0], 50), ([0.1, 0.2, 0.9, 0.3, 5.0], 95),
             ([3.0], 95), ([10.0, 20.0], 25), ([7.0, 1.0, 3.0], 0), ([7.0, 1.0, 3.0], 100)]
    for values, q in cases:
        got = fn(list(values), q)
        want = _percentile(values, q)
        if abs(got - want) > 1e-9:
            expect(fn(sorted(values), q) != want or values == sorted(values),
                   f"percentile({values}, {q}) should be {want}, got {got}; it is right for sorted input, so sort "
                   "the values first")
            expect(False, f"percentile({values}, {q}) should be {want}, got {got}. Position (n - 1) * q / 100 "
                   "in the sorted values; between two values, interpolate linearly")


@checker("12.3 LRU cache")
def check_lru_cache(cls) -> None:
    """cls(capacity) with get(key) -> value or None and put(key, value), evicting the least recently used."""
    c = cls(2)
    expect(c.get("a") is None, "get on an empty cache should return None")
    c.put("a", 1)
    c.put("b", 2)
    expect(c.get("a") == 1 and c.get("b") == 2, "put('a', 1) then get('a') should give 1")
    expect(c.get("a") == 1, "get('a') should give 1")  # order now: b (oldest), a (newest)
    c.put("c", 3)
    expect(c.get("a") == 1,
           "'a' was just read, so it is the most recently used and must survive; evict the least recently USED "
           "entry (reads count), not the first inserted one")
    expect(c.get("b") is None, "with capacity 2, adding 'c' must evict 'b', the least recently used entry")
    expect(c.get("c") == 3, "'c' should be in the cache")
    c.put("a", 10)  # order now: c (oldest), a -- an update counts as a use
    c.put("d", 4)  # evicts c
    expect(c.get("a") is not None, "updating a key with put also makes it the most recently used, so adding 'd' "
           "must evict 'c', not 'a'")
    expect(c.get("a") == 10, "put on an existing key should replace its value")
    expect(c.get("c") is None and c.get("d") == 4, "adding 'd' to a full cache should evict 'c'")
    big = cls(3)
    for i in range(10):
        big.put(i, i)
    expect([big.get(i) for i in range(10)] == [None] * 7 + [7, 8, 9], "a cache must never hold more than capacity")


@checker("12.4 retry on 503")
def check_post_with_retry(fn) -> None:
    """fn(send, body, max_tries, sleep) -> (status, data): retry only 503s, waiting 0.1, 0.2, 0.4 ... s."""

    def scripted(statuses):
        calls = []

        def send(body):
            calls.append(body)
            status = statuses[min(len(calls) - 1, len(statuses) - 1)]
            return status, {"n": len(calls)}

        return send, calls

    waits: list[float] = []
    send, calls = scripted([503, 503, 200])
    got = fn(send, {"prompt": "a"}, 5, waits.append)
    expect(tuple(got) == (200, {"n": 3}),
           f"after two 503s the third try succeeds: expected (200, {{'n': 3}}), got {got}")
    expect(calls == [{"prompt": "a"}] * 3, "send the same body on every try")
    expect(waits == [0.1, 0.2], f"wait 0.1 s then 0.2 s (doubling) between tries, got {waits}")

    waits.clear()
    send, calls = scripted([422])
    got = fn(send, {"prompt": "a"}, 5, waits.append)
    expect(len(calls) == 1 and tuple(got)[0] == 422,
           f"a 422 (bad request) will fail the same way every time: return it at once; you sent it {len(calls)} times")

    waits.clear()
    send, calls = scripted([503])
    got = fn(send, {"prompt": "a"}, 4, waits.append)
    expect(len(calls) == 4, f"with max_tries=4 and a server that stays busy, try exactly 4 times, got {len(calls)}")
    expect(tuple(got)[0] == 503, "when every try is refused, return the last 503 so the caller can report it")
    expect(waits == [0.1, 0.2, 0.4], f"no wait after the last try: expected [0.1, 0.2, 0.4], got {waits}")
