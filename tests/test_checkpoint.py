"""Checkpoints: round trips for every model class, tied weights, prefixes, refusals with clear
messages, no unpickling, atomic replacement, and RNG state that survives weights_only loading."""

import json
import random

import numpy as np
import pytest
import torch
from _train_helpers import TinyConfig, TinyLM
from safetensors import safe_open

import minigpt.checkpoint as ckpt
from minigpt.baselines import MLPLM, BigramLM, MLPConfig
from minigpt.checkpoint import (
    CheckpointError,
    latest_checkpoint,
    load_checkpoint,
    load_train_state,
    read_meta,
    register_model,
    save_checkpoint,
    strip_prefixes,
)
from minigpt.model import GPT, GPTConfig
from minigpt.seq2seq import Transformer, TransformerConfig
from minigpt.tokenizer import CharTokenizer
from minigpt.train import _rng_state, _set_rng_state


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors; avoids OpenMP barrier costs on a busy 2-core box
    yield
    torch.set_num_threads(n)


def small_gpt(**kw) -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=2, n_head=2, n_embd=16, **kw))


def test_gpt_roundtrip_stores_tied_weight_once_and_reties(tmp_path):
    model = small_gpt()
    tok = CharTokenizer.from_text("hello world!")
    save_checkpoint(tmp_path / "c", model, tokenizer=tok, step=5, best_val_loss=1.5,
                    train_config={"lr": 1e-3}, metadata={"note": "x"})
    with safe_open(tmp_path / "c" / "model.safetensors", "pt") as f:
        keys = set(f.keys())
    assert "transformer.wte.weight" in keys and "lm_head.weight" not in keys
    loaded, info = load_checkpoint(tmp_path / "c" / "model.safetensors")  # the file works as well as the folder
    assert isinstance(loaded, GPT) and loaded.config == model.config and not loaded.training
    assert loaded.lm_head.weight is loaded.transformer.wte.weight
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    idx = torch.randint(13, (2, 8))
    torch.testing.assert_close(loaded(idx)[0], model.eval()(idx)[0], rtol=0, atol=0)
    assert (info.step, info.best_val_loss, info.train_config, info.metadata) == (5, 1.5, {"lr": 1e-3}, {"note": "x"})
    assert info.tokenizer.encode("hello") == tok.encode("hello") and info.minigpt_version


def test_untied_gpt_keeps_both_matrices(tmp_path):
    model = small_gpt(tie_weights=False)
    save_checkpoint(tmp_path / "c", model)
    loaded, _ = load_checkpoint(tmp_path / "c")
    assert loaded.lm_head.weight is not loaded.transformer.wte.weight
    assert torch.equal(loaded.lm_head.weight, model.lm_head.weight)


@pytest.mark.parametrize("make", [
    lambda: BigramLM(7),
    lambda: MLPLM(MLPConfig(vocab_size=9, context=3, n_embd=4, hidden=8)),
    lambda: Transformer(TransformerConfig(src_vocab_size=9, tgt_vocab_size=9, d_model=16, n_head=2,
                                          n_encoder_layers=1, n_decoder_layers=1, d_ff=32, max_len=8)),
], ids=["bigram", "mlp", "seq2seq"])
def test_every_course_model_is_rebuilt_from_the_registry(tmp_path, make):
    model = make()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))  # not the init, so equality below means the weights were loaded
    save_checkpoint(tmp_path / "c", model)
    loaded, info = load_checkpoint(tmp_path / "c")
    assert type(loaded) is type(model) and loaded.config == model.config
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)


class _CompiledLike(torch.nn.Module):
    """Holds the model as `_orig_mod`, exactly like torch.compile's wrapper (without compiling)."""

    def __init__(self, model):
        super().__init__()
        self._orig_mod = model


