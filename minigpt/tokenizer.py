"""Tokenizers: text <-> integer ids.

Two tokenizers share one interface (`encode`, `decode`, `vocab_size`, `save`, `load`):

- `CharTokenizer`: one id per character, as in Karpathy's char-rnn and nanoGPT's Shakespeare-char.
  The vocabulary is the sorted set of characters of the training text, so it is tiny (65 for
  tiny Shakespeare) and every id is readable, which is why the course starts with it.
- `BPETokenizer`: byte-level BPE (Sennrich et al. 2016; byte-level variant from GPT-2, Radford et
  al. 2019), trained with Hugging Face `tokenizers`. Working on UTF-8 bytes means any string,
  emoji included, encodes and decodes back exactly: there are no unknown characters.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from .atomic import atomic_write_text

__all__ = ["BPETokenizer", "CharTokenizer", "UnknownCharacterError", "gpt2_bytes_to_unicode"]

_CHAR_FORMAT = "minigpt.CharTokenizer"  # marks our JSON files so foreign JSON is rejected clearly
_CHAR_VERSION = 1
ENDOFTEXT = "<|endoftext|>"


def gpt2_bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table from a byte to the printable character that stands for it in vocab and merges files.

    Bytes that are printable Latin-1 (``!``..``~``, ``¡``..``¬``, ``®``..``ÿ``) stand for themselves; the other 68
    (control bytes, space, ...) get ``chr(256 + n)`` in byte order, so a space is ``Ġ`` and a newline ``Ċ``
    (``bytes_to_unicode`` in OpenAI's ``encoder.py``; Hugging Face's ByteLevel pre-tokenizer uses the same table).
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, n = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + n)
            n += 1
    return table


class UnknownCharacterError(ValueError):
    """Raised when text contains characters outside a `CharTokenizer`'s vocabulary."""

    def __init__(self, unknown: Sequence[str]):
        self.unknown = list(unknown)
        shown = ", ".join(repr(c) for c in self.unknown[:20])
        more = f" (and {len(self.unknown) - 20} more)" if len(self.unknown) > 20 else ""
        super().__init__(
            f"text contains {len(self.unknown)} character(s) not in the tokenizer's vocabulary: "
            f"{shown}{more}. Use only characters that appear in the training text, or retrain the "
            f"tokenizer (CharTokenizer.from_text) on text that includes them."
        )


def _ids_to_list(ids: Sequence[int] | torch.Tensor) -> list[int]:
    """Accept a list of ints or a 1-D tensor (what models return) and give a plain list."""
    if isinstance(ids, torch.Tensor):
        if ids.dim() != 1:
            raise ValueError(
                f"decode expects a 1-D sequence of ids, got a tensor of shape {tuple(ids.shape)}; "
                f"decode one row at a time, e.g. tok.decode(ids[0])."
            )
        return [int(i) for i in ids.tolist()]
    return [int(i) for i in ids]


def _read_json(path: str | os.PathLike, what: str) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} file not found: {path}. Check the path, or save one first.")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(
            f"{path} is not a valid {what} file ({e}). It may be truncated or corrupt; re-create it with .save()."
        ) from e


