"""Checkers for notebook 10 (tokenizers from scratch).

Symbols are plain ints: ids 0..255 stand for bytes at the start, every merge adds one id. A *word* (a chunk of
the pre-tokenizer) is a sequence of symbols; training counts each distinct word once with its frequency.
References are written independently of the way the notebook writes each step: pair counts by a recount with
``collections.Counter``, encoding by applying every merge in the order it was learned (not by picking the
lowest-ranked pair), decoding by joining the bytes and decoding once with ``errors="replace"`` (what GPT-2's
``decode`` and Hugging Face's ByteLevel decoder do), bits per byte by the formula.
"""

from __future__ import annotations

import copy
import math
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping

from ._core import ExerciseFailed, checker, expect

__all__ = [
    "check_count_pairs",
    "check_merge",
    "check_merge_update",
    "check_encode_chunk",
    "check_decode",
    "check_bits_per_byte",
]

Pair = tuple[int, int]


def _ref_counts(words: Iterable[tuple[Iterable[int], int]]) -> dict[Pair, int]:
    counts: Counter[Pair] = Counter()
    for word, freq in words:
        w = list(word)
        for i in range(len(w) - 1):
            counts[(w[i], w[i + 1])] += freq
    return {p: c for p, c in counts.items() if c}


def _merge_left(word: list[int], pair: Pair, new_id: int) -> list[int]:
    """Left to right, skipping both symbols of a match (the correct rule), written as an index loop."""
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


def _merge_right(word: list[int], pair: Pair, new_id: int) -> list[int]:
    return _merge_left(word[::-1], pair[::-1], new_id)[::-1]


def _merge_no_skip(word: list[int], pair: Pair, new_id: int) -> list[int]:
    """A match replaces its first symbol but the scan moves on by one: (1, 1, 1) -> (new, new, 1)."""
    out = []
    for i, s in enumerate(word):
        out.append(new_id if i + 1 < len(word) and (s, word[i + 1]) == pair else s)
    return out


def _merge_drop_tail(word: list[int], pair: Pair, new_id: int) -> list[int]:
    merged = _merge_left(word, pair, new_id)
    return merged[:-1] if word and (len(word) < 2 or tuple(word[-2:]) != pair or merged[-1] != new_id) else merged


def _merge_first(word: list[int], pair: Pair, new_id: int) -> list[int]:
    for i in range(len(word) - 1):
        if (word[i], word[i + 1]) == pair:
            return word[:i] + [new_id] + word[i + 2 :]
    return list(word)


def _as_counts(got, what: str) -> dict[Pair, int]:
    expect(isinstance(got, Mapping), f"{what} should return a dict {{(a, b): count}}, got {type(got).__name__}")
    bad = [k for k in got if not (isinstance(k, tuple) and len(k) == 2)]
    expect(not bad, f"the keys must be pairs (a, b) of adjacent symbols, got keys like {bad[:3]}")
    return {tuple(k): int(v) for k, v in got.items() if v}  # zero entries may stay or go


def _words(seed: int) -> dict[tuple[int, ...], int]:
    """Words over a small alphabet with repeated symbols, so overlaps such as (1, 1, 1) occur."""
    rng = random.Random(seed)
    words = {(1, 1, 1): 3, (1, 1, 1, 1): 2, (2,): 5, (3, 4, 3, 4): 4, (4, 3): 1, (5, 6, 7): 7}
    while len(words) < 40:
        w = tuple(rng.choice([1, 2, 3, 4, 5]) for _ in range(rng.randint(1, 7)))
        words[w] = rng.randint(1, 9)
    return words


# ---------------------------------------------------------------- 10.1 count pairs


