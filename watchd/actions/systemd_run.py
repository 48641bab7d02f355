"""The systemd_run action: the rule's command as a transient systemd service, one unit per run.

``systemd-run --wait --collect`` asks the service manager to run the command in a unit of its
own, named after the rule, with the rule's unit properties (sandboxing such as
``ProtectSystem=strict``, limits such as ``MemoryMax=``). systemd starts it, so the unit's
sandbox is its own, whatever the daemon's; its output goes to the journal under the unit.
watchd waits for the ``systemd-run`` client, whose exit status is the command's. A timeout,
a restart or a stop signals every process of the unit (``systemctl kill``), as ``command``
signals its process group.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import Annotated, ClassVar

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from watchd.actions.command import (
    EVENT_VARIABLES,
    IS_DIR_VARIABLE,
    JOB_VARIABLES,
    KILL_GRACE,
    Command,
    CommandAction,
    Output,
    RunningCommand,
    ended,
    in_parts,
    variables,
)
from watchd.actions.command import checks as command_checks
from watchd.actions.kind import ActionKind, Finding, Severity
from watchd.core.actions import ActionContext, Outcome, ProcessResult
from watchd.core.argmax import argv_size, environment_size, room_beside
from watchd.core.job import Job
from watchd.core.placeholders import PATHS_ALONE, is_utf8, render_argv
from watchd.core.rules import RunAs
from watchd.run.guard import Refused, owner
from watchd.schema.fields import OWNER, Strict

SYSTEMD_RUN = shutil.which("systemd-run") or "/usr/bin/systemd-run"
SYSTEMCTL = shutil.which("systemctl") or "/usr/bin/systemctl"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SYSTEMCTL_WAIT = 10.0  # seconds a `systemctl kill` may take before it is given up on
_PROPERTY_NAME = re.compile(r"^[A-Z][A-Za-z0-9]*$")
# Properties watchd sets from the action's own keys, or needs as they are to wait for the run.
_OWN_PROPERTIES = {
    "ExecStart": "command", "User": "user", "Group": "user", "WorkingDirectory": "cwd",
    "Environment": "env", "Type": None, "RemainAfterExit": None, "Restart": None,
}
# Properties log_output sets: the unit's streams go to FIFOs the daemon reads.
_LOG_OUTPUT_PROPERTIES = ("StandardOutput", "StandardError")
# Properties that would run or read what the per-run trust check never sees.
_UNCHECKED_PROPERTIES = ("Exec", "EnvironmentFile")
_SERVICE = "[Service]\nExecStart=/bin/true\n"
_LOCATED = re.compile(r"^.*?:(\d+): (.*)$")
# How systemd-run --wait tells how the unit's main process ended.
_TERMINATED = re.compile(r"Main processes terminated with: code=(\w+)[,/] ?status=(\d+)")
_NOT_STARTED = re.compile(r"^(Failed to start transient service unit: .*)$", re.MULTILINE)
# A unit whose client is gone (killed, the daemon with it) still ends: past its own timeout,
# its watchd's grace, and this margin.
RUNTIME_MARGIN = 10.0


def _property_name(name: str) -> str:
    if not _PROPERTY_NAME.match(name):
        raise ValueError(f"invalid unit property name {name!r}: a name such as MemoryMax")
    if name in _OWN_PROPERTIES:
        key = _OWN_PROPERTIES[name]
        raise ValueError(f"property {name!r} is set by watchd itself"
                         + (f": use the action's {key!r}" if key else ""))
    if name.startswith(_UNCHECKED_PROPERTIES):
        raise ValueError(f"property {name!r} would run or read what watchd's trust check "
                         "never sees: put it in the command")
    return name


def _property_value(value: object) -> str:
    """A property's value as systemd reads it: YAML's numbers and booleans as written."""
    if isinstance(value, bool):
        value = "yes" if value else "no"
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str):
        raise ValueError("a unit property's value must be a string, a number or a boolean")
    if any(char in value for char in "\r\n\0"):
        raise ValueError("a unit property's value cannot hold CR, LF or NUL")
    if value.endswith("\\"):
        raise ValueError("a unit property's value cannot end with a backslash")
    return value


PropertyName = Annotated[str, AfterValidator(_property_name)]
PropertyValue = Annotated[str, BeforeValidator(_property_value)]


class SystemdRunSettings(CommandAction):
    """The command, with what it has as a command action, and the unit's properties."""

    properties: dict[PropertyName, PropertyValue] = Field(
        default_factory=dict, description="unit properties, as `systemd-run --property`: "
        "sandboxing (`ProtectSystem: strict`, `ReadWritePaths: /srv/out`), limits (`MemoryMax: "
        "512M`, `CPUQuota: 50%`); names systemd does not know are errors, and those watchd sets "
        "itself (`ExecStart`, `User`, `Environment`, ...) are refused")

    @model_validator(mode="after")
    def _output_is_watchds(self) -> SystemdRunSettings:
        taken = sorted(name for name in self.properties if name in _LOG_OUTPUT_PROPERTIES)
        if self.log_output and taken:
            raise ValueError(f"property {taken[0]!r} is set by watchd itself with log_output: "
                             "true (the unit's output comes to watchd, line by line)")
        return self


