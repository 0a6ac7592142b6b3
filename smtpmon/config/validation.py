"""The path-keyed error collector both configuration files are validated with.

A validation pass records one message per problem, each with the path of the offending key
(`targets[2].module: unknown module "smpt_tls"`), and goes on, so that a user fixes a file
in one round; at the end it raises the file's own error class with all of them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any


def describe(value: Any) -> str:
    """A value as a message shows it: strings quoted and escaped, YAML words for the rest."""
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def key_path(path: str, key: Any) -> str:
    """The path of `key` in the mapping at `path` ("" for the top level)."""
    return f"{path}.{key}" if path else str(key)


class Validator:
    """One validation pass over one file: `error` records a problem and the pass goes on;
    `failure()` is the file's own exception (`error_class`: ConfigError, WebConfigError)
    listing every problem, each "path: reason"."""

    error_class: Callable[[list[str], str], Exception]

    def __init__(self, source: str):
        self.source = source
        self.errors: list[str] = []

    def error(self, path: str, reason: str) -> None:
        self.errors.append(f"{path}: {reason}" if path else reason)

    def failure(self) -> Exception:
        return self.error_class(self.errors, self.source)
