"""minigpt.posttrain and minigpt.evaluation against hand-computed cases (and TRL's DPO loss when installed)."""

import math

import pytest
import torch
import torch.nn as nn

from minigpt import GPT, CharTokenizer, GPTConfig
from minigpt.evaluation import (
    bits_per_byte,
    exact_match,
    greedy_answers,
    heldout_loss,
    multiple_choice,
    option_logprobs,
)
from minigpt.posttrain import (
    ChatTokenizer,
    dpo_loss,
    group_advantages,
    grpo_loss,
    pack_batch,
    pad_batch,
    resize_token_embeddings,
    response_targets,
    sequence_logprobs,
    token_logprobs,
)


def _sigmoid(z):
    return 1 / (1 + math.exp(-z))


# ---- chat tokenizer and embedding resize
def test_chat_tokenizer_adds_special_ids_after_the_characters():
    tok = ChatTokenizer(CharTokenizer(list("0123456789+")), ["<|user|>", "<|end|>"])
    assert tok.vocab_size == 13 and tok["<|user|>"] == 11 and tok["<|end|>"] == 12
    ids = tok.encode("<|user|>1+2<|end|>")
    assert ids == [11, 1, 10, 2, 12]
    assert tok.decode(ids) == "<|user|>1+2<|end|>"


@pytest.mark.parametrize("tie", [True, False])
def test_resize_keeps_old_rows_and_old_logits(tie):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16, tie_weights=tie)).eval()
    x = torch.randint(0, 11, (2, 5))
    before = model(x)[0]
    old_wte = model.transformer.wte.weight.detach().clone()
    resize_token_embeddings(model, 14)
    assert model.config.vocab_size == 14 and model.transformer.wte.weight.shape == (14, 16)
    torch.testing.assert_close(model.transformer.wte.weight[:11], old_wte)
    torch.testing.assert_close(model.transformer.wte.weight[11:], old_wte.mean(0).expand(3, 16))
    assert (model.lm_head.weight is model.transformer.wte.weight) == tie
    after = model(x)[0]
    torch.testing.assert_close(after[..., :11], before)  # every old token keeps its logit
    model(torch.tensor([[13, 12]]))  # the new ids are usable


# ---- SFT targets, padding, packing
def test_response_targets_mask_exactly_the_prompt():
    x, y = response_targets([5, 6, 7], [8, 9])
    assert x.tolist() == [5, 6, 7, 8] and y.tolist() == [-1, -1, 8, 9]


def test_pad_and_pack():
    ex = [response_targets([1, 2], [3, 4, 5]), response_targets([1], [6, 7])]
    X, Y = pad_batch(ex, pad_id=0)
    assert X.tolist() == [[1, 2, 3, 4], [1, 6, 0, 0]] and Y.tolist() == [[-1, 3, 4, 5], [6, 7, -1, -1]]
    X, Y = pack_batch(ex, block_size=3, pad_id=0)
    assert X.tolist() == [[1, 2, 3], [4, 1, 6]] and Y.tolist() == [[-1, 3, 4], [5, 6, 7]]


# ---- log-probs
def test_token_and_sequence_logprobs_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0)], [math.log(2.0), 0.0]]])  # p = (1/4, 3/4), (2/3, 1/3)
    y = torch.tensor([[1, -1]])
    torch.testing.assert_close(token_logprobs(logits, y), torch.tensor([[math.log(0.75), 0.0]]))
    y = torch.tensor([[1, 0]])
    assert token_logprobs(logits, y).sum().item() == pytest.approx(math.log(0.75) + math.log(2 / 3))

    class Fixed(nn.Module):
        def forward(self, x):
            return logits.expand(x.size(0), -1, -1), None

    assert sequence_logprobs(Fixed(), torch.zeros(1, 2, dtype=torch.long), y).item() == pytest.approx(
        math.log(0.75 * 2 / 3))


# ---- DPO
def test_dpo_loss_by_hand():
    pc, pr, rc, rr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0]), torch.tensor([-2.0, -2.0]), \
        torch.tensor([-2.0, -2.5])
    loss, rew_c, rew_r = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # pair 1: (pc - rc) - (pr - rr) = 1 - (-1) = 2; pair 2: 0 - 1.5 = -1.5
    expected = -(math.log(_sigmoid(0.5 * 2)) + math.log(_sigmoid(0.5 * -1.5))) / 2
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    torch.testing.assert_close(rew_c, torch.tensor([0.5, 0.0]))
    torch.testing.assert_close(rew_r, torch.tensor([-0.5, 0.75]))
    # policy == reference: loss ln 2 whatever the log-probs
    assert dpo_loss(pc, pr, pc, pr)[0].item() == pytest.approx(math.log(2))


def test_dpo_loss_matches_trl():
    """TRL's own DPOTrainer loss code on the same batch (minigpt.exercises.nb14.trl_dpo_loss feeds it)."""
    pytest.importorskip("trl")
    from minigpt.exercises.nb14 import trl_dpo_loss

    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-5 * torch.rand(6, generator=g) for _ in range(4))
    for beta in (0.1, 1.0):
        loss, margin = trl_dpo_loss(pc, pr, rc, rr, beta)
        ours, rew_c, rew_r = dpo_loss(pc, pr, rc, rr, beta)
        torch.testing.assert_close(ours, loss)
        assert (rew_c - rew_r).mean().item() == pytest.approx(margin, abs=1e-6)


