"""`minigpt export --to hf`: every supported architecture gives the same logits and the same greedy
text in Hugging Face transformers; unsupported ones are refused naming the field. Offline only."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from minigpt.checkpoint import save_checkpoint  # noqa: E402
from minigpt.generation import generate  # noqa: E402
from minigpt.hf.export import ExportError, export_hf, hf_architecture, to_hf_model, to_hf_tokenizer  # noqa: E402
from minigpt.model import GPT, GPTConfig  # noqa: E402
from minigpt.tokenizer import BPETokenizer, CharTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TEXT = "".join(f"ROMEO:\nBut soft, what light through yonder {w} breaks?\nJULIET: {w}!\n\n"
               for w in ("window", "door", "east", "sun", "Zounds; 'tis 3 o'clock")) * 4
CHARS = CharTokenizer.from_text(TEXT)
SMALL = dict(block_size=48, n_layer=2, n_head=4, n_embd=32)

# name -> (config fields, the Hugging Face class it must become)
SUPPORTED = {
    "gpt2": (dict(), "GPT2LMHeadModel"),
    "gpt2-no-bias-gelu-untied": (dict(bias=False, activation="gelu", tie_weights=False), "GPT2LMHeadModel"),
    "neox-shakespeare-cpu": (dict(position="rope", activation="gelu"), "GPTNeoXForCausalLM"),
    "neox-no-bias-relu": (dict(position="rope", activation="relu", bias=False, rope_base=500.0, d_ff=48),
                          "GPTNeoXForCausalLM"),
    "llama-gqa": (dict(position="rope", norm="rmsnorm", activation="swiglu", bias=False, n_kv_head=2,
                       layer_norm_eps=1e-6, rope_base=500.0), "LlamaForCausalLM"),
    "llama-bias-untied": (dict(position="rope", norm="rmsnorm", activation="swiglu", tie_weights=False),
                          "LlamaForCausalLM"),
}


def random_gpt(vocab_size: int, seed: int = 0, **fields) -> GPT:
    """A GPT whose every weight (norms and biases too) is random, so a wrongly mapped tensor shows."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=vocab_size, **{**SMALL, **fields}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def greedy_minigpt(model: GPT, tokenizer, prompt: str, n: int) -> str:
    """What `minigpt generate --greedy` prints (without its newline): decode(prompt ids + new ids)."""
    idx = torch.tensor([tokenizer.encode(prompt)])
    return tokenizer.decode(generate(model, idx, n, greedy=True)[0].tolist())


@pytest.mark.parametrize("name", list(SUPPORTED))
def test_export_matches_logits_and_greedy_text(name, tmp_path):
    fields, arch = SUPPORTED[name]
    model = random_gpt(CHARS.vocab_size, **fields)
    assert hf_architecture(model.config) == arch
    save_checkpoint(tmp_path / "run" / "best", model, tokenizer=CHARS, step=1)
    out = export_hf(tmp_path / "run", tmp_path / "hf")  # an output folder resolves to its best/
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(out)
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf_model).__name__ == arch

    idx = torch.tensor([CHARS.encode(TEXT[: SMALL["block_size"]]), CHARS.encode(TEXT[7: 7 + SMALL["block_size"]])])
    with torch.no_grad():
        ours, _ = model(idx)
        theirs = hf_model(idx).logits
    assert ours.std() > 0.1  # the random weights give logits that are not trivially equal
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)

    prompt, n = "ROMEO:", 30
    expected = greedy_minigpt(model, CHARS, prompt, n)
    pipe = transformers.pipeline("text-generation", model=str(out), tokenizer=hf_tok)
    got = pipe(prompt, max_new_tokens=n, do_sample=False)[0]["generated_text"]
    assert got == expected


def test_cli_export_default_preset_shape_equals_minigpt_generate(tmp_path):
    """The default preset's architecture (RoPE + LayerNorm + exact GELU) through both command lines."""
    vocab = CharTokenizer.from_text(TEXT)
    model = random_gpt(vocab.vocab_size, seed=1, position="rope", activation="gelu")
    save_checkpoint(tmp_path / "demo" / "ckpt", model, tokenizer=vocab, step=2)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TQDM_DISABLE": "1"}

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "minigpt", *args], capture_output=True, text=True,
                              env=env, cwd=tmp_path, timeout=120)

    r = cli("export", "demo", "--to", "hf", "demo-hf")
    assert r.returncode == 0, r.stderr
    assert "GPTNeoXForCausalLM" in r.stdout
    gen = cli("generate", "--checkpoint", "demo", "--greedy", "--prompt", "JULIET:", "--length", "25")
    assert gen.returncode == 0, gen.stderr
    pipe = transformers.pipeline("text-generation", model=str(tmp_path / "demo-hf"))
    got = pipe("JULIET:", max_new_tokens=25, do_sample=False)[0]["generated_text"]
    assert got + "\n" == gen.stdout
    meta = json.loads((tmp_path / "demo-hf" / "minigpt_export.json").read_text())
    assert meta["architecture"] == "GPTNeoXForCausalLM" and meta["step"] == 2

    missing = cli("export", "nowhere", "--to", "hf", "x")
    assert missing.returncode == 2 and "no checkpoint found" in missing.stderr and "Traceback" not in missing.stderr
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("fields, words", [
    (dict(position="sinusoidal"), "position='sinusoidal'"),
    (dict(position="none"), "position='none'"),
    (dict(prenorm=False), "prenorm=False"),
    (dict(position="rope", norm="rmsnorm", activation="gelu"), "norm='rmsnorm', activation='gelu'"),
    (dict(position="rope", activation="swiglu"), "norm='layernorm', activation='swiglu'"),
    (dict(position="learned", norm="rmsnorm"), "norm='rmsnorm'"),
    (dict(position="rope", activation="gelu", n_kv_head=2), "n_kv_head=2"),
    (dict(n_kv_head=1), "n_kv_head=1"),
])
def test_configs_without_an_exact_hf_architecture_are_refused_naming_the_field(fields, words):
    config = GPTConfig(vocab_size=20, **{**SMALL, **fields})
    with pytest.raises(ExportError) as e:
        hf_architecture(config)
    assert words in str(e.value)
    assert "LlamaForCausalLM" in str(e.value)  # the message lists what is supported


