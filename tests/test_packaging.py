"""A built wheel, installed into a fresh virtualenv, gives the `smtpmon` command with every
subcommand, the example files under <prefix>/share/smtpmon, and one version everywhere.

The wheel is built the way `pip install .` builds it, from a copy of the source tree (so that
`build/` and `*.egg-info` never appear in the working tree others use) and without build
isolation (so offline: the test extra brings setuptools). The fresh virtualenv has no pip and no
dependencies of its own: a `.pth` line lends it the test interpreter's site-packages for
prometheus-client and friends, while smtpmon itself can only come from the wheel (`.pth` files
in a directory added that way are not run, so the dev tree's editable install stays out).
"""

from __future__ import annotations

import email.parser
import os
import platform
import shutil
import ssl
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import unavailable
from markdown_pages import broken_links, relative_links
from prometheus_client.parser import text_string_to_metric_families

from smtpmon import __version__
from smtpmon.cli import SUBCOMMANDS
from smtpmon.exposition.state import ExporterState

REPO = Path(__file__).resolve().parent.parent
SOURCES = ("pyproject.toml", "setup.py", "README.md", "LICENSE", "CHANGELOG.md", "smtpmon", "config", "systemd", "docs")
# Installed file (under <prefix>) -> its source in the repository, for every file that ships.
SHARED_DIRS = {
    "share/smtpmon": "config",
    "share/smtpmon/systemd": "systemd",
    "share/doc/smtpmon/docs": "docs",
}
INSTALLED_DOCS = "share/doc/smtpmon"


def expected_data_files() -> dict[str, Path]:
    files = {f"{INSTALLED_DOCS}/{name}": REPO / name for name in ("README.md", "LICENSE", "CHANGELOG.md")}
    for installed, source in SHARED_DIRS.items():
        for path in sorted((REPO / source).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                files[f"{installed}/{path.relative_to(REPO / source).as_posix()}"] = path
    return files


def copy_sources(source: Path) -> None:
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__", "_build.py"))
        else:
            shutil.copy2(REPO / name, source / name)


def git(*args: str, cwd: Path) -> str:
    if shutil.which("git") is None:
        unavailable("git is missing (.ci/run installs it)")
    environment = {name: value for name, value in _without_pythonpath().items() if not name.startswith("GIT_")}
    environment.update(GIT_AUTHOR_NAME="test", GIT_AUTHOR_EMAIL="test@test.example",
                       GIT_COMMITTER_NAME="test", GIT_COMMITTER_EMAIL="test@test.example")
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True,
                          env=environment, timeout=30).stdout.strip()


def commit_all(source: Path) -> str:
    """Make `source` a git checkout with one commit of everything in it; the commit."""
    git("init", "-q", cwd=source)
    git("add", "-A", cwd=source)
    git("commit", "-q", "-m", "the sources", cwd=source)
    return git("rev-parse", "HEAD", cwd=source)


@pytest.fixture(scope="module")
def source_commit(tmp_path_factory) -> tuple[Path, str]:
    """A copy of the sources that is a git checkout, and its commit."""
    source = tmp_path_factory.mktemp("packaging") / "source"
    copy_sources(source)
    return source, commit_all(source)


@pytest.fixture(scope="module")
def wheel(source_commit) -> Path:
    source, _ = source_commit
    work = source.parent
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
         "--quiet", "--wheel-dir", str(work / "dist"), str(source)],
        capture_output=True, text=True, timeout=60,
    )
    assert build.returncode == 0, build.stderr
    (built,) = (work / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=30)
    python = root / "bin" / "python"
    install = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
         "--quiet", str(wheel)],
        capture_output=True, text=True, timeout=60,
    )
    assert install.returncode == 0, install.stderr
    # Only now lend the dependencies: pip, seeing another smtpmon on the path, would try to
    # replace it. Wherever they are installed: a virtualenv, the user's or the system's site.
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    dependencies = [path for path in sys.path if path.endswith(("site-packages", "dist-packages"))]
    (Path(site) / "smtpmon-test-dependencies.pth").write_text("\n".join(dependencies) + "\n")
    return root


def smtpmon(venv: Path, *args: str) -> subprocess.CompletedProcess:
    """The installed console script, run from outside the source tree."""
    return subprocess.run([str(venv / "bin" / "smtpmon"), *args], capture_output=True, text=True,
                          cwd=venv, env=_without_pythonpath(), timeout=30)


def _without_pythonpath() -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}


def test_wheel_has_the_package_the_entry_point_and_the_version(wheel):
    assert wheel.name == f"smtpmon-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        dist_info = f"smtpmon-{__version__}.dist-info"
        metadata = email.parser.Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
    assert metadata["Version"] == __version__
    assert "[console_scripts]\nsmtpmon = smtpmon.cli:main" in entry_points
    for module in ("smtpmon.cli", "smtpmon.__main__", *(module for module, _ in SUBCOMMANDS.values())):
        assert module.replace(".", "/") + ".py" in names, f"the wheel has no {module}"
    assert not any(path.startswith(("tests/", "benchmarks/", "tools/")) for path in names)


def test_wheel_ships_every_example_file_unchanged(wheel):
    prefix = f"smtpmon-{__version__}.data/data/"
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name[len(prefix):]: name for name in archive.namelist() if name.startswith(prefix)}
        for installed, source in expected_data_files().items():
            assert installed in shipped, f"{source.relative_to(REPO)} is not in the wheel as {installed}"
            assert archive.read(shipped[installed]) == source.read_bytes(), installed
    assert "share/smtpmon/smtpmon.yml" in shipped
    assert "share/smtpmon/prometheus/smtpmon-alerts.yml" in shipped


