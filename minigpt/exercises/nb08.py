"""Checkers for notebook 08 (fine-tuning GPT-2 with Hugging Face).

References are independent of :mod:`minigpt.hf` and :mod:`minigpt.hf_data`: ``F.cross_entropy``,
``itertools.chain``, ``peft`` itself for LoRA counts, and transformers' own ``Conv1D`` forward.
"""

from __future__ import annotations

import itertools
import math

import torch
import torch.nn.functional as F

from ._core import checker, expect

__all__ = ["check_perplexity_from_logits", "check_group_texts", "check_lora_count", "check_conv1d_to_linear"]


# ------------------------------------------------------------------ 08.1 perplexity from logits


def _ref_ppl(logits: torch.Tensor, labels: torch.Tensor) -> float:
    V = logits.shape[-1]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, V), labels[:, 1:].reshape(-1), ignore_index=-100)
    return math.exp(loss.item())


@checker("08.1 perplexity from logits")
def check_perplexity_from_logits(fn) -> None:
    """fn(logits (B, T, V), labels (B, T), Hugging Face convention: unshifted, -100 = ignore) -> float."""
    g = torch.Generator().manual_seed(7)
    cases = []
    for B, T, V in [(2, 6, 11), (3, 9, 17)]:
        logits = torch.randn(B, T, V, generator=g) * 2
        labels = torch.randint(0, V, (B, T), generator=g)
        cases.append((logits, labels))
    masked = cases[1][1].clone()
    masked[:, :3] = -100  # e.g. a prompt we do not want to score
    cases.append((cases[1][0], masked))
    for logits, labels in cases:
        got = fn(logits.clone(), labels.clone())
        if isinstance(got, torch.Tensor):
            expect(got.numel() == 1, f"return one number (the perplexity), got a tensor of shape {tuple(got.shape)}")
            got = got.item()
        expect(isinstance(got, (int, float)), f"return a float, got {type(got).__name__}")
        want = _ref_ppl(logits, labels)
        B, T, V = logits.shape
        no_shift = math.exp(F.cross_entropy(logits.reshape(-1, V), labels.reshape(-1), ignore_index=-100).item())
        loss = math.log(want)
        expect(
            not math.isclose(got, loss, rel_tol=1e-4),
            f"you returned the loss ({loss:.4f}), not the perplexity: perplexity = exp(loss) = {want:.3f}.",
        )
        expect(
            not math.isclose(got, no_shift, rel_tol=1e-4),
            "your logits and labels are not shifted: the logits at position t predict the token at t + 1, so "
            "compare logits[:, :-1] with labels[:, 1:] (Hugging Face models do this shift inside the loss).",
        )
        expect(
            not math.isclose(got, 2**loss, rel_tol=1e-4),
            "you used 2 ** loss: cross_entropy is in nats (natural log), so perplexity is math.exp(loss).",
        )
        if (labels == -100).any():
            expect(
                math.isclose(got, want, rel_tol=1e-4),
                f"with some labels = -100 the perplexity should be {want:.4f}, got {got:.4f}: positions labelled "
                "-100 must not count (pass ignore_index=-100 to F.cross_entropy).",
            )
        expect(
            math.isclose(got, want, rel_tol=1e-4),
            f"for logits of shape {tuple(logits.shape)} the perplexity should be {want:.4f}, got {got:.4f}. "
            "Take the MEAN cross-entropy over all predicted tokens, then exp.",
        )


# ------------------------------------------------------------------ 08.2 group_texts


def _ref_group(examples: dict, block_size: int) -> dict:
    out = {}
    for key, rows in examples.items():
        flat = list(itertools.chain.from_iterable(rows))
        n = len(flat) // block_size
        out[key] = [flat[i * block_size : (i + 1) * block_size] for i in range(n)]
    out["labels"] = [list(b) for b in out["input_ids"]]
    return out


@checker("08.2 group_texts")
def check_group_texts(fn) -> None:
    """fn(examples: dict of lists of token lists, block_size) -> dict with input_ids, attention_mask, labels."""
    g = torch.Generator().manual_seed(2)
    for lengths, block in [([3, 5, 2, 7], 4), ([1, 1, 1, 9, 4], 5), ([10], 3)]:
        ids = [torch.randint(1, 50, (n,), generator=g).tolist() for n in lengths]
        examples = {"input_ids": ids, "attention_mask": [[1] * n for n in lengths]}
        snapshot = {k: [list(r) for r in v] for k, v in examples.items()}
        got = fn(examples, block)
        want = _ref_group(snapshot, block)
        expect(isinstance(got, dict), f"return a dict of columns, got {type(got).__name__}")
        for key in ("input_ids", "attention_mask", "labels"):
            expect(key in got, f"the result has no {key!r} column; keep every input column and add 'labels'")
        rows = [list(r) for r in got["input_ids"]]
        expect(
            all(len(r) == block for r in rows),
            f"with rows of lengths {lengths} and block_size={block}, every block must have exactly {block} "
            f"tokens; yours have lengths {[len(r) for r in rows]}. Drop the short tail instead of padding it "
            "(GPT-2 has no pad token).",
        )
        if len(rows) < len(want["input_ids"]):
            expect(
                False,
                f"you made {len(rows)} blocks but the {sum(lengths)} tokens fill {len(want['input_ids'])}: "
                "concatenate ALL rows first, then cut, so a block may span several lines.",
            )
        expect(
            len(rows) <= len(want["input_ids"]),
            f"you made {len(rows)} blocks but {sum(lengths)} tokens fill only {len(want['input_ids'])} full blocks "
            f"of {block}: the last one was padded. Drop the short tail (GPT-2 has no pad token).",
        )
        expect(
            rows == want["input_ids"],
            f"the blocks should be the concatenated tokens cut every {block}: expected {want['input_ids']}, got "
            f"{rows}.",
        )
        expect(
            [list(r) for r in got["attention_mask"]] == want["attention_mask"],
            "attention_mask must be grouped exactly like input_ids (all ones: nothing is padded).",
        )
        labels = [list(r) for r in got["labels"]]
        expect(
            labels == want["labels"],
            "labels must be an exact copy of input_ids: do NOT shift them, the model shifts by one inside its "
            "loss (shifting here too would make it predict two tokens ahead).",
        )


