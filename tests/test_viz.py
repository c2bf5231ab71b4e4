"""Plots render to PNG files without a display; importing analysis/viz stays light."""

import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("matplotlib")

from minigpt.tools import viz  # noqa: E402
from minigpt.tools.analysis import Attention, head_metrics  # noqa: E402

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def attn() -> Attention:
    g = torch.Generator().manual_seed(0)
    T, nh = 6, 3
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    layers = [torch.randn(nh, T, T, generator=g).masked_fill(~mask, float("-inf")).softmax(-1) for _ in range(2)]
    return Attention(layers, list("abcdef"), list(range(T)))


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 2000, f"{path} is not a rendered PNG"


def test_every_plot_renders_to_png(tmp_path, attn):
    plt = viz.pyplot()
    fig = viz.plot_head(attn, layer=0, head=1, save=tmp_path / "head.png")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == list("abcdef")  # token labels on the axes
    assert len(fig.axes) == 2  # the heatmap and its colour bar
    assert ax.get_title() == "layer 0, head 1" and "key" in ax.get_xlabel() and "query" in ax.get_ylabel()
    viz.plot_layer_heads(attn, 1, save=tmp_path / "grid.png")
    viz.plot_rollout(attn, save=tmp_path / "rollout.png")
    viz.plot_head_metrics(head_metrics(attn), save=tmp_path / "metrics.png")
    for name in ("head.png", "grid.png", "rollout.png", "metrics.png"):
        assert_png(tmp_path / name)
    # a plain (T, T) tensor on a given axes
    fig, ax = plt.subplots()
    assert viz.plot_head(torch.eye(4), ["w", "x", "y", "z"], ax=ax) is fig
    plt.close("all")


def test_plot_errors_are_clear(attn):
    with pytest.raises(ValueError, match="token labels"):
        viz.plot_head(torch.eye(3), ["a", "b"])
    with pytest.raises(ValueError, match="plot_layer_heads"):
        viz.plot_head(torch.ones(2, 3, 3))
    with pytest.raises(IndexError, match="head"):
        viz.plot_head(attn, layer=0, head=7)


def test_interactive_view_falls_back_to_a_static_figure(tmp_path):
    from minigpt import GPT, CharTokenizer, GPTConfig

    tok = CharTokenizer.from_text("abc ")
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=8, n_layer=1, n_head=2, n_embd=8))
    fig = viz.interactive_attention(model, tok, "abc a", interactive=False, layer=0, head=1)
    viz.save_figure(fig, tmp_path / "static.png")
    assert_png(tmp_path / "static.png")


def test_headless_backend_and_light_imports():
    code = (
        "import sys, minigpt.tools.analysis, minigpt.tools.viz\n"
        "assert 'matplotlib' not in sys.modules, 'analysis/viz must not import matplotlib at import time'\n"
        "assert 'transformers' not in sys.modules, 'analysis/viz must not import transformers at import time'\n"
        "print(minigpt.tools.viz.pyplot().get_backend().lower())\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY", "MPLBACKEND")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "agg"
