"""Checkers for notebook 08 (fine-tuning GPT-2 with Hugging Face).

References are independent of :mod:`minigpt.hf` and :mod:`minigpt.hf.data`: ``F.cross_entropy``,
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


def _ce(logits: torch.Tensor, labels: torch.Tensor, **kw) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), **kw)


def _ref_ppl(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return math.exp(_ce(logits[:, :-1], labels[:, 1:], ignore_index=-100).item())


def _ppl_mistakes(logits: torch.Tensor, labels: torch.Tensor) -> list[tuple[float, str]]:
    """What the common mistakes return for these inputs, each with the message that names it."""
    lg, lb = logits[:, :-1], labels[:, 1:]
    loss = _ce(lg, lb).item()
    keep = lb != -100
    nll = -lg.log_softmax(-1).gather(-1, lb.clamp(min=0)[..., None])[..., 0]  # (B, T-1), junk where ignored
    row_means = [nll[b][keep[b]].mean() for b in range(len(lb)) if keep[b].any()]
    out = [
        (loss, f"you returned the loss ({loss:.4f}), not the perplexity: perplexity = exp(loss) = "
         f"{math.exp(loss):.3f}"),
        (math.exp(_ce(logits, labels).item()),
         "your logits and labels are not shifted: the logits at position t predict the token at t + 1, so "
         "compare logits[:, :-1] with labels[:, 1:] (Hugging Face models do this shift inside the loss)"),
        (math.exp(_ce(logits[:, 1:], labels[:, :-1]).item()),
         "you shifted the wrong way round (logits[:, 1:] against labels[:, :-1]: each position 'predicts' the "
         "token BEFORE it): drop the LAST logit and the FIRST label, logits[:, :-1] with labels[:, 1:]"),
        (2**loss, "you used 2 ** loss: cross_entropy is in nats (natural log), so perplexity is math.exp(loss)"),
        (math.exp(loss / math.log(2)), "you took the loss in bits (log base 2) and then math.exp: use the natural "
         "log throughout (F.cross_entropy does) with math.exp, or log2 with 2 **"),
        (math.exp(min(_ce(lg, lb, reduction="sum").item(), 700.0)),
         "you took exp of the SUMMED cross-entropy: perplexity is exp of the MEAN over the predicted tokens"),
        (math.exp(torch.stack(row_means).mean().item()),
         "you averaged per-sequence means: rows with more -100 labels count as much as full rows. Average over "
         "all non-ignored tokens of the batch at once (one F.cross_entropy over the flattened batch)"),
        (sum(math.exp(m.item()) for m in row_means) / len(row_means),
         "you averaged per-sequence perplexities: take exp of the mean loss over all non-ignored tokens of the "
         "batch, not the mean of each row's exp"),
        (math.exp((nll * keep).sum().item() / keep.numel()),
         "you divided by ALL positions, including those labelled -100: divide by the number of non-ignored "
         "labels (F.cross_entropy with ignore_index=-100 does it)"),
        (math.exp(_ce(lg, lb.clamp(min=0)).item()),
         "the -100 labels were scored as a real token: positions labelled -100 must not count at all "
         "(F.cross_entropy(..., ignore_index=-100))"),
    ]
    return out


@checker("08.1 perplexity from logits")
def check_perplexity_from_logits(fn) -> None:
    """fn(logits (B, T, V), labels (B, T), Hugging Face convention: unshifted, -100 = ignore) -> float."""
    g = torch.Generator().manual_seed(7)
    cases = []
    for B, T, V in [(2, 6, 11), (3, 9, 17)]:
        cases.append((torch.randn(B, T, V, generator=g) * 2, torch.randint(0, V, (B, T), generator=g)))
    # rows with different numbers of ignored labels: a prompt masked out, right padding, nothing ignored
    logits = torch.randn(3, 10, 13, generator=g) * 2
    labels = torch.randint(0, 13, (3, 10), generator=g)
    labels[0, :6] = -100  # a long prompt not scored: 3 predicted tokens left
    labels[1, 8:] = -100  # right padding: 7 predicted tokens
    cases.append((logits, labels))
    logits = torch.randn(2, 8, 9, generator=g) * 3
    labels = torch.randint(0, 9, (2, 8), generator=g)
    labels[1, 1:6] = -100
    cases.append((logits, labels))
    for logits, labels in cases:
        got = fn(logits.clone(), labels.clone())
        if isinstance(got, torch.Tensor):
            expect(got.numel() == 1, f"return one number (the perplexity), got a tensor of shape {tuple(got.shape)}")
            got = got.item()
        expect(isinstance(got, (int, float)), f"return a float, got {type(got).__name__}")
        want = _ref_ppl(logits, labels)
        if math.isclose(got, want, rel_tol=1e-4):
            continue
        ignored = [int(n) for n in (labels[:, 1:] == -100).sum(-1)]
        where = f"for logits of shape {tuple(logits.shape)}" + (
            f" with {ignored} labels of -100 per row" if any(ignored) else ""
        )
        for value, message in _ppl_mistakes(logits, labels):
            if math.isclose(got, value, rel_tol=1e-4) and not math.isclose(value, want, rel_tol=1e-3):
                expect(False, f"{where}: {message}.")
        expect(
            False,
            f"{where} the perplexity should be {want:.4f}, got {got:.4f}. Compare logits[:, :-1] with "
            "labels[:, 1:], take the MEAN cross-entropy over all labels that are not -100, then math.exp.",
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


def _per_row(examples: dict, block_size: int, keep_tail: bool) -> list:
    out = []
    for row in examples["input_ids"]:
        stop = len(row) if keep_tail else len(row) // block_size * block_size
        out += [list(row[i : i + block_size]) for i in range(0, stop, block_size)]
    return out


@checker("08.2 group_texts")
def check_group_texts(fn) -> None:
    """fn(examples: dict of lists of token lists, block_size) -> dict with every column grouped, plus labels."""
    g = torch.Generator().manual_seed(2)
    for lengths, block, extra in [([3, 5, 2, 7], 4, False), ([1, 1, 1, 9, 4], 5, True), ([10], 3, False),
                                  ([6, 6, 6, 3], 4, False)]:
        ids = [torch.randint(1, 50, (n,), generator=g).tolist() for n in lengths]
        examples = {"input_ids": ids, "attention_mask": [[1] * n for n in lengths]}
        if extra:  # any other column (here the token type of each token) is grouped the same way
            examples["token_type_ids"] = [[i % 2] * n for i, n in enumerate(lengths)]
        snapshot = {k: [list(r) for r in v] for k, v in examples.items()}
        got = fn(examples, block)
        want = _ref_group(snapshot, block)
        expect(isinstance(got, dict), f"return a dict of columns, got {type(got).__name__}")
        for key in want:
            expect(key in got, f"the result has no {key!r} column; group EVERY input column (loop over "
                   "examples.keys(), do not hard-code them) and add 'labels'")
        rows = [list(r) for r in got["input_ids"]]
        n_want = len(want["input_ids"])
        where = f"with rows of lengths {lengths} and block_size={block}"
        if rows == _per_row(snapshot, block, keep_tail=True) and rows != want["input_ids"]:
            expect(False, f"{where} you cut each row on its own (and kept its short end): concatenate ALL rows "
                   "first, then cut, so a block may span several lines and no block is short.")
        if rows == _per_row(snapshot, block, keep_tail=False) and rows != want["input_ids"]:
            expect(False, f"{where} you made {len(rows)} blocks but the {sum(lengths)} tokens fill {n_want}: you "
                   "cut each row on its own; concatenate ALL rows first, then cut, so a block may span several lines.")
        if rows and len(rows[-1]) < block and all(len(r) == block for r in rows[:-1]):
            expect(False, f"{where} your last block has {len(rows[-1])} tokens: you kept the partial block at the "
                   "end. Drop the short tail (GPT-2 has no pad token, so every block must be full).")
        expect(
            all(len(r) == block for r in rows),
            f"{where} every block must have exactly {block} tokens; yours have lengths {[len(r) for r in rows]}. "
            "Drop the short tail instead of padding it (GPT-2 has no pad token).",
        )
        if len(rows) == n_want - 1 and rows == want["input_ids"][:-1]:
            expect(False, f"{where} you dropped the last FULL block too ({len(rows)} blocks instead of {n_want}): "
                   "keep len(tokens) // block_size * block_size tokens, an off-by-one in the range of starts.")
        expect(
            len(rows) >= n_want,
            f"{where} you made {len(rows)} blocks but the {sum(lengths)} tokens fill {n_want}: concatenate ALL "
            "rows first, then cut, so a block may span several lines.",
        )
        expect(
            len(rows) <= n_want,
            f"{where} you made {len(rows)} blocks but {sum(lengths)} tokens fill only {n_want} full blocks "
            f"of {block}: the last one was padded. Drop the short tail (GPT-2 has no pad token).",
        )
        expect(
            rows == want["input_ids"],
            f"the blocks should be the concatenated tokens cut every {block}: expected {want['input_ids']}, got "
            f"{rows}.",
        )
        for key in want:
            if key in ("input_ids", "labels"):
                continue
            expect(
                [list(r) for r in got[key]] == want[key],
                f"{key!r} must be grouped exactly like input_ids (concatenated and cut at the same places)"
                + (": all ones, nothing is padded." if key == "attention_mask" else "."),
            )
        labels = [list(r) for r in got["labels"]]
        expect(
            labels == want["labels"],
            "labels must be an exact copy of input_ids: do NOT shift them, the model shifts by one inside its "
            "loss (shifting here too would make it predict two tokens ahead)"
            + (", and do not mask them with -100 (every token of a full block is a real target)."
               if any(-100 in r for r in labels) else "."),
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
    cases = [(n_layer, n_embd, r, _peft_count(n_layer, n_embd, r)) for n_layer, n_embd, r in [(1, 8, 3), (3, 16, 4)]]
    cases.append((12, 768, 8, 294_912))  # GPT-2 small, r=8: what peft's print_trainable_parameters reports
    for n_layer, C, r, want in cases:
        got = fn(n_layer, C, r)
        expect(isinstance(got, int), f"return an int, got {type(got).__name__}")
        if got == want:
            continue
        mistakes = [
            (n_layer * C * 3 * C, "that is the size of the full c_attn weights: LoRA freezes them and trains only "
             "the small factors A (C, r) and B (r, 3C)"),
            (r * (C + 3 * C), f"that is the count for ONE layer; GPT-2 has a c_attn in each of its {n_layer} layers"),
            (n_layer * r * (C + C), "c_attn maps C to 3C (query, key and value at once), so B has shape (r, 3C), "
             "not (r, C)"),
            (n_layer * C * r, "you counted only A (C, r): B (r, 3C) is trained too"),
            (n_layer * r * 3 * C, "you counted only B (r, 3C): A (C, r) is trained too"),
            (n_layer * (r * 4 * C + 3 * C), "LoRA's A and B have no bias: do not add c_attn's bias (3C), it stays "
             "frozen"),
            (n_layer * 6 * r * C, "that is 6 * r * C per layer: either you also adapted the output projection "
             "c_proj (only c_attn is adapted here, target_modules=['c_attn']), or you gave query, key and value a "
             "separate pair each; c_attn is ONE fused projection C -> 3C with one A (C, r) and one B (r, 3C)"),
            (n_layer * 4 * C, "you left out the rank: A (C, r) and B (r, 3C) hold r * C and r * 3C numbers"),
        ]
        for value, message in mistakes:
            expect(got != value, f"for n_layer={n_layer}, n_embd={C}, r={r} you said {got:,}: {message}.")
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
            nx != nf or not torch.allclose(got, x @ conv.weight.T + conv.bias, atol=1e-5),
            "you copied conv.weight without transposing it: Linear computes x @ W.T + b and Conv1D x @ W + b, so "
            "linear.weight must be conv.weight.T (a reshape/view to (out, in) is not a transpose).",
        )
        expect(
            nx == nf or not torch.allclose(got, x @ conv.weight.reshape(nf, nx).T + conv.bias, atol=1e-5),
            "you reshaped conv.weight to (out, in) instead of transposing it: a reshape keeps the memory order, "
            "so the numbers land in the wrong places; use conv.weight.T.",
        )
        expect(
            torch.allclose(got, want, atol=1e-5),
            f"for a Conv1D({nf}, {nx}) your Linear gives different outputs (max diff "
            f"{(got - want).abs().max():.3g}). Linear computes x @ W.T + b and Conv1D computes x @ W + b, so "
            "linear.weight must be its transpose, conv.weight.T.",
        )
        expect(
            lin.weight.untyped_storage().data_ptr() != conv.weight.untyped_storage().data_ptr(),
            "your Linear's weight shares memory with the Conv1D's (a transposed view of it): copy the weights "
            "(.clone() or copy_ under torch.no_grad()) so the two stay independent.",
        )
        expect(
            lin.bias.untyped_storage().data_ptr() != conv.bias.untyped_storage().data_ptr(),
            "your Linear's bias IS the Conv1D's bias tensor: copy it (linear.bias.copy_(conv.bias)) so training "
            "one layer does not change the other.",
        )