@checker("10.1 count pairs")
def check_count_pairs(count_pairs: Callable) -> None:
    """count_pairs(words: dict[tuple[int, ...], int]) -> dict[(a, b), int]: every adjacent pair of every word,
    counted as often as the word occurs."""
    for seed in (0, 1):
        words = _words(seed)
        got = _as_counts(count_pairs(dict(words)), "count_pairs")
        want = _ref_counts(words.items())
        if got == want:
            continue
        once = _ref_counts((w, 1) for w in words)
        expect(got != once, "every word counts once in your result: add the word's frequency (words[word]), not 1, "
                            "for each of its pairs")
        no_overlap: Counter[Pair] = Counter()
        for w, f in words.items():
            i = 0
            while i < len(w) - 1:
                no_overlap[(w[i], w[i + 1])] += f
                i += 2 if w[i] == w[i + 1] else 1
        expect(got != dict(no_overlap), "in the word (1, 1, 1) the pair (1, 1) occurs twice (positions 0-1 and "
                                        "1-2): count every position, sliding one symbol at a time")
        short = _ref_counts((w[:-1], f) for w, f in words.items())
        expect(got != short, "the last pair of each word is missing: a word of n symbols has n - 1 pairs, "
                             "zip(word, word[1:])")
        extra = sorted(set(got) - set(want))
        expect(not extra, f"your result holds pairs that no word contains, e.g. {extra[:3]}: pairs are counted "
                          "inside each word only; the pre-tokenizer's chunks are never merged across")
        unordered: Counter[Pair] = Counter()
        for (a, b), c in want.items():
            unordered[(min(a, b), max(a, b))] += c
        expect(got != dict(unordered), "(a, b) and (b, a) are different pairs: keep the order of the symbols")
        wrong = sorted(p for p in set(got) | set(want) if got.get(p, 0) != want.get(p, 0))
        p = wrong[0]
        raise ExerciseFailed(f"pair {p}: you counted {got.get(p, 0)}, the words contain it {want.get(p, 0)} times "
                             f"(words and their frequencies: {dict(list(words.items())[:6])} ...)")


# ---------------------------------------------------------------- 10.2 apply one merge


@checker("10.2 apply one merge")
def check_merge(merge: Callable) -> None:
    """merge(symbols: list[int], pair, new_id) -> a new list where every occurrence of pair, scanned left to
    right, is replaced by new_id; the input list is left unchanged."""
    cases = [
        ([1, 1, 1], (1, 1), 9), ([1, 1, 1, 1], (1, 1), 9), ([1, 2, 3, 1, 2], (1, 2), 7),
        ([3, 1, 2, 1, 2, 1], (1, 2), 7),
        ([2, 1, 2, 1], (1, 2), 8), ([4], (4, 4), 9), ([], (1, 2), 9), ([5, 6, 5, 6, 6], (6, 5), 10),
        ([2, 1, 3, 1, 2], (1, 2), 7),
        ([1, 2, 3, 4], (3, 4), 11), ([1, 2, 3, 4, 5], (2, 3), 6),
    ]
    wrong = []
    for word, pair, new_id in cases:
        given = list(word)
        got = merge(given, pair, new_id)
        expect(given == word, f"merge({word}, {pair}, {new_id}) changed the list it was given (now {given}): "
                              "return a new list; the incremental update still needs the old word to subtract its "
                              "pairs")
        expect(isinstance(got, list | tuple), f"merge should return a list of ints, got {type(got).__name__}")
        if list(got) != _merge_left(word, pair, new_id):
            wrong.append((word, pair, new_id, list(got)))
    if not wrong:
        return
    word, pair, new_id, got = wrong[0]
    where = f"merge({word}, {pair}, {new_id}) gave {got}, expected {_merge_left(word, pair, new_id)}"
    variants = [
        (_merge_right, "you merged from the right; scan left to right, so (1, 1, 1) becomes (new, 1)"),
        (_merge_no_skip, "overlapping occurrences: in (1, 1, 1) the middle 1 can belong to one merged pair only; "
                         "after a match skip BOTH symbols (i += 2)"),
        (_merge_drop_tail, "the last symbol went missing; when the loop stops one position early, append the tail"),
        (_merge_first, "only the first occurrence was merged; replace every occurrence"),
        (lambda w, p, n: _merge_left(_merge_left(w, p, n), p[::-1], n),
         "you also merged the reversed pair (b, a); only (a, b) in that order merges"),
    ]
    for variant, message in variants:
        if all(got == variant(list(w), p, n) for w, p, n, got in wrong):
            raise ExerciseFailed(f"{where}: {message}")
    raise ExerciseFailed(where)


