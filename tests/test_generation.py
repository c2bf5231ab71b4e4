"""Decoding strategies against hand-written references and each other."""

import random
from dataclasses import dataclass

import pytest
import torch

from minigpt.attention import KVCache
from minigpt.generation import beam_search, filter_top_k, filter_top_p, generate, stream
from minigpt.model import GPT, CachedLanguageModel, GPTConfig, LanguageModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.parametrize("n", [1, 5, 11, 30])  # 30 runs far past the 12-token block
@pytest.mark.parametrize("sampling", [dict(greedy=True), dict(seed=3, top_k=5), dict(seed=4, top_p=0.8)])
def test_kv_cached_and_uncached_decoding_give_the_same_tokens(model, n, sampling):
    x = torch.randint(0, 23, (2, 3), generator=torch.Generator().manual_seed(n))
    fed = []  # tokens per forward pass: the cached path must really feed one new token at a time
    hook = model.register_forward_pre_hook(lambda m, args: fed.append(args[0].size(1)))
    try:
        a = generate(model, x, n, use_cache=True, **sampling)
        cached_feeds, fed[:] = list(fed), []
        b = generate(model, x, n, use_cache=False, **sampling)
    finally:
        hook.remove()
    assert a.shape == (2, 3 + n) and torch.equal(a, b)
    assert cached_feeds[0] == 3 and (n == 1 or cached_feeds.count(1) >= min(n - 1, 12 - 3))
    assert fed == [min(3 + i, 12) for i in range(n)]  # uncached: the whole (cropped) context every step


@pytest.mark.parametrize("n_kv_head", [None, 1])  # multi-head and grouped-query (cache read without copies)
def test_cached_decoding_at_full_context_feeds_one_token_and_reads_only_the_filled_cache(n_kv_head, monkeypatch):
    torch.manual_seed(1)
    model = GPT(GPTConfig(vocab_size=23, block_size=32, n_layer=2, n_head=4, n_kv_head=n_kv_head, n_embd=32)).eval()
    x = torch.randint(0, 23, (2, 24), generator=torch.Generator().manual_seed(5))  # 24 + 8 = the whole block
    seen = []  # (keys the attention read, positions filled) per layer and step
    update = KVCache.update

    def spy(cache, layer, k, v):
        out = update(cache, layer, k, v)
        seen.append((out[0].size(2), cache.pos + k.size(2)))
        return out

    monkeypatch.setattr(KVCache, "update", spy)
    fed = []
    hook = model.register_forward_pre_hook(lambda m, args: fed.append(args[0].size(1)))
    try:
        a = generate(model, x, 8, greedy=True, use_cache=True)
    finally:
        hook.remove()
    b = generate(model, x, 8, greedy=True, use_cache=False)
    assert torch.equal(a, b)
    assert fed == [24] + [1] * 7  # the prompt once, then one token per step: no refill at the block's end
    assert all(read == filled for read, filled in seen) and seen[-1][1] == 31  # never the empty rest


def test_greedy_is_the_argmax_of_a_plain_loop(model):
    idx = torch.tensor([[1, 2, 3]])
    ref = idx
    for _ in range(20):
        logits, _ = model(ref[:, -12:])
        ref = torch.cat([ref, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generate(model, idx, 20, greedy=True), ref)


def test_top_k_never_emits_a_token_outside_the_top_k():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.5, -1.0, 2.9]])
    kept = filter_top_k(logits, 3)
    assert torch.isfinite(kept).nonzero()[:, 1].tolist() == [1, 3, 5]

    class Fixed(torch.nn.Module):  # a "model" whose next-token logits never change
        config = GPTConfig(vocab_size=6, block_size=8, n_layer=1, n_head=1, n_embd=8)

        def forward(self, idx, targets=None, *, last_only=False, kv_cache=None):
            return logits.expand(idx.size(0), idx.size(1), 6), None

    out = generate(Fixed(), torch.zeros(64, 1, dtype=torch.long), 20, top_k=3, seed=0, temperature=2.0)
    assert set(out[:, 1:].unique().tolist()) <= {1, 3, 5}
    assert len(set(out[:, 1:].unique().tolist())) == 3


