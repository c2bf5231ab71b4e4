"""Llama in and out of minigpt.GPT, against Hugging Face's LlamaForCausalLM (random weights, no download).

Both directions on several configs: grouped-query attention, an untied head, biases, a non-default
rope_theta and rms_norm_eps. Equal logits (atol 1e-5) and equal greedy tokens.
"""

from __future__ import annotations

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minigpt.hf.convert import config_from_hf, llama_config_from_hf, llama_to_minigpt  # noqa: E402
from minigpt.hf.export import to_hf_model  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402

CONFIGS = {
    # name: LlamaConfig fields (besides the shared ones below)
    "gqa-untied": dict(num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    "mha-tied": dict(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True),
    "mqa-untied-bias-theta": dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False,
                                  attention_bias=True, mlp_bias=True, rope_theta=500.0, rms_norm_eps=1e-6),
}


def _hf_llama(seed: int, **kw):
    from transformers import LlamaConfig, LlamaForCausalLM

    theta = kw.pop("rope_theta", 10000.0)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=88, num_hidden_layers=2,
                      max_position_embeddings=64, rms_norm_eps=kw.pop("rms_norm_eps", 1e-5),
                      rope_parameters={"rope_type": "default", "rope_theta": theta},
                      bos_token_id=None, eos_token_id=None, pad_token_id=None, attn_implementation="eager", **kw)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # random norm gains and biases too (HF initialises them to 1 and 0: mistakes would hide)
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((1.0 if "norm" in name else 0.0) + 0.3 * torch.randn_like(p))
    return model


def _greedy_hf(hf, ids, n):
    # an explicit mask: otherwise a token 0 in the prompt would be taken for padding
    return hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, do_sample=False, pad_token_id=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_llama_to_minigpt_gives_hugging_faces_logits_and_greedy_tokens(name):
    hf = _hf_llama(0, **CONFIGS[name])
    ours = llama_to_minigpt(hf)
    c = ours.config
    assert (c.norm, c.activation, c.position) == ("rmsnorm", "swiglu", "rope")
    assert c.n_kv_head == hf.config.num_key_value_heads and c.tie_weights == hf.config.tie_word_embeddings
    assert c.layer_norm_eps == hf.config.rms_norm_eps and c.bias == hf.config.attention_bias
    assert c.rope_base == hf.config.rope_parameters["rope_theta"]
    assert (ours.lm_head.weight is ours.transformer.wte.weight) == c.tie_weights
    ids = torch.randint(0, 97, (2, 23), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], hf(ids).logits, atol=1e-5, rtol=1e-5)
    prompt = ids[:1, :5]
    assert torch.equal(ours.generate(prompt, 20, greedy=True), _greedy_hf(hf, prompt, 20))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_round_trip_minigpt_to_llama_and_back(name):
    """minigpt -> Hugging Face (export) -> minigpt: the same logits at every step."""
    kw = CONFIGS[name]
    cfg = llama_config_from_hf(_hf_llama(0, **kw).config)
    torch.manual_seed(3)
    ours = GPT(cfg).eval()
    with torch.no_grad():
        for p in ours.parameters():
            if p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    hf = to_hf_model(ours)
    assert type(hf).__name__ == "LlamaForCausalLM"
    back = llama_to_minigpt(hf)
    ids = torch.randint(0, 97, (3, 17), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, ours(ids)[0], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(back(ids)[0], ours(ids)[0], atol=1e-5, rtol=1e-5)
    prompt = ids[:1, :4]
    assert torch.equal(ours.generate(prompt, 20, greedy=True), _greedy_hf(hf, prompt, 20))


def test_llama_cpu_preset_exports_as_llama_and_loads_back():
    cfg = GPTConfig.from_preset("llama-cpu")
    assert (cfg.norm, cfg.activation, cfg.position, cfg.bias, cfg.tie_weights) == ("rmsnorm", "swiglu", "rope", False,
                                                                                    False)
    assert cfg.n_kv_head is not None and cfg.n_kv_head < cfg.n_head
    torch.manual_seed(0)
    ours = GPT(cfg).eval()
    back = llama_to_minigpt(to_hf_model(ours))
    ids = torch.randint(0, 65, (1, 40))
    with torch.no_grad():
        torch.testing.assert_close(back(ids)[0], ours(ids)[0], atol=1e-5, rtol=1e-5)


def test_config_from_hf_dispatches_on_the_model_type():
    from transformers import GPT2Config

    assert config_from_hf(_hf_llama(0, **CONFIGS["gqa-untied"]).config).norm == "rmsnorm"
    assert config_from_hf(GPT2Config(n_layer=1, n_embd=16, n_head=2)).position == "learned"


@pytest.mark.parametrize("change,words", [
    (dict(head_dim=16), "head_dim=16"),
    (dict(hidden_act="gelu"), "hidden_act"),
    (dict(attention_bias=True, mlp_bias=False), "one bias switch"),
])
def test_llama_configs_minigpt_cannot_express_are_refused_by_name(change, words):
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=88, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, **change)
    with pytest.raises(ValueError, match=words):
        llama_config_from_hf(cfg)


def test_scaled_rope_is_refused():
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=88, num_hidden_layers=1,
                      num_attention_heads=4, rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                              "rope_theta": 10000.0})
    with pytest.raises(ValueError, match="RoPE scaling 'linear'"):
        llama_config_from_hf(cfg)