# ------------------------------------------------------------------ 08.3 LoRA parameter count


def _peft_count(n_layer: int, n_embd: int, r: int) -> int:
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(
        vocab_size=16, n_positions=8, n_layer=n_layer, n_head=2, n_embd=n_embd, bos_token_id=0, eos_token_id=0
    )
    model = get_peft_model(
        GPT2LMHeadModel(cfg),
        LoraConfig(r=r, lora_alpha=2 * r, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM"),
    )
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


@checker("08.3 LoRA parameter count")
def check_lora_count(fn) -> None:
    """fn(n_layer, n_embd, r) -> trainable parameters LoRA adds on GPT-2's c_attn (C -> 3C) in every layer."""
    cases = [(n_layer, n_embd, r, _peft_count(n_layer, n_embd, r)) for n_layer, n_embd, r in [(1, 8, 2), (3, 16, 4)]]
    cases.append((12, 768, 8, 294_912))  # GPT-2 small, r=8: what peft's print_trainable_parameters reports
    for n_layer, C, r, want in cases:
        got = fn(n_layer, C, r)
        expect(isinstance(got, int), f"return an int, got {type(got).__name__}")
        if got == want:
            continue
        expect(got != n_layer * C * 3 * C, "that is the size of the full c_attn weights: LoRA trains A and B instead.")
        expect(
            got != r * (C + 3 * C),
            f"{got} is the count for ONE layer; GPT-2 has a c_attn in each of its {n_layer} layers.",
        )
        expect(
            got != n_layer * r * (C + C),
            "c_attn maps C to 3C (query, key and value at once), so B has shape (r, 3C), not (r, C).",
        )
        expect(
            False,
            f"for n_layer={n_layer}, n_embd={C}, r={r} LoRA adds {want:,} trainable parameters, you said {got:,}. "
            "Per layer: A is (C, r) and B is (r, 3C).",
        )


# ------------------------------------------------------------------ 08.4 Conv1D -> Linear


@checker("08.4 Conv1D to Linear")
def check_conv1d_to_linear(fn) -> None:
    """fn(conv: transformers Conv1D) -> nn.Linear computing the same function."""
    from transformers.pytorch_utils import Conv1D

    g = torch.Generator().manual_seed(4)
    for nx, nf in [(6, 6), (4, 12)]:  # square first: a missing transpose does not crash there
        conv = Conv1D(nf, nx)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(nx, nf, generator=g))
            conv.bias.copy_(torch.randn(nf, generator=g))
        x = torch.randn(2, 3, nx, generator=g)
        want = conv(x)
        lin = fn(conv)
        expect(isinstance(lin, torch.nn.Linear), f"return a torch.nn.Linear, got {type(lin).__name__}")
        expect(
            tuple(lin.weight.shape) == (nf, nx),
            f"nn.Linear({nx}, {nf}) stores its weight as (out, in) = {(nf, nx)}, yours is "
            f"{tuple(lin.weight.shape)}. Conv1D stores (in, out): transpose it.",
        )
        expect(lin.bias is not None, "the Linear has no bias, but Conv1D adds one: create it with bias=True")
        with torch.no_grad():
            got = lin(x)
            no_bias = x @ conv.weight
        expect(
            not torch.allclose(got, no_bias, atol=1e-5) or torch.allclose(conv.bias, torch.zeros(nf)),
            "the outputs miss the bias: copy conv.bias into linear.bias.",
        )
        expect(
            torch.allclose(got, want, atol=1e-5),
            f"for a Conv1D({nf}, {nx}) your Linear gives different outputs (max diff "
            f"{(got - want).abs().max():.3g}). Linear computes x @ W.T + b and Conv1D computes x @ W + b, so "
            "linear.weight must be its transpose, conv.weight.T.",
        )
        expect(
            lin.weight.data_ptr() != conv.weight.data_ptr(),
            "your Linear shares memory with the Conv1D; copy the weights (.clone()) so the two stay independent.",
        )
