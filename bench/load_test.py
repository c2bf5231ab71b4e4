"""Load test of ``minigpt serve`` on localhost: batching on/off x cache on/off x concurrency 1/4/16.

    python bench/load_test.py                       # a random char-tiny GPT, 48 requests per cell
    python bench/load_test.py --checkpoint out/best --requests 96 --max-new-tokens 64

Each setting gets a fresh server process (127.0.0.1, a free port); the same fixed list of seeded
requests is sent at each concurrency, and every request is accounted for (ok / 503 / failed).
Prints a markdown table; ``--json PATH`` also writes the raw numbers. Timing depends on the machine:
quote the conditions line printed above the table with the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

# name -> (label in the table, server flags)
SETTINGS = {
    "batch": ("batching on, cache off", ["--no-cache"]),
    "nobatch": ("batching off, cache off", ["--no-batching", "--no-cache"]),
    "batch+cache": ("batching on, cache on", []),
    "nobatch+cache": ("batching off, cache on", ["--no-batching"]),
}


def random_checkpoint(folder: Path, preset: str) -> Path:
    """An untrained GPT of ``preset`` with a character tokenizer: timing does not depend on the weights."""
    import torch

    from minigpt import GPT, CharTokenizer, GPTConfig
    from minigpt.checkpoint import save_checkpoint

    text_file = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"
    text = text_file.read_text() if text_file.exists() else "".join(chr(c) for c in range(32, 127)) + "\n"
    tok = CharTokenizer.from_text(text)
    torch.manual_seed(0)
    model = GPT(GPTConfig.from_preset(preset, vocab_size=tok.vocab_size, dropout=0.0))
    return save_checkpoint(folder / "random", model, tokenizer=tok)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", default=None, help="checkpoint to serve (default: a random --preset GPT)")
    p.add_argument("--preset", default="char-tiny", help="model size when no checkpoint is given")
    p.add_argument("--requests", type=int, default=48, help="requests per (setting, concurrency) cell")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated concurrency levels")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--prompt-len", type=int, default=16, help="all prompts have this many characters")
    p.add_argument("--distinct", type=int, default=8, help="distinct (prompt, seed) pairs; the rest repeat")
    p.add_argument("--settings", default=",".join(SETTINGS),
                   help=f"which settings to run, comma-separated, from {', '.join(SETTINGS)}")
    p.add_argument("--max-queue", type=int, default=64)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the server's decoding worker")
    p.add_argument("--json", default=None, help="also write the results here")
    args = p.parse_args(argv)

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    import torch

    from minigpt.serve.background import ServerProcess
    from minigpt.serve.loadtest import make_requests, markdown_table, run_load

    levels = [int(c) for c in args.concurrency.split(",")]
    chosen = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SETTINGS]
    if unknown:
        p.error(f"unknown settings {unknown}; choose from {list(SETTINGS)}")
    tmp = tempfile.TemporaryDirectory(prefix="minigpt-bench-")
    checkpoint = Path(args.checkpoint) if args.checkpoint else random_checkpoint(Path(tmp.name), args.preset)

    base = "ROMEO: But soft, what light through yonder window breaks? It is the east"
    prompts = [(base[i:] + base)[: args.prompt_len] for i in range(args.distinct)]
    print(f"conditions: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, "
          f"load average {os.getloadavg()[0]:.1f}, torch {torch.__version__} (server: {args.threads} "
          f"thread(s)), checkpoint {checkpoint}, "
          f"{args.requests} requests per cell, {args.max_new_tokens} new tokens each, prompts of "
          f"{args.prompt_len} chars, {args.distinct} distinct seeded requests, max batch {args.max_batch_size}")
    results = []
    for name in chosen:
        label, server_flags = SETTINGS[name]
        flags = [*server_flags, "--max-queue", str(args.max_queue), "--max-batch-size", str(args.max_batch_size),
                 "--max-new-tokens-limit", str(max(args.max_new_tokens, 1)), "--threads", str(args.threads)]
        with ServerProcess(checkpoint, extra_args=flags) as server:
            warm = make_requests(prompts, 2, args.max_new_tokens, distinct=2, seed_offset=10**6)
            run_load(server.url, warm, 2, label="warm-up")  # first-call costs stay out of the numbers
            for c in levels:
                # a fresh seed range per level, so a cache filled at one level gives no hits at the next
                reqs = make_requests(prompts, args.requests, args.max_new_tokens, distinct=args.distinct,
                                     seed_offset=1000 * c)
                t0 = time.perf_counter()
                r = run_load(server.url, reqs, c, label=label)
                print(f"  {label:<26} c={c:<3} {r.ok} ok, {r.rejected} 503, {r.failed} failed "
                      f"in {time.perf_counter() - t0:.1f} s", flush=True)
                if r.errors:
                    print("    first errors:", *r.errors, sep="\n    ")
                results.append(r)
    print()
    print(markdown_table(results))
    if args.json:
        Path(args.json).write_text(json.dumps([r.summary() for r in results], indent=2))
    tmp.cleanup()
    return 0 if all(r.failed == 0 for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
