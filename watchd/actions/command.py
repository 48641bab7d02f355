"""The command action: run an argv (never a shell) in its own session, bounded in time.

The process group is the unit: past the timeout it gets SIGTERM, then SIGKILL;
when the command exits, whatever it left running in its group is killed too, so
an action never outlives its log line. stdout is /dev/null unless the action logs its output
(``log_output``: both streams are read as written, line by line into the journal), and stdin
too unless the action asks for the paths (``stdin: paths|json``), which are written to a pipe
as the command reads them, never waited on; the tail of stderr is kept for the log of a
failure.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import pwd
import select
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, replace
from typing import ClassVar, Literal, Protocol

from pydantic import Field, ValidationInfo, field_validator, model_validator

from watchd.actions.kind import ActionKind, Finding, Severity
from watchd.actions.output import OutputLines
from watchd.core.actions import ActionContext, Outcome, ProcessResult
from watchd.core.argmax import (
    MAX_ARG_STRLEN,
    POINTER,
    argument_size,
    argv_size,
    environment_size,
    fits_alone,
    room_beside,
)
from watchd.core.document import event_document
from watchd.core.events import FileEvent
from watchd.core.job import Job
from watchd.core.journal import MessageId
from watchd.core.logs import escape, log
from watchd.core.placeholders import (
    COUNT,
    ONE_EVENT,
    PATHS,
    PATHS_ALONE,
    PLACEHOLDERS,
    Template,
    parse_template,
    render,
    render_argv,
)
from watchd.core.rules import RunAs
from watchd.run.guard import Refused, owner
from watchd.schema.fields import (
    OWNER,
    TRUSTED_PROGRAMS,
    AbsolutePath,
    ArgTemplate,
    Duration,
    EnvName,
    EnvValue,
    Strict,
    Timeout,
    UserName,
)
from watchd.schema.lint import argv_warnings
from watchd.security.access import execute_problem
from watchd.security.trust import check_program


class CommandAction(Strict):
    """Run a program directly (never through a shell) with the event in argv and environment."""

    command: list[ArgTemplate] = Field(
        min_length=1, description="the program and its arguments, run directly, never through a "
        "shell: `command[0]` is the absolute path of a program that root owns and nobody else "
        "may write (checked at load and before every run); put `--` before `{path}` for "
        "programs that take options")
    timeout: Timeout = Field(default=300.0, description="how long a run may take; past it its "
                              "processes get SIGTERM, then SIGKILL 2 s later")
    user: UserName | None = Field(
        default=None, description="run as this user, with its groups and its `HOME`, `USER` and "
        "`LOGNAME` (needs root); `@owner`: as the owner of the file the event is about, as it "
        "is just before the run; unset: as the daemon's user")
    allow_root_owner: bool = Field(default=False, description="with `user: \"@owner\"`, also "
                                   "run for files owned by root (as root)")
    cwd: AbsolutePath | None = Field(default=None, description="the working directory; unset: "
                                     "the daemon's")
    env: dict[EnvName, EnvValue] = Field(default_factory=dict, description="variables added to "
                                         "the environment, after the `WATCHD_*` ones")
    retries: int = Field(default=0, ge=0, le=100, description="further runs after a failed one "
                         "(a non-zero exit, a signal, a timeout, a start that failed); after the "
                         "last, the job is kept as a dead letter (`watchd jobs list --dead`)")
    backoff: Duration = Field(default=1.0, description="the wait before the first retry, "
                              "doubled for each next one, plus up to a quarter (jitter), at most "
                              "10 minutes (there, 8 to 10)")
    stdin: Literal["none", "paths", "json"] = Field(
        default="none", description="what the command reads on stdin: `none` (/dev/null), "
        "`paths` (each path of the job, a batch's every path, followed by a NUL: `xargs -0`, "
        "`rsync --files-from=- --from0`), or `json` (each event as the JSON a webhook gets, "
        "one a line)")
    log_output: bool = Field(
        default=False, description="send the command's stdout and stderr, line by line, to "
        "the journal (fields `WATCHD_RULE`, `WATCHD_JOB`, `WATCHD_STREAM`), at most 1000 lines "
        "of 4096 bytes a run; false: stdout is discarded and stderr logged only on failure")

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


@dataclass(frozen=True, slots=True)
class Command:
    """A command action ready to run: argv templates and how to run them."""

    argv: tuple[Template, ...]
    program: str  # command[0], a literal path: its trust is checked again before every run
    timeout: float
    user: RunAs | None
    cwd: bytes | None
    env: tuple[tuple[bytes, bytes], ...]
    as_owner: bool = False  # user: '@owner': the user comes from the file, just before the run
    allow_root_owner: bool = False
    retries: int = 0
    backoff: float = 1.0
    stdin: str = "none"
    log_output: bool = False

    kind: ClassVar[str] = "command"
    keeps_order: ClassVar[bool] = False
    killed: ClassVar[str] = "process group killed"

    @classmethod
    def compile(cls, model: CommandAction) -> Command:
        as_owner = model.user == OWNER
        return cls(
            argv=tuple(parse_template(arg) for arg in model.command),
            program=model.command[0],
            timeout=model.timeout,
            user=RunAs.lookup(model.user) if model.user and not as_owner else None,
            cwd=os.fsencode(model.cwd) if model.cwd else None,
            env=tuple((os.fsencode(k), os.fsencode(v)) for k, v in model.env.items()),
            as_owner=as_owner,
            allow_root_owner=model.allow_root_owner,
            retries=model.retries,
            backoff=model.backoff,
            stdin=model.stdin,
            log_output=model.log_output,
        )

    def describe(self, values: Mapping[str, bytes]) -> str:
        return f"{self.kind}: {shlex.join(self.argv_for(values))}"

    def argv_for(self, values: Mapping[str, bytes]) -> list[str]:
        """The argv as it would run, escaped for showing; a batch's paths past the first
        few counted, not shown."""
        argv = render_argv(self.argv, values)
        paths = int(values.get(COUNT, b"1"))
        if paths > SHOWN_PATHS and PATHS_ALONE in self.argv:  # else they go to stdin
            at = self.argv.index(PATHS_ALONE)
            argv[at + SHOWN_PATHS : at + paths] = [f"...{paths - SHOWN_PATHS} more".encode()]
        return [escape(arg) for arg in argv]

    def room_for_paths(self, job: Job) -> int | None:
        return self.room(job, self.user)

    def room(self, job: Job, user: RunAs | None) -> int | None:
        """Bytes of ``{paths}`` one run of ``job`` can carry (each path, its NUL and its
        pointer); None without ``{paths}`` in argv. An inherited variable that ``env`` or
        the user replaces is counted twice: a few bytes less room, never more."""
        if PATHS_ALONE not in self.argv or not job.batch:
            return None
        values = job.values()
        return room_beside(self.other_arguments_size(values) + _inherited_size()
                           + environment_size(variables(job, self, user, values)))

    def other_arguments_size(self, values: Mapping[str, bytes]) -> int:
        """What the argv but its ``{paths}`` costs an exec."""
        return argv_size(render(template, values) for template in self.argv
                         if template != PATHS_ALONE)

    def perform(self, context: ActionContext, job: Job, step: int,
                info: os.stat_result | None) -> Outcome:
        try:
            user = owner(job, self.allow_root_owner, info) if self.as_owner else self.user
        except Refused as refusal:
            return context.skip(job, step, str(refusal))
        return in_parts(job, step, self.room(job, user), lambda part: ended(
            part, step, self, context.run_process(part, step, self.program,
                                                  RunningCommand(part, self, user))))



SHOWN_PATHS = 3  # of a batch's, in what a log line or a dead letter shows of its argv
KILL_GRACE = 2.0  # seconds between SIGTERM and SIGKILL for a command past its timeout
STDERR_TAIL = 2048  # bytes of stderr kept for the log
# CPython before 3.11.6 holds the interpreter lock while vfork waits for the command's exec
# (gh-104372): such spawns run one at a time whatever the workers do, and workers that queue on
# a lock of their own for that turn, not on the interpreter lock, start commands faster (4
# workers: 1,300 → 1,600 a second). A spawn that forks (user:) or a newer Python lets the
# others run meanwhile, and must not wait on a slow exec: they take no turn.
_SPAWNS_HOLD_INTERPRETER = sys.version_info < (3, 11, 6)
_SPAWN_TURN = threading.Lock()
# Variables of the daemon's own supervisor that must not leak into commands (the unit's
# directories are the daemon's: a command writing its ledger's directory would be a bug).
PRIVATE_ENV_PREFIXES = (b"NOTIFY_SOCKET", b"WATCHDOG_", b"LISTEN_", b"WATCHD_", b"INVOCATION_ID",
                        b"JOURNAL_STREAM", b"STATE_DIRECTORY", b"RUNTIME_DIRECTORY",
                        b"CACHE_DIRECTORY", b"LOGS_DIRECTORY", b"CONFIGURATION_DIRECTORY")


# Each placeholder's variable (WATCHD_PATH for {path} …), and whether the path is a directory;
# a batch's paths are in argv or on stdin, never in a variable, and its size in WATCHD_COUNT.
EVENT_VARIABLES = {name: b"WATCHD_" + name.upper().encode() for name in PLACEHOLDERS
                   if name not in (PATHS, COUNT)}
COUNT_VARIABLE = b"WATCHD_COUNT"
IS_DIR_VARIABLE = b"WATCHD_IS_DIR"
# The job's: its id in the ledger, the try (1, 2, …), whether a catch-up found its event.
JOB_VARIABLES = (b"WATCHD_JOB", b"WATCHD_TRY", b"WATCHD_CAUGHT_UP")


@functools.cache
def _inherited() -> dict[bytes, bytes]:
    """The daemon's environment less what belongs to its supervisor (it does not change)."""
    return {k: v for k, v in os.environb.items() if not k.startswith(PRIVATE_ENV_PREFIXES)}