def test_compile_and_ddp_prefixes_are_stripped(tmp_path):
    from safetensors.torch import save_file

    assert strip_prefixes({"module._orig_mod.a.b": 1, "_orig_mod.module.c": 2, "d": 3}) == {"a.b": 1, "c": 2, "d": 3}
    model = small_gpt()
    assert next(iter(_CompiledLike(model).state_dict())).startswith("_orig_mod.")
    save_checkpoint(tmp_path / "c", _CompiledLike(torch.nn.DataParallel(model)))
    with safe_open(tmp_path / "c" / "model.safetensors", "pt") as f:
        assert set(f.keys()) == set(model.state_dict()) - {"lm_head.weight"}
    # a file whose keys carry the prefixes (saved by other tools) loads into a wrapped model too
    prefixed = {f"module._orig_mod.{k}": v.clone() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    save_file(prefixed, tmp_path / "c" / "model.safetensors")
    meta = json.loads((tmp_path / "c" / "meta.json").read_text())
    del meta["sha256"]["model.safetensors"]  # another tool's file: no checksum to compare with
    (tmp_path / "c" / "meta.json").write_text(json.dumps(meta))
    target = _CompiledLike(small_gpt())
    with torch.no_grad():
        target._orig_mod.transformer.wte.weight.zero_()
    load_checkpoint(tmp_path / "c", model=target)
    assert torch.equal(target._orig_mod.transformer.wte.weight, model.transformer.wte.weight)


def test_architecture_mismatch_names_the_fields(tmp_path):
    save_checkpoint(tmp_path / "c", small_gpt())
    other = GPT(GPTConfig(vocab_size=13, block_size=8, n_layer=1, n_head=2, n_embd=32))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "c", model=other)
    assert "n_layer: checkpoint=2 model=1" in str(err.value) and "n_embd" in str(err.value)
    assert "block_size" not in str(err.value)  # only the differing fields
    with pytest.raises(CheckpointError, match="holds a GPT but the model given is a BigramLM"):
        load_checkpoint(tmp_path / "c", model=BigramLM(13))


def test_truncated_foreign_and_missing_files_give_clear_errors(tmp_path):
    save_checkpoint(tmp_path / "c", small_gpt(), train_state={"step": 1})
    weights = tmp_path / "c" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_checkpoint(tmp_path / "c")
    weights.write_bytes(b"PK\x03\x04 this is a zip, not safetensors" * 10)
    with pytest.raises(CheckpointError, match="truncated or not a safetensors file"):
        load_checkpoint(tmp_path / "c")
    state = tmp_path / "c" / "train_state.pt"
    state.write_bytes(state.read_bytes()[:50])
    with pytest.raises(CheckpointError, match="truncated"):
        load_train_state(tmp_path / "c")
    (tmp_path / "c" / "meta.json").write_text('{"format": "minigpt-chec')
    with pytest.raises(CheckpointError, match="unreadable or truncated"):
        read_meta(tmp_path / "c")
    (tmp_path / "c" / "meta.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(CheckpointError, match="not a minigpt checkpoint"):
        load_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "nowhere")
    (tmp_path / "file.bin").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="is a file"):
        load_checkpoint(tmp_path / "file.bin")
    assert latest_checkpoint(tmp_path / "nowhere") is None


class _Evil:
    def __reduce__(self):
        return (open, ("/tmp/minigpt_pwned_marker", "w"))


def test_training_state_is_never_unpickled(tmp_path):
    import os

    marker = "/tmp/minigpt_pwned_marker"
    if os.path.exists(marker):
        os.remove(marker)
    save_checkpoint(tmp_path / "c", small_gpt(), train_state={"step": 1})
    torch.save({"step": 1, "payload": _Evil()}, tmp_path / "c" / "train_state.pt")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_train_state(tmp_path / "c")
    assert not os.path.exists(marker)


