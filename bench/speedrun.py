"""The course speedrun: how fast can a CPU train tiny Shakespeare to nanoGPT's A100 validation loss?

Rules (the same for every entry of RECORDS.md; a run that breaks one is not a record):
1. Data: data/tinyshakespeare.txt, character tokenizer (65 symbols), the library's split
   (`minigpt.data.train_val_split(ids, 0.1)`: the first 90% trains, the last 10% validates).
   Training batches are drawn from the training ids only; nothing is tuned on validation text
   except by reading the reported loss.
2. Validation loss is measured on the WHOLE validation split: every token after the first is
   predicted once, in consecutive windows of the model's block size (mean cross-entropy in nats).
3. The clock counts everything a training step needs (batch sampling, forward, backward,
   optimizer, any compilation or warm-up) from the first step on, and stops while evaluating.
   Model construction and data loading are not counted (they take well under a second).
4. Evaluations at least every `--eval-every` seconds of training time (default 15), at the 5- and
   10-minute marks and at the end. "Time to 1.47" is the training time of the first evaluation at
   or below 1.47 (nanoGPT's shakespeare-char result on an A100), so it is exact to the evaluation
   interval and never early.
5. Report the machine, the torch thread count, the load average before and after, and the seed.
   The learning-rate schedule runs on the clock: progress = training time / budget, so the decay
   ends with the budget whatever the machine's speed (warmup counts steps).

A recipe is a training preset (`minigpt.presets`) plus overrides. One run:

    python bench/speedrun.py --recipe speedrun-cpu --budget 600          # 10 minutes, both cores
    python bench/speedrun.py --recipe shakespeare-cpu --budget 600       # the default preset
    python bench/speedrun.py --recipe speedrun-cpu --budget 180 --seeds 1 2 3
    python bench/speedrun.py --recipe shakespeare-cpu --model-arg qk_norm=True --train-arg lr=2e-2
    python bench/speedrun.py --quick                                     # smoke run, a few seconds

`--steps N` instead of `--budget` trains a fixed number of steps (the schedule then runs on steps):
load-independent, which is how `bench/ablation.py` compares ingredients on a busy machine.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import sys
import time
from typing import Any

import torch
from _common import cpu_has_bf16_matmul, machine_info, shakespeare_ids, write_json
from time_to_loss import _parse_kv

TARGET = 1.47  # nanoGPT's shakespeare-char val loss after ~3 minutes on an A100
MARKS = (300.0, 600.0)  # 5 and 10 minutes of training time


@dataclasses.dataclass
class Recipe:
    """A training preset plus overrides, and the two speedrun-only knobs."""

    preset: str = "speedrun-cpu"
    model_args: dict[str, Any] = dataclasses.field(default_factory=dict)
    train_args: dict[str, Any] = dataclasses.field(default_factory=dict)

    def configs(self, vocab_size: int) -> tuple[Any, Any, dict[str, Any]]:
        from minigpt.presets import get_preset

        preset = get_preset(self.preset)
        extra = {k: v for k, v in self.train_args.items() if k in SPEEDRUN_KNOBS}
        train_args = {k: v for k, v in self.train_args.items() if k not in SPEEDRUN_KNOBS}
        mcfg = preset.model_config(vocab_size=vocab_size, **self.model_args)
        tcfg = preset.train_config(out_dir=None, progress=False, device="cpu", **train_args)
        return mcfg, tcfg, extra

    @property
    def name(self) -> str:
        args = [f"{k}={v}" for k, v in {**self.model_args, **self.train_args}.items()]
        return " ".join([self.preset, *args])


# speedrun knobs, given with --train-arg (no preset sets one): `seq_warmup`, the fraction
# of the run over which the training window grows from 1/4 of block_size to all of it; `cooldown`, a
# warmup-stable-decay schedule: the peak rate until the last `cooldown` fraction, then linear to min_lr;
# `attn_dropout`, the dropout on attention weights when it should differ from the model's `dropout`
# (which then acts on the residual branches only): on a CPU any attention dropout moves
# scaled_dot_product_attention off its fused kernel, and a step costs about twice as much
SPEEDRUN_KNOBS = ("seq_warmup", "cooldown", "attn_dropout")


def lr_at_progress(tcfg: Any, step: int, progress: float, cooldown: float | None = None) -> float:
    """The preset's schedule (or warmup-stable-decay) with its decay spread over progress in [0, 1)."""
    if step < tcfg.warmup_iters:
        return tcfg.lr * (step + 1) / (tcfg.warmup_iters + 1)
    if cooldown:
        left = (1.0 - progress) / cooldown  # 1 when the cooldown starts, 0 at the end
        return tcfg.lr if left >= 1 else tcfg.min_lr_value + left * (tcfg.lr - tcfg.min_lr_value)
    units = 10_000  # progress mapped onto a virtual run of 10k steps, warmup excluded
    virtual = tcfg.warmup_iters + int(progress * units)
    return dataclasses.replace(tcfg, max_iters=tcfg.warmup_iters + units, lr_decay_iters=None).lr_at(virtual)


