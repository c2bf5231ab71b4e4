"""Hugging Face helpers for notebook 08: the offline fallback end to end, Trainer, LoRA, perplexity.

No test touches the network: the fallback is forced, and the hub probe is exercised with a patched
``urlopen``. The GPT-2 <-> minigpt conversion itself is tested in test_model.py.
"""

from __future__ import annotations

import math
import time
import urllib.error
import urllib.request

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

from minigpt import hf  # noqa: E402
from minigpt.hf import loading  # noqa: E402
from minigpt.hf.data import lm_datasets  # noqa: E402

TEXT = "".join(
    f"{who}:\nWhat {thing} through yonder {place} breaks? It is the {n}th {thing}.\n\n"
    for n, (who, thing, place) in enumerate([("ROMEO", "light", "window"), ("JULIET", "sun", "east")] * 60)
)
NOT_CACHED = "minigpt-tests/no-such-model"  # never in any cache, so the cache lookup always misses


@pytest.fixture(scope="module")
def fallback():
    model, tok, info = hf.load_causal_lm("gpt2", force_offline=True, fallback_text=TEXT, verbose=False)
    return model, tok, info


@pytest.fixture(scope="module")
def blocks(fallback, tmp_path_factory):
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return lm_datasets(fallback[1], path, block_size=32, val_fraction=0.2, cache_dir=path.parent / "cache")


def test_forced_fallback_prints_the_banner_and_returns_a_small_gpt2(capsys):
    t0 = time.perf_counter()
    model, tok, info = hf.load_causal_lm(force_offline=True, fallback_text=TEXT, attn_implementation="eager")
    elapsed = time.perf_counter() - t0
    banner = capsys.readouterr().out
    assert "HUB UNREACHABLE" in banner and "NOT PRETRAINED GPT-2" in banner
    assert "124,439,808" in banner and "HF_HOME" in banner  # what the real one is, and how to get it
    assert info.source == "fallback" and info.fallback and not info.pretrained
    assert info.num_params == sum(p.numel() for p in model.parameters())
    assert isinstance(model, transformers.GPT2LMHeadModel)
    c = model.config
    assert c.n_positions >= 256 and 2 <= c.n_layer <= 4 and 64 <= c.n_embd <= 128
    assert c.vocab_size == len(tok) and c.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.pad_token is None  # like GPT-2
    # eager attention really returns weights: rows of a causal softmax sum to 1
    ids = torch.tensor([tok("ROMEO: light")["input_ids"]])
    att = model(ids, output_attentions=True).attentions
    assert len(att) == c.n_layer and att[0].shape == (1, c.n_head, ids.shape[1], ids.shape[1])
    torch.testing.assert_close(att[0].sum(-1), torch.ones(1, c.n_head, ids.shape[1]))
    assert elapsed < 30


