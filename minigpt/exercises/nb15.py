"""Checkers for notebook 15 (serving a model over HTTP).

The references are written here from the definitions (the SSE wire format, numpy's percentile,
least-recently-used eviction, retry on 503 only), not taken from :mod:`minigpt.serve`. Each checker
tries the situations where the common mistakes show and names the mistake it sees.
"""

from __future__ import annotations

import json
import numbers

from ._core import ExerciseFailed, checker, expect

__all__ = ["check_parse_sse", "check_percentile", "check_lru_cache", "check_post_with_retry"]


# ------------------------------------------------------------------ 15.1 server-sent events


def _parse_sse(text: str) -> list:
    """The SSE rules the exercise uses (a subset of the WHATWG spec, plus OpenAI's [DONE] marker)."""
    events = []
    for block in text.split("\n\n")[:-1]:  # the part after the last blank line has not finished arriving
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue  # a comment (servers send them as keep-alives)
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        if not data:
            continue
        payload = "\n".join(data)
        if payload == "[DONE]":
            break
        events.append((event, json.loads(payload)))
    return events


# (body, what it tests, the message when the answer differs). Ordered so the first failure names the rule.
_SSE_CASES = [
    ('data: {"token": "a"}\n\n', "one block", "a block `data: {...}` followed by a blank line is one 'message' event "
                                              "whose data is the JSON after 'data: ', parsed with json.loads"),
    ('data: {"token": "a"}\n\ndata: {"token": "b"}\n\n', "two blocks",
     "blocks are separated by a blank line ('\\n\\n'): split on it and parse every block"),
    ('data: {"token": "x"}\n\nevent: done\ndata: {"text": "x"}\n\n', "an event name",
     "a block without an 'event:' line is a 'message'; 'event: done' names the block it is in (and only that block)"),
    ('event: error\ndata: {"error": "bad"}\n\ndata: {"token": "a"}\n\n', "an event name, then a plain block",
     "'event: error' names its block and only that block: the next block without an 'event:' line is a 'message'"),
    ('data: {"token": "\\n"}\n\n', "an escaped newline in the JSON", "parse the data with json.loads"),
    ("", "an empty body", "an empty body has no events: return []"),
    (': keep-alive\n\ndata: {"token": "a"}\n\n: ping\n\n', "comment lines",
     "lines starting with ':' are comments (keep-alives): ignore them, and a block with no data line is no event"),
    ('data: {"token": "a",\ndata:  "n": 2}\n\n', "data split over two lines",
     "several 'data:' lines in one block form ONE event: join their values with '\\n', then json.loads"),
    ('data:{"token": "a"}\n\n', "no space after 'data:'",
     "the space after 'data:' is optional: strip one leading space if there is one"),
    ('id: 7\nretry: 1000\ndata: {"token": "a"}\n\n', "id and retry lines",
     "lines with other fields (id:, retry:) carry no data: skip them"),
    ('data: {"token": "a"}\n\ndata: [DONE]\n\n', "the [DONE] marker",
     "'data: [DONE]' (OpenAI's end marker) is not JSON: it ends the stream, return the events before it"),
    ('data: {"token": "a"}\n\ndata: {"tok', "a block still arriving",
     "only complete blocks count: the text after the last blank line is still arriving, ignore it"),
]


@checker("15.1 parse server-sent events")
def check_parse_sse(fn) -> None:
    """fn(text) -> list of (event, data) for every complete block, following the rules the task lists."""
    for text, what, rule in _SSE_CASES:
        want = _parse_sse(text)
        try:
            got = fn(text)
        except (json.JSONDecodeError, ValueError, KeyError, IndexError) as e:
            raise ExerciseFailed(f"{what}: your parser crashed on {text!r} ({type(e).__name__}: {e}). "
                                 f"Rule: {rule}") from e
        expect(isinstance(got, list), f"return a list of (event, data) pairs, got {type(got).__name__}")
        expect(all(isinstance(x, tuple | list) and len(x) == 2 for x in got),
               f"every item must be a pair (event, data), got {got!r}")
        got = [tuple(x) for x in got]
        if got == want:
            continue
        if len(got) == len(want) and [d for _, d in got] == [d for _, d in want]:
            expect(False, f"{what}: the event names should be {[e for e, _ in want]}, got {[e for e, _ in got]}. "
                          f"Rule: {rule}")
        if any(isinstance(d, str) for _, d in got):
            expect(False, f"{what}: the data must be the parsed JSON (a dict), not the raw string: json.loads it")
        expect(False, f"{what}: for {text!r} expected {want}, got {got}. Rule: {rule}")


