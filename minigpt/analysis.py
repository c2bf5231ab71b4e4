"""Looking inside attention: capture the weights, measure every head, name what it does.

Works for a minigpt :class:`~minigpt.model.GPT` (``forward_with_attention`` returns the weights, no
hooks) and for Hugging Face causal LMs loaded with ``attn_implementation="eager"`` (the fused SDPA and
flash kernels never materialise the weights, so they come back empty).

Shapes: L layers, nh heads, T tokens; one layer's weights are (nh, T, T) with rows = queries
(attending from) and columns = keys (attended to). Every row of a causal map sums to 1 over keys
0..i.

Metric conventions (all per head, averaged over queries):

- Query 0 of a causal map can only attend to itself, so it says nothing about the head; every metric
  averages over queries 1..T-1 (all queries when ``causal=False``).
- entropy: ``H_i = -sum_j A[i, j] ln A[i, j]`` in nats; ``entropy_norm`` divides each ``H_i`` by
  ``ln(#keys query i may see)`` (i + 1 for a causal map), so 1 = uniform over what it can see.
- self: ``A[i, i]``; previous-token: ``A[i, i-1]``; sink (first token): ``A[i, 0]``.
- induction (Olsson et al., 2022, "In-context learning and induction heads"): on a sequence whose
  token at i occurred before, the weight on the token right after that previous occurrence.
  Measured on a block of random tokens repeated twice (:func:`repeated_random_tokens`), where in the
  second half that is key ``i - P + 1`` for period P.

Nothing here imports matplotlib or transformers at module level; plots live in :mod:`minigpt.viz`.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

__all__ = [
    "Attention",
    "AttentionUnavailableError",
    "capture_attention",
    "token_labels",
    "head_entropy",
    "self_score",
    "previous_token_score",
    "sink_score",
    "induction_targets",
    "induction_score",
    "repeated_random_tokens",
    "induction_scores",
    "head_metrics",
    "DEFAULT_THRESHOLDS",
    "classify_head",
    "classify_heads",
    "attention_rollout",
    "top_attended",
    "top_attended_pairs",
    "analyze_attention",
    "add_cli",
]


class AttentionUnavailableError(RuntimeError):
    """The model ran but gave back no attention weights (a fused attention kernel was used)."""


@dataclass
class Attention:
    """Attention weights of one input: ``weights[l]`` is layer l's (nh, T, T) map (float32, CPU)."""

    weights: list[torch.Tensor]  # one (nh, T, T) tensor per layer
    tokens: list[str]  # a readable label per position (spaces shown as "␣", newlines as "\\n")
    token_ids: list[int] = field(default_factory=list)  # the ids that were fed to the model
    source: str = "minigpt"  # "minigpt" or "huggingface"

    @property
    def n_layer(self) -> int:
        return len(self.weights)

    @property
    def n_head(self) -> int:
        return self.weights[0].shape[0]

    @property
    def T(self) -> int:
        return self.weights[0].shape[-1]

    def stack(self) -> torch.Tensor:
        """All layers as one (L, nh, T, T) tensor."""
        return torch.stack(self.weights)

    def head(self, layer: int, head: int | None = None) -> torch.Tensor:
        """One head's (T, T) map, or the mean over heads when ``head`` is None."""
        _check_index(layer, self.n_layer, "layer")
        w = self.weights[layer]
        if head is None:
            return w.mean(0)
        _check_index(head, self.n_head, "head")
        return w[head]

    def __repr__(self) -> str:
        return f"Attention({self.n_layer} layers x {self.n_head} heads, T={self.T}, source={self.source!r})"


def _check_index(i: int, n: int, what: str) -> None:
    if not isinstance(i, int) or not -n <= i < n:
        raise IndexError(f"{what} {i!r} does not exist: the model has {n} {what}s (0..{n - 1})")


def _readable(piece: str) -> str:
    # GPT-2's byte-level BPE marks a leading space with "Ġ" and a newline with "Ċ"
    piece = piece.replace("Ġ", " ").replace("Ċ", "\n")
    return piece.replace("\n", "\\n").replace("\t", "\\t").replace(" ", "␣") or "∅"


