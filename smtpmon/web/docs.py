"""`/docs`: the operator's documentation (docs/*.md), read-only, as HTML the status page links to.

The status page links each failure reason to its runbook section in troubleshooting.md; served
by the daemon, the link works from any browser that reaches the page, with the copy of the docs
that matches the running version. The pages come from the repository's docs/ (a source tree or
an editable install) or the installed copy (<prefix>/share/doc/smtpmon, see pyproject.toml).
Only names listed in that directory are served: a request never becomes a path.

The Markdown is rendered by a small converter that knows what these docs use: headings (with
GitHub's anchors, so links between the docs keep working), fenced code, lists, tables, inline
code, emphasis and links. Everything else shows as text; everything is escaped.
"""

from __future__ import annotations

import functools
import html
import re
import sys
from pathlib import Path

_PAGE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")
RUNBOOK = "troubleshooting"
RUNBOOK_FAILURES = "failures-by-reason"


def docs_directory() -> Path | None:
    """Where the docs are: next to the package in a source tree, else the installed copy."""
    for candidate in (Path(__file__).resolve().parents[2] / "docs",
                      Path(sys.prefix) / "share" / "doc" / "smtpmon"):
        if (candidate / f"{RUNBOOK}.md").is_file():
            return candidate
    return None


def page_names(directory: Path | None) -> list[str]:
    if directory is None:
        return []
    return sorted(path.stem for path in directory.glob("*.md") if _PAGE_NAME.fullmatch(path.stem))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@functools.cache
def _runbook_sections(directory: Path | None) -> tuple[tuple[frozenset[str], str], ...]:
    """(words of the heading, anchor) for each section of the runbook's failures."""
    if directory is None:
        return ()
    sections = []
    for line in (directory / f"{RUNBOOK}.md").read_text(encoding="utf-8").splitlines():
        if line.startswith("### "):
            words = frozenset(re.findall(r"[a-z_]+", line[4:].lower()))
            sections.append((words, slug(line[4:])))
    return tuple(sections)


def runbook_link(reason: str | None, directory: Path | None) -> str:
    """The URL of the runbook section for a failure reason (the section on failures by reason
    when no heading names it)."""
    for words, anchor in _runbook_sections(directory):
        if reason is not None and (reason in words or f"{reason}s" in words):
            return f"/docs?page={RUNBOOK}#{anchor}"
    return f"/docs?page={RUNBOOK}#{RUNBOOK_FAILURES}"


def render_page(name: str, directory: Path | None, version: str) -> bytes | None:
    """The page as HTML, or None when there is no such page."""
    if name not in page_names(directory):
        return None
    text = (directory / f"{name}.md").read_text(encoding="utf-8")
    title = html.escape(name)
    body = markdown_to_html(text)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>smtpmon docs: {title}</title><link rel="icon" href="data:,">'
            f"<style>{_STYLE}</style></head><body>"
            f'<nav><a href="/">status</a> &middot; <a href="/docs">docs</a> &middot; '
            f"smtpmon {html.escape(version)}</nav>\n{body}</body></html>\n").encode()


def render_index(directory: Path | None, version: str) -> bytes:
    names = page_names(directory)
    items = "".join(f'<li><a href="/docs?page={name}">{name}</a></li>' for name in names)
    where = ("<p>No documentation found: neither a source tree's docs/ nor "
             "&lt;prefix&gt;/share/doc/smtpmon.</p>" if directory is None else
             f"<p>From <code>{html.escape(str(directory))}</code>.</p>")
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<title>smtpmon docs</title><link rel="icon" href="data:,">'
            f"<style>{_STYLE}</style></head><body>"
            f'<nav><a href="/">status</a> &middot; smtpmon {html.escape(version)}</nav>'
            f"<h1>Documentation</h1>{where}<ul>{items}</ul></body></html>\n").encode()


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 60em; color: #222;
       line-height: 1.45; padding: 0 1em; }
pre { background: #f4f4f4; padding: .6em; overflow-x: auto; }
code { font-size: .95em; } table { border-collapse: collapse; }
th, td { border: 1px solid #ddd; padding: .2em .5em; text-align: left; vertical-align: top; }
h2, h3 { margin-top: 1.6em; } :target { background: #fff3c4; }
nav { font-size: .9em; color: #555; }
"""

_INLINE = re.compile(r"`([^`]+)`|\*\*([^*]+)\*\*|\[([^\]]+)\]\(([^)\s]+)\)")


def _link(target: str) -> str:
    """A link in the docs, as the served copy reaches it: `other.md#x` -> /docs?page=other#x."""
    path, hash_mark, anchor = target.partition("#")
    if re.fullmatch(r"https?://\S+", target):
        return target
    if path == "":
        return f"#{anchor}"
    if path.endswith(".md") and _PAGE_NAME.fullmatch(path[:-3]):
        return f"/docs?page={path[:-3]}" + (f"#{anchor}" if hash_mark else "")
    return "/docs"  # a file outside the docs (the README, a config file): the index


def _inline(text: str) -> str:
    out, position = [], 0
    for match in _INLINE.finditer(text):
        out.append(html.escape(text[position:match.start()]))
        code, bold, label, target = match.groups()
        if code is not None:
            out.append(f"<code>{html.escape(code)}</code>")
        elif bold is not None:
            out.append(f"<b>{html.escape(bold)}</b>")
        else:
            out.append(f'<a href="{html.escape(_link(target))}">{_inline(label)}</a>')
        position = match.end()
    out.append(html.escape(text[position:]))
    return "".join(out)


def markdown_to_html(text: str) -> str:
    out: list[str] = []
    lines = text.splitlines()
    index = 0
    paragraph: list[str] = []

    def flush() -> None:
        if paragraph:
            out.append(f"<p>{_inline(' '.join(paragraph))}</p>")
            paragraph.clear()

    while index < len(lines):
        line = lines[index]
        if line.startswith("```"):
            flush()
            end = index + 1
            while end < len(lines) and not lines[end].startswith("```"):
                end += 1
            out.append(f"<pre><code>{html.escape(chr(10).join(lines[index + 1:end]))}</code></pre>")
            index = end + 1
            continue
        heading = re.match(r"(#{1,6}) (.*)", line)
        if heading:
            flush()
            level, words = len(heading.group(1)), heading.group(2)
            out.append(f'<h{level} id="{html.escape(slug(words))}">{_inline(words)}</h{level}>')
        elif line.startswith("|"):
            flush()
            rows = []
            while index < len(lines) and lines[index].startswith("|"):
                cells = [cell.strip() for cell in lines[index].strip().strip("|").split("|")]
                if not all(re.fullmatch(r":?-+:?", cell) for cell in cells):
                    rows.append("".join(f"<td>{_inline(cell)}</td>" for cell in cells))
                index += 1
            out.append("<table>" + "".join(f"<tr>{row}</tr>" for row in rows) + "</table>")
            continue
        elif re.match(r"\s*([-*]|\d+\.) ", line):
            flush()
            items: list[str] = []
            while index < len(lines) and lines[index].strip():
                item = re.match(r"\s*([-*]|\d+\.) (.*)", lines[index])
                if item:
                    items.append(item.group(2))
                elif items:
                    items[-1] += " " + lines[index].strip()
                index += 1
            out.append("<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in items) + "</ul>")
            continue
        elif line.strip():
            paragraph.append(line.strip())
        else:
            flush()
        index += 1
    flush()
    return "\n".join(out)
