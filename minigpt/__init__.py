"""minigpt: the small library behind every notebook of the course.

`import minigpt` stays light: it imports torch and the core modules only. Hugging Face helpers
(`minigpt.hf`), plotting (`minigpt.tools.viz`), attention analysis (`minigpt.tools.analysis`) and serving
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
from .data import (
    SHAKESPEARE_SHA256,
    SHAKESPEARE_URL,
    BlockDataset,
    ToyTask,
    check_length,
    get_batch,
    load_shakespeare,
    make_toy_task,
    read_text,
    toy_task_as_lm,
    train_val_split,
)
from .device import (
    autocast,
    autocast_dtype,
    check_device_parity,
    describe_device,
    get_device,
    make_grad_scaler,
    seed_everything,
)
from .generation import beam_search, generate, stream
from .model import GPT, PRESETS, GPTConfig, LanguageModel
from .positional import RotaryEmbedding, sinusoidal_encoding
from .seq2seq import Transformer, TransformerConfig
from .tokenizer import BPETokenizer, CharTokenizer, UnknownCharacterError

__version__ = "0.1.0"

__all__ = [
    "GPT", "GPTConfig", "PRESETS", "LanguageModel", "Transformer", "TransformerConfig", "BigramLM", "BigramConfig",
    "MLPLM", "MLPConfig", "MultiHeadAttention", "KVCache", "TransformerBlock", "DecoderBlock",
    "FeedForward", "RMSNorm", "RotaryEmbedding", "sinusoidal_encoding", "scaled_dot_product_attention",
    "fast_attention", "causal_mask", "padding_mask", "generate", "stream", "beam_search", "__version__",
    "CharTokenizer", "BPETokenizer", "UnknownCharacterError", "SHAKESPEARE_URL", "SHAKESPEARE_SHA256",
    "load_shakespeare", "read_text", "check_length", "train_val_split", "get_batch", "BlockDataset",
    "make_toy_task", "toy_task_as_lm", "ToyTask", "get_device", "autocast_dtype", "autocast",
    "make_grad_scaler", "seed_everything", "check_device_parity", "describe_device",
]

# Training and checkpoint names load on first use: notebooks that only study attention skip them.
_LAZY = {
    "Trainer": "train", "TrainConfig": "train", "History": "train",
    "TrainingDiverged": "train", "lm_batches": "train",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "latest_checkpoint": "checkpoint",
    "CheckpointError": "checkpoint",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module = importlib.import_module(f".{_LAZY[name]}", __name__)
        return getattr(module, name)
    raise AttributeError(f"module 'minigpt' has no attribute {name!r}")