# ------------------------------------------------------------------ 15.2 percentile


def _percentile(values: list[float], q: float) -> float:
    """The reference: numpy's default (linear interpolation between the closest ranks)."""
    import numpy as np

    return float(np.percentile(values, q))


def _percentile_mistakes(values, q):
    xs, n = sorted(values), len(values)
    pos = (n - 1) * q / 100
    out = [
        (xs[round(pos)], "you took the nearest value; between two neighbours interpolate linearly: "
                         "xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)"),
        (xs[int(pos)], "you took the value at or below the position; interpolate linearly towards the next one"),
        (xs[min(int(pos) + 1, n - 1)], "you took the value above the position; interpolate linearly between the two"),
        (xs[min(int(n * q / 100), n - 1)], "the position is (n - 1) * q / 100, not n * q / 100 (0 at the smallest "
                                           "value, n - 1 at the largest)"),
        (_percentile_at(xs, n * q / 100), "the position is (n - 1) * q / 100, not n * q / 100"),
        (sum(values) / n, "that is the mean; the percentile is read off the sorted values"),
    ]
    return out


def _percentile_at(xs, pos):
    lo = min(int(pos), len(xs) - 1)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


@checker("15.2 latency percentile")
def check_percentile(fn) -> None:
    """fn(values, q) -> the q-th percentile with linear interpolation (numpy.percentile's default)."""
    cases = [([5.0, 1.0, 4.0, 2.0, 3.0], 50), ([0.1, 0.2, 0.9, 0.3, 5.0], 95), ([1.0, 2.0, 3.0, 4.0], 50),
             ([10.0, 40.0, 20.0, 30.0], 90), ([3.0], 95), ([10.0, 20.0], 25), ([7.0, 1.0, 3.0], 0),
             ([7.0, 1.0, 3.0], 100), ([2.0, 9.0, 4.0, 4.0, 8.0, 1.0], 37.5),
             ([7.0, 1.0, 3.0, 5.0, 2.0, 6.0, 4.0], 10)]
    suspects = None  # the mistakes every failing case so far agrees with
    for values, q in cases:
        handed = list(values)
        try:
            got = fn(handed, q)
        except IndexError as e:
            if q == 100:
                raise ExerciseFailed("at q=100 the position (n - 1) * q / 100 is the last index: do not read past the "
                                     "end, hi = min(lo + 1, n - 1)") from e
            raise ExerciseFailed(f"percentile({values}, {q}) read past the end of the list: q is a percentage "
                                 "(0-100), the position is (n - 1) * q / 100") from e
        expect(handed == values, f"your function reordered the caller's list ({values} became {handed}): sort a "
                                 "copy, sorted(values), not values.sort(): a load test keeps its latencies in order")
        expect(isinstance(got, numbers.Real), f"return a number, got {type(got).__name__}")
        want = _percentile(values, q)
        if abs(got - want) <= 1e-9:
            continue
        if values != sorted(values) and abs(fn(sorted(values), q) - want) <= 1e-9:
            expect(False, f"percentile({values}, {q}) should be {want}, got {got}; it is right for sorted input, so "
                          "sort the values first")
        where = f"percentile({values}, {q}) should be {want:.6g}, got {got:.6g}"
        matches = [m for v, m in _percentile_mistakes(values, q) if abs(got - v) <= 1e-9 and abs(v - want) > 1e-9]
        expect(bool(matches), f"{where}. Position (n - 1) * q / 100 in the sorted values; between two values, "
                              "interpolate linearly")
        suspects = matches if suspects is None else [m for m in suspects if m in matches] or matches
        if len(suspects) == 1:
            expect(False, f"{where}: {suspects[0]}")
    if suspects:  # two mistakes explain every failing case: name the first
        expect(False, f"{suspects[0]}")