def seq_len_at(block_size: int, progress: float, seq_warmup: float) -> int:
    """Training window length: grows linearly from block_size / 4 over the first `seq_warmup` of the run."""
    if seq_warmup <= 0 or progress >= seq_warmup:
        return block_size
    lo = max(8, block_size // 4)
    return min(block_size, lo + int((block_size - lo) * progress / seq_warmup) // 8 * 8)


@torch.no_grad()
def full_val_loss(model: torch.nn.Module, val: torch.Tensor, block_size: int, batch: int = 64) -> float:
    """Mean cross-entropy over every token of `val` after the first, in consecutive windows (rule 2)."""
    was_training = model.training
    model.eval()
    n = len(val) - 1
    total, count = 0.0, 0
    starts = list(range(0, n, block_size))
    full = [s for s in starts if s + block_size <= n]
    for i in range(0, len(full), batch):
        idx = torch.tensor(full[i:i + batch])[:, None] + torch.arange(block_size)
        logits, _ = model(val[idx])
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), val[idx + 1].flatten(),
                                                         reduction="sum"))
        count += idx.numel()
    if len(full) < len(starts):  # the tail shorter than a block
        s = starts[-1]
        logits, _ = model(val[s:n][None])
        total += float(torch.nn.functional.cross_entropy(logits[0], val[s + 1:n + 1], reduction="sum"))
        count += n - s
    model.train(was_training)
    return total / count


def build_model(mcfg: Any, extra: dict[str, Any]) -> torch.nn.Module:
    """The recipe's GPT, with the `attn_dropout` knob applied to every attention layer."""
    from minigpt.model import GPT

    model = GPT(mcfg)
    if "attn_dropout" in extra:
        p = float(extra["attn_dropout"])
        if not 0.0 <= p < 1.0:
            raise ValueError(f"attn_dropout must be in [0, 1), got {p}")
        for block in model.transformer.h:
            block.attn.dropout = p
    return model