class CharTokenizer:
    """Character-level tokenizer: id i is the i-th character of the sorted vocabulary."""

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        bad = [c for c in chars if not isinstance(c, str) or len(c) != 1]
        if bad:
            raise ValueError(f"every vocabulary entry must be a single character, got {bad[:5]!r}")
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary contains duplicate characters")
        if not chars:
            raise ValueError("vocabulary is empty; build it with CharTokenizer.from_text(non_empty_text)")
        self.chars: list[str] = chars
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(chars)}
        self.itos: dict[int, str] = dict(enumerate(chars))

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """Vocabulary = sorted unique characters of `text` (sorted so ids do not depend on order)."""
        if not text:
            raise ValueError("cannot build a CharTokenizer from empty text")
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            # collect all unknown characters (in first-seen order) so the user can fix them at once
            unknown = list(dict.fromkeys(c for c in text if c not in stoi))
            raise UnknownCharacterError(unknown) from None

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        ids = _ids_to_list(ids)
        bad = [i for i in ids if i not in self.itos]
        if bad:
            raise ValueError(
                f"ids out of range for vocab_size {self.vocab_size}: {sorted(set(bad))[:10]}. "
                f"Was this sequence produced by a model with a different vocabulary?"
            )
        return "".join(self.itos[i] for i in ids)

    def to_dict(self) -> dict[str, Any]:
        return {"format": _CHAR_FORMAT, "version": _CHAR_VERSION, "chars": self.chars}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CharTokenizer:
        if not isinstance(d, dict) or d.get("format") != _CHAR_FORMAT or "chars" not in d:
            keys = sorted(d)[:8] if isinstance(d, dict) else type(d).__name__
            raise ValueError(
                f"not a CharTokenizer dict (expected format={_CHAR_FORMAT!r} and a 'chars' list, "
                f"got {keys}). Was this saved by a different tokenizer, e.g. BPETokenizer?"
            )
        if d.get("version", 0) > _CHAR_VERSION:
            raise ValueError(
                f"CharTokenizer file version {d['version']} is newer than this minigpt supports "
                f"({_CHAR_VERSION}); upgrade minigpt."
            )
        return cls(d["chars"])

    def save(self, path: str | os.PathLike) -> None:
        # ensure_ascii keeps the file readable in any editor; json escapes handle '\n', '\t' etc.
        atomic_write_text(path, json.dumps(self.to_dict(), ensure_ascii=True, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> CharTokenizer:
        return cls.from_dict(_read_json(path, "CharTokenizer"))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and self.chars == other.chars


class BPETokenizer:
    """Byte-level BPE, a thin wrapper around a Hugging Face `tokenizers.Tokenizer`."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer  # a tokenizers.Tokenizer

    @classmethod
    def train(
        cls,
        text: str | Iterable[str],
        vocab_size: int = 1000,
        special_tokens: Sequence[str] = (ENDOFTEXT,),
        min_frequency: int = 2,
    ) -> BPETokenizer:
        """Learn merges on `text` (a string or an iterable of strings, e.g. documents).

        The 256 byte symbols are always in the vocabulary (initial alphabet), so `vocab_size` must
        be at least 256 + len(special_tokens); the rest are learned merges.
        """
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

        special_tokens = list(special_tokens)
        min_size = 256 + len(special_tokens)
        if vocab_size < min_size:
            raise ValueError(
                f"vocab_size={vocab_size} is too small: byte-level BPE needs 256 byte tokens plus "
                f"{len(special_tokens)} special token(s), so use vocab_size >= {min_size}."
            )
        if isinstance(text, str):
            if not text:
                raise ValueError("cannot train a BPETokenizer on empty text")
            texts: Iterable[str] = [text]
        else:
            texts = text
        tok = Tokenizer(models.BPE())
        # add_prefix_space=False: encode(s) then decode gives exactly s back (GPT-2 convention)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            min_frequency=min_frequency,
            special_tokens=special_tokens,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            show_progress=False,
        )
        tok.train_from_iterator(texts, trainer=trainer)
        return cls(tok)

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int] | torch.Tensor) -> str:
        ids = _ids_to_list(ids)
        n = self.vocab_size
        bad = [i for i in ids if not 0 <= i < n]
        if bad:
            raise ValueError(f"ids out of range for vocab_size {n}: {sorted(set(bad))[:10]}")
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def merges(self) -> list[tuple[bytes, bytes]]:
        """The learned merges in the order they were learned (rank 0 first), as pairs of byte strings."""
        to_byte = {c: b for b, c in gpt2_bytes_to_unicode().items()}
        merges = self.to_dict()["model"]["merges"]
        pairs = [m.split(" ") if isinstance(m, str) else m for m in merges]  # older files: "a b" strings
        return [(bytes(to_byte[c] for c in a), bytes(to_byte[c] for c in b)) for a, b in pairs]

    def vocab_bytes(self) -> dict[int, bytes]:
        """id -> the bytes the token stands for (special tokens: their UTF-8 text); decode = join, then UTF-8."""
        to_byte = {c: b for b, c in gpt2_bytes_to_unicode().items()}
        specials = {t.content for t in self.tokenizer.get_added_tokens_decoder().values()}
        return {
            i: tok.encode("utf-8") if tok in specials else bytes(to_byte[c] for c in tok)
            for tok, i in self.tokenizer.get_vocab(with_added_tokens=True).items()
        }

    def token_to_id(self, token: str) -> int | None:
        return self.tokenizer.token_to_id(token)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(self.tokenizer.to_str())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BPETokenizer:
        from tokenizers import Tokenizer

        if not isinstance(d, dict) or not isinstance(d.get("model"), dict) or d["model"].get("type") != "BPE":
            raise ValueError(
                "not a byte-level BPE tokenizer JSON (expected a Hugging Face tokenizers file with "
                "model.type == 'BPE'). Was this saved by CharTokenizer?"
            )
        try:
            return cls(Tokenizer.from_str(json.dumps(d)))
        except Exception as e:  # tokenizers raises its own Exception subclass
            raise ValueError(f"could not load BPE tokenizer: {e}") from e

    def save(self, path: str | os.PathLike) -> None:
        """Save as a standard `tokenizer.json` (loadable by `tokenizers.Tokenizer.from_file`)."""
        atomic_write_text(path, self.tokenizer.to_str(pretty=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        return cls.from_dict(_read_json(path, "BPETokenizer"))

    def to_hf(self) -> Any:
        """Wrap as a `transformers.PreTrainedTokenizerFast` (eos = bos = unk = <|endoftext|>).

        The pad token is left unset on purpose: setting `pad_token = eos_token` is the caller's
        choice (common for GPT-2 fine-tuning, but it changes which positions get masked).
        """
        from transformers import PreTrainedTokenizerFast

        if self.token_to_id(ENDOFTEXT) is None:
            raise ValueError(
                f"this tokenizer has no {ENDOFTEXT!r} token; train it with "
                f"special_tokens=[{ENDOFTEXT!r}] to convert it to a Hugging Face tokenizer."
            )
        from tokenizers import Tokenizer

        # copy, so changes made through the HF wrapper do not leak into this object
        tok = Tokenizer.from_str(self.tokenizer.to_str())
        return PreTrainedTokenizerFast(
            tokenizer_object=tok, eos_token=ENDOFTEXT, bos_token=ENDOFTEXT, unk_token=ENDOFTEXT
        )
