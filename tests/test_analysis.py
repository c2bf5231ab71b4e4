"""Attention capture and head metrics, checked against hand-built maps and hand computations."""

import json
import math

import pytest
import torch

from minigpt import GPT, CharTokenizer, GPTConfig
from minigpt.tools.analysis import (
    Attention,
    AttentionUnavailableError,
    attention_rollout,
    capture_attention,
    classify_heads,
    head_entropy,
    head_metrics,
    induction_score,
    induction_scores,
    induction_targets,
    previous_token_score,
    repeated_random_tokens,
    self_score,
    sink_score,
    top_attended,
    top_attended_pairs,
)
from minigpt.tools.attention_report import add_cli, analyze_attention, main

T = 8


def tiny_gpt(vocab=20, **kw) -> GPT:
    torch.manual_seed(0)
    cfg = dict(vocab_size=vocab, block_size=16, n_layer=2, n_head=2, n_embd=16)
    return GPT(GPTConfig(**{**cfg, **kw}))


# ---------------------------------------------------------------- hand-built maps (T, T)


def prev_token_map(T=T):
    a = torch.zeros(T, T)
    a[0, 0] = 1.0  # query 0 has nothing before it
    a[torch.arange(1, T), torch.arange(T - 1)] = 1.0
    return a


def uniform_causal_map(T=T):
    a = torch.tril(torch.ones(T, T))
    return a / a.sum(-1, keepdim=True)


def sink_map(T=T):
    a = torch.zeros(T, T)
    a[:, 0] = 1.0
    return a


def check_rows(a: torch.Tensor):
    torch.testing.assert_close(a.sum(-1), torch.ones(a.shape[:-1]))  # every query row sums to 1


# ---------------------------------------------------------------- capture


def manual_first_layer_attention(model: GPT, ids: list[int]) -> torch.Tensor:
    """Layer 0's weights recomputed from the parameters: softmax(q k^T / sqrt(hs)) with a causal mask."""
    c = model.config
    idx = torch.tensor([ids])
    x = model.transformer.wte.weight[idx] + model.transformer.wpe.weight[: len(ids)]  # (1, T, C)
    h = model.transformer.h[0]
    q, k, _ = h.attn.c_attn(h.ln_1(x)).split(c.n_embd, dim=2)
    hs = c.n_embd // c.n_head
    q = q.view(1, len(ids), c.n_head, hs).transpose(1, 2)  # (1, nh, T, hs)
    k = k.view(1, len(ids), c.n_head, hs).transpose(1, 2)
    scores = q @ k.transpose(-2, -1) / math.sqrt(hs)
    future = torch.triu(torch.ones(len(ids), len(ids), dtype=torch.bool), 1)
    return torch.softmax(scores.masked_fill(future, float("-inf")), dim=-1)[0]


def test_capture_minigpt_shapes_rows_and_values():
    model = tiny_gpt()
    model.train()
    ids = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    attn = capture_attention(model, ids)
    assert model.training, "capture_attention must restore the training mode"
    assert attn.n_layer == 2 and attn.n_head == 2 and attn.T == len(ids)
    assert attn.token_ids == ids and attn.tokens == [str(i) for i in ids]
    for w in attn.weights:
        assert w.shape == (2, len(ids), len(ids))
        check_rows(w)
        assert torch.all(torch.triu(w, 1) == 0), "a causal model must not attend to the future"
    with torch.no_grad():
        ref = manual_first_layer_attention(model, ids)
    torch.testing.assert_close(attn.weights[0], ref, rtol=1e-5, atol=1e-6)


def test_capture_text_and_tensor_inputs():
    tok = CharTokenizer.from_text("the cat sat\non a mat")
    model = tiny_gpt(vocab=tok.vocab_size)
    a = capture_attention(model, "the cat", tok)
    assert a.tokens == ["t", "h", "e", "␣", "c", "a", "t"]
    b = capture_attention(model, torch.tensor([tok.encode("the cat")]))
    torch.testing.assert_close(a.stack(), b.stack())
    assert capture_attention(model, "a\nt", tok).tokens == ["a", "\\n", "t"]
    with pytest.raises(ValueError, match="tokenizer"):
        capture_attention(model, "the cat")
    with pytest.raises(ValueError, match="no tokens"):
        capture_attention(model, [])
    with pytest.raises(IndexError, match="2 layers"):
        a.head(5, 0)


def _tiny_hf(impl: str):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=40, n_positions=32, n_embd=16, n_layer=2, n_head=2,
                                  bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel._from_config(cfg, attn_implementation=impl)