def test_crash_mid_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    model = small_gpt()
    save_checkpoint(tmp_path / "ckpt", model, step=1, train_state={"step": 1})
    real = ckpt._write_bytes

    def crash_on_meta(path, data):
        if path.name == "meta.json":
            raise OSError("disk full")
        real(path, data)

    monkeypatch.setattr(ckpt, "_write_bytes", crash_on_meta)
    with torch.no_grad():
        model.transformer.wte.weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path / "ckpt", model, step=2)
    monkeypatch.undo()
    loaded, info = load_checkpoint(latest_checkpoint(tmp_path))
    assert info.step == 1 and load_train_state(tmp_path / "ckpt")["step"] == 1
    assert not torch.equal(loaded.transformer.wte.weight, model.transformer.wte.weight)
    # a crash between the two renames leaves only the .old copy: loading falls back to it
    (tmp_path / "ckpt").rename(tmp_path / ".ckpt.old")
    assert latest_checkpoint(tmp_path) == tmp_path / ".ckpt.old"
    assert load_checkpoint(tmp_path / "ckpt")[1].step == 1
    # a later successful save replaces everything and cleans up
    save_checkpoint(tmp_path / "ckpt", model, step=3)
    assert load_checkpoint(tmp_path / "ckpt")[1].step == 3


def test_unregistered_class_needs_register_model_or_model_argument(tmp_path):
    model = TinyLM(TinyConfig())
    save_checkpoint(tmp_path / "c", model)
    with pytest.raises(CheckpointError, match="register_model"):
        load_checkpoint(tmp_path / "c")
    loaded, _ = load_checkpoint(tmp_path / "c", model=TinyLM(TinyConfig()))
    assert torch.equal(loaded.head.weight, model.head.weight)
    register_model("TinyLM", "_train_helpers:TinyLM")
    try:
        rebuilt, _ = load_checkpoint(tmp_path / "c")
        assert rebuilt.config == TinyConfig() and torch.equal(rebuilt.emb.weight, model.emb.weight)
    finally:
        ckpt.MODEL_REGISTRY.pop("TinyLM")


def test_rng_states_survive_weights_only_loading(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    np.random.randn()  # leaves a cached gaussian in numpy's state
    save_checkpoint(tmp_path / "c", small_gpt(), train_state={"rng": _rng_state()})
    expected = (random.random(), np.random.randn(3).tolist(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    _set_rng_state(load_train_state(tmp_path / "c")["rng"])
    assert (random.random(), np.random.randn(3).tolist()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])


# ---------------------------------------------------------------------------- resolve_checkpoint


def _tiny_saved(path):
    return ckpt.save_checkpoint(path, GPT(GPTConfig(vocab_size=5, block_size=4, n_layer=1, n_head=1, n_embd=4)))


def test_resolve_checkpoint_accepts_every_way_of_naming_one(tmp_path):
    out = tmp_path / "run"
    latest = _tiny_saved(out / "ckpt")
    assert ckpt.resolve_checkpoint(out) == latest  # no best/ yet: the latest
    best = _tiny_saved(out / "best")
    assert ckpt.resolve_checkpoint(out) == best  # an output folder means its best weights
    assert ckpt.resolve_checkpoint(out / "ckpt") == latest
    assert ckpt.resolve_checkpoint(out / "ckpt" / "model.safetensors") == latest
    assert ckpt.resolve_checkpoint(out / "best" / "meta.json") == best


def test_resolve_checkpoint_falls_back_to_the_copy_an_interrupted_save_left(tmp_path):
    old = _tiny_saved(tmp_path / "run" / ".ckpt.old")
    assert ckpt.resolve_checkpoint(tmp_path / "run") == old


def test_resolve_checkpoint_says_where_it_looked(tmp_path):
    with pytest.raises(CheckpointError) as e:
        ckpt.resolve_checkpoint(tmp_path / "nothing")
    msg = str(e.value)
    for place in ("nothing/meta.json", "nothing/best/meta.json", "nothing/ckpt/meta.json"):
        assert place in msg
    assert "minigpt train" in msg
    with pytest.raises(CheckpointError, match="not .pt files"):
        ckpt.resolve_checkpoint(tmp_path / "model.pt")


def test_cli_reexports_resolve_checkpoint():
    from minigpt import cli

    assert cli.resolve_checkpoint is ckpt.resolve_checkpoint