@functools.cache
def _inherited_size() -> int:
    return environment_size(_inherited())


@functools.cache
def _devnull() -> int:
    # One descriptor for every command's stdin and stdout, rather than an open and close per spawn.
    return os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


def environment(job: Job, command: Command, user: RunAs | None,
                values: Mapping[str, bytes]) -> dict[bytes, bytes]:
    """What a command runs with: the daemon's environment and ``variables``."""
    return {**_inherited(), **variables(job, command, user, values)}


def variables(job: Job, command: Command, user: RunAs | None,
              values: Mapping[str, bytes]) -> dict[bytes, bytes]:
    """The event's WATCHD_* variables, the user's HOME, USER and LOGNAME, and the rule's env."""
    env = {variable: values[name] for name, variable in EVENT_VARIABLES.items()
           if name in values}
    if job.batch:
        env[COUNT_VARIABLE] = values[COUNT]
    else:
        env[IS_DIR_VARIABLE] = b"1" if job.event.is_dir else b"0"
    job_id, attempt, caught_up = JOB_VARIABLES
    env[job_id] = str(job.id).encode()
    env[attempt] = str(job.tries).encode()
    env[caught_up] = b"1" if job.caught_up else b"0"
    if user is not None:
        env[b"HOME"] = os.fsencode(user.home)
        env[b"USER"] = env[b"LOGNAME"] = user.name.encode()
    env.update(command.env)
    return env


