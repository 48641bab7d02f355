"""The values a rules file may hold: durations, absolute paths, argv templates, users, names.

Each is a type with its validator, shared by the schema of the rules file
(``watchd.config.schema``) and of each action kind (``watchd.actions``). They only check
shape and values; ``watchd.config.compile`` turns what they validate into runtime objects.
"""

from __future__ import annotations

import math
import os
import pwd
import re
from typing import Annotated, Literal

import pathspec
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
)

from watchd.core.events import EVENT_NAMES, KINDS, event_mask
from watchd.core.placeholders import parse_template

TRUSTED_PROGRAMS = "trusted_programs"  # validation context: programs checked in this load

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
# The longest duration of any key: past a week, no window, poll, timeout or grace is what an
# admin means, and a wait of 3000000h is past what a thread's wait can take.
MAX_DURATION = 7 * 24 * 3600.0
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``10s``, ``5m``, ``1h`` or a plain number of seconds, at
    most ``MAX_DURATION``."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r}: use a number of seconds or a string such as "
            "'250ms', '10s', '5m', '1h'"
        )
    if not math.isfinite(seconds):
        raise ValueError(f"a duration must be a finite number of seconds, not {value!r}")
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    if seconds > MAX_DURATION:
        raise ValueError(f"a duration is at most {MAX_DURATION / 86400:g} days "
                         f"({MAX_DURATION / 3600:g}h), not {value!r}")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda seconds: f"{seconds:g}s", return_type=str),
    Field(json_schema_extra={"anyOf": [{"type": "number", "minimum": 0,
                                        "maximum": MAX_DURATION},
                                       {"type": "string", "pattern": _DURATION.pattern}]}),
]


def _not_zero(seconds: float) -> float:
    if seconds == 0:
        raise ValueError("a timeout of 0 would end every run at once: give how long one may take")
    return seconds


# A duration past which a run (or an attempt) is stopped: 0 is an error, not "no limit".
Timeout = Annotated[Duration, AfterValidator(_not_zero)]


def no_nul(text: str) -> str:
    if "\0" in text:
        raise ValueError("a NUL character cannot be passed to a command")
    return text


def absolute(path: str) -> str:
    no_nul(path)
    if _has_placeholder(path):
        raise ValueError(f"placeholders are not allowed here ({path!r}): give a fixed absolute "
                         "path")
    if not path.startswith("/"):
        raise ValueError(f"path must be absolute: {path!r}")
    return os.path.normpath(path)


def _has_placeholder(text: str) -> bool:
    """Whether ``text`` names a placeholder; a lone brace in a path is only a brace."""
    try:
        return any(isinstance(part, str) for part in parse_template(text))
    except ValueError:
        return False


def _template(text: str) -> str:
    parse_template(no_nul(text))
    return text


def _event_name(name: str) -> str:
    try:
        event_mask(name)
    except KeyError:
        raise ValueError(f"unknown event {name!r}; known: {' '.join(EVENT_NAMES)}") from None
    return name


def _pattern(pattern: str) -> str:
    try:
        pathspec.GitIgnoreSpec.from_lines([pattern])
    except Exception as error:
        raise ValueError(f"invalid pattern {pattern!r}: {error}") from None
    return pattern


OWNER = "@owner"
ANY_KIND = "any"
KindName = Literal["file", "dir", "symlink", "special", "any"]
_KIND_NAMES = [*KINDS, ANY_KIND]


def _one_or_many(value: object) -> object:
    return [value] if isinstance(value, str) else value


Kinds = Annotated[
    list[KindName],
    BeforeValidator(_one_or_many),
    WithJsonSchema({"anyOf": [{"enum": _KIND_NAMES},
                              {"type": "array", "items": {"enum": _KIND_NAMES}, "minItems": 1}]}),
]


def user(name: str) -> str:
    if name == OWNER:
        return name
    try:
        pwd.getpwnam(name)
    except KeyError:
        raise ValueError(f"no such user: {name!r}") from None
    return name


def _env_name(name: str) -> str:
    if not _ENV_NAME.match(name):
        raise ValueError(f"invalid environment variable name {name!r}")
    if name.startswith("WATCHD_"):
        raise ValueError(f"{name!r}: WATCHD_* variables are set by watchd itself")
    return name


AbsolutePath = Annotated[str, AfterValidator(absolute)]
ArgTemplate = Annotated[str, AfterValidator(_template)]
EventName = Annotated[str, AfterValidator(_event_name)]
Pattern = Annotated[str, AfterValidator(_pattern)]
EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, AfterValidator(no_nul)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


UserName = Annotated[str, AfterValidator(user)]
