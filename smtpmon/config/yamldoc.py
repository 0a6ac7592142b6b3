"""Strict YAML reading shared by the configuration and the web configuration files.

PyYAML silently keeps the last of two equal keys and words its syntax errors for programmers;
both files want every duplicate reported and syntax errors that name the line.
"""

from __future__ import annotations

from typing import Any

import yaml

from smtpmon.config.validation import describe


class YamlSyntaxError(ValueError):
    """The text is not YAML; the message names the line and column."""


def read_document(text: str) -> tuple[Any, list[str]]:
    """The document in `text` and the duplicate keys found in it (one message each)."""
    loader = _DuplicateKeyLoader(text)
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