def token_labels(ids: Sequence[int], tokenizer: Any = None) -> list[str]:
    """One readable label per token id (the decoded piece, or the id itself without a tokenizer)."""
    if tokenizer is None:
        return [str(int(i)) for i in ids]
    if hasattr(tokenizer, "convert_ids_to_tokens"):  # Hugging Face: keep the subword pieces
        return [_readable(t) for t in tokenizer.convert_ids_to_tokens([int(i) for i in ids])]
    return [_readable(tokenizer.decode([int(i)])) for i in ids]


def _to_ids(tokens_or_text: Any, tokenizer: Any) -> list[int]:
    if isinstance(tokens_or_text, str):
        if tokenizer is None:
            raise ValueError("got text but no tokenizer: pass tokenizer=... or a list of token ids")
        ids = torch.as_tensor(tokenizer.encode(tokens_or_text)).flatten().tolist()
    elif isinstance(tokens_or_text, torch.Tensor):
        t = tokens_or_text
        if t.dim() == 2 and t.size(0) == 1:
            t = t[0]
        if t.dim() != 1:
            raise ValueError(f"token ids must be (T,) or (1, T), got shape {tuple(tokens_or_text.shape)}")
        ids = t.tolist()
    else:
        ids = [int(i) for i in tokens_or_text]
    if not ids:
        raise ValueError("nothing to analyse: the input has no tokens")
    return ids


def _is_minigpt(model: Any) -> bool:
    return callable(getattr(model, "forward_with_attention", None))


def capture_attention(model: Any, tokens_or_text: Any, tokenizer: Any = None) -> Attention:
    """Run one input through ``model`` and return every layer's attention weights.

    ``tokens_or_text`` is a string (needs ``tokenizer``), a list of ids or a (T,) / (1, T) tensor.
    minigpt models return their weights directly; Hugging Face models are called with
    ``output_attentions=True`` and must use eager attention.
    """
    ids = _to_ids(tokens_or_text, tokenizer)
    was_training = bool(getattr(model, "training", False))
    model.eval()  # dropout on the weights would make them random and rows not sum to 1
    try:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
        idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
        with torch.no_grad():
            if _is_minigpt(model):
                _, weights = model.forward_with_attention(idx)
                source = "minigpt"
            else:
                out = model(input_ids=idx, output_attentions=True)
                weights = getattr(out, "attentions", None)
                source = "huggingface"
    finally:
        if was_training:
            model.train()
    if not weights or any(w is None for w in weights):
        impl = getattr(getattr(model, "config", None), "_attn_implementation", "unknown")
        raise AttentionUnavailableError(
            f"the model returned no attention weights (attention implementation: {impl!r}). Fused kernels "
            "(sdpa, flash) never build the weight matrix: load the model with attn_implementation=\"eager\", "
            "e.g. AutoModelForCausalLM.from_pretrained(name, attn_implementation=\"eager\"), or switch this "
            "model with model.set_attn_implementation(\"eager\")."
        )
    layers = [w[0].detach().float().cpu() for w in weights]  # (nh, T, T) each
    return Attention(layers, token_labels(ids, tokenizer), ids, source)


# ----------------------------------------------------------------------------------------------
# metrics on (..., T, T) maps; each returns (...) -- e.g. (L, nh) for a stacked Attention


def _as_maps(attn: Any) -> torch.Tensor:
    if isinstance(attn, Attention):
        return attn.stack()
    a = torch.as_tensor(attn).float()
    if a.dim() < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"attention maps must be (..., T, T) with square last dims, got {tuple(a.shape)}")
    return a


def _queries(T: int, causal: bool) -> slice:
    # query 0 of a causal map has exactly one choice (itself): leave it out of every average
    return slice(1, T) if causal and T > 1 else slice(0, T)


