"""GPT-2 and Llama weights in and out of :class:`minigpt.GPT`, through Hugging Face ``transformers``.

GPT-2 stores its linear layers as ``Conv1D`` with weights laid out (in, out) -- the transpose of
``nn.Linear`` -- which is the only real work a conversion does; the parameter names already match.

Llama (:func:`llama_to_minigpt`; the other direction is :func:`minigpt.hf.export.to_hf_model`) needs
no transpose and no permutation: Hugging Face's Llama checkpoints already use the "rotate half" RoPE
pairing (channel i with i + hs/2) that :func:`minigpt.positional.apply_rotary` uses. The work is
fusing ``q_proj, k_proj, v_proj`` into ``c_attn`` and ``gate_proj, up_proj`` into ``c_fc``, and
reading ``rms_norm_eps``, ``rope_theta`` and ``tie_word_embeddings`` into the config.
``transformers`` is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

from typing import Any

import torch

from ..model import GPT, GPTConfig

__all__ = ["CONV1D_WEIGHTS", "config_from_hf", "hf_config_from", "gpt2_to_minigpt", "minigpt_to_gpt2",
           "load_gpt2_into_minigpt", "llama_config_from_hf", "llama_to_minigpt"]

# parameter-name suffixes that Hugging Face's GPT-2 keeps as Conv1D, i.e. transposed
CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
_ACT_FROM_HF = {"gelu_new": "gelu_tanh", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu", "relu": "relu"}
_ACT_TO_HF = {"gelu_tanh": "gelu_new", "gelu": "gelu", "relu": "relu"}
# GPTConfig field -> GPT2Config field, for the fields that carry over as they are (both directions)
_SAME_FIELDS = {
    "vocab_size": "vocab_size", "block_size": "n_positions", "n_layer": "n_layer", "n_head": "n_head",
    "n_embd": "n_embd", "d_ff": "n_inner", "layer_norm_eps": "layer_norm_epsilon",
}


def config_from_hf(hf_config: Any) -> GPTConfig:
    """A :class:`GPTConfig` with the same architecture as a Hugging Face ``GPT2Config`` or ``LlamaConfig``."""
    if getattr(hf_config, "model_type", "gpt2") == "llama":
        return llama_config_from_hf(hf_config)
    act = hf_config.activation_function
    if act not in _ACT_FROM_HF:
        raise ValueError(f"GPT-2 activation {act!r} has no minigpt equivalent ({sorted(_ACT_FROM_HF)})")
    return GPTConfig(
        **{ours: getattr(hf_config, theirs) for ours, theirs in _SAME_FIELDS.items()},
        dropout=0.0,
        bias=True,
        activation=_ACT_FROM_HF[act],
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
        **{theirs: getattr(config, ours) for ours, theirs in _SAME_FIELDS.items()},
        activation_function=_ACT_TO_HF[config.activation],
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

    Needs the Hugging Face hub or a local cache; see :func:`minigpt.hf.loading.load_causal_lm` for the offline fallback.
    """
    from transformers import GPT2LMHeadModel

    return gpt2_to_minigpt(GPT2LMHeadModel.from_pretrained(name, **kwargs))


def _rope_theta(hf_config: Any) -> float:
    """RoPE base: transformers >= 5 keeps it in ``rope_parameters``; 4.x in ``rope_theta`` (+ ``rope_scaling``)."""
    params = getattr(hf_config, "rope_parameters", None) or {}
    scaling = params.get("rope_type") or (getattr(hf_config, "rope_scaling", None) or {}).get("rope_type", "default")
    if scaling != "default":
        raise ValueError(f"RoPE scaling {scaling!r} (long-context variants) has no minigpt equivalent; only "
                         "the default rotary angles are supported")
    return float(params.get("rope_theta", getattr(hf_config, "rope_theta", 10000.0)))