def test_top_p_keeps_the_smallest_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = probs.log()
    assert torch.isfinite(filter_top_p(logits, 0.5)).tolist() == [[True, False, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.75)).tolist() == [[True, True, False, False]]
    assert torch.isfinite(filter_top_p(logits, 0.81)).tolist() == [[True, True, True, False]]
    assert torch.isfinite(filter_top_p(logits, 1.0)).all()
    assert torch.isfinite(filter_top_p(torch.tensor([[0.0, float("-inf"), -1.0]]), 1.0)).tolist() == [
        [True, False, True]]
    shuffled = logits[:, [2, 0, 3, 1]]  # order must not matter
    assert torch.isfinite(filter_top_p(shuffled, 0.75)).tolist() == [[False, True, False, True]]


def test_top_p_of_one_keeps_every_token_with_nonzero_probability():
    # peaked rows: summed from the top in float32 the mass reaches 1.0 before the tail is counted
    g = torch.Generator().manual_seed(0)
    for scale in (1.0, 8.0, 16.0, 30.0):
        logits = torch.randn(64, 40, generator=g) * scale
        kept = torch.isfinite(filter_top_p(logits, 1.0))
        assert torch.equal(kept, logits.softmax(-1) > 0), scale


@pytest.mark.parametrize("p", [0.3, 0.9, 0.95, 0.99, 0.999, 1.0])
def test_top_p_agrees_with_hugging_faces_warper(p):
    warper = pytest.importorskip("transformers.generation.logits_process").TopPLogitsWarper(p)
    g = torch.Generator().manual_seed(int(p * 1000))
    for scale in (0.5, 2.0, 8.0, 20.0):
        logits = torch.randn(128, 50, generator=g) * scale
        assert torch.equal(torch.isfinite(filter_top_p(logits, p)), torch.isfinite(warper(None, logits)))


