"""Wall time to a validation loss, and the best loss within a time budget, on tiny Shakespeare.

Two measurements, both through the library's Trainer (the code `minigpt train` runs):

1. target: each preset trains until an evaluation shows val loss <= --target (1.88 by default,
   nanoGPT's CPU recipe ends near 1.886) or until --max-time. Presets alternate run by run
   (A, B, A, B ...) and the speedup is the median of per-repeat time ratios against nanogpt-cpu.
   Wall time includes the evaluations (every --eval-interval steps, same for every preset).
2. budget: the shakespeare-cpu preset with max_time_s = 300 and 600 s; reports the best val loss.
   A cosine schedule only helps if it finishes inside the budget, so by default max_iters is
   fitted to the budget from the steps/s measured in a short calibration run (--no-fit keeps the
   preset's max_iters).

    python bench/time_to_loss.py --mode target            # a few minutes per repeat
    python bench/time_to_loss.py --mode budget            # 5 + 10 minutes
    python bench/time_to_loss.py --quick                  # smoke run (~1-2 minutes)
    python bench/time_to_loss.py --preset-arg lr=3e-3     # try a change to shakespeare-cpu
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


def calibrate(preset_name: str, data, model_overrides: dict[str, Any], steps: int = 30) -> float:
    """Optimizer steps per second of a preset on this machine right now (after 5 warm-up steps)."""
    from minigpt.train import Trainer

    model, get_batch, tcfg, _ = setup(preset_name, {"eval_interval": 0}, model_overrides, data)
    trainer = Trainer(model, get_batch, dataclasses.replace(tcfg, max_iters=5))
    trainer.fit()
    trainer.config = dataclasses.replace(tcfg, max_iters=5 + steps)
    t0 = time.perf_counter()
    trainer.fit()
    return steps / (time.perf_counter() - t0)


def run_to_target(preset_name: str, data, target: float, max_time: float, overrides: dict[str, Any],
                  model_overrides: dict[str, Any]) -> dict[str, Any]:
    from minigpt.train import Trainer

    model, get_batch, tcfg, mcfg = setup(preset_name, {"max_time_s": max_time, **overrides}, model_overrides, data)
    hit: dict[str, Any] = {}

    def on_event(ev) -> bool:
        if ev.kind == "eval" and ev.metrics["val_loss"] is not None and ev.metrics["val_loss"] <= target and not hit:
            hit.update(step=ev.step, elapsed=ev.metrics["elapsed"], val_loss=ev.metrics["val_loss"])
            return True
        return False

    history = Trainer(model, get_batch, tcfg, callback=on_event).fit()
    return {"preset": preset_name, "reached": bool(hit), "time_s": hit.get("elapsed"), "step": hit.get("step"),
            "val_loss": hit.get("val_loss", history.last_val_loss), "best_val_loss": history.best_val_loss,
            "steps_done": history.evals[-1]["step"] if history.evals else 0,
            "elapsed_total": history.rows[-1]["elapsed"], "tokens_per_step": tcfg.batch_size * mcfg.block_size,
            "params": sum(p.numel() for p in model.parameters()), "train_config": tcfg.to_dict()}


def run_budget(preset_name: str, data, budget: float, fit: bool, overrides: dict[str, Any],
               model_overrides: dict[str, Any]) -> dict[str, Any]:
    from minigpt.train import Trainer

    extra: dict[str, Any] = {}
    if fit and "max_iters" not in overrides:
        sps = calibrate(preset_name, data, model_overrides)
        # evaluations cost ~5% at the presets' intervals; aim to finish the decay just inside the budget
        extra["max_iters"] = max(50, int(budget * sps * 0.93))
        extra["lr_decay_iters"] = None
    model, get_batch, tcfg, _ = setup(preset_name, {"max_time_s": budget, **extra, **overrides}, model_overrides,
                                      data)
    history = Trainer(model, get_batch, tcfg).fit()
    return {"preset": preset_name, "budget_s": budget, "max_iters": tcfg.max_iters,
            "steps_done": history.rows[-1]["step"], "best_val_loss": history.best_val_loss,
            "last_val_loss": history.last_val_loss, "status": history.status,
            "elapsed": history.rows[-1]["elapsed"], "train_config": tcfg.to_dict()}


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
    ap.add_argument("--quick", action="store_true", help="loose target, short budgets: checks the script works")
    ap.add_argument("--mode", choices=["target", "budget", "all"], default="all")
    ap.add_argument("--target", type=float, default=None, help="val loss to reach (default 1.88; quick 2.5)")
    ap.add_argument("--max-time", type=float, default=None, help="cap per target run in s (default 600; quick 40)")
    ap.add_argument("--budgets", type=float, nargs="+", default=None, help="budget runs in s (default 300 600)")
    ap.add_argument("--repeats", type=int, default=None, help="target runs per preset (default 3; quick 1)")
    ap.add_argument("--presets", nargs="+", default=["shakespeare-cpu", BASELINE])
    ap.add_argument("--eval-interval", type=int, default=100, help="steps between evaluations in target runs")
    ap.add_argument("--preset-arg", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="TrainConfig overrides for the non-baseline presets, e.g. lr=3e-3 batch_size=32")
    ap.add_argument("--model-arg", nargs="*", default=[], metavar="FIELD=VALUE",
                    help="GPTConfig overrides for the non-baseline presets, e.g. n_embd=256 block_size=64")
    ap.add_argument("--no-fit", action="store_true", help="budget runs keep the preset's max_iters")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (1 on a shared machine)")
    args = ap.parse_args()
    set_threads(args.threads)
    target = args.target or (2.5 if args.quick else 1.88)
    max_time = args.max_time or (40.0 if args.quick else 600.0)
    budgets = args.budgets or ([30.0] if args.quick else [300.0, 600.0])
    repeats = args.repeats or (1 if args.quick else 3)
    overrides, model_overrides = _parse_kv(args.preset_arg), _parse_kv(args.model_arg)
    common = {"eval_iters": 5} if args.quick else {}  # quick: cheap evaluations, for every preset alike

    def ov(name: str) -> tuple[dict, dict]:
        return (dict(common), {}) if name == BASELINE else ({**common, **overrides}, model_overrides)

    data = shakespeare_ids()
    payload: dict[str, Any] = {"target": target, "machine": machine_info(), "overrides": overrides,
                               "model_overrides": model_overrides}
    if args.mode in ("target", "all"):
        runs: dict[str, list[dict]] = {p: [] for p in args.presets}
        for r in range(repeats):
            order = args.presets if r % 2 == 0 else args.presets[::-1]
            for name in order:
                o, mo = ov(name)
                res = run_to_target(name, data, target, max_time, {"eval_interval": args.eval_interval, **o}, mo)
                runs[name].append(res)
                got = f"{res['time_s']:.1f} s (step {res['step']})" if res["reached"] else \
                    f"not reached in {res['elapsed_total']:.0f} s (best {res['best_val_loss']:.3f})"
                print(f"repeat {r + 1}/{repeats} {name}: val loss <= {target}: {got}", flush=True)
        rows = []
        for name, rs in runs.items():
            times = [x["time_s"] for x in rs if x["reached"]]
            ratio = float("nan")
            if name != BASELINE and BASELINE in runs:
                pairs = [(a["time_s"], b["time_s"]) for a, b in zip(rs, runs[BASELINE]) if a["reached"] and
                         b["reached"]]
                ratio = median([a / b for a, b in pairs]) if pairs else float("nan")
            rows.append([name, f"{rs[0]['params']:,}", rs[0]["tokens_per_step"], f"{len(times)}/{len(rs)}",
                         median(times), median([x["step"] for x in rs if x["reached"]]),
                         "-" if ratio != ratio else f"{ratio:.2f}x"])
        print(f"\nTime to val loss <= {target} (Trainer, eval every {args.eval_interval} steps, torch threads "
              f"{torch.get_num_threads()}, medians of {repeats} alternating repeats)")
        print(markdown_table(["preset", "params", "tokens/step", "reached", "time s", "step",
                              f"time vs {BASELINE}"], rows))
        payload["target_runs"] = runs
    if args.mode in ("budget", "all"):
        name = next(p for p in args.presets if p != BASELINE) if len(args.presets) > 1 else args.presets[0]
        o, mo = ov(name)
        res_b = []
        for b in budgets:
            res = run_budget(name, data, b, not args.no_fit, o, mo)
            res_b.append(res)
            print(f"budget {b:.0f} s: best val loss {res['best_val_loss']:.4f} after {res['steps_done']} steps "
                  f"(max_iters {res['max_iters']})", flush=True)
        print(f"\nBest val loss within a wall-clock budget ({name}, torch threads {torch.get_num_threads()})")
        print(markdown_table(["budget s", "max_iters", "steps done", "best val loss", "last val loss"],
                             [[r["budget_s"], r["max_iters"], r["steps_done"], r["best_val_loss"],
                               r["last_val_loss"]] for r in res_b]))
        payload["budget_runs"] = res_b
    print(f"\nmachine: {machine_info()}")
    print(f"wrote {write_json('time_to_loss', payload)}")


if __name__ == "__main__":
    main()
