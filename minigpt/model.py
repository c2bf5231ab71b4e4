"""The decoder-only GPT, readable top to bottom.

Shapes: B batch, T time, C n_embd, V vocab_size. Parameter names follow Hugging Face's GPT-2
(``transformer.wte``, ``transformer.h.0.attn.c_attn`` ...), so converting weights is a rename plus a
transpose (see :mod:`minigpt.hf.convert`).
The contract every model of the library follows is stated in :mod:`minigpt.contract`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from .attention import KVCache, dropout
from .blocks import ACTIVATIONS, TransformerBlock, make_norm
from .contract import CachedLanguageModel, HasBlockSize, LanguageModel  # re-exported: the documented home
from .generation import generate
from .positional import LearnedPositionalEmbedding, RotaryEmbedding, SinusoidalPositionalEncoding

__all__ = ["GPTConfig", "PRESETS", "GPT", "HasBlockSize", "LanguageModel", "CachedLanguageModel", "count_parameters"]

POSITIONS = ("learned", "sinusoidal", "rope", "none")
NORMS = ("layernorm", "rmsnorm")


@dataclass
class GPTConfig:
    vocab_size: int = 65  # tokens the model can read and predict (65 characters in tiny Shakespeare)
    block_size: int = 128  # longest context the model sees at once
    n_layer: int = 4  # transformer blocks stacked
    n_head: int = 4  # query heads per attention layer
    n_kv_head: int | None = None  # key/value heads; None = n_head (multi-head), fewer = grouped-query
    n_embd: int = 128  # model width C; each head gets C // n_head channels
    d_ff: int | None = None  # feed-forward hidden width; None = 4 * n_embd
    dropout: float = 0.0  # dropout on attention weights and residual branches (0 for small data runs)
    bias: bool = True  # biases in Linear and LayerNorm layers (GPT-2 has them)
    norm: str = "layernorm"  # "layernorm" or "rmsnorm"
    activation: str = "gelu_tanh"  # "relu", "gelu", "gelu_tanh" (GPT-2) or "swiglu"
    position: str = "learned"  # "learned" (GPT-2), "sinusoidal" (2017 paper), "rope" or "none"
    prenorm: bool = True  # pre-LN (GPT-2) or post-LN (2017 paper)
    tie_weights: bool = True  # share the token embedding with the output layer (saves V * C params)
    layer_norm_eps: float = 1e-5  # epsilon inside the norms
    rope_base: float = 10000.0  # RoPE frequency base
    qk_norm: bool = False  # RMS-normalise each head's queries and keys (blocks.QKNormAttention)
    logit_softcap: float | None = None  # logits -> cap * tanh(logits / cap); None = off (Gemma 2)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd", "d_ff", "n_kv_head"):
            value = getattr(self, name)
            if value is None and name in ("d_ff", "n_kv_head"):
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive integer, got {value!r}")
        for name in ("bias", "prenorm", "tie_weights", "qk_norm"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"GPTConfig.{name} must be True or False, got {getattr(self, name)!r}")
        for name in ("layer_norm_eps", "rope_base"):  # both > 0 and finite, or the forward pass is NaN
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not 0 < value < math.inf:
                raise ValueError(f"GPTConfig.{name} must be a finite number > 0, got {value!r}")
        cap = self.logit_softcap
        if cap is not None and (not isinstance(cap, int | float) or isinstance(cap, bool) or not 0 < cap < math.inf):
            raise ValueError(f"GPTConfig.logit_softcap must be None or a finite number > 0, got {cap!r}")
        if self.n_embd % self.n_head != 0:
            divisors = [h for h in range(1, self.n_embd + 1) if self.n_embd % h == 0 and h <= 64]
            raise ValueError(
                f"n_embd={self.n_embd} is not divisible by n_head={self.n_head}: every head needs the "
                f"same width. Use n_head in {divisors} or change n_embd."
            )
        n_kv = self.n_head if self.n_kv_head is None else self.n_kv_head
        if n_kv < 1 or self.n_head % n_kv != 0:
            raise ValueError(f"n_kv_head={self.n_kv_head} must divide n_head={self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        for name, allowed in (("norm", NORMS), ("activation", ACTIVATIONS), ("position", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"GPTConfig.{name}={getattr(self, name)!r}; choose one of {allowed}")
        if self.position == "rope" and (self.n_embd // self.n_head) % 2 != 0:
            raise ValueError("RoPE needs an even head size (n_embd // n_head)")
        if self.position == "sinusoidal" and self.n_embd % 2 != 0:
            raise ValueError("sinusoidal positions need an even n_embd")

    @property
    def head_size(self) -> int:
        return self.n_embd // self.n_head

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> GPTConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown GPTConfig fields {unknown}; known fields: {sorted(known)}")
        return cls(**d)

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> GPTConfig:
        """A named size (see ``PRESETS``) with any field overridden, e.g. ``from_preset("gpt2", n_layer=2)``."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; available: {', '.join(PRESETS)}")
        return replace(PRESETS[name], **overrides)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameters, a tied/shared tensor counted once (``parameters()`` yields it once).

    The one parameter counter of the library: fine-tuning (LoRA freezes most weights) reads both.
    """
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


PRESETS: dict[str, GPTConfig] = {
    # Sized for a 2-core laptop CPU: the default of `minigpt train` and notebook 07. nanoGPT's CPU width
    # with twice its context; RoPE instead of a learned position table (nothing to learn before attention
    # can use order: worth 0.1-0.4 nats in a short run) and exact GELU (5x cheaper than the tanh form
    # on a CPU). Measurements: README.md, Benchmarks.
    "shakespeare-cpu": GPTConfig(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                                 position="rope", activation="gelu"),
    # The course speedrun's recipe (bench/speedrun.py, RECORDS.md): the default's width and depth with twice
    # its context, which measured better over a long run and against the clock (bench/ablation-3000-steps.md).
    "speedrun-cpu": GPTConfig(vocab_size=65, block_size=256, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                              position="rope", activation="gelu"),
    # nanoGPT's published CPU recipe (README "I only have a macbook"): 4 layers, 4 heads, width 128, block 64,
    # and nanoGPT's model: no biases (its train.py default), exact GELU.
    "nanogpt-cpu": GPTConfig(vocab_size=65, block_size=64, n_layer=4, n_head=4, n_embd=128, dropout=0.0,
                             bias=False, activation="gelu"),
    # nanoGPT's shakespeare-char model for a GPU: 6 layers, 6 heads, width 384, block 256, dropout 0.2.
    "shakespeare-char": GPTConfig(vocab_size=65, block_size=256, n_layer=6, n_head=6, n_embd=384, dropout=0.2),
    # The small from-scratch model in the course's quick reference (3 layers, 4 heads, width 64, ff 256).
    "char-tiny": GPTConfig(vocab_size=65, block_size=128, n_layer=3, n_head=4, n_embd=64, d_ff=256, dropout=0.1),
    # OpenAI GPT-2 sizes (Radford et al., 2019), laid out exactly like Hugging Face's GPT2LMHeadModel.
    "gpt2": GPTConfig(vocab_size=50257, block_size=1024, n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": GPTConfig(vocab_size=50257, block_size=1024, n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": GPTConfig(vocab_size=50257, block_size=1024, n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": GPTConfig(vocab_size=50257, block_size=1024, n_layer=48, n_head=25, n_embd=1600),
    # shakespeare-cpu turned into a Llama-style model, as notebook 11 does it one change at a time: RMSNorm,
    # RoPE, SwiGLU (hidden width 344 ~ 2/3 * 4C, so the MLP keeps GELU's parameter count), grouped-query
    # attention (2 key/value heads for 4 query heads), no biases, an untied output layer. Exports to and
    # loads from Hugging Face's LlamaForCausalLM (minigpt.hf.export / minigpt.hf.convert.llama_to_minigpt).
    "llama-cpu": GPTConfig(vocab_size=65, block_size=128, n_layer=4, n_head=4, n_kv_head=2, n_embd=128, d_ff=344,
                           dropout=0.0, bias=False, norm="rmsnorm", activation="swiglu", position="rope",
                           tie_weights=False),
}


class GPTLayers(nn.ModuleDict):
    """``GPT.transformer``: a ModuleDict (the names are Hugging Face's) whose entries are typed."""

    wte: nn.Embedding  # token embedding (V, C)
    wpe: nn.Module  # position table; present only for "learned" and "sinusoidal" positions
    drop: nn.Dropout
    h: nn.ModuleList  # the TransformerBlocks
    ln_f: nn.Module  # final norm


class GPT(nn.Module):
    """Token + position embeddings, a stack of causal pre-LN blocks, a final norm and the LM head."""

    config: GPTConfig
    transformer: GPTLayers
    lm_head: nn.Linear

    def __init__(self, config: GPTConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.transformer = GPTLayers(dict(wte=nn.Embedding(c.vocab_size, c.n_embd)))
        if c.position == "learned":
            self.transformer["wpe"] = LearnedPositionalEmbedding(c.block_size, c.n_embd)
        elif c.position == "sinusoidal":
            self.transformer["wpe"] = SinusoidalPositionalEncoding(c.n_embd, c.block_size)
        self.rope = RotaryEmbedding(c.head_size, c.block_size, c.rope_base) if c.position == "rope" else None
        self.transformer["drop"] = nn.Dropout(c.dropout)
        self.transformer["h"] = nn.ModuleList(
            TransformerBlock(
                c.n_embd, c.n_head, c.d_ff, c.dropout, c.activation, c.norm, c.prenorm, c.bias,
                causal=True, n_kv_head=c.n_kv_head, eps=c.layer_norm_eps, qk_norm=c.qk_norm,
            )
            for _ in range(c.n_layer)
        )
        self.transformer["ln_f"] = make_norm(c.norm, c.n_embd, c.bias, c.layer_norm_eps)
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=False)
        if c.tie_weights:
            self.lm_head.weight = self.transformer.wte.weight
        self.apply(self._init_weights)
        # GPT-2's scaled init: each residual branch adds to the stream, so shrink their output layers
        # by 1/sqrt(2 * n_layer) to keep the residual variance from growing with depth.
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameters, tied weights counted once; ``non_embedding`` leaves out the position table."""
        n = count_parameters(self)[1]
        wpe = self.transformer["wpe"] if "wpe" in self.transformer else None
        if non_embedding and isinstance(wpe, LearnedPositionalEmbedding):
            n -= wpe.weight.numel()
        return n

    def new_kv_cache(self, batch_size: int, device=None, dtype=None) -> KVCache:
        """An empty cache with room for ``block_size`` positions of every layer."""
        c = self.config
        p = self.transformer.wte.weight
        return KVCache(
            c.n_layer, batch_size, c.n_kv_head or c.n_head, c.block_size, c.head_size,
            device=device or p.device, dtype=dtype or p.dtype,
        )

    def _check_input(self, idx: torch.Tensor, offset: int) -> None:
        if idx.dim() != 2:
            raise ValueError(f"idx must be (B, T) token ids, got shape {tuple(idx.shape)}")
        T = idx.size(1)
        if offset + T > self.config.block_size:
            raise ValueError(
                f"sequence length {offset + T} exceeds block_size={self.config.block_size}; "
                "crop the input to the last block_size tokens (generate() does this for you)"
            )
        if torch.compiler.is_compiling():  # the value check below would break the compiled graph
            return
        if idx.numel():
            lo, hi = (int(v) for v in torch.aminmax(idx))
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(
                    f"token ids must be in [0, {self.config.vocab_size}); got min {lo}, max {hi}. "
                    "Was the text encoded with the tokenizer this model was trained with?"
                )

    def _embed(self, idx: torch.Tensor, offset: int) -> tuple[torch.Tensor, tuple | None]:
        x = self.transformer.wte(idx)  # (B, T, C)
        if "wpe" in self.transformer:
            x = self.transformer.wpe(x, offset)
        rope = self.rope(idx.size(1), offset) if self.rope is not None else None
        return dropout(self.transformer.drop, x), rope

    def _head(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(x)
        cap = self.config.logit_softcap
        return logits if cap is None else cap * torch.tanh(logits / cap)  # smooth clamp to (-cap, cap)

    def forward(
        self,
        idx: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        kv_cache: KVCache | None = None,
        last_only: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx (B, T) -> logits (B, T, V) and the mean cross-entropy against ``targets`` (-1 = ignore).

        With ``kv_cache`` the T tokens continue the cached ones (their positions start at ``kv_cache.pos``).
        ``last_only`` computes logits for the final position only, which is all sampling needs.
        """
        offset = kv_cache.pos if kv_cache is not None else 0
        self._check_input(idx, offset)
        x, rope = self._embed(idx, offset)
        for i, block in enumerate(self.transformer.h):
            x, _ = block(x, rope=rope, kv_cache=kv_cache, layer=i)
        if kv_cache is not None:
            kv_cache.advance(idx.size(1))
        x = self.transformer.ln_f(x)
        if last_only:
            x = x[:, -1:, :]
        logits = self._head(x)  # (B, T, V)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1)
        return logits, loss

    def forward_with_attention(self, idx: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits plus every layer's attention weights, each (B, nh, T, T), computed explicitly."""
        self._check_input(idx, 0)
        x, rope = self._embed(idx, 0)
        weights = []
        for block in self.transformer.h:
            x, w = block(x, rope=rope, need_weights=True)
            weights.append(w)
        return self._head(self.transformer.ln_f(x)), weights

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, **kwargs: Any) -> torch.Tensor:
        """Sample a continuation; see :func:`minigpt.generation.generate` for the options."""
        return generate(self, idx, max_new_tokens, **kwargs)
