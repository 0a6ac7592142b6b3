"""Print each of smtpmon's runtime dependencies, its version and where it comes from; exit 1
unless every one is Debian's and satisfies smtpmon's requirement (pyproject.toml's floor).

`make test-debian-versions` runs it in a virtualenv of Debian's python3 that sees the system's
packages, before the test suite: a dependency that pip installed into the virtualenv instead
(because a floor is above Debian's version, say) would make that run test something other than
what the Debian package runs on.

    build/venv-debian/bin/python tools/debian_versions.py
"""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

DEBIAN_SITE = Path("/usr/lib/python3/dist-packages")


def runtime_requirements(distribution: str = "smtpmon") -> list[Requirement]:
    """The distribution's requirements that are not behind an extra."""
    requirements = [Requirement(text) for text in metadata.requires(distribution) or []]
    return [requirement for requirement in requirements if requirement.marker is None]


def main() -> int:
    problems = []
    for requirement in runtime_requirements():
        distribution = metadata.distribution(requirement.name)
        location = Path(distribution.locate_file("")).resolve()
        print(f"{requirement.name} {distribution.version} from {location} (smtpmon needs {requirement})")
        if location != DEBIAN_SITE:
            problems.append(f"{requirement.name} is not Debian's (not in {DEBIAN_SITE})")
        if not requirement.specifier.contains(distribution.version, prereleases=True):
            problems.append(f"{requirement.name} {distribution.version} does not satisfy {requirement}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
