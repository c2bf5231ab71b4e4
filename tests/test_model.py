"""GPT, the encoder-decoder Transformer and the baselines: invariants and Hugging Face parity."""

import math

import pytest
import torch

from minigpt.baselines import MLPLM, BigramLM, MLPConfig
from minigpt.model import GPT, PRESETS, GPTConfig
from minigpt.seq2seq import Transformer, TransformerConfig


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=31, block_size=16, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    return GPTConfig(**base)


def test_gpt2_preset_has_hugging_faces_parameter_count():
    with torch.device("meta"):  # no memory needed to count
        model = GPT(GPTConfig.from_preset("gpt2"))
    assert model.num_params() == 124_439_808


@pytest.mark.parametrize("variant", [
    {}, {"position": "rope"}, {"position": "sinusoidal"}, {"n_kv_head": 2}, {"prenorm": False},
    {"norm": "rmsnorm", "activation": "swiglu", "bias": False},
    {"position": "rope", "qk_norm": True, "activation": "relu2", "logit_softcap": 10.0, "tie_weights": False},
])
def test_future_tokens_never_change_earlier_logits(variant):
    torch.manual_seed(0)
    model = GPT(tiny(**variant)).eval()
    x = torch.randint(0, 31, (2, 12))
    y = x.clone()
    y[:, 7:] = torch.randint(0, 31, (2, 5))  # rewrite the future from position 7 on
    lx, _ = model(x)
    ly, _ = model(y)
    torch.testing.assert_close(lx[:, :7], ly[:, :7])
    assert not torch.allclose(lx[:, 7:], ly[:, 7:])


def test_loss_at_init_is_about_ln_vocab():
    torch.manual_seed(0)
    model = GPT(tiny(vocab_size=65, n_embd=64))
    x, y = torch.randint(0, 65, (8, 16)), torch.randint(0, 65, (8, 16))
    _, loss = model(x, y)  # random targets: with tied weights, "predict x itself" would be easy
    assert abs(loss.item() - math.log(65)) < 0.1


@pytest.mark.parametrize("make", [
    lambda: GPT(tiny()),
    lambda: MLPLM(MLPConfig(vocab_size=31, context=4)),
])
def test_model_overfits_a_single_batch(make):
    torch.manual_seed(0)
    model = make()
    x = torch.randint(0, 31, (4, 16))
    y = torch.randint(0, 31, (4, 16))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = None
    for _ in range(200):
        _, loss = model(x, y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.25 * first, (first, loss.item())


def test_kv_cache_chunks_equal_one_full_forward():
    torch.manual_seed(0)
    model = GPT(tiny(n_kv_head=2, position="rope")).eval()
    x = torch.randint(0, 31, (2, 11))
    full, _ = model(x)
    cache = model.new_kv_cache(2)
    parts = [model(chunk, kv_cache=cache)[0] for chunk in (x[:, :4], x[:, 4:5], x[:, 5:11])]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-4)


def test_weight_tying_and_forward_with_attention():
    model = GPT(tiny())
    assert model.lm_head.weight is model.transformer.wte.weight
    untied = GPT(tiny(tie_weights=False))
    assert untied.num_params() == model.num_params() + 31 * 32
    logits, attn = model.forward_with_attention(torch.randint(0, 31, (1, 9)))
    assert logits.shape == (1, 9, 31) and len(attn) == 2 and attn[0].shape == (1, 4, 9, 9)
    torch.testing.assert_close(attn[1].sum(-1), torch.ones(1, 4, 9))


def test_bad_configs_and_inputs_get_clear_errors():
    with pytest.raises(ValueError, match="not divisible by n_head"):
        GPTConfig(n_embd=100, n_head=3)
    with pytest.raises(ValueError, match="choose one of"):
        GPTConfig(position="alibi")
    with pytest.raises(ValueError, match="unknown preset"):
        GPTConfig.from_preset("gpt5")
    model = GPT(tiny())
    with pytest.raises(ValueError, match="exceeds block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 31\)"):
        model(torch.tensor([[3, 40]]))
    assert set(PRESETS) >= {"shakespeare-cpu", "shakespeare-char", "nanogpt-cpu", "gpt2"}


def test_hugging_face_gpt2_round_trip_gives_identical_logits():
    transformers = pytest.importorskip("transformers")
    from minigpt.hf import gpt2_to_minigpt, minigpt_to_gpt2

    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=97, n_positions=32, n_embd=48, n_layer=3, n_head=4,
                                  bos_token_id=0, eos_token_id=0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    x = torch.randint(0, 97, (2, 20))
    ours = gpt2_to_minigpt(hf).eval()
    assert ours.num_params() == hf.num_parameters()
    with torch.no_grad():
        ref = hf(x).logits
        torch.testing.assert_close(ours(x)[0], ref, atol=1e-5, rtol=1e-5)
        # and back: minigpt (trained a step so the weights differ from HF's init) -> HF
        ours.transformer.h[0].mlp.c_fc.weight.add_(0.1)
        back = minigpt_to_gpt2(ours)
        torch.testing.assert_close(back(x).logits, ours(x)[0], atol=1e-5, rtol=1e-5)
        # greedy continuations agree token for token
        hf_ids = back.generate(x[:1, :5], max_new_tokens=10, do_sample=False, pad_token_id=0)
        assert torch.equal(ours.generate(x[:1, :5], 10, greedy=True), hf_ids)