# ------------------------------------------------------------------ 15.3 LRU cache


@checker("15.3 LRU cache")
def check_lru_cache(cls) -> None:
    """cls(capacity) with get(key) -> value or None and put(key, value), evicting the least recently used."""

    def get(cache, key):
        try:
            return cache.get(key)
        except KeyError as e:
            raise ExerciseFailed(f"get({key!r}) of a missing key must return None, not raise KeyError") from e

    c = cls(2)
    expect(get(c, "a") is None, "get on an empty cache should return None")
    c.put("a", 1)
    c.put("b", 2)
    a, b = get(c, "a"), get(c, "b")
    expect(not (a is None and b == 2), "a cache of capacity 2 lost 'a' after only two puts: it may hold exactly "
                                       "capacity entries (evict while len > capacity, not >=)")
    expect(a == 1 and b == 2, f"put('a', 1), put('b', 2) then get should give 1 and 2, got {a} and {b}")
    other = cls(2)
    expect(get(other, "a") is None, "two caches share their entries: create the dict in __init__ (self.data = "
                                    "OrderedDict()), not as a class attribute")

    # reads count as uses: a, b, read a, add c -> b goes
    c = cls(2)
    c.put("a", 1)
    c.put("b", 2)
    get(c, "a")
    c.put("c", 3)
    a, b, cc = get(c, "a"), get(c, "b"), get(c, "c")
    expect(not (a is None and b == 2), "'a' was just read, so it is the most recently used and must survive; evict "
                                       "the least recently USED entry (a get counts as a use), not the first inserted")
    expect(not (cc is None and a == 1 and b == 2), "you evicted the entry just added, the NEWEST; evict the least "
                                                   "recently used one, at the front (popitem(last=False))")
    expect(not (a == 1 and b == 2 and cc == 3), "a cache of capacity 2 holds three entries: evict when it grows "
                                                "past capacity")
    expect(a == 1 and b is None and cc == 3, f"after put a, put b, get a, put c with capacity 2, expected a=1, "
                                             f"b=None, c=3; got a={a}, b={b}, c={cc}")

    # writes count as uses: a, b, update a, add c -> b goes
    c = cls(2)
    c.put("a", 1)
    c.put("b", 2)
    c.put("a", 10)
    c.put("c", 3)
    a, b, cc = get(c, "a"), get(c, "b"), get(c, "c")
    expect(a is not None, "updating a key with put also makes it the most recently used, so adding 'c' must evict "
                          "'b', not 'a'")
    expect(a == 10, "put on an existing key should replace its value")
    expect(b is None and cc == 3, f"adding 'c' to a full cache should evict 'b'; got b={b}, c={cc}")

    # updating a key of a full cache adds nothing, so nothing is evicted
    c = cls(2)
    c.put("a", 1)
    c.put("b", 2)
    c.put("b", 20)
    expect(get(c, "a") == 1 and get(c, "b") == 20, "updating a key that is already in a full cache adds no entry, "
                                                   "so nothing may be evicted: evict only when the size exceeds "
                                                   "capacity after the put")

    for capacity in (3, 1):
        big = cls(capacity)
        for i in range(10):
            big.put(i, i * i)
        kept = [i for i in range(10) if get(big, i) is not None]
        want = list(range(10 - capacity, 10))
        expect(len(kept) <= capacity, f"a cache of capacity {capacity} held {len(kept)} entries: never hold more "
                                      "than capacity")
        expect(len(kept) == capacity, f"a cache of capacity {capacity} kept only {len(kept)} entries {kept}: it may "
                                      "hold exactly capacity entries (evict while len > capacity, not >=)")
        expect(kept == want and all(get(big, i) == i * i for i in want),
               f"after putting 0..9 into a cache of capacity {capacity} it should hold the last {capacity}: {want}; "
               f"it holds {kept}")


# ------------------------------------------------------------------ 15.4 retry on 503


def _scripted(statuses):
    calls = []

    def send(body):
        calls.append(body)
        status = statuses[min(len(calls) - 1, len(statuses) - 1)]
        return status, {"n": len(calls)}

    return send, calls