def _hf_beam_case(case: int):
    """A tiny random GPT-2 (HF) with the same weights in minigpt, a prompt and beam settings."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from minigpt.hf import gpt2_to_minigpt

    rnd = random.Random(case)
    torch.manual_seed(case)
    V, W, n, T = rnd.randint(4, 16), rnd.randint(1, 4), rnd.randint(1, 10), rnd.randint(1, 4)
    lp = rnd.choice([1.0, 0.0, 2.0, -0.5, 0.7])
    # a wide init makes the next-token distributions peaked, so near-ties (float noise between two
    # implementations) are rare
    cfg = GPT2Config(vocab_size=V, n_positions=32, n_embd=16, n_layer=2, n_head=2, initializer_range=0.5)
    hf = GPT2LMHeadModel(cfg).eval()
    ours = gpt2_to_minigpt(hf).eval()
    idx = torch.randint(0, V, (1, T))
    eos = rnd.randrange(V)
    if case % 4:  # mostly an end token that greedy decoding emits, so beams run into it
        eos = int(generate(ours, idx, n + 1, greedy=True)[0, T + rnd.randrange(n + 1)])
    return hf, ours, idx, dict(W=W, n=n, lp=lp, eos=eos)


def test_beam_search_matches_hugging_face_generate_on_random_models():
    pytest.importorskip("transformers")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cases, ended_early = 200, 0
    for case in range(cases):
        hf, ours, idx, s = _hf_beam_case(case)
        want = hf.generate(idx, attention_mask=torch.ones_like(idx), do_sample=False, num_beams=s["W"],
                           eos_token_id=s["eos"], pad_token_id=s["eos"], length_penalty=s["lp"],
                           max_new_tokens=s["n"])
        got = beam_search(ours, idx, s["n"], beam_width=s["W"], length_penalty=s["lp"], eos_id=s["eos"],
                          use_cache=case % 2 == 0)
        assert torch.equal(got, want), (case, s, got.tolist(), want.tolist())
        ended_early += got.size(1) < idx.size(1) + s["n"]
    assert ended_early >= cases // 5  # the end token really cut beams short (in about 60% of the cases)


@dataclass
class TinyConfig:
    block_size: int = 6


class CumulativeMeanLM(torch.nn.Module):
    """A model written to the documented contract only (no GPT, no last_only, no KV cache): the
    next-token logits read the mean embedding of the context so far."""

    def __init__(self, vocab_size: int = 11) -> None:
        super().__init__()
        self.config = TinyConfig()
        self.emb = torch.nn.Embedding(vocab_size, 8)
        self.head = torch.nn.Linear(8, vocab_size)

    def forward(self, idx, targets=None):
        T = idx.size(1)
        x = self.emb(idx).cumsum(1) / torch.arange(1, T + 1).view(1, T, 1)  # (B, T, 8)
        logits = self.head(x)  # (B, T, V)
        loss = None if targets is None else torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return logits, loss


def test_a_model_following_the_documented_contract_works_with_every_decoder():
    torch.manual_seed(0)
    model = CumulativeMeanLM().train()
    assert isinstance(model, LanguageModel) and not isinstance(model, CachedLanguageModel)
    idx = torch.tensor([[1, 2, 3]])
    ref = idx
    for _ in range(9):  # runs past block_size = 6: the context is cropped as for GPT
        logits, _ = model(ref[:, -6:])
        ref = torch.cat([ref, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(generate(model, idx, 9, greedy=True), ref)
    sampled = generate(model, idx.repeat(2, 1), 9, seed=5, top_k=4, top_p=0.9)
    assert torch.equal(torch.cat([idx.repeat(2, 1), *stream(model, idx.repeat(2, 1), 9, seed=5, top_k=4,
                                                              top_p=0.9)], dim=1), sampled)
    assert torch.equal(beam_search(model, idx, 9, beam_width=1), ref)
    beams = beam_search(model, idx, 9, beam_width=3, eos_id=int(ref[0, 5]))
    assert beams.size(1) <= 12 and model.training  # decoders restore the training flag


def test_beam_width_one_is_greedy_and_wider_beams_score_at_least_as_high(model):
    idx = torch.tensor([[4, 5, 6]])
    assert torch.equal(beam_search(model, idx, 15, beam_width=1), generate(model, idx, 15, greedy=True))

    def logprob(seq):
        logits, _ = model(seq[:, :-1])
        lp = logits.log_softmax(-1)[0, 2:].gather(-1, seq[0, 3:].unsqueeze(-1))
        return lp.sum().item()

    greedy = generate(model, idx, 6, greedy=True)
    beam = beam_search(model, idx, 6, beam_width=5)
    assert logprob(beam) >= logprob(greedy) - 1e-5
    # caching does not change the result, also past the block size
    assert torch.equal(beam_search(model, idx, 14, beam_width=3, use_cache=False),
                       beam_search(model, idx, 14, beam_width=3))


def test_same_seed_same_text_and_stream_matches_generate(model):
    idx = torch.tensor([[7, 8]])
    a = generate(model, idx, 25, seed=123, temperature=0.9)
    b = generate(model, idx, 25, seed=123, temperature=0.9)
    c = generate(model, idx, 25, seed=124, temperature=0.9)
    assert torch.equal(a, b) and not torch.equal(a, c)
    streamed = torch.cat([idx, *stream(model, idx, 25, seed=123, temperature=0.9)], dim=1)
    assert torch.equal(streamed, a)


def test_stop_sequence_ends_generation(model):
    idx = torch.tensor([[1, 2]])
    full = generate(model, idx, 30, greedy=True)
    stop = full[0, 6:8].tolist()
    out = generate(model, idx, 30, greedy=True, stop_ids=stop)
    assert out[0, -2:].tolist() == stop and out.size(1) <= 8


@pytest.mark.parametrize("kwargs,match", [
    (dict(temperature=0.0), "temperature must be > 0"),
    (dict(temperature=-1.0), "temperature must be > 0"),
    (dict(top_k=0), "top_k must be an integer >= 1"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
])
def test_invalid_sampling_settings_are_refused(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        generate(model, torch.tensor([[1]]), 3, **kwargs)


def test_empty_prompt_is_refused_with_a_hint(model):
    with pytest.raises(ValueError, match="prompt is empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="one prompt at a time"):
        beam_search(model, torch.zeros(2, 3, dtype=torch.long), 3)
