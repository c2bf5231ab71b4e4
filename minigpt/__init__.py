"""minigpt: the small library behind every notebook of the course.

`import minigpt` stays light: it imports torch and the core modules only. Hugging Face helpers
(`minigpt.hf`), plotting (`minigpt.viz`), attention analysis (`minigpt.analysis`) and serving
(`minigpt.serve`) are imported on demand, so they never slow down or break the core.
"""

from .attention import (
    KVCache,
    MultiHeadAttention,
    causal_mask,
    fast_attention,
    padding_mask,
    scaled_dot_product_attention,
)
from .baselines import MLPLM, BigramConfig, BigramLM, MLPConfig
from .blocks import DecoderBlock, FeedForward, RMSNorm, TransformerBlock
from .generation import beam_search, generate, stream
from .model import GPT, PRESETS, GPTConfig
from .positional import RotaryEmbedding, sinusoidal_encoding
from .seq2seq import Transformer, TransformerConfig

__version__ = "0.1.0"

__all__ = [
    "GPT", "GPTConfig", "PRESETS", "Transformer", "TransformerConfig", "BigramLM", "BigramConfig",
    "MLPLM", "MLPConfig", "MultiHeadAttention", "KVCache", "TransformerBlock", "DecoderBlock",
    "FeedForward", "RMSNorm", "RotaryEmbedding", "sinusoidal_encoding", "scaled_dot_product_attention",
    "fast_attention", "causal_mask", "padding_mask", "generate", "stream", "beam_search", "__version__",
]