# ---------------------------------------------------------------- 10.3 incremental count update


class _Watched(list):
    """A list of words that records which indices the student's code reads (to catch full recounts)."""

    def __init__(self, items):
        super().__init__(items)
        self.seen: set[int] = set()
        self.iterated = False

    def __getitem__(self, i):
        if isinstance(i, int):
            self.seen.add(i % len(self))
        else:
            self.iterated = True
        return super().__getitem__(i)

    def __iter__(self):
        self.iterated = True
        return super().__iter__()


def _state(words: dict[tuple[int, ...], int]):
    syms = [list(w) for w in words]
    freqs = list(words.values())
    counts: defaultdict[Pair, int] = defaultdict(int)
    where: defaultdict[Pair, set[int]] = defaultdict(set)
    for i, w in enumerate(syms):
        for p in zip(w, w[1:], strict=False):
            counts[p] += freqs[i]
            where[p].add(i)
    return syms, freqs, counts, where


def _variant_counts(syms, freqs, counts, pair, new_id, *, weight=True, neighbours=True, new_pairs=True):
    """The counts a merge update would leave with one of its parts missing."""
    out = Counter({p: c for p, c in counts.items() if c})
    for i, w in enumerate(syms):
        merged = _merge_left(w, pair, new_id)
        if merged == w:
            continue
        f = freqs[i] if weight else 1
        old, new = Counter(zip(w, w[1:], strict=False)), Counter(zip(merged, merged[1:], strict=False))
        for p, c in old.items():
            if neighbours or p == pair:
                out[p] -= c * f
        for p, c in new.items():
            if new_pairs or new_id not in p:
                if neighbours or new_id in p:
                    out[p] += c * f
    return {p: c for p, c in out.items() if c and p != pair}  # the merged pair: popped or not, any value


