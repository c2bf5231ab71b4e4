"""Checkers of notebook 10: each passes the reference answer, fails plausible wrong answers, and reports stubs."""

import math
from collections import Counter

from _exercise_cases import checker_tests

from minigpt.exercises.nb10 import (
    check_bits_per_byte,
    check_count_pairs,
    check_decode,
    check_encode_chunk,
    check_merge,
    check_merge_update,
)


# ---- 10.1 count pairs (the notebook's solution)
def count_pairs(words):
    counts = Counter()
    for word, freq in words.items():
        for pair in zip(word, word[1:]):
            counts[pair] += freq
    return counts


def count_once(words):
    return Counter(p for w in words for p in zip(w, w[1:]))


def count_no_overlap(words):
    counts = Counter()
    for w, f in words.items():
        i = 0
        while i < len(w) - 1:
            counts[(w[i], w[i + 1])] += f
            i += 2 if w[i] == w[i + 1] else 1  # "a pair cannot overlap itself"
    return counts


def count_without_last(words):
    counts = Counter()
    for w, f in words.items():
        for i in range(len(w) - 2):  # one short
            counts[(w[i], w[i + 1])] += f
    return counts


def count_across_words(words):
    stream = [s for w, f in words.items() for _ in range(f) for s in w]
    return Counter(zip(stream, stream[1:]))


def count_unordered(words):
    counts = Counter()
    for w, f in words.items():
        for a, b in zip(w, w[1:]):
            counts[(min(a, b), max(a, b))] += f
    return counts


def count_singles(words):
    return Counter(s for w, f in words.items() for s in w for _ in range(f))


COUNT_MUTANTS = {
    "ignores the word frequencies": (count_once, r"frequency"),
    "overlapping pairs counted once": (count_no_overlap, r"occurs twice"),
    "misses the last pair": (count_without_last, r"last pair"),
    "counts across word boundaries": (count_across_words, r"inside each word"),
    "unordered pairs": (count_unordered, r"different pairs"),
    "counts symbols, not pairs": (count_singles, r"keys must be pairs"),
}