def test_capture_huggingface_eager_matches_minigpt_conversion():
    from minigpt.hf import gpt2_to_minigpt

    hf_model = _tiny_hf("eager")
    ids = list(range(3, 15))
    attn = capture_attention(hf_model, ids)
    assert attn.source == "huggingface" and attn.n_layer == 2 and attn.n_head == 2
    for w in attn.weights:
        assert w.shape == (2, 12, 12)
        check_rows(w)
    # the same weights in minigpt give the same attention: an independent implementation
    ours = capture_attention(gpt2_to_minigpt(hf_model), ids)
    torch.testing.assert_close(attn.stack(), ours.stack(), rtol=1e-4, atol=1e-5)


def test_capture_huggingface_sdpa_raises_clear_error():
    hf_model = _tiny_hf("sdpa")
    with pytest.raises(AttentionUnavailableError, match='attn_implementation="eager"'):
        capture_attention(hf_model, [1, 2, 3])


# ---------------------------------------------------------------- metrics on hand-built maps


def test_previous_token_map_scores_one():
    a = prev_token_map()
    assert previous_token_score(a) == pytest.approx(1.0)
    assert self_score(a) == pytest.approx(0.0)
    assert head_entropy(a) == pytest.approx(0.0, abs=1e-6)
    assert sink_score(a) == pytest.approx(1 / (T - 1))  # only query 1's previous token is the first


def test_uniform_causal_attention_has_maximal_entropy():
    a = uniform_causal_map()
    assert head_entropy(a, normalize=True) == pytest.approx(1.0)
    expected = sum(math.log(i + 1) for i in range(1, T)) / (T - 1)  # H of uniform over i+1 keys
    assert head_entropy(a) == pytest.approx(expected, rel=1e-5)
    # any other causal map has lower normalised entropy
    assert head_entropy(prev_token_map(), normalize=True) < 0.01
    peaked = 0.5 * uniform_causal_map() + 0.5 * torch.eye(T)
    assert head_entropy(peaked, normalize=True) < 1.0
    # non-causal uniform attention over all T keys is maximal too
    full = torch.full((T, T), 1 / T)
    assert head_entropy(full, normalize=True, causal=False) == pytest.approx(1.0)


def test_identity_and_sink_maps():
    assert self_score(torch.eye(T)) == pytest.approx(1.0)
    assert previous_token_score(torch.eye(T)) == pytest.approx(0.0)
    assert sink_score(sink_map()) == pytest.approx(1.0)
    assert self_score(sink_map()) == pytest.approx(0.0)  # query 0 is left out of every average
    # batched: (L, nh, T, T) -> (L, nh)
    stack = torch.stack([torch.stack([torch.eye(T), sink_map()])])
    torch.testing.assert_close(self_score(stack), torch.tensor([[1.0, 0.0]]))


def test_induction_targets_and_perfect_induction_map():
    assert induction_targets([5, 6, 7, 5, 6, 7]) == [(3, 1), (4, 2), (5, 3)]
    assert induction_targets([1, 1, 1]) == [(1, 1), (2, 2)]  # latest previous occurrence wins
    ids = repeated_random_tokens(50, 6, seed=1)
    assert len(ids) == 12 and ids[:6] == ids[6:] and len(set(ids[:6])) == 6
    a = uniform_causal_map(12)
    for q, k in induction_targets(ids):
        a[q] = 0.0
        a[q, k] = 1.0
    assert induction_score(a, ids) == pytest.approx(1.0)
    # uniform attention: 1 / (q + 1) on the target of each query 6..11
    expected = sum(1 / (q + 1) for q in range(6, 12)) / 6
    assert induction_score(uniform_causal_map(12), ids) == pytest.approx(expected, rel=1e-5)
    assert induction_score(prev_token_map(12), ids) == pytest.approx(0.0)
    with_bos = repeated_random_tokens(50, 6, seed=1, first=0)
    assert with_bos[0] == 0 and 0 not in with_bos[1:] and len(with_bos) == 13
    with pytest.raises(ValueError, match="nothing to induce"):
        induction_score(uniform_causal_map(3), [1, 2, 3])


def test_induction_scores_of_a_model_have_head_shape():
    model = tiny_gpt()
    s = induction_scores(model, period=5)
    assert s.shape == (2, 2) and torch.all((s >= 0) & (s <= 1))


def test_classify_heads_labels_hand_built_heads():
    layer = torch.stack([prev_token_map(), uniform_causal_map(), torch.eye(T), sink_map(),
                         0.6 * torch.eye(T) + 0.4 * prev_token_map()])  # (5, T, T)
    ind = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])
    metrics = head_metrics(layer.unsqueeze(0), induction=ind)
    assert set(metrics) == {"entropy", "entropy_norm", "self", "previous_token", "sink", "induction"}
    rows = classify_heads(metrics, as_frame=False)
    assert [r["label"] for r in rows] == ["previous-token", "diffuse", "self", "sink", "self"]
    # 0.6 self + 0.4 previous is no clear pattern once the bars are raised to 0.9
    rows = classify_heads(metrics, {"previous_token": 0.9, "self": 0.9}, as_frame=False)
    assert rows[4]["label"] == "mixed"
    ind_metrics = dict(metrics, induction=torch.tensor([[0.0, 0.9, 0.0, 0.0, 0.0]]))
    assert classify_heads(ind_metrics, as_frame=False)[1]["label"] == "induction"
    pd = pytest.importorskip("pandas")
    frame = classify_heads(metrics)
    assert isinstance(frame, pd.DataFrame) and list(frame["label"])[:2] == ["previous-token", "diffuse"]


