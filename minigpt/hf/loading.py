"""Loading a Hugging Face causal LM that never hangs offline: :func:`load_causal_lm`.

It tries the local cache first, then probes the hub with a short timeout, and otherwise prints a
banner and returns a tiny randomly initialised GPT-2 with a byte-level BPE trained on tiny
Shakespeare, so every notebook cell still runs. Set ``MINIGPT_HF_OFFLINE=1`` to force that fallback
(CI and the tests do). ``transformers`` is imported inside the functions.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import default_data_dir, load_shakespeare
from ..tokenizer import BPETokenizer

__all__ = ["FALLBACK_VOCAB_SIZE", "OFFLINE_ENV", "LoadInfo", "fallback_tokenizer", "hub_reachable", "load_causal_lm",
           "offline_banner", "tiny_gpt2_config"]

log = logging.getLogger(__name__)

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


def _set_causal_loss_type(model: Any) -> None:
    """GPT-2's class name does not match transformers' loss table, so its ``loss_type`` is None.

    The loss itself is the same either way (transformers falls back to the causal-LM loss, with a
    warning), but ``Trainer`` only counts T - 1 predicted tokens per block when ``loss_type`` says so.
    """
    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # peft wraps the model
    if getattr(base, "loss_type", "") is None and not getattr(base.config, "is_encoder_decoder", False):
        base.loss_type = "ForCausalLM"
