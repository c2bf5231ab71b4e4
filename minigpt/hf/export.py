"""Export a minigpt checkpoint as a Hugging Face model folder (``minigpt export CKPT --to hf OUT``).

The folder holds ``config.json`` + ``model.safetensors`` + ``generation_config.json`` + ``tokenizer.json``
+ ``tokenizer_config.json``, so ``AutoModelForCausalLM.from_pretrained(OUT)``,
``AutoTokenizer.from_pretrained(OUT)`` and ``pipeline("text-generation", model=OUT)`` load it offline.

Which Hugging Face architecture a :class:`~minigpt.model.GPT` becomes (every block must be pre-norm):

    position  norm       activation              ->  Hugging Face class
    learned   layernorm  gelu, gelu_tanh, relu   ->  GPT2LMHeadModel     (GPT-2)
    rope      layernorm  gelu, gelu_tanh, relu   ->  GPTNeoXForCausalLM  (sequential residual, rotary on all channels)
    rope      rmsnorm    swiglu                  ->  LlamaForCausalLM    (grouped-query attention kept)

Anything else (sinusoidal or no positions, post-LN, RMSNorm with a plain MLP, LayerNorm with SwiGLU,
grouped-query attention outside Llama) has no Hugging Face class that computes the same function,
so :func:`to_hf_model` refuses it naming the field. Why the mapping is exact:

- minigpt's RoPE pairs channel i with i + hs/2 ("rotate half", :func:`minigpt.positional.apply_rotary`)
  with inverse frequencies ``base ** (-2i / hs)``, exactly as GPT-NeoX and Llama do, so q/k rows need no
  permutation; only the fused ``c_attn`` is split (Llama) or regrouped per head (GPT-NeoX keeps
  ``[q_h, k_h, v_h]`` together for each head h).
- Where minigpt has no bias (``bias=False``) but the Hugging Face class always has one (GPT-2 and the
  GPT-NeoX MLP and LayerNorms), that bias is written as zeros: the same function.
- Tied embeddings stay tied where the class supports it; GPT-NeoX gets two equal copies.

Generation settings: no end-of-text token is declared to the model, because ``minigpt generate``
never stops early; greedy text then matches ``minigpt generate --greedy`` as long as prompt + new
tokens fit in ``block_size`` (past it minigpt slides its window, Hugging Face does not).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from ..blocks import TransformerBlock
from ..checkpoint import CheckpointError, load_checkpoint, resolve_checkpoint
from ..model import GPT, GPTConfig
from ..tokenizer import ENDOFTEXT, BPETokenizer, CharTokenizer
from .convert import _ACT_TO_HF  # minigpt activation -> transformers' name, shared with the GPT-2 conversion

__all__ = ["ARCHITECTURES", "ExportError", "char_tokenizer_to_hf", "export_hf", "hf_architecture",
           "to_hf_model", "to_hf_tokenizer"]

ARCHITECTURES = {  # Hugging Face class -> the minigpt configurations it represents exactly
    "GPT2LMHeadModel": "position='learned', norm='layernorm', activation in gelu/gelu_tanh/relu",
    "GPTNeoXForCausalLM": "position='rope', norm='layernorm', activation in gelu/gelu_tanh/relu",
    "LlamaForCausalLM": "position='rope', norm='rmsnorm', activation='swiglu'",
}


class ExportError(ValueError):
    """This model or tokenizer has no exact Hugging Face form; the message names the field."""


def _supported() -> str:
    return "; ".join(f"{cls} ({what})" for cls, what in ARCHITECTURES.items()) + "; all pre-norm"


def hf_architecture(config: GPTConfig) -> str:
    """The Hugging Face class name that computes the same function as ``GPT(config)``; else ExportError."""
    c = config
    if not c.prenorm:
        raise ExportError(f"prenorm=False (post-LN blocks) has no Hugging Face equivalent. Supported: {_supported()}")
    grouped = c.n_kv_head not in (None, c.n_head)
    if c.position == "learned" and c.norm == "layernorm" and c.activation in _ACT_TO_HF:
        arch = "GPT2LMHeadModel"
    elif c.position == "rope" and c.norm == "layernorm" and c.activation in _ACT_TO_HF:
        arch = "GPTNeoXForCausalLM"
    elif c.position == "rope" and c.norm == "rmsnorm" and c.activation == "swiglu":
        arch = "LlamaForCausalLM"
    else:
        raise ExportError(
            f"no Hugging Face architecture matches position={c.position!r}, norm={c.norm!r}, "
            f"activation={c.activation!r}. Supported: {_supported()}"
        )
    if grouped and arch != "LlamaForCausalLM":
        raise ExportError(
            f"n_kv_head={c.n_kv_head} (grouped-query attention) exports only as LlamaForCausalLM "
            f"(rope + rmsnorm + swiglu); {arch} has one key/value head per query head"
        )
    return arch


def _rope_kwargs(config_cls: type, theta: float, legacy_name: str, **legacy: Any) -> dict[str, Any]:
    """transformers >= 5 groups RoPE settings in ``rope_parameters``; 4.x takes them as flat fields."""
    if "rope_parameters" in getattr(config_cls, "__annotations__", {}):
        return {"rope_parameters": {"rope_type": "default", "rope_theta": theta, **legacy}}
    return {legacy_name: theta, **{("rotary_pct" if k == "partial_rotary_factor" else k): v for k, v in legacy.items()}}


def _no_special_ids() -> dict[str, Any]:
    # `minigpt generate` never stops at a token and prepends nothing, so neither may the exported model
    # (GPT-2's config does the same for a vocabulary without its <|endoftext|> id, see minigpt.hf.convert)
    return dict(bos_token_id=None, eos_token_id=None, pad_token_id=None)


def _zeros_if_none(t: torch.Tensor | None, n: int) -> torch.Tensor:
    return torch.zeros(n) if t is None else t


def _blocks(model: GPT) -> list[TransformerBlock]:
    return [cast(TransformerBlock, b) for b in model.transformer.h]


def _norm(module: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(weight, bias or None) of a LayerNorm / RMSNorm."""
    return cast(torch.Tensor, module.weight), cast("torch.Tensor | None", getattr(module, "bias", None))


