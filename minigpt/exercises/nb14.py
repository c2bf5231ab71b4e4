"""Checkers for notebook 14 (post-training: evaluation, SFT, DPO, GRPO).

The references are the library's :mod:`minigpt.posttrain` and :mod:`minigpt.evaluation` (independent of the
student's notebook) and, for DPO, TRL's own ``DPOTrainer`` loss when ``trl`` is installed
(:func:`trl_dpo_loss`). Each checker computes what the usual mistakes would give and names the one it sees.
Shapes: B sequences, T positions, V vocabulary, N prompts, G answers per prompt.
"""

from __future__ import annotations

import types
from collections import defaultdict

import torch
import torch.nn.functional as F

from ._core import checker, expect

__all__ = [
    "check_exact_match",
    "check_sft_targets",
    "check_sequence_logprob",
    "check_dpo_loss",
    "check_group_advantages",
    "check_grpo_loss",
]


def _close(a, b, tol: float = 1e-5) -> bool:
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return a.shape == b.shape and bool(torch.allclose(a, b, atol=tol, rtol=tol, equal_nan=True))


def _diagnose(got, reference, mistakes: list[tuple[object, str]], what: str) -> None:
    """Pass if got == reference; otherwise fail with the message of the first mistake that reproduces got."""
    if _close(got, reference):
        return
    for wrong, message in mistakes:
        if _close(got, wrong):
            expect(False, message)
    expect(False, f"{what} differs from the reference: got {got}, expected {reference}")


def _tensor(out, what: str) -> torch.Tensor:
    expect(isinstance(out, torch.Tensor), f"{what} should be a torch tensor, got {type(out).__name__}")
    return out.detach().double()


# ---------------------------------------------------------------- 14.1 exact match


@checker("14.1 exact-match accuracy")
def check_exact_match(exact_match_accuracy) -> None:
    """exact_match_accuracy(predictions, answers) -> float in [0, 1], whitespace at the ends ignored."""
    cases = [
        # each mistake gives a different count here: 3 right, 1 without strip, 2 with rstrip only, 5 "contains",
        # 6 ignoring case, 4 removing inner spaces
        (["dcba", " hgf", "ab\n", "a b", "ABC", "Hg", "dC", "abcd", "xyz"],
         ["dcba", "hgf", "ab", "ab", "abc", "hg", "dc", "abc", "y"]),
        (["x", "yy "], ["x", "yy"]),
        (("cba", "\tfe", "g"), ("cba", "fe", "h")),
    ]
    for preds, answers in cases:
        got = exact_match_accuracy(list(preds), list(answers))
        expect(isinstance(got, (float, int)) and not isinstance(got, bool),
               f"return one number (a Python float), got {type(got).__name__}")
        right = sum(p.strip() == a.strip() for p, a in zip(preds, answers))
        mistakes = [
            (right, "you returned the NUMBER of matches; accuracy is that count divided by the number of answers"),
            (sum(p == a for p, a in zip(preds, answers)) / len(answers),
             "whitespace counts in your comparison: strip() both strings, so ' hgf' and 'ab\\n' match"),
            (sum(p.rstrip() == a.rstrip() for p, a in zip(preds, answers)) / len(answers),
             "you stripped only the right end; a LEADING space (' hgf') must not turn a right answer wrong"),
            (sum(a.strip() in p for p, a in zip(preds, answers)) / len(answers),
             "you counted an answer CONTAINED in the prediction as right; exact match means equal strings"),
            (sum(p.strip().lower() == a.strip().lower() for p, a in zip(preds, answers)) / len(answers),
             "you ignored case; 'ABC' is not 'abc' for an exact match"),
            (sum("".join(p.split()) == "".join(a.split()) for p, a in zip(preds, answers)) / len(answers),
             "you removed the spaces INSIDE the strings too; only whitespace at the ends is ignored ('a b' != 'ab')"),
        ]
        _diagnose(float(got), right / len(answers), mistakes, "the accuracy")


# ---------------------------------------------------------------- 14.2 SFT targets


