"""Data: the tiny Shakespeare corpus, text files, batches of token blocks, toy seq2seq tasks.

A language model is trained on random windows of a long 1-D tensor of token ids: the input is
`x = data[i : i + T]` and the target is the same window shifted by one, `y = data[i + 1 : i + T + 1]`,
so every position learns to predict the next token (as in nanoGPT's `get_batch`).

Dimension letters: B batch, T time (block size).
"""

from __future__ import annotations

import hashlib
import logging
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import atomic_write_bytes

__all__ = [
    "BOS",
    "FIRST_SYMBOL",
    "N_SPECIAL",
    "PAD",
    "SEP",
    "SHAKESPEARE_FILENAME",
    "SHAKESPEARE_SHA256",
    "SHAKESPEARE_URL",
    "BlockDataset",
    "ChecksumError",
    "DownloadError",
    "ToyTask",
    "check_length",
    "default_data_dir",
    "user_cache_dir",
    "download",
    "get_batch",
    "load_shakespeare",
    "make_toy_task",
    "read_text",
    "sha256_file",
    "toy_task_as_lm",
    "train_val_split",
]

log = logging.getLogger(__name__)

SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
SHAKESPEARE_FILENAME = "tinyshakespeare.txt"
SHAKESPEARE_NUM_CHARS = 1_115_394

_REPO_ROOT = Path(__file__).resolve().parents[1]
_verified: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of files whose checksum matched


class ChecksumError(ValueError):
    """A downloaded or cached file does not have the expected sha256."""


class DownloadError(RuntimeError):
    """The file could not be fetched (offline, blocked, HTTP error)."""


# ---------------------------------------------------------------------------- downloading