def llama_config_from_hf(hf_config: Any) -> GPTConfig:
    """The :class:`GPTConfig` computing the same function as a Hugging Face ``LlamaConfig``.

    Refuses what minigpt cannot express, naming the field: a ``head_dim`` other than
    hidden_size / num_attention_heads, an activation other than SiLU, biases in attention but not
    in the MLP (or the reverse), scaled RoPE.
    """
    C, nh = hf_config.hidden_size, hf_config.num_attention_heads
    head_dim = getattr(hf_config, "head_dim", None) or C // nh
    if head_dim * nh != C:
        raise ValueError(f"head_dim={head_dim} with {nh} heads is not hidden_size={C}; minigpt's heads split the "
                         "width evenly (head_size = n_embd // n_head)")
    if hf_config.hidden_act != "silu":
        raise ValueError(f"Llama hidden_act={hf_config.hidden_act!r}; minigpt's SwiGLU uses SiLU")
    attention_bias = bool(getattr(hf_config, "attention_bias", False))
    mlp_bias = bool(getattr(hf_config, "mlp_bias", False))
    if attention_bias != mlp_bias:
        raise ValueError(f"attention_bias={attention_bias} but mlp_bias={mlp_bias}; minigpt has one bias switch")
    return GPTConfig(
        vocab_size=hf_config.vocab_size,
        block_size=hf_config.max_position_embeddings,
        n_layer=hf_config.num_hidden_layers,
        n_head=nh,
        n_kv_head=hf_config.num_key_value_heads,
        n_embd=C,
        d_ff=hf_config.intermediate_size,
        dropout=0.0,
        bias=attention_bias,
        norm="rmsnorm",
        activation="swiglu",
        position="rope",
        tie_weights=bool(getattr(hf_config, "tie_word_embeddings", False)),
        layer_norm_eps=float(hf_config.rms_norm_eps),
        rope_base=_rope_theta(hf_config),
    )


@torch.no_grad()
def llama_to_minigpt(hf_model: Any) -> GPT:
    """A new :class:`GPT` holding the weights of a Hugging Face ``LlamaForCausalLM`` (same logits).

    ``c_attn`` rows are ``[q | k | v]`` (q: n_head * hs rows, k and v: n_kv_head * hs each) and ``c_fc``
    rows ``[gate | up]`` (:class:`minigpt.blocks.FeedForward` computes silu(first half) * second half).
    """
    config = llama_config_from_hf(hf_model.config)
    model = GPT(config)
    theirs = {k: v for k, v in hf_model.state_dict().items() if "rotary_emb" not in k}
    mapped: dict[str, torch.Tensor] = {
        "transformer.wte.weight": theirs.pop("model.embed_tokens.weight"),
        "transformer.ln_f.weight": theirs.pop("model.norm.weight"),
    }
    head = theirs.pop("lm_head.weight", None)
    if not config.tie_weights:
        if head is None:
            raise ValueError("tie_word_embeddings=False but the state dict has no lm_head.weight")
        mapped["lm_head.weight"] = head
    for i in range(config.n_layer):
        p, o = f"model.layers.{i}.", f"transformer.h.{i}."
        suffixes = ["weight", "bias"] if config.bias else ["weight"]
        for s in suffixes:
            mapped[o + f"attn.c_attn.{s}"] = torch.cat([theirs.pop(p + f"self_attn.{n}_proj.{s}") for n in "qkv"])
            mapped[o + f"attn.c_proj.{s}"] = theirs.pop(p + f"self_attn.o_proj.{s}")
            mapped[o + f"mlp.c_fc.{s}"] = torch.cat([theirs.pop(p + f"mlp.{n}_proj.{s}") for n in ("gate", "up")])
            mapped[o + f"mlp.c_proj.{s}"] = theirs.pop(p + f"mlp.down_proj.{s}")
        mapped[o + "ln_1.weight"] = theirs.pop(p + "input_layernorm.weight")
        mapped[o + "ln_2.weight"] = theirs.pop(p + "post_attention_layernorm.weight")
    if theirs:
        raise ValueError(f"Llama parameters minigpt has no place for: {sorted(theirs)[:5]}")
    ours = model.state_dict()
    missing = sorted(set(ours) - set(mapped) - ({"lm_head.weight"} if config.tie_weights else set()))
    if missing:
        raise ValueError(f"minigpt parameters left without a value: {missing[:5]}")
    for name, value in mapped.items():
        if ours[name].shape != value.shape:
            raise ValueError(f"{name}: Llama shape {tuple(value.shape)} does not fit {tuple(ours[name].shape)}")
        ours[name].copy_(value)
    return model.eval()
