"""How the log reader is doing: a frozen snapshot, for the metrics and the status page."""

from __future__ import annotations

from dataclasses import dataclass, field

# Kinds of reading errors (the `kind` label of an error count). `internal_error`: a poll
# raised (a bug), counted by the reader itself.
INTERNAL_ERROR = "internal_error"
ERROR_KINDS = ("not_found", "permission_denied", "is_directory", "not_a_file", "io_error",
               "state_file", "journal_failed", INTERNAL_ERROR)


@dataclass(frozen=True, slots=True)
class ReaderHealth:
    source: str  # the path followed, or "journal"
    lines_read: int = 0
    bytes_read: int = 0
    bytes_behind: int | None = None  # written but not read yet; None when unknown (journal)
    last_line_timestamp: float | None = None  # Unix time of the last line's own timestamp
    last_read_at: float | None = None  # Unix time of the last poll that read something
    rotations: int = 0  # the file was replaced (renamed away, or another file put in place)
    truncations: int = 0  # the file was truncated in place (copy-and-truncate rotation)
    skipped_bytes: int = 0  # left unread because catch-up hit its bound in lines or time
    skipped_catch_ups: int = 0  # times catch-up hit its bound and the rest was skipped
    errors: dict[str, int] = field(default_factory=dict)  # kind -> times it began
    condition: str | None = None  # the error kind in effect now, None when reading is fine
    condition_detail: str | None = None  # its words (strerror), for a log line
    caught_up: bool = False  # reached the end of what was there when reading started
