"""QUICK_REFERENCE.md must stay true to the code: presets, parameter counts, error texts."""

import re
from pathlib import Path

import pytest
import torch

from minigpt.generation import generate
from minigpt.model import GPT, PRESETS, GPTConfig
from minigpt.presets import get_preset

DOC = (Path(__file__).resolve().parents[1] / "QUICK_REFERENCE.md").read_text(encoding="utf-8")


def _table(heading: str) -> list[dict[str, str]]:
    section = DOC.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    lines = [ln for ln in section.splitlines() if ln.startswith("|")]
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))) for ln in lines[2:]]


def _count(name: str, **overrides) -> int:
    with torch.device("meta"):
        return GPT(GPTConfig.from_preset(name, **overrides)).num_params()


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def test_preset_table_matches_the_presets():
    rows = _table("Presets")
    assert {r["preset"] for r in rows} == set(get_preset.__globals__["TRAIN_PRESETS"])
    for r in rows:
        name = r["preset"]
        model, train = PRESETS[name], get_preset(name).train_config()
        for field in ("n_layer", "n_head", "n_embd", "block_size"):
            assert _int(r[field]) == getattr(model, field), (name, field)
        assert float(r["dropout"]) == model.dropout, name
        assert r["position"] == model.position, name
        assert r["optimizer"] == train.optimizer and r["schedule"] == train.schedule, name
        assert _int(r["parameters"]) == _count(name), name
        assert _int(r["batch_size"]) == train.batch_size, name
        assert float(r["lr"]) == train.lr, name
        assert _int(r["max_iters"]) == train.max_iters, name


def test_model_specifications_match_the_code():
    presets = {"character GPT": "shakespeare-cpu", "GPT-2 (": "gpt2", "GPT-2 medium": "gpt2-medium"}
    rows = _table("Model specifications")
    assert len(rows) == len(presets)
    for r in rows:
        name = next(p for key, p in presets.items() if r["model"].startswith(key))
        c = PRESETS[name]
        assert _int(r["vocabulary"].split()[0]) == c.vocab_size
        assert (_int(r["layers"]), _int(r["heads"]), _int(r["width"]), _int(r["context"])) == (
            c.n_layer, c.n_head, c.n_embd, c.block_size)
        assert _int(r["parameters"]) == _count(name)
    assert "124,439,808" in DOC and "ln 65 = 4.17" in DOC


def _raised(fn) -> str:
    with pytest.raises(Exception) as info:
        fn()
    return str(info.value)


def test_quoted_error_texts_are_what_the_library_prints(tmp_path):
    from minigpt.checkpoint import load_checkpoint
    from minigpt.data import check_length, read_text
    from minigpt.tokenizer import CharTokenizer

    model = GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=16))
    bad = tmp_path / "latin1.txt"
    bad.write_bytes(b"ab\xff\xfecd")
    messages = [
        _raised(lambda: CharTokenizer.from_text("hello world").encode("hello Ω\t")),
        _raised(lambda: GPTConfig(n_embd=100, n_head=3)),
        _raised(lambda: generate(model, torch.tensor([[1]]), 3, temperature=0)),
        _raised(lambda: generate(model, torch.tensor([[1]]), 3, top_p=1.5)),
        _raised(lambda: model(torch.zeros(1, 9, dtype=torch.long))),
        _raised(lambda: model(torch.tensor([[20]]))),
        _raised(lambda: read_text(bad)),
        _raised(lambda: check_length(50, 64)),
        _raised(lambda: load_checkpoint(tmp_path / "nothing")),
    ]
    quoted = [r["you see"].strip("`") for r in _table("Common errors and fixes")][: len(messages)]
    for text, message in zip(quoted, messages):
        assert text in message, f"QUICK_REFERENCE quotes {text!r}; the library says {message!r}"


def test_every_command_in_the_doc_names_a_real_subcommand():
    from minigpt.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest and "command" in a.dest)
    for cmd in re.findall(r"^minigpt (\S+)", DOC, flags=re.M):
        assert cmd in sub.choices, cmd
