"""The one atomic file writer: a crash never leaves half a file under its final name.

Every writer in the project (run metrics and summaries, trial records, experiment metadata,
prediction files, token caches, downloads, report files) goes through `atomic_path`:

    with atomic_path(path) as tmp:      # a hidden temporary file beside `path`
        torch.save(obj, tmp)            # write it any way you like
    # here `path` holds the whole new content, fsynced; on an exception, the old one

The temporary file is hidden and ends in `.tmp-<pid>`, so no reader mistakes it for the real
one; if writing fails it is removed and the previous file (if any) is untouched. The data is
fsynced before the rename, and the folder after it, so that the new name survives a power
loss too. This module imports nothing of the project (reports use it as well).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "write_bytes_atomic", "write_json_atomic", "write_text_atomic"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success fsync it and rename it over `path`."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(final.parent)


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> None:
    """Write `data` to `path` atomically (see the module docstring)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike[str], text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` atomically (see the module docstring)."""
    write_bytes_atomic(path, text.encode(encoding))


def write_json_atomic(path: str | os.PathLike[str], payload: Any) -> None:
    """Write `payload` as indented, key-sorted JSON to `path` atomically.

    Values JSON does not know are written as their `.item()` (numpy and torch scalars) or
    their `str()` (paths, say).
    """
    write_text_atomic(path, json.dumps(payload, indent=2, sort_keys=True, default=_jsonable))


def _jsonable(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some file systems do not open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
