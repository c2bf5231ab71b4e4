"""Mixture-of-experts feed-forward (minigpt.moe): routing, mixing, and the Switch balancing loss."""

import pytest
import torch

from minigpt import GPT, GPTConfig
from minigpt.moe import MoEFeedForward, WithAuxLoss, load_balancing_loss, moe_aux_loss, use_moe


def test_load_balancing_loss_hand_case():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    index = torch.tensor([[0], [0], [1], [0]])
    # f = (3/4, 1/4), P = (0.65, 0.35): 2 * (0.75 * 0.65 + 0.25 * 0.35) = 1.15
    torch.testing.assert_close(load_balancing_loss(probs, index, 2), torch.tensor(1.15))
    uniform = torch.full((4, 4), 0.25)
    torch.testing.assert_close(load_balancing_loss(uniform, torch.tensor([[0], [1], [2], [3]]), 4),
                               torch.tensor(1.0))  # perfectly balanced routing gives 1


@pytest.mark.parametrize("top_k", [1, 2])
def test_each_token_uses_its_top_k_experts(top_k):
    torch.manual_seed(0)
    moe = MoEFeedForward(d_model=8, d_ff=16, n_experts=4, top_k=top_k)
    x = torch.randn(2, 5, 8)
    out = moe(x)
    flat = x.reshape(-1, 8)
    probs = torch.softmax(flat @ moe.router.weight.T, dim=-1)  # independent router computation
    expected = torch.zeros_like(flat)
    for n in range(flat.size(0)):
        p, ids = probs[n].sort(descending=True)
        w = p[:top_k] / (p[:top_k].sum() if top_k > 1 else 1.0)
        for j in range(top_k):
            expected[n] += w[j] * moe.experts[int(ids[j])](flat[n : n + 1])[0]
    torch.testing.assert_close(out.reshape(-1, 8), expected, rtol=1e-5, atol=1e-5)
    assert int(moe.counts.sum()) == flat.size(0) * top_k
    torch.testing.assert_close(moe.aux_loss, load_balancing_loss(probs, probs.topk(top_k).indices, 4))


def test_router_gets_gradient_from_both_losses():
    torch.manual_seed(0)
    moe = MoEFeedForward(8, 16, n_experts=3, top_k=1)
    out = moe(torch.randn(1, 6, 8))
    # each path separately: through the gate (top-1: the router's only link to the output) and the aux loss
    from_output = torch.autograd.grad(out.sum(), moe.router.weight, retain_graph=True)[0]
    from_aux = torch.autograd.grad(moe.aux_loss, moe.router.weight)[0]
    assert from_output.abs().sum() > 0 and from_aux.abs().sum() > 0


def test_use_moe_in_gpt_trains_with_aux_loss():
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=11, block_size=8, n_layer=2, n_head=2, n_embd=16)
    model = use_moe(GPT(cfg), n_experts=4, top_k=1)
    assert sum(isinstance(m, MoEFeedForward) for m in model.modules()) == 2
    wrapped = WithAuxLoss(model, coef=0.5).train()
    idx = torch.randint(0, 11, (4, 8))
    targets = torch.randint(0, 11, (4, 8))
    _, plain = model(idx, targets)
    aux = moe_aux_loss(model)
    _, total = wrapped(idx, targets)
    torch.testing.assert_close(total, plain + 0.5 * aux)
    # the balancing term reaches the routers' gradients (not only the reported value)
    routers = [m.router.weight for m in model.modules() if isinstance(m, MoEFeedForward)]
    g_total = torch.autograd.grad(total, routers, retain_graph=True)
    g_plain = torch.autograd.grad(plain, routers, retain_graph=True)
    g_aux = torch.autograd.grad(aux, routers)
    for t, p, a in zip(g_total, g_plain, g_aux):
        torch.testing.assert_close(t, p + 0.5 * a)
        assert a.abs().sum() > 0
    # evaluation reports the plain cross-entropy, comparable with a dense model
    torch.testing.assert_close(wrapped.eval()(idx, targets)[1], model(idx, targets)[1])
    # and it trains: memorising one batch takes the language-model loss far below its start
    wrapped.train()
    opt = torch.optim.AdamW(wrapped.parameters(), lr=1e-2)
    start = plain.item()
    for step in range(60):
        _, loss = wrapped(idx, targets)
        opt.zero_grad()
        loss.backward()
        if step == 0:  # every expert that got tokens learns from them
            for moe in (m for m in model.modules() if isinstance(m, MoEFeedForward)):
                for e in moe.counts.nonzero().flatten().tolist():
                    assert moe.experts[e].c_fc.weight.grad.abs().sum() > 0, e
        opt.step()
    end = model(idx, targets)[1].item()
    assert end < 0.5 * start, (start, end)
    with pytest.raises(ValueError, match="use_moe"):
        moe_aux_loss(GPT(cfg))
