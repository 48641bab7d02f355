"""What is wrong with the rules: each problem located in its file."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    """One error, located in a file."""

    file: str
    line: int
    column: int
    message: str
    warning: bool = False  # the rules are valid; this is something to fix all the same
    # The rules are fine, but this machine cannot run them (systemd_run without systemd): the
    # daemon and ``watchd check`` refuse them, ``explain`` and ``webhooks`` take them.
    refused_by_daemon: bool = False

    def __str__(self) -> str:
        kind = "warning: " if self.warning else ""
        return f"{self.file}:{self.line}:{self.column}: {kind}{self.message}"


class ConfigError(Exception):
    """The rules cannot be used; ``problems`` says where and why."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("\n".join(str(problem) for problem in problems))
        self.problems = problems
