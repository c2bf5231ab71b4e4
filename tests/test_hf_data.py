"""run_clm-style datasets: line-by-line text, tokenised, grouped into full blocks without padding."""

from __future__ import annotations

import pytest

pytest.importorskip("datasets")
pytest.importorskip("transformers")

from minigpt.hf.data import group_texts, lm_datasets, load_text_splits  # noqa: E402
from minigpt.tokenizer import BPETokenizer  # noqa: E402

# varied lines, blank lines included, so line breaks and short rows are exercised
LINES = [
    f"{who}:\nI say {n} times, the {thing} is {mood}!\n\n"
    for n, (who, thing, mood) in enumerate(
        [("ROMEO", "night", "young"), ("JULIET", "moon", "inconstant"), ("NURSE", "hour", "late")] * 40
    )
]
TEXT = "".join(LINES)


@pytest.fixture(scope="module")
def tok():
    return BPETokenizer.train(TEXT, vocab_size=300).to_hf()


@pytest.fixture()
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def test_group_texts_concatenates_chunks_and_drops_the_tail():
    batch = {"input_ids": [[1, 2, 3], [4, 5], [6, 7, 8, 9, 10]], "attention_mask": [[1, 1, 1], [1, 1], [1] * 5]}
    out = group_texts(batch, block_size=4)
    assert out["input_ids"] == [[1, 2, 3, 4], [5, 6, 7, 8]]  # 9, 10 dropped: no partial block
    assert out["attention_mask"] == [[1] * 4, [1] * 4]
    assert out["labels"] == out["input_ids"]
    assert out["labels"][0] is not out["input_ids"][0]  # a copy, not the same list


def test_group_texts_rejects_bad_input():
    with pytest.raises(ValueError, match="block_size"):
        group_texts({"input_ids": [[1]]}, block_size=0)
    with pytest.raises(KeyError, match="tokenise first"):
        group_texts({"text": ["hi"]}, block_size=2)


def _reference_tokens(tok, lines):
    """Independent of datasets: tokenise each line of the file on its own and concatenate."""
    return [t for line in lines for t in tok(line)["input_ids"]]


def test_blocks_are_full_unpadded_and_equal_the_tokenised_corpus_prefix(tok, corpus, tmp_path):
    block = 16
    ds = lm_datasets(tok, corpus, block_size=block, val_fraction=0.2, cache_dir=tmp_path / "cache")
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    n_train = int(len(lines) * 0.8)
    for split, part in (("train", lines[:n_train]), ("validation", lines[n_train:])):
        d = ds[split]
        assert set(d.column_names) == {"input_ids", "attention_mask", "labels"}
        ids, mask, labels = d["input_ids"], d["attention_mask"], d["labels"]
        assert all(len(row) == block for row in ids), "every block is exactly block_size"
        assert all(all(m == 1 for m in row) for row in mask), "no padding anywhere"
        assert labels == ids, "labels are a copy of input_ids (the model shifts them)"
        ref = _reference_tokens(tok, part)
        flat = [t for row in ids for t in row]
        assert len(ref) - block < len(flat) <= len(ref)
        assert flat == ref[: len(flat)]
    # line breaks were kept: the decoded train blocks are literally the start of the file
    decoded = tok.decode([t for row in ds["train"]["input_ids"] for t in row])
    assert TEXT.startswith(decoded) and "\n\n" in decoded


def test_small_group_batches_still_give_full_blocks(tok, corpus, tmp_path):
    ds = lm_datasets(tok, corpus, block_size=16, group_batch_size=7, cache_dir=tmp_path / "cache")
    rows = ds["train"]["input_ids"]
    assert rows and all(len(r) == 16 for r in rows)
    assert ds["train"]["labels"] == rows


def test_split_is_contiguous_and_keeps_linebreaks(corpus, tmp_path):
    raw = load_text_splits(corpus, val_fraction=0.25, max_lines=100, cache_dir=tmp_path / "cache")
    lines = TEXT.splitlines(keepends=True)[:100]
    assert raw["train"]["text"] == lines[:75]
    assert raw["validation"]["text"] == lines[75:]


def test_clear_errors(tok, corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        load_text_splits(tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="val_fraction"):
        load_text_splits(corpus, val_fraction=1.5)
    with pytest.raises(ValueError, match="too few"):
        load_text_splits(corpus, max_lines=1)
    with pytest.raises(ValueError, match="smaller block_size"):
        lm_datasets(tok, corpus, block_size=100_000, cache_dir=tmp_path / "cache")