# ---- 10.2 apply one merge
def merge(symbols, pair, new_id):
    out, i = [], 0
    while i < len(symbols):
        if i + 1 < len(symbols) and symbols[i] == pair[0] and symbols[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def merge_no_skip(symbols, pair, new_id):
    return [new_id if i + 1 < len(symbols) and (s, symbols[i + 1]) == pair else s for i, s in enumerate(symbols)]


def merge_from_right(symbols, pair, new_id):
    out, i = [], len(symbols) - 1
    while i >= 0:
        if i > 0 and (symbols[i - 1], symbols[i]) == pair:
            out.append(new_id)
            i -= 2
        else:
            out.append(symbols[i])
            i -= 1
    return out[::-1]


def merge_drops_tail(symbols, pair, new_id):
    out, i = [], 0
    while i < len(symbols) - 1:
        if (symbols[i], symbols[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(symbols[i])
            i += 1
    return out


def merge_first_only(symbols, pair, new_id):
    for i in range(len(symbols) - 1):
        if (symbols[i], symbols[i + 1]) == pair:
            return list(symbols[:i]) + [new_id] + list(symbols[i + 2:])
    return list(symbols)


def merge_in_place(symbols, pair, new_id):
    i = 0
    while i < len(symbols) - 1:
        if (symbols[i], symbols[i + 1]) == pair:
            symbols[i : i + 2] = [new_id]
        i += 1
    return symbols


def merge_both_orders(symbols, pair, new_id):
    return merge(merge(symbols, pair, new_id), pair[::-1], new_id)


MERGE_MUTANTS = {
    "overlapping pairs merged twice (aaa)": (merge_no_skip, r"middle 1 can belong to one merged pair"),
    "merges from the right": (merge_from_right, r"from the right"),
    "drops the last symbol": (merge_drops_tail, r"last symbol went missing"),
    "first occurrence only": (merge_first_only, r"only the first occurrence"),
    "changes its input": (merge_in_place, r"changed the list it was given"),
    "also merges (b, a)": (merge_both_orders, r"reversed pair"),
}


# ---- 10.3 incremental count update
def merge_update(words, freqs, counts, where, pair, new_id):
    for i in where.pop(pair, ()):
        old = words[i]
        new = merge(old, pair, new_id)
        if new == old:  # a stale entry: the word lost the pair in an earlier merge
            continue
        for p in zip(old, old[1:]):
            counts[p] -= freqs[i]
        for p in zip(new, new[1:]):
            counts[p] += freqs[i]
            where[p].add(i)
        words[i] = new
    counts.pop(pair, None)


def update_unweighted(words, freqs, counts, where, pair, new_id):
    merge_update(words, [1] * len(freqs), counts, where, pair, new_id)


def update_forgets_neighbours(words, freqs, counts, where, pair, new_id):
    for i in where.pop(pair, ()):
        new = merge(words[i], pair, new_id)
        for p in zip(new, new[1:]):
            if new_id in p:
                counts[p] += freqs[i]
                where[p].add(i)
        words[i] = new
    counts.pop(pair, None)


def update_forgets_new_pairs(words, freqs, counts, where, pair, new_id):
    for i in where.pop(pair, ()):
        old, new = words[i], merge(words[i], pair, new_id)
        for p in zip(old, old[1:]):
            counts[p] -= freqs[i]
        for p in zip(new, new[1:]):
            if new_id not in p:
                counts[p] += freqs[i]
        words[i] = new


def update_forgets_where(words, freqs, counts, where, pair, new_id):
    for i in list(where.get(pair, ())):
        old, new = words[i], merge(words[i], pair, new_id)
        for p in zip(old, old[1:]):
            counts[p] -= freqs[i]
        for p in zip(new, new[1:]):
            counts[p] += freqs[i]
        words[i] = new


def update_recounts_everything(words, freqs, counts, where, pair, new_id):
    counts.clear()
    for i, w in enumerate(words):
        words[i] = merge(w, pair, new_id)
        for p in zip(words[i], words[i][1:]):
            counts[p] += freqs[i]
            where[p].add(i)


def update_forgets_to_store(words, freqs, counts, where, pair, new_id):
    for i in where.pop(pair, ()):
        old, new = words[i], merge(words[i], pair, new_id)
        for p in zip(old, old[1:]):
            counts[p] -= freqs[i]
        for p in zip(new, new[1:]):
            counts[p] += freqs[i]
            where[p].add(i)


def update_per_occurrence(words, freqs, counts, where, pair, new_id):
    """Patches the neighbours around each match but treats (1, 1, 1) as two matches."""
    for i in where.pop(pair, ()):
        w, f = words[i], freqs[i]
        for j in range(len(w) - 1):
            if (w[j], w[j + 1]) == pair:
                counts[pair] -= f
                if j > 0:
                    counts[(w[j - 1], w[j])] -= f
                    counts[(w[j - 1], new_id)] += f
                    where[(w[j - 1], new_id)].add(i)
                if j + 2 < len(w):
                    counts[(w[j + 1], w[j + 2])] -= f
                    counts[(new_id, w[j + 2])] += f
                    where[(new_id, w[j + 2])].add(i)
        words[i] = merge(w, pair, new_id)


UPDATE_MUTANTS = {
    "moves counts by 1, not the frequency": (update_unweighted, r"moved by 1 per word"),
    "forgets the neighbouring pairs": (update_forgets_neighbours, r"NEIGHBOURING pairs"),
    "forgets the new pairs": (update_forgets_new_pairs, r"new pairs that contain the merged token"),
    "does not record where new pairs occur": (update_forgets_where, r"where\[.*\] does not list word"),
    "recounts every word": (update_recounts_everything, r"read words that do not contain the pair"),
    "does not store the merged word": (update_forgets_to_store, r"still holds its old symbols"),
    "patches each occurrence, overlaps double-counted": (update_per_occurrence, r"full recount"),
}


# ---- 10.4 encode a chunk
def encode_chunk(symbols, merges):
    rank = {pair: r for r, pair in enumerate(merges)}
    ids = list(symbols)
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, math.inf))
        if pair not in rank:
            break
        ids = merge(ids, pair, merges[pair])
    return ids


def encode_by_frequency(symbols, merges):
    ids = list(symbols)
    while True:
        pairs = Counter(p for p in zip(ids, ids[1:]) if p in merges)
        if not pairs:
            return ids
        pair = pairs.most_common(1)[0][0]
        ids = merge(ids, pair, merges[pair])


def encode_leftmost(symbols, merges):
    ids = list(symbols)
    while True:
        pair = next((p for p in zip(ids, ids[1:]) if p in merges), None)
        if pair is None:
            return ids
        ids = merge(ids, pair, merges[pair])


def encode_latest_first(symbols, merges):
    rank = {pair: r for r, pair in enumerate(merges)}
    ids = list(symbols)
    while True:
        present = [p for p in zip(ids, ids[1:]) if p in rank]
        if not present:
            return ids
        pair = max(present, key=rank.__getitem__)
        ids = merge(ids, pair, merges[pair])


def encode_one_pass(symbols, merges):
    ids = list(symbols)
    for pair in [p for p in merges if p in set(zip(symbols, symbols[1:]))]:
        ids = merge(ids, pair, merges[pair])
    return ids


def encode_by_new_id_desc(symbols, merges):
    ids = list(symbols)
    while True:
        present = [p for p in zip(ids, ids[1:]) if p in merges]
        if not present:
            return ids
        pair = max(present, key=merges.__getitem__)
        ids = merge(ids, pair, merges[pair])


ENCODE_MUTANTS = {
    "ranks merges by frequency in the chunk": (encode_by_frequency, r"ORDER they were learned"),
    "leftmost pair first": (encode_leftmost, r"leftmost pair"),
    "latest merge first": (encode_latest_first, r"most recently learned merge first"),
    "one pass, no repeat": (encode_one_pass, r"stopped too early"),
    "highest new id first": (encode_by_new_id_desc, r"most recently learned merge first"),
    "merges overlaps twice": (lambda s, m: encode_chunk_with(s, m, merge_no_skip), r"everywhere \(left to right\)"),
}


def encode_chunk_with(symbols, merges, merge_fn):
    rank = {pair: r for r, pair in enumerate(merges)}
    ids = list(symbols)
    while len(ids) > 1:
        pair = min(zip(ids, ids[1:]), key=lambda p: rank.get(p, math.inf))
        if pair not in rank:
            break
        ids = merge_fn(ids, pair, merges[pair])
    return ids


# ---- 10.5 decode
def decode(ids, vocab):
    return b"".join(vocab[i] for i in ids).decode("utf-8", errors="replace")


DECODE_MUTANTS = {
    "decodes each token on its own": (lambda ids, v: "".join(v[i].decode("utf-8", errors="replace") for i in ids),
                                      r"each token on its own"),
    "decodes each token, strict": (lambda ids, v: "".join(v[i].decode("utf-8") for i in ids),
                                   r"token by token.*join all the bytes first"),
    "strict UTF-8": (lambda ids, v: b"".join(v[i] for i in ids).decode("utf-8"), r"errors='replace'"),
    "errors=ignore": (lambda ids, v: b"".join(v[i] for i in ids).decode("utf-8", errors="ignore"),
                      r"errors='ignore' silently drops"),
    "latin-1": (lambda ids, v: b"".join(v[i] for i in ids).decode("latin-1"), r"not Latin-1"),
    "str of bytes": (lambda ids, v: str(b"".join(v[i] for i in ids)), r"repr"),
}


# ---- 10.6 bits per byte
def bits_per_byte(mean_loss, n_tokens, text):
    return mean_loss * n_tokens / (len(text.encode("utf-8")) * math.log(2))


BPB_MUTANTS = {
    "bits per token": (lambda loss, n, t: loss / math.log(2), r"bits per TOKEN"),
    "ln instead of log2 (nats per byte)": (lambda loss, n, t: loss * n / len(t.encode()), r"nats per byte"),
    "characters, not bytes": (lambda loss, n, t: loss * n / (len(t) * math.log(2)), r"CHARACTERS"),
    "log10": (lambda loss, n, t: loss * n / (len(t.encode()) * math.log(10)), r"ln 10"),
    "multiplies by ln 2": (lambda loss, n, t: loss * n * math.log(2) / len(t.encode()), r"DIVISION by ln 2"),
    "ratio upside down": (lambda loss, n, t: loss * len(t.encode()) / (n * math.log(2)), r"upside down"),
    "mean loss unchanged": (lambda loss, n, t: loss, r"mean loss itself"),
}


CASES = [
    (check_count_pairs, count_pairs, COUNT_MUTANTS),
    (check_merge, merge, MERGE_MUTANTS),
    (check_merge_update, merge_update, UPDATE_MUTANTS),
    (check_encode_chunk, encode_chunk, ENCODE_MUTANTS),
    (check_decode, decode, DECODE_MUTANTS),
    (check_bits_per_byte, bits_per_byte, BPB_MUTANTS),
]

test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)
