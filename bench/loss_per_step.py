"""Validation loss against optimizer step (and CPU-seconds) for a preset, load-independent.

Loss after N steps depends only on the recipe and the seed, not on how busy the machine is, so this
is the fair way to compare recipes on a shared machine; cost per step is reported as CPU time of
this process (one torch thread). Multiply steps by an idle machine's seconds per step for wall time.

    python bench/loss_per_step.py --preset shakespeare-cpu --stop 1400
    python bench/loss_per_step.py --preset nanogpt-cpu --stop 2000
    python bench/loss_per_step.py --preset shakespeare-cpu --train-arg lr=1e-3 --model-arg n_embd=192
"""

from __future__ import annotations

import argparse
import time

import torch
from _common import markdown_table, shakespeare_ids, write_json
from time_to_loss import _parse_kv as _kv  # FIELD=VALUE flags, parsed the same way


def main() -> None:
    from minigpt.model import GPT
    from minigpt.presets import get_preset
    from minigpt.train import Trainer, lm_batches

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="shakespeare-cpu")
    ap.add_argument("--stop", type=int, default=1400, help="stop after this many steps (the schedule is unchanged)")
    ap.add_argument("--eval-interval", type=int, default=100)
    ap.add_argument("--eval-iters", type=int, default=10)
    ap.add_argument("--train-arg", nargs="*", default=[], metavar="FIELD=VALUE")
    ap.add_argument("--model-arg", nargs="*", default=[], metavar="FIELD=VALUE")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, val, tok = shakespeare_ids()
    preset = get_preset(args.preset)
    mcfg = preset.model_config(vocab_size=tok.vocab_size, **_kv(args.model_arg))
    tcfg = preset.train_config(out_dir=None, progress=False, device="cpu", eval_interval=args.eval_interval,
                               eval_iters=args.eval_iters, **_kv(args.train_arg))
    torch.manual_seed(tcfg.seed)
    rows = []
    tokens_per_step = tcfg.batch_size * mcfg.block_size * tcfg.grad_accum

    def on_event(ev) -> bool:
        if ev.kind == "eval":
            rows.append({"step": ev.step, "tokens": ev.step * tokens_per_step,
                         "val_loss": round(ev.metrics["val_loss"], 4), "cpu_s": round(time.process_time(), 1)})
            print(rows[-1], flush=True)
        return ev.step >= args.stop

    model = GPT(mcfg)
    Trainer(model, lm_batches(train, val, mcfg.block_size, tcfg.batch_size), tcfg, callback=on_event).fit()
    print(markdown_table(list(rows[0]), [list(r.values()) for r in rows]))
    write_json(f"loss_per_step_{args.preset}", {"preset": args.preset, "rows": rows})


if __name__ == "__main__":
    main()