def head_entropy(attn: Any, *, normalize: bool = False, causal: bool = True) -> torch.Tensor:
    """Mean attention entropy per head in nats; ``normalize`` divides by ln(#visible keys) first."""
    a = _as_maps(attn)
    T = a.shape[-1]
    ent = -(a * torch.log(a.clamp_min(1e-12))).sum(-1)  # (..., T) entropy of each query row
    if normalize:
        if T < 2:
            raise ValueError("normalised entropy needs at least 2 tokens")
        keys = torch.arange(1, T + 1, dtype=a.dtype) if causal else torch.full((T,), float(T))
        ent = ent / torch.log(keys).clamp_min(1e-12)
    return ent[..., _queries(T, causal)].mean(-1)


def self_score(attn: Any, *, causal: bool = True) -> torch.Tensor:
    """Mean weight a query puts on itself, ``A[i, i]``."""
    a = _as_maps(attn)
    d = torch.diagonal(a, dim1=-2, dim2=-1)  # (..., T): A[i, i]
    return d[..., _queries(a.shape[-1], causal)].mean(-1)


def previous_token_score(attn: Any, *, causal: bool = True) -> torch.Tensor:
    """Mean weight a query puts on the token just before it, ``A[i, i - 1]`` (queries 1..T-1)."""
    a = _as_maps(attn)
    if a.shape[-1] < 2:
        raise ValueError("a previous-token score needs at least 2 tokens")
    return torch.diagonal(a, offset=-1, dim1=-2, dim2=-1).mean(-1)


def sink_score(attn: Any, *, causal: bool = True) -> torch.Tensor:
    """Mean weight on the first token, ``A[i, 0]`` -- the "attention sink" many trained models develop."""
    a = _as_maps(attn)
    return a[..., _queries(a.shape[-1], causal), 0].mean(-1)


def induction_targets(token_ids: Sequence[int]) -> list[tuple[int, int]]:
    """(query, key) pairs an induction head attends: key = the position after the previous occurrence.

    For every position i whose token occurred before (latest at j < i), the induction key is j + 1.
    """
    last: dict[int, int] = {}
    pairs = []
    for i, t in enumerate(int(x) for x in token_ids):
        if t in last:
            pairs.append((i, last[t] + 1))
        last[t] = i
    return pairs


def induction_score(attn: Any, token_ids: Sequence[int]) -> torch.Tensor:
    """Mean weight from each repeated token to the token that followed its previous occurrence."""
    a = _as_maps(attn)
    pairs = induction_targets(token_ids)
    if len(token_ids) != a.shape[-1]:
        raise ValueError(f"{len(token_ids)} token ids for attention maps over {a.shape[-1]} tokens")
    if not pairs:
        raise ValueError("no token repeats in this sequence, so there is nothing to induce: use repeated_random_tokens")
    q = torch.tensor([i for i, _ in pairs])
    k = torch.tensor([j for _, j in pairs])
    return a[..., q, k].mean(-1)


def repeated_random_tokens(vocab_size: int, period: int, *, seed: int = 0, first: int | None = None) -> list[int]:
    """``period`` distinct random tokens, then the same tokens again (length 2 * period, or + 1 with ``first``).

    Distinct tokens make "the previous occurrence" unique, so only the second half is scored.
    ``first`` prepends a fixed token (e.g. GPT-2's ``<|endoftext|>``) as models see at a document start.
    """
    if period < 2:
        raise ValueError("period must be at least 2")
    if period > vocab_size:
        raise ValueError(f"period={period} needs that many distinct tokens but vocab_size={vocab_size}")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(vocab_size, generator=g)
    if first is not None:
        perm = perm[perm != first]  # the prefix token must not be one of the repeated ones
    if period > len(perm):
        raise ValueError(f"period={period} is more than the {len(perm)} tokens available")
    block = perm[:period].tolist()
    return ([first] if first is not None else []) + block + block


