"""Training tokens/s of minigpt vs Hugging Face GPT2LMHeadModel at nanoGPT's CPU config.

nanoGPT's CPU recipe: 4 layers, 4 heads, width 128, block 64, batch 12, vocab 65, no dropout,
AdamW lr 1e-3. Three models start from the SAME weight matrices (minigpt's init, converted to
Hugging Face with minigpt.hf.minigpt_to_gpt2, checked by comparing the first loss) and run the SAME
loop: forward, cross-entropy on the logits, backward, clip at 1.0, the fused AdamW step that
minigpt's Trainer builds. The models:
- minigpt with nanoGPT's architecture (what nanoGPT's recipe trains: no biases, exact GELU);
- minigpt in GPT-2's layout (biases, tanh GELU): the very function HF computes, so this row
  compares the code alone;
- HF GPT2LMHeadModel as GPT-2 defines it, at these sizes;
- with `--nanogpt PATH` (a checkout of karpathy/nanoGPT, not shipped here): nanoGPT's own model.py
  with its own optimizer (`configure_optimizers`: AdamW, unfused on a CPU), i.e. nanoGPT's recipe
  step, from the same matrices (the parameter names are the same).

Contenders take turns step by step; a round's figure is each one's median step time, the table
shows medians over rounds, and the speedup is the median of per-round ratios. MFU = achieved
FLOP/s / matmul FLOP/s measured in the same run, with nanoGPT's estimate (PaLM appendix B): FLOPs
per token = 6 N + 12 L H Q T, N the non-embedding parameter count (the tied token embedding counts:
it is the output layer too).

    python bench/train_throughput.py            # ~3-5 minutes
    python bench/train_throughput.py --quick    # smoke run, ~1 minute
    python bench/train_throughput.py --compile  # adds torch.compile contenders (slow to compile)
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
import torch.nn.functional as F
from _common import (
    PeakRSS,
    in_child,
    machine_info,
    markdown_table,
    matmul_peak_gflops,
    median,
    set_threads,
    shakespeare_ids,
    write_json,
)

CONFIG = dict(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0)
BATCH, LR = 12, 1e-3
# minigpt as nanoGPT's recipe builds it (no biases, exact GELU), and in GPT-2's layout: the very same
# function as Hugging Face's model (biases, tanh GELU), so that row isolates the code from the design
ARCHS = {"minigpt": dict(bias=False, activation="gelu"), "minigpt-gpt2": dict(bias=True, activation="gelu_tanh")}

NAMES = {"minigpt": "minigpt (nanoGPT's architecture)", "minigpt-gpt2": "minigpt (GPT-2 layout)",
         "hf": "HF GPT2LMHeadModel", "nanogpt": "nanoGPT model.py + its AdamW"}
NANOGPT_PATH: str | None = None  # --nanogpt: a nanoGPT checkout whose model.py is imported


def build_nanogpt(seed: int = 1337) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """nanoGPT's GPT with minigpt's initial matrices, and the optimizer nanoGPT's train.py builds."""
    import importlib.util
    from pathlib import Path

    from minigpt.model import GPT, GPTConfig

    assert NANOGPT_PATH is not None
    spec = importlib.util.spec_from_file_location("nanogpt_model", Path(NANOGPT_PATH) / "model.py")
    assert spec is not None and spec.loader is not None
    nano = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(nano)
    torch.manual_seed(seed)
    layout = GPT(GPTConfig(**CONFIG, **ARCHS["minigpt-gpt2"]))
    model = nano.GPT(nano.GPTConfig(**{k: CONFIG[k] for k in ("vocab_size", "block_size", "n_layer", "n_head",
                                                            "n_embd", "dropout")}, bias=False))
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in layout.state_dict().items() if k in own}, strict=False)
    model.train()
    opt = model.configure_optimizers(0.1, LR, (0.9, 0.99), "cpu")  # nanoGPT's recipe: unfused on a CPU
    return model, opt


def build(impl: str, compile_model: bool = False, seed: int = 1337) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    from minigpt.model import GPT, GPTConfig

    if impl == "nanogpt":
        return build_nanogpt(seed)
    torch.manual_seed(seed)
    model: torch.nn.Module = GPT(GPTConfig(**CONFIG, **ARCHS["minigpt-gpt2"]))
    if impl == "minigpt":  # the same initial matrices without the (zero) biases
        layout = model
        model = GPT(GPTConfig(**CONFIG, **ARCHS["minigpt"]))
        model.load_state_dict({k: v for k, v in layout.state_dict().items() if k in model.state_dict()})
    if impl == "hf":
        from minigpt.hf import minigpt_to_gpt2

        model = minigpt_to_gpt2(model)  # same weights, Hugging Face's code
    model.train()
    from minigpt.train import TrainConfig, configure_optimizer

    # the optimizer `minigpt train` uses (fused AdamW, decay on matrices only), for both models
    opt = configure_optimizer(model, TrainConfig(lr=LR, beta2=0.99, weight_decay=0.1), torch.device("cpu"))
    if compile_model:
        model = torch.compile(model)
    return model, opt


