"""Byte-level BPE training speed: naive vs incremental pure-Python trainers vs Hugging Face `tokenizers`.

The two Python trainers are the reference versions of notebook 10's (GPT-2's regex pre-tokenizer, the word table
of distinct chunks with their counts, ties to the smallest ids, `tokenizers`' id numbering); both must learn
exactly the merges of `minigpt.BPETokenizer` (= `tokenizers`' BpeTrainer), which the script checks. Everything
runs on one core: torch and `tokenizers`' Rayon pool are limited to one thread. The contenders take turns round by
round; the table shows medians over rounds of wall time and of CPU time (the process's CPU seconds, which load from
other jobs barely changes). The naive trainer recounts every pair after every merge, so it is timed on its first
`--naive-merges` merges and its time per merge is scaled to the full count (marked "extrapolated").

    python bench/tokenizer_bpe.py                 # 512 merges on the training 90% of tiny Shakespeare, 5 rounds
    python bench/tokenizer_bpe.py --merges 2048 --rounds 3
    python bench/tokenizer_bpe.py --quick         # a smoke run: 100,000 characters, 64 merges, 1 round
"""

from __future__ import annotations

import os

os.environ.setdefault("RAYON_NUM_THREADS", "1")  # tokenizers' thread pool, read when it starts: set before import
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import argparse  # noqa: E402
import time  # noqa: E402
from collections import Counter, defaultdict  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402
from _common import machine_info, markdown_table, median, write_json  # noqa: E402

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
SPECIALS = ["<|endoftext|>"]
Pair = tuple[int, int]


def byte_ids() -> dict[int, int]:
    """tokenizers' numbering: the special tokens, then the bytes in the order of GPT-2's printable stand-ins."""
    from minigpt.tokenizer import gpt2_bytes_to_unicode

    table = gpt2_bytes_to_unicode()
    return {b: len(SPECIALS) + r for r, b in enumerate(sorted(range(256), key=table.__getitem__))}


def word_table(text: str, ids: dict[int, int]) -> Counter[tuple[int, ...]]:
    import regex

    return Counter(tuple(ids[b] for b in chunk.encode("utf-8")) for chunk in regex.findall(GPT2_PATTERN, text))


