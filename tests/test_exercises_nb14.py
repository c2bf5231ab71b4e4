"""Checkers of notebook 14: each passes the reference answer, fails plausible wrong answers with a message that
names the mistake, and reports stubs."""

import pytest
import torch
import torch.nn.functional as F
from _exercise_cases import checker_tests

from minigpt.exercises.nb14 import (
    check_dpo_loss,
    check_exact_match,
    check_group_advantages,
    check_grpo_loss,
    check_sequence_logprob,
    check_sft_targets,
    trl_dpo_loss,
)
from minigpt.posttrain import dpo_loss as lib_dpo_loss


# ---- 14.1 exact match
def em_ref(preds, answers):
    return sum(p.strip() == a.strip() for p, a in zip(preds, answers)) / len(answers)


EM_MUTANTS = {
    "count": (lambda p, a: sum(x.strip() == y.strip() for x, y in zip(p, a)), r"divided by the number"),
    "no strip": (lambda p, a: sum(x == y for x, y in zip(p, a)) / len(a), r"whitespace counts"),
    "rstrip only": (lambda p, a: sum(x.rstrip() == y.rstrip() for x, y in zip(p, a)) / len(a), r"LEADING"),
    "contains": (lambda p, a: sum(y.strip() in x for x, y in zip(p, a)) / len(a), r"CONTAINED"),
    "case": (lambda p, a: sum(x.strip().lower() == y.strip().lower() for x, y in zip(p, a)) / len(a), r"case"),
    "all spaces": (lambda p, a: sum("".join(x.split()) == "".join(y.split()) for x, y in zip(p, a)) / len(a),
                   r"INSIDE"),
    "bool": (lambda p, a: all(x.strip() == y.strip() for x, y in zip(p, a)), r"one number"),
}


# ---- 14.2 SFT targets
def sft_variant(k_offset=-1, fill=-1, shift=True, swap=False):
    def f(prompt, response):
        ids = torch.tensor(list(prompt) + list(response))
        x, y = (ids[:-1].clone(), ids[1:].clone()) if shift else (ids.clone(), ids.clone())
        k = len(prompt) + k_offset
        if swap:
            y[k:] = fill
        else:
            y[:k] = fill
        return x, y

    return f


SFT_MUTANTS = {
    "no mask": (lambda p, r: (torch.tensor(p + r)[:-1], torch.tensor(p + r)[1:]), r"nothing is masked"),
    "masks first response token": (sft_variant(k_offset=0), r"one too many.*FIRST RESPONSE"),
    "leaves prompt's last token": (sft_variant(k_offset=-2), r"one target too few.*LAST token"),
    "fills with 0": (sft_variant(fill=0), r"ignores -1"),
    "no shift": (sft_variant(shift=False), r"NEXT token"),
    "masks the response": (sft_variant(swap=True), r"response instead of the prompt"),
}


# ---- 14.3 sequence log-prob
def seq_ref(logits, targets):
    keep = targets != -1
    lp = F.log_softmax(logits, -1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (lp * keep).sum(-1)


def seq_variant(kind):
    def f(logits, targets):
        keep = (targets != -1).float()
        dim = 1 if kind == "dim" else -1
        lp = F.log_softmax(logits, dim) if kind != "raw" else logits
        if kind == "shift":
            lp, targets, keep = lp[:, :-1], targets[:, 1:], keep[:, 1:]
        pick = lp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        if kind == "prob":
            pick = pick.exp()
        if kind == "unmasked":
            return pick.sum(-1)
        if kind == "mean":
            return (pick * keep).sum(-1) / keep.sum(-1)
        return (pick * keep).sum(-1)

    return f


SEQ_MUTANTS = {
    "mean per token": (seq_variant("mean"), r"averaged over the tokens.*SUM"),
    "ignored targets counted": (seq_variant("unmasked"), r"-1 targets were counted"),
    "probabilities": (seq_variant("prob"), r"summed probabilities"),
    "raw logits": (seq_variant("raw"), r"raw logits"),
    "softmax over positions": (seq_variant("dim"), r"dim=1"),
    "shifted": (seq_variant("shift"), r"shifted the targets"),
    "one number": (lambda lg, t: seq_ref(lg, t).sum(), r"one number per sequence"),
}


# ---- 14.4 DPO
def dpo_ref(pc, pr, rc, rr, beta):
    return -F.logsigmoid(beta * ((pc - rc) - (pr - rr))).mean()


DPO_MUTANTS = {
    "sign flipped": (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pr - rr) - (pc - rc))).mean(), r"sign is flipped"),
    "beta missing": (lambda pc, pr, rc, rr, b: -F.logsigmoid((pc - rc) - (pr - rr)).mean(), r"beta is missing"),
    "reference ignored": (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * (pc - pr)).mean(), r"reference is ignored"),
    "no logsigmoid": (lambda pc, pr, rc, rr, b: (-b * ((pc - rc) - (pr - rr))).mean(), r"no log-sigmoid"),
    "summed over pairs": (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc - rc) - (pr - rr))).sum(), r"summed over"),
    "references swapped": (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc - rr) - (pr - rc))).mean(), r"swapped"),
    "log of sigmoid + eps": (lambda pc, pr, rc, rr, b: -torch.log(torch.sigmoid(b * ((pc - rc) - (pr - rr))) + 1e-3)
                             .mean(), r"F.logsigmoid"),
    "per pair": (lambda pc, pr, rc, rr, b: -F.logsigmoid(b * ((pc - rc) - (pr - rr))), r"one number"),
}


