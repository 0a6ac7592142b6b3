"""What this copy of smtpmon was built from, for `smtpmon_build_info`: the git commit.

Two ways to know it, the first that applies:

- smtpmon runs from a git checkout (the package's own directory is the checkout's `smtpmon/`:
  an editable install, `python -m smtpmon` in the tree): the checkout's HEAD, read now, so it
  never goes stale as commits are made;
- smtpmon was built from one (`pip install .`, `pip wheel .`, `make deb`): the commit setup.py
  wrote into the built package as `smtpmon/_build.py`, which no checkout holds.

Otherwise (built from a tarball, say) it is "unknown".
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
from pathlib import Path

UNKNOWN = "unknown"
# A full commit name: SHA-1, or SHA-256 in a repository that uses it.
_COMMIT = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")
GIT_TIMEOUT_SECONDS = 5.0


@functools.cache
def revision() -> str:
    """The git commit this smtpmon comes from, or "unknown"."""
    checkout = Path(__file__).resolve().parent.parent
    found = git_revision(checkout) if (checkout / ".git").exists() else None
    if found is None:
        try:
            from smtpmon._build import REVISION as found  # written by setup.py; see above
        except ImportError:
            found = None
    return found or UNKNOWN


def git_revision(checkout: Path) -> str | None:
    """HEAD's commit in the git checkout at `checkout`; None if git cannot say (no git, not
    a checkout, a repository owned by another user that git refuses to read)."""
    # The checkout given, not one named by the caller's GIT_DIR or GIT_WORK_TREE.
    environment = {name: value for name, value in os.environ.items() if not name.startswith("GIT_")}
    try:
        result = subprocess.run(["git", "rev-parse", "--verify", "--quiet", "HEAD"], cwd=checkout,
                                env=environment, capture_output=True, text=True,
                                timeout=GIT_TIMEOUT_SECONDS, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and _COMMIT.fullmatch(commit) else None
