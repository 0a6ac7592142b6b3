"""Strict YAML reading shared by the configuration and the web configuration files.

PyYAML silently keeps the last of two equal keys and words its syntax errors for programmers;
both files want every duplicate reported and syntax errors that name the line.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

import yaml

from smtpmon.config.validation import describe

# A configuration file is a few KB; a bigger one is a mistake (a log, an image, /dev/zero's
# like), and reading it whole would take the daemon's memory with it.
MAX_FILE_BYTES = 16 * 1024 * 1024
_FILE_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class YamlSyntaxError(ValueError):
    """The text is not YAML; the message names the line and column."""


class FileReadError(ValueError):
    """A file that cannot be read as a configuration file; the message says why."""


def regular_file_problem(path: str) -> str | None:
    """Why `path` is not a readable regular file ("file not found", "a FIFO"...); None if it
    is one. Checked without blocking and without reading it."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except FileNotFoundError:
        return "file not found"
    except OSError as error:
        return f"cannot read it: {error.strerror or error}"
    try:
        mode = os.fstat(descriptor).st_mode
    finally:
        os.close(descriptor)
    if stat.S_ISDIR(mode):
        return "is a directory, not a file"
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in _FILE_KINDS if test(mode)), "not a file")
        return f"not a regular file ({kind})"
    return None


def read_file(path: str, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`.

    Opened without blocking: a FIFO would otherwise hold the caller (the daemon's main
    thread at SIGHUP) until someone writes to it. Anything but a regular file is refused
    before a byte is read, a file over the limit by its size, and never more than the limit
    plus one byte is read (a file that grows meanwhile)."""
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as error:
        raise FileReadError(f"cannot read the file: {error.strerror or error}") from None
    too_big = f"the file is larger than {max_bytes // (1024 * 1024)} MB; is it the right file?"
    try:
        facts = os.fstat(descriptor)
        if stat.S_ISDIR(facts.st_mode):
            raise FileReadError(f"cannot read the file: {os.strerror(errno.EISDIR)}")
        if not stat.S_ISREG(facts.st_mode):
            kind = next((name for test, name in _FILE_KINDS if test(facts.st_mode)), "not a file")
            raise FileReadError(f"cannot read the file: not a regular file ({kind})")
        if facts.st_size > max_bytes:
            raise FileReadError(too_big)
        chunks = []
        left = max_bytes + 1
        while left > 0 and (chunk := os.read(descriptor, min(left, 1024 * 1024))):
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
    except OSError as error:
        raise FileReadError(f"cannot read the file: {error.strerror or error}") from None
    finally:
        os.close(descriptor)
    if len(data) > max_bytes:
        raise FileReadError(too_big)
    return data


def read_document(text: str) -> tuple[Any, list[str]]:
    """The document in `text` and the duplicate keys found in it (one message each)."""
    try:
        # The reader checks every character as it is made: a NUL or another control
        # character fails here, before anything is parsed.
        loader = _DuplicateKeyLoader(text)
    except yaml.reader.ReaderError as error:
        line = text.count("\n", 0, error.position) + 1
        column = error.position - (text.rfind("\n", 0, error.position) + 1) + 1
        raise YamlSyntaxError(f"line {line}, column {column}: invalid YAML: control character "
                              f"#x{error.character:04x} is not allowed") from None
    try:
        document = loader.get_single_data()
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = error.problem or error.context or "syntax error"
        context_mark = error.context_mark
        if error.context and context_mark and mark and context_mark.line != mark.line:
            # The line to fix is often the one that opened the construct, not this one.
            problem += f" ({error.context} on line {context_mark.line + 1})"
        raise YamlSyntaxError(f"{where}invalid YAML: {problem}") from None
    except yaml.YAMLError as error:
        raise YamlSyntaxError(f"invalid YAML: {error}") from None
    finally:
        loader.dispose()
    return document, loader.duplicates


class _DuplicateKeyLoader(yaml.SafeLoader):
    """SafeLoader that notes duplicate mapping keys, which PyYAML would silently drop."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.duplicates: list[str] = []

    def construct_mapping(self, node, deep=False):  # type: ignore[override]
        if isinstance(node, yaml.MappingNode):
            first_line: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # `<<: *anchor` is meant to be overridden
                key = self.construct_object(key_node, deep=True)
                line = key_node.start_mark.line + 1
                try:
                    if key in first_line:
                        self.duplicates.append(
                            f"line {line}: duplicate key {describe(key)} "
                            f"(first on line {first_line[key]})"
                        )
                    else:
                        first_line[key] = line
                except TypeError:
                    pass  # an unhashable key: construct_mapping reports it below
        return super().construct_mapping(node, deep)