@checker("14.2 response-only targets")
def check_sft_targets(sft_targets) -> None:
    """sft_targets(prompt_ids, response_ids) -> (x, y): next-token pairs, -1 in y where the target is in the prompt."""
    from ..posttrain import response_targets

    for prompt, response in [([7, 3, 4, 9], [5, 6, 2]), ([1, 2], [3]), ([4, 4, 4, 4, 4, 8], [9, 9, 9, 1]),
                             ([3], [2, 1])]:
        out = sft_targets(list(prompt), list(response))
        expect(isinstance(out, tuple) and len(out) == 2, "return a pair (x, y) of tensors")
        x, y = out
        ref_x, ref_y = response_targets(prompt, response)
        expect(isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor), "x and y should be torch tensors")
        ids = torch.tensor(prompt + response)
        P = len(prompt)
        if x.shape == ids.shape and x.tolist() == ids.tolist():
            expect(False, "x holds every token, the last one included: x = ids[:-1], y = ids[1:] (each position "
                          "predicts the NEXT token)")
        expect(x.tolist() == ref_x.tolist(), f"x should be the sequence without its last token, {ref_x.tolist()}; "
                                             f"got {x.tolist()}")
        expect(y.dtype == torch.long, f"y should hold integer ids (torch.long), got {y.dtype}")
        got = y.tolist()

        def masked(k, fill=-1, ids=ids):
            t = ids[1:].clone()
            t[:k] = fill
            return t.tolist()

        swapped = ids[1:].clone()
        swapped[P - 1:] = -1
        mistakes = [
            (ids[1:].tolist(), "nothing is masked: the model also learns to predict the prompt. Set y to -1 for the "
                               "first len(prompt) - 1 targets"),
            (masked(P), "you masked len(prompt) targets, one too many: y[len(prompt) - 1] is the FIRST RESPONSE "
                        "token (predicted from the prompt's last token) and must keep its loss"),
            (masked(P - 2), "you masked one target too few: y[len(prompt) - 2] is the prompt's LAST token, which "
                            "must not carry loss"),
            (masked(P - 1, 0), "the masked targets are 0, a real token id; the loss ignores -1"),
            (swapped.tolist(), "you masked the response instead of the prompt"),
        ]
        if got != ref_y.tolist():
            for wrong, message in mistakes:
                expect(got != wrong, message)
            expect(False, f"for prompt {prompt} and response {response}, y should be {ref_y.tolist()}, got {got}")


# ---------------------------------------------------------------- 14.3 sequence log-probability