def test_installed_command_comes_from_the_wheel_and_prints_the_version(venv):
    located = subprocess.run([str(venv / "bin" / "python"), "-c", "import smtpmon; print(smtpmon.__file__)"],
                             capture_output=True, text=True, cwd=venv, env=_without_pythonpath(), timeout=30)
    assert Path(located.stdout.strip()).is_relative_to(venv), located
    result = smtpmon(venv, "--version")
    assert (result.returncode, result.stdout) == (0, f"smtpmon {__version__}\n"), result.stderr


def test_installed_command_has_every_subcommand(venv):
    overview = smtpmon(venv, "--help")
    assert overview.returncode == 0, overview.stderr
    for name in SUBCOMMANDS:
        assert name in overview.stdout
        result = smtpmon(venv, name, "--help")
        assert result.returncode == 0, f"smtpmon {name} --help: {result.stderr}"
        assert result.stdout.startswith(f"usage: smtpmon {name}"), result.stdout


def test_installed_subcommands_run(venv):
    explained = smtpmon(venv, "explain", "421")
    assert explained.returncode == 0, explained.stderr
    assert "class 4yz transient_negative" in explained.stdout
    # The shipped example configuration is valid where it is installed (its password file comes
    # from systemd's $CREDENTIALS_DIRECTORY, absent here).
    example = venv / "share" / "smtpmon" / "smtpmon.yml"
    checked = smtpmon(venv, "check-config", "--skip-secrets", str(example))
    assert checked.returncode == 0, checked.stderr
    assert checked.stdout.startswith(f"{example}: OK: "), checked.stdout


def test_installed_files_are_under_the_documented_prefix(venv):
    for installed, source in expected_data_files().items():
        assert (venv / installed).read_bytes() == source.read_bytes(), installed


def test_wheel_declares_the_license_and_carries_its_text(wheel):
    with zipfile.ZipFile(wheel) as archive:
        dist_info = f"smtpmon-{__version__}.dist-info"
        metadata = email.parser.Parser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        license_text = archive.read(f"{dist_info}/licenses/LICENSE").decode()
    assert metadata["License-Expression"] == "Apache-2.0"
    assert metadata["License-File"] == "LICENSE"
    assert "Apache License\n                           Version 2.0, January 2004" in license_text
    assert "END OF TERMS AND CONDITIONS" in license_text


def test_installed_documentation_links_work_where_it_is_installed(venv):
    """<prefix>/share/doc/smtpmon/ is read on its own (a browser, a markdown viewer): every
    relative link of every installed page must lead to an installed page and heading."""
    docs = venv / INSTALLED_DOCS
    pages = [docs / "README.md", *sorted((docs / "docs").glob("*.md"))]
    assert len(pages) == 1 + len(list((REPO / "docs").glob("*.md")))
    linked = 0
    for page in pages:
        assert broken_links(page) == [], page.relative_to(venv)
        linked += len(relative_links(page))
    assert linked > 20  # the README and the index link every page
    assert "../README.md#installing" in relative_links(docs / "docs" / "index.md")
    assert "LICENSE" in relative_links(docs / "README.md")


def test_build_info_metric_carries_the_same_version():
    page = ExporterState().render().decode()
    assert f'smtpmon_build_info{{version="{__version__}",' in page


def build_info(python: Path, cwd: Path, env: dict[str, str]) -> dict[str, str]:
    """The labels of smtpmon_build_info as that Python's smtpmon renders them."""
    result = subprocess.run(
        [str(python), "-c", "from smtpmon.exposition.state import ExporterState; "
                            "print(ExporterState().render().decode())"],
        capture_output=True, text=True, cwd=cwd, env=env, timeout=30)
    assert result.returncode == 0, result.stderr
    (family,) = [family for family in text_string_to_metric_families(result.stdout)
                 if family.name == "smtpmon_build_info"]
    (sample,) = family.samples
    return sample.labels


def test_installed_wheel_reports_the_commit_it_was_built_from(venv, source_commit):
    _, commit = source_commit
    labels = build_info(venv / "bin" / "python", venv, _without_pythonpath())
    assert labels == {"version": __version__, "revision": commit,
                      "python_version": platform.python_version(), "openssl_version": ssl.OPENSSL_VERSION}


def test_a_checkout_reports_its_head_as_it_runs(tmp_path):
    # An editable install or `python -m smtpmon` in the tree: HEAD now, never a stale one.
    source = tmp_path / "checkout"
    copy_sources(source)
    first = commit_all(source)
    environment = {**_without_pythonpath(), "PYTHONPATH": str(source)}
    assert build_info(Path(sys.executable), tmp_path, environment)["revision"] == first
    (source / "README.md").write_text("changed\n")
    git("commit", "-q", "-a", "-m", "a second commit", cwd=source)
    second = git("rev-parse", "HEAD", cwd=source)
    assert second != first
    assert build_info(Path(sys.executable), tmp_path, environment)["revision"] == second


def test_sources_outside_git_report_an_unknown_revision(tmp_path):
    source = tmp_path / "tarball"
    copy_sources(source)
    environment = {**_without_pythonpath(), "PYTHONPATH": str(source)}
    assert build_info(Path(sys.executable), tmp_path, environment)["revision"] == "unknown"