# ---- 14.5 group advantages
def adv_ref(r, G):
    r = r.view(-1, G)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + 1e-4)).view(-1)


ADV_MUTANTS = {
    "not normalised": (lambda r, G: (r.view(-1, G) - r.view(-1, G).mean(1, keepdim=True)).view(-1), r"only centred"),
    "std over batch": (lambda r, G: (r.view(-1, G) - r.view(-1, G).mean(1, keepdim=True)).view(-1) / (r.std() + 1e-4),
                       r"WHOLE batch.*own std"),
    "everything over batch": (lambda r, G: (r - r.mean()) / (r.std() + 1e-4), r"over the whole batch"),
    "no eps": (lambda r, G: ((r.view(-1, G) - r.view(-1, G).mean(1, keepdim=True)) / r.view(-1, G).std(1, keepdim=True))
               .view(-1), r"nan.*1e-4"),
    "groups transposed": (lambda r, G: ((r.view(G, -1) - r.view(G, -1).mean(1, keepdim=True))
                                        / (r.view(G, -1).std(1, keepdim=True) + 1e-4)).reshape(-1),
                          r"view\(-1, group_size\)"),
    "population std": (lambda r, G: ((r.view(-1, G) - r.view(-1, G).mean(1, keepdim=True))
                                     / (r.view(-1, G).std(1, unbiased=False, keepdim=True) + 1e-4)).view(-1),
                       r"population std"),
}


# ---- 14.6 GRPO
def grpo_variant(kind=""):
    def f(logp, old, ref, adv, mask, eps, beta):
        ratio = (logp - old) if kind == "no exp" else (logp - old).exp()
        lo, hi = (-eps, eps) if kind == "no exp" else (1 - eps, 1 + eps)
        A = adv.unsqueeze(-1)
        unclipped, clipped = ratio * A, ratio.clamp(lo, hi) * A
        sur = {"max": torch.max(unclipped, clipped), "no clip": unclipped}.get(kind, torch.min(unclipped, clipped))
        kl = (ref - logp).exp() - (ref - logp) - 1
        kl_term = {"kl sign": -beta * kl, "no kl": 0 * kl}.get(kind, beta * kl)
        per_token = -(sur - kl_term)
        if kind == "loss sign":
            per_token = -per_token
        if kind == "no mask":
            mask = torch.ones_like(mask)
        if kind == "token mean":
            return (per_token * mask).sum() / mask.sum()
        return ((per_token * mask).sum(-1) / mask.sum(-1)).mean()

    return f


GRPO_MUTANTS = {
    "clip on the wrong side": (grpo_variant("max"), r"wrong side.*MIN"),
    "no clip": (grpo_variant("no clip"), r"no clipping"),
    "KL sign": (grpo_variant("kl sign"), r"KL term has the wrong sign"),
    "no KL": (grpo_variant("no kl"), r"KL penalty.*missing"),
    "token mean": (grpo_variant("token mean"), r"all tokens of the batch"),
    "ratio not exponentiated": (grpo_variant("no exp"), r"exp\(logp - logp_old\)"),
    "mask ignored": (grpo_variant("no mask"), r"mask is ignored"),
    "loss sign": (grpo_variant("loss sign"), r"loss has the wrong sign"),
}

CASES = [
    (check_exact_match, em_ref, EM_MUTANTS),
    (check_sft_targets, sft_variant(), SFT_MUTANTS),
    (check_sequence_logprob, seq_ref, SEQ_MUTANTS),
    (check_dpo_loss, dpo_ref, DPO_MUTANTS),
    (check_group_advantages, adv_ref, ADV_MUTANTS),
    (check_grpo_loss, grpo_variant(), GRPO_MUTANTS),
]

test_reference_passes, test_mutant_fails, test_stub_not_done = checker_tests(CASES)


def test_trl_dpo_loss_is_the_library_loss():
    pytest.importorskip("trl")
    g = torch.Generator().manual_seed(0)
    pc, pr, rc, rr = (-5 * torch.rand(6, generator=g) for _ in range(4))
    loss, margin = trl_dpo_loss(pc, pr, rc, rr, beta=0.1)
    ours, rew_c, rew_r = lib_dpo_loss(pc, pr, rc, rr, beta=0.1)
    torch.testing.assert_close(loss, ours)
    assert margin == pytest.approx((rew_c - rew_r).mean().item(), abs=1e-6)