@checker("10.3 incremental count update")
def check_merge_update(merge_update: Callable) -> None:
    """merge_update(words, freqs, counts, where, pair, new_id) -> None, in place: every word i in where[pair]
    is merged (words[i] = the merged list), counts change by freqs[i] for every pair that word loses or gains,
    and where[p] gains i for every pair p the word gains. Words not in where[pair] are not read.

    words: list of lists of ints; freqs: list of ints; counts: defaultdict(int); where: defaultdict(set).
    """
    for seed in (0, 1):
        syms, freqs, counts, where = _state(_words(seed))
        new_id = 100
        for _ in range(8):
            pair = max(counts, key=lambda p: (counts[p], p))
            if counts[pair] <= 0:
                break
            before = (copy.deepcopy(syms), list(freqs), dict(counts))
            allowed = set(where.get(pair, ()))  # may hold words that no longer contain the pair: reading them is fine
            watched = _Watched(copy.deepcopy(syms))
            merge_update(watched, freqs, counts, where, pair, new_id)
            want_words = [_merge_left(w, pair, new_id) for w in before[0]]
            got_words = [list(w) for w in list.__iter__(watched)]
            expect(not watched.iterated and watched.seen <= allowed,
                   f"merge {pair}: your update read words that do not contain the pair (it looked at "
                   f"{'every word' if watched.iterated else sorted(watched.seen - allowed)[:8]}); only the words in "
                   f"where[pair] can change: visit those and nothing else, that is the whole speed-up")
            if got_words != want_words:
                bad = next(i for i in range(len(want_words)) if got_words[i] != want_words[i])
                expect(got_words[bad] != before[0][bad],
                       f"merge {pair}: words[{bad}] still holds its old symbols {before[0][bad]}: store the merged "
                       f"word back, words[i] = merged")
                raise ExerciseFailed(f"merge {pair}: words[{bad}] became {got_words[bad]}, expected "
                                     f"{want_words[bad]} (left to right, a symbol merges once)")
            got = {p: c for p, c in counts.items() if c}
            want = _ref_counts((w, f) for w, f in zip(want_words, freqs, strict=True))
            if got != want:
                args = (before[0], freqs, before[2], pair, new_id)
                rest = {p: c for p, c in got.items() if p != pair}
                expect(rest != _variant_counts(*args, weight=False),
                       f"merge {pair}: counts moved by 1 per word; a word stands for freqs[i] occurrences, so "
                       f"add and subtract freqs[i]")
                expect(rest != _variant_counts(*args, neighbours=False),
                       f"merge {pair}: the counts of the NEIGHBOURING pairs were not updated: where (x, a, b, y) "
                       f"becomes (x, ab, y), the pairs (x, a) and (b, y) are gone and must lose freqs[i]")
                expect(rest != _variant_counts(*args, new_pairs=False),
                       f"merge {pair}: the new pairs that contain the merged token (x, {new_id}) and ({new_id}, y) "
                       f"were not counted")
                wrong = sorted(p for p in set(got) | set(want) if got.get(p, 0) != want.get(p, 0))
                p = wrong[0]
                hint = ("it involves the new token" if new_id in p else "it is a neighbour of the merged pair"
                        if p != pair else "it is the merged pair itself: it no longer occurs anywhere")
                raise ExerciseFailed(f"merge {pair}: counts[{p}] = {got.get(p, 0)}, a full recount gives "
                                     f"{want.get(p, 0)} ({hint}). Subtracting every pair of the old word and "
                                     f"adding every pair of the merged word, each times freqs[i], is always right")
            for i, w in enumerate(want_words):
                for p in zip(w, w[1:], strict=False):
                    expect(i in where.get(p, ()),
                           f"merge {pair}: where[{p}] does not list word {i} ({w}), which contains it; add i to "
                           f"where[p] for every pair the merged word gains, or a later merge of {p} will miss it")
            syms = want_words
            new_id += 1


# ---------------------------------------------------------------- 10.4 encode one chunk


def _ref_encode(symbols: list[int], merges: Mapping[Pair, int]) -> list[int]:
    """Every merge in the order learned, each applied to the whole chunk (independent of the rank search)."""
    out = list(symbols)
    for pair, new_id in merges.items():
        out = _merge_left(out, pair, new_id)
    return out


def _encode_by(symbols: list[int], merges: Mapping[Pair, int], pick: str) -> list[int]:
    """Encodings that pick the next merge by the wrong rule."""
    if pick == "one pass":
        return _one_pass(symbols, merges)
    rank = {p: r for r, p in enumerate(merges)}
    out = list(symbols)
    for _ in range(len(symbols)):
        pairs = [p for p in zip(out, out[1:], strict=False) if p in rank]
        if not pairs:
            break
        c = Counter(pairs)
        if pick == "frequency":  # Counter.most_common: ties go to the pair seen first
            best = c.most_common(1)[0][0]
        elif pick == "frequency, rank ties":
            best = max(pairs, key=lambda p: (c[p], -rank[p]))
        elif pick == "leftmost":
            best = pairs[0]
        else:  # "latest": the most recently learned merge first
            best = max(pairs, key=rank.__getitem__)
        out = _merge_left(out, best, merges[best])
    return out


def _one_pass(symbols: list[int], merges: Mapping[Pair, int]) -> list[int]:
    out = list(symbols)
    pairs = {p for p in zip(out, out[1:], strict=False) if p in merges}
    for pair in [p for p in merges if p in pairs]:
        out = _merge_left(out, pair, merges[pair])
    return out


