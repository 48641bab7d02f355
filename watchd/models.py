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
import urllib3.util
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    PlainSerializer,
    Tag,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from watchd.access import execute_problem
from watchd.events import EVENT_NAMES, KINDS, event_mask
from watchd.placeholders import parse_template
from watchd.secrets import SigningKey, read_signing_key
from watchd.trust import check_program

TRUSTED_PROGRAMS = "trusted_programs"  # validation context: programs checked in this load

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# Headers a webhook sets itself; a rule's `headers` may not replace them.
_OWN_HEADERS = frozenset({"content-type", "content-length", "host", "user-agent", "webhook-id",
                          "webhook-timestamp", "webhook-signature", "transfer-encoding"})


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


def _user(name: str) -> str:
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


def _http_url(url: str) -> str:
    try:
        parsed = urllib3.util.parse_url(url)
    except ValueError as error:
        raise ValueError(f"invalid URL {url!r}: {error}") from None
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise ValueError(f"a webhook URL must be http:// or https:// with a host, not {url!r}")
    if parsed.auth:
        raise ValueError("a webhook URL must not hold credentials (they would be logged): "
                         "send them in headers, e.g. Authorization")
    return url


def _header_name(name: str) -> str:
    if not _HEADER_NAME.match(name):
        raise ValueError(f"invalid HTTP header name {name!r}")
    if name.lower() in _OWN_HEADERS:
        raise ValueError(f"header {name!r} is set by watchd itself")
    return name


def _header_value(value: str) -> str:
    if any(c in value for c in "\r\n\0"):
        raise ValueError("an HTTP header value cannot hold CR, LF or NUL")
    return value


def _signing_key(path: object) -> SigningKey:
    if not isinstance(path, str):
        raise ValueError("secret_file must be a path")
    return read_signing_key(_absolute(path))


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
    user: Annotated[str, AfterValidator(_user)] | None = Field(
        default=None, description="run as this user and its groups; '@owner': as the owner of "
        "the file the event is about")
    allow_root_owner: bool = Field(default=False, description="with user: '@owner', also run "
                                   "for files owned by root (as root)")
    cwd: AbsolutePath | None = None
    env: dict[EnvName, EnvValue] = Field(default_factory=dict)

    @field_validator("command")
    @classmethod
    def _trusted_program(cls, command: list[str], info: ValidationInfo) -> list[str]:
        if not command[0].startswith("/") or "{" in command[0]:
            raise ValueError(f"command[0] must be an absolute path to a program, not "
                             f"{command[0]!r}")
        # A program found untrusted is not remembered: every action naming it gets its error.
        trusted: set[str] = (info.context or {}).get(TRUSTED_PROGRAMS, set())
        if command[0] not in trusted:
            check_program(command[0])
            trusted.add(command[0])
        return command

    @model_validator(mode="after")
    def _owner_only(self) -> CommandAction:
        if self.allow_root_owner and self.user != OWNER:
            raise ValueError("allow_root_owner applies only to user: '@owner'")
        return self

    @model_validator(mode="after")
    def _user_can_execute(self) -> CommandAction:
        # Else every event fails at run time; '@owner' is known only then.
        if self.user is not None and self.user != OWNER:
            entry = pwd.getpwnam(self.user)
            groups = os.getgrouplist(self.user, entry.pw_gid)
            problem = execute_problem(self.command[0], entry.pw_uid, entry.pw_gid, groups,
                                      user_name=self.user)
            if problem:
                raise ValueError(f"{problem}: user {self.user!r} cannot run "
                                 f"{self.command[0]}")
        return self


