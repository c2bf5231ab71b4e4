"""Checkers of notebook 15: each passes the reference answer, fails plausible wrong answers with a message that
names the mistake, and reports stubs."""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pytest
from _exercise_cases import checker_tests, stub  # noqa: F401

from minigpt.exercises.nb15 import check_lru_cache, check_parse_sse, check_percentile, check_post_with_retry


# ---- 15.1 SSE parsing
def parse_sse_ref(text):  # the notebook's solution
    events = []
    for block in text.split("\n\n")[:-1]:
        event, data = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            field, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
        if not data:
            continue
        if data == ["[DONE]"]:
            break
        events.append((event, json.loads("\n".join(data))))
    return events


def sse_with(**changes):
    """The reference with one rule broken."""
    def parse(text):
        events = []
        blocks = text.split("\n\n")
        blocks = [b for b in blocks if b] if changes.get("keep_partial") else blocks[:-1]
        for block in blocks:
            event, data = "message", []
            for line in block.split("\n"):
                if line.startswith(":") and not changes.get("no_comments"):
                    continue
                if changes.get("needs_space"):
                    if line.startswith("event: "):
                        event = line[7:]
                    elif line.startswith("data: "):
                        data.append(line[6:])
                    continue
                field, _, value = line.partition(":")
                value = value[1:] if value.startswith(" ") else value
                if field == "event":
                    event = value
                elif field == "data":
                    data = [value] if changes.get("last_line_only") else data + [value]
                elif changes.get("all_fields_are_data") and field:
                    data.append(value)
            if not data and not changes.get("no_comments"):
                continue
            if data == ["[DONE]"] and not changes.get("no_done"):
                break
            events.append((event, json.loads("\n".join(data))))
        return events
    return parse


def sse_ignores_event_names(text):
    return [("message", d) for _, d in parse_sse_ref(text)]


def sse_splits_on_lines(text):  # treats every data line as an event and keeps the raw string
    return [("message", line[6:]) for line in text.split("\n") if line.startswith("data: ")]


def sse_keeps_trailing_empty(text):
    return parse_sse_ref(text) + ([("message", {})] if text == "" else [])


def sse_sticky_event(text):  # an 'event:' name carries over into the following blocks
    events, event = [], "message"
    for block in text.split("\n\n")[:-1]:
        data = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data and data != ["[DONE]"]:
            events.append((event, json.loads("\n".join(data))))
    return events


SSE_MUTANTS = {
    "ignores_event_names": (sse_ignores_event_names, r"event names"),
    "raw_strings_per_line": (sse_splits_on_lines, r"not the raw string|json.loads"),
    "event_for_empty_body": (sse_keeps_trailing_empty, r"empty body"),
    "event_name_sticks": (sse_sticky_event, r"only that block"),
    "comments_not_skipped": (sse_with(no_comments=True), r"comments"),
    "last_data_line_only": (sse_with(last_line_only=True), r"several 'data:' lines"),
    "needs_space_after_colon": (sse_with(needs_space=True), r"space after 'data:' is optional"),
    "id_lines_as_data": (sse_with(all_fields_are_data=True), r"id:, retry:"),
    "done_marker_parsed": (sse_with(no_done=True), r"\[DONE\]"),
    "parses_partial_block": (sse_with(keep_partial=True), r"still arriving"),
}


# ---- 15.2 percentile
def percentile_ref(values, q):
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def percentile_numpy(values, q):
    return float(np.percentile(values, q))


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


def percentile_lower(values, q):
    xs = sorted(values)
    return xs[int((len(xs) - 1) * q / 100)]


def percentile_past_end(values, q):  # hi = lo + 1 without the min
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100
    lo = int(pos)
    return xs[lo] + (xs[lo + 1] - xs[lo]) * (pos - lo) if pos > lo else xs[lo] + 0 * xs[lo + 1]


def percentile_sorts_in_place(values, q):
    values.sort()
    return percentile_ref(values, q)


def percentile_fraction(values, q):  # q treated as a fraction in [0, 1]
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def percentile_mean(values, q):
    return sum(values) / len(values)


PERCENTILE_MUTANTS = {
    "unsorted": (percentile_unsorted, r"sort the values first"),
    "nearest": (percentile_nearest, r"nearest value"),
    "n_not_n_minus_1": (percentile_n_not_n_minus_1, r"\(n - 1\) \* q / 100, not n \* q / 100"),
    "value_below": (percentile_lower, r"at or below the position"),
    "reads_past_end": (percentile_past_end, r"past the end|last index"),
    "sorts_callers_list": (percentile_sorts_in_place, r"reordered the caller's list"),
    "q_as_fraction": (percentile_fraction, r"percentage"),
    "mean": (percentile_mean, r"that is the mean"),
}


