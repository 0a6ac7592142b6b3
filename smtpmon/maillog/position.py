"""The reader's saved position, in a small JSON state file written atomically.

A file's position is its identity (device, inode, and a hash of its first bytes, so a file
truncated and rewritten, or a new file that got the old inode, is not mistaken for the one
read before) and the offset after the last whole line counted. The journal's position is
its cursor. The file is replaced by rename, so a crash leaves the old state or the new one,
never half of either.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass

STATE_VERSION = 1
HEAD_BYTES = 256  # how much of the start of a file identifies it


@dataclass(frozen=True, slots=True)
class FilePosition:
    path: str
    device: int
    inode: int
    offset: int
    head_length: int  # how many bytes head_sha256 covers (less than HEAD_BYTES in a young file)
    head_sha256: str


@dataclass(frozen=True, slots=True)
class JournalPosition:
    cursor: str


def head_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load(path: str) -> FilePosition | JournalPosition | None:
    """The saved position, or None when there is none or it cannot be used (a damaged or
    foreign file is treated as no position: the reader then starts as on a first start)."""
    try:
        with open(path, encoding="utf-8") as state:
            saved = json.load(state)
        if not isinstance(saved, dict) or saved.get("version") != STATE_VERSION:
            return None
        if "cursor" in saved:
            return JournalPosition(cursor=str(saved["cursor"]))
        return FilePosition(
            path=str(saved["path"]), device=int(saved["device"]), inode=int(saved["inode"]),
            offset=int(saved["offset"]), head_length=int(saved["head_length"]),
            head_sha256=str(saved["head_sha256"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def save(path: str, position: FilePosition | JournalPosition) -> None:
    """Write `position` to `path` atomically (temporary file, fsync, rename). Raises OSError."""
    directory = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(prefix=".maillog-state-", dir=directory)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as state:
            json.dump({"version": STATE_VERSION, **asdict(position)}, state)
            state.flush()
            os.fsync(state.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise
