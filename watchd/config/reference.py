"""The key reference of the rules file, made from the schema: its one source is the descriptions.

Each key's meaning is written once, as the ``description`` of its pydantic field
(``watchd.config.schema`` and each action kind's module); its type, allowed values and
default come from the field itself. This module renders them as Markdown for README.md and
as roff for the man page watchd.rules(5), between marker comments in each, and leaves the
prose around the markers alone. ``tests/test_reference.py`` fails when either file differs
from what this makes.

After changing a description, a default or a type, from the repository's root::

    .venv/bin/python -m watchd.config.reference --write    # rewrite both blocks
    .venv/bin/python -m watchd.config.reference --check    # exit 1 if either is stale
    .venv/bin/python -m watchd.config.reference            # print the Markdown
    .venv/bin/python -m watchd.config.reference --roff     # print the roff
"""

from __future__ import annotations

import argparse
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    PlainValidator,
    TypeAdapter,
    WithJsonSchema,
    WrapValidator,
)
from pydantic.fields import FieldInfo

from watchd.actions.kind import ActionKind
from watchd.actions.registry import KINDS
from watchd.config.schema import DropIn, RulesFile
from watchd.core.events import EVENT_NAMES
from watchd.core.placeholders import PLACEHOLDERS
from watchd.schema.fields import (
    MAX_DURATION,
    OWNER,
    AbsolutePath,
    ArgTemplate,
    Duration,
    EnvName,
    EventName,
    KindName,
    Kinds,
    Pattern,
    Timeout,
    UserName,
)

__all__ = ["REGENERATE", "REPO", "TARGETS", "UNSET", "Key", "NamedType", "Section", "Target",
           "main", "markdown", "models", "roff", "sections", "stale", "write"]

REPO = Path(__file__).resolve().parents[2]
UNSET = "unset"  # the default of a key whose absence means something of its own
REGENERATE = "python -m watchd.config.reference --write"
_GENERATED = f"Generated from the schema's descriptions by `{REGENERATE}`: edit those, not this."


# ---- what the reference holds --------------------------------------------------------------
# Its text is plain, with `code` spans in backquotes, as the descriptions are written: each
# renderer turns the spans into its own markup.


@dataclass(frozen=True)
class Key:
    name: str
    type: str
    default: str | None  # None: the key is required; else written as in a file, or UNSET
    description: str


@dataclass(frozen=True)
class Section:
    title: str  # the man page's section heading
    caption: str  # the README's heading of its table
    intro: str
    keys: tuple[Key, ...]


@dataclass(frozen=True)
class NamedType:
    """A type of ``watchd.schema.fields``, called by a name rather than by what it is made of."""

    alias: object
    name: str
    plural: str
    meaning: str  # for the legend of types; empty: needs none (its name says it all)


def _choices(values: Sequence[object]) -> str:
    """`a`, `b` or `c`."""
    spans = [f"`{value}`" for value in values]
    return spans[0] if len(spans) == 1 else ", ".join(spans[:-1]) + " or " + spans[-1]


NAMED_TYPES = (
    NamedType(Duration, "duration", "durations",
              "a number of seconds, or a string with a unit: `250ms`, `10s`, `5m`, `1h`; at most "
              f"{MAX_DURATION / 86400:g} days (`{MAX_DURATION / 3600:g}h`)"),
    NamedType(Timeout, "duration, not 0", "durations, not 0", ""),
    NamedType(AbsolutePath, "absolute path", "absolute paths",
              "begins with `/`; no placeholders"),
    NamedType(EventName, "event", "events",
              f"{_choices(EVENT_NAMES)}; the inotify spelling (`IN_CLOSE_WRITE`) is accepted "
              "too, in any case"),
    NamedType(Pattern, "pattern", "patterns", "gitignore-style, relative to the watched path"),
    NamedType(ArgTemplate, "argument", "arguments",
              "an argv element, never seen by a shell; its placeholders "
              + ", ".join(f"`{{{name}}}`" for name in PLACEHOLDERS)
              + " are replaced byte for byte; `{{` and `}}` are literal braces"),
    NamedType(UserName, "user", "users", f"a user name of this system, or `{OWNER}`"),
    NamedType(EnvName, "variable name", "variable names",
              "letters, digits and `_`, not first a digit; not `WATCHD_*`"),
    NamedType(Kinds, f"{_choices(typing.get_args(KindName))}, or a list of them",
              "kinds", ""),
)


# ---- the models, walked from the rules file and the registry of action kinds ---------------