def test_bigram_starts_uniform_and_mlp_window_is_fixed():
    bigram = BigramLM(20)
    x = torch.randint(0, 20, (3, 7))
    assert bigram(x, x)[1].item() == pytest.approx(math.log(20), abs=1e-6)
    mlp = MLPLM(MLPConfig(vocab_size=20, context=3)).eval()
    a = torch.randint(0, 20, (1, 10))
    b = a.clone()
    b[0, 2] = (a[0, 2] + 1) % 20  # position 2 lies outside the window of positions >= 5
    torch.testing.assert_close(mlp(a)[0][:, 5:], mlp(b)[0][:, 5:])
    assert not torch.allclose(mlp(a)[0][:, 2:5], mlp(b)[0][:, 2:5])


def test_seq2seq_transformer_is_causal_and_ignores_source_padding():
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(src_vocab_size=12, tgt_vocab_size=12, d_model=32, n_head=4)).eval()
    src = torch.tensor([[5, 6, 7, 8, 0, 0]])
    tgt = torch.tensor([[1, 9, 10, 11]])
    logits, _ = model(src, tgt)
    assert logits.shape == (1, 4, 12)
    tgt2 = tgt.clone()
    tgt2[0, 3] = 3
    torch.testing.assert_close(model(src, tgt2)[0][:, :3], logits[:, :3])
    # what sits in padded source positions must not matter, nor how much padding there is
    src2 = torch.tensor([[5, 6, 7, 8, 0, 0, 0, 0]])
    torch.testing.assert_close(model(src2, tgt)[0], logits, atol=1e-5, rtol=1e-4)
    _, attn = model.forward_with_attention(src, tgt)
    assert (attn["cross"][0][..., 4:] == 0).all()  # no attention to padding
    assert model.greedy_decode(src, 4, bos_id=1).shape == (1, 4)


def test_non_embedding_count_leaves_out_the_position_table():
    model = GPT(tiny())
    assert model.num_params() - model.num_params(non_embedding=True) == 16 * 32
    assert GPT(tiny(position="rope")).num_params(non_embedding=True) == GPT(tiny(position="rope")).num_params()


# ---------------------------------------------------------------------------- speedrun options (default off)


def test_speedrun_options_default_off_leave_the_model_unchanged():
    cfg = tiny(position="rope")
    assert (cfg.qk_norm, cfg.logit_softcap) == (False, None)
    torch.manual_seed(0)
    old = GPT(cfg)
    torch.manual_seed(0)
    same = GPT(tiny(position="rope", qk_norm=False, logit_softcap=None))
    assert list(old.state_dict()) == list(same.state_dict())  # no new parameters, same names and order
    assert not any("q_norm" in k for k in old.state_dict())
    x = torch.randint(0, 31, (2, 12))
    torch.testing.assert_close(old(x)[0], same(x)[0], rtol=0, atol=0)


def test_qk_norm_matches_a_hand_computation():
    from minigpt.blocks import QKNormAttention

    torch.manual_seed(0)
    attn = QKNormAttention(d_model=8, n_head=2).eval()
    with torch.no_grad():
        attn.q_norm.weight.uniform_(0.5, 2.0)
        attn.k_norm.weight.uniform_(0.5, 2.0)
    x = torch.randn(1, 5, 8)
    y, _ = attn(x, causal=True)
    q, k, v = attn.c_attn(x).split(8, dim=-1)  # (1, 5, 8) each; head h is channels 4h..4h+3
    heads = []
    for h in range(2):
        qh, kh, vh = (t[0, :, 4 * h:4 * h + 4] for t in (q, k, v))  # (5, 4)
        qh = qh / torch.sqrt(qh.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.q_norm.weight
        kh = kh / torch.sqrt(kh.pow(2).mean(-1, keepdim=True) + 1e-5) * attn.k_norm.weight
        scores = qh @ kh.T / 2.0  # sqrt(head size 4)
        scores = scores.masked_fill(torch.triu(torch.ones(5, 5, dtype=torch.bool), 1), float("-inf"))
        heads.append(torch.softmax(scores, -1) @ vh)
    torch.testing.assert_close(y, attn.c_proj(torch.cat(heads, -1))[None], atol=1e-5, rtol=1e-4)


def test_qk_norm_bounds_the_attention_logits_and_keeps_the_kv_cache_exact():
    torch.manual_seed(0)
    model = GPT(tiny(position="rope", qk_norm=True)).eval()
    with torch.no_grad():  # blow up the projections: without QK-norm the logits would grow 1000x
        for block in model.transformer.h:
            block.attn.c_attn.weight.mul_(1000)
    _, weights = model.forward_with_attention(torch.randint(0, 31, (1, 9)))
    assert all(torch.isfinite(w).all() for w in weights)
    x = torch.randint(0, 31, (2, 11))
    cache = model.new_kv_cache(2)
    parts = [model(chunk, kv_cache=cache)[0] for chunk in (x[:, :4], x[:, 4:11])]
    torch.testing.assert_close(torch.cat(parts, dim=1), model(x)[0], atol=1e-4, rtol=1e-4)


def test_relu2_and_logit_softcap_are_what_they_say():
    from minigpt.blocks import FeedForward

    torch.manual_seed(0)
    ff = FeedForward(6, 10, activation="relu2")
    x = torch.randn(3, 6)
    torch.testing.assert_close(ff(x), ff.c_proj(torch.relu(ff.c_fc(x)) ** 2))
    torch.manual_seed(0)
    plain = GPT(tiny())
    capped = GPT(tiny(logit_softcap=2.0))
    capped.load_state_dict(plain.state_dict())  # a cap adds no parameters
    x = torch.randint(0, 31, (2, 8))
    raw, capped_logits = plain(x)[0], capped(x)[0]
    torch.testing.assert_close(capped_logits, 2.0 * torch.tanh(raw / 2.0))
    assert capped_logits.abs().max() < 2.0
    for bad in (dict(logit_softcap=0.0), dict(logit_softcap=float("inf")), dict(qk_norm="yes")):
        with pytest.raises(ValueError, match="logit_softcap|qk_norm"):
            tiny(**bad)
