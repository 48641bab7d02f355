"""Placeholders in an action's argv: ``{path}``, ``{name}`` …; ``{{`` and ``}}`` are literal braces.

A template is parsed once, when the rules load, into literal byte strings and
placeholder names, so that rendering is a join and an unknown placeholder is a
config error rather than a surprise at run time.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

PLACEHOLDERS: tuple[str, ...] = ("path", "name", "dir", "root", "event", "rule", "src_path",
                                 "paths", "count")
# What names one event's path: meaningless in a batch rule, which runs for many.
ONE_EVENT: frozenset[str] = frozenset({"path", "name", "dir", "src_path", "event"})
COUNT = "count"  # how many paths a job has: a batch's size, else 1
PATHS = "paths"  # a batch's paths: an argument of its own, one argument per path
PATHS_ALONE: tuple[str, ...] = (PATHS,)

_TOKEN = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")

def is_utf8(value: bytes) -> bool:
    """Whether a placeholder's value is text: what JSON and D-Bus can carry as it is."""
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


# A part is either literal bytes or the name of a placeholder.
Template = tuple[bytes | str, ...]


def parse_template(text: str) -> Template:
    """Split ``text`` into literal bytes and placeholder names; ValueError if malformed."""
    parts: list[bytes | str] = []
    literal: list[str] = []
    position = 0
    for token in _TOKEN.finditer(text):
        literal.append(text[position : token.start()])
        position = token.end()
        lexeme = token.group(0)
        if lexeme in ("{{", "}}"):
            literal.append(lexeme[0])
        elif token.group(1) is None:
            raise ValueError(
                f"unmatched {lexeme!r} in {text!r}: write {lexeme * 2!r} for a literal brace"
            )
        elif token.group(1) not in PLACEHOLDERS:
            known = ", ".join("{" + name + "}" for name in PLACEHOLDERS)
            raise ValueError(f"unknown placeholder {lexeme!r} in {text!r}; known: {known}")
        else:
            parts.append(os.fsencode("".join(literal)))
            literal = []
            parts.append(token.group(1))
    parts.append(os.fsencode("".join(literal) + text[position:]))
    template = tuple(part for part in parts if part != b"")
    if PATHS in template and template != PATHS_ALONE:
        raise ValueError(f"{{paths}} must be an argument of its own, not part of {text!r}: it "
                         "becomes one argument per path")
    return template


def render(template: Template, values: Mapping[str, bytes]) -> bytes:
    """The template with each placeholder replaced, byte for byte, by its value."""
    return b"".join(values[part] if isinstance(part, str) else part for part in template)


def render_argv(templates: tuple[Template, ...], values: Mapping[str, bytes]) -> list[bytes]:
    """An argv from its templates: ``{paths}`` becomes one argument per path (``values``
    holds them NUL-separated: no name holds a NUL)."""
    argv: list[bytes] = []
    for template in templates:
        if template == PATHS_ALONE:
            argv.extend(values[PATHS].split(b"\0"))
        else:
            argv.append(render(template, values))
    return argv
