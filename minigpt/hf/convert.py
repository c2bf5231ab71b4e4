"""Bridges to Hugging Face ``transformers``: GPT-2 weights in and out of :class:`minigpt.GPT`, and the
helpers notebook 08 uses to fine-tune GPT-2 (loading with an offline fallback, ``Trainer`` arguments,
perplexity, samples, LoRA).

``transformers`` and ``peft`` are imported inside the functions, so ``import minigpt`` stays light. GPT-2
stores its linear layers as ``Conv1D`` with weights laid out (in, out) -- the transpose of ``nn.Linear`` --
which is the only real work a conversion does; the names already match.

Offline: :func:`load_causal_lm` never hangs when the hub is unreachable. It tries the local cache first,
then probes the hub with a short timeout, and otherwise prints a banner and returns a tiny randomly
initialised GPT-2 with a byte-level BPE trained on tiny Shakespeare, so every notebook cell still runs.
Set ``MINIGPT_HF_OFFLINE=1`` to force that fallback (CI and the tests do).
"""

from __future__ import annotations

import logging
import math
import os
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ._extras import require_installed
from .model import GPT, GPTConfig, count_parameters

require_installed("transformers", feature="minigpt.hf")  # without importing it: that takes seconds

__all__ = [
    "CONV1D_WEIGHTS",
    "config_from_hf",
    "hf_config_from",
    "gpt2_to_minigpt",
    "minigpt_to_gpt2",
    "load_gpt2_into_minigpt",
    # fine-tuning helpers (notebook 08)
    "FALLBACK_VOCAB_SIZE",
    "OFFLINE_ENV",
    "LoadInfo",
    "add_lora",
    "count_parameters",
    "eval_perplexity",
    "fallback_tokenizer",
    "hub_reachable",
    "load_causal_lm",
    "log_history",
    "make_trainer",
    "make_training_args",
    "offline_banner",
    "perplexity",
    "sample_text",
    "tiny_gpt2_config",
]

log = logging.getLogger(__name__)

# parameter-name suffixes that Hugging Face's GPT-2 keeps as Conv1D, i.e. transposed
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}


def config_from_hf(hf_config: Any) -> GPTConfig:
    """A :class:`GPTConfig` with the same architecture as a Hugging Face ``GPT2Config``."""
    act = hf_config.activation_function
    if act not in _ACT_FROM_HF:
        raise ValueError(f"GPT-2 activation {act!r} has no minigpt equivalent ({sorted(_ACT_FROM_HF)})")
    return GPTConfig(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.n_positions,
        n_layer=hf_config.n_layer,
        n_head=hf_config.n_head,
        n_embd=hf_config.n_embd,
        d_ff=hf_config.n_inner,
        dropout=0.0,
        bias=True,
        activation=_ACT_FROM_HF[act],
        layer_norm_eps=hf_config.layer_norm_epsilon,
        tie_weights=bool(getattr(hf_config, "tie_word_embeddings", True)),
    )


def hf_config_from(config: GPTConfig) -> Any:
    """The ``GPT2Config`` of a minigpt config; refuses features GPT-2 does not have."""
    from transformers import GPT2Config

    unsupported = []
    if config.position != "learned":
        unsupported.append(f"position={config.position!r} (GPT-2 learns its positions)")
    if config.norm != "layernorm":
        unsupported.append(f"norm={config.norm!r} (GPT-2 uses LayerNorm)")
    if not config.prenorm:
        unsupported.append("post-LN blocks")
    if config.n_kv_head not in (None, config.n_head):
        unsupported.append("grouped-query attention")
    if config.activation not in _ACT_TO_HF:
        unsupported.append(f"activation={config.activation!r}")
    if unsupported:
        raise ValueError("this GPT cannot be expressed as Hugging Face GPT-2: " + "; ".join(unsupported))
    return GPT2Config(
        vocab_size=config.vocab_size,
        n_positions=config.block_size,
        n_embd=config.n_embd,
        n_layer=config.n_layer,
        n_head=config.n_head,
        n_inner=config.d_ff,
        activation_function=_ACT_TO_HF[config.activation],
        layer_norm_epsilon=config.layer_norm_eps,
        resid_pdrop=config.dropout,
        embd_pdrop=config.dropout,
        attn_pdrop=config.dropout,
        tie_word_embeddings=config.tie_weights,
        # GPT-2's <|endoftext|> id (50256) does not exist in a small vocabulary
        bos_token_id=50256 if config.vocab_size > 50256 else None,
        eos_token_id=50256 if config.vocab_size > 50256 else None,
    )


