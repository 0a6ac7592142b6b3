"""Shared helpers for tests that need a system tool such as promtool or prometheus.

Locally a missing tool skips the test with a visible reason; in CI (CI=true), where .ci/run
installs the tools, a missing tool fails it, so a broken CI image cannot pass by skipping.
"""

from __future__ import annotations

import shutil

from helpers import unavailable


def require_tool(name: str) -> str:
    """The path of the executable `name`; skips the test when it is missing, fails it in CI."""
    path = shutil.which(name)
    if path is None:
        reason = f"{name} is not on PATH (.ci/run installs it)"
        unavailable(reason)
    return path
