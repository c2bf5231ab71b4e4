"""Wall time to a validation loss, and the best loss within a time budget, on tiny Shakespeare.

Everything trains through the library's Trainer, the code `minigpt train` runs.

1. target: nanoGPT's CPU recipe (`nanogpt-cpu`: 2000 iterations, evaluations every 250 as in its
   config) runs once per repeat; its wall time is "the recipe time". `shakespeare-cpu` then runs
   as `minigpt train --max-time B` does -- the schedule fitted to a budget of B seconds from the
   speed measured on the spot -- for B in --budgets-target, shortest first, until a run's
   evaluation shows val loss <= --target (1.88 by default; nanoGPT's recipe ends near 1.886).
   Its time to target is the wall time at that evaluation, counting the speed measurement.
   The two alternate repeat by repeat (A, B, B, A ...); the ratio is the median of per-repeat
   ratios (time to target / recipe time).
2. budget: `shakespeare-cpu` with max_time_s = 300 and 600 s (schedule fitted likewise); the
   best val loss reached.

    python bench/time_to_loss.py --mode target            # ~2.5 minutes per repeat
    python bench/time_to_loss.py --mode budget            # 5 + 10 minutes
    python bench/time_to_loss.py --quick                  # smoke run (~1 minute)
    python bench/time_to_loss.py --preset-arg lr=1e-2     # try a change to shakespeare-cpu
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import time
from typing import Any

import torch
from _common import machine_info, markdown_table, median, set_threads, shakespeare_ids, write_json

BASELINE = "nanogpt-cpu"
CANDIDATE = "shakespeare-cpu"


def setup(preset_name: str, overrides: dict[str, Any], model_overrides: dict[str, Any], data) -> tuple:
    from minigpt.model import GPT
    from minigpt.presets import get_preset
    from minigpt.train import lm_batches

    train, val, tok = data
    preset = get_preset(preset_name)
    mcfg = preset.model_config(vocab_size=tok.vocab_size, **model_overrides)
    tcfg = preset.train_config(out_dir=None, progress=False, device="cpu", **overrides)
    torch.manual_seed(tcfg.seed)
    model = GPT(mcfg)
    return model, lm_batches(train, val, mcfg.block_size, tcfg.batch_size), tcfg, mcfg


def run(preset_name: str, data, target: float, overrides: dict[str, Any], model_overrides: dict[str, Any],
        budget: float | None = None, stop_at_target: bool = False) -> dict[str, Any]:
    """One training run; with `budget`, planned like `minigpt train --max-time budget`."""
    from minigpt.train import Trainer, fit_to_budget

    t0 = time.perf_counter()
    model, get_batch, tcfg, mcfg = setup(preset_name, overrides, model_overrides, data)
    if budget is not None:
        tcfg, _ = fit_to_budget(model, get_batch, dataclasses.replace(tcfg, max_time_s=budget))
    planning = time.perf_counter() - t0  # measuring the speed is part of a timed run's cost
    hit: dict[str, Any] = {}

    def on_event(ev) -> bool:
        if ev.kind == "eval" and not hit and ev.metrics["val_loss"] <= target:
            hit.update(step=ev.step, time_s=planning + ev.metrics["elapsed"], val_loss=ev.metrics["val_loss"])
        return bool(hit) and stop_at_target  # a sweep run has answered its question

    history = Trainer(model, get_batch, tcfg, callback=on_event).fit()
    return {"preset": preset_name, "budget_s": budget, "max_iters": tcfg.max_iters, "reached": bool(hit),
            "time_s": hit.get("time_s"), "step": hit.get("step"), "val_loss_at_target": hit.get("val_loss"),
            "best_val_loss": history.best_val_loss,
            "last_val_loss": history.last_val_loss, "steps_done": history.rows[-1]["step"],
            "wall_s": planning + history.rows[-1]["elapsed"], "tokens_per_step": tcfg.batch_size * mcfg.block_size,
            "params": sum(p.numel() for p in model.parameters()), "train_config": tcfg.to_dict()}


def sweep(data, target: float, budgets: list[float], overrides: dict[str, Any],
          model_overrides: dict[str, Any]) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """Budget-fitted runs of the candidate, shortest budget first, until one reaches the target."""
    runs = []
    for b in sorted(budgets):
        res = run(CANDIDATE, data, target, overrides, model_overrides, budget=b, stop_at_target=True)
        runs.append(res)
        got = f"{res['time_s']:.1f} s (step {res['step']})" if res["reached"] else "not reached"
        print(f"  {CANDIDATE} --max-time {b:g}: {res['max_iters']} steps, last val loss {res['last_val_loss']:.3f}, "
              f"val loss <= {target}: {got}", flush=True)
        if res["reached"]:
            return res, runs
    return None, runs


def _parse_kv(items: list[str]) -> dict[str, Any]:
    out = {}
    for item in items:
        key, _, value = item.partition("=")
        try:
            out[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[key] = value
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="loose target, short runs: checks the script works")
    ap.add_argument("--mode", choices=["target", "budget", "all"], default="all")
    ap.add_argument("--target", type=float, default=None, help="val loss to reach (default 1.88; quick 2.5)")
    ap.add_argument("--budgets-target", type=float, nargs="+", default=None,
                    help="--max-time budgets tried for shakespeare-cpu in target mode (default 20 25 30 40 60 90)")
    ap.add_argument("--budgets", type=float, nargs="+", default=None, help="budget runs in s (default 300 600)")
    ap.add_argument("--repeats", type=int, default=None, help="target repeats (default 3; quick 1)")
    ap.add_argument("--preset-arg", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="TrainConfig overrides for shakespeare-cpu, e.g. lr=1e-2 batch_size=12")
    ap.add_argument("--model-arg", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="GPTConfig overrides for shakespeare-cpu, e.g. n_embd=192 position=learned")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    args = ap.parse_args()
    set_threads(args.threads)
    target = args.target or (2.5 if args.quick else 1.88)
    targets_b = args.budgets_target or ([5.0, 10.0] if args.quick else [20.0, 25.0, 30.0, 40.0, 60.0, 90.0])
    budgets = args.budgets or ([15.0] if args.quick else [300.0, 600.0])
    repeats = args.repeats or (1 if args.quick else 3)
    overrides, model_overrides = _parse_kv(args.preset_arg), _parse_kv(args.model_arg)
    base_ov = {"max_iters": 200, "lr_decay_iters": 200, "eval_interval": 50, "eval_iters": 5} if args.quick else {}
    if args.quick:
        overrides = {"eval_iters": 5, **overrides}

    data = shakespeare_ids()
    payload: dict[str, Any] = {"target": target, "machine": machine_info(), "overrides": overrides,
                               "model_overrides": model_overrides}
    if args.mode in ("target", "all"):
        rows, ratios, record = [], [], []
        for r in range(repeats):
            order = ["base", "cand"] if r % 2 == 0 else ["cand", "base"]
            res_base = res_cand = None
            for who in order:
                if who == "base":
                    res_base = run(BASELINE, data, target, base_ov, {})
                    got = f"{res_base['time_s']:.1f} s" if res_base["reached"] else "not reached"
                    print(f"repeat {r + 1}/{repeats} {BASELINE}: {res_base['steps_done']} steps in "
                          f"{res_base['wall_s']:.1f} s, last val loss {res_base['last_val_loss']:.3f} "
                          f"(<= {target}: {got})", flush=True)
                else:
                    print(f"repeat {r + 1}/{repeats} {CANDIDATE}:", flush=True)
                    res_cand, tried = sweep(data, target, targets_b, overrides, model_overrides)
                    record.append(tried)
            ratio = res_cand["time_s"] / res_base["wall_s"] if res_cand else float("nan")
            ratios.append(ratio)
            rows.append([r + 1, res_base["wall_s"], res_base["last_val_loss"],
                         res_cand["budget_s"] if res_cand else "-", res_cand["max_iters"] if res_cand else "-",
                         res_cand["time_s"] if res_cand else float("nan"),
                         res_cand["val_loss_at_target"] if res_cand else float("nan"),
                         "-" if ratio != ratio else f"{ratio:.2f}x"])
            payload.setdefault("target_runs", []).append({"baseline": res_base, "candidate": res_cand})
        print(f"\nTime to val loss <= {target}: {CANDIDATE} planned for a budget (like `minigpt train --max-time B`) "
              f"vs nanoGPT's CPU recipe run to its end (Trainer, torch threads {torch.get_num_threads()})")
        print(markdown_table(["repeat", f"{BASELINE} recipe s", f"{BASELINE} final val", "budget B s", "steps",
                              f"{CANDIDATE} time to target s", "val loss then", "time / recipe time"], rows))
        finite = [x for x in ratios if x == x]
        print(f"median ratio {median(finite):.2f}x over {len(finite)}/{len(ratios)} repeats" if finite else
              "target not reached")
        payload["sweeps"] = record
    if args.mode in ("budget", "all"):
        res_b = []
        for b in budgets:
            res = run(CANDIDATE, data, target, overrides, model_overrides, budget=b)
            res_b.append(res)
            print(f"budget {b:.0f} s: best val loss {res['best_val_loss']:.4f} after {res['steps_done']} steps "
                  f"(max_iters {res['max_iters']}, {res['wall_s']:.0f} s in all)", flush=True)
        print(f"\nBest val loss within a wall-clock budget ({CANDIDATE}, torch threads {torch.get_num_threads()})")
        print(markdown_table(["budget s", "max_iters", "steps done", "wall s", "best val loss", "last val loss"],
                             [[r["budget_s"], r["max_iters"], r["steps_done"], r["wall_s"], r["best_val_loss"],
                               r["last_val_loss"]] for r in res_b]))
        payload["budget_runs"] = res_b
    print(f"\nmachine: {machine_info()}")
    print(f"wrote {write_json('time_to_loss', payload)}")


if __name__ == "__main__":
    main()
