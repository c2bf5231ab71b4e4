"""Causal-LM datasets with Hugging Face ``datasets``, prepared the way ``run_clm`` does.

The recipe of the ``transformers`` language-modelling example: read a text file line by line
(``load_dataset("text", ..., keep_linebreaks=True)``), tokenise every line, concatenate all the
tokens, and cut them into blocks of exactly ``block_size`` tokens, dropping the short remainder.
No block needs padding -- which matters because GPT-2 has no pad token -- and ``labels`` is a plain
copy of ``input_ids``: the model shifts them by one position inside its loss.

``datasets`` is imported inside the functions, so importing this module is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .._extras import require_installed

require_installed("datasets", feature="minigpt.hf.data")

__all__ = ["group_texts", "load_text_splits", "lm_datasets", "tokenize_splits"]


def group_texts(examples: dict[str, list[list[int]]], block_size: int = 128) -> dict[str, list[list[int]]]:
    """Concatenate every column of a batch and cut it into ``block_size`` chunks; labels = input_ids.

    Used with ``Dataset.map(batched=True)``. The tail shorter than ``block_size`` is dropped (at most
    ``block_size - 1`` tokens per map batch), so every block is full and none is padded.
    """
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if "input_ids" not in examples:
        raise KeyError(f"group_texts needs an 'input_ids' column (tokenise first); got {sorted(examples)}")
    columns = [k for k in examples if k != "labels"]
    joined = {k: [tok for row in examples[k] for tok in row] for k in columns}
    total = (len(joined["input_ids"]) // block_size) * block_size
    out = {k: [v[i : i + block_size] for i in range(0, total, block_size)] for k, v in joined.items()}
    out["labels"] = [list(block) for block in out["input_ids"]]
    return out


def load_text_splits(
    path: str | os.PathLike | None = None,
    val_fraction: float = 0.1,
    max_lines: int | None = None,
    cache_dir: str | os.PathLike | None = None,
) -> Any:
    """A ``DatasetDict`` with ``train`` and ``validation`` splits of a text file, one row per line.

    ``path=None`` means tiny Shakespeare (fetched by :func:`minigpt.data.load_shakespeare`). Line
    breaks are kept, so decoding the concatenated rows gives the file back. The split is contiguous:
    the last ``val_fraction`` of the lines validate, as in :func:`minigpt.data.train_val_split`, so
    no validation text also appears in training. ``max_lines`` keeps only the first lines (fast mode).
    """
    from datasets import DatasetDict, load_dataset

    from ..data import SHAKESPEARE_FILENAME, default_data_dir, load_shakespeare

    if path is None:
        load_shakespeare()  # makes sure the file is there and intact
        path = default_data_dir() / SHAKESPEARE_FILENAME
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"text file not found: {path.resolve()}. Check the path.")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    lines = load_dataset(
        "text",
        data_files={"train": str(path)},
        keep_linebreaks=True,
        cache_dir=None if cache_dir is None else str(cache_dir),
    )["train"]
    n = len(lines) if max_lines is None else min(max_lines, len(lines))
    n_train = int(n * (1.0 - val_fraction))
    if n_train < 1 or n - n_train < 1:
        raise ValueError(f"{n} lines are too few to split with val_fraction={val_fraction}; use more text.")
    return DatasetDict(train=lines.select(range(n_train)), validation=lines.select(range(n_train, n)))


def tokenize_splits(raw: Any, tokenizer: Any) -> Any:
    """Tokenise the ``text`` column of every split (batched, fast tokenizer); drops the text."""

    def tokenize(batch: dict[str, list[str]]) -> Any:
        return tokenizer(batch["text"])

    first = next(iter(raw.values()))
    return raw.map(tokenize, batched=True, remove_columns=first.column_names, desc="tokenising")


def lm_datasets(
    tokenizer: Any,
    path: str | os.PathLike | None = None,
    block_size: int = 128,
    val_fraction: float = 0.1,
    max_lines: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    group_batch_size: int | None = None,
) -> Any:
    """Text file -> ``DatasetDict`` of ``block_size``-token blocks with ``input_ids``, ``attention_mask``
    and ``labels``: :func:`load_text_splits`, then :func:`tokenize_splits`, then :func:`group_texts`.

    ``group_batch_size=None`` groups each split in one go, so the blocks are exactly the first
    ``len * block_size`` tokens of the split (tiny Shakespeare is ~0.3M tokens: cheap). For a large
    corpus pass e.g. 1000, as ``run_clm`` does; each batch of lines then drops its own short tail.
    """
    raw = load_text_splits(path, val_fraction=val_fraction, max_lines=max_lines, cache_dir=cache_dir)
    tokens = tokenize_splits(raw, tokenizer)
    blocks = tokens.map(
        group_texts,
        batched=True,
        batch_size=group_batch_size,
        fn_kwargs={"block_size": block_size},
        desc=f"grouping into {block_size}-token blocks",
    )
    for split, ds in blocks.items():
        if len(ds) == 0:
            raise ValueError(
                f"the {split} split has fewer than block_size={block_size} tokens; use more text "
                f"(max_lines) or a smaller block_size."
            )
    return blocks