def test_rollout_matches_hand_computation():
    # layer 1: heads [[1,0],[.5,.5]] and identity -> mean [[1,0],[.25,.75]]; + I, rows / 2 -> [[1,0],[.125,.875]]
    # layer 2: both heads [[1,0],[1,0]] -> + I, rows / 2 -> [[1,0],[.5,.5]]
    l1 = torch.tensor([[[1.0, 0.0], [0.5, 0.5]], [[1.0, 0.0], [0.0, 1.0]]])
    l2 = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[1.0, 0.0], [1.0, 0.0]]])
    r = attention_rollout(torch.stack([l1, l2]))
    torch.testing.assert_close(r, torch.tensor([[1.0, 0.0], [0.5625, 0.4375]]))
    steps = attention_rollout(torch.stack([l1, l2]), return_all=True)
    torch.testing.assert_close(steps[0], torch.tensor([[1.0, 0.0], [0.125, 0.875]]))
    # without the residual it is the plain product of head-averaged maps
    plain = attention_rollout(torch.stack([l1, l2]), add_residual=False)
    torch.testing.assert_close(plain, l2.mean(0) @ l1.mean(0))
    model_rollout = attention_rollout(capture_attention(tiny_gpt(), [1, 2, 3, 4]))
    check_rows(model_rollout)


def test_top_attended_text_and_pairs():
    a = torch.tensor([[1.0, 0.0, 0.0], [0.3, 0.7, 0.0], [0.6, 0.15, 0.25]])
    attn = Attention([a.unsqueeze(0)], ["The", "cat", "sat"], [0, 1, 2])
    pairs = top_attended_pairs(attn, layer=0, head=0, k=3)
    assert pairs[0] == (0, [(0, 1.0)])  # zero weights (the future) are never listed
    assert [j for j, _ in pairs[2][1]] == [0, 2, 1]
    text = top_attended(attn, layer=0, head=0, k=2, queries=[2])
    assert "'sat' (position 2) attends most to:" in text
    assert "1. 'The' (position 0, weight: 0.60)" in text and "2. 'sat' (position 2, weight: 0.25)  # itself" in text
    assert "'cat'" not in text.split("\n", 2)[2]  # k=2 cuts the third key
    with pytest.raises(ValueError, match="tokens"):
        top_attended(a, layer=0)


# ---------------------------------------------------------------- files and CLI


def test_analyze_attention_untrained_writes_png_and_json(tmp_path):
    result = analyze_attention(None, "to be or not", out=tmp_path, layer=1, head=0)
    assert "untrained" in result["model"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["head_metrics.png", "layer1_head0.png", "layer1_heads.png", "metrics.json", "rollout.png"]
    data = json.loads((tmp_path / "metrics.json").read_text())
    assert len(data["heads"]) == data["n_layer"] * data["n_head"] and data["tokens"][2] == "␣"
    assert all(r["label"] in {"previous-token", "self", "sink", "induction", "diffuse", "mixed"} for r in data["heads"])
    assert (tmp_path / "rollout.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_with_checkpoint(tmp_path, capsys):
    from minigpt.checkpoint import save_checkpoint

    tok = CharTokenizer.from_text("hello world")
    model = tiny_gpt(vocab=tok.vocab_size, n_layer=1)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=tok, step=7)
    out = tmp_path / "figs"
    argv = ["analyze-attention", "--checkpoint", str(tmp_path / "ckpt"), "--text", "hello", "--out", str(out)]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "step 7" in printed and "wrote" in printed
    data = json.loads((out / "metrics.json").read_text())
    assert data["tokens"] == list("hello") and data["n_layer"] == 1
    with pytest.raises(ValueError, match="trained on"):
        analyze_attention(tmp_path / "ckpt", "HELLO?", out=out)
    assert main(["analyze-attention", "--checkpoint", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def test_add_cli_registers_subcommand():
    import argparse

    parser = argparse.ArgumentParser()
    add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["analyze-attention", "--text", "hi", "--layer", "1", "--head", "2", "--show"])
    assert (args.text, args.layer, args.head, args.show, args.checkpoint) == ("hi", 1, 2, True, None)
    assert callable(args.func)