class Webhook(_Strict):
    """POST the event as JSON, signed per Standard Webhooks when a secret is given."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    url: Annotated[str, AfterValidator(_http_url)]
    secret_file: Annotated[
        SigningKey, BeforeValidator(_signing_key), WithJsonSchema({"type": "string"}),
        PlainSerializer(lambda key: key.path, return_type=str),
    ] | None = Field(default=None, description="a base64 key, optionally prefixed whsec_; "
                     "mode 0600 or stricter")
    timeout: Duration = Field(default=10.0, description="per attempt")
    retries: int = Field(default=5, ge=0, le=100, description="further attempts after the first")
    backoff: Duration = Field(default=1.0, description="the wait before the first retry; "
                              "doubled for each next one, up to 10 minutes, with jitter")
    headers: dict[Annotated[str, AfterValidator(_header_name)],
                  Annotated[str, AfterValidator(_header_value)]] = Field(default_factory=dict)


class WebhookAction(_Strict):
    webhook: Webhook


def _action_kind(data: Any) -> str | None:
    if isinstance(data, dict):
        for kind in ("command", "webhook"):
            if kind in data:
                return f"action[{kind}]"
    return None


Action = Annotated[
    Annotated[CommandAction, Tag("action[command]")] | Annotated[WebhookAction,
                                                                 Tag("action[webhook]")],
    Discriminator(_action_kind, custom_error_type="action_kind",
                  custom_error_message="an action needs a 'command' (an argv list) or a "
                                       "'webhook' (a mapping with a url)"),
]


class Rule(_Strict):
    """One rule: which paths and events, and what to do."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$", max_length=128)
    paths: list[AbsolutePath] = Field(min_length=1)
    events: list[EventName] = Field(default=["close_write", "moved_to"], min_length=1)
    recursive: bool = False
    include: list[Pattern] | None = Field(default=None, min_length=1)
    exclude: list[Pattern] = Field(default_factory=list)
    kind: Kinds = Field(default=["file", "dir"], min_length=1, description="what the path must "
                        "be for the rule to act: file (a regular file), dir, symlink, special "
                        "(FIFO, socket, device) or any, or a list of them; a symlink or a special "
                        "file reaches an action only when named")
    debounce: Duration | None = Field(default=None, description="act once when the path has "
                                      "been quiet this long, with its last event")
    max_parallel: int | None = Field(default=None, ge=1, le=10_000, description="at most this "
                                     "many actions of this rule at once; the rest wait, in order")
    on_busy: Literal["queue", "skip", "restart"] = Field(
        default="queue", description="an event for a path whose action still runs: queue one "
        "more run after it, skip it, or restart the action")
    ignore_case: bool = Field(default=False, description="include and exclude patterns match "
                              "names case-insensitively (IMG_0001.JPG matches *.jpg)")
    ignore_own_writes: bool = Field(default=False, description="ignore events on the path an "
                                    "action of this rule runs for, while it runs and 1 s after")
    enabled: bool = True
    actions: list[Action] = Field(min_length=1)


class Settings(_Strict):
    workers: int = Field(default=4, ge=1, le=256)
    queue_size: int = Field(default=10000, ge=1, le=10_000_000)
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    stop_grace: Duration = Field(default=10.0, description="on stop, how long running actions "
                                 "may finish before their process groups are killed")
    state_dir: AbsolutePath = Field(default="/var/lib/watchd", description="where webhook "
                                    "deliveries are kept until acknowledged, and dead letters")
    snapshot_limit: int = Field(default=500_000, ge=0, le=100_000_000, description="names kept "
                                "to recover from an inotify queue overflow (about 150 bytes "
                                "each); past it, deletions during an overflow go unreported")
    webhook_backlog: int = Field(default=10000, ge=1, le=1_000_000, description="deliveries "
                                 "waiting per webhook action; beyond it they are dropped, counted "
                                 "and logged")


class RulesFile(_Strict):
    """The main rules file."""

    version: Literal[1] = 1
    settings: Settings = Field(default_factory=Settings)
    rules: list[Rule] = Field(default_factory=list)


class DropIn(_Strict):
    """A file of ``rules.d/``: more rules, nothing else."""

    version: Literal[1] = 1
    rules: list[Rule] = Field(default_factory=list)