def models() -> Iterator[type[BaseModel]]:
    """Every model of the rules files, each once: the files', their nested ones, the kinds'."""
    seen: set[type[BaseModel]] = set()
    pending: list[type[BaseModel]] = [RulesFile, DropIn, *(kind.model for kind in KINDS)]
    while pending:
        model = pending.pop(0)
        if model not in seen:
            seen.add(model)
            yield model
            pending.extend(nested for field in model.model_fields.values()
                           for nested in _models_in(field.annotation))


def sections() -> list[Section]:
    """The file's keys, those of each model below it, then those of each action kind."""
    action_models = {kind.model for kind in KINDS}
    found = [Section("TOP-LEVEL KEYS", "Top-level keys", "", _keys(RulesFile))]
    found.extend(_nested_sections(RulesFile, skip=action_models))
    documented: dict[type[BaseModel], ActionKind] = {}
    for kind in KINDS:
        found.append(_kind_section(kind, documented))
    return found


def _nested_sections(model: type[BaseModel], skip: set[type[BaseModel]]) -> Iterator[Section]:
    for name, field in model.model_fields.items():
        for nested in _models_in(field.annotation):
            if nested in skip:
                continue
            many = typing.get_origin(field.annotation) is list
            caption = f"Each of `{name}`" if many else f"`{name}`"
            yield Section(name.upper(), caption, "", _keys(nested))
            yield from _nested_sections(nested, skip)


def _kind_section(kind: ActionKind, documented: dict[type[BaseModel], ActionKind]) -> Section:
    """A kind's keys; those under its key when it wraps a mapping; those it shares with an
    earlier kind by inheritance named, not listed again."""
    model, wrapper = _unwrapped(kind)
    intro = [_sentence(wrapper.description)] if wrapper and wrapper.description else []
    keys = f"Its keys go in a mapping under `{kind.key}`" if wrapper else "Its keys are"
    shared: tuple[str, ...] = ()
    base = next((earlier for earlier in documented if issubclass(model, earlier)), None)
    if base is not None:
        shared = tuple(base.model_fields)
        names = ", ".join(f"`{name}`" for name in shared)
        colon = ":" if wrapper else ""
        intro.append(f"{keys}{colon} those of a `{documented[base].key}` action ({names}), "
                     "and these.")
    elif wrapper:
        intro.append(f"{keys}.")
    documented[model] = kind
    return Section(f"{kind.key.upper()} ACTIONS", f"A `{kind.key}` action", " ".join(intro),
                   tuple(key for key in _keys(model) if key.name not in shared))


def _unwrapped(kind: ActionKind) -> tuple[type[BaseModel], FieldInfo | None]:
    """The model whose keys a kind's action has: the kind's, or the one its only key holds."""
    fields = kind.model.model_fields
    if list(fields) == [kind.key]:
        inner = _models_in(fields[kind.key].annotation)
        if len(inner) == 1:
            return inner[0], fields[kind.key]
    return kind.model, None


def _models_in(annotation: object) -> list[type[BaseModel]]:
    """The models an annotation is, holds or chooses among."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [model for arg in typing.get_args(annotation) for model in _models_in(arg)]


def _keys(model: type[BaseModel]) -> tuple[Key, ...]:
    return tuple(Key(name, _type_text(field.annotation, field.metadata), _default_text(field),
                     field.description or "")
                 for name, field in model.model_fields.items())


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith((".", ":", "!", "?")) else text + "."


# ---- types and defaults, in words ----------------------------------------------------------

_VALIDATORS = (AfterValidator, BeforeValidator, PlainValidator, WrapValidator)
_BASE_NAMES: dict[object, tuple[str, str]] = {
    bool: ("boolean", "booleans"), int: ("integer", "integers"), float: ("number", "numbers"),
    str: ("string", "strings"),
}


def _validators(metadata: Sequence[object]) -> tuple[Callable[..., Any], ...]:
    return tuple(item.func for item in metadata if isinstance(item, _VALIDATORS))


_BY_VALIDATORS = {_validators(typing.get_args(named.alias)[1:]): named for named in NAMED_TYPES}


def _named(metadata: Sequence[object]) -> NamedType | None:
    validators = _validators(metadata)
    return _BY_VALIDATORS.get(validators) if validators else None


def _type_text(annotation: object, metadata: Sequence[object], plural: bool = False) -> str:
    """What a value of this type is, in words: "duration", "non-empty list of absolute paths"."""
    named = _named(metadata)
    if named:
        return named.plural if plural else named.name
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Annotated:
        return _type_text(args[0], [*args[1:], *metadata], plural)
    if origin in (typing.Union, types.UnionType):
        return _union_text([arg for arg in args if arg is not type(None)], metadata, plural)
    if origin is Literal:
        return _choices(args)
    if origin is list:
        empty_allowed = not any(isinstance(item, annotated_types.MinLen) and item.min_length
                                for item in metadata)
        return ("list of " if empty_allowed else "non-empty list of ") + \
            _type_text(args[0], [], plural=True)
    if origin is dict:
        return (f"mapping of {_type_text(args[0], [], plural=True)} "
                f"to {_type_text(args[1], [], plural=True)}")
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "mappings" if plural else "mapping"
    return _base_text(annotation, metadata, plural)


def _union_text(choices: list[object], metadata: Sequence[object], plural: bool) -> str:
    if len(choices) == 1:  # an optional value: its default says what unset means
        return _type_text(choices[0], metadata, plural)
    if all(_models_in(choice) for choice in choices):  # one of several kinds of mapping
        return "mappings" if plural else "mapping"
    return " or ".join(_type_text(choice, metadata, plural) for choice in choices)


def _base_text(annotation: object, metadata: Sequence[object], plural: bool) -> str:
    """A plain type's name, with its bounds; one unknown here by the type its schema gives."""
    if annotation in _BASE_NAMES:
        singular, many = _BASE_NAMES[annotation]
        return (many if plural else singular) + _bounds(metadata)
    for item in metadata:
        if isinstance(item, WithJsonSchema) and item.json_schema:
            json_type = item.json_schema.get("type")
            if isinstance(json_type, str):
                return _base_text({"string": str, "integer": int, "number": float,
                                   "boolean": bool}.get(json_type, json_type), [], plural)
    return getattr(annotation, "__name__", str(annotation)).lower()