@checker("14.3 sequence log-probability")
def check_sequence_logprob(sequence_logprob) -> None:
    """sequence_logprob(logits (B, T, V), targets (B, T)) -> (B,): sum of log p(target), -1 targets skipped."""
    from ..posttrain import token_logprobs

    g = torch.Generator().manual_seed(14)
    for B, T, V in [(3, 6, 7), (1, 4, 5), (4, 7, 11)]:
        logits = 2 * torch.randn(B, T, V, generator=g)
        targets = torch.randint(0, V, (B, T), generator=g)
        for b in range(B):  # a different number of ignored positions per row, at the start (the prompt)
            targets[b, : b + 1] = -1
        got = _tensor(sequence_logprob(logits.clone(), targets.clone()), "the result")
        keep = (targets != -1).double()
        logp = F.log_softmax(logits.double(), -1)
        pick = logp.gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        ref = token_logprobs(logits.double(), targets).sum(-1)
        shifted = (logp[:, :-1].gather(-1, targets[:, 1:].clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep[:, 1:]).sum(-1)
        raw = (logits.double().gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep).sum(-1)
        mistakes = [
            ((pick * keep).sum(-1) / keep.sum(-1), "you averaged over the tokens; a sequence's log-probability is "
                                                   "the SUM (a mean would favour long answers as much as short ones)"),
            (pick.sum(-1), "the -1 targets were counted (as token 0): multiply by (targets != -1) after the gather"),
            ((pick.exp() * keep).sum(-1), "you summed probabilities; sum the LOG-probabilities (log_softmax)"),
            (raw, "you summed raw logits; take log_softmax over the vocabulary first"),
            ((F.log_softmax(logits.double(), 1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
              * keep).sum(-1), "log_softmax ran over the positions (dim=1); normalise over the vocabulary (dim=-1)"),
            (shifted, "you shifted the targets by one; logits[:, t] already scores targets[:, t] here"),
        ]
        expect(got.shape == (B,), f"return one number per sequence, shape ({B},); got {tuple(got.shape)}")
        _diagnose(got, ref, mistakes, "the sequence log-probabilities")


# ---------------------------------------------------------------- 14.4 DPO


def trl_dpo_loss(pc, pr, rc, rr, beta: float) -> tuple[torch.Tensor, float]:
    """TRL's ``DPOTrainer._compute_loss`` (loss_type "sigmoid") on given summed log-probs: (loss, mean reward margin).

    The trainer needs a Hugging Face model; a stand-in returns the per-token log-probs directly (one token per
    answer), and the reference log-probs come precomputed, so the loss and the logged margin are TRL's own code.
    """
    from trl import DPOTrainer

    B = pc.shape[0]
    per_token = torch.stack([torch.cat([pc, pr]), torch.zeros(2 * B)], dim=1)  # (2B, 2): the answer, then a pad
    mask = torch.tensor([[1, 1, 0]]).repeat(2 * B, 1)  # prompt, answer, pad
    zeros = torch.zeros(2 * B, 2)
    outputs = types.SimpleNamespace(log_probs=per_token, entropy=zeros, mean_logits=zeros,
                                    is_top1=zeros.bool())
    accelerator = types.SimpleNamespace(device="cpu", gather_for_metrics=lambda t: t, gather=lambda t: t)
    trainer = DPOTrainer.__new__(DPOTrainer)
    trainer.__dict__.update(
        model=types.SimpleNamespace(training=True), accelerator=accelerator, aux_loss_enabled=False, ld_alpha=None,
        precompute_ref_logps=True, f_divergence_type="reverse_kl", loss_types=["sigmoid"], loss_weights=[1.0],
        beta=beta, label_smoothing=0.0, use_weighting=False, _metrics=defaultdict(lambda: defaultdict(list)),
        _total_train_tokens=0, _tp_size=1,
    )
    inputs = dict(input_ids=torch.zeros(2 * B, 3, dtype=torch.long), attention_mask=mask, completion_mask=mask,
                  ref_chosen_logps=rc, ref_rejected_logps=rr)
    loss = trainer._compute_loss(lambda **kw: outputs, inputs, return_outputs=False)
    return loss, trainer._metrics["train"]["rewards/margins"][-1]


def _has_trl() -> bool:
    try:
        import trl  # noqa: F401
    except ImportError:
        return False
    return True


@checker("14.4 DPO loss")
def check_dpo_loss(dpo_loss) -> None:
    """dpo_loss(pc, pr, rc, rr, beta) -> scalar: -log sigmoid(beta ((pc - rc) - (pr - rr))), mean over pairs.

    Compared with the library and, when ``trl`` is installed, with TRL's ``DPOTrainer`` on the same batch.
    """
    from ..posttrain import dpo_loss as reference

    g = torch.Generator().manual_seed(4)
    for B, beta in [(5, 0.1), (1, 0.5), (8, 2.0)]:
        pc, pr, rc, rr = (-8 * torch.rand(B, generator=g, dtype=torch.float64) for _ in range(4))
        got = dpo_loss(pc.clone(), pr.clone(), rc.clone(), rr.clone(), beta)
        got = _tensor(got, "the loss")
        expect(got.dim() == 0, f"return one number (the mean over the {B} pairs), got shape {tuple(got.shape)}")
        ref = reference(pc, pr, rc, rr, beta)[0]
        if _has_trl():
            assert _close(ref, trl_dpo_loss(pc.float(), pr.float(), rc.float(), rr.float(), beta)[0], 1e-4)
        z = (pc - rc) - (pr - rr)
        mistakes = [
            (-F.logsigmoid(-beta * z).mean(), "the sign is flipped: this loss is lowest when the REJECTED answer "
                                              "gains probability. Use (pc - rc) - (pr - rr)"),
            (-F.logsigmoid(z).mean(), "beta is missing: the log-ratios are scaled by beta inside the sigmoid"),
            (-F.logsigmoid(beta * (pc - pr)).mean(), "the reference is ignored: DPO compares the policy's log-ratio "
                                                     "with the REFERENCE's, (pc - rc) - (pr - rr)"),
            ((-beta * z).mean(), "there is no log-sigmoid: -beta * margin has no minimum, so the log-probs run "
                                 "off to -inf. Use -F.logsigmoid(beta * margin)"),
            (-F.logsigmoid(beta * z).sum(), "you summed over the pairs; average them (the loss must not grow "
                                            "with the batch size)"),
            (-F.logsigmoid(beta * ((pc - rr) - (pr - rc))).mean(), "the two reference terms are swapped: the "
                                                                   "chosen answer's policy log-prob goes with the "
                                                                   "chosen answer's reference log-prob"),
            (-torch.log(torch.sigmoid(beta * z) + 1e-3).mean(), "close but not equal: use F.logsigmoid, which is "
                                                                "exact and never takes log(0)"),
        ]
        _diagnose(got, ref, mistakes, "the DPO loss")


# ---------------------------------------------------------------- 14.5 group advantages


@checker("14.5 group-normalised advantages")
def check_group_advantages(group_advantages) -> None:
    """group_advantages(rewards (N * G,), group_size) -> (N * G,): (r - group mean) / (group std + 1e-4)."""
    from ..posttrain import group_advantages as reference

    rewards = torch.tensor([1.0, 0, 0, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 0, 0, 0, 0])
    partial = torch.tensor([0.0, 0.5, 1.0, 0.25, 1.0, 1.0, 0.0, 0.5])
    for r, G in [(rewards, 4), (rewards, 6), (partial, 4), (partial, 2)]:
        got = _tensor(group_advantages(r.clone(), G), "the advantages")
        ref = reference(r, G).double()
        rg = r.double().view(-1, G)
        centred = rg - rg.mean(1, keepdim=True)
        mistakes = [
            (centred.flatten(), "the advantages are only centred: divide by the group's std (+ 1e-4) too"),
            (centred.flatten() / (r.double().std() + 1e-4), "the std is taken over the WHOLE batch; normalise by "
                                                            "each group's own std"),
            ((rg - r.double().mean()).flatten() / (rg.std(1, keepdim=True) + 1e-4),
             "the mean is taken over the whole batch; subtract each GROUP's mean"),
            ((r.double() - r.double().mean()) / (r.double().std() + 1e-4),
             "mean and std are over the whole batch: GRPO compares the answers to ONE prompt with each other"),
            (centred.flatten() / rg.std(1, keepdim=True).expand_as(rg).flatten(),
             "a group whose rewards are all equal gives 0 / 0 = nan: add 1e-4 to the std"),
            ((r.double().view(G, -1) - r.double().view(G, -1).mean(1, keepdim=True)).flatten()
             / (r.double().view(G, -1).std(1, keepdim=True) + 1e-4).expand(G, len(r) // G).flatten(),
             "the groups are wrong: the rewards come prompt by prompt, so view(-1, group_size), "
             "not view(group_size, -1)"),
            (centred.flatten() / (rg.std(1, unbiased=False, keepdim=True) + 1e-4).expand_as(rg).flatten(),
             "you used the population std (unbiased=False); use torch's default std, as TRL does"),
        ]
        expect(got.shape == r.shape, f"return one advantage per answer, shape {tuple(r.shape)}; got {tuple(got.shape)}")
        _diagnose(got, ref, mistakes, "the advantages")


# ---------------------------------------------------------------- 14.6 GRPO loss


@checker("14.6 GRPO clipped loss")
def check_grpo_loss(grpo_loss) -> None:
    """grpo_loss(logp, logp_old, logp_ref, adv, mask, clip_eps, beta) -> scalar (see minigpt.posttrain.grpo_loss)."""
    from ..posttrain import grpo_loss as reference

    g = torch.Generator().manual_seed(6)
    for B, T, eps, beta in [(6, 5, 0.2, 0.04), (3, 4, 0.1, 0.5), (8, 3, 0.3, 0.1)]:
        logp = -2 * torch.rand(B, T, generator=g, dtype=torch.float64)
        old = logp + 0.6 * torch.randn(B, T, generator=g, dtype=torch.float64)  # ratios well outside the clip
        ref_lp = logp + 0.5 * torch.randn(B, T, generator=g, dtype=torch.float64)
        adv = torch.randn(B, generator=g, dtype=torch.float64)
        mask = torch.ones(B, T, dtype=torch.float64)
        for b in range(B):
            mask[b, T - (b % T):] = 0  # answers of different lengths
        mask[:, 0] = 1
        got = _tensor(grpo_loss(logp.clone(), old.clone(), ref_lp.clone(), adv.clone(), mask.clone(), eps, beta),
                      "the loss")
        expect(got.dim() == 0, f"return one number, got shape {tuple(got.shape)}")
        ref = reference(logp, old, ref_lp, adv, mask, eps, beta)
        ratio, A = (logp - old).exp(), adv.unsqueeze(-1)
        kl = (ref_lp - logp).exp() - (ref_lp - logp) - 1
        clipped = ratio.clamp(1 - eps, 1 + eps) * A

        def agg(per_token, m=mask):
            return ((per_token * m).sum(-1) / m.sum(-1)).mean()

        mistakes = [
            (agg(-(torch.max(ratio * A, clipped) - beta * kl)), "the clip is on the wrong side: take the MIN of the "
                                                                "clipped and unclipped terms (the pessimistic bound)"),
            (agg(-(ratio * A - beta * kl)), "there is no clipping: min(ratio * A, clip(ratio, 1 - eps, 1 + eps) * A)"),
            (agg(-(torch.min(ratio * A, clipped) + beta * kl)), "the KL term has the wrong sign: it is a penalty, "
                                                                "loss = -(surrogate - beta * KL)"),
            (agg(-torch.min(ratio * A, clipped)), "the KL penalty to the reference is missing"),
            ((-(torch.min(ratio * A, clipped) - beta * kl) * mask).sum() / mask.sum(),
             "you averaged over all tokens of the batch at once; GRPO averages each answer's tokens, then the answers"),
            (agg(-(torch.min((logp - old) * A, (logp - old).clamp(-eps, eps) * A) - beta * kl)),
             "the ratio is a difference of log-probs; it is exp(logp - logp_old)"),
            (agg(-(torch.min(ratio * A, clipped) - beta * kl), torch.ones_like(mask)),
             "the mask is ignored: padding after an answer must not count"),
            (agg(torch.min(ratio * A, clipped) - beta * kl), "the loss has the wrong sign: we MAXIMISE the "
                                                             "surrogate, so the loss is its negative"),
        ]
        _diagnose(got, ref, mistakes, "the GRPO loss")
