"""Generation tokens/s: minigpt with a KV cache, without one, and Hugging Face `generate`.

One model (4 layers, 4 heads, width 128, vocab 65, block 1024 so that a prompt plus 1000 new
tokens fit), briefly trained on tiny Shakespeare so its next-token distributions are peaked like a
real model's, then converted with minigpt.hf.minigpt_to_gpt2: both libraries run the same weights.
Decoding is greedy, so the three contenders must produce identical tokens (checked).

Rows: 100/500/1000 new tokens from a short prompt, and "full context": a prompt of
block_size - 500 tokens plus 500 new ones, where the uncached model re-reads 524..1023 tokens per
step. Rounds are interleaved; figures are medians; ratios are medians of per-round ratios, from wall
time and from the process's CPU time (with --threads 1 the CPU time barely moves with other programs'
load, which on a shared machine can swing wall-time ratios by several x within a round). Peak
memory of one 500-token generation per contender is measured in a fresh child process.

    python bench/generation.py              # a few minutes
    python bench/generation.py --quick      # smoke run
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from _common import (
    PeakRSS,
    in_child,
    machine_info,
    markdown_table,
    median,
    set_threads,
    shakespeare_ids,
    write_json,
)

CONFIG = dict(vocab_size=65, block_size=1024, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
CONTENDERS = ("minigpt KV cache", "minigpt no cache", "HF generate")


def trained_model(steps: int, seed: int = 1337) -> tuple[Any, Any, torch.Tensor]:
    """The benchmark model after `steps` AdamW steps on 64-token windows; returns (model, hf_model, val ids)."""
    from minigpt.data import get_batch
    from minigpt.hf import minigpt_to_gpt2
    from minigpt.model import GPT, GPTConfig

    torch.manual_seed(seed)
    model = GPT(GPTConfig(**CONFIG))
    try:
        train, val, _ = shakespeare_ids()
    except Exception:  # offline without a cached copy: random tokens (distributions stay flatter)
        train = val = torch.randint(0, CONFIG["vocab_size"], (200_000,), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.99))
    g = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(steps):
        x, y = get_batch(train, 64, 16, generator=g)
        _, loss = model(x, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    model.eval()
    hf = minigpt_to_gpt2(model)
    gc = hf.generation_config  # the 65-token vocabulary has no GPT-2 <|endoftext|>: never stop early
    gc.eos_token_id = gc.bos_token_id = None
    gc.pad_token_id = 0
    return model, hf, val


def run(name: str, model: Any, hf: Any, idx: torch.Tensor, n: int) -> torch.Tensor:
    """The n new token ids (1, n) from one contender."""
    from minigpt.generation import generate

    if name == "HF generate":
        out = hf.generate(input_ids=idx, attention_mask=torch.ones_like(idx), max_new_tokens=n, do_sample=False,
                          num_beams=1, use_cache=True)
    else:
        out = generate(model, idx, n, greedy=True, use_cache=name == "minigpt KV cache")
    return out[:, idx.size(1):]


def memory_probe(name: str, steps: int, prompt_len: int, n: int, threads: int | None) -> dict[str, float]:
    set_threads(threads)
    model, hf, val = trained_model(steps)
    idx = val[:prompt_len].unsqueeze(0)
    with torch.no_grad(), PeakRSS() as mem:
        run(name, model, hf, idx, n)
    return {"peak_rss_mib": mem.peak_mib, "generation_mib": mem.delta_mib}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short lengths, one round: checks the script works")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 1)")
    ap.add_argument("--train-steps", type=int, default=None, help="training steps before measuring (default 300)")
    ap.add_argument("--lengths", type=int, nargs="+", default=None, help="new tokens per case (default 100 500 1000)")
    ap.add_argument("--full-context", type=int, default=None,
                    help="new tokens of the full-context case (default 500; 0 = skip it)")
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process memory probes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    args = ap.parse_args()
    set_threads(args.threads)
    rounds = args.rounds or (1 if args.quick else 5)
    steps = args.train_steps if args.train_steps is not None else (30 if args.quick else 300)
    lengths = args.lengths if args.lengths is not None else [20, 50] if args.quick else [100, 500, 1000]
    full_n = args.full_context if args.full_context is not None else 50 if args.quick else 500
    block = CONFIG["block_size"]

    t0 = time.perf_counter()
    model, hf, val = trained_model(steps)
    print(f"trained the benchmark model for {steps} steps in {time.perf_counter() - t0:.0f} s", flush=True)
    short = val[:16].unsqueeze(0)  # a 16-character prompt
    cases = [(f"{n}", short, n) for n in lengths]
    if full_n:
        cases.append((f"full context ({block - full_n}+{full_n})", val[: block - full_n].unsqueeze(0), full_n))
    with torch.no_grad():  # first calls allocate and pick kernels; keep that out of the timings
        for name in CONTENDERS:
            run(name, model, hf, short, 8)
    tps: dict[tuple[str, str], list[float]] = {(c[0], name): [] for c in cases for name in CONTENDERS}
    cpu_tps: dict[tuple[str, str], list[float]] = {key: [] for key in tps}  # tokens per CPU-second
    identical: dict[str, bool] = {}
    with torch.no_grad():
        for r in range(rounds):
            for label, idx, n in cases:
                outs = {}
                order = CONTENDERS if r % 2 == 0 else CONTENDERS[::-1]
                for name in order:
                    t, c = time.perf_counter(), time.process_time()
                    outs[name] = run(name, model, hf, idx, n)
                    tps[(label, name)].append(n / (time.perf_counter() - t))
                    cpu_tps[(label, name)].append(n / (time.process_time() - c))
                ref = outs["minigpt no cache"]
                same = all(torch.equal(o, ref) for o in outs.values())
                if not same:
                    diffs = {k: int((o != ref).int().argmax()) for k, o in outs.items() if not torch.equal(o, ref)}
                    raise AssertionError(f"greedy outputs differ for {label} new tokens (first differing "
                                         f"position per contender vs uncached minigpt: {diffs})")
                identical[label] = same
                print(f"round {r + 1}/{rounds}, {label}: " + ", ".join(
                    f"{name} {tps[(label, name)][-1]:,.0f} tok/s" for name in CONTENDERS), flush=True)

    memory: dict[str, dict[str, float]] = {}
    if not args.no_memory:
        for name in CONTENDERS:
            # untrained weights: memory does not depend on their values, and retraining would cost minutes
            memory[name] = in_child(memory_probe, name, 0, 16, full_n or max(lengths), args.threads)

    rows, results = [], []
    for label, _, n in cases:
        med = {name: median(tps[(label, name)]) for name in CONTENDERS}
        per_round = [a / b for a, b in zip(tps[(label, CONTENDERS[0])], tps[(label, "HF generate")])]
        vs_hf = median(per_round)
        vs_nc = median([a / b for a, b in zip(tps[(label, CONTENDERS[0])], tps[(label, "minigpt no cache")])])
        cpu_round = [a / b for a, b in zip(cpu_tps[(label, CONTENDERS[0])], cpu_tps[(label, "HF generate")])]
        rows.append([label, *med.values(), f"{vs_hf:.2f}x", f"{min(per_round):.2f}-{max(per_round):.2f}x",
                     f"{median(cpu_round):.2f}x", f"{min(cpu_round):.2f}-{max(cpu_round):.2f}x",
                     f"{vs_nc:.2f}x", "yes" if identical[label] else "NO"])
        results.append({"case": label, "new_tokens": n, "tokens_per_s": {name: tps[(label, name)] for name in
                        CONTENDERS}, "median": med, "cache_vs_hf": vs_hf, "cache_vs_no_cache": vs_nc,
                        "tokens_per_cpu_s": {name: cpu_tps[(label, name)] for name in CONTENDERS},
                        "cache_vs_hf_cpu_time": median(cpu_round),
                        "identical_tokens": identical[label]})
    cache_bytes = model.new_kv_cache(1).nbytes
    print()
    print(f"Greedy generation, batch 1, torch threads {torch.get_num_threads()}, model {CONFIG} "
          f"({sum(p.numel() for p in model.parameters()):,} params), {rounds} interleaved rounds")
    print(markdown_table(["new tokens", *(f"{c} tok/s" for c in CONTENDERS), "cache vs HF", "per-round range",
                          "vs HF (CPU time)", "CPU-time range", "cache vs no cache", "same tokens"], rows))
    if memory:
        print(f"\nPeak memory, one {full_n or max(lengths)}-token generation from a 16-token prompt, fresh process "
              f"each (minigpt preallocates a {cache_bytes / 2**20:.1f} MiB KV cache for {block} positions):")
        print(markdown_table(["contender", "peak RSS MiB", "generation MiB"],
                             [[name, m["peak_rss_mib"], m["generation_mib"]] for name, m in memory.items()]))
    print(f"\nmachine: {machine_info()}")
    path = write_json("generation", {"config": CONFIG, "train_steps": steps, "rounds": rounds, "results": results,
                                      "memory": memory, "kv_cache_bytes": cache_bytes, "machine": machine_info()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
