"""The model contract: what the trainer and the decoders need from a model, as ``typing.Protocol``s.

Its own module so that :mod:`minigpt.generation` can state what it accepts without importing
:mod:`minigpt.model` (which imports generation for ``GPT.generate``). :mod:`minigpt.model` re-exports
every name, and DESIGN.md documents them there.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import torch

from .attention import KVCache

__all__ = ["HasBlockSize", "LanguageModel", "CachedLanguageModel"]


class HasBlockSize(Protocol):
    """A model config: all that generation reads from it is the longest context."""

    @property
    def block_size(self) -> int: ...


@runtime_checkable
class LanguageModel(Protocol):
    """The contract the trainer and ``generate``/``stream``/``beam_search`` rely on (nanoGPT's).

    ``model(idx, targets=None) -> (logits, loss)``: idx (B, T) token ids, logits (B, T, V), loss the
    mean cross-entropy against ``targets`` (-1 = ignore) or None; ``config.block_size`` is the longest
    context; ``training``/``eval()``/``train(mode)`` as on any ``nn.Module``. Two optional extras that
    generation uses when a model offers them: a ``last_only`` keyword (logits for the final position
    only; generation checks the forward signature for it and otherwise slices the last position
    itself) and a KV cache (see :class:`CachedLanguageModel`).
    """

    config: HasBlockSize
    training: bool

    def __call__(self, idx: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, Any]: ...

    def eval(self) -> Any: ...

    def train(self, mode: bool = True) -> Any: ...


@runtime_checkable
class CachedLanguageModel(LanguageModel, Protocol):
    """A :class:`LanguageModel` that decodes incrementally: ``new_kv_cache(B)`` returns an empty
    :class:`~minigpt.attention.KVCache`, and ``model(idx, kv_cache=cache)`` reads the T new tokens at
    positions ``cache.pos ... cache.pos + T - 1``, stores their keys/values and advances ``cache.pos``."""

    def new_kv_cache(self, batch_size: int) -> KVCache: ...