def _fetch(url: str, timeout: float = 60.0) -> bytes:
    """Fetch `url` and return its bytes. Tests monkeypatch this so they never touch the network."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (fixed https URL)
        return resp.read()


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, dest: str | os.PathLike, sha256: str | None = None) -> Path:
    """Download `url` to `dest`, checking its sha256 before the file appears at `dest`.

    Folders are created only once the bytes are in hand and verified, so a failed download creates
    nothing. The bytes go through `minigpt.atomic.atomic_write_bytes` (temp file, fsync, `os.replace`), so
    `dest` is either absent, the old file, or the complete verified new file: a bad download never
    lands in the cache or replaces a good copy.
    """
    dest = Path(dest)
    try:
        payload = _fetch(url)
    except (urllib.error.URLError, OSError, TimeoutError) as e:
        raise DownloadError(f"could not download {url}: {e}") from e
    if sha256 is not None:
        got = hashlib.sha256(payload).hexdigest()
        if got != sha256.lower():
            raise ChecksumError(
                f"downloaded {url} ({len(payload):,} bytes) has sha256 {got}, expected {sha256}. "
                f"The file was not saved. The server or a proxy may have returned an error page; "
                f"retry later or place the correct file at {dest} by hand."
            )
    dest.parent.mkdir(parents=True, exist_ok=True)  # only now: a failed download leaves no empty folder
    atomic_write_bytes(dest, payload)
    _verified.add(_stat_key(dest))
    return dest


def _stat_key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return (str(path.resolve()), st.st_size, st.st_mtime_ns)


def user_cache_dir() -> Path:
    """The per-user cache folder for downloaded corpora: platformdirs' ``user_cache_dir("minigpt")/data``
    when platformdirs is installed (~/.cache on Linux, ~/Library/Caches on macOS, %LOCALAPPDATA% on
    Windows), else the XDG convention ``$XDG_CACHE_HOME/minigpt/data`` (default ``~/.cache/minigpt/data``)."""
    try:
        from platformdirs import user_cache_dir as _platform_cache
    except ImportError:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minigpt"
    else:
        base = Path(_platform_cache("minigpt", appauthor=False))
    return base / "data"


def default_data_dir() -> Path:
    """Where downloaded corpora are cached, in this order:

    1. `$MINIGPT_DATA_DIR` if set (an explicit choice always wins);
    2. the `data/` folder at the repository root, when minigpt runs from a checkout of the repo
       (so notebooks started from any subfolder share one cache);
    3. the per-user cache, :func:`user_cache_dir` (an installed minigpt, run from any folder).

    Nothing is created here; the folder appears when a download succeeds.
    """
    env = os.environ.get("MINIGPT_DATA_DIR")
    if env:
        return Path(env).expanduser()
    if (_REPO_ROOT / "pyproject.toml").is_file() and (_REPO_ROOT / "minigpt").is_dir():
        return _REPO_ROOT / "data"
    return user_cache_dir()


def load_shakespeare(cache_dir: str | os.PathLike | None = None) -> str:
    """Return tiny Shakespeare (1,115,394 characters; Karpathy's char-rnn corpus) as one string.

    The file is `<cache_dir>/tinyshakespeare.txt`; `cache_dir=None` means `default_data_dir()`
    (`$MINIGPT_DATA_DIR`, else the repo's `data/`, else the per-user cache). A cached file is used if its
    sha256 matches (checked once per process); otherwise it is downloaded from `SHAKESPEARE_URL`.
    """
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_data_dir()
    path = folder / SHAKESPEARE_FILENAME
    if path.is_file():
        key = _stat_key(path)
        if key not in _verified:
            got = sha256_file(path)
            if got != SHAKESPEARE_SHA256:
                raise ChecksumError(
                    f"cached file {path} is corrupt or not tiny Shakespeare (sha256 {got}, expected "
                    f"{SHAKESPEARE_SHA256}). Delete it and run again to re-download, or copy the "
                    f"correct file from {SHAKESPEARE_URL} to that path."
                )
            _verified.add(key)
    else:
        log.info("downloading tiny Shakespeare to %s", path)
        try:
            download(SHAKESPEARE_URL, path, SHAKESPEARE_SHA256)
        except DownloadError as e:
            raise DownloadError(
                f"tiny Shakespeare is not cached and could not be downloaded ({e.__cause__}). "
                f"If you are offline, download {SHAKESPEARE_URL} on another machine and copy it to "
                f"{path.resolve()} (or set MINIGPT_DATA_DIR to a folder that holds "
                f"{SHAKESPEARE_FILENAME})."
            ) from e
    return path.read_text(encoding="utf-8")


# ---------------------------------------------------------------------------- text files


def read_text(path: str | os.PathLike, min_chars: int = 2) -> str:
    """Read a UTF-8 text file for training, with errors that say what is wrong and where."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"text file not found: {path.resolve()}. Check the path.")
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; pass the path of a .txt file inside it.")
    raw = path.read_bytes()
    if not raw:
        raise ValueError(f"{path} is empty; a language model needs some text to learn from.")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        snippet = raw[max(0, e.start - 10) : e.start + 10]
        raise ValueError(
            f"{path} is not valid UTF-8: byte {raw[e.start]:#04x} at byte offset {e.start} "
            f"(near {snippet!r}). Re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`."
        ) from e
    if text.startswith("\ufeff"):  # a UTF-8 byte-order mark is not part of the text
        text = text[1:]
    if len(text) < min_chars:
        raise ValueError(f"{path} has {len(text)} character(s); need at least {min_chars}.")
    return text


def check_length(n_tokens: int, block_size: int) -> None:
    """A (x, y) pair needs block_size + 1 consecutive tokens; fail early with the numbers."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    if n_tokens < block_size + 1:
        raise ValueError(
            f"text has {n_tokens} tokens but block_size is {block_size}; need at least "
            f"{block_size + 1}. Use more text or a smaller block_size."
        )


def _as_long_1d(data: torch.Tensor | list[int], name: str = "data") -> torch.Tensor:
    if not isinstance(data, torch.Tensor):
        data = torch.as_tensor(data, dtype=torch.long)
    if data.dim() != 1:
        raise ValueError(f"{name} must be a 1-D tensor of token ids, got shape {tuple(data.shape)}")
    if data.dtype != torch.long:
        raise TypeError(f"{name} must hold token ids as torch.long, got {data.dtype}; use .long()")
    return data


def train_val_split(tokens: torch.Tensor | list[int], val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous split: the first (1 - val_fraction) of the tokens train, the rest validate.

    Contiguous rather than shuffled (as in nanoGPT) so no validation window overlaps a training one.
    """
    tokens = _as_long_1d(tokens, "tokens")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n_train = int(len(tokens) * (1.0 - val_fraction))
    train, val = tokens[:n_train], tokens[n_train:]
    if len(train) == 0 or (val_fraction > 0 and len(val) == 0):
        raise ValueError(
            f"{len(tokens)} tokens are too few to split with val_fraction={val_fraction} "
            f"(train {len(train)}, val {len(val)}); use more text."
        )
    return train, val


def get_batch(
    data: torch.Tensor,
    block_size: int,
    batch_size: int,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample `batch_size` random windows: x (B, T) and y (B, T) = x shifted left by one token."""
    data = _as_long_1d(data)
    check_length(len(data), block_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    # the last valid start is len - block_size - 1, so y's final token exists
    ix = torch.randint(len(data) - block_size, (batch_size,), generator=generator)
    offsets = torch.arange(block_size)
    idx = ix[:, None] + offsets[None, :]  # (B, T)
    x = data[idx]  # (B, T)
    y = data[idx + 1]  # (B, T)
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda":
            # pinned memory lets the copy overlap with compute
            x, y = x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
        else:
            x, y = x.to(device), y.to(device)
    return x, y


class BlockDataset(torch.utils.data.Dataset):
    """Every window of `block_size + 1` tokens (start positions 0, stride, 2*stride, ...) as (x, y).

    Use with a `DataLoader` when you want epochs over the data instead of random `get_batch` draws;
    `stride=block_size` gives non-overlapping windows (a cheap full pass for evaluation).
    """

    def __init__(self, data: torch.Tensor | list[int], block_size: int, stride: int = 1):
        self.data = _as_long_1d(data)
        check_length(len(self.data), block_size)
        if stride < 1:
            raise ValueError(f"stride must be >= 1, got {stride}")
        self.block_size = block_size
        self.stride = stride

    def __len__(self) -> int:
        return (len(self.data) - self.block_size - 1) // self.stride + 1

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for BlockDataset of length {n}")
        start = i * self.stride
        chunk = self.data[start : start + self.block_size + 1]  # (T + 1,)
        return chunk[:-1], chunk[1:]


# ---------------------------------------------------------------------------- toy seq2seq tasks

PAD = 0  # padding (unused by the fixed-length tasks, reserved so models can share the layout)
BOS = 1  # start of the decoder input
SEP = 2  # separates source and target when a task is flattened for a decoder-only model
N_SPECIAL = 3
FIRST_SYMBOL = N_SPECIAL  # data symbols are FIRST_SYMBOL .. vocab_size - 1

_TOY_KINDS = ("reverse", "copy", "sort")


@dataclass
class ToyTask:
    """A batch of a toy sequence-to-sequence task (teacher forcing layout).

    src     (n, L): random symbols
    tgt_out (n, L): what the decoder must produce (reverse/copy/sort of src)
    tgt_in  (n, L): [BOS, tgt_out[:, :-1]], the decoder input shifted right by one
    """

    kind: str  # "reverse" | "copy" | "sort"
    src: torch.Tensor  # (n, L) long
    tgt_in: torch.Tensor  # (n, L) long
    tgt_out: torch.Tensor  # (n, L) long
    vocab_size: int  # total vocabulary, special tokens included

    def __len__(self) -> int:
        return self.src.shape[0]


def make_toy_task(
    kind: str,
    n: int,
    length: int,
    vocab_size: int,
    generator: torch.Generator | None = None,
) -> ToyTask:
    """Random examples of a toy task, the classic first tests for an encoder-decoder Transformer.

    Token layout: 0 = PAD, 1 = BOS, 2 = SEP, symbols = 3 .. vocab_size - 1 (so a model for the
    task uses exactly `vocab_size` embeddings). "reverse": target is src backwards; "copy": target
    is src; "sort": target is src sorted ascending.
    """
    if kind not in _TOY_KINDS:
        raise ValueError(f"unknown toy task {kind!r}; choose one of {_TOY_KINDS}")
    if n < 1 or length < 1:
        raise ValueError(f"n and length must be >= 1, got n={n}, length={length}")
    if vocab_size < N_SPECIAL + 2:
        raise ValueError(
            f"vocab_size={vocab_size} leaves fewer than 2 symbols after the {N_SPECIAL} special "
            f"tokens (PAD, BOS, SEP); use vocab_size >= {N_SPECIAL + 2}."
        )
    src = torch.randint(FIRST_SYMBOL, vocab_size, (n, length), generator=generator)  # (n, L)
    if kind == "reverse":
        tgt = src.flip(1)
    elif kind == "copy":
        tgt = src.clone()
    else:
        tgt = src.sort(dim=1).values
    bos = torch.full((n, 1), BOS, dtype=torch.long)
    tgt_in = torch.cat([bos, tgt[:, :-1]], dim=1)  # (n, L)
    return ToyTask(kind=kind, src=src, tgt_in=tgt_in, tgt_out=tgt, vocab_size=vocab_size)


def toy_task_as_lm(task: ToyTask) -> tuple[torch.Tensor, torch.Tensor]:
    """Flatten a toy task for a decoder-only (GPT) model: sequence = src + [SEP] + tgt.

    Returns x (n, 2L) and y (n, 2L) with y = x shifted by one; the targets for positions that
    predict source tokens or SEP are -1 (ignored by the loss), so the model is graded only on
    the L target tokens. Needs block_size >= 2L.
    """
    n, L = task.src.shape
    sep = torch.full((n, 1), SEP, dtype=torch.long)
    seq = torch.cat([task.src, sep, task.tgt_out], dim=1)  # (n, 2L + 1)
    x = seq[:, :-1].clone()  # (n, 2L)
    y = seq[:, 1:].clone()  # (n, 2L)
    y[:, :L] = -1  # position j < L predicts src[j+1] or SEP: not part of the task
    return x, y
