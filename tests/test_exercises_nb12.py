"""Checkers of notebook 12: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest

from minigpt.exercises import ExerciseFailed
from minigpt.exercises.nb12 import check_lru_cache, check_parse_sse, check_percentile, check_post_with_retry


def stub(*args, **kwargs):
    raise NotImplementedError("HINT")


# ---- 12.1 SSE parsing
def parse_sse_ref(text):
    events = []
    for block in text.split("\n\n")[:-1]:
        event, data = "message", ""
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data += line[6:]
        events.append((event, json.loads(data)))
    return events


def sse_ignores_event_names(text):
    return [("message", d) for _, d in parse_sse_ref(text)]


def sse_splits_on_lines(text):  # treats every data line as an event and keeps the raw string
    return [("message", line[6:]) for line in text.split("\n") if line.startswith("data: ")]


def sse_keeps_trailing_empty(text):
    return parse_sse_ref(text) + ([("message", {})] if text == "" else [])


# ---- 12.2 percentile
def percentile_ref(values, q):
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def percentile_unsorted(values, q):
    pos = (len(values) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def percentile_nearest(values, q):
    xs = sorted(values)
    return xs[round((len(xs) - 1) * q / 100)]


def percentile_n_not_n_minus_1(values, q):
    xs = sorted(values)
    return xs[min(int(len(xs) * q / 100), len(xs) - 1)]


# ---- 12.3 LRU
class LRURef:
    def __init__(self, capacity):
        self.capacity, self.data = capacity, OrderedDict()

    def get(self, key):
        if key not in self.data:
            return None
        self.data.move_to_end(key)
        return self.data[key]

    def put(self, key, value):
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.capacity:
            self.data.popitem(last=False)


class LRUFifo(LRURef):  # reads do not refresh: first in, first out
    def get(self, key):
        return self.data.get(key)


class LRUNoEvict(LRURef):
    def put(self, key, value):
        self.data[key] = value
        self.data.move_to_end(key)


class LRUPutNoRefresh(LRURef):
    def put(self, key, value):
        if key not in self.data:
            self.data[key] = value
        else:
            self.data[key] = value  # keeps its old position
        while len(self.data) > self.capacity:
            self.data.popitem(last=False)


class LRUStub:
    def __init__(self, capacity):
        raise NotImplementedError("HINT")


# ---- 12.4 retry
def retry_ref(send, body, max_tries, sleep):
    wait = 0.1
    for attempt in range(max_tries):
        status, data = send(body)
        if status != 503 or attempt == max_tries - 1:
            return status, data
        sleep(wait)
        wait *= 2
    return status, data


def retry_all_errors(send, body, max_tries, sleep):
    wait = 0.1
    for attempt in range(max_tries):
        status, data = send(body)
        if status == 200 or attempt == max_tries - 1:
            return status, data
        sleep(wait)
        wait *= 2
    return status, data


def retry_fixed_wait(send, body, max_tries, sleep):
    for attempt in range(max_tries):
        status, data = send(body)
        if status != 503 or attempt == max_tries - 1:
            return status, data
        sleep(0.1)
    return status, data


def retry_sleeps_after_last(send, body, max_tries, sleep):
    wait = 0.1
    for _ in range(max_tries):
        status, data = send(body)
        if status != 503:
            return status, data
        sleep(wait)
        wait *= 2
    return status, data


CASES = [
    (check_parse_sse, parse_sse_ref, [sse_ignores_event_names, sse_splits_on_lines, sse_keeps_trailing_empty]),
    (check_percentile, percentile_ref, [percentile_unsorted, percentile_nearest, percentile_n_not_n_minus_1]),
    (check_lru_cache, LRURef, [LRUFifo, LRUNoEvict, LRUPutNoRefresh]),
    (check_post_with_retry, retry_ref, [retry_all_errors, retry_fixed_wait, retry_sleeps_after_last]),
]


@pytest.mark.parametrize(("check", "ref", "mutants"), CASES, ids=lambda x: getattr(x, "__name__", ""))
def test_checker_passes_reference_and_fails_mutants(check, ref, mutants):
    assert check(ref).status == "passed"
    for mutant in mutants:
        with pytest.raises(ExerciseFailed):
            check(mutant)


@pytest.mark.parametrize("check", [c for c, _, _ in CASES], ids=lambda c: c.__name__)
def test_stub_is_not_done(check):
    answer = LRUStub if check is check_lru_cache else stub
    assert check(answer).status == "not done"


def test_percentile_reference_agrees_with_numpy():  # the checker's definition is numpy's default
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 17):
        xs = rng.random(n).tolist()
        for q in (0, 25, 50, 95, 100):
            assert percentile_ref(xs, q) == pytest.approx(float(np.percentile(xs, q)))