def loss_of(impl: str, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if impl == "nanogpt":  # its loss is computed inside (without targets it returns the last position only)
        return model(x, y)[1]
    logits = model(input_ids=x).logits if impl == "hf" else model(x)[0]  # (B, T, V)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


def step(impl: str, model: torch.nn.Module, opt: torch.optim.Optimizer, x, y, dtype) -> float:
    ctx = torch.autocast("cpu", dtype=dtype) if dtype is not None else torch.autocast("cpu", enabled=False)
    with ctx:
        loss = loss_of(impl, model, x, y)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return loss.item()


def batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    from minigpt.data import get_batch

    try:
        train, _, _ = shakespeare_ids()
    except Exception:  # offline and no cached copy: random tokens cost the same to train on
        train = torch.randint(0, CONFIG["vocab_size"], (100_000,), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(seed)
    return [get_batch(train, CONFIG["block_size"], BATCH, generator=g) for _ in range(n)]


def memory_probe(impl: str, dtype_name: str, steps: int, threads: int | None) -> dict[str, float]:
    """In a fresh process: peak RSS during `steps` training steps, and its rise above the RSS before them."""
    set_threads(threads)
    dtype = {"fp32": None, "bf16": torch.bfloat16}[dtype_name]
    model, opt = build(impl)
    data = batches(steps)
    with PeakRSS() as mem:
        for x, y in data:
            step(impl, model, opt, x, y, dtype)
    return {"peak_rss_mib": mem.peak_mib, "training_mib": mem.delta_mib}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="few steps and rounds: checks the script works")
    ap.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 5, quick 2)")
    ap.add_argument("--steps", type=int, default=None, help="timed steps per contender per round (default 40)")
    ap.add_argument("--compile", action="store_true", help="also time torch.compile'd models")
    ap.add_argument("--no-bf16", action="store_true", help="skip the bf16 autocast contenders")
    ap.add_argument("--no-memory", action="store_true", help="skip the child-process memory probes")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice; use 1 on "
                    "a machine shared with other jobs)")
    ap.add_argument("--nanogpt", metavar="PATH", default=None,
                    help="a karpathy/nanoGPT checkout: adds its model.py + its optimizer as a contender")
    args = ap.parse_args()
    global NANOGPT_PATH
    NANOGPT_PATH = args.nanogpt
    set_threads(args.threads)
    rounds = args.rounds or (2 if args.quick else 5)
    steps = args.steps or (5 if args.quick else 40)
    warmup = 2 if args.quick else 10

    contenders: list[tuple[str, str, bool]] = [("minigpt", "fp32", False), ("minigpt-gpt2", "fp32", False),
                                               ("hf", "fp32", False)]
    if not args.no_bf16:
        contenders += [("minigpt", "bf16", False), ("hf", "bf16", False)]
    if args.nanogpt:
        contenders += [("nanogpt", "fp32", False)]
    if args.compile:
        contenders += [("minigpt", "fp32", True), ("hf", "fp32", True)]
    dtypes = {"fp32": None, "bf16": torch.bfloat16}

    data = batches(steps + warmup)
    state: dict[tuple, Any] = {}
    first_loss = {}
    for c in contenders:
        impl, prec, comp = c
        model, opt = build(impl, comp)
        with torch.no_grad():
            first_loss[c] = loss_of(impl, model, *data[0]).item()
        state[c] = (model, opt)
    ref = first_loss[("hf", "fp32", False)]
    for c, loss in first_loss.items():  # same weights -> same starting loss, or the comparison is void
        # the GPT-2 layout computes HF's function exactly; nanoGPT's architecture differs at step 0 only
        # by the exact-vs-tanh GELU (the biases it lacks start at zero in HF)
        tol = 1e-4 if c[0] not in ("minigpt", "nanogpt") else 2e-3
        assert abs(loss - ref) < tol, f"{c} starts at loss {loss}, HF at {ref}: not the same starting point"

    from minigpt.model import GPT, GPTConfig

    probe = GPT(GPTConfig(**CONFIG))
    # non-embedding count as in nanoGPT: everything but the position table (the tied wte is the output layer)
    N = sum(p.numel() for p in probe.parameters()) - probe.transformer.wpe.weight.numel()
    L, H, Q, T = CONFIG["n_layer"], CONFIG["n_head"], CONFIG["n_embd"] // CONFIG["n_head"], CONFIG["block_size"]
    flops_per_token = 6 * N + 12 * L * H * Q * T

    tps: dict[tuple, list[float]] = {c: [] for c in contenders}
    # CPU seconds of this process: with --threads 1, barely moved by other programs' load (wall time is)
    cpu_tps: dict[tuple, list[float]] = {c: [] for c in contenders}
    peaks: dict[str, list[float]] = {"fp32": [], "bf16": []}
    print(f"{len(contenders)} contenders, {rounds} rounds x {steps} steps (batch {BATCH} x block {T})", flush=True)
    for r in range(rounds):
        peaks["fp32"].append(matmul_peak_gflops(torch.float32, seconds=0.5))
        if not args.no_bf16:
            peaks["bf16"].append(matmul_peak_gflops(torch.bfloat16, seconds=0.5))
        for c in contenders:
            impl, prec, _ = c
            model, opt = state[c]
            for x, y in data[:warmup] if r == 0 else data[:1]:
                step(impl, model, opt, x, y, dtypes[prec])
        # contenders take turns step by step (the order rotating), and a round's figure is each one's
        # median step time: a burst of load elsewhere then hits a step or two of everyone, not one contender
        wall: dict[tuple, list[float]] = {c: [] for c in contenders}
        cpu: dict[tuple, list[float]] = {c: [] for c in contenders}
        for i, (x, y) in enumerate(data[warmup:]):
            k = i % len(contenders)
            for c in contenders[k:] + contenders[:k]:
                impl, prec, _ = c
                model, opt = state[c]
                t0, c0 = time.perf_counter(), time.process_time()
                step(impl, model, opt, x, y, dtypes[prec])
                wall[c].append(time.perf_counter() - t0)
                cpu[c].append(time.process_time() - c0)
        for c in contenders:
            tps[c].append(BATCH * T / median(wall[c]))
            cpu_tps[c].append(BATCH * T / median(cpu[c]))
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{c[0]}-{c[1]}{'-compiled' if c[2] else ''} "
                                                     f"{tps[c][-1]:,.0f}" for c in contenders), flush=True)

    memory: dict[tuple, dict[str, float]] = {}
    if not args.no_memory:
        for c in contenders:
            if not c[2] and c[0] != "nanogpt":  # a spawned child cannot see --nanogpt's path
                memory[c] = in_child(memory_probe, c[0], c[1], 5 if args.quick else 20, args.threads)

    base = ("hf", "fp32", False)
    rows, results = [], []
    for c in contenders:
        impl, prec, comp = c
        ratio = median([a / b for a, b in zip(tps[c], tps[base])])
        cpu_ratio = median([a / b for a, b in zip(cpu_tps[c], cpu_tps[base])])
        peak = median(peaks[prec]) if peaks[prec] else float("nan")
        mfu = median(tps[c]) * flops_per_token / (peak * 1e9) if peak == peak else float("nan")
        mem = memory.get(c, {})
        name = NAMES[impl] + (" + compile" if comp else "")
        per_round = [a / b for a, b in zip(tps[c], tps[base])]
        rows.append([name, prec + (" autocast" if prec == "bf16" else ""), median(tps[c]), f"{ratio:.2f}x",
                     f"{min(per_round):.2f}-{max(per_round):.2f}x",
                     median(cpu_tps[c]), f"{cpu_ratio:.2f}x",
                     f"{100 * mfu:.1f}%", mem.get("peak_rss_mib", float("nan")),
                     mem.get("training_mib", float("nan"))])
        results.append({"impl": impl, "precision": prec, "compiled": comp, "tokens_per_s": tps[c],
                        "tokens_per_cpu_s": cpu_tps[c], "cpu_ratio_vs_hf_fp32": cpu_ratio,
                        "median_tokens_per_s": median(tps[c]), "ratio_vs_hf_fp32": ratio, "mfu": mfu, **mem})
    print()
    print(f"Training throughput, torch threads {torch.get_num_threads()}, nanoGPT CPU config ({L} layers, "
          f"{H} heads, width {CONFIG['n_embd']}, block {T}, batch {BATCH}, "
          f"{N:,} non-embedding params), {rounds} interleaved rounds x {steps} steps")
    print(markdown_table(["model", "precision", "tokens/s", "vs HF fp32", "per-round range", "tokens/CPU-s",
                          "vs HF (CPU time)",
                          "MFU", "peak RSS MiB", "training MiB"], rows))
    nano = ("nanogpt", "fp32", False)
    if nano in tps:
        vs = [a / b for a, b in zip(tps[("minigpt", "fp32", False)], tps[nano])]
        print(f"\nminigpt (nanoGPT's architecture, fused AdamW) vs nanoGPT's model.py + its AdamW: "
              f"{median(vs):.2f}x per step (per-round {min(vs):.2f}-{max(vs):.2f}x)")
    bf = f", bf16 {median(peaks['bf16']):,.0f}" if peaks["bf16"] else ""
    print(f"\nmatmul peak (1024^3, same run): fp32 {median(peaks['fp32']):,.0f} GFLOP/s{bf}; "
          f"FLOPs/token {flops_per_token:,}; machine: {machine_info()}")
    path = write_json("train_throughput", {"config": CONFIG, "batch": BATCH, "rounds": rounds, "steps": steps,
                                            "flops_per_token": flops_per_token, "matmul_peak_gflops": peaks,
                                            "results": results, "machine": machine_info()})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