def _to_gpt2(model: GPT) -> Any:
    from .convert import minigpt_to_gpt2

    return minigpt_to_gpt2(model)


@torch.no_grad()
def _to_neox(model: GPT) -> Any:
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    c = model.config
    C, nh, hs = c.n_embd, c.n_head, c.head_size
    d_ff = c.d_ff or 4 * C
    hf_config = GPTNeoXConfig(
        vocab_size=c.vocab_size, hidden_size=C, num_hidden_layers=c.n_layer, num_attention_heads=nh,
        intermediate_size=d_ff, hidden_act=_ACT_TO_HF[c.activation], max_position_embeddings=c.block_size,
        layer_norm_eps=c.layer_norm_eps, use_parallel_residual=False, attention_bias=True,
        tie_word_embeddings=False, attention_dropout=0.0, hidden_dropout=0.0,
        **_rope_kwargs(GPTNeoXConfig, c.rope_base, "rotary_emb_base", partial_rotary_factor=1.0),
        **_no_special_ids(),
    )
    hf = GPTNeoXForCausalLM(hf_config)
    t = model.transformer
    head = "lm_head.weight" if "lm_head.weight" in hf.state_dict() else "embed_out.weight"  # 5.x / 4.x name
    ln_f_w, ln_f_b = _norm(t.ln_f)
    out: dict[str, torch.Tensor] = {
        "gpt_neox.embed_in.weight": t.wte.weight,
        head: model.lm_head.weight,
        "gpt_neox.final_layer_norm.weight": ln_f_w,
        "gpt_neox.final_layer_norm.bias": _zeros_if_none(ln_f_b, C),
    }

    def per_head(x: torch.Tensor) -> torch.Tensor:
        # minigpt rows: [q heads | k heads | v heads]; GPT-NeoX rows: for each head h, [q_h | k_h | v_h]
        return x.view(3, nh, hs, *x.shape[1:]).transpose(0, 1).reshape(x.shape)

    for i, block in enumerate(_blocks(model)):
        p = f"gpt_neox.layers.{i}."
        a, m = block.attn, block.mlp
        (ln1_w, ln1_b), (ln2_w, ln2_b) = _norm(block.ln_1), _norm(block.ln_2)
        out.update({
            p + "input_layernorm.weight": ln1_w,
            p + "input_layernorm.bias": _zeros_if_none(ln1_b, C),
            p + "post_attention_layernorm.weight": ln2_w,
            p + "post_attention_layernorm.bias": _zeros_if_none(ln2_b, C),
            p + "attention.query_key_value.weight": per_head(a.c_attn.weight),
            p + "attention.query_key_value.bias": per_head(_zeros_if_none(a.c_attn.bias, 3 * C)),
            p + "attention.dense.weight": a.c_proj.weight,
            p + "attention.dense.bias": _zeros_if_none(a.c_proj.bias, C),
            p + "mlp.dense_h_to_4h.weight": m.c_fc.weight,
            p + "mlp.dense_h_to_4h.bias": _zeros_if_none(m.c_fc.bias, d_ff),
            p + "mlp.dense_4h_to_h.weight": m.c_proj.weight,
            p + "mlp.dense_4h_to_h.bias": _zeros_if_none(m.c_proj.bias, C),
        })
    _copy_all(hf, out, "GPT-NeoX")
    return hf