def _bounds(metadata: Sequence[object]) -> str:
    low = next((item.ge for item in metadata if isinstance(item, annotated_types.Ge)), None)
    high = next((item.le for item in metadata if isinstance(item, annotated_types.Le)), None)
    pattern = next((getattr(item, "pattern", None) for item in metadata
                    if getattr(item, "pattern", None)), None)
    longest = next((item.max_length for item in metadata
                    if isinstance(item, annotated_types.MaxLen)), None)
    bounds = []
    if low is not None and high is not None:
        bounds.append(f"{low} to {high}")
    elif low is not None:
        bounds.append(f"at least {low}")
    elif high is not None:
        bounds.append(f"at most {high}")
    if pattern:
        bounds.append(f"matching `{pattern}`")
    if longest is not None:
        bounds.append(f"at most {longest} characters")
    return "".join(f", {bound}" for bound in bounds)


def _default_text(field: FieldInfo) -> str | None:
    """The default as it is written in a rules file; None for a required key."""
    if field.is_required():
        return None
    value = field.get_default(call_default_factory=True)
    if value is None:
        return UNSET
    if isinstance(value, BaseModel):
        written: object = value.model_dump(mode="json", exclude_defaults=True)
    else:  # through the field's serializer, which writes a duration as `10s`
        written = TypeAdapter(field.rebuild_annotation()).dump_python(value, mode="json")
    return f"`{_yaml(written)}`"


def _yaml(value: object) -> str:
    """A value in YAML's flow style, as one would write it in the rules file."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_yaml(item) for item in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_yaml(k)}: {_yaml(v)}" for k, v in value.items()) + "}"
    return str(value)


def _used_types(found: Sequence[Section]) -> list[NamedType]:
    """The named types, with a meaning, that some key's type mentions."""
    words = " ".join(key.type for section in found for key in section.keys)
    return [named for named in NAMED_TYPES if named.meaning and _mentions(words, named)]


def _mentions(text: str, named: NamedType) -> bool:
    return re.search(rf"\b({re.escape(named.name)}|{re.escape(named.plural)})\b", text) is not None


# ---- Markdown ------------------------------------------------------------------------------

_CODE = re.compile(r"(`[^`]*`)")


def _markdown_text(text: str) -> str:
    """Text for a table cell: `|` escaped everywhere (GitHub's tables split on it even in code),
    and outside code what Markdown would take for emphasis or HTML."""
    parts = []
    for part in _CODE.split(text):
        if not part.startswith("`"):
            part = re.sub(r"([\\*<_])", r"\\\1", part)
        parts.append(part.replace("|", r"\|"))
    return "".join(parts)


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    lines.extend("| " + " | ".join(_markdown_text(cell) for cell in row) + " |" for row in rows)
    return lines


