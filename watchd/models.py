"""The rules file's schema, as pydantic models.

These models only check shape and values; ``watchd.rules`` compiles a validated
``RulesFile`` into the immutable objects the daemon runs on.
"""

from __future__ import annotations

import os
import pwd
import re
from typing import Annotated, Any, Literal

import pathspec
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    model_validator,
)

from watchd.events import EVENT_NAMES, event_mask
from watchd.placeholders import parse_template

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def parse_duration(value: object) -> float:
    """Seconds from ``250ms``, ``10s``, ``5m``, ``1h`` or a plain number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    else:
        raise ValueError(
            f"invalid duration {value!r}: use a number of seconds or a string such as "
            "'250ms', '10s', '5m', '1h'"
        )
    if seconds < 0:
        raise ValueError(f"a duration cannot be negative: {value!r}")
    return seconds


Duration = Annotated[
    float,
    BeforeValidator(parse_duration),
    PlainSerializer(lambda seconds: f"{seconds:g}s", return_type=str),
    Field(json_schema_extra={"anyOf": [{"type": "number", "minimum": 0},
                                       {"type": "string", "pattern": _DURATION.pattern}]}),
]


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise ValueError("a NUL character cannot be passed to a command")
    return text


def _absolute(path: str) -> str:
    _no_nul(path)
    if not path.startswith("/"):
        raise ValueError(f"path must be absolute: {path!r}")
    return os.path.normpath(path)


def _template(text: str) -> str:
    parse_template(_no_nul(text))
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


def _user(name: str) -> str:
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


AbsolutePath = Annotated[str, AfterValidator(_absolute)]
ArgTemplate = Annotated[str, AfterValidator(_template)]
EventName = Annotated[str, AfterValidator(_event_name)]
Pattern = Annotated[str, AfterValidator(_pattern)]
EnvName = Annotated[str, AfterValidator(_env_name)]
EnvValue = Annotated[str, AfterValidator(_no_nul)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class CommandAction(_Strict):
    """Run a program directly (never through a shell) with the event in argv and environment."""

    command: list[ArgTemplate] = Field(min_length=1, description="argv; placeholders allowed")
    timeout: Duration = Field(default=300.0, description="the process group is killed past it")
    user: Annotated[str, AfterValidator(_user)] | None = None
    cwd: AbsolutePath | None = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _known_kind(cls, data: Any) -> Any:
        if isinstance(data, dict) and "command" not in data:
            if "webhook" in data:
                raise ValueError("webhook actions are not supported by this version of watchd")
            raise ValueError("an action needs a 'command' (an argv list)")
        return data

    @model_validator(mode="after")
    def _absolute_program(self) -> CommandAction:
        if not self.command[0].startswith("/") or "{" in self.command[0]:
            raise ValueError(
                f"command[0] must be an absolute path to a program, not {self.command[0]!r}"
            )
        return self


def _not_supported_yet(name: str) -> Any:
    def reject(value: Any) -> Any:
        if value is not None:
            raise ValueError(f"'{name}' is not supported by this version of watchd yet")
        return value

    return AfterValidator(reject)


class Rule(_Strict):
    """One rule: which paths and events, and what to do."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    paths: list[AbsolutePath] = Field(min_length=1)
    events: list[EventName] = Field(default=["close_write", "moved_to"], min_length=1)
    recursive: bool = False
    include: list[Pattern] | None = Field(default=None, min_length=1)
    exclude: list[Pattern] = Field(default_factory=list)
    kind: Literal["any", "file", "dir"] = "any"
    debounce: Annotated[Duration | None, _not_supported_yet("debounce")] = None
    max_parallel: Annotated[int | None, _not_supported_yet("max_parallel")] = None
    on_busy: Annotated[
        Literal["queue", "skip", "restart"] | None, _not_supported_yet("on_busy")
    ] = None
    enabled: bool = True
    actions: list[CommandAction] = Field(min_length=1)


class Settings(_Strict):
    workers: int = Field(default=4, ge=1, le=256)
    queue_size: int = Field(default=10000, ge=1, le=10_000_000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stop_grace: Duration = Field(default=10.0, description="on stop, how long running actions "
                                 "may finish before their process groups are killed")


class RulesFile(_Strict):
    """The main rules file."""

    version: Literal[1] = 1
    settings: Settings = Field(default_factory=Settings)
    rules: list[Rule] = Field(default_factory=list)


class DropIn(_Strict):
    """A file of ``rules.d/``: more rules, nothing else."""

    version: Literal[1] = 1
    rules: list[Rule] = Field(default_factory=list)