@torch.no_grad()
def _to_llama(model: GPT) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    c = model.config
    C, nh, hs = c.n_embd, c.n_head, c.head_size
    nkv = c.n_kv_head or nh
    d_ff = c.d_ff or 4 * C
    hf_config = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=C, intermediate_size=d_ff, num_hidden_layers=c.n_layer,
        num_attention_heads=nh, num_key_value_heads=nkv, head_dim=hs, hidden_act="silu",
        max_position_embeddings=c.block_size, rms_norm_eps=c.layer_norm_eps, tie_word_embeddings=c.tie_weights,
        attention_bias=c.bias, mlp_bias=c.bias, attention_dropout=0.0,
        **_rope_kwargs(LlamaConfig, c.rope_base, "rope_theta"), **_no_special_ids(),
    )
    hf = LlamaForCausalLM(hf_config)
    t = model.transformer
    out: dict[str, torch.Tensor] = {
        "model.embed_tokens.weight": t.wte.weight,
        "model.norm.weight": _norm(t.ln_f)[0],
        "lm_head.weight": model.lm_head.weight,
    }
    for i, block in enumerate(_blocks(model)):
        p = f"model.layers.{i}."
        a, m = block.attn, block.mlp
        q, k, v = a.c_attn.weight.split([nh * hs, nkv * hs, nkv * hs])
        gate, up = m.c_fc.weight.chunk(2)  # FeedForward computes silu(first half) * second half
        out.update({
            p + "input_layernorm.weight": _norm(block.ln_1)[0],
            p + "post_attention_layernorm.weight": _norm(block.ln_2)[0],
            p + "self_attn.q_proj.weight": q, p + "self_attn.k_proj.weight": k, p + "self_attn.v_proj.weight": v,
            p + "self_attn.o_proj.weight": a.c_proj.weight,
            p + "mlp.gate_proj.weight": gate, p + "mlp.up_proj.weight": up, p + "mlp.down_proj.weight": m.c_proj.weight,
        })
        if c.bias:
            qb, kb, vb = a.c_attn.bias.split([nh * hs, nkv * hs, nkv * hs])
            gb, ub = m.c_fc.bias.chunk(2)
            out.update({
                p + "self_attn.q_proj.bias": qb, p + "self_attn.k_proj.bias": kb, p + "self_attn.v_proj.bias": vb,
                p + "self_attn.o_proj.bias": a.c_proj.bias,
                p + "mlp.gate_proj.bias": gb, p + "mlp.up_proj.bias": ub, p + "mlp.down_proj.bias": m.c_proj.bias,
            })
    _copy_all(hf, out, "Llama")
    return hf


def _copy_all(hf: Any, tensors: dict[str, torch.Tensor], what: str) -> None:
    theirs = hf.state_dict()
    missing = sorted(set(theirs) - set(tensors) - {k for k in theirs if "rotary_emb" in k})
    if missing:
        raise ExportError(f"{what} parameters left without a value: {missing[:5]}")
    for name, value in tensors.items():
        if name not in theirs:
            raise ExportError(f"{what} has no parameter {name}")
        if theirs[name].shape != value.shape:
            raise ExportError(f"{name}: Hugging Face shape {tuple(theirs[name].shape)}, minigpt {tuple(value.shape)}")
        theirs[name].copy_(value)


def to_hf_model(model: GPT) -> Any:
    """A Hugging Face causal LM (eval mode, float32) computing the same logits as ``model``.

    ``model`` is not modified (a half-precision model is copied to float32 first).
    """
    if not isinstance(model, GPT):
        raise ExportError(f"only minigpt GPT models export to Hugging Face, not {type(model).__name__}")
    arch = hf_architecture(model.config)
    if any(p.dtype != torch.float32 for p in model.parameters()):
        model = copy.deepcopy(model).float()  # bf16/fp16 exports as float32; the caller keeps its model
    hf = {"GPT2LMHeadModel": _to_gpt2, "GPTNeoXForCausalLM": _to_neox, "LlamaForCausalLM": _to_llama}[arch](model)
    return hf.eval()