def markdown(found: Sequence[Section] | None = None) -> str:
    """The key reference for README.md: a table per section, then the types they name."""
    found = sections() if found is None else found
    lines = [f"<!-- {_GENERATED} -->"]
    for section in found:
        caption = f"**{_markdown_text(section.caption)}**"
        if section.intro:  # a sentence of its own after the caption
            caption = caption[:-2] + f".** {_markdown_text(section.intro)}"
        lines += ["", caption, ""]
        lines += _markdown_table(
            ["key", "type", "default", "meaning"],
            [[f"`{key.name}`", key.type, key.default or "required", key.description]
             for key in section.keys])
    lines += ["", "**Types**", ""]
    lines += _markdown_table(["type", "what it is"],
                             [[named.name, named.meaning] for named in _used_types(found)])
    return "\n".join(lines) + "\n\n"  # the blank line ends the table before the end marker


# ---- roff ----------------------------------------------------------------------------------


def _roff_text(text: str) -> str:
    """Text for a man page line: code in bold, backslashes and minus signs escaped, anything
    not ASCII as groff's named Unicode character, a leading dot or quote made literal."""
    parts = []
    for part in _CODE.split(text):
        code = part.startswith("`") and part.endswith("`") and len(part) > 1
        part = part[1:-1] if code else part
        part = part.replace("\\", r"\e")
        if code:
            part = r"\fB" + part.replace("-", r"\-") + r"\fR"
        parts.append(part)
    line = re.sub(r"[^\x00-\x7f]", lambda char: f"\\[u{ord(char.group()):04X}]", "".join(parts))
    return "\\&" + line if line.startswith((".", "'")) else line


def _roff_key(key: Key) -> list[str]:
    default = {None: "required", UNSET: "unset by default"}.get(key.default,
                                                                f"default {key.default}")
    lines = [".TP", _roff_text(f"`{key.name}`")]
    if key.description:
        lines += [_roff_text(_sentence(key.description)), ".br"]
    return [*lines, _roff_text(f"{key.type[:1].upper()}{key.type[1:]}; {default}.")]


def roff(found: Sequence[Section] | None = None) -> str:
    """The key reference for watchd.rules(5): a section per table, then the types they name."""
    found = sections() if found is None else found
    lines = [f'.\\" {_GENERATED}']
    for section in found:
        lines.append(f".SH {section.title}")
        if section.intro:
            lines.append(_roff_text(section.intro))
        for key in section.keys:
            lines += _roff_key(key)
    lines.append(".SH TYPES")
    for named in _used_types(found):
        lines += [".TP", _roff_text(f"`{named.name}`"), _roff_text(_sentence(named.meaning))]
    return "\n".join(lines) + "\n"


# ---- the files that hold it ----------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A file whose key reference is the text between two marker lines."""

    path: Path
    begin: str
    end: str
    render: Callable[[], str]

    def spliced(self, text: str) -> str:
        """``text`` with what lies between the markers made anew; ValueError without them."""
        start = text.find(self.begin + "\n")
        stop = text.find("\n" + self.end, start)
        if start < 0 or stop < 0:
            raise ValueError(f"{self.path}: no {self.begin!r} ... {self.end!r} markers")
        head = text[:start + len(self.begin) + 1]
        return head + self.render() + text[stop + 1:]


TARGETS = (
    Target(REPO / "README.md", "<!-- keys:begin -->", "<!-- keys:end -->", markdown),
    Target(REPO / "docs" / "watchd.rules.5", '.\\" keys:begin', '.\\" keys:end', roff),
)


def stale(targets: Sequence[Target] = TARGETS) -> list[Target]:
    """The targets whose key reference is not what the schema makes now."""
    return [target for target in targets
            if (text := target.path.read_text()) != target.spliced(text)]


def write(targets: Sequence[Target] = TARGETS) -> list[Target]:
    """Rewrite the stale targets; those it rewrote."""
    rewritten = stale(targets)
    for target in rewritten:
        target.path.write_text(target.spliced(target.path.read_text()))
    return rewritten


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m watchd.config.reference",
                                     description="The rules file's key reference, from the "
                                     "schema's descriptions.")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--write", action="store_true",
                      help="rewrite the reference in README.md and docs/watchd.rules.5")
    mode.add_argument("--check", action="store_true", help="exit 1 if either is stale")
    mode.add_argument("--roff", action="store_true", help="print the roff, not the Markdown")
    options = parser.parse_args(argv)
    try:
        return _run(options)
    except ValueError as error:  # a file without its markers
        print(error, file=sys.stderr)
        return 2


def _run(options: argparse.Namespace) -> int:
    if options.write:
        for target in write():
            print(f"rewrote {target.path.relative_to(REPO)}")
        return 0
    if options.check:
        outdated = stale()
        for target in outdated:
            print(f"{target.path.relative_to(REPO)} is stale: run {REGENERATE}", file=sys.stderr)
        return 1 if outdated else 0
    sys.stdout.write(roff() if options.roff else markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