def test_fallback_is_seeded_and_leaves_the_global_rng_alone():
    state = torch.get_rng_state()
    a, _, _ = hf.load_causal_lm(force_offline=True, fallback_text=TEXT, verbose=False, seed=3)
    b, _, _ = hf.load_causal_lm(force_offline=True, fallback_text=TEXT, verbose=False, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.testing.assert_close(a.state_dict(), b.state_dict(), rtol=0, atol=0)


def test_uncached_model_and_unreachable_hub_fall_back_quickly(monkeypatch, capsys):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.delenv(hf.OFFLINE_ENV, raising=False)
    monkeypatch.setattr(loading, "hub_reachable", lambda timeout=3.0: False)
    t0 = time.perf_counter()
    _, _, info = hf.load_causal_lm(NOT_CACHED, fallback_text=TEXT)
    assert time.perf_counter() - t0 < 30
    assert info.fallback and "did not answer" in info.reason
    assert "NOT PRETRAINED" in capsys.readouterr().out
    with pytest.raises(OSError, match="offline_ok=True"):
        hf.load_causal_lm(NOT_CACHED, offline_ok=False, fallback_text=TEXT)


def test_hf_hub_offline_skips_the_network_probe(monkeypatch):
    monkeypatch.delenv(hf.OFFLINE_ENV, raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_probe(timeout=3.0):
        raise AssertionError("HF_HUB_OFFLINE is set: the hub must not be contacted")

    monkeypatch.setattr(loading, "hub_reachable", no_probe)
    _, _, info = hf.load_causal_lm(NOT_CACHED, fallback_text=TEXT, verbose=False)
    assert info.fallback and "HF_HUB_OFFLINE" in info.reason


def test_hub_probe_gives_up_after_its_timeout_and_counts_any_http_answer(monkeypatch):
    def hang(*args, **kwargs):  # a DNS lookup or connect that never returns in time
        time.sleep(5)

    monkeypatch.setattr(urllib.request, "urlopen", hang)
    monkeypatch.setattr(loading, "_unreachable_since", {})
    t0 = time.perf_counter()
    assert hf.hub_reachable(timeout=0.2) is False
    assert time.perf_counter() - t0 < 2
    t0 = time.perf_counter()
    assert hf.hub_reachable(timeout=0.2) is False  # remembered: the second call does not wait again
    assert time.perf_counter() - t0 < 0.1
    monkeypatch.setattr(loading, "_unreachable_since", {})

    def answers_405(*args, **kwargs):
        raise urllib.error.HTTPError("https://huggingface.co", 405, "Method Not Allowed", None, None)

    monkeypatch.setattr(urllib.request, "urlopen", answers_405)
    assert hf.hub_reachable(timeout=1) is True


def test_fallback_tokenizer_round_trips_any_text(fallback):
    tok = fallback[1]
    for text in ["ROMEO:\nWhat light through yonder window breaks?\n\n", "naïve café 🎭 — Übermut\t!"]:
        assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok("What light through yonder window breaks?")["input_ids"]) < 40  # subwords, not bytes


def test_fallback_tokenizer_is_trained_once_and_cached(monkeypatch, tmp_path):
    calls = []

    def fake_corpus(*args, **kwargs):
        calls.append(1)
        return TEXT

    monkeypatch.setattr(loading, "load_shakespeare", fake_corpus)
    a = hf.fallback_tokenizer(300, cache_dir=tmp_path)
    b = hf.fallback_tokenizer(300, cache_dir=tmp_path)
    assert len(calls) == 1 and (tmp_path / "gpt2_fallback_bpe_300.json").is_file()
    assert a.get_vocab() == b.get_vocab() and len(a) == 300


def test_training_args_follow_the_recipe(tmp_path):
    args = hf.make_training_args(tmp_path)
    assert (args.learning_rate, args.num_train_epochs, args.per_device_train_batch_size) == (5e-5, 3, 8)
    assert args.eval_strategy == "epoch" and args.max_steps == -1 and args.save_strategy == "no"
    budget = hf.make_training_args(tmp_path, max_steps=40)
    assert budget.max_steps == 40 and budget.eval_strategy == "steps" and budget.eval_steps == 10
    with pytest.raises(ValueError, match="learning_rate"):
        hf.make_training_args(tmp_path, learning_rate=0)


def test_perplexity():
    assert hf.perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert hf.perplexity(0.0) == 1.0 and hf.perplexity(1e4) == math.inf
    with pytest.raises(ValueError, match="diverged"):
        hf.perplexity(float("nan"))


def test_eval_perplexity_matches_a_hand_computed_cross_entropy(fallback, blocks):
    model = fallback[0].eval()
    val = blocks["validation"].select(range(7))  # 7 blocks: batches of 3, 3 and 1
    ids = torch.tensor(val["input_ids"])  # (N, T)
    with torch.no_grad():
        logits = model(ids).logits  # (N, T, V)
    # position t predicts token t + 1: drop the last logit and the first label
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1))
    assert hf.eval_perplexity(model, val, batch_size=3) == pytest.approx(math.exp(ref.item()), rel=1e-4)