def merge(word: list[int] | tuple[int, ...], pair: Pair, new_id: int) -> list[int]:
    out, i, n = [], 0, len(word)
    while i < n:
        if i + 1 < n and word[i] == pair[0] and word[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return out


class _Vocab:
    """id -> bytes, reusing the id of bytes that are already a token (as tokenizers does)."""

    def __init__(self, ids: dict[int, int]):
        self.bytes = {i: s.encode() for i, s in enumerate(SPECIALS)} | {i: bytes([b]) for b, i in ids.items()}
        self.ids = {v: k for k, v in self.bytes.items()}

    def add(self, pair: Pair) -> int:
        merged = self.bytes[pair[0]] + self.bytes[pair[1]]
        if merged not in self.ids:
            self.ids[merged] = len(self.bytes)
            self.bytes[len(self.bytes)] = merged
        return self.ids[merged]


def _best(counts: dict[Pair, int]) -> Pair:
    return max(counts, key=lambda p: (counts[p], -p[0], -p[1]))


def train_naive(words: Counter[tuple[int, ...]], n_merges: int, ids: dict[int, int]) -> list[tuple[bytes, bytes]]:
    vocab, merges = _Vocab(ids), []
    table = dict(words)
    for _ in range(n_merges):
        counts: Counter[Pair] = Counter()
        for w, f in table.items():
            for p in zip(w, w[1:], strict=False):
                counts[p] += f
        pair = _best(counts) if counts else None  # one max over all pairs per merge: most of the time left
        if pair is None or counts[pair] < 2:
            break
        new_id = vocab.add(pair)
        merges.append((vocab.bytes[pair[0]], vocab.bytes[pair[1]]))
        table = {tuple(merge(w, pair, new_id)): f for w, f in table.items()}
    return merges


def train_incremental(words: Counter[tuple[int, ...]], n_merges: int, ids: dict[int, int]) -> list[tuple[bytes, bytes]]:
    syms, freqs = [list(w) for w in words], list(words.values())
    counts: defaultdict[Pair, int] = defaultdict(int)
    where: defaultdict[Pair, set[int]] = defaultdict(set)
    for i, w in enumerate(syms):
        for p in zip(w, w[1:], strict=False):
            counts[p] += freqs[i]
            where[p].add(i)
    vocab, merges = _Vocab(ids), []
    for _ in range(n_merges):
        pair = _best(counts) if counts else None  # one max over all pairs per merge: most of the time left
        if pair is None or counts[pair] < 2:
            break
        new_id = vocab.add(pair)
        merges.append((vocab.bytes[pair[0]], vocab.bytes[pair[1]]))
        for i in where.pop(pair, ()):
            old = syms[i]
            new = merge(old, pair, new_id)
            if len(new) == len(old):
                continue
            for p in zip(old, old[1:], strict=False):
                counts[p] -= freqs[i]
            for p in zip(new, new[1:], strict=False):
                counts[p] += freqs[i]
                where[p].add(i)
            syms[i] = new
        counts.pop(pair, None)
    return merges


def _timed(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - w0, time.process_time() - c0


def main() -> None:
    from minigpt.data import load_shakespeare
    from minigpt.tokenizer import BPETokenizer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--merges", type=int, default=512)
    ap.add_argument("--naive-merges", type=int, default=24, help="merges the naive trainer is timed on")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="smoke run: 100,000 characters, 64 merges, 1 round")
    args = ap.parse_args()
    torch.set_num_threads(1)
    text = load_shakespeare()
    text = text[: int(0.9 * len(text))]  # the training split the notebook uses
    if args.quick:
        text, args.merges, args.naive_merges, args.rounds = text[:100_000], 64, 4, 1
    ids = byte_ids()
    vocab_size = len(SPECIALS) + 256 + args.merges
    times: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for _ in range(args.rounds):
        words, wall_pre, cpu_pre = _timed(word_table, text, ids)
        times["pre-tokenize (regex + word table)"].append((wall_pre, cpu_pre))
        naive, wall, cpu = _timed(train_naive, words, args.naive_merges, ids)
        scale = args.merges / args.naive_merges
        times["naive, extrapolated"].append((wall_pre + wall * scale, cpu_pre + cpu * scale))
        incremental, wall, cpu = _timed(train_incremental, words, args.merges, ids)
        times["incremental"].append((wall_pre + wall, cpu_pre + cpu))
        hf, wall, cpu = _timed(BPETokenizer.train, text, vocab_size=vocab_size)
        times["tokenizers (Rust), 1 thread"].append((wall, cpu))
        reference = hf.merges()
        assert incremental == reference, "the incremental trainer's merges differ from tokenizers'"
        assert naive == reference[: len(naive)], "the naive trainer's merges differ from tokenizers'"
    base = median([w for w, _ in times["incremental"]])
    rows = []
    for name, pairs in times.items():
        wall, cpu = median([w for w, _ in pairs]), median([c for _, c in pairs])
        rows.append([name, wall, cpu, f"{wall / base:.2g}x" if "pre-tokenize" not in name else "-"])
    info = machine_info()
    print(f"{len(text):,} characters, {args.merges} merges, median of {args.rounds} round(s); {info['cpu']}, "
          f"load average {info['load_avg_1min']}; naive timed on {args.naive_merges} merges and scaled")
    print(markdown_table(["trainer", "wall s (pre-tokenizing included)", "CPU s", "wall vs incremental"], rows))
    write_json("tokenizer_bpe", {"machine": info, "characters": len(text), "merges": args.merges,
                                 "naive_merges_timed": args.naive_merges, "rounds": args.rounds,
                                 "times_wall_cpu": dict(times)})


if __name__ == "__main__":
    main()