class SystemdRunAction(Strict):
    systemd_run: SystemdRunSettings = Field(description="run the command as a transient "
                                            "systemd service, one unit per run, with the "
                                            "unit's `properties`; its output goes to the "
                                            "journal under the unit (with `log_output`, "
                                            "to watchd's, line by line)")


@dataclass(frozen=True, slots=True)
class SystemdRun:
    """A systemd_run action ready to run: the command, and the properties of its units."""

    command: Command
    properties: tuple[tuple[str, str], ...]

    kind: ClassVar[str] = "systemd_run"
    keeps_order: ClassVar[bool] = False

    @classmethod
    def compile(cls, model: SystemdRunAction) -> SystemdRun:
        spec = model.systemd_run
        return cls(Command.compile(spec), tuple(spec.properties.items()))

    @property
    def timeout(self) -> float:
        return self.command.timeout

    @property
    def retries(self) -> int:
        return self.command.retries

    @property
    def backoff(self) -> float:
        return self.command.backoff

    killed: ClassVar[str] = "every process of its unit killed"

    @property
    def streams_output(self) -> bool:
        """Whether the unit's output comes to watchd (``log_output``, no ``stdin``: with
        ``stdin``, ``--pipe`` gives the unit the client's streams)."""
        return self.command.log_output and self.command.stdin == "none"

    def describe(self, values: Mapping[str, bytes]) -> str:
        unit = unit_name(values["rule"].decode(), "ID")
        names = [*EVENT_VARIABLES.values(), IS_DIR_VARIABLE, *JOB_VARIABLES,
                 *(name for name, _ in self.command.env)]
        user = OWNER if self.command.as_owner else self.command.user
        shown = [os.fsdecode(arg) for arg in self.client_argv(
            unit, names, user, (values["rule"].decode(), "ID"), "$RUNTIME_DIRECTORY/output")]
        return f"{self.kind}: {shlex.join(shown)} {shlex.join(self.command.argv_for(values))}"

    def perform(self, context: ActionContext, job: Job, step: int,
                info: os.stat_result | None) -> Outcome:
        command = self.command
        try:
            user = owner(job, command.allow_root_owner, info) if command.as_owner else command.user
        except Refused as refusal:
            return context.skip(job, step, str(refusal))
        if not all(is_utf8(value) for value in job.values().values()):
            return context.skip(job, step, "systemd_run hands the command and its environment "
                                "to systemd over D-Bus, which carries only UTF-8: a name that "
                                "is not UTF-8 cannot reach a unit (use a command action)")
        return in_parts(job, step, self.room(job, user), lambda part: self.run_unit(
            context, RunningUnit(part, self, user), step))

    def run_unit(self, context: ActionContext, unit: RunningUnit, step: int) -> Outcome:
        return ended(unit.job, step, self, context.run_process(unit.job, step,
                                                               self.command.program, unit),
                     unit=unit.name)

    def room_for_paths(self, job: Job) -> int | None:
        return self.room(job, self.command.user)

    def room(self, job: Job, user: RunAs | None) -> int | None:
        """Bytes of ``{paths}`` one run of ``job`` can carry in the client's argv (see
        ``Command.room``): it runs with the variables only, named in its options."""
        if PATHS_ALONE not in self.command.argv or not job.batch:
            return None
        values = job.values()
        env = variables(job, self.command, user, values)
        client = self.client_for(unit_name(job.rule.name, "0" * RUN_ID_LENGTH), env, user, job)
        return room_beside(argv_size(client) + self.command.other_arguments_size(values)
                           + environment_size(env))

    def client_for(self, unit: str, env: Mapping[bytes, bytes], user: RunAs | None,
                   job: Job) -> list[bytes]:
        """``client_argv`` for a run of ``job`` in ``unit``."""
        # The runtime directory is looked for only by a run that writes there.
        return self.client_argv(unit, env, user, (job.rule.name, str(job.id)),
                                _output_directory() if self.streams_output else "")

    def client_argv(self, unit: str, env_names: Iterable[bytes], user: RunAs | str | None,
                    rule_and_job: tuple[str, str], output_directory: str) -> list[bytes]:
        """``systemd-run`` and its options, up to and with the ``--`` before the command.
        Each variable is named only: its value comes from the client's environment, so that
        what ``env`` holds is never in a command line others may read. With ``stdin``, the
        unit reads the client's (``--pipe``: its output then comes to the daemon too, not
        to the journal). With ``log_output``, the unit writes into the FIFOs in
        ``output_directory`` (``RunningUnit.output``); with ``stdin`` too, its journal lines
        carry the rule and the job instead (``LogExtraFields=``)."""
        runtime = self.command.timeout + 2 * KILL_GRACE + RUNTIME_MARGIN
        argv: list[str | bytes] = [
            SYSTEMD_RUN, "--wait", "--collect", "--service-type=exec", "--expand-environment=no",
            f"--unit={unit}", f"--property=TimeoutStopSec={KILL_GRACE:g}s",
            f"--property=RuntimeMaxSec={runtime:g}s"]
        if user is not None:
            argv.append(f"--uid={user if isinstance(user, str) else user.name}")
        if self.command.cwd is not None:
            argv.append(b"--working-directory=" + self.command.cwd)
        if self.command.stdin != "none":
            argv.append("--pipe")
        if self.streams_output:
            argv.extend(f"--property=Standard{name}=file:{fifo(output_directory, unit, stream)}"
                        for name, stream in (("Output", "stdout"), ("Error", "stderr")))
        elif self.command.log_output:
            rule, job = rule_and_job
            argv.extend([f"--property=LogExtraFields=WATCHD_RULE={rule}",
                         f"--property=LogExtraFields=WATCHD_JOB={job}"])
        argv.extend(b"--setenv=" + name for name in env_names)
        argv.extend(f"--property={name}={value}" for name, value in self.properties)
        return [os.fsencode(arg) for arg in argv] + [b"--"]


