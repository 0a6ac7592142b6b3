"""setuptools' one job beyond pyproject.toml: record the git commit a package is built from.

`pip install .`, `pip wheel .` and `make deb` build through here. The commit (HEAD of the
checkout being built, or the REVISION file `make deb` leaves in its copy of the sources) goes
into the built package as smtpmon/_build.py, where smtpmon.build reads it for
`smtpmon_build_info{revision}`. The checkout itself never gets that file: an editable install
reads the checkout's HEAD as it runs.
"""

import runpy
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

SOURCE = Path(__file__).resolve().parent
# smtpmon.build by its path: `import smtpmon` here could find another, installed smtpmon.
git_revision = runpy.run_path(str(SOURCE / "smtpmon" / "build.py"))["git_revision"]


def built_revision():
    if (SOURCE / ".git").exists():
        return git_revision(SOURCE)
    recorded = SOURCE / "REVISION"
    return recorded.read_text(encoding="ascii").strip() if recorded.is_file() else None


class BuildPyWithRevision(build_py):
    def run(self):
        super().run()
        revision = built_revision()
        if revision and not getattr(self, "editable_mode", False):
            target = Path(self.build_lib) / "smtpmon" / "_build.py"
            target.write_text(f'"""Written by setup.py at build time."""\n\nREVISION = "{revision}"\n',
                              encoding="ascii")


setup(cmdclass={"build_py": BuildPyWithRevision})
