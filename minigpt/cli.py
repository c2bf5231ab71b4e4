"""The `minigpt` command line (also `python -m minigpt`).

    minigpt train      train a model on tiny Shakespeare or any UTF-8 text file (presets + flags)
    minigpt generate   sample text from a checkpoint: one prompt, a prompts file, or interactively

Other modules add their own subcommands through an `add_cli(subparsers)` function that registers a
parser and sets `func=handler(args) -> int | None` (see `_PLUGINS`). Heavy imports (the trainer,
Hugging Face) happen inside the handlers, so `minigpt --help` stays quick.

Every flag may also be spelled with underscores (`--batch_size`, nanoGPT's config keys): one rule
(`_dashed`) instead of a hidden alias per flag. Training policy (epochs to steps, warmup and decay
clamps, a time budget turned into steps) is `minigpt.train.plan_run`; `cmd_train` parses and calls.

Errors a user can fix (a bad flag value, a missing file, unknown characters in a prompt) print one
line and exit with status 2, without a traceback; set MINIGPT_DEBUG=1 to see the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import Any

from .checkpoint import resolve_checkpoint  # re-exported: it was defined here before

__all__ = ["CLIError", "build_parser", "main", "resolve_checkpoint"]

# Modules that may add subcommands; each is optional (missing module or dependency = no subcommand).
_PLUGINS = ("minigpt.course", "minigpt.tools.attention_report", "minigpt.serve", "minigpt.hf.export")
_DEFAULT_OUT = "out"
_INTERACTIVE_HELP = (
    "type a prompt and press Enter, or change a setting:\n"
    "  temp 0.8     temperature (> 0)          length 200   new tokens per answer\n"
    "  topk 40      keep the 40 likeliest      topp 0.9     nucleus sampling (0, 1]\n"
    "  topk off / topp off   disable a filter  greedy on|off  always pick the likeliest token\n"
    "  seed 1       reproducible samples       settings     show the current settings\n"
    "  help         this text                  quit         leave (Ctrl-D works too)"
)


class CLIError(Exception):
    """A mistake the user can fix; printed as one line, exit status 2."""


# ---------------------------------------------------------------------------- argument types


def _checked(parse: Any, ok: Any, rule: str, kind: str) -> Any:
    """An argparse type: `parse(text)`, then require `ok(value)`; errors say "must be <rule>"."""

    def convert(text: str) -> Any:
        try:
            value = parse(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {kind}, got {text!r}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value

    return convert


_MAX_COUNT = 2**40  # steps, tokens, sizes: anything larger is a typo (and overflows int64 arithmetic)
_positive_int = _checked(int, lambda v: 1 <= v <= _MAX_COUNT, f"in [1, {_MAX_COUNT}]", "a whole number")
_non_negative_int = _checked(int, lambda v: 0 <= v <= _MAX_COUNT, f"in [0, {_MAX_COUNT}]", "a whole number")
_seed = _checked(int, lambda v: 0 <= v < 2**62, "in [0, 2**62)", "a whole number")
_positive_float = _checked(float, lambda v: v > 0 and math.isfinite(v), "a number > 0", "a number")
_non_negative_float = _checked(float, lambda v: v >= 0 and math.isfinite(v), "a finite number >= 0", "a number")
_fraction = _checked(float, lambda v: 0.0 <= v < 1.0, "in [0, 1)", "a number")
_size = _checked(int, lambda v: 1 <= v <= 2**16, "in [1, 65536]", "a whole number")  # widths, contexts
_layers = _checked(int, lambda v: 1 <= v <= 1024, "in [1, 1024]", "a whole number")
_big_size = _checked(int, lambda v: 1 <= v <= 2**20, "in [1, 1048576]", "a whole number")
_length = _checked(int, lambda v: 0 <= v <= 10**7, "in [0, 10000000]", "a whole number")


_DTYPE_ALIASES = {"auto": "auto", "fp32": "float32", "float32": "float32", "bf16": "bfloat16",
                  "bfloat16": "bfloat16", "fp16": "float16", "float16": "float16"}


def _dtype(text: str) -> str:
    key = text.strip().lower()
    if key not in _DTYPE_ALIASES:
        raise argparse.ArgumentTypeError(
            f"choose auto, float32 (fp32), bfloat16 (bf16) or float16 (fp16), not {text!r}"
        )
    return _DTYPE_ALIASES[key]


def _dashed(argv: list[str]) -> list[str]:
    """`--batch_size` -> `--batch-size`: every flag is accepted with underscores (the spelling of
    nanoGPT's config keys and of the seed tutorials) without a second, hidden set of flags."""
    out: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":  # what follows is data, never a flag
            return out + argv[i:]
        name, eq, value = arg.partition("=")
        out.append(name.replace("_", "-") + eq + value if name.startswith("--") else arg)
    return out


# ---------------------------------------------------------------------------- parsers

_MAIN_EPILOG = """\
examples:
  minigpt train                                    # shakespeare-cpu preset on tiny Shakespeare
  minigpt train --max-time 60 --out-dir out/demo   # a one-minute run
  minigpt generate --checkpoint out/demo --prompt "ROMEO:" --length 300
  minigpt generate --checkpoint out/demo --interactive
  minigpt <command> --help                         # every flag of a command
"""

_TRAIN_EPILOG = """\
presets (model size + training recipe; any flag overrides one field):
{presets}

examples:
  minigpt train                                          # default preset, tiny Shakespeare
  minigpt train --max-time 60 --out-dir out/demo         # stop after one minute
  minigpt train --preset nanogpt-cpu                     # nanoGPT's CPU recipe, for comparison
  minigpt train --n-layer 6 --n-embd 256 --dropout 0.1   # a bigger transformer
  minigpt train --model-type mlp --epochs 1              # the no-attention baseline
  minigpt train --data-file my_text.txt --out-dir out/mine
  minigpt train --out-dir out/demo --resume --max-iters 5000   # continue a run
  minigpt train --config examples/shakespeare.toml --max-iters 100   # a config file; flags override
  minigpt train --config out/demo/run.toml               # re-run a finished run

Outputs in --out-dir: ckpt/ (latest, resumable), best/ (lowest val loss), history.csv/json,
run.toml (every setting of the run).
"""

_GENERATE_EPILOG = """\
examples:
  minigpt generate --checkpoint out/demo --prompt "ROMEO:" --length 300
  minigpt generate --checkpoint out/demo --prompt "To be" --temperature 0.3 --seed 1
  minigpt generate --checkpoint out/demo --top-k 40 --top-p 0.9 --stream
  minigpt generate --checkpoint out/demo --greedy --prompt "KING"
  minigpt generate --checkpoint out/demo --beam-width 4 --length 80
  minigpt generate --checkpoint out/demo --prompts-file prompts.txt   # one prompt per line
  minigpt generate --checkpoint out/demo --interactive   # then: temp 0.8, length 200, topk 40, topp 0.9, quit

--checkpoint takes an output folder of `minigpt train` (best/ is used, else ckpt/) or a checkpoint folder.
"""


def _preset_lines() -> str:
    from .presets import TRAIN_PRESETS

    return "\n".join(f"  {name:<18}{p.description}" for name, p in TRAIN_PRESETS.items())


def _add_train_parser(sub: Any) -> None:
    from .presets import TRAIN_PRESETS

    p = sub.add_parser(
        "train", help="train a character-level model (presets, any UTF-8 text file)",
        description="Train a language model with the minigpt Trainer and save a checkpoint.",
        epilog=_TRAIN_EPILOG.format(presets=_preset_lines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_model_flags(p.add_argument_group("model"), list(TRAIN_PRESETS))
    _add_training_flags(p.add_argument_group("training"))
    _add_output_flags(p.add_argument_group("data, hardware and output"))
    p.set_defaults(func=cmd_train)


def _add_model_flags(g: Any, presets: list[str]) -> None:
    g.add_argument("--preset", default="shakespeare-cpu", choices=presets,
                   help="starting point for every setting below (default: shakespeare-cpu)")
    g.add_argument("--model-type", default="transformer", choices=["transformer", "mlp", "bigram"],
                   help="transformer (GPT), or a baseline without attention (default: transformer)")
    g.add_argument("--n-layer", type=_layers, help="transformer blocks")
    g.add_argument("--n-head", type=_size, help="attention heads (must divide --n-embd)")
    g.add_argument("--n-embd", type=_size, help="model width (embedding size)")
    g.add_argument("--block-size", type=_size, help="context length in tokens")
    g.add_argument("--d-ff", type=_big_size, help="feed-forward width (transformer, default 4*n_embd) "
                   "or hidden width (mlp)")
    g.add_argument("--context", type=_size, help="tokens the mlp baseline reads (default 8)")
    g.add_argument("--dropout", type=_fraction, help="dropout probability in [0, 1)")
    g.add_argument("--position", choices=["learned", "rope", "sinusoidal", "none"],
                   help="positional encoding of the transformer (shakespeare-cpu: rope)")
    g.add_argument("--tokenizer", default="char", choices=["char", "bpe"],
                   help="char (one id per character, default) or byte-level BPE")
    g.add_argument("--vocab-size", type=_big_size, default=512, help="BPE vocabulary size (default 512)")


def _add_training_flags(g: Any) -> None:
    g.add_argument("--batch-size", type=_big_size, help="sequences per step")
    g.add_argument("--lr", type=_positive_float, help="peak learning rate")
    g.add_argument("--optimizer", choices=["adamw", "muon"],
                   help="adamw, or muon (Muon for hidden matrices, AdamW for the rest; shakespeare-cpu's choice)")
    g.add_argument("--min-lr", type=_non_negative_float, help="final learning rate of the decay (default lr/10)")
    g.add_argument("--max-iters", type=_positive_int, help="optimizer steps")
    g.add_argument("--epochs", type=_positive_float,
                   help="passes over the training text; converted to --max-iters from the dataset size")
    g.add_argument("--max-time", type=_positive_float, help="stop after this many seconds (checkpoint kept); "
                   "without --max-iters, the steps are planned from the measured speed so the LR decay fits")
    g.add_argument("--warmup-iters", type=_non_negative_int, help="linear warmup steps")
    g.add_argument("--schedule", choices=["cosine", "linear", "constant"], help="learning-rate decay")
    g.add_argument("--weight-decay", type=_non_negative_float, help="AdamW weight decay")
    g.add_argument("--grad-clip", type=_non_negative_float, help="max gradient norm (0 = off)")
    g.add_argument("--grad-accum", type=_big_size, help="micro-batches per optimizer step")
    g.add_argument("--eval-interval", type=_non_negative_int, help="steps between evaluations (0 = never)")
    g.add_argument("--eval-iters", type=_positive_int, help="batches per evaluation")
    g.add_argument("--patience", type=_positive_int, help="early stopping: evaluations without improvement")
    g.add_argument("--seed", type=_seed, help="random seed (default 1337)")


def _add_output_flags(g: Any) -> None:
    g.add_argument("--data-file", help="any UTF-8 text file (default: tiny Shakespeare, downloaded once)")
    g.add_argument("--val-fraction", type=_fraction, default=0.1, help="share of the text held out (default 0.1)")
    g.add_argument("--out-dir", default=_DEFAULT_OUT, help=f"where checkpoints go (default: {_DEFAULT_OUT})")
    g.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, cuda:N, mps")
    g.add_argument("--dtype", type=_dtype, help="auto, float32, bfloat16 or float16 (mixed precision)")
    g.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster on GPU)")
    g.add_argument("--resume", action="store_true", help="continue from --out-dir/ckpt if it exists "
                   "(with the saved run's steps, schedule and time budget unless a flag changes them)")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out-dir")
    g.add_argument("--sample-length", type=_non_negative_int, default=300,
                   help="characters of the sample printed at the end (0 = none)")
    g.add_argument("--quiet", action="store_true", help="no progress bar or step lines (evaluation lines stay)")
    _add_config_flags(g)


def _add_config_flags(g: Any) -> None:
    from .training.loggers import LOGGERS

    g.add_argument("--config", metavar="FILE", help="a .toml or .yaml file of these settings (keys: the flag "
                   "names, e.g. batch_size); flags on the command line override it")
    g.add_argument("--logger", choices=LOGGERS, default="csv", help="where the history goes besides "
                   "history.csv/json: tensorboard (out-dir/tensorboard) or wandb (default: csv only)")
    g.add_argument("--progress-interval", type=_non_negative_float, metavar="SECONDS",
                   help="seconds between progress lines when stderr is not a terminal "
                   "(default: $MINIGPT_PROGRESS_INTERVAL or 10)")


def _add_generate_parser(sub: Any) -> None:
    p = sub.add_parser(
        "generate", help="sample text from a trained checkpoint",
        description="Generate text from a checkpoint written by `minigpt train`.",
        epilog=_GENERATE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--checkpoint", default=_DEFAULT_OUT,
                   help=f"output folder of `minigpt train` or a checkpoint folder (default: {_DEFAULT_OUT})")
    p.add_argument("--prompt", default=None, help="text to continue (default: a newline)")
    p.add_argument("--prompts-file", help="a file with one prompt per line; generates for each")
    p.add_argument("--interactive", action="store_true", help="type prompts and settings at a prompt")
    p.add_argument("--length", type=_length, default=300, help="new tokens to generate (default 300)")
    p.add_argument("--temperature", type=float, default=0.8,
                   help="> 0; lower = more focused, 1 = the model's distribution (default 0.8)")
    p.add_argument("--top-k", type=int, default=None, help="sample only from the k likeliest tokens")
    p.add_argument("--top-p", type=float, default=None,
                   help="nucleus sampling: smallest set with probability >= p, in (0, 1]")
    p.add_argument("--greedy", action="store_true", help="always take the likeliest token (deterministic)")
    p.add_argument("--beam-width", type=_positive_int, default=1, help="beam search with this many beams (>1)")
    p.add_argument("--num-samples", type=_positive_int, default=1, help="samples per prompt")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (1 = off)")
    p.add_argument("--seed", type=_seed, default=None, help="make sampling reproducible")
    p.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    p.add_argument("--no-cache", action="store_true", help="recompute the whole context every step (slow)")
    p.add_argument("--device", default="cpu", help="cpu (default), auto, cuda, cuda:N or mps")
    p.set_defaults(func=cmd_generate, _parser=p)


def _add_plugins(sub: Any) -> None:
    for name in _PLUGINS:
        try:
            module = importlib.import_module(name)
        except ImportError:  # module not written yet, or an optional dependency is missing
            continue
        add_cli = getattr(module, "add_cli", None)
        if add_cli is None:
            continue
        try:
            add_cli(sub)
        except Exception as e:  # a broken plugin must not take `train` and `generate` down with it
            print(f"minigpt: warning: {name}.add_cli failed ({type(e).__name__}: {e})", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="minigpt", description="minigpt: train and sample small GPTs (the course's command line).",
        epilog=_MAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"minigpt {__version__}")
    from .training.runconfig import ConfigFileParser

    # ConfigFileParser: `minigpt train --config FILE` reads defaults from the file while parsing
    sub = parser.add_subparsers(dest="command", metavar="<command>", parser_class=ConfigFileParser)
    _add_train_parser(sub)
    _add_generate_parser(sub)
    _add_plugins(sub)
    return parser


# ---------------------------------------------------------------------------- train


def _say(*parts: Any) -> None:
    print(*parts, flush=True)


def _load_text(data_file: str | None) -> tuple[str, str]:
    from .data import load_shakespeare, read_text

    if data_file:
        return read_text(data_file), data_file
    return load_shakespeare(), "tiny Shakespeare"


def _build_model(args: argparse.Namespace, preset: Any, vocab_size: int, say: bool = True) -> tuple[Any, int]:
    """The model the flags describe, and the block size to train on."""
    if args.model_type == "transformer":
        overrides = {k: getattr(args, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "d_ff", "dropout",
                                                   "position") if getattr(args, k) is not None}
        from .model import GPT

        config = preset.model_config(vocab_size=vocab_size, **overrides)
        return GPT(config), config.block_size
    block = args.block_size or preset.model_config().block_size
    ignored = [f"--{k.replace('_', '-')}" for k in ("n_layer", "n_head", "dropout", "position")
               if getattr(args, k) is not None]
    if ignored and say:
        _say(f"note: {', '.join(ignored)} do not apply to --model-type {args.model_type}; ignored")
    if args.model_type == "bigram":
        from .baselines import BigramConfig, BigramLM

        return BigramLM(BigramConfig(vocab_size=vocab_size)), block
    from .baselines import MLPLM, MLPConfig

    kw = {"vocab_size": vocab_size}
    for flag, field_name in (("context", "context"), ("n_embd", "n_embd"), ("d_ff", "hidden")):
        if getattr(args, flag) is not None:
            kw[field_name] = getattr(args, flag)
    return MLPLM(MLPConfig(**kw)), block


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    names = {"batch_size": "batch_size", "lr": "lr", "min_lr": "min_lr", "max_iters": "max_iters",
             "warmup_iters": "warmup_iters", "schedule": "schedule", "weight_decay": "weight_decay",
             "grad_clip": "grad_clip", "grad_accum": "grad_accum", "eval_interval": "eval_interval",
             "eval_iters": "eval_iters", "patience": "early_stopping_patience", "seed": "seed",
             "dtype": "dtype", "max_time": "max_time_s", "optimizer": "optimizer"}
    out = {field_name: getattr(args, flag) for flag, field_name in names.items() if getattr(args, flag) is not None}
    out.update(out_dir=args.out_dir, device=args.device)  # --quiet: see _attach_logging
    if args.compile:
        out["compile"] = True
    return out


def cmd_train(args: argparse.Namespace) -> int:
    from .checkpoint import latest_checkpoint, prepare_out_dir
    from .data import train_val_split
    from .presets import get_preset
    from .train import Trainer, TrainingDiverged, lm_batches, plan_run
    from .training.rng import seed_everything
    from .training.runconfig import resolved_config

    if args.epochs is not None and args.max_iters is not None:
        raise CLIError("give either --epochs or --max-iters, not both")
    preset = get_preset(args.preset)
    overrides = _train_overrides(args)
    text, source = _load_text(args.data_file)
    prepare_out_dir(args.out_dir, resume=args.resume, overwrite=args.overwrite)  # before any work
    ckpt = latest_checkpoint(args.out_dir) if args.resume else None
    if ckpt is not None:
        model, tokenizer, block_size = _resumed_model(args, ckpt, preset, overrides)
    else:
        if args.resume:
            _say(f"no checkpoint in {args.out_dir}; starting a new run")
        # the model's initial weights come from torch's global generator: seed it before building
        seed_everything(preset.train_config(**overrides).seed)
        model, tokenizer, block_size = _new_model(args, preset, text)
    ids = _encode(tokenizer, text)
    if args.val_fraction > 0:
        train_ids, val_ids = train_val_split(ids, args.val_fraction)
    else:
        train_ids, val_ids = ids, ids
        _say("note: --val-fraction 0 validates on the training text itself: the val loss then measures "
             "memorisation, not generalisation (and best/ is chosen by it)")
    config = preset.train_config(**overrides)  # on --resume, overrides start from the saved run's config
    get_batch = lm_batches(train_ids, val_ids, block_size, config.batch_size)
    plan = plan_run(config, get_batch, model, epochs=args.epochs,
                    fit_time=args.max_iters is None and args.epochs is None and ckpt is None)
    for note in plan.notes:
        _say(note + (" (pass --max-iters to choose yourself)" if note.startswith("schedule:") else ""))
    config = plan.config
    _say(f"data: {source}, {len(text):,} characters, {len(train_ids):,} train / {len(val_ids):,} val tokens, "
         f"vocab {tokenizer.vocab_size}")
    _say(f"model: {type(model).__name__}, {_n_params(model):,} parameters, block {block_size}")
    budget = f", at most {config.max_time_s:g} s" if config.max_time_s else ""
    _say(f"training: {config.max_iters} steps of {config.batch_size}x{block_size} tokens, lr {config.lr:g}{budget}")
    metadata = {"preset": args.preset, "data": source, "command": "minigpt " + shlex.join(sys.argv[1:])}
    run_config = resolved_config(args, config, model, block_size)
    metadata["run_config"] = run_config  # meta.json; also out_dir/run.toml, which --config re-runs
    trainer = Trainer(model, get_batch, config, tokenizer=tokenizer, resume=args.resume, metadata=metadata)
    _say(f"device: {trainer.device}, dtype: {trainer.dtype or 'float32'}, out dir: {args.out_dir}")
    _attach_logging(trainer, args, run_config)
    t0 = time.perf_counter()
    try:
        history = trainer.fit()
    except TrainingDiverged as e:
        print(f"minigpt train: error: {e}", file=sys.stderr)
        return 1
    finally:
        trainer.close()
    interrupted = history.status == "interrupted"
    if trainer.is_main:  # no sample after Ctrl-C/SIGTERM: the user asked to stop
        _report(trainer, history, time.perf_counter() - t0, 0 if interrupted else args.sample_length)
    return (trainer.signals.exit_code or 130) if interrupted else 0


def _attach_logging(trainer: Any, args: argparse.Namespace, run_config: dict[str, Any]) -> None:
    """run.toml, the progress display (--quiet, --progress-interval) and the --logger callback."""
    from .training.history import ProgressLog
    from .training.loggers import LoggerCallback, make_logger
    from .training.runconfig import write_config

    trainer.progress = ProgressLog(trainer.is_main, steps=not args.quiet, interval=args.progress_interval)
    if not trainer.is_main:
        return
    if args.out_dir:
        write_config(args.out_dir, run_config)
    if args.logger != "csv":
        trainer.callback = LoggerCallback(make_logger(args.logger, args.out_dir, run_config))


def _encode(tokenizer: Any, text: str) -> Any:
    import torch

    return torch.tensor(tokenizer.encode(text), dtype=torch.long)


def _n_params(model: Any) -> int:
    from .model import count_parameters

    return count_parameters(model)[1]


def _new_model(args: argparse.Namespace, preset: Any, text: str) -> tuple[Any, Any, int]:
    """A fresh tokenizer for the text and the model the flags describe."""
    from .tokenizer import BPETokenizer, CharTokenizer

    tokenizer: CharTokenizer | BPETokenizer
    if args.tokenizer == "char":
        tokenizer = CharTokenizer.from_text(text)
    else:
        tokenizer = BPETokenizer.train(text, vocab_size=args.vocab_size)
    import torch

    with torch.device("meta"):  # sizes first, without allocating: a typo must not take the machine's memory
        skeleton, block_size = _build_model(args, preset, tokenizer.vocab_size, say=False)
    _check_memory(skeleton, block_size, args.batch_size or preset.train_config().batch_size, tokenizer.vocab_size)
    model, block_size = _build_model(args, preset, tokenizer.vocab_size)
    return model, tokenizer, block_size


def _check_memory(model: Any, block_size: int, batch_size: int, vocab_size: int) -> None:
    """Refuse a model + batch that cannot fit in this machine's memory (weights, gradients, two AdamW
    moments, and the logits of one batch with their gradient), before anything is allocated."""
    params = sum(p.numel() for p in model.parameters()) + sum(b.numel() for b in model.buffers())
    need = 4 * (4 * params + 3 * batch_size * block_size * vocab_size)
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # not POSIX: no way to ask, so no check
        return
    if need > have:
        raise CLIError(f"this model ({params:,} parameters) with --batch-size {batch_size} and block size "
                       f"{block_size} needs about {need / 2**30:.1f} GiB, more than this machine's "
                       f"{have / 2**30:.1f} GiB; lower --n-layer/--n-embd/--block-size/--batch-size")


def _resumed_model(
    args: argparse.Namespace, ckpt: Path, preset: Any, overrides: dict[str, Any]
) -> tuple[Any, Any, int]:
    """The checkpoint's model and tokenizer. The saved run's training config (its plan: steps,
    schedule, time budget) fills `overrides` where no flag was given; a model flag that differs from
    the checkpoint is refused."""
    from .checkpoint import load_checkpoint
    from .model import LanguageModel
    from .training.resume import RESUMED_FIELDS

    model, info = load_checkpoint(ckpt)
    _say(f"resuming from {ckpt} (step {info.step}); the model and vocabulary come from the checkpoint")
    if info.tokenizer is None:
        raise CLIError(f"{ckpt} has no tokenizer saved; cannot resume training on text")
    if not isinstance(model, LanguageModel):
        raise CLIError(f"{ckpt} holds a {type(model).__name__}, not a language model with config.block_size")
    _refuse_model_changes(args, ckpt, model, info)
    saved = {k: v for k, v in (info.train_config or {}).items() if k in RESUMED_FIELDS}
    overrides.update({k: v for k, v in saved.items() if k not in overrides})
    return model, info.tokenizer, model.config.block_size


def _refuse_model_changes(args: argparse.Namespace, ckpt: Path, model: Any, info: Any) -> None:
    """--resume continues the saved model: a model flag that says otherwise is a mistake."""
    kind = {"GPT": "transformer", "MLPLM": "mlp", "BigramLM": "bigram"}.get(info.model_class)
    if kind is not None and args.model_type != "transformer" and args.model_type != kind:
        raise CLIError(f"--model-type {args.model_type} differs from the checkpoint's {kind} in {ckpt}; "
                       f"drop the flag to resume, or train a new model in another --out-dir")
    saved = info.model_config or {}
    for flag in ("n_layer", "n_head", "n_embd", "block_size", "d_ff", "dropout", "position", "context"):
        given = getattr(args, flag)
        name = "hidden" if flag == "d_ff" and info.model_class == "MLPLM" else flag
        if given is not None and name in saved and saved[name] != given:
            raise CLIError(f"--{flag.replace('_', '-')} {given} differs from the checkpoint's {saved[name]} "
                           f"in {ckpt}; drop the flag to resume, or train a new model in another --out-dir")


def _report(trainer: Any, history: Any, seconds: float, sample_length: int) -> None:
    """Why training stopped, where the checkpoints are, and a sample of the model's text."""
    config = trainer.config
    best = history.best_val_loss
    best_text = f", best val loss {best:.4f} at step {history.best_step}" if best is not None else ""
    _say(f"\nstopped ({history.status}) after {trainer.step} steps in {seconds:.0f} s{best_text}")
    out = Path(config.out_dir) if config.out_dir else None
    if out is not None:
        _say(f"checkpoint: {out / 'ckpt'}" + (f", best: {out / 'best'}" if (out / "best").exists() else ""))
    if not sample_length:
        return
    import torch

    from .generation import generate

    tokenizer = trainer.tokenizer
    idx = torch.tensor([tokenizer.encode(_default_prompt(tokenizer))], dtype=torch.long, device=trainer.device)
    ids = generate(trainer.model, idx, sample_length, temperature=0.8, seed=config.seed)
    _say("\n--- sample (temperature 0.8) ---")
    _say(tokenizer.decode(ids[0].tolist()).strip("\n"))
    _say("---")
    if out is not None:
        _say(f"more: minigpt generate --checkpoint {shlex.quote(str(out))} --prompt \"...\"")


# ---------------------------------------------------------------------------- generate


def _default_prompt(tokenizer: Any) -> str:
    """A newline starts a fresh passage in most texts (nanoGPT samples from it too)."""
    chars = getattr(tokenizer, "chars", None)
    if chars is not None and "\n" not in chars:
        return chars[0]
    return "\n"


class _Generator:
    """Settings + model + tokenizer; turns one prompt into text (printed or streamed)."""

    def __init__(self, model: Any, tokenizer: Any, device: Any, args: argparse.Namespace) -> None:
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.length = args.length
        self.temperature = args.temperature
        self.top_k = args.top_k
        self.top_p = args.top_p
        self.greedy = args.greedy
        self.beam_width = args.beam_width
        self.seed = args.seed
        self.repetition_penalty = args.repetition_penalty
        self.use_cache = not args.no_cache

    def validate(self) -> None:
        from .generation import validate_sampling

        validate_sampling(self.temperature, self.top_k, self.top_p, self.repetition_penalty)

    def encode(self, prompt: str) -> Any:
        import torch

        if prompt == "":
            raise CLIError("the prompt is empty; type some text (a character model also accepts a newline)")
        try:
            ids = self.tokenizer.encode(prompt)
        except ValueError as e:  # UnknownCharacterError lists every character the model cannot read
            raise CLIError(f"prompt {prompt[:40]!r}: {e}") from None
        return torch.tensor([ids], dtype=torch.long, device=self.device)

    def _kwargs(self, sample: int) -> dict[str, Any]:
        seed = None if self.seed is None else self.seed + sample
        return dict(temperature=self.temperature, top_k=self.top_k, top_p=self.top_p, greedy=self.greedy,
                    repetition_penalty=self.repetition_penalty, use_cache=self.use_cache, seed=seed)

    def run(self, prompt: str, *, stream: bool, sample: int = 0, out: Any = None) -> str:
        """Generate a continuation of `prompt`; prints prompt + continuation, returns the full text."""
        from .generation import beam_search, generate
        from .generation import stream as stream_tokens

        out = out or sys.stdout
        idx = self.encode(prompt)
        if self.beam_width > 1:
            ids = beam_search(self.model, idx, self.length, beam_width=self.beam_width, use_cache=self.use_cache)
            text = self.tokenizer.decode(ids[0].tolist())
            out.write(text + "\n")
        elif stream:
            out.write(prompt)
            out.flush()
            new: list[int] = []
            shown = 0
            for tok in stream_tokens(self.model, idx, self.length, **self._kwargs(sample)):
                new.append(int(tok[0, 0]))
                piece = self.tokenizer.decode(new)
                if piece.endswith("\ufffd"):  # half of a multi-byte character (BPE): wait for the rest
                    continue
                out.write(piece[shown:])
                out.flush()
                shown = len(piece)
            rest = self.tokenizer.decode(new)[shown:]
            out.write(rest + "\n")
            text = prompt + self.tokenizer.decode(new)
        else:
            ids = generate(self.model, idx, self.length, **self._kwargs(sample))
            text = self.tokenizer.decode(ids[0].tolist())
            out.write(text + "\n")
        out.flush()
        return text

    def settings(self) -> str:
        def opt(v: Any) -> str:
            return "off" if v is None else str(v)

        return (f"temp {self.temperature}, length {self.length}, topk {opt(self.top_k)}, topp {opt(self.top_p)}, "
                f"greedy {'on' if self.greedy else 'off'}, seed {opt(self.seed)}")

    def set(self, name: str, value: str) -> str:
        """Apply one interactive command; raises ValueError with a message for a bad value."""
        from .generation import validate_sampling

        off = value.lower() in ("off", "none", "0")
        if name in ("temp", "temperature"):
            t = float(value)
            validate_sampling(t)
            self.temperature = t
        elif name in ("length", "len"):
            n = int(value)
            if not 0 <= n <= 10**7:
                raise ValueError(f"length must be in [0, 10000000], got {n}")
            self.length = n
        elif name in ("topk", "top_k", "top-k"):
            k = None if off else int(value)
            validate_sampling(self.temperature, k, None)
            self.top_k = k
        elif name in ("topp", "top_p", "top-p"):
            p = None if value.lower() in ("off", "none") else float(value)
            validate_sampling(self.temperature, None, p)
            self.top_p = p
        elif name == "greedy":
            if value.lower() not in ("on", "off", "true", "false", "1", "0"):
                raise ValueError("use `greedy on` or `greedy off`")
            self.greedy = value.lower() in ("on", "true", "1")
        elif name == "seed":
            seed = None if value.lower() in ("off", "none") else int(value)
            if seed is not None and not 0 <= seed < 2**62:
                raise ValueError(f"seed must be in [0, 2**62), got {seed}")
            self.seed = seed
        return self.settings()


_SETTINGS = {"temp", "temperature", "length", "len", "topk", "top_k", "top-k", "topp", "top_p", "top-p",
             "greedy", "seed"}


def _interactive(gen: _Generator) -> int:
    _say("minigpt interactive mode. " + _INTERACTIVE_HELP)
    _say("settings: " + gen.settings())
    while True:
        try:
            line = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            _say("")
            return 0
        words = line.split()
        if not words:
            continue
        head = words[0].lower()
        if head in ("quit", "exit", "q", ":q") and len(words) == 1:
            return 0
        if head in ("help", "?") and len(words) == 1:
            _say(_INTERACTIVE_HELP)
            continue
        if head == "settings" and len(words) == 1:
            _say(gen.settings())
            continue
        if head in _SETTINGS and len(words) == 2:
            try:
                _say("ok: " + gen.set(head, words[1]))
            except ValueError as e:
                msg = str(e) if "must" in str(e) or "use" in str(e) else f"bad value {words[1]!r} for {head}"
                _say(f"error: {msg}")
            continue
        try:
            gen.run(line, stream=True)
        except (ValueError, CLIError) as e:  # unknown characters etc.: say so and keep going
            _say(f"error: {e}")
        except KeyboardInterrupt:
            _say("\n(interrupted)")


def _require_decoder(model: Any, folder: Path) -> None:
    """`generate` continues text with a decoder-only model; an encoder-decoder needs a source sequence."""
    from .model import LanguageModel
    from .seq2seq import Transformer

    if isinstance(model, Transformer) or not isinstance(model, LanguageModel):
        raise CLIError(f"{folder} holds a {type(model).__name__} (encoder-decoder or not a language model); "
                       "`minigpt generate` needs a decoder-only model such as GPT, MLPLM or BigramLM")


def _read_prompts(path: str) -> list[str]:
    from .data import read_text

    text = read_text(path, min_chars=1)
    prompts = [line for line in text.splitlines() if line.strip()]
    if not prompts:
        raise CLIError(f"{path} has no prompts; write one prompt per line")
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:

    from .checkpoint import load_checkpoint
    from .device import get_device

    parser = args._parser
    if args.greedy and args.beam_width > 1:
        parser.error("--greedy and --beam-width > 1 are different decoders; pick one")
    modes = [bool(args.prompt is not None), bool(args.prompts_file), bool(args.interactive)]
    if sum(modes) > 1:
        parser.error("use only one of --prompt, --prompts-file and --interactive")
    from .generation import validate_sampling

    try:
        if not args.greedy:
            validate_sampling(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
        validate_sampling(repetition_penalty=args.repetition_penalty)  # it changes greedy output too
    except ValueError as e:
        flag = str(e).split(" ")[0].replace("_", "-")
        parser.error(f"--{flag}: " + str(e).replace("greedy=True", "--greedy"))
    prompts = _read_prompts(args.prompts_file) if args.prompts_file else None

    folder = resolve_checkpoint(args.checkpoint)
    device = get_device(args.device)
    model, info = load_checkpoint(folder, device=device)
    _require_decoder(model, folder)
    if info.tokenizer is None:
        raise CLIError(f"{folder} has no tokenizer saved, so text cannot be encoded; retrain with `minigpt train`")
    val = f", val loss {info.best_val_loss:.4f}" if info.best_val_loss is not None else ""
    print(f"[loaded {folder} (step {info.step}{val}) on {device}]", file=sys.stderr, flush=True)
    gen = _Generator(model, info.tokenizer, device, args)
    if args.interactive:
        return _interactive(gen)
    if prompts is None:
        prompts = [args.prompt if args.prompt is not None else _default_prompt(info.tokenizer)]
        # a typed "\n" in the shell arrives as backslash-n; decode the usual escapes for convenience
        prompts = [p.replace("\\n", "\n").replace("\\t", "\t") for p in prompts]
    for prompt in prompts:  # check every prompt before spending time on the first one
        gen.encode(prompt)
    many = len(prompts) > 1 or args.num_samples > 1
    for i, prompt in enumerate(prompts):
        for s in range(args.num_samples):
            if many:
                _say(f"=== prompt {i + 1}" + (f", sample {s + 1}" if args.num_samples > 1 else "") + " ===")
            gen.run(prompt, stream=args.stream, sample=s)
    return 0


# ---------------------------------------------------------------------------- entry point


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [CLIError, ValueError, FileNotFoundError, IsADirectoryError]
    try:
        from .checkpoint import CheckpointError

        errors.append(CheckpointError)
    except ImportError:
        pass
    try:
        from .data import DownloadError

        errors.append(DownloadError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(_dashed(sys.argv[1:] if argv is None else list(argv)))
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    try:
        return int(func(args) or 0)
    except _user_errors() as e:
        if os.environ.get("MINIGPT_DEBUG"):
            raise
        print(f"minigpt {args.command}: error: {e}", file=sys.stderr)
        return 2
    except ImportError as e:  # an optional dependency: one line naming the extra that installs it
        from ._extras import MissingExtraError, missing_extra

        err = missing_extra(e, f"minigpt {args.command}")
        if err is None or os.environ.get("MINIGPT_DEBUG"):
            raise
        print(MissingExtraError(f"minigpt {args.command}", err.extra, err.name or ""), file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training installed its handlers (or where it cannot)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not turn this into a traceback
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `minigpt generate ... | head`: the reader left, which is fine
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
