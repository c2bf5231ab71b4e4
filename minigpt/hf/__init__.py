"""Bridges to Hugging Face: GPT-2 conversion, loading with an offline fallback, fine-tuning, data, export.

One module per job, each readable alone:

- :mod:`minigpt.hf.convert`: GPT-2 weights in and out of :class:`minigpt.GPT`, Llama weights into it;
- :mod:`minigpt.hf.loading`: :func:`load_causal_lm`, which falls back to a labelled tiny model offline;
- :mod:`minigpt.hf.finetune`: the ``Trainer`` recipe of notebook 08, perplexity, samples, LoRA via peft;
- :mod:`minigpt.hf.data`: causal-LM datasets with ``datasets`` (needs that package; not re-exported here);
- :mod:`minigpt.hf.export`: ``minigpt export``, a checkpoint as a GPT-2, GPT-NeoX or Llama folder.

``from minigpt.hf import X`` works for every name of the first three. ``transformers``, ``peft`` and
``datasets`` are imported inside the functions, so importing this package is cheap; it only checks
that ``transformers`` is installed.
"""

from .._extras import require_installed

# checked before anything else here, without importing transformers (that takes seconds)
require_installed("transformers", feature="minigpt.hf")

from ..model import count_parameters  # noqa: E402  (after the check, so a missing extra gets one clear line)
from .convert import (  # noqa: E402
    CONV1D_WEIGHTS,
    config_from_hf,
    gpt2_to_minigpt,
    hf_config_from,
    llama_config_from_hf,
    llama_to_minigpt,
    load_gpt2_into_minigpt,
    minigpt_to_gpt2,
)
from .finetune import (  # noqa: E402
    add_lora,
    eval_perplexity,
    log_history,
    make_trainer,
    make_training_args,
    perplexity,
    sample_text,
)
from .loading import (  # noqa: E402
    FALLBACK_VOCAB_SIZE,
    OFFLINE_ENV,
    LoadInfo,
    fallback_tokenizer,
    hub_reachable,
    load_causal_lm,
    offline_banner,
    tiny_gpt2_config,
)

__all__ = [
    # conversion
    "CONV1D_WEIGHTS", "config_from_hf", "hf_config_from", "gpt2_to_minigpt", "minigpt_to_gpt2",
    "load_gpt2_into_minigpt", "llama_config_from_hf", "llama_to_minigpt",
    # loading, with the offline fallback
    "FALLBACK_VOCAB_SIZE", "OFFLINE_ENV", "LoadInfo", "fallback_tokenizer", "hub_reachable", "load_causal_lm",
    "offline_banner", "tiny_gpt2_config",
    # fine-tuning (notebook 08)
    "add_lora", "count_parameters", "eval_perplexity", "log_history", "make_trainer", "make_training_args",
    "perplexity", "sample_text",
]