def induction_scores(
    model: Any, vocab_size: int | None = None, *, period: int = 24, seed: int = 0, first: int | None = None
) -> torch.Tensor:
    """(L, nh) induction scores of ``model`` on random tokens repeated twice.

    The period is capped so the sequence fits the context and its block has distinct tokens.
    """
    if vocab_size is None:
        vocab_size = _model_vocab(model)
    limit = _model_context(model)
    if limit is not None:
        period = min(period, (limit - (first is not None)) // 2)
    period = min(period, vocab_size - (first is not None))  # the block needs distinct tokens
    ids = repeated_random_tokens(vocab_size, period, seed=seed, first=first)
    return induction_score(capture_attention(model, ids), ids)


def _model_vocab(model: Any) -> int:
    cfg = getattr(model, "config", None)
    v = getattr(cfg, "vocab_size", None)
    if v is None:
        raise ValueError("cannot tell the model's vocabulary size: pass vocab_size=")
    return int(v)


def _model_context(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for name in ("block_size", "n_positions", "max_position_embeddings"):
        v = getattr(cfg, name, None)
        if isinstance(v, int):
            return v
    return None


def head_metrics(attn: Any, *, induction: torch.Tensor | None = None, causal: bool = True) -> dict[str, torch.Tensor]:
    """Every per-head metric of ``attn`` (an :class:`Attention` or (L, nh, T, T)) as (L, nh) tensors.

    ``induction`` (from :func:`induction_scores`) is added as is: it needs its own input.
    """
    a = _as_maps(attn)
    if a.dim() == 3:
        a = a.unsqueeze(0)  # one layer -> (1, nh, T, T)
    m = {
        "entropy": head_entropy(a, causal=causal),
        "entropy_norm": head_entropy(a, normalize=True, causal=causal),
        "self": self_score(a, causal=causal),
        "previous_token": previous_token_score(a, causal=causal),
        "sink": sink_score(a, causal=causal),
    }
    if induction is not None:
        if induction.shape != m["self"].shape:
            raise ValueError(f"induction scores {tuple(induction.shape)} do not match {tuple(m['self'].shape)} heads")
        m["induction"] = induction.float()
    return m


# A head is named after the strongest pattern score at or above its threshold (induction,
# previous-token, self, sink); failing those, "diffuse" when it spreads almost evenly
# (normalised entropy >= 0.8), else "mixed". Thresholds are fractions of attention mass, chosen so
# that a label means "most of this head's attention follows the pattern".
DEFAULT_THRESHOLDS: dict[str, float] = {
    "induction": 0.4,  # induction mass is spread over a long second half, so a lower bar
    "previous_token": 0.5,
    "self": 0.5,
    "sink": 0.5,
    "diffuse": 0.8,  # on entropy_norm
}
_PATTERN_LABELS = {"induction": "induction", "previous_token": "previous-token", "self": "self", "sink": "sink"}


def classify_head(scores: dict[str, float], thresholds: dict[str, float] | None = None) -> str:
    """The label of one head from its metric values (see ``DEFAULT_THRESHOLDS``)."""
    th = {**DEFAULT_THRESHOLDS, **(thresholds or {})}
    hits = [(-scores[k], order, k) for order, k in enumerate(_PATTERN_LABELS) if k in scores and scores[k] >= th[k]]
    if hits:  # the strongest pattern; on a tie the one listed first in _PATTERN_LABELS
        return _PATTERN_LABELS[min(hits)[2]]
    if scores.get("entropy_norm", 0.0) >= th["diffuse"]:
        return "diffuse"
    return "mixed"


def classify_heads(
    metrics: dict[str, torch.Tensor], thresholds: dict[str, float] | None = None, *, as_frame: bool | None = None
) -> Any:
    """One row per (layer, head) with every metric and a label; a pandas DataFrame when pandas is there.

    ``as_frame=False`` forces a list of dicts (what the JSON output of the CLI uses).
    """
    names = list(metrics)
    L, nh = metrics[names[0]].shape
    rows = []
    for layer in range(L):
        for head in range(nh):
            scores = {k: round(float(metrics[k][layer, head]), 4) for k in names}
            rows.append({"layer": layer, "head": head, **scores, "label": classify_head(scores, thresholds)})
    if as_frame is False:
        return rows
    try:
        import pandas as pd
    except ImportError:
        if as_frame:
            raise ImportError("as_frame=True needs pandas: pip install pandas") from None
        return rows
    return pd.DataFrame(rows)


def attention_rollout(attn: Any, *, add_residual: bool = True, return_all: bool = False) -> Any:
    """Attention rollout (Abnar & Zuidema, 2020): how much each input token flows into each position.

    Per layer: average the heads, add the identity for the residual connection and renormalise the
    rows, then multiply the layers from the bottom up: ``R_l = Â_l @ R_{l-1}``. Returns the final
    (T, T) map, or the list after every layer with ``return_all``.
    """
    a = _as_maps(attn)
    if a.dim() == 3:
        a = a.unsqueeze(0)
    if a.dim() != 4:
        raise ValueError(f"rollout needs (L, nh, T, T) maps, got {tuple(a.shape)}")
    T = a.shape[-1]
    eye = torch.eye(T, dtype=a.dtype)
    rollout = eye
    steps = []
    for layer in a:  # (nh, T, T), bottom layer first
        m = layer.mean(0)  # (T, T)
        if add_residual:
            m = m + eye
            m = m / m.sum(-1, keepdim=True).clamp_min(1e-12)
        rollout = m @ rollout
        steps.append(rollout)
    return steps if return_all else rollout


def top_attended_pairs(
    attn: Any, layer: int = 0, head: int | None = None, k: int = 3, queries: Sequence[int] | None = None
) -> list[tuple[int, list[tuple[int, float]]]]:
    """For each query position, its ``k`` most attended key positions with their weights."""
    if not isinstance(attn, Attention):
        a = _as_maps(attn)
        if a.dim() == 2:  # already one (T, T) map
            attn = Attention([a.unsqueeze(0)], [], source="tensor")
            layer, head = 0, 0
        elif a.dim() == 4:  # (L, nh, T, T)
            attn = Attention(list(a), [], source="tensor")
        else:
            raise ValueError(f"expected an Attention, (T, T) or (L, nh, T, T) maps, got {tuple(a.shape)}")
    m = attn.head(layer, head)  # (T, T)
    T = m.shape[-1]
    queries = range(T) if queries is None else queries
    out = []
    for q in queries:
        if not -T <= q < T:
            raise IndexError(f"query position {q} is outside the {T} tokens")
        q = q % T
        w, idx = m[q].topk(min(k, T))
        out.append((q, [(int(j), float(v)) for j, v in zip(idx, w, strict=True) if v > 0]))
    return out


def top_attended(
    attn: Any,
    tokens: Sequence[str] | None = None,
    layer: int = 0,
    head: int | None = None,
    k: int = 3,
    queries: Sequence[int] | None = None,
) -> str:
    """"What does each token attend to most", as readable text.

    ``head=None`` averages the layer's heads. ``queries`` picks positions (default: every token).
    """
    if tokens is None:
        if not isinstance(attn, Attention):
            raise ValueError("pass tokens=... (one label per position) or an Attention object")
        tokens = attn.tokens
    which = "mean over heads" if head is None else f"head {head}"
    lines = [f"Layer {layer} ({which}):"]
    for q, keys in top_attended_pairs(attn, layer, head, k, queries):
        lines.append(f"  {tokens[q]!r} (position {q}) attends most to:")
        for rank, (j, w) in enumerate(keys, 1):
            note = "  # itself" if j == q else ("  # previous token" if j == q - 1 else "")
            lines.append(f"    {rank}. {tokens[j]!r} (position {j}, weight: {w:.2f}){note}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# files and the command line: `minigpt analyze-attention`


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
    from . import viz
    from .model import GPT, GPTConfig, LanguageModel
    from .tokenizer import CharTokenizer, UnknownCharacterError

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
        from .checkpoint import load_checkpoint, resolve_checkpoint

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
    import sys

    from .checkpoint import CheckpointError

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
    """``python -m minigpt.analysis analyze-attention ...`` without the main CLI."""
    parser = argparse.ArgumentParser(prog="minigpt")
    sub = parser.add_subparsers(dest="command", required=True)
    add_cli(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":  # pragma: no cover
    # run through the package module, so `Attention` is one class (not a second copy in __main__)
    from minigpt.analysis import main as _main

    raise SystemExit(_main())

