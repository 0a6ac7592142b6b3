"""Reading the project's markdown pages: code blocks, relative links, heading anchors.

Shared by the docs drift tests (the repository's pages) and the packaging tests (the same
pages where a wheel installs them).
"""

from __future__ import annotations

import re
from pathlib import Path


def without_code_blocks(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)


def github_anchor(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = without_code_blocks(path.read_text(encoding="utf-8"))
    return {github_anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def relative_links(path: Path) -> list[str]:
    text = without_code_blocks(path.read_text(encoding="utf-8"))
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)
    return [link for link in links if not re.match(r"[a-z][a-z0-9+.-]*:", link)]


def broken_links(page: Path) -> list[str]:
    """The relative links of `page` that lead to no file, or to no such heading."""
    broken = []
    for link in relative_links(page):
        file_part, _, anchor = link.partition("#")
        target = (page.parent / file_part).resolve() if file_part else page
        if not target.exists():
            broken.append(f"{link} leads nowhere")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: no such heading")
    return broken
