"""Muon and MuonAdamW against independent references: the SVD, torch.optim.Muon, torch.optim.AdamW."""

import math

import pytest
import torch
from _train_helpers import lm_data, quiet, tiny_gpt

from minigpt.optim import Muon, MuonAdamW, newton_schulz, split_muon_params
from minigpt.train import TrainConfig, Trainer, configure_optimizer


@pytest.mark.parametrize("shape", [(6, 10), (10, 6), (3, 8, 8), (2, 16, 5)])
def test_newton_schulz_keeps_the_singular_vectors_and_flattens_the_singular_values(shape):
    torch.manual_seed(0)
    G = torch.randn(shape, dtype=torch.float64) * 3.0
    X = newton_schulz(G)
    assert X.shape == G.shape
    U, S, Vh = torch.linalg.svd(G, full_matrices=False)
    # in G's singular basis the result is diagonal: same U and V, only the singular values change
    D = U.mT @ X @ Vh.mT
    diag = torch.diagonal(D, dim1=-2, dim2=-1)
    off = D - torch.diag_embed(diag)
    assert off.abs().max() < 1e-6
    # the quintic coefficients push every singular value into roughly [0.7, 1.2] (not exactly 1)
    assert diag.min() > 0.6 and diag.max() < 1.25, diag
    # so X is close to U V^T, the orthogonal polar factor
    polar = U @ Vh
    rel = (X - polar).norm(dim=(-2, -1)) / polar.norm(dim=(-2, -1))
    assert (rel < 0.3).all()


def test_newton_schulz_of_a_zero_matrix_is_zero_not_nan():
    assert torch.equal(newton_schulz(torch.zeros(4, 6)), torch.zeros(4, 6))


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"),
                    reason="torch.optim.Muon arrived in torch 2.9; minigpt's own Muon needs only torch>=2.6")
def test_muon_matches_torch_optim_muon():
    """torch.optim.Muon (momentum buf = mu*buf + g, update scaled to AdamW's RMS) is an independent
    implementation; ours keeps buf = lerp(buf, g, 1 - mu), a multiple of torch's, and the
    orthogonalisation does not see the scale. Both iterate in bf16 here, as torch's does."""
    torch.manual_seed(0)
    shapes = [(12, 20), (20, 12), (12, 12), (12, 20)]
    ours = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt_a = Muon(ours, lr=0.02, momentum=0.9, weight_decay=0.1, ns_dtype=torch.bfloat16)
    opt_b = torch.optim.Muon(theirs, lr=0.02, momentum=0.9, weight_decay=0.1, adjust_lr_fn="match_rms_adamw")
    for step in range(6):
        grads = [torch.randn(s) for s in shapes]
        for p, q, g in zip(ours, theirs, grads):
            p.grad, q.grad = g.clone(), g.clone()
        opt_a.step()
        opt_b.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, atol=2e-3, rtol=0, msg=f"step {step}")


def test_muon_update_size_is_lr_times_the_adamw_rms_scale():
    """One step from zero momentum: p -> p (1 - lr wd) - lr * 0.2 sqrt(max(m, n)) * NS(grad), by hand."""
    torch.manual_seed(1)
    p = torch.nn.Parameter(torch.randn(8, 32))
    start = p.detach().clone()
    g = torch.randn(8, 32)
    p.grad = g.clone()
    Muon([p], lr=0.01, weight_decay=0.5, ns_dtype=torch.float32).step()
    expected = start * (1 - 0.01 * 0.5) - 0.01 * 0.2 * math.sqrt(32) * newton_schulz(g)
    torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5)


def test_muon_refuses_non_matrices_and_bad_settings():
    with pytest.raises(ValueError, match="AdamW"):
        Muon([torch.nn.Parameter(torch.zeros(5))])
    with pytest.raises(ValueError, match="momentum"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], momentum=1.0)
    with pytest.raises(ValueError, match="lr"):
        Muon([torch.nn.Parameter(torch.zeros(2, 2))], lr=0.0)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="sgd")


def test_split_gives_muon_the_block_matrices_only():
    model = tiny_gpt()
    muon, other = split_muon_params(model)
    names = {id(p): n for n, p in model.named_parameters()}
    assert sorted(names[id(p)] for p in muon) == sorted(
        n for n, p in model.named_parameters() if p.dim() == 2 and n.startswith("transformer.h.")
    )
    assert model.transformer.wte.weight in other  # the tied embedding / output layer stays with AdamW
    assert len(muon) + len(other) == len(list(model.parameters()))


def test_configure_optimizer_muon_groups_and_plain_adamw_without_matrices():
    from minigpt.baselines import BigramConfig, BigramLM

    cfg = TrainConfig(optimizer="muon", lr=2e-3, weight_decay=0.1)
    opt = configure_optimizer(tiny_gpt(), cfg, torch.device("cpu"))
    assert isinstance(opt, MuonAdamW)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0, 0.1]  # adamw decay, no decay, muon
    # a model with nothing for Muon trains with AdamW alone
    assert isinstance(configure_optimizer(BigramLM(BigramConfig(vocab_size=5)), cfg, torch.device("cpu")),
                      torch.optim.AdamW)


def test_trainer_schedules_both_optimizers_and_muon_learns():
    seen = []

    def cb(ev):
        if ev.kind == "step":
            seen.append([g["lr"] for g in ev.trainer.optimizer.param_groups])

    cfg = quiet(max_iters=60, eval_interval=60, optimizer="muon", lr=1e-2, warmup_iters=5)
    history = Trainer(tiny_gpt(), lm_data(), cfg, callback=cb).fit()
    assert all(len(set(lrs)) == 1 for lrs in seen)  # one schedule drives every group
    assert seen[0][0] == pytest.approx(cfg.lr_at(0)) and seen[-1][0] == pytest.approx(cfg.lr_at(59))
    first, last = history.evals[0]["val_loss"], history.evals[-1]["val_loss"]
    assert last < 0.6 * first, (first, last)


def test_muon_adamw_state_dict_roundtrip_and_foreign_state_refused():
    model = tiny_gpt()
    opt = configure_optimizer(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    x = torch.randint(0, 11, (2, 8))
    model(x, x)[1].backward()
    opt.step()
    state = opt.state_dict()
    other = configure_optimizer(tiny_gpt(), TrainConfig(optimizer="muon"), torch.device("cpu"))
    other.load_state_dict(state)
    for a, b in zip(opt.muon.state.values(), other.muon.state.values()):
        assert torch.equal(a["momentum_buffer"], b["momentum_buffer"])
    adamw_state = torch.optim.AdamW(tiny_gpt().parameters()).state_dict()
    with pytest.raises(ValueError, match="MuonAdamW"):
        other.load_state_dict(adamw_state)


def test_resuming_with_another_optimizer_is_refused_with_the_fix(tmp_path):
    Trainer(tiny_gpt(), lm_data(), quiet(max_iters=4, out_dir=str(tmp_path), optimizer="muon")).fit()
    trainer = Trainer(tiny_gpt(), lm_data(), quiet(max_iters=8, out_dir=str(tmp_path)), resume=True)
    with pytest.raises(ValueError, match="optimizer='muon'"):
        trainer.fit()
