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

Nothing here imports matplotlib or transformers; plots live in :mod:`minigpt.tools.viz` (which imports this
module, never the reverse) and the ``minigpt analyze-attention`` report in
:mod:`minigpt.tools.attention_report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
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