def fifo(directory: str, unit: str, stream: str) -> str:
    """The FIFO a unit's ``stream`` (stdout, stderr) goes to, with ``log_output``."""
    return f"{directory}/{unit}.{stream}"


@functools.cache
def _output_directory() -> str:
    """Where a unit's output FIFOs are made: the service's runtime directory (systemd's
    RuntimeDirectory=, root's), else a private one of the daemon's."""
    runtime = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    if runtime:
        directory = os.path.join(runtime, "output")
        os.makedirs(directory, mode=0o700, exist_ok=True)
        return directory
    return tempfile.mkdtemp(prefix="watchd-output-")


RUN_ID_LENGTH = 12  # hex digits of a run's id in its unit's name


def unit_name(rule: str, run: str) -> str:
    return f"watchd-{rule}-{run}.service"


class RunningUnit(RunningCommand):
    """One run of a systemd_run action: the ``systemd-run`` client, and the unit it waits on."""

    def __init__(self, job: Job, action: SystemdRun, user: RunAs | None) -> None:
        super().__init__(job, action.command, user)
        self.action = action
        self.name = unit_name(job.rule.name, uuid.uuid4().hex[:RUN_ID_LENGTH])
        self.forks = False  # the client runs as the daemon; systemd switches to the user
        self._killing: threading.Thread | None = None  # the last ``systemctl kill``

    def output(self) -> Output | None:
        """The unit's stdout and stderr into FIFOs that systemd opens for it (the client's
        stderr is systemd-run's report, not the command's). With ``stdin``, ``--pipe`` gives
        the unit the client's streams: then its lines are only tagged (``client_argv``)."""
        if not self.action.streams_output:
            return None
        directory = _output_directory()
        return Output(self.job, {stream: fifo(directory, self.name, stream)
                                 for stream in ("stdout", "stderr")}, logs_stderr=False)

    def spawn(self, values: Mapping[str, bytes], stderr: int, stdin: int | None,
              stdout: int | None) -> subprocess.Popen[bytes]:
        env = variables(self.job, self.command, self.user, values)
        argv = self.action.client_for(self.name, env, self.user, self.job)
        argv.extend(render_argv(self.command.argv, values))
        return subprocess.Popen(argv, env=env,
                                stdin=subprocess.DEVNULL if stdin is None else stdin,
                                stdout=subprocess.DEVNULL, stderr=stderr, start_new_session=True)

    def run(self) -> ProcessResult:
        """How the unit ended, as systemd-run told it: the exit status of its main process,
        or minus the signal that ended it; the client's own status says less."""
        result = super().run()
        if result.timed_out and self._killing is not None:
            # Its log line says every process of the unit was killed: so they are, first.
            self._killing.join(SYSTEMCTL_WAIT)
        told = result.stderr.decode("utf-8", "replace")
        not_started = _NOT_STARTED.search(told)
        if not_started:
            return replace(result, status=None, error=not_started.group(1))
        terminated = _TERMINATED.search(told)
        if terminated is None or result.timed_out:
            return result
        code, status = terminated.group(1), int(terminated.group(2))
        return replace(result, status=status if code == "exited" else -status)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal every process of the unit; with SIGKILL, the client too (it may be waiting
        for a unit that never started). ``systemctl`` runs on a thread of its own: this is
        called with locks held (a restart, the stop), and must not wait on it."""
        self._killing = threading.Thread(target=self._kill_unit, args=(sig,),
                                         name="watchd-unit-kill", daemon=True)
        self._killing.start()
        if sig == signal.SIGKILL:
            super().kill(sig)

    def _kill_unit(self, sig: int) -> None:
        # Should systemctl fail, the client is signalled all the same (SIGKILL).
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):
            subprocess.run([SYSTEMCTL, "kill", f"--signal={signal.Signals(sig).name}",
                            "--kill-whom=all", self.name], stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=SYSTEMCTL_WAIT, check=False)


def _checks(model: SystemdRunAction, batch: bool) -> Iterator[Finding]:
    """What a command's check finds in its argv; properties systemd does not take, located
    each; and the kind refused where systemd does not run."""
    for finding in command_checks(model.systemd_run, batch):
        yield Finding(("systemd_run", *finding.where), finding.message, finding.severity)
    properties = tuple(model.systemd_run.properties.items())
    for name, problem in _unknown_properties(properties):
        yield Finding(("systemd_run", "properties", name), problem, Severity.ERROR)
    if not os.path.isdir("/run/systemd/system"):
        yield Finding(("systemd_run",), "systemd_run needs watchd to run under systemd, and "
                      "this system was not booted with it (no /run/systemd/system)",
                      Severity.REFUSED_HERE)


@functools.lru_cache(maxsize=256)
def _unknown_properties(properties: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    """What ``systemd-analyze verify`` says of these properties, by name: an unknown name, a
    value it cannot parse. A name unknown to a service is tried in the unit's [Unit] section,
    where systemd-run --property takes it too. Nothing where systemd-analyze is missing."""
    found = dict(_verified(properties, "", _SERVICE))
    unknown = tuple((name, value) for name, value in properties
                    if found.get(name, "").startswith("Unknown key"))
    if unknown:
        in_unit = dict(_verified(unknown, "[Unit]\n", _SERVICE))
        for name, _ in unknown:
            if name not in in_unit:
                del found[name]
    return tuple(found.items())


def _verified(properties: tuple[tuple[str, str], ...], before: str,
              after: str) -> Iterator[tuple[str, str]]:
    """``systemd-analyze verify`` of a unit with the properties between ``before`` and
    ``after``: each property it has something to say of, and what."""
    if not properties or SYSTEMD_ANALYZE is None:
        return
    if not before:
        before, after = after, ""
    first_line = before.count("\n") + 1
    with tempfile.TemporaryDirectory(prefix="watchd-verify-") as directory:
        unit = os.path.join(directory, "watchd-verify.service")
        with open(unit, "w", encoding="utf-8") as file:
            file.write(before + "".join(f"{k}={v}\n" for k, v in properties) + after)
        try:
            result = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", unit],
                                    capture_output=True, text=True, timeout=30, check=False,
                                    stdin=subprocess.DEVNULL)
        except (OSError, subprocess.TimeoutExpired):
            return
    for line in result.stderr.splitlines():
        located = _LOCATED.match(line)
        if located and line.startswith(unit):
            index = int(located.group(1)) - first_line
            if 0 <= index < len(properties):
                yield properties[index][0], located.group(2).removesuffix(", ignoring.")


KIND = ActionKind("systemd_run", SystemdRunAction, SystemdRun.compile,
                  "a 'systemd_run' (a mapping with a command)", checks=_checks)