# ---- 15.3 LRU
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
        self.data[key] = value  # an existing key keeps its old position
        while len(self.data) > self.capacity:
            self.data.popitem(last=False)


class LRUEvictsNewest(LRURef):
    def put(self, key, value):
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) > self.capacity:
            self.data.popitem(last=True)


class LRUEvictsBeforeUpdate(LRURef):  # makes room even when the key is already there
    def put(self, key, value):
        if len(self.data) >= self.capacity:
            self.data.popitem(last=False)
        self.data[key] = value
        self.data.move_to_end(key)


class LRUOneShort(LRURef):  # evicts while len >= capacity
    def put(self, key, value):
        self.data[key] = value
        self.data.move_to_end(key)
        while len(self.data) >= self.capacity:
            self.data.popitem(last=False)


class LRUKeyError(LRURef):
    def get(self, key):
        self.data.move_to_end(key)
        return self.data[key]


class LRUShared:  # the dict is a class attribute: every cache shares it
    data = OrderedDict()

    def __init__(self, capacity):
        self.capacity = capacity

    get = LRURef.get
    put = LRURef.put


LRU_MUTANTS = {
    "fifo_reads_do_not_refresh": (LRUFifo, r"a get counts as a use"),
    "never_evicts": (LRUNoEvict, r"holds three entries|never hold more"),
    "put_does_not_refresh": (LRUPutNoRefresh, r"updating a key with put"),
    "evicts_newest": (LRUEvictsNewest, r"NEWEST"),
    "evicts_on_update": (LRUEvictsBeforeUpdate, r"nothing may be evicted"),
    "holds_capacity_minus_one": (LRUOneShort, r"len > capacity, not >=|kept only"),
    "missing_key_raises": (LRUKeyError, r"KeyError"),
    "shared_class_dict": (LRUShared, r"class attribute"),
}


# ---- 15.4 retry
def retry_ref(send, body, max_tries, sleep):
    wait = 0.1
    for attempt in range(max_tries):
        status, data = send(body)
        if status != 503 or attempt == max_tries - 1:
            return status, data
        sleep(wait)
        wait *= 2
    return status, data


def retry_on(should_retry, *, first=0.1, factor=2.0, tries=lambda m: m, sleep_last=False, keep_first=False):
    def retry(send, body, max_tries, sleep):
        wait, first_reply = first, None
        for attempt in range(tries(max_tries)):
            status, data = send(body)
            first_reply = first_reply or (status, data)
            last = attempt == tries(max_tries) - 1
            if not should_retry(status) or (last and not sleep_last):
                return (status, first_reply[1]) if keep_first else (status, data)
            sleep(wait)
            wait *= factor
        return (status, first_reply[1]) if keep_first else (status, data)
    return retry


def retry_raises(send, body, max_tries, sleep):
    wait = 0.1
    for attempt in range(max_tries):
        status, data = send(body)
        if status != 503:
            return status, data
        if attempt < max_tries - 1:
            sleep(wait)
            wait *= 2
    raise RuntimeError("server busy")


RETRY_MUTANTS = {
    "retries_every_5xx": (retry_on(lambda s: s >= 500), r"retry ONLY 503"),
    "retries_every_error": (retry_on(lambda s: s != 200), r"retry ONLY 503|not a 'busy' answer"),
    "retries_429_too": (retry_on(lambda s: s in (429, 503)), r"429 .*not a 'busy' answer"),
    "fixed_wait": (retry_on(lambda s: s == 503, factor=1.0), r"must double"),
    "starts_at_0_2": (retry_on(lambda s: s == 503, first=0.2), r"doubled before the first sleep"),
    "sleeps_after_last": (retry_on(lambda s: s == 503, sleep_last=True), r"waited after the last try"),
    "one_try_too_many": (retry_on(lambda s: s == 503, tries=lambda m: m + 1), r"1 \+ 4 retries"),
    "one_try_too_few": (retry_on(lambda s: s == 503, tries=lambda m: m - 1), r"stopped after 3|first try counts"),
    "returns_first_response": (retry_on(lambda s: s == 503, keep_first=True), r"response of the last try|LAST"),
    "raises_when_busy": (retry_raises, r"Do not raise"),
}


CASES = [
    (check_parse_sse, parse_sse_ref, SSE_MUTANTS),
    (check_percentile, percentile_ref, PERCENTILE_MUTANTS),
    (check_lru_cache, LRURef, LRU_MUTANTS),
    (check_post_with_retry, retry_ref, RETRY_MUTANTS),
]


def test_other_correct_answers_pass():
    assert check_percentile(percentile_numpy).passed


def test_percentile_reference_agrees_with_numpy():  # the checker's definition is numpy's default
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 17):
        xs = rng.random(n).tolist()
        for q in (0, 25, 50, 95, 100):
            assert percentile_ref(xs, q) == pytest.approx(float(np.percentile(xs, q)))


test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)