# ---- GRPO
def test_group_advantages_by_hand():
    adv = group_advantages(torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0]), group_size=4)
    std = math.sqrt(((0.75**2) + 3 * 0.25**2) / 3)  # unbiased std of (1, 0, 0, 0)
    torch.testing.assert_close(adv[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4))
    torch.testing.assert_close(adv[4:], torch.zeros(4))  # all equal: nothing to learn


def test_grpo_loss_by_hand():
    logp = torch.tensor([[math.log(0.5), math.log(0.9)], [math.log(0.2), 0.0]])
    old = torch.tensor([[math.log(0.25), math.log(0.9)], [math.log(0.4), 0.0]])
    ref = torch.tensor([[math.log(0.5), math.log(0.45)], [math.log(0.2), 0.0]])
    adv = torch.tensor([1.0, -1.0])
    mask = torch.tensor([[1, 1], [1, 0]])
    # answer 1: ratios 2 (clipped to 1.2 since A > 0) and 1; KL 0 and 0.5 - ln 0.5 - 1
    kl = 0.5 - math.log(0.5) - 1
    seq1 = (-(1.2 - 0.0) + -(1.0 - 0.1 * kl)) / 2
    # answer 2: ratio 0.5 with A < 0: min(-0.5, -0.8) = -0.8; the masked token does not count
    seq2 = 0.8  # minus the surrogate -0.8
    loss = grpo_loss(logp, old, ref, adv, mask, clip_eps=0.2, beta=0.1)
    assert loss.item() == pytest.approx((seq1 + seq2) / 2, rel=1e-6)


def test_grpo_loss_gradient_is_the_policy_gradient_at_the_start():
    """With logp = logp_old = logp_ref the KL term and the clip vanish: d loss / d logp = -A / tokens / B."""
    logp = torch.zeros(2, 3, requires_grad=True)
    loss = grpo_loss(logp, logp.detach(), logp.detach(), torch.tensor([2.0, -1.0]), torch.ones(2, 3))
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([[-2.0] * 3, [1.0] * 3]) / 6)


# ---- evaluation harness
class Bigram(nn.Module):
    """logits depend on the current token only: log-likelihoods are easy to write by hand."""

    def __init__(self, table):
        super().__init__()
        self.table = nn.Parameter(table)
        self.config = GPTConfig(vocab_size=table.size(0), block_size=16, n_layer=1, n_head=1, n_embd=4)

    def forward(self, idx, targets=None):
        return self.table[idx], None


def _bigram():
    # from 0: p(1) = 0.7, p(2) = 0.2, p(0) = 0.1; from 1: p(2) = 0.6; from 2: p(0) = 0.5
    p = torch.tensor([[0.1, 0.7, 0.2], [0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])
    return Bigram(p.log()), p


def test_option_logprobs_and_multiple_choice_by_hand():
    model, p = _bigram()
    scores = option_logprobs(model, [0], [[1, 2], [2], [2, 0, 1]])
    expected = [math.log(p[0, 1] * p[1, 2]), math.log(p[0, 2]), math.log(p[0, 2] * p[2, 0] * p[0, 1])]
    assert scores == pytest.approx(expected, rel=1e-5)
    # [1, 2] wins by the sum (0.42 > 0.2 > 0.07), [2] would win by the mean per token
    assert multiple_choice(model, [([0], [[2], [1, 2]], 1), ([0], [[1, 2], [2]], 0)], progress=False) == 1.0


def test_heldout_loss_and_bits_per_byte_by_hand():
    model, p = _bigram()
    data = torch.tensor([0, 1, 2, 0, 1])
    total, n = heldout_loss(model, data, block_size=2, progress=False)
    assert n == 4
    assert total == pytest.approx(-math.log(p[0, 1] * p[1, 2] * p[2, 0] * p[0, 1]), rel=1e-5)
    assert bits_per_byte(total, 4) == pytest.approx(total / math.log(2) / 4)
    rows = torch.tensor([[0, 1, 2], [2, 0, -1]])  # one document per row, -1 = padding
    total, n = heldout_loss(model, rows, block_size=2, progress=False)
    assert n == 3 and total == pytest.approx(-math.log(p[0, 1] * p[1, 2] * p[2, 0]), rel=1e-5)


def test_greedy_answers_batches_by_length_and_stops():
    model, _ = _bigram()
    out = greedy_answers(model, [[0], [1, 1], [2]], max_new_tokens=3, stop_id=0, batch_size=2, progress=False)
    assert out == [[1, 2], [2], []]  # 0 -> 1 -> 2 -> 0 (stop); 1 -> 2 -> 0; 2 -> 0


def test_exact_match_strips_whitespace():
    assert exact_match([" 12", "7\n", "8"], ["12", "7", "9"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError):
        exact_match([], [])
