"""Attention plots: one head, every head of a layer, rollout, per-head metrics, an interactive view.

matplotlib is imported inside the functions (``import minigpt`` never pulls it in). Without a
display (a server, CI) the non-interactive Agg backend is chosen, so every figure can still be
saved as a PNG; in Jupyter the notebook's own inline backend is used. Everything here draws
with matplotlib alone: no JavaScript, no CDN, the same image in every environment.

Each ``plot_*`` function takes an :class:`minigpt.tools.analysis.Attention` (or plain tensors) and
returns the matplotlib ``Figure``; ``save=`` writes it to a PNG as well.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from .._extras import require
from .analysis import Attention, attention_rollout, capture_attention

__all__ = [
    "pyplot",
    "plot_head",
    "plot_layer_heads",
    "plot_rollout",
    "plot_head_metrics",
    "save_figure",
    "show_files",
    "interactive_attention",
]


def _has_display() -> bool:
    if "ipykernel" in sys.modules:  # a Jupyter kernel renders figures inline
        return True
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True  # macOS / Windows always have a window system


def pyplot() -> Any:
    """``matplotlib.pyplot``, switched to the Agg backend first when there is no display."""
    matplotlib = require("matplotlib", feature="plotting (minigpt.tools.viz)")

    if "matplotlib.pyplot" not in sys.modules and not _has_display() and "MPLBACKEND" not in os.environ:
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _tokens_and_map(attn: Attention | torch.Tensor, tokens: Sequence[str] | None, layer: int | None, head: int | None):
    if isinstance(attn, Attention):
        layer = attn.n_layer - 1 if layer is None else layer
        return attn.head(layer, head), list(tokens or attn.tokens), layer
    m = torch.as_tensor(attn).float()
    if m.dim() != 2:
        raise ValueError(f"plot a single (T, T) map here, got {tuple(m.shape)}; use plot_layer_heads for (nh, T, T)")
    return m, list(tokens) if tokens is not None else [str(i) for i in range(m.shape[0])], layer


def _heatmap(ax: Any, m: torch.Tensor, tokens: Sequence[str], title: str, *, colorbar: bool = True,
             vmax: float | None = None, label_size: int | None = None) -> Any:
    T = m.shape[-1]
    if len(tokens) != T:
        raise ValueError(f"{len(tokens)} token labels for a map over {T} tokens")
    im = ax.imshow(m.numpy(), cmap="viridis", vmin=0.0, vmax=vmax, aspect="equal")
    size = label_size or (8 if T <= 24 else 5 if T <= 64 else 0)
    if size:  # token labels only while they are readable
        ax.set_xticks(range(T), labels=list(tokens), rotation=90, fontsize=size)
        ax.set_yticks(range(T), labels=list(tokens), fontsize=size)
    ax.set_xlabel("key (attended to)")
    ax.set_ylabel("query (attending from)")
    ax.set_title(title)
    if colorbar:
        ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="attention weight")
    return im


def save_figure(fig: Any, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (PNG), create its folder, close the figure; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)  # the figures use constrained layout, so nothing is cut off
    pyplot().close(fig)
    return path


def _finish(fig: Any, save: str | os.PathLike | None) -> Any:
    if save is not None:
        save_figure(fig, save)
    return fig


def plot_head(
    attn: Attention | torch.Tensor,
    tokens: Sequence[str] | None = None,
    ax: Any = None,
    *,
    layer: int | None = None,
    head: int | None = 0,
    title: str | None = None,
    save: str | os.PathLike | None = None,
) -> Any:
    """Heatmap of one head (rows = queries, columns = keys) with token labels and a colour bar.

    ``attn`` is an Attention (pick ``layer``, default the last, and ``head``; ``head=None`` = mean of
    the heads) or a (T, T) tensor.
    """
    m, tokens, layer = _tokens_and_map(attn, tokens, layer, head)
    if ax is None:
        size = min(10.0, 2.5 + 0.28 * m.shape[0])
        fig, ax = pyplot().subplots(figsize=(size + 1.2, size), layout="constrained")
    if title is None:
        where = "" if layer is None else f"layer {layer}, "
        title = f"{where}{'mean of heads' if head is None else f'head {head}'}"
    _heatmap(ax, m, tokens, title)
    return _finish(ax.figure, save)


def plot_layer_heads(
    attn: Attention | torch.Tensor,
    layer: int | None = None,
    tokens: Sequence[str] | None = None,
    *,
    ncols: int = 4,
    title: str | None = None,
    save: str | os.PathLike | None = None,
) -> Any:
    """Every head of one layer side by side (shared colour scale 0..1), to compare their patterns."""
    if isinstance(attn, Attention):
        layer = attn.n_layer - 1 if layer is None else layer
        maps = attn.weights[layer]
        tokens = list(tokens or attn.tokens)
    else:
        maps = torch.as_tensor(attn).float()
        if maps.dim() != 3:
            raise ValueError(f"expected one layer's (nh, T, T) maps, got {tuple(maps.shape)}")
        tokens = list(tokens) if tokens is not None else [str(i) for i in range(maps.shape[-1])]
    nh = maps.shape[0]
    ncols = max(1, min(ncols, nh))
    nrows = -(-nh // ncols)
    plt = pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.4 * ncols + 1, 3.4 * nrows + 0.6), squeeze=False,
                             layout="constrained")
    im = None
    small = 6 if len(tokens) <= 24 else 0
    for h in range(nrows * ncols):
        ax = axes[h // ncols][h % ncols]
        if h >= nh:
            ax.axis("off")
            continue
        im = _heatmap(ax, maps[h], tokens, f"head {h}", colorbar=False, vmax=1.0, label_size=small or None)
        if not small:
            ax.set_xticks([])
            ax.set_yticks([])
        if h % ncols:
            ax.set_ylabel("")
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="attention weight")
    where = "" if layer is None else f"layer {layer}: "
    fig.suptitle(title or f"{where}all {nh} heads (rows = queries, columns = keys)")
    return _finish(fig, save)


def plot_rollout(
    attn: Attention | torch.Tensor, tokens: Sequence[str] | None = None, *, ax: Any = None, title: str | None = None,
    save: str | os.PathLike | None = None,
) -> Any:
    """Heatmap of the attention rollout (Abnar & Zuidema, 2020) through all layers."""
    if isinstance(attn, Attention):
        tokens = list(tokens or attn.tokens)
        n_layer = attn.n_layer
    else:
        n_layer = torch.as_tensor(attn).shape[0]
    r = attention_rollout(attn)
    if tokens is None:
        tokens = [str(i) for i in range(r.shape[0])]
    return plot_head(r, tokens, ax, title=title or f"attention rollout through {n_layer} layers", save=save)


_METRIC_TITLES = {
    "entropy_norm": "normalised entropy (1 = uniform)",
    "previous_token": "previous-token score",
    "self": "self score",
    "sink": "first-token (sink) score",
    "induction": "induction score",
}


def plot_head_metrics(metrics: Any, *, title: str | None = None, save: str | os.PathLike | None = None) -> Any:
    """One (layers x heads) heatmap per metric, each cell annotated with its value.

    ``metrics`` is the dict of :func:`minigpt.tools.analysis.head_metrics` (or its table from ``classify_heads``).
    """
    if not isinstance(metrics, dict):  # a table: rows with layer, head and the metric columns
        rows = metrics.to_dict("records") if hasattr(metrics, "to_dict") else list(metrics)
        L = 1 + max(r["layer"] for r in rows)
        nh = 1 + max(r["head"] for r in rows)
        metrics = {
            k: torch.tensor([[next(r[k] for r in rows if r["layer"] == i and r["head"] == j) for j in range(nh)]
                             for i in range(L)])
            for k in _METRIC_TITLES if k in rows[0]
        }
    names = [k for k in _METRIC_TITLES if k in metrics]
    if not names:
        raise ValueError(f"no known metric in {sorted(metrics)}; expected some of {sorted(_METRIC_TITLES)}")
    L, nh = metrics[names[0]].shape
    plt = pyplot()
    panel = max(2.4, 0.42 * nh + 0.9)
    fig, axes = plt.subplots(1, len(names), figsize=(panel * len(names) + 1.0, max(2.6, 0.42 * L + 1.8)),
                             squeeze=False, layout="constrained")
    for ax, name in zip(axes[0], names, strict=True):
        v = metrics[name].float()
        im = ax.imshow(v.numpy(), cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
        for i in range(L):
            for j in range(nh):
                ax.text(j, i, f"{float(v[i, j]):.2f}", ha="center", va="center", fontsize=7,
                        color="white" if float(v[i, j]) < 0.6 else "black")
        ax.set_xticks(range(nh))
        ax.set_yticks(range(L))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_title(_METRIC_TITLES[name], fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="score")
    fig.suptitle(title or "what each head does")
    return _finish(fig, save)


def show_files(paths: Sequence[str | os.PathLike]) -> None:
    """Open saved PNGs in matplotlib windows (``--show`` of the CLI)."""
    plt = pyplot()
    if not _has_display():
        print("no display available: the figures are saved at", ", ".join(str(p) for p in paths))
        return
    for p in paths:
        fig, ax = plt.subplots(figsize=(8, 8))
        ax.imshow(plt.imread(str(p)))
        ax.set_axis_off()
        ax.set_title(Path(p).name)
    plt.show()


def _widgets_available() -> bool:
    if "ipykernel" not in sys.modules:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


def interactive_attention(
    model: Any, tokenizer: Any, text: str, *, interactive: bool | None = None, layer: int = 0, head: int = 0
) -> Any:
    """Pick layer, head and text with ipywidgets where they work; otherwise draw a static heatmap.

    The static fallback (no Jupyter kernel, no ipywidgets, or ``interactive=False``) shows the
    chosen ``layer``/``head`` so the same call gives a picture everywhere. Returns the widget or
    the Figure.
    """
    use_widgets = _widgets_available() if interactive is None else interactive
    attn = capture_attention(model, text, tokenizer)
    if not use_widgets:
        return plot_head(attn, layer=layer, head=head)
    import ipywidgets as widgets
    from IPython.display import display

    plt = pyplot()
    layer_w = widgets.IntSlider(value=layer, min=0, max=attn.n_layer - 1, description="layer")
    head_w = widgets.Dropdown(options=[("mean", -1)] + [(str(h), h) for h in range(attn.n_head)], value=head,
                              description="head")
    text_w = widgets.Text(value=text, description="text", continuous_update=False)
    out = widgets.Output()
    cache = {text: attn}

    def redraw(*_: Any) -> None:
        with out:
            out.clear_output(wait=True)
            try:
                a = cache.get(text_w.value) or capture_attention(model, text_w.value, tokenizer)
            except ValueError as e:  # e.g. a character the tokenizer does not know
                print(e)
                return
            cache[text_w.value] = a
            plot_head(a, layer=layer_w.value, head=None if head_w.value < 0 else head_w.value)
            plt.show()

    for w in (layer_w, head_w, text_w):
        w.observe(redraw, names="value")
    box = widgets.VBox([widgets.HBox([layer_w, head_w]), text_w, out])
    display(box)
    redraw()
    return box
