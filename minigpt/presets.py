"""Training presets: the hyperparameters that suit each model size of `minigpt.model.PRESETS`.

A preset is what `minigpt train --preset NAME` starts from; every flag given on the command line
overrides one field. Keeping model shape and training recipe together matters because they are
tuned as a pair: a learning rate that suits a 0.8M-parameter model at batch 12 is too high for a
10M one at batch 64. So there is one name per pair: a training preset is keyed by the model preset
it trains (`TRAIN_PRESETS[name].model == name`), and the sizes live only in `minigpt.model.PRESETS`.

- `shakespeare-cpu` (the default): sized for a 2-core laptop CPU; passes nanoGPT's CPU recipe's
  final loss in well under a minute and reaches a readable Shakespeare pastiche in a few.
- `nanogpt-cpu`: nanoGPT's published CPU recipe ("I only have a macbook": 4 layers, 4 heads,
  width 128, block 64, batch 12, 2000 iterations, lr 1e-3, no dropout), kept for comparison.
- `shakespeare-char`: nanoGPT's `config/train_shakespeare_char.py`, for a GPU.
- `char-tiny`: the small model of the course's quick reference; trains in seconds.
- `llama-cpu`: `shakespeare-cpu`'s size and recipe with notebook 11's Llama architecture (exports as Llama).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from .model import PRESETS as MODEL_PRESETS
from .model import GPTConfig
from .train import TrainConfig

__all__ = ["TRAIN_PRESETS", "TrainPreset", "get_preset"]


@dataclass(frozen=True)
class TrainPreset:
    model: str  # key of minigpt.model.PRESETS, and of TRAIN_PRESETS
    train: dict[str, Any] = field(default_factory=dict)  # TrainConfig fields that differ from the defaults
    description: str = ""  # one line for `minigpt train --help`

    def model_config(self, **overrides: Any) -> GPTConfig:
        return GPTConfig.from_preset(self.model, **overrides)

    def train_config(self, **overrides: Any) -> TrainConfig:
        return dataclasses.replace(TrainConfig(), **{**self.train, **overrides})


# nanoGPT's shakespeare-char settings shared by its GPU and CPU recipes: a small char model sees
# few tokens per step, so beta2 = 0.99 (smoother second moment) and a short warmup.
_NANOGPT = dict(lr=1e-3, min_lr=1e-4, beta2=0.99, warmup_iters=100, weight_decay=0.1, grad_clip=1.0)

_RECIPES = (
    TrainPreset(
        model="shakespeare-cpu",
        # A CPU run is step-limited, so: small batches (8 x 128 tokens, more steps per second), Muon
        # for the hidden matrices (more progress per step than AdamW), a high learning rate with a
        # short warmup, and a linear decay to 0 that ends with the run (--max-time plans the steps).
        # 8000 steps is about 10 minutes on 2 cores.
        train=dict(_NANOGPT, optimizer="muon", lr=1e-2, min_lr=0.0, schedule="linear", batch_size=8,
                   max_iters=8000, warmup_iters=20, eval_interval=250, eval_iters=20, dtype="auto"),
        description="default; 4 layers, width 128, block 128, RoPE, Muon; sized for a 2-core laptop CPU",
    ),
    TrainPreset(
        model="speedrun-cpu",
        # bench/speedrun.py's recipe (RECORDS.md): shakespeare-cpu with a 256-token context and 4 sequences
        # per step (the same 1024 tokens per step). The longer context is the gain: the model sees more of
        # each line's past in training and in the evaluation's 256-token windows (bench/ablation-3000-steps.md).
        # A sequence-length warm-up (speedrun knob seq_warmup) measured worse, per step and against the clock.
        # dtype stays "auto" (fp32 on a CPU): bf16 autocast gave 1.2-1.3x more steps on a CPU with AMX, but a CPU
        # without bf16 matrix units is expected to lose by it, so records add it with --train-arg dtype=bfloat16.
        train=dict(_NANOGPT, optimizer="muon", lr=1e-2, min_lr=0.0, schedule="linear", batch_size=4,
                   max_iters=8000, warmup_iters=20, eval_interval=250, eval_iters=20, dtype="auto"),
        description="the course speedrun's recipe (RECORDS.md): shakespeare-cpu with context 256, 4 sequences per step",
    ),
    TrainPreset(
        model="nanogpt-cpu",
        train=dict(_NANOGPT, batch_size=12, max_iters=2000, lr_decay_iters=2000, eval_interval=250, eval_iters=20),
        description="nanoGPT's CPU recipe: 4 layers, 4 heads, width 128, block 64, batch 12, 2000 iters",
    ),
    TrainPreset(
        model="shakespeare-char",
        train=dict(_NANOGPT, batch_size=64, max_iters=5000, lr_decay_iters=5000, eval_interval=250,
                   eval_iters=200),
        description="nanoGPT's shakespeare-char for a GPU: 6 layers, 6 heads, width 384, block 256",
    ),
    TrainPreset(
        model="char-tiny",
        train=dict(lr=3e-3, min_lr=3e-4, beta2=0.99, batch_size=32, max_iters=1000, warmup_iters=50,
                   eval_interval=100, eval_iters=10),
        description="the quick-reference model: 3 layers, width 64; trains in seconds",
    ),
    TrainPreset(
        model="llama-cpu",
        # shakespeare-cpu's recipe: the same width, depth and context, only the architecture is Llama's
        train=dict(_NANOGPT, optimizer="muon", lr=1e-2, min_lr=0.0, schedule="linear", batch_size=8,
                   max_iters=8000, warmup_iters=20, eval_interval=250, eval_iters=20, dtype="auto"),
        description="notebook 11's Llama-style model: shakespeare-cpu with RMSNorm, SwiGLU, GQA, no biases, untied",
    ),
)
TRAIN_PRESETS: dict[str, TrainPreset] = {p.model: p for p in _RECIPES}  # one name: the model preset's


def get_preset(name: str) -> TrainPreset:
    if name not in TRAIN_PRESETS:
        raise ValueError(f"unknown preset {name!r}; available: {', '.join(TRAIN_PRESETS)}")
    preset = TRAIN_PRESETS[name]
    if preset.model not in MODEL_PRESETS:  # guards against a renamed model preset
        raise ValueError(f"preset {name!r} names model preset {preset.model!r}, which does not exist")
    return preset
