"""Crash-safe file writes: the one helper every module that saves a file goes through.

A file is written to a temp file in the same folder, flushed and fsynced, renamed over the target
with `os.replace` (atomic on one filesystem), and then the folder itself is fsynced so the rename
survives a power cut. A reader therefore sees the old file or the complete new one, never half of
one. Checkpoint folders use the same pieces (`write_synced`, `fsync_dir`) for a whole folder.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_dir", "write_synced"]


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (a no-op where folders cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # the rename is still atomic there, only not yet durable
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_synced(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` and fsync it (not atomic by itself: use it on a temp path)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` atomically and durably (temp file + fsync + os.replace + fsync of the folder)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a name of our own (not mkstemp, whose files are private to the owner): the file gets the usual
    # permissions, and two threads or processes writing the same path never share a temp file
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{threading.get_ident()}.tmp")
    try:
        write_synced(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """`atomic_write_bytes` for UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))
