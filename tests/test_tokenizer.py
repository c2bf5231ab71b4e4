import json

import pytest
import torch

from minigpt.tokenizer import BPETokenizer, CharTokenizer, UnknownCharacterError

SHAKESPEARE_LIKE = """First Citizen:
Before we proceed any further, hear me speak.

All:
Speak, speak.

First Citizen:
You are all resolved rather to die than to famish?

All:
Resolved. resolved!
KING RICHARD III:
Now is the winter of our discontent; made glorious summer by this sun of York & co--
'Tis 3 o'clock? $x
"""


# ---------------------------------------------------------------- CharTokenizer


def test_char_vocab_is_sorted_unique_chars():
    tok = CharTokenizer.from_text("hello world")
    assert tok.chars == [" ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.vocab_size == 8 == len(tok)
    # ids follow sorted (code point) order
    assert tok.encode("dew") == [1, 2, 7]


def test_char_round_trip_shakespeare_like():
    tok = CharTokenizer.from_text(SHAKESPEARE_LIKE)
    ids = tok.encode(SHAKESPEARE_LIKE)
    assert len(ids) == len(SHAKESPEARE_LIKE)
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == SHAKESPEARE_LIKE
    # decode accepts a 1-D tensor as produced by a model
    assert tok.decode(torch.tensor(ids)) == SHAKESPEARE_LIKE


def test_char_round_trip_real_shakespeare_if_present():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "data" / "tinyshakespeare.txt"
    if not path.exists():
        pytest.skip("data/tinyshakespeare.txt not cached")
    text = path.read_text(encoding="utf-8")
    tok = CharTokenizer.from_text(text)
    assert tok.vocab_size == 65  # the well-known nanoGPT shakespeare_char figure
    assert tok.decode(tok.encode(text)) == text


def test_char_unknown_characters_are_listed():
    tok = CharTokenizer.from_text("abc ")
    with pytest.raises(UnknownCharacterError) as ei:
        tok.encode("a\tbΩ cΩ")
    msg = str(ei.value)
    assert repr("\t") in msg and repr("Ω") in msg
    assert "retrain" in msg
    assert ei.value.unknown == ["\t", "Ω"]  # each listed once, in first-seen order
    assert isinstance(ei.value, ValueError)


def test_char_decode_out_of_range_and_2d():
    tok = CharTokenizer.from_text("ab")
    with pytest.raises(ValueError, match="out of range"):
        tok.decode([0, 5])
    with pytest.raises(ValueError, match="1-D"):
        tok.decode(torch.zeros(2, 3, dtype=torch.long))


def test_char_save_load_round_trip(tmp_path):
    tok = CharTokenizer.from_text(SHAKESPEARE_LIKE + '\t"\\é')
    path = tmp_path / "sub" / "tok.json"
    tok.save(path)
    loaded = CharTokenizer.load(path)
    assert loaded == tok
    assert loaded.encode(SHAKESPEARE_LIKE) == tok.encode(SHAKESPEARE_LIKE)
    assert CharTokenizer.from_dict(tok.to_dict()) == tok
    # no temp files left behind by the atomic write
    assert [p.name for p in path.parent.iterdir()] == ["tok.json"]


def test_char_load_corrupt_or_foreign(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"chars": ["a", "b"', encoding="utf-8")  # truncated
    with pytest.raises(ValueError, match="corrupt"):
        CharTokenizer.load(bad)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"model": {"type": "BPE"}}), encoding="utf-8")
    with pytest.raises(ValueError, match="not a CharTokenizer"):
        CharTokenizer.load(foreign)
    with pytest.raises(FileNotFoundError, match="not found"):
        CharTokenizer.load(tmp_path / "missing.json")


def test_char_empty_text_rejected():
    with pytest.raises(ValueError, match="empty"):
        CharTokenizer.from_text("")


# ---------------------------------------------------------------- BPETokenizer


@pytest.fixture(scope="module")
def bpe():
    return BPETokenizer.train(SHAKESPEARE_LIKE * 20, vocab_size=300)


def test_bpe_vocab_size_and_merges(bpe):
    assert bpe.vocab_size == 300 == len(bpe)
    assert bpe.token_to_id("<|endoftext|>") == 0  # special tokens come first
    # merges compress: fewer tokens than UTF-8 bytes on the training text
    ids = bpe.encode(SHAKESPEARE_LIKE)
    assert len(ids) < len(SHAKESPEARE_LIKE.encode("utf-8")) * 0.7


