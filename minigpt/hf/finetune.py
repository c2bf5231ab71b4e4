"""Fine-tuning a Hugging Face causal LM the way notebook 08 does: ``Trainer`` arguments, a
``Trainer`` for fixed-length blocks, perplexity, reproducible samples and LoRA through ``peft``.

``transformers`` and ``peft`` are imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from .loading import _set_causal_loss_type

__all__ = ["add_lora", "eval_perplexity", "log_history", "make_trainer", "make_training_args", "perplexity",
           "sample_text"]


def perplexity(loss: float) -> float:
    """exp(mean cross-entropy in nats): the effective number of tokens the model hesitates between."""
    loss = float(loss)
    if math.isnan(loss):
        raise ValueError("loss is NaN: training diverged; lower the learning rate")
    return math.exp(loss) if loss < 700 else math.inf  # exp overflows a float past ~709


def make_training_args(
    output_dir: str | os.PathLike,
    *,
    learning_rate: float = 5e-5,
    num_train_epochs: float = 3,
    batch_size: int = 8,
    max_steps: int = -1,
    eval_steps: int | None = None,
    logging_steps: int = 10,
    seed: int = 0,
    **overrides: Any,
) -> Any:
    """``TrainingArguments`` with the course's fine-tuning recipe (lr 5e-5, 3 epochs, batch 8).

    ``max_steps > 0`` is the CPU budget mode: it overrides the epochs, and evaluation runs every
    ``eval_steps`` (default: 4 times per run) instead of once per epoch. Checkpoints are not written
    during training (``save_strategy="no"``): call ``save_pretrained`` when you want one. Any other
    ``TrainingArguments`` field can be passed through ``overrides``.
    """
    from transformers import TrainingArguments

    if learning_rate <= 0 or batch_size < 1:
        raise ValueError(f"need learning_rate > 0 and batch_size >= 1, got {learning_rate}, {batch_size}")
    budget = max_steps is not None and max_steps > 0
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        learning_rate=learning_rate,
        num_train_epochs=num_train_epochs,
        max_steps=max_steps if budget else -1,
        per_device_train_batch_size=batch_size,
        per_device_eval_batch_size=batch_size,
        eval_strategy="steps" if budget else "epoch",
        eval_steps=(eval_steps or max(1, max_steps // 4)) if budget else None,
        logging_strategy="steps",
        logging_steps=logging_steps,
        save_strategy="no",
        report_to="none",
        seed=seed,
        data_seed=seed,
        dataloader_pin_memory=torch.cuda.is_available(),  # pinning only helps host-to-GPU copies
    )
    kwargs.update(overrides)
    return TrainingArguments(**kwargs)


def make_trainer(model: Any, tokenizer: Any, train_dataset: Any, eval_dataset: Any, args: Any) -> Any:
    """A ``Trainer`` for fixed-length blocks: every example already has ``labels``, so no padding collator.

    It also sets ``loss_type = "ForCausalLM"`` on a GPT-2 whose ``loss_type`` is unset (its class name
    does not match transformers' loss table). The loss function is the same -- transformers falls back
    to it anyway -- but ``Trainer`` only knows the labels get shifted when ``loss_type`` says so; without
    it it divides the summed loss by T instead of T - 1 predicted tokens per block and reports an
    ``eval_loss`` that is too low by a factor (T - 1) / T.
    """
    from transformers import Trainer, default_data_collator

    _set_causal_loss_type(model)
    return Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        data_collator=default_data_collator,
    )


def log_history(trainer: Any) -> dict[str, list[float]]:
    """Training and evaluation losses from ``trainer.state.log_history``, ready to plot."""
    out: dict[str, list[float]] = {"step": [], "loss": [], "eval_step": [], "eval_loss": []}
    for entry in trainer.state.log_history:
        if "loss" in entry:
            out["step"].append(entry["step"])
            out["loss"].append(entry["loss"])
        if "eval_loss" in entry:
            out["eval_step"].append(entry["step"])
            out["eval_loss"].append(entry["eval_loss"])
    return out


@torch.no_grad()
def eval_perplexity(model: Any, dataset: Any, batch_size: int = 8, max_blocks: int | None = None) -> float:
    """Perplexity of a causal LM on fixed-length blocks (``input_ids`` and ``labels`` columns).

    A plain loop, independent of ``Trainer``: mean next-token cross-entropy over all blocks, then exp.
    Every block has the same length, so the mean of per-block means is the per-token mean.
    """
    n = len(dataset) if max_blocks is None else min(max_blocks, len(dataset))
    if n == 0:
        raise ValueError("the evaluation dataset is empty; use more text or a smaller block_size")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total = 0.0
    for start in range(0, n, batch_size):
        rows = dataset[start : min(start + batch_size, n)]
        ids = torch.as_tensor(rows["input_ids"], device=device)  # (B, T)
        labels = torch.as_tensor(rows["labels"], device=device)  # (B, T); the model shifts them itself
        total += float(model(input_ids=ids, labels=labels).loss) * ids.shape[0]
    model.train(was_training)
    return perplexity(total / n)


@torch.no_grad()
def sample_text(
    model: Any,
    tokenizer: Any,
    prompt: str,
    max_new_tokens: int = 40,
    *,
    seed: int = 0,
    do_sample: bool = True,
    temperature: float = 0.8,
    top_k: int | None = 50,
) -> str:
    """Prompt + continuation from ``model.generate``, reproducible for a given ``seed``.

    GPT-2 has no pad token, so ``pad_token_id`` is set to eos to keep ``generate`` quiet.
    """
    if not prompt:
        raise ValueError("prompt is empty; GPT-2 needs at least one token to continue, e.g. 'ROMEO:'")
    device = next(model.parameters()).device
    enc = tokenizer(prompt, return_tensors="pt").to(device)
    kwargs: dict[str, Any] = dict(max_new_tokens=max_new_tokens, do_sample=do_sample)
    kwargs["pad_token_id"] = tokenizer.eos_token_id
    if do_sample:
        kwargs.update(temperature=temperature, top_k=top_k)
    was_training = model.training
    model.eval()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        out = model.generate(**enc, **kwargs)
    model.train(was_training)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def add_lora(
    model: Any, r: int = 8, alpha: int = 16, dropout: float = 0.05, target_modules: Sequence[str] = ("c_attn",)
) -> Any:
    """Wrap ``model`` with LoRA adapters (Hu et al. 2021) on ``target_modules``; only they train.

    Each adapted weight W (d_in, d_out) gets ``W + (alpha / r) * A @ B`` with A (d_in, r), B (r, d_out), B = 0
    at the start, so the wrapped model first computes exactly what the original did. GPT-2's ``Conv1D``
    stores W transposed, which peft must be told (``fan_in_fan_out``); this is detected here.
    Note: peft injects the adapters into ``model`` in place.
    """
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    targets = list(target_modules)
    matched = [m for n, m in model.named_modules() if n.split(".")[-1] in targets]
    if not matched:
        raise ValueError(f"no module named {targets} in this model; GPT-2's attention projection is 'c_attn'")
    config = LoraConfig(
        r=r,
        lora_alpha=alpha,
        lora_dropout=dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        bias="none",
        fan_in_fan_out=all(isinstance(m, Conv1D) for m in matched),
    )
    return get_peft_model(model, config)