def test_trainer_runs_steps_and_reports_the_true_eval_loss(blocks, tmp_path):
    model, tok, _ = hf.load_causal_lm(force_offline=True, fallback_text=TEXT, verbose=False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = hf.make_training_args(
        tmp_path, max_steps=2, batch_size=4, learning_rate=1e-3, logging_steps=1, disable_tqdm=True
    )
    val = blocks["validation"].select(range(4))
    trainer = hf.make_trainer(model, tok, blocks["train"], val, args)
    trainer.train()
    assert trainer.state.global_step == 2
    hist = hf.log_history(trainer)
    assert hist["step"] == [1, 2] and len(hist["eval_loss"]) >= 1 and all(math.isfinite(x) for x in hist["loss"])
    changed = [k for k, v in model.state_dict().items() if not torch.equal(v, before[k])]
    assert "transformer.h.0.attn.c_attn.weight" in changed
    # Trainer's eval_loss is the per-token mean over the T - 1 predicted tokens of each block
    eval_loss = trainer.evaluate()["eval_loss"]
    assert math.exp(eval_loss) == pytest.approx(hf.eval_perplexity(model, val), rel=1e-4)


def test_save_pretrained_round_trip_keeps_logits_and_the_fallback_label(fallback, tmp_path):
    model, tok, _ = fallback
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    again, tok2, info = hf.load_causal_lm(str(tmp_path))
    assert info.source == "local" and not info.pretrained  # a saved fallback is still not GPT-2
    ids = torch.tensor([tok("JULIET:\nsun")["input_ids"]])
    assert tok2("JULIET:\nsun")["input_ids"] == ids[0].tolist()
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(ids).logits, model.eval()(ids).logits)


def test_lora_trains_only_the_adapters(fallback, blocks):
    base, _, _ = hf.load_causal_lm(force_offline=True, fallback_text=TEXT, verbose=False)
    ids = torch.tensor(blocks["train"]["input_ids"][:2])
    with torch.no_grad():
        ref = base.eval()(ids).logits
    r = 4
    lora = hf.add_lora(base, r=r, alpha=8, dropout=0.0)
    trainable, total = hf.count_parameters(lora)
    C, L = base.config.n_embd, base.config.n_layer
    assert trainable == L * r * (C + 3 * C)  # A: (C, r), B: (r, 3C) on every c_attn
    assert total == fallback[2].num_params + trainable
    with torch.no_grad():  # B starts at zero: the adapted model computes what the base did
        torch.testing.assert_close(lora.eval()(ids).logits, ref)
    frozen = {n: p.detach().clone() for n, p in lora.named_parameters() if not p.requires_grad}
    opt = torch.optim.AdamW([p for p in lora.parameters() if p.requires_grad], lr=1e-2)
    lora.train()
    lora(input_ids=ids, labels=ids).loss.backward()
    opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in lora.named_parameters() if n in frozen)
    with pytest.raises(ValueError, match="c_attn"):
        hf.add_lora(transformers.GPT2LMHeadModel(base.config), target_modules=("q_proj",))


def test_sample_text_is_reproducible(fallback):
    model, tok, _ = fallback
    a = hf.sample_text(model, tok, "ROMEO:", 12, seed=1)
    b = hf.sample_text(model, tok, "ROMEO:", 12, seed=1)
    assert a == b and a.startswith("ROMEO:")
    greedy = hf.sample_text(model, tok, "ROMEO:", 5, do_sample=False)
    assert greedy.startswith("ROMEO:")
    with pytest.raises(ValueError, match="prompt is empty"):
        hf.sample_text(model, tok, "")


def test_fallback_converts_to_minigpt_with_identical_logits(fallback):
    model, tok, _ = fallback
    ours = hf.gpt2_to_minigpt(model).eval()
    ids = torch.tensor([tok("ROMEO:\nWhat light")["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(ours(ids)[0], model.eval()(ids).logits, rtol=1e-5, atol=1e-5)