@checker("15.4 retry on 503")
def check_post_with_retry(fn) -> None:
    """fn(send, body, max_tries, sleep) -> (status, data): retry only 503s, waiting 0.1, 0.2, 0.4 ... s."""

    def run(statuses, max_tries):
        waits: list[float] = []
        send, calls = _scripted(statuses)
        try:
            got = fn(send, {"prompt": "a"}, max_tries, waits.append)
        except Exception as e:
            if not isinstance(e, ExerciseFailed | NotImplementedError):
                raise ExerciseFailed(f"with the server answering {statuses[:len(statuses)]} your function raised "
                                     f"{type(e).__name__}: {e}. Do not raise: return the last (status, data) so the "
                                     "caller can report it") from e
            raise
        expect(isinstance(got, tuple | list) and len(got) == 2,
               f"return the last (status, data) pair, got {got!r} (server answering {statuses})")
        return tuple(got), calls, waits

    got, calls, waits = run([200], 5)
    expect(got == (200, {"n": 1}) and len(calls) == 1 and waits == [],
           f"a 200 on the first try is returned at once, with no wait: got {got}, {len(calls)} tries, waits {waits}")

    got, calls, waits = run([503, 503, 200], 5)
    expect(calls == [{"prompt": "a"}] * len(calls), "send the same body on every try")
    expect(len(calls) == 3, f"after two 503s the third try succeeds: stop there; you tried {len(calls)} times")
    expect(got == (200, {"n": 3}), f"return the response of the last try, (200, {{'n': 3}}); got {got}")
    if waits == [0.1, 0.1]:
        expect(False, "the wait must double after every 503 (exponential backoff): 0.1 s, then 0.2 s, ...; you "
                      "waited 0.1 s each time")
    if waits == [0.2, 0.4]:
        expect(False, "the first wait is 0.1 s: you doubled before the first sleep")
    expect(waits == [0.1, 0.2], f"wait 0.1 s then 0.2 s (doubling) between tries, through the sleep function you "
                                f"are given; got {waits}")

    for status, name in [(422, "bad request"), (500, "internal server error"), (502, "bad gateway"),
                         (504, "gateway timeout"), (429, "too many requests"), (404, "not found")]:
        got, calls, waits = run([status], 5)
        if status >= 500:
            expect(len(calls) == 1, f"you retried a {status} ({name}): the task is to retry ONLY 503 (the server "
                                    f"says it is busy and will be free soon); a {status} is returned at once. "
                                    "Retrying every 5xx can repeat a request that failed for good, or did half its "
                                    "work")
        expect(len(calls) == 1 and got[0] == status and waits == [],
               f"a {status} ({name}) is not a 'busy' answer: return it at once, without waiting; you sent it "
               f"{len(calls)} times and waited {waits}")

    got, calls, waits = run([503, 500], 5)
    expect(len(calls) == 2 and got == (500, {"n": 2}),
           f"after a 503 the second try got a 500: return that 500 at once; you tried {len(calls)} times, got {got}")

    got, calls, waits = run([503], 4)
    if len(calls) == 3:
        expect(False, "with max_tries=4 a server that stays busy is tried 4 times in all (the first try counts); "
                      "you stopped after 3")
    if len(calls) == 5:
        expect(False, "max_tries=4 is the number of tries in all, the first one included: you tried 5 times "
                      "(1 + 4 retries)")
    expect(len(calls) == 4, f"with max_tries=4 and a server that stays busy, try exactly 4 times, got {len(calls)}")
    expect(got[0] == 503, f"when every try is refused, return the last 503 so the caller can report it; got {got}")
    expect(got == (503, {"n": 4}), f"return the LAST response, (503, {{'n': 4}}), not an earlier one; got {got}")
    if waits == [0.1, 0.2, 0.4, 0.8]:
        expect(False, "you waited after the last try too: no wait after the last one, nothing follows it")
    expect(waits == [0.1, 0.2, 0.4], f"expected waits [0.1, 0.2, 0.4] between the 4 tries, got {waits}")

    got, calls, waits = run([503], 1)
    expect(len(calls) == 1 and got == (503, {"n": 1}) and waits == [],
           f"max_tries=1: one try, no wait, return its 503; got {got} after {len(calls)} tries, waits {waits}")
