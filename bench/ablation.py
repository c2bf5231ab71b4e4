"""Ablation of the speedrun's ingredients: each change alone against the baseline, several seeds.

Load-independent by construction, for a shared machine: every run trains a FIXED number of steps
on one thread (the schedule runs on steps) and ends with the validation loss on the whole
validation split (bench/speedrun.py's rule 2), so its loss does not depend on how busy the
machine is. What a change costs per step is measured separately (`--speed`): all variants are
built in one process and timed round-robin, a burst of steps each, so a burst of load elsewhere
hits all of them alike; the table shows the median step time relative to the baseline. Predicted
time to a loss = steps needed x (baseline seconds per step on your machine) x that ratio.

    python bench/ablation.py --steps 600 --seeds 1 2 3                 # every variant (~40 min, 1 thread)
    python bench/ablation.py --steps 600 --seeds 1 2 3 --variants baseline qk_norm
    python bench/ablation.py --speed                                   # relative step cost (~2 min)
    python bench/ablation.py --summarize                               # bench/ablation.md + .csv
    python bench/ablation.py --steps 3000 --variants baseline ctx256   # a longer horizon (own .md/.csv)

Each run writes bench/results/ablation/<variant>-s<seed>-<steps>.json; --summarize reads them all
and writes the committed table bench/ablation.md and the numbers bench/ablation.csv.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import time
from typing import Any

import torch
from _common import RESULTS, ROOT, machine_info, shakespeare_ids
from speedrun import Recipe, train_run

BASE = "shakespeare-cpu"
# name: (model overrides, train overrides incl. speedrun knobs, what it is)
VARIANTS: dict[str, tuple[dict[str, Any], dict[str, Any], str]] = {
    "baseline": ({}, {}, f"`{BASE}` as it is"),
    "relu2": ({"activation": "relu2"}, {}, "ReLU^2 MLP instead of exact GELU"),
    "qk_norm": ({"qk_norm": True}, {}, "RMS-normalised queries and keys (learned gain)"),
    "untied": ({"tie_weights": False}, {}, "separate output layer (not the token embedding)"),
    "softcap15": ({"logit_softcap": 15.0}, {}, "logits -> 15 tanh(logits / 15)"),
    "wsd": ({}, {"cooldown": 0.4}, "warmup-stable-decay: peak lr, then linear to 0 over the last 40%"),
    "seq_warmup": ({}, {"seq_warmup": 0.3}, "training window grows 32 -> 128 over the first 30%"),
    "ctx256": ({"block_size": 256}, {"batch_size": 4},
               "block 256, 4 sequences per step (the same 1024 tokens): longer context to train and evaluate with"),
    "lr2x": ({}, {"lr": 2e-2}, "peak lr 2e-2 instead of 1e-2"),
    "batch16": ({}, {"batch_size": 16}, "16 sequences per step instead of 8"),
    "wide192": ({"n_embd": 192, "n_head": 6}, {}, "width 192, 6 heads (head size 32)"),
    "deep6": ({"n_layer": 6}, {}, "6 layers instead of 4"),
    "bf16": ({}, {"dtype": "bfloat16"}, "bf16 autocast on the CPU"),
}
OUT = RESULTS / "ablation"
DEFAULT_STEPS = 600


def recipe(name: str, extra_model: dict[str, Any] | None = None, extra_train: dict[str, Any] | None = None,
           base: str = BASE) -> Recipe:
    model_args, train_args, _ = VARIANTS[name]
    return Recipe(base, {**model_args, **(extra_model or {})}, {**train_args, **(extra_train or {})})


def run_all(names: list[str], seeds: list[int], steps: int, base: str) -> None:
    data = shakespeare_ids()
    OUT.mkdir(parents=True, exist_ok=True)
    for seed in seeds:
        for name in names:
            path = OUT / f"{base}-{name}-s{seed}-{steps}.json"
            if path.exists():
                continue
            t0 = time.perf_counter()
            res = train_run(recipe(name, base=base), data, seed=seed, steps=steps, verbose=False)
            res.update(variant=name, base=base, wall_s=time.perf_counter() - t0, machine=machine_info())
            path.write_text(json.dumps(res, indent=1))
            print(f"{name:12s} seed {seed}: val {res['final_val_loss']:.4f} ({res['wall_s']:.0f} s)", flush=True)


def step_costs(names: list[str], base: str, rounds: int = 6, burst: int = 10) -> dict[str, float]:
    """Median seconds per training step of each variant, timed round-robin in this process."""
    from minigpt.data import get_batch
    from minigpt.device import autocast, autocast_dtype
    from minigpt.model import GPT
    from minigpt.train import configure_optimizer

    train, _, tok = shakespeare_ids()
    setups = {}
    for name in names:
        mcfg, tcfg, _ = recipe(name, base=base).configs(tok.vocab_size)
        model = GPT(mcfg)
        dtype = autocast_dtype(torch.device("cpu"), None if tcfg.dtype == "auto" else tcfg.dtype)
        setups[name] = (model, configure_optimizer(model, tcfg, torch.device("cpu")), mcfg, tcfg, dtype)
    g = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds + 1):  # round 0 warms up
        for name in names if r % 2 else reversed(names):
            model, opt, mcfg, tcfg, dtype = setups[name]
            t0 = time.perf_counter()
            for _ in range(burst):
                x, y = get_batch(train, mcfg.block_size, tcfg.batch_size, generator=g)
                with autocast(torch.device("cpu"), dtype):
                    _, loss = model(x, y)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), tcfg.grad_clip)
                opt.step()
                opt.zero_grad(set_to_none=True)
            if r:
                times[name].append((time.perf_counter() - t0) / burst)
    return {n: statistics.median(t) for n, t in times.items()}


def summarize(steps: int, base: str) -> None:
    rows = []
    speed_path = OUT / f"{base}-speed.json"
    speed = json.loads(speed_path.read_text()) if speed_path.exists() else {}
    by_name: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(OUT.glob(f"{base}-*-s*-{steps}.json")):
        res = json.loads(path.read_text())
        by_name.setdefault(res["variant"], []).append(res)
    if "baseline" not in by_name:
        raise SystemExit(f"no baseline runs of {steps} steps in {OUT}")
    base_mean = statistics.mean(r["final_val_loss"] for r in by_name["baseline"])
    base_cost = speed.get("costs", {}).get("baseline")
    for name in VARIANTS:
        if name not in by_name:  # timed for its step cost only (listed in the main table)
            if steps != DEFAULT_STEPS:
                continue
            cost = speed.get("costs", {}).get(name)
            if cost and base_cost:
                rows.append({"variant": name, "change": VARIANTS[name][2], "seeds": "", "val_mean": "",
                             "val_min": "", "val_max": "", "delta_vs_baseline": "",
                             "step_cost_vs_baseline": round(cost / base_cost, 2), "params": ""})
            continue
        runs = sorted(by_name[name], key=lambda r: r["seed"])
        losses = [r["final_val_loss"] for r in runs]
        cost = speed.get("costs", {}).get(name)
        rows.append({"variant": name, "change": VARIANTS[name][2], "seeds": " ".join(str(r["seed"]) for r in runs),
                     "val_mean": round(statistics.mean(losses), 4), "val_min": min(losses), "val_max": max(losses),
                     "delta_vs_baseline": round(statistics.mean(losses) - base_mean, 4),
                     "step_cost_vs_baseline": round(cost / base_cost, 2) if cost and base_cost else "",
                     "params": runs[0]["params"]})
    # the main table is the 600-step one; a longer horizon gets its own pair of files
    stem = ROOT / "bench" / ("ablation" if steps == DEFAULT_STEPS else f"ablation-{steps}-steps")
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = [f"Val loss on the whole validation split after {steps} steps of `{base}` with one change "
             f"(one thread; mean over seeds, [min, max]); step cost = median seconds per step relative to "
             f"the baseline, timed side by side in one process ({speed.get('machine', {}).get('cpu', '?')}, "
             f"1-min load {round(speed.get('machine', {}).get('load_avg_1min') or 0, 1)}).", "",
             "| variant | change | seeds | val loss mean [min, max] | vs baseline | step cost | params |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["seeds"] == "":
            lines.append(f"| {r['variant']} | {r['change']} | - | not run | - | {r['step_cost_vs_baseline']}x | - |")
            continue
        lines.append(f"| {r['variant']} | {r['change']} | {r['seeds']} | {r['val_mean']:.4f} "
                     f"[{r['val_min']:.4f}, {r['val_max']:.4f}] | {r['delta_vs_baseline']:+.4f} | "
                     f"{r['step_cost_vs_baseline'] or '-'}x | {r['params']:,} |")
    names = " ".join(by_name) if steps != DEFAULT_STEPS else ""
    lines += ["", f"Made by: `python bench/ablation.py --steps {steps} --seeds 1 2 3"
              f"{' --variants ' + names if names else ''} && python bench/ablation.py --speed && "
              f"python bench/ablation.py --summarize --steps {steps}`"]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--base", default=BASE, help="the preset every variant changes")
    ap.add_argument("--speed", action="store_true", help="measure each variant's step cost instead")
    ap.add_argument("--summarize", action="store_true", help="write bench/ablation.md and bench/ablation.csv")
    args = ap.parse_args()
    torch.set_num_threads(1)
    if args.summarize:
        summarize(args.steps, args.base)
    elif args.speed:
        costs = step_costs(args.variants, args.base)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / f"{args.base}-speed.json").write_text(json.dumps({"costs": costs, "machine": machine_info()}, indent=1))
        for n, c in costs.items():
            print(f"{n:12s} {1000 * c:6.1f} ms/step  {c / costs[args.variants[0]]:.2f}x")
    else:
        run_all(args.variants, args.seeds, args.steps, args.base)


if __name__ == "__main__":
    main()