@pytest.mark.parametrize(
    "text",
    [
        "Hello, world!",
        "  leading and trailing spaces  \n\n\ttabs",
        "ünïcödé Ωμέγα 日本語 한국어",
        "emoji 🤖🚀👩‍👩‍👧 and flags 🇫🇷",
        "\x00control\x7f bytes",
        "",
    ],
)
def test_bpe_round_trips_arbitrary_unicode(bpe, text):
    # byte-level: characters never seen in training still round-trip exactly
    ids = bpe.encode(text)
    assert all(0 <= i < bpe.vocab_size for i in ids)
    assert bpe.decode(ids) == text
    assert bpe.decode(torch.tensor(ids, dtype=torch.long)) == text


def test_bpe_unseen_text_uses_byte_tokens(bpe):
    # an emoji unseen in training costs one token per UTF-8 byte (4 for U+1F916)
    assert len(bpe.encode("🤖")) == len("🤖".encode()) == 4


def test_bpe_special_token_is_one_id(bpe):
    ids = bpe.encode("a<|endoftext|>b")
    assert 0 in ids
    assert bpe.decode(ids) == "a<|endoftext|>b"


def test_bpe_save_load_round_trip(bpe, tmp_path):
    path = tmp_path / "tokenizer.json"
    bpe.save(path)
    loaded = BPETokenizer.load(path)
    text = SHAKESPEARE_LIKE + " 🤖"
    assert loaded.encode(text) == bpe.encode(text)
    assert loaded.vocab_size == bpe.vocab_size
    # the file is a standard Hugging Face tokenizers JSON
    from tokenizers import Tokenizer

    assert Tokenizer.from_file(str(path)).encode(text).ids == bpe.encode(text)


def test_bpe_load_foreign(tmp_path):
    path = tmp_path / "char.json"
    CharTokenizer.from_text("abc").save(path)
    with pytest.raises(ValueError, match="not a byte-level BPE"):
        BPETokenizer.load(path)


def test_bpe_train_from_iterable_and_too_small_vocab():
    tok = BPETokenizer.train(iter(["abc abc abc", "abd abd"]), vocab_size=270)
    assert tok.decode(tok.encode("abd abc")) == "abd abc"
    with pytest.raises(ValueError, match="vocab_size >= 257"):
        BPETokenizer.train("abc", vocab_size=100)


def test_bpe_to_hf_matches(bpe):
    hf = bpe.to_hf()
    text = "Speak, speak. 🤖"
    assert hf(text)["input_ids"] == bpe.encode(text)
    assert hf.eos_token == hf.bos_token == hf.unk_token == "<|endoftext|>"
    assert hf.eos_token_id == 0
    assert hf.pad_token is None
    assert hf.decode(bpe.encode(text)) == text


# ---------------------------------------------------------------- BPETokenizer: merges and bytes of every id


def test_gpt2_byte_table_is_a_bijection_onto_printable_characters():
    from minigpt.tokenizer import gpt2_bytes_to_unicode

    table = gpt2_bytes_to_unicode()
    assert sorted(table) == list(range(256)) and len(set(table.values())) == 256
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("a")] == "a"
    assert all(c.isprintable() and not c.isspace() for c in table.values())


def test_bpe_merges_and_vocab_bytes_agree_with_tokenizers():
    text = SHAKESPEARE_LIKE * 3 + "naïve café 🤗 你好\r\n\x00"
    tok = BPETokenizer.train(text, vocab_size=300)
    vocab = tok.vocab_bytes()
    assert len(vocab) == tok.vocab_size and vocab[tok.token_to_id("<|endoftext|>")] == b"<|endoftext|>"
    assert sorted(len(b) for i, b in vocab.items() if b != b"<|endoftext|>")[:256] == [1] * 256
    merges = tok.merges()
    assert len(merges) == tok.vocab_size - 257 and all(a + b in vocab.values() for a, b in merges)
    # the merges' strings, mapped back through the table, are the tokenizers JSON's merges
    from minigpt.tokenizer import gpt2_bytes_to_unicode

    table = gpt2_bytes_to_unicode()
    raw = tok.to_dict()["model"]["merges"]
    assert [["".join(table[b] for b in a), "".join(table[b] for b in b_)] for a, b_ in merges] == [list(m) for m in raw]
    # joining the bytes of the ids and decoding once is what tokenizers' decode gives
    for s in [text, "ROMEO: 🤗 e\u0301", "\x00\r\n"]:
        ids = tok.encode(s)
        assert b"".join(vocab[i] for i in ids).decode("utf-8") == tok.decode(ids) == s