def char_tokenizer_to_hf(tokenizer: CharTokenizer) -> Any:
    """A ``PreTrainedTokenizerFast`` with the same ids as ``tokenizer``: one token per character.

    Built as a BPE model with no merges and no pre-tokenizer, normalizer or post-processor, so every
    character (spaces and newlines included) maps to its own id and nothing is added or stripped;
    the ``Fuse`` decoder joins tokens without spaces. A character outside the vocabulary is dropped
    silently by Hugging Face (minigpt's own tokenizer raises UnknownCharacterError instead): there is
    no spare id for an unknown token in the model's vocabulary.
    """
    from tokenizers import Tokenizer, decoders, models
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(vocab=dict(tokenizer.stoi), merges=[]))
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, clean_up_tokenization_spaces=False,
                                   model_max_length=int(1e30))


def to_hf_tokenizer(tokenizer: Any) -> Any:
    """The Hugging Face fast tokenizer of a minigpt CharTokenizer or BPETokenizer."""
    if isinstance(tokenizer, CharTokenizer):
        return char_tokenizer_to_hf(tokenizer)
    if isinstance(tokenizer, BPETokenizer):
        if tokenizer.token_to_id(ENDOFTEXT) is None:
            from tokenizers import Tokenizer
            from transformers import PreTrainedTokenizerFast

            return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(tokenizer.tokenizer.to_str()),
                                           clean_up_tokenization_spaces=False)
        hf = tokenizer.to_hf()
        hf.clean_up_tokenization_spaces = False
        return hf
    raise ExportError(f"{type(tokenizer).__name__} has no Hugging Face form (CharTokenizer and BPETokenizer do)")


def export_hf(checkpoint: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Write checkpoint ``checkpoint`` (an output folder, best/, ckpt/ or model.safetensors) as a
    Hugging Face model folder ``out``; returns ``out``."""
    folder = resolve_checkpoint(checkpoint)
    model, info = load_checkpoint(folder, device="cpu")
    if info.tokenizer is None:
        raise ExportError(f"{folder} has no tokenizer saved, so the export would not be usable as text")
    hf_model = to_hf_model(model)  # type: ignore[arg-type]  # to_hf_model checks the class itself
    hf_tok = to_hf_tokenizer(info.tokenizer)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not (out / "config.json").exists():
        raise ExportError(f"{out} exists and is not an exported model folder; choose an empty or new folder")
    hf_model.generation_config.do_sample = False
    hf_tok.model_max_length = model.config.block_size  # type: ignore[union-attr]  # a GPT, checked above
    hf_model.save_pretrained(out)
    hf_tok.save_pretrained(out)
    (out / "minigpt_export.json").write_text(json.dumps(
        {"source": str(folder.resolve()), "step": info.step, "architecture": type(hf_model).__name__}, indent=1))
    return out


# ---------------------------------------------------------------------------- command line

_EPILOG = """\
examples:
  minigpt export out/demo --to hf out/demo-hf          # best/ weights, else ckpt/
  minigpt export out/demo/ckpt --to hf out/demo-hf     # a checkpoint folder

then, in Python:
  from transformers import pipeline
  pipeline("text-generation", model="out/demo-hf")("ROMEO:", max_new_tokens=50, do_sample=False)

supported: learned positions + LayerNorm -> GPT-2; RoPE + LayerNorm -> GPT-NeoX;
RoPE + RMSNorm + SwiGLU -> Llama (see `minigpt.hf.export` for the exact rules).
"""


def _run_cli(args: argparse.Namespace) -> int:
    try:
        import transformers  # noqa: F401
    except ImportError:
        print("minigpt export: error: needs transformers (the [hf] extra): pip install transformers", file=sys.stderr)
        return 2
    try:
        out = export_hf(args.checkpoint, args.out)
    except (ExportError, CheckpointError) as e:
        print(f"minigpt export: error: {e}", file=sys.stderr)
        return 2
    arch = json.loads((out / "minigpt_export.json").read_text())["architecture"]
    print(f"wrote {out} ({arch}); load it with AutoModelForCausalLM.from_pretrained({str(out)!r})")
    return 0


def add_cli(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``export`` on the main CLI's subparsers."""
    p = subparsers.add_parser(
        "export", help="write a checkpoint as a Hugging Face model folder",
        description="Convert a minigpt checkpoint into a folder that transformers' AutoModelForCausalLM, "
        "AutoTokenizer and pipeline('text-generation') load.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("checkpoint", metavar="CHECKPOINT", help="output folder of `minigpt train` (best/, else "
                   "ckpt/), a checkpoint folder or its model.safetensors")
    p.add_argument("--to", choices=["hf"], required=True, help="target format (hf = Hugging Face transformers)")
    p.add_argument("out", metavar="OUT", help="folder to write")
    p.set_defaults(func=_run_cli)
    return p