def test_refused_export_writes_nothing(tmp_path):
    model = random_gpt(CHARS.vocab_size, position="sinusoidal")
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=CHARS)
    with pytest.raises(ExportError, match="sinusoidal"):
        export_hf(tmp_path / "ckpt" / "model.safetensors", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


def test_only_gpt_models_export():
    from minigpt.baselines import BigramConfig, BigramLM

    with pytest.raises(ExportError, match="BigramLM"):
        to_hf_model(BigramLM(BigramConfig(vocab_size=10)))


def test_char_tokenizer_round_trips_every_shakespeare_character():
    from minigpt.data import SHAKESPEARE_FILENAME

    path = ROOT / "data" / SHAKESPEARE_FILENAME
    text = path.read_text(encoding="utf-8") if path.is_file() else TEXT  # the suite never downloads
    ours = CharTokenizer.from_text(text)
    hf_tok = to_hf_tokenizer(ours)
    sample = text[:200_000]
    ids = hf_tok(sample)["input_ids"]  # add_special_tokens defaults to True: nothing may be added
    assert ids == ours.encode(sample)
    assert hf_tok.decode(ids) == sample
    every = "".join(ours.chars)  # every character, spaces and newline included, each its own id
    assert hf_tok(every)["input_ids"] == list(range(ours.vocab_size))
    assert hf_tok.decode(list(range(ours.vocab_size))) == every
    assert hf_tok.decode(ours.encode("  a\n\n b ")) == "  a\n\n b "  # no stripping or space clean-up


def test_char_tokenizer_drops_unknown_characters_as_documented():
    hf_tok = to_hf_tokenizer(CHARS)
    assert "€" not in CHARS.stoi
    assert hf_tok("ab€c")["input_ids"] == CHARS.encode("abc")


def test_bpe_tokenizer_exports_with_the_same_ids(tmp_path):
    bpe = BPETokenizer.train(TEXT, vocab_size=300)
    model = random_gpt(bpe.vocab_size, position="rope", norm="rmsnorm", activation="swiglu", bias=False)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=bpe)
    out = export_hf(tmp_path / "ckpt", tmp_path / "hf")
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    assert hf_tok(TEXT)["input_ids"] == bpe.encode(TEXT)
    assert hf_tok.decode(bpe.encode(TEXT)) == TEXT
    expected = greedy_minigpt(model, bpe, "ROMEO:", 12)
    pipe = transformers.pipeline("text-generation", model=str(out))
    assert pipe("ROMEO:", max_new_tokens=12, do_sample=False)[0]["generated_text"] == expected


def test_half_precision_model_exports_as_float32_and_is_left_untouched():
    model = random_gpt(CHARS.vocab_size, position="rope", activation="gelu").to(torch.bfloat16)
    hf_model = to_hf_model(model)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert next(hf_model.parameters()).dtype == torch.float32
    # the reference: the same (bf16-rounded) weights in a float32 GPT, whose RoPE tables are float32 as HF's are
    ref = GPT(model.config).eval()
    ref.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    idx = torch.tensor([CHARS.encode("ROMEO: what light")])
    with torch.no_grad():
        torch.testing.assert_close(hf_model(idx).logits, ref(idx)[0], rtol=0, atol=1e-5)


def test_cli_without_transformers_says_what_to_install(tmp_path, monkeypatch, capsys):
    from minigpt.cli import main

    model = random_gpt(CHARS.vocab_size)
    save_checkpoint(tmp_path / "ckpt", model, tokenizer=CHARS)
    monkeypatch.setitem(sys.modules, "transformers", None)  # what a core-only install looks like
    assert main(["export", str(tmp_path / "ckpt"), "--to", "hf", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "pip install transformers" in err and "[hf]" in err
    assert not (tmp_path / "hf").exists()
