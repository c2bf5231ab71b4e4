"""Decoding strategies against hand-written references and each other."""

import pytest
import torch

from minigpt.generation import beam_search, filter_top_k, filter_top_p, generate, stream
from minigpt.model import GPT, GPTConfig


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=23, block_size=12, n_layer=2, n_head=2, n_embd=32)).eval()


@pytest.mark.parametrize("n", [1, 5, 11, 30])  # 30 runs far past the 12-token block
@pytest.mark.parametrize("sampling", [dict(greedy=True), dict(seed=3, top_k=5), dict(seed=4, top_p=0.8)])
def test_kv_cached_and_uncached_decoding_give_the_same_tokens(model, n, sampling):
    x = torch.randint(0, 23, (2, 3), generator=torch.Generator().manual_seed(n))
    a = generate(model, x, n, use_cache=True, **sampling)
    b = generate(model, x, n, use_cache=False, **sampling)
    assert a.shape == (2, 3 + n) and torch.equal(a, b)


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
    shuffled = logits[:, [2, 0, 3, 1]]  # order must not matter
    assert torch.isfinite(filter_top_p(shuffled, 0.75)).tolist() == [[False, True, False, True]]


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
