"""``minigpt analyze-attention``: attention figures (PNG) and per-head metrics (JSON) of a checkpoint.

The report combines :mod:`minigpt.tools.analysis` (the measurements) and :mod:`minigpt.tools.viz` (the plots);
it lives here so that neither of those two needs the other's reverse import.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from ..model import GPT, GPTConfig, LanguageModel
from ..tokenizer import CharTokenizer, UnknownCharacterError
from . import viz
from .analysis import (
    DEFAULT_THRESHOLDS,
    _check_index,
    _is_minigpt,
    capture_attention,
    classify_heads,
    head_metrics,
    induction_scores,
    top_attended,
)

__all__ = ["add_cli", "analyze_attention", "main"]



def analyze_attention(
    checkpoint: str | Path | None = None,
    text: str = "ROMEO:\nBut soft, what light through yonder window breaks?",
    *,
    out: str | Path = "attention",
    layer: int | None = None,
    head: int | None = None,
    show: bool = False,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """Write attention figures (PNG) and per-head metrics (JSON) for ``text`` into ``out``.

    Without ``checkpoint`` an untrained small GPT (random weights, character vocabulary of ``text``)
    is analysed, which is the baseline a trained model is compared against. Returns the JSON content
    plus ``"files"``.
    """
    if not text:
        raise ValueError("--text is empty: give the text whose attention you want to see")
    if checkpoint is None:
        torch.manual_seed(seed)
        tokenizer = CharTokenizer.from_text(text)
        config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=max(64, len(text)), n_layer=2, n_head=4,
                           n_embd=64, dropout=0.0)
        model: torch.nn.Module = GPT(config)
        description = "untrained GPT (random weights, 2 layers x 4 heads): a baseline, not a trained model"
    else:
        folder = resolve_checkpoint(checkpoint)
        model, info = load_checkpoint(folder, device=device)
        tokenizer = info.tokenizer
        if tokenizer is None:
            raise ValueError(f"{folder} has no tokenizer saved with it, so the text cannot be encoded")
        description = f"checkpoint {folder} (step {info.step})"
    if not _is_minigpt(model) or not isinstance(model, LanguageModel):
        raise ValueError(f"{type(model).__name__} has no forward_with_attention; analyse a GPT checkpoint")
    try:
        ids = tokenizer.encode(text)
    except UnknownCharacterError as e:
        raise ValueError(f"{e}. Use only characters the model was trained on.") from e
    block = model.config.block_size
    note = None
    if len(ids) > block:
        note = f"text cropped to its last {block} tokens (the model's block_size)"
        ids = ids[-block:]
    attn = capture_attention(model, ids, tokenizer)
    ind = induction_scores(model, period=min(24, block // 2), seed=seed)
    metrics = head_metrics(attn, induction=ind)
    table = classify_heads(metrics, as_frame=False)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    layers = range(attn.n_layer) if layer is None else [layer]
    for lyr in layers:
        _check_index(lyr, attn.n_layer, "layer")
        files.append(viz.save_figure(viz.plot_layer_heads(attn, lyr), out / f"layer{lyr}_heads.png"))
    if head is not None:
        for lyr in layers:
            files.append(viz.save_figure(viz.plot_head(attn, layer=lyr, head=head), out / f"layer{lyr}_head{head}.png"))
    files.append(viz.save_figure(viz.plot_rollout(attn), out / "rollout.png"))
    files.append(viz.save_figure(viz.plot_head_metrics(metrics), out / "head_metrics.png"))
    summary_layer = layers[0] if layer is not None else attn.n_layer - 1
    result = {
        "model": description,
        "text": tokenizer.decode(ids),
        "note": note,
        "tokens": attn.tokens,
        "n_layer": attn.n_layer,
        "n_head": attn.n_head,
        "thresholds": DEFAULT_THRESHOLDS,
        "heads": table,
        "top_attended": top_attended(attn, layer=summary_layer, head=head, k=3),
    }
    last = list(range(max(0, attn.T - 3), attn.T))
    summary = top_attended(attn, layer=summary_layer, head=head, k=3, queries=last)
    (out / "metrics.json").write_text(json.dumps(result, indent=2))
    files.append(out / "metrics.json")
    result["files"] = [str(f) for f in files]
    result["last_tokens"] = summary  # the last tokens' top keys, for the console
    if show:
        viz.show_files([f for f in files if str(f).endswith(".png")])
    return result


def _run_cli(args: argparse.Namespace) -> int:
    if args.checkpoint is None:
        print("No --checkpoint given: analysing an UNTRAINED GPT with random weights (a baseline).")
    try:
        result = analyze_attention(
            args.checkpoint, args.text, out=args.out, layer=args.layer, head=args.head, show=args.show,
            seed=args.seed, device=args.device,
        )
    except (CheckpointError, ValueError, IndexError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result["note"]:
        print("Note:", result["note"])
    counts: dict[str, int] = {}
    for row in result["heads"]:
        counts[row["label"]] = counts.get(row["label"], 0) + 1
    print(f"{result['model']}: {result['n_layer']} layers x {result['n_head']} heads; labels: "
          + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(result["last_tokens"])
    for f in result["files"]:
        print("wrote", f)
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``analyze-attention`` on the main CLI's subparsers; the handler is ``args.func(args)``."""
    p = subparsers.add_parser(
        "analyze-attention",
        help="attention heatmaps, rollout and per-head metrics of a checkpoint (PNG + JSON)",
        description="Write attention figures and per-head metrics for a text. Without --checkpoint an "
        "untrained GPT is analysed as a baseline.",
    )
    p.add_argument("--checkpoint", default=None, help="output folder of `minigpt train` (its best/, else "
                   "ckpt/), a checkpoint folder or its model.safetensors")
    p.add_argument("--text", default="ROMEO:\nBut soft, what light through yonder window breaks?",
                   help="text to analyse (cropped to the model's block_size)")
    p.add_argument("--layer", type=int, default=None, help="only this layer (default: all)")
    p.add_argument("--head", type=int, default=None, help="also draw this head on its own")
    p.add_argument("--out", default="attention", help="output folder for the PNGs and metrics.json")
    p.add_argument("--show", action="store_true", help="open the figures in a window as well")
    p.add_argument("--seed", type=int, default=0, help="seed for the untrained model and induction probe")
    p.add_argument("--device", default="cpu", help="device to run on (cpu, cuda, mps)")
    p.set_defaults(func=_run_cli)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """``minigpt analyze-attention ...`` from Python (notebook 09): the main CLI, errors included."""
    from minigpt.cli import main as cli_main

    return cli_main(list(argv) if argv is not None else None)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