@checker("10.4 encode with merges")
def check_encode_chunk(encode_chunk: Callable) -> None:
    """encode_chunk(symbols: list[int], merges: dict[(a, b), new_id]) -> list[int]: the ids of one chunk.
    ``merges`` is in the order the merges were learned (its rank), new ids increasing."""
    # (2, 3) was learned before (1, 2); 3 3 3 3 is the most frequent pair of the chunk but learned last
    merges = {(2, 3): 10, (1, 2): 11, (11, 10): 12, (10, 10): 13, (1, 10): 14, (3, 3): 15, (3, 1): 16}
    chunks = [[1, 2, 3], [1, 2, 3, 2, 3], [1, 2, 2, 3], [1, 2, 3, 3, 3, 3, 2, 3], [2, 3, 2, 3, 2, 3],
              [1, 2, 1, 2, 3, 3], [3, 3, 3], [4, 1, 2], [1, 2, 2, 3, 1, 2, 2, 3, 2, 3], [1, 2, 3, 2, 3, 1],
              [2, 3, 1, 2]]
    rng = random.Random(4)
    chunks += [[rng.choice([1, 2, 3, 4]) for _ in range(rng.randint(2, 12))] for _ in range(40)]
    wrong = []
    for chunk in chunks:
        got = encode_chunk(list(chunk), dict(merges))
        expect(isinstance(got, list | tuple), f"encode_chunk should return a list of ids, got {type(got).__name__}")
        if list(got) != _ref_encode(chunk, merges):
            wrong.append((chunk, list(got)))
    if not wrong:
        return
    chunk, got = wrong[0]
    where = f"encode_chunk({chunk}) gave {got}, expected {_ref_encode(chunk, merges)} (merges in learned order: " \
            f"{merges})"
    by_frequency = ("you merged the pair that occurs most often IN THE CHUNK first, as in training; encoding ranks "
                    "merges by the ORDER they were learned: always apply the lowest-ranked pair present")
    variants = [
        ("frequency", by_frequency), ("frequency, rank ties", by_frequency),
        ("latest", "you applied the most recently learned merge first; the lowest rank (earliest) goes first"),
        ("leftmost", "you merged the leftmost pair that has a merge; the pair with the lowest rank goes first, "
                     "wherever it is"),
        ("one pass", "you stopped too early: a merge creates new pairs (with the new id) that may have merges of "
                     "their own; repeat until no adjacent pair is in merges"),
    ]
    for pick, message in variants:
        if all(got == _encode_by(chunk, merges, pick) for chunk, got in wrong):
            raise ExerciseFailed(f"{where}: {message}")
    raise ExerciseFailed(f"{where}: repeat: find the adjacent pair with the lowest rank, merge it everywhere "
                         "(left to right), until no adjacent pair has a merge")


# ---------------------------------------------------------------- 10.5 decode


def _vocab() -> dict[int, bytes]:
    vocab = {i: bytes([i]) for i in range(256)}
    extra = [b"\xc3", b"\xa9t\xc3", b"\xa9", "é".encode(), " 🤗".encode(), "你".encode()[:2], "你".encode()[2:],
             b"<|endoftext|>", "e\u0301".encode()]
    for k, b in enumerate(extra):
        vocab[256 + k] = b
    return vocab