def _is_conv1d(name: str) -> bool:
    return name.endswith(CONV1D_WEIGHTS)


@torch.no_grad()
def gpt2_to_minigpt(hf_model: Any) -> GPT:
    """Copy a ``GPT2LMHeadModel``'s weights into a new :class:`GPT`, transposing the Conv1D layers."""
    model = GPT(config_from_hf(hf_model.config))
    ours = model.state_dict()
    theirs = {k: v for k, v in hf_model.state_dict().items() if not k.endswith((".attn.bias", ".attn.masked_bias"))}
    missing = sorted(set(ours) - set(theirs))
    extra = sorted(set(theirs) - set(ours))
    if missing or extra:
        raise ValueError(f"GPT-2 state dict does not match: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, value in theirs.items():
        value = value.t() if _is_conv1d(name) else value
        if ours[name].shape != value.shape:
            raise ValueError(f"{name}: shape {tuple(value.shape)} does not fit {tuple(ours[name].shape)}")
        ours[name].copy_(value)
    return model


@torch.no_grad()
def minigpt_to_gpt2(model: GPT) -> Any:
    """A ``GPT2LMHeadModel`` holding the weights of a (GPT-2 shaped) :class:`GPT`.

    A model built with ``bias=False`` gets zero biases, which GPT-2 always has: the same function.
    """
    from transformers import GPT2LMHeadModel

    hf_model = GPT2LMHeadModel(hf_config_from(model.config))
    theirs = hf_model.state_dict()
    ours = model.state_dict()
    for name in ours:
        if name not in theirs:
            raise ValueError(f"{name} has no place in Hugging Face GPT-2")
    with torch.no_grad():
        for name, target in theirs.items():
            if name in ours:
                target.copy_(ours[name].t() if _is_conv1d(name) else ours[name])
            elif name.endswith(".bias") and not model.config.bias and not name.endswith((".attn.bias", ".masked_bias")):
                target.zero_()
    hf_model.eval()
    return hf_model


def load_gpt2_into_minigpt(name: str = "gpt2", **kwargs: Any) -> GPT:
    """OpenAI's pretrained GPT-2 (``gpt2``, ``gpt2-medium`` ...) as a minigpt :class:`GPT`.

    Needs the Hugging Face hub or a local cache; see :mod:`minigpt.hf` for the offline fallback.
    """
    from transformers import GPT2LMHeadModel

    return gpt2_to_minigpt(GPT2LMHeadModel.from_pretrained(name, **kwargs))


# ------------------------------------------------------------------ loading, with an offline fallback

OFFLINE_ENV = "MINIGPT_HF_OFFLINE"  # "1" forces the offline fallback (tests, CI) without touching the network
FALLBACK_VOCAB_SIZE = 4096  # byte-level BPE of the fallback tokenizer: 256 bytes + <|endoftext|> + merges
_FALLBACK_MARK = "minigpt_offline_fallback"  # stored in config.json so a saved fallback stays labelled
_PROBE_MEMORY_S = 300.0  # an unreachable hub is remembered this long, so repeated loads do not re-wait
_unreachable_since: dict[str, float] = {}
_GPT2_PARAMS = {"gpt2": "124,439,808", "distilgpt2": "81,912,576"}


@dataclass
class LoadInfo:
    """What :func:`load_causal_lm` actually loaded, so a notebook can say it honestly."""

    name: str  # what was asked for ("gpt2", or a folder made with save_pretrained)
    source: str  # "cache" (hub cache, no network), "hub" (downloaded), "local" (a folder) or "fallback"
    pretrained: bool  # False for the fallback: random weights, not OpenAI's GPT-2
    num_params: int  # parameters of the model returned
    reason: str = ""  # why the fallback was taken ("" otherwise)

    @property
    def fallback(self) -> bool:
        return self.source == "fallback"


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the Hugging Face hub answers an HTTP request within ``timeout`` seconds.

    The request runs in a daemon thread that we stop waiting for after ``timeout``: a DNS lookup can
    ignore socket timeouts, and ``from_pretrained`` itself retries for ~45 s before giving up.
    Any HTTP answer (even 4xx) counts as reachable; proxies in ``HTTPS_PROXY`` are honoured.
    """
    from huggingface_hub import constants

    if time.monotonic() - _unreachable_since.get(constants.ENDPOINT, -math.inf) < _PROBE_MEMORY_S:
        return False  # asked a moment ago (e.g. a second load in the same notebook): do not wait again
    answered: list[bool] = []

    def probe() -> None:
        try:
            with urllib.request.urlopen(urllib.request.Request(constants.ENDPOINT, method="HEAD"), timeout=timeout):
                answered.append(True)
        except urllib.error.HTTPError:
            answered.append(True)  # the server is there, it just did not like a bare HEAD
        except Exception:  # DNS failure, refused, timeout, TLS error: all mean "not reachable"
            pass

    thread = threading.Thread(target=probe, name="minigpt-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout + 0.5)
    if not answered:
        _unreachable_since[constants.ENDPOINT] = time.monotonic()
    return bool(answered)


def _env_true(key: str) -> bool:
    return os.environ.get(key, "").strip().lower() in ("1", "true", "yes", "on")


def _hub_offline_env() -> bool:
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def _forced_offline(force_offline: bool | None) -> bool:
    return _env_true(OFFLINE_ENV) if force_offline is None else force_offline


def offline_banner(name: str, reason: str, model: Any = None, vocab_size: int | None = None) -> str:
    """The message printed when the fallback is used: what happened, what it means, how to fix it."""
    from huggingface_hub import constants

    real = _GPT2_PARAMS.get(name)
    lines = [
        "HUGGING FACE HUB UNREACHABLE -- OFFLINE FALLBACK, THIS IS NOT PRETRAINED GPT-2",
        f"reason: {reason}",
    ]
    if model is not None:
        c = model.config
        lines.append(
            f"using: a tiny RANDOMLY INITIALISED GPT-2 ({c.n_layer} layers, width {c.n_embd}, "
            f"{model.num_parameters():,} parameters) and a {vocab_size:,}-token byte-level BPE trained on "
            f"tiny Shakespeare."
        )
    lines += [
        f"Every cell still runs, but losses, perplexities and samples are NOT those of {name!r}"
        + (f" ({real} parameters)." if real else "."),
        f"To use the real model: run once with internet access so {name!r} is cached under "
        f"{constants.HF_HUB_CACHE}; or copy such a cache from another machine and point HF_HOME at the "
        "folder that holds its hub/ directory; or pass load_causal_lm() a folder written by save_pretrained().",
    ]
    if os.environ.get(OFFLINE_ENV):
        lines.append(f"(the fallback was forced by {OFFLINE_ENV}={os.environ[OFFLINE_ENV]}; unset it to try the hub)")
    wrapped = [part for line in lines for part in textwrap.wrap(line, 96, subsequent_indent="  ")]
    bar = "=" * 100
    return "\n".join([bar, *(f"  {line}" for line in wrapped), bar])


def fallback_tokenizer(
    vocab_size: int = FALLBACK_VOCAB_SIZE, text: str | None = None, cache_dir: str | os.PathLike | None = None
) -> Any:
    """A byte-level BPE trained on tiny Shakespeare (or ``text``), as a ``PreTrainedTokenizerFast``.

    Trained once (~2 s) and cached as ``<data dir>/gpt2_fallback_bpe_<vocab_size>.json``; a ``text`` of
    your own is trained every time and not cached. Like GPT-2's, it has ``<|endoftext|>`` as bos, eos
    and unk and no pad token.
    """
    from .data import default_data_dir, load_shakespeare
    from .tokenizer import BPETokenizer

    if text is not None:
        return BPETokenizer.train(text, vocab_size=vocab_size).to_hf()
    path = Path(cache_dir) if cache_dir is not None else default_data_dir()
    path = path / f"gpt2_fallback_bpe_{vocab_size}.json"
    bpe = None
    if path.is_file():
        try:
            bpe = BPETokenizer.load(path)
        except ValueError:
            log.warning("cached fallback tokenizer %s is unreadable; training it again", path)
    if bpe is None or bpe.vocab_size != vocab_size:
        bpe = BPETokenizer.train(load_shakespeare(), vocab_size=vocab_size)
        bpe.save(path)
    return bpe.to_hf()


def tiny_gpt2_config(
    vocab_size: int, eos_token_id: int, n_positions: int = 256, n_layer: int = 4, n_head: int = 4, n_embd: int = 128
) -> Any:
    """A small ``GPT2Config`` (same architecture as GPT-2, ~1M parameters) that trains on a CPU."""
    from transformers import GPT2Config

    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_layer=n_layer,
        n_head=n_head,
        n_embd=n_embd,
        bos_token_id=eos_token_id,
        eos_token_id=eos_token_id,
    )
    setattr(config, _FALLBACK_MARK, True)
    return config


def load_causal_lm(
    name: str = "gpt2",
    attn_implementation: str | None = None,
    offline_ok: bool = True,
    *,
    force_offline: bool | None = None,
    hub_timeout: float = 3.0,
    fallback_vocab_size: int = FALLBACK_VOCAB_SIZE,
    fallback_text: str | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> tuple[Any, Any, LoadInfo]:
    """``AutoModelForCausalLM`` + ``AutoTokenizer`` for ``name``, or a labelled offline fallback.

    Order: a local folder is loaded directly; otherwise the hub cache (no network), then the hub
    itself if it answers within ``hub_timeout`` s. When neither works and ``offline_ok``, a banner is
    printed and a tiny random GPT-2 with a Shakespeare BPE is returned (``info.source == "fallback"``);
    with ``offline_ok=False`` an ``OSError`` is raised instead. ``force_offline=None`` reads
    ``MINIGPT_HF_OFFLINE``. Pass ``attn_implementation="eager"`` when you need attention weights
    (the default sdpa kernel returns none). ``seed`` fixes the fallback's random initialisation;
    ``fallback_text`` trains its tokenizer on your text instead of tiny Shakespeare (tests use it).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        model_kwargs["attn_implementation"] = attn_implementation

    def load(**kw: Any) -> tuple[Any, Any]:
        tok = AutoTokenizer.from_pretrained(name, **kw)
        return AutoModelForCausalLM.from_pretrained(name, **model_kwargs, **kw), tok

    def finish(model: Any, tok: Any, source: str, reason: str = "") -> tuple[Any, Any, LoadInfo]:
        _set_causal_loss_type(model)
        pretrained = source != "fallback" and not getattr(model.config, _FALLBACK_MARK, False)
        return model, tok, LoadInfo(name, source, pretrained, model.num_parameters(), reason)

    if Path(name).is_dir():
        return finish(*load(), "local")
    reason = ""
    if _forced_offline(force_offline):
        reason = f"{OFFLINE_ENV}=1 or force_offline=True asked for the offline fallback"
    else:
        try:
            return finish(*load(local_files_only=True), "cache")
        except (OSError, ValueError):
            pass  # not cached: try the network below
        if _hub_offline_env():
            reason = f"HF_HUB_OFFLINE is set and {name!r} is not in the local cache"
        elif not hub_reachable(hub_timeout):
            from huggingface_hub import constants

            reason = f"{constants.ENDPOINT} did not answer within {hub_timeout:g} s and {name!r} is not cached"
        else:
            # the hub answered: this is the normal online path, and its errors (a typo in the name,
            # a gated model) are the user's to see, not something to hide behind a fallback
            return finish(*load(), "hub")
    if not offline_ok:
        raise OSError(
            f"cannot load {name!r}: {reason}. Run once with internet access so it is cached, point HF_HOME "
            f"at a folder that holds a copy of the cache, or pass offline_ok=True for the tiny offline fallback."
        )

    tok = fallback_tokenizer(fallback_vocab_size, text=fallback_text)
    tok.model_max_length = 256
    config = tiny_gpt2_config(len(tok), eos_token_id=tok.eos_token_id, n_positions=256)
    with torch.random.fork_rng(devices=[]):  # deterministic init without disturbing the caller's RNG
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, **model_kwargs)
    model.eval()
    if verbose:
        print(offline_banner(name, reason, model, len(tok)))
    else:
        log.warning("offline fallback for %r (NOT pretrained): %s", name, reason)
    return finish(model, tok, "fallback", reason)


# ------------------------------------------------------------------ fine-tuning with Trainer


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


def _set_causal_loss_type(model: Any) -> None:
    """GPT-2's class name does not match transformers' loss table, so its ``loss_type`` is None.

    The loss itself is the same either way (transformers falls back to the causal-LM loss, with a
    warning), but ``Trainer`` only counts T - 1 predicted tokens per block when ``loss_type`` says so.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    if getattr(base, "loss_type", "") is None and not getattr(base.config, "is_encoder_decoder", False):
        base.loss_type = "ForCausalLM"


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
