"""Follow a log file as `tail -F` does, counting every line with a parser.

- Rotation by rename (or a new file renamed over the path): the old file is read to its end
  through the descriptor still open, then the new file is read from its start.
- Copy-and-truncate: the file shrank below the offset, or its first bytes changed; read again
  from the start. A line left incomplete by the cut is counted as malformed.
- A file that does not exist yet, vanishes, is a directory or cannot be read: a condition in
  the health (counted each time it begins) and retried at every poll; never an exception.
- Lines longer than `max_line_bytes` are counted as malformed and never held whole: memory
  stays bounded by that cap plus one chunk. Invalid UTF-8 is decoded with replacement.
- The position (offset after the last whole line, and the file's identity) is saved in the
  state file at most every `save_interval_seconds` and on close(), so a restart resumes where
  the last run stopped. Resuming is bounded: after `catch_up_max_lines` lines or
  `catch_up_max_seconds`, the rest of the backlog is skipped and `skipped_bytes` says how much.
- With no saved position, reading starts at the end of the file, unless `from_start`.

poll() does the work and returns; it never blocks on the file (a regular file never blocks)
and reads at most `max_lines_per_poll` lines, so a thread running it in a loop (reader.py)
keeps its share of the interpreter small.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable

from smtpmon.maillog import position as saved_position
from smtpmon.maillog.events import MALFORMED, LogEvent, LogParser, Tally
from smtpmon.maillog.health import ReaderHealth
from smtpmon.maillog.syslog import line_timestamp

_TOO_LONG = LogEvent(MALFORMED, reason="too_long")
_INCOMPLETE = LogEvent(MALFORMED, reason="incomplete")

_ERRNO_KINDS = {
    errno.ENOENT: "not_found",
    errno.ENOTDIR: "not_found",
    errno.EACCES: "permission_denied",
    errno.EPERM: "permission_denied",
    errno.EISDIR: "is_directory",
}


class FileFollower:
    def __init__(
        self,
        path: str,
        *,
        state_file: str | None = None,
        from_start: bool = False,
        chunk_bytes: int = 256 * 1024,
        max_line_bytes: int = 16 * 1024,
        max_lines_per_poll: int = 50_000,
        catch_up_max_lines: int = 5_000_000,
        catch_up_max_seconds: float = 120.0,
        save_interval_seconds: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.state_file = state_file
        self._from_start = from_start
        self._chunk_bytes = chunk_bytes
        self._max_line_bytes = max_line_bytes
        self._max_lines_per_poll = max_lines_per_poll
        self._catch_up_max_lines = catch_up_max_lines
        self._catch_up_max_seconds = catch_up_max_seconds
        self._save_interval = save_interval_seconds
        self._clock = clock

        self._fd: int | None = None
        self._identity: tuple[int, int] | None = None  # (device, inode) of the open file
        self._offset = 0  # after the last whole line handled
        self._read_offset = 0  # after the last byte read (the pending partial line ends here)
        self._pending = b""  # a line not yet ended by a newline
        self._discarding = False  # inside an over-long line: drop bytes until its newline
        self._head: tuple[int, str] | None = None  # (length, sha256) of the file's first bytes
        self._first_open = True
        self._catching_up_until: float | None = None  # clock deadline while resuming
        self._catch_up_lines = 0
        self._last_save = float("-inf")
        self._saved_offset: tuple[tuple[int, int] | None, int] | None = None

        self._lines = 0
        self._bytes = 0
        self._last_line = ""
        self._last_read_at: float | None = None
        self._rotations = 0
        self._truncations = 0
        self._skipped = 0
        self._skipped_catch_ups = 0
        self._errors: dict[str, int] = {}
        self._found: tuple[str, str] | None = None  # the condition the current poll ran into
        self._condition: str | None = None
        self._condition_detail: str | None = None
        self._caught_up = False
        self._size = 0

    # -- public -------------------------------------------------------------------------------
    def poll(self, parser: LogParser, tally: Tally) -> int:
        """Read what is there now (at most max_lines_per_poll lines), count each line; return
        how many lines were handled. Never raises OSError."""
        handled = 0
        self._found = None
        try:
            if self._fd is not None or self._open():
                self._check_truncated(tally)
                handled = self._read(parser, tally)
                if handled < self._max_lines_per_poll:
                    handled += self._check_replaced(parser, tally)
        except OSError as error:
            self._fail(error)
            self._close_fd()
        if handled:
            self._last_read_at = time.time()
        self._maybe_save()
        self._settle_condition()
        return handled

    def health(self) -> ReaderHealth:
        return ReaderHealth(
            source=self.path,
            lines_read=self._lines,
            bytes_read=self._bytes,
            bytes_behind=max(self._size - self._read_offset, 0) if self._fd is not None else None,
            last_line_timestamp=line_timestamp(self._last_line) if self._last_line else None,
            last_read_at=self._last_read_at,
            rotations=self._rotations,
            truncations=self._truncations,
            skipped_bytes=self._skipped,
            skipped_catch_ups=self._skipped_catch_ups,
            errors=dict(self._errors),
            condition=self._condition,
            condition_detail=self._condition_detail,
            caught_up=self._caught_up,
        )

    def close(self) -> None:
        """Save the position and close the file."""
        self._maybe_save(force=True)
        self._close_fd()

    # -- opening ------------------------------------------------------------------------------
    def _open(self) -> bool:
        first_open, self._first_open = self._first_open, False
        saved = self._load_position() if first_open else None
        try:
            # O_NONBLOCK: a FIFO at the path would block open() until a writer came; regular
            # files read the same with it.
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
        except OSError as error:
            self._fail(error)  # when it appears, it is read from its start
            return False
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.path)
            if not stat.S_ISREG(info.st_mode):
                self._found = ("not_a_file", "not a regular file")
                os.close(fd)
                return False
        except OSError as error:
            os.close(fd)
            self._fail(error)
            return False
        self._fd = fd
        self._identity = (info.st_dev, info.st_ino)
        self._size = info.st_size
        self._pending, self._discarding = b"", False
        start = 0
        if first_open:
            if saved is not None and self._same_file(saved, info):
                start = saved.offset
            elif saved is not None and self._open_rotated(saved, fd):
                return True  # read the rest of the old file first, then this one from its start
            elif saved is None and not self._from_start:
                start = info.st_size
        if start < info.st_size and self._catching_up_until is None:
            self._catching_up_until = self._clock() + self._catch_up_max_seconds
            self._catch_up_lines = 0
        self._offset = self._read_offset = start
        os.lseek(fd, start, os.SEEK_SET)
        self._head = self._read_head() if info.st_size else None
        return True

    def _load_position(self) -> saved_position.FilePosition | None:
        if self.state_file is None:
            return None
        saved = saved_position.load(self.state_file)
        if not isinstance(saved, saved_position.FilePosition) or saved.path != self.path:
            return None  # no position, or one of another file: a first start
        return saved

    def _open_rotated(self, saved: saved_position.FilePosition, current_fd: int) -> bool:
        """The file was rotated while smtpmon was stopped: find the old file beside the path
        (mail.log.1, mail.log-20261203), by its device, inode and first bytes, and make it the
        open file at the saved offset, so the lines written to it after the stop are read.
        Without it, the current file is read from its start."""
        directory, name = os.path.split(os.path.abspath(self.path))
        try:
            siblings = [entry for entry in os.scandir(directory)
                        if entry.name.startswith(name) and entry.name != name]
        except OSError:
            siblings = []
        for entry in siblings:
            try:
                info = entry.stat(follow_symlinks=False)
                if (info.st_dev, info.st_ino) != (saved.device, saved.inode):
                    continue
                fd = os.open(entry.path, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            self._fd = fd
            if not stat.S_ISREG(info.st_mode) or not self._same_file(saved, info):
                os.close(fd)
                continue
            os.close(current_fd)
            self._identity = (info.st_dev, info.st_ino)
            self._size = info.st_size
            self._offset = self._read_offset = saved.offset
            os.lseek(fd, saved.offset, os.SEEK_SET)
            self._head = self._read_head()
            if saved.offset < info.st_size:
                self._catching_up_until = self._clock() + self._catch_up_max_seconds
                self._catch_up_lines = 0
            return True
        self._fd = current_fd
        return False

    def _same_file(self, saved: saved_position.FilePosition, info: os.stat_result) -> bool:
        if (saved.device, saved.inode) != (info.st_dev, info.st_ino) or saved.offset > info.st_size:
            return False
        assert self._fd is not None
        data = os.pread(self._fd, saved.head_length, 0)
        return saved_position.head_digest(data) == saved.head_sha256

    # -- reading ------------------------------------------------------------------------------
    def _read(self, parser: LogParser, tally: Tally) -> int:
        fd = self._fd
        assert fd is not None
        handled = 0
        parse = parser.parse_line
        counts = tally.counts
        limit = self._max_line_bytes
        while handled < self._max_lines_per_poll:
            if self._catching_up_until is not None and self._catch_up_exhausted(handled):
                self._skip_backlog()
                break
            chunk = os.read(fd, self._chunk_bytes)
            if not chunk:
                self._catching_up_until = None
                self._caught_up = True
                break
            self._read_offset += len(chunk)
            self._bytes += len(chunk)
            data = self._pending + chunk if self._pending else chunk
            if self._discarding:  # the rest of an over-long line, up to its newline
                newline = data.find(b"\n")
                data = b"" if newline < 0 else data[newline + 1:]
                self._discarding = newline < 0
            end = data.rfind(b"\n")
            if end >= 0:
                lines = data[:end].decode("utf-8", "replace").split("\n")
                for line in lines:
                    event = _TOO_LONG if len(line) > limit else parse(line)
                    counts[event] = counts.get(event, 0) + 1
                self._last_line = lines[-1]
                handled += len(lines)
                data = data[end + 1:]
            self._hold_partial(data, tally)
            self._offset = self._read_offset - len(self._pending)
        self._lines += handled
        if self._catching_up_until is not None:
            self._catch_up_lines += handled
        return handled

    def _hold_partial(self, data: bytes, tally: Tally) -> None:
        """Keep an unfinished line, unless it is already too long: then count it once and drop
        the rest of it as it arrives."""
        if len(data) > self._max_line_bytes:
            tally.add(_TOO_LONG)
            self._lines += 1
            self._pending = b""
            self._discarding = True
        else:
            self._pending = data

    def _catch_up_exhausted(self, handled_now: int) -> bool:
        assert self._catching_up_until is not None
        return (self._catch_up_lines + handled_now >= self._catch_up_max_lines
                or self._clock() >= self._catching_up_until)

    def _skip_backlog(self) -> None:
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        self._skipped += max(size - self._offset, 0)
        self._skipped_catch_ups += 1
        self._offset = self._read_offset = size
        self._pending, self._discarding = b"", False
        os.lseek(self._fd, size, os.SEEK_SET)
        self._catching_up_until = None
        self._caught_up = True

    # -- rotation -----------------------------------------------------------------------------
    def _check_truncated(self, tally: Tally) -> None:
        """Before reading on: was the file truncated in place (it shrank below the offset, or
        its first bytes changed because it was truncated and written past the offset since
        the last poll)? Then it is read again from its start."""
        assert self._fd is not None
        size = os.fstat(self._fd).st_size
        if size < self._read_offset or self._head_changed():
            self._truncations += 1
            self._drop_partial(tally)
            os.lseek(self._fd, 0, os.SEEK_SET)
            self._offset = self._read_offset = 0
            self._head = self._read_head() if size else None

    def _check_replaced(self, parser: LogParser, tally: Tally) -> int:
        """At the end of the open file: was another file put at the path? Returns the lines
        read from the start of the new file."""
        assert self._fd is not None
        info = os.fstat(self._fd)
        self._size = info.st_size
        if self._head is None or self._head[0] < saved_position.HEAD_BYTES:
            self._head = self._read_head() if info.st_size else None  # a young file grew
        try:
            current = os.stat(self.path)
        except FileNotFoundError as error:
            # Renamed away and not recreated yet: keep the old file open (a writer may still
            # hold it), and say the path is missing.
            self._fail(error)
            return 0
        if (current.st_dev, current.st_ino) == self._identity:
            return 0
        handled = self._read(parser, tally)  # what reached the old file before the switch
        self._rotations += 1
        self._drop_partial(tally)
        self._close_fd()
        if self._open():
            handled += self._read(parser, tally)
        return handled

    def _head_changed(self) -> bool:
        """Whether the first bytes differ from those seen before: the file was truncated and
        written again past the old offset between two polls."""
        if self._head is None:
            return False
        assert self._fd is not None
        length, digest = self._head
        return saved_position.head_digest(os.pread(self._fd, length, 0)) != digest

    def _drop_partial(self, tally: Tally) -> None:
        if self._pending or self._discarding:
            if self._pending:
                tally.add(_INCOMPLETE)
                self._lines += 1
            self._pending, self._discarding = b"", False

    def _read_head(self) -> tuple[int, str]:
        assert self._fd is not None
        data = os.pread(self._fd, saved_position.HEAD_BYTES, 0)
        return len(data), saved_position.head_digest(data)

    # -- state --------------------------------------------------------------------------------
    def _maybe_save(self, force: bool = False) -> None:
        if self.state_file is None or self._identity is None:
            return
        now = self._clock()
        if not force and now - self._last_save < self._save_interval:
            return
        current = (self._identity, self._offset)
        if current == self._saved_offset:
            return
        self._last_save = now
        head_length, head_sha256 = self._head if self._head is not None else (0, saved_position.head_digest(b""))
        try:
            saved_position.save(self.state_file, saved_position.FilePosition(
                path=self.path, device=self._identity[0], inode=self._identity[1],
                offset=self._offset, head_length=head_length, head_sha256=head_sha256))
            self._saved_offset = current
        except OSError as error:
            self._last_save = float("-inf")  # retried at the next poll
            self._found = self._found or ("state_file", error.strerror or str(error))

    # -- conditions ---------------------------------------------------------------------------
    def _fail(self, error: OSError) -> None:
        self._found = (_ERRNO_KINDS.get(error.errno or 0, "io_error"), error.strerror or str(error))

    def _settle_condition(self) -> None:
        """Make this poll's finding the condition in effect; a condition is counted when it
        begins, not at every poll that still finds it."""
        found = self._found
        if found is None:
            self._condition = self._condition_detail = None
            return
        kind, detail = found
        if self._condition != kind:
            self._errors[kind] = self._errors.get(kind, 0) + 1
        self._condition, self._condition_detail = kind, detail

    def _close_fd(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None