def in_parts(job: Job, step: int, room: int | None, run: Callable[[Job], Outcome]) -> Outcome:
    """Run a batch in as many parts as ``room`` (bytes for its paths in one argv: the batch
    was cut to it, but the environment or the rule may have changed since), one after the
    other while they succeed. A path that fits in no argv is a failure of its own: the others
    run, and the job fails."""
    if room is None or not job.batch or _fits_whole(job, room):
        return run(job)
    parts, unfit = cut_to_fit(job, room)
    for event in unfit:
        log(logging.ERROR, f"action failed: the path is too long for one exec beside the "
            f"command's other arguments and environment ({len(event.path)} bytes, room for "
            f"{max(room, 0)}; one argument is at most {MAX_ARG_STRLEN - 1}): not run, the "
            "batch's other paths are", message_id=MessageId.ACTION_FAILED,
            fields={"rule": job.rule.name, "path": event.path, "step": step,
                    "job": job.id or None})
    for part in parts:
        outcome = run(part)
        if outcome is not Outcome.OK:
            return outcome
    return Outcome.FAILED if unfit else Outcome.OK


def _fits_whole(job: Job, room: int) -> bool:
    """Whether a batch's paths fit in ``room`` as they are, as the batcher cut them (the
    common case), told from their join and its split at C speed rather than path by path.
    In an argv each path has a NUL and a pointer (``argument_size``); joined, the n paths
    have n - 1 NULs: the argv's share is the join, one NUL and n pointers."""
    joined = job.values()["paths"]
    return (len(joined) + 1 + POINTER * len(job.batch) <= room
            and max(map(len, joined.split(b"\0"))) < MAX_ARG_STRLEN)