@checker("10.5 decode")
def check_decode(decode: Callable) -> None:
    """decode(ids: list[int], vocab: dict[int, bytes]) -> str: join the tokens' bytes, decode UTF-8 once,
    and replace what is not valid UTF-8 with U+FFFD (errors="replace")."""
    vocab = _vocab()
    id_lists = [[99, 97, 102, 256, 258], [256, 257, 258], [261, 262, 50, 50], [261, 262] + list("好".encode()),
                [32, 260], [264, 13, 10, 0], [263, 120], [99, 256, 33], [0xA9, 97], [260, 0xF0, 0x9F]]
    for ids in id_lists:
        raw = b"".join(vocab[i] for i in ids)
        want = raw.decode("utf-8", errors="replace")
        try:
            got = decode(list(ids), dict(vocab))
        except UnicodeDecodeError as e:
            per_token = any(_invalid(vocab[i]) for i in ids) and not _invalid(raw)
            expect(not per_token, f"decode({ids}) raised {e}: you decoded token by token, but one character's "
                                  "UTF-8 bytes may be split across tokens (é = b'\\xc3' + b'\\xa9'): join all the "
                                  "bytes first, then decode once")
            raise ExerciseFailed(f"decode({ids}) raised {e}: a model can generate ids whose bytes are not valid "
                                 "UTF-8; decode with errors='replace' (U+FFFD), as GPT-2 and tokenizers do") from None
        expect(isinstance(got, str), f"decode should return a str, got {type(got).__name__}")
        if got == want:
            continue
        where = f"decode({ids}) gave {got!r}, expected {want!r}"
        expect(got != "".join(vocab[i].decode("utf-8", errors="replace") for i in ids),
               f"{where}: you decoded each token on its own; one character's UTF-8 bytes can be split across tokens "
               "(é = b'\\xc3' + b'\\xa9'): join all the bytes first, then decode once")
        expect(got != raw.decode("utf-8", errors="ignore"),
               f"{where}: errors='ignore' silently drops invalid bytes; use errors='replace' so they show as U+FFFD")
        expect(got != raw.decode("latin-1"), f"{where}: the bytes are UTF-8, not Latin-1")
        expect(got != str(raw), f"{where}: str(bytes) gives the repr b'...'; call .decode('utf-8', errors='replace')")
        raise ExerciseFailed(where)


def _invalid(b: bytes) -> bool:
    try:
        b.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


# ---------------------------------------------------------------- 10.6 bits per byte


@checker("10.6 bits per byte")
def check_bits_per_byte(bits_per_byte: Callable) -> None:
    """bits_per_byte(mean_loss, n_tokens, text) -> float: a mean cross-entropy in nats per token over the
    n_tokens tokens of ``text``, turned into bits per UTF-8 byte of ``text``."""
    cases = [(2.0, 100, "ROMEO: " * 50), (1.3, 40, "naïve café, 你好 🤗 " * 6), (4.5, 7, "x" * 21),
             (0.7, 300, "é" * 350)]
    for loss, n_tok, text in cases:
        got = bits_per_byte(loss, n_tok, text)
        expect(isinstance(got, int | float) or hasattr(got, "item"),
               f"bits_per_byte should return a number, got {type(got).__name__}")
        got = float(got)
        n_bytes = len(text.encode("utf-8"))
        want = loss * n_tok / (n_bytes * math.log(2))
        if math.isclose(got, want, rel_tol=1e-6):
            continue
        where = f"bits_per_byte({loss}, {n_tok}, {len(text)} characters / {n_bytes} bytes) = {got:.5g}, expected " \
                f"{want:.5g}"
        wrongs = [
            (loss / math.log(2), "that is bits per TOKEN: multiply by n_tokens and divide by the number of bytes, "
                                 "or vocabularies with longer tokens look worse for nothing"),
            (loss * n_tok / n_bytes, "that is nats per byte: the loss uses ln; divide by ln 2 to get bits "
                                     "(log2 x = ln x / ln 2)"),
            (loss * n_tok / (len(text) * math.log(2)), "you divided by the number of CHARACTERS; count bytes, "
                                                       "len(text.encode('utf-8')): é is 2 bytes, 你 3, 🤗 4"),
            (loss * n_tok / (n_bytes * math.log(10)), "you divided by ln 10; bits need ln 2"),
            (loss * n_tok * math.log(2) / n_bytes, "you multiplied by ln 2; nats to bits is a DIVISION by ln 2"),
            (loss * n_bytes / (n_tok * math.log(2)), "the ratio is upside down: total bits = loss * n_tokens / ln 2, "
                                                     "then divide by the bytes"),
            (loss, "you returned the mean loss itself (nats per token)"),
        ]
        for value, message in wrongs:
            expect(not math.isclose(got, value, rel_tol=1e-6), f"{where}: {message}")
        raise ExerciseFailed(f"{where}: bits per byte = mean_loss * n_tokens / (n_bytes * ln 2)")