def train_run(recipe: Recipe, data: tuple, *, seed: int, budget_s: float | None = None, steps: int | None = None,
              eval_every: float = 15.0, eval_steps: int = 0, target: float = TARGET, stop_at: float | None = None,
              train_loss: bool = False, verbose: bool = True) -> dict[str, Any]:
    """One speedrun (with `budget_s`) or a fixed-step run (with `steps`); returns the evaluations.

    `train_loss` also measures each evaluation's loss on the last stretch of the training split, as long
    as the validation split and windowed the same way: the gap between the two shows when a run overfits.
    """
    from minigpt.data import get_batch
    from minigpt.device import autocast, autocast_dtype
    from minigpt.train import configure_optimizer

    if (budget_s is None) == (steps is None):
        raise ValueError("give exactly one of budget_s and steps")
    train, val, tok = data
    mcfg, tcfg, extra = recipe.configs(tok.vocab_size)
    torch.manual_seed(seed)
    model = build_model(mcfg, extra)
    device = torch.device("cpu")
    opt = configure_optimizer(model, tcfg, device)
    dtype = autocast_dtype(device, None if tcfg.dtype == "auto" else tcfg.dtype)
    step_model = torch.compile(model) if tcfg.compile else model
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.Generator().manual_seed(seed)
    evals: list[dict[str, Any]] = []
    clock, step, next_eval, marks = 0.0, 0, eval_every, list(MARKS)

    def evaluate() -> None:
        loss = full_val_loss(model, val, mcfg.block_size)
        evals.append({"step": step, "time_s": round(clock, 2), "val_loss": round(loss, 4)})
        seen = ""
        if train_loss:
            evals[-1]["train_loss"] = round(full_val_loss(model, train[-len(val):], mcfg.block_size), 4)
            seen = f"  train {evals[-1]['train_loss']:.4f}"
        if verbose:
            print(f"  step {step:6d}  {clock:7.1f} s  val {loss:.4f}{seen}", flush=True)

    while True:
        progress = clock / budget_s if budget_s else step / steps  # type: ignore[operator]
        if progress >= 1.0 or (stop_at is not None and evals and evals[-1]["val_loss"] <= stop_at):
            break
        t0 = time.perf_counter()
        lr = lr_at_progress(tcfg, step, progress, extra.get("cooldown"))
        for group in opt.param_groups:
            group["lr"] = lr
        T = seq_len_at(mcfg.block_size, progress, extra.get("seq_warmup", 0.0))
        x, y = get_batch(train, T, tcfg.batch_size, generator=g)
        with autocast(device, dtype):
            _, loss = step_model(x, y)
        loss.backward()
        if tcfg.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(params, tcfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        clock += time.perf_counter() - t0
        step += 1
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{recipe.name}: loss {loss.item()} at step {step}")
        due = clock >= next_eval if budget_s else bool(eval_steps) and step % eval_steps == 0
        if budget_s and marks and clock >= marks[0]:
            due, marks = True, [m for m in marks if m > clock]
        if due:
            evaluate()
            next_eval = clock + eval_every
    if not evals or evals[-1]["step"] != step:
        evaluate()
    hit = next((e for e in evals if e["val_loss"] <= target), None)
    at = {f"val_at_{int(m)}s": next((e["val_loss"] for e in evals if e["time_s"] >= m), None) for m in MARKS}
    return {"recipe": recipe.name, "seed": seed, "budget_s": budget_s, "steps": step,
            "steps_per_s": step / clock if clock else None, "params": sum(p.numel() for p in params),
            "time_to_target_s": hit["time_s"] if hit else None, "step_at_target": hit["step"] if hit else None,
            "target": target, "best_val_loss": min(e["val_loss"] for e in evals),
            "final_val_loss": evals[-1]["val_loss"], **at, "evals": evals,
            "model_config": mcfg.to_dict(), "train_config": tcfg.to_dict(), "speedrun": extra}


def markdown_row(res: dict[str, Any], machine: dict[str, Any], command: str) -> str:
    t = res["time_to_target_s"]
    got = f"{res['target']} not reached"
    if t is not None:
        got = f"{res['target']} at {t:.0f} s (step {res['step_at_target']})"
    parts = [got] + [f"{int(m) // 60} min: {res[f'val_at_{int(m)}s']}" for m in MARKS
                     if res.get(f"val_at_{int(m)}s") is not None]
    span = f"{res['budget_s']:g} s" if res["budget_s"] else f"{res['steps']} steps"
    parts.append(f"best {res['best_val_loss']} in {span} ({res['steps']} steps)")
    units = ", bf16 matmul units" if machine.get("cpu_bf16_matmul") else ""
    where = (f"{machine['cpu']}, {machine['cores']} cores{units}, {machine['torch_threads']} threads, "
             f"load {machine['load_before']:.1f}->{machine['load_after']:.1f}")
    recipe = f"{res['recipe']} (seed {res['seed']})"
    return f"| {time.strftime('%Y-%m-%d')} | {recipe} | {where} | {'; '.join(parts)} | `{command}` |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipe", default="speedrun-cpu", help="a training preset (minigpt.presets)")
    ap.add_argument("--budget", type=float, default=600.0, help="seconds of training time (default 600)")
    ap.add_argument("--steps", type=int, default=None, help="a fixed number of steps instead of a budget")
    ap.add_argument("--seeds", type=int, nargs="+", default=[1337])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--eval-every", type=float, default=15.0, help="seconds of training time between evaluations")
    ap.add_argument("--target", type=float, default=TARGET)
    ap.add_argument("--model-arg", nargs="*", default=[], metavar="FIELD=VALUE", help="GPTConfig overrides")
    ap.add_argument("--train-arg", nargs="*", default=[], metavar="FIELD=VALUE",
                    help=f"TrainConfig overrides, or a speedrun knob: {', '.join(SPEEDRUN_KNOBS)}")
    ap.add_argument("--train-loss", action="store_true",
                    help="also measure the loss on as much training text as the validation split (overfitting)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 30 steps of a tiny model")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    recipe = Recipe(args.recipe, _parse_kv(args.model_arg), _parse_kv(args.train_arg))
    budget, steps = (None, args.steps) if args.steps else (args.budget, None)
    if args.quick:
        recipe.model_args = {"n_layer": 1, "n_embd": 32, "n_head": 2, "block_size": 32, **recipe.model_args}
        recipe.train_args = {"batch_size": 4, "warmup_iters": 2, **recipe.train_args}
        budget, steps = None, 30
    if recipe.train_args.get("dtype") == "bfloat16" and not cpu_has_bf16_matmul():
        print("note: this CPU has no bf16 matrix units (AMX or AVX-512 BF16), so bf16 autocast is likely "
              "slower than float32 here; compare both before you submit a record", flush=True)
    data = shakespeare_ids()
    if args.quick:  # a slice of the validation split keeps the smoke run short
        data = (data[0], data[1][:4096], data[2])
    command = "python bench/speedrun.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    for seed in args.seeds:
        machine = machine_info()
        load_before = os.getloadavg()[0]
        span = f"budget {budget:g} s" if budget else f"{steps} steps"
        print(f"{recipe.name}, seed {seed}, {span}, "
              f"{torch.get_num_threads()} threads, load {load_before:.2f}", flush=True)
        res = train_run(recipe, data, seed=seed, budget_s=budget, steps=steps, eval_every=args.eval_every,
                        eval_steps=10 if args.quick else 0, target=args.target,
                        train_loss=args.train_loss)
        machine.update(load_before=load_before, load_after=os.getloadavg()[0])
        path = write_json(f"speedrun-{args.recipe}", {**res, "machine": machine, "command": command})
        print("| date | recipe | machine | result | command |\n|---|---|---|---|---|")
        print(markdown_row(res, machine, command))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