def cut_to_fit(job: Job, room: int) -> tuple[list[Job], list[FileEvent]]:
    """A batch that does not fit in ``room`` bytes of argv as jobs whose paths each do, in
    order; the events whose path fits in none."""
    parts: list[list[FileEvent]] = [[]]
    unfit: list[FileEvent] = []
    used = 0
    for event in job.batch:
        size = argument_size(event.path)
        if not fits_alone(event.path, room):
            unfit.append(event)
            continue
        if used + size > room:
            parts.append([])
            used = 0
        parts[-1].append(event)
        used += size
    return [replace(job, event=part[-1], batch=tuple(part)) for part in parts if part], unfit


class RunningCommand:
    """One command run; ``kill`` may be called from another thread (daemon stop)."""

    def __init__(self, job: Job, command: Command, user: RunAs | None) -> None:
        self.job = job
        self.command = command
        self.user = user
        self.process: subprocess.Popen[bytes] | None = None
        self.forks = user is not None  # Popen forks rather than vforks to switch user
        # Held while the group is signalled and while the leader is reaped, so that a
        # kill from another thread never reaches a group id the kernel has given away.
        self._lock = threading.Lock()

    def run(self) -> ProcessResult:
        values = self.job.values()
        started = time.monotonic()
        # The daemon keeps the write end too, until the command has exited: the pipe then
        # never reports its end, and the exit is the one wake-up of a quiet command.
        stderr_read, stderr_write = os.pipe2(os.O_CLOEXEC)
        output = self.output() if self.command.log_output else None
        feed = Feed(self.job, self.command.stdin)
        try:
            try:
                with _spawn_turn(self.forks), self._lock:
                    self.process = self.spawn(values, stderr_write, feed.stdin,
                                              output.stdout if output else None)
            except (OSError, subprocess.SubprocessError) as error:
                return ProcessResult(None, time.monotonic() - started, False, b"",
                                     _start_failure(error))
            finally:
                feed.spawned()
            stderr, timed_out = self._collect(stderr_read, started + self.command.timeout, feed,
                                              output)
        finally:
            os.close(stderr_read)
            os.close(stderr_write)
            feed.close()
            if output is not None:
                output.close()
        with self._lock:
            # The exited leader still holds the group id, so this cannot hit a recycled group.
            self._signal_group(signal.SIGKILL)
            status = self.process.wait()
        return ProcessResult(status, time.monotonic() - started, timed_out, stderr)

    def output(self) -> Output | None:
        """Where ``log_output`` reads the command's streams: its stdout into a pipe of its
        own; its stderr is the pipe the tail is kept from."""
        return Output(self.job, {"stdout": None}, logs_stderr=True)

    def spawn(self, values: Mapping[str, bytes], stderr: int, stdin: int | None,
              stdout: int | None) -> subprocess.Popen[bytes]:
        """Start the command in a session of its own, its stderr into ``stderr``, its stdin
        from ``stdin`` and its stdout into ``stdout`` (None: /dev/null)."""
        user = self.user
        return subprocess.Popen(
            render_argv(self.command.argv, values),
            env=environment(self.job, self.command, user, values),
            cwd=self.command.cwd,
            stdin=_devnull() if stdin is None else stdin,
            stdout=_devnull() if stdout is None else stdout,
            stderr=stderr,
            start_new_session=True,
            user=user.uid if user else None,
            group=user.gid if user else None,
            extra_groups=list(user.groups) if user else None,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group (the command and anything it started)."""
        with self._lock:
            self._signal_group(sig)

    def _signal_group(self, sig: int) -> None:
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, sig)

    def _collect(self, stderr: int, deadline: float, feed: Feed,
                 output: Output | None) -> tuple[bytes, bool]:
        """Keep stderr's tail, feed stdin and log the output (``log_output``) until the
        command exits; past the deadline TERM, then KILL.

        The exit is seen through a pidfd, which does not reap: the leader stays a
        zombie, holding its process group id, until ``run`` has killed the group.
        """
        assert self.process is not None
        os.set_blocking(stderr, False)
        tail = b""
        timed_out = False
        pidfd = os.pidfd_open(self.process.pid)
        try:
            # poll, not a selector: no epoll descriptor to make and close for every command.
            waiting = select.poll()
            waiting.register(pidfd, select.POLLIN)
            waiting.register(stderr, select.POLLIN)
            if feed.fd is not None:
                waiting.register(feed.fd, select.POLLOUT)
            streams = output.streams if output is not None else {}
            for fd in streams:
                waiting.register(fd, select.POLLIN)
            while True:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    self.kill(signal.SIGKILL if timed_out else signal.SIGTERM)
                    timed_out, deadline = True, time.monotonic() + KILL_GRACE
                    continue
                ready = dict(waiting.poll(remaining * 1000))
                if stderr in ready:  # this poll also shows what it wrote as it exited
                    written = _read_all(stderr)
                    tail = (tail + written)[-STDERR_TAIL:]
                    if output is not None and output.logs_stderr:
                        output.lines.add("stderr", written)
                if output is not None:
                    for fd in streams.keys() & ready.keys():
                        output.lines.add(streams[fd], _read_all(fd))
                if feed.fd is not None and feed.fd in ready and not feed.write():
                    waiting.unregister(feed.fd)
                    feed.close()
                if pidfd in ready:
                    if output is not None:
                        for fd, stream in streams.items():  # what was written before the exit
                            output.lines.add(stream, _read_all(fd))
                        output.lines.end()
                    return tail, timed_out
        finally:
            os.close(pidfd)


class Output:
    """``log_output``: the streams read (a descriptor each, non-blocking, that never ends
    while the daemon holds it) and their lines as they come. ``fifos`` names a stream that is
    a FIFO at that path (a unit's, opened by systemd), else it is a pipe (a command's
    ``stdout``, its write end for ``spawn``); with ``logs_stderr`` the stderr pipe is logged
    too."""

    def __init__(self, job: Job, fifos: dict[str, str | None], logs_stderr: bool) -> None:
        self.lines = OutputLines(job)
        self.logs_stderr = logs_stderr
        self.streams: dict[int, str] = {}
        self.stdout: int | None = None
        self._owned: list[int] = []
        self._paths = [path for path in fifos.values() if path]
        for stream, path in fifos.items():
            if path is None:
                read, self.stdout = os.pipe2(os.O_CLOEXEC)
                self._owned.append(self.stdout)
            else:
                os.mkfifo(path, 0o600)
                # Read and write: a FIFO so held is never at its end, and systemd's open of it
                # for writing finds a reader at once.
                read = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            os.set_blocking(read, False)
            self._owned.append(read)
            self.streams[read] = stream

    def close(self) -> None:
        for fd in self._owned:
            os.close(fd)
        for path in self._paths:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


class Feed:
    """What a command reads on stdin, written to a pipe as it reads: a command that never
    reads holds nothing but itself (its timeout ends it)."""

    def __init__(self, job: Job, what: str) -> None:
        self.data = memoryview(stdin_data(job, what))
        self.stdin: int | None = None  # the command's end, until it is spawned
        self.fd: int | None = None  # the daemon's end
        if what != "none":
            self.stdin, self.fd = os.pipe2(os.O_CLOEXEC)
            os.set_blocking(self.fd, False)

    def spawned(self) -> None:
        if self.stdin is not None:
            os.close(self.stdin)
            self.stdin = None

    def write(self) -> bool:
        """Write what the pipe takes; False once all is written (or the command closed it)."""
        assert self.fd is not None
        try:
            while self.data:
                self.data = self.data[os.write(self.fd, self.data[:65536]):]
        except BlockingIOError:
            return True
        except OSError:  # EPIPE: the command read what it wanted, or exited
            return False
        return False

    def close(self) -> None:
        self.spawned()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def stdin_data(job: Job, what: str) -> bytes:
    """``stdin: paths``: each path then a NUL; ``json``: each event's JSON on a line."""
    if what == "paths":
        return b"".join(event.path + b"\0" for event in job.events)
    if what == "json":
        return b"".join(json.dumps(event_document(event), ensure_ascii=False).encode() + b"\n"
                        for event in job.events)
    return b""


def _start_failure(error: OSError | subprocess.SubprocessError) -> str:
    """Why a command did not start, in words: the file it names escaped, never a repr."""
    reason = getattr(error, "strerror", None) or str(error)
    filename = getattr(error, "filename", None)
    if filename:
        return f"cannot start {escape(os.fsencode(filename))}: {reason}"
    return f"cannot start: {reason}"


def _spawn_turn(forks: bool) -> contextlib.AbstractContextManager[object]:
    """The turn a spawn waits for: see ``_SPAWN_TURN``."""
    if _SPAWNS_HOLD_INTERPRETER and not forks:
        return _SPAWN_TURN
    return contextlib.nullcontext()


def _read_all(fd: int) -> bytes:
    """What the pipe holds now (a pipe holds at most its capacity, 64 KiB by default)."""
    chunks = []
    with contextlib.suppress(BlockingIOError):
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
    return b"".join(chunks)


class ProcessAction(Protocol):
    """What the log of a process run says of its action."""

    kind: ClassVar[str]
    killed: ClassVar[str]  # what a timeout kills, in words

    @property
    def timeout(self) -> float: ...


def ended(job: Job, step: int, spec: ProcessAction, result: ProcessResult | Outcome,
          **extra: object) -> Outcome:
    """Log how a process run ended; its outcome."""
    if isinstance(result, Outcome):
        return result
    log_result(job, step, spec, result, **extra)
    if result.stopped:
        return Outcome.STOPPED
    return Outcome.OK if result.ok else Outcome.FAILED


def log_result(job: Job, step: int, spec: ProcessAction, result: ProcessResult,
               **extra: object) -> None:
    fields: dict[str, object] = {
        "rule": job.rule.name,
        "event": job.event.event,
        "path": job.event.path,
        "action": spec.kind,
        "step": step,
        "exit_status": result.status,
        "duration_ms": round(result.duration * 1000),
        "found_by_scan": True if job.event.synthetic else None,
        "caught_up": True if job.caught_up else None,
        "job": job.id or None,
        "try": job.tries,
        "count": job.count if job.batch else None,
        **extra,
    }
    if result.ok:
        log(logging.INFO, "action ok", fields=fields)
        return
    if result.stopped:
        log(logging.WARNING, "action cut short by the stop; it runs again at the next start",
            fields=fields)
        return
    reason = failure(result, spec)
    remaining = len(job.rule.actions) - step
    if remaining:
        reason += f"; {remaining} later action(s) skipped"
    fields["stderr"] = result.stderr.strip()[-512:] or None
    log(logging.ERROR, f"action failed: {reason}", message_id=MessageId.ACTION_FAILED,
        fields=fields)


def failure(result: ProcessResult, spec: ProcessAction) -> str:
    """How a process failed, in words: the number is in a field too, the signal named."""
    if result.timed_out:
        return f"timed out after {spec.timeout:g}s; {spec.killed}"
    return result.describe()


def checks(model: CommandAction, batch: bool) -> Iterator[Finding]:
    """What is risky in a command's argv: where a placeholder is open to injection; in a
    batch rule, what names one event."""
    for arg, message in argv_warnings(model.command):
        yield Finding(("command", arg), message, Severity.WARNING)
    if not batch:
        return
    templates = [parse_template(written) for written in model.command]
    for place, template in enumerate(templates):
        named = [part for part in template if part in ONE_EVENT]
        if named:
            yield Finding(("command", place), f"{{{named[0]}}} names one event's path, and a "
                          "batch rule runs once for many: use {paths} (an argument of its own: "
                          "one argument per path) or stdin: paths", Severity.ERROR)
    repeats = [place for place, template in enumerate(templates) if template == PATHS_ALONE][1:]
    if repeats:
        # A batch is cut to what one argv can carry with its paths in it once: twice, the
        # exec would be refused (E2BIG), and every retry with it.
        yield Finding(("command", repeats[0]), "{paths} may be in a command once: a batch is "
                      "split so that its paths fit in one argv once (for more, use stdin: paths)",
                      Severity.ERROR)
    if model.user == OWNER:
        yield Finding(("user",), "user: '@owner' runs as the owner of the one file an event "
                      "is about, and a batch has many: name a user", Severity.ERROR)


KIND = ActionKind("command", CommandAction, Command.compile, "a 'command' (an argv list)",
                  checks=checks)
