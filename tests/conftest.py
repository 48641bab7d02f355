"""Test helpers: a real daemon in a subprocess, a recorder command, waiting with deadlines."""

from __future__ import annotations

import contextlib
import inspect
import json
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

RECORDER = Path(__file__).with_name("recorder.py")
PYTHON = sys.executable
# The recorder needs only the standard library. The system's interpreter is a program every
# trust check accepts, wherever this checkout (and its venv) happens to live.
COMMAND_PYTHON = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else PYTHON
DEADLINE = 15.0


def wait_for(predicate: Callable[[], object], timeout: float = DEADLINE, what: str = "") -> object:
    """Poll ``predicate`` until it is truthy; fail the test past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(0.02)


def counters_line(process: Daemon) -> str:
    """SIGUSR1's line of counters, asked for now (each line before it is written by then)."""
    count = process.log().count("INFO counters")
    process.signal(signal.SIGUSR1)
    process.wait_log("INFO counters", count + 1)
    return [line for line in process.log().splitlines() if "INFO counters" in line][-1]


def counters(process: Daemon) -> dict[str, int]:
    """The daemon's counters, asked for now with SIGUSR1."""
    pairs = (item.partition("=") for item in counters_line(process).split())
    return {key: int(value) for key, _, value in pairs if value.isdigit()}


def recorder(out: Path, *args: str) -> list[str]:
    """The argv of a command that records its own argv and environment into ``out``."""
    return [COMMAND_PYTHON, "-I", "-S", str(RECORDER), str(out), *args]


def records(out: Path) -> list[dict]:
    if not out.exists():
        return []
    lines = out.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def argv_of(record: dict) -> list[bytes]:
    return [bytes.fromhex(arg) for arg in record["argv"]]


def env_of(record: dict) -> dict[str, bytes]:
    return {key: bytes.fromhex(value) for key, value in record["env"].items()}


def jobs_cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``watchd jobs ARGS --config CONFIG``, as an admin runs it."""
    return subprocess.run([PYTHON, "-m", "watchd", "jobs", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=30)


def listed(config: Path, *args: str) -> list[dict]:
    """The jobs ``watchd jobs list --json ARGS`` lists."""
    result = jobs_cli(config, "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)["jobs"]


class Daemon:
    """``watchd run`` as a real subprocess, with its log in a file."""

    def __init__(self, config: Path, log: Path, extra_args: tuple[str, ...] = (),
                 env_extra: dict[str, str] | None = None, launcher: tuple[str, ...] = ()) -> None:
        self.config = config
        self.log_path = log
        self._log = open(log, "wb")  # noqa: SIM115 - closed in stop()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NOTIFY_", "WATCHDOG_"))}
        env.update(env_extra or {})
        self.process = subprocess.Popen(
            [*launcher, PYTHON, *extra_args, "-m", "watchd", "run", "--config", str(config)],
            stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
        )

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_bytes().decode("utf-8", "replace")

    def wait_log(self, text: str, count: int = 1, timeout: float = DEADLINE) -> None:
        wait_for(lambda: self.log().count(text) >= count or self.process.poll() is not None,
                 timeout, f"{text!r} x{count} in the daemon's log")
        assert self.log().count(text) >= count, f"daemon exited:\n{self.log()}"

    def started(self) -> Daemon:
        self.wait_log(" started ")
        return self

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self, timeout: float = DEADLINE) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self._log.close()


@pytest.fixture(autouse=True)
def state_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test's own state directory (the ledger), as systemd's StateDirectory= gives one:
    the default settings.state_dir, for the daemons and commands the test starts."""
    state = tmp_path / "state"
    monkeypatch.setenv("STATE_DIRECTORY", str(state))
    return state


@pytest.fixture(autouse=True)
def control_socket(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Each test's own control socket, for its daemons and its ``watchd status``: a short path
    (a socket's path is at most 107 bytes, and tmp_path can be longer)."""
    directory = Path(tempfile.mkdtemp(prefix="watchd-control-"))
    path = directory / "control"
    monkeypatch.setenv("WATCHD_SOCKET", str(path))
    yield path
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def write_rules(tmp_path: Path) -> Callable[[str], Path]:
    """Write a rules file (dedented YAML) and return its path."""
    config = tmp_path / "etc" / "rules.yaml"
    config.parent.mkdir(exist_ok=True)

    def write(text: str) -> Path:
        config.write_text(textwrap.dedent(text))
        return config

    return write


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[..., Daemon]]:
    """Start daemons on a rules file; each is stopped (and must exit 0) at the end of the test."""
    started: list[Daemon] = []

    def start(config: Path, *extra_args: str, wait: bool = True,
              env: dict[str, str] | None = None, launcher: tuple[str, ...] = ()) -> Daemon:
        process = Daemon(config, tmp_path / f"daemon{len(started)}.log", extra_args, env,
                         launcher)
        started.append(process)
        return process.started() if wait else process

    yield start
    for process in started:
        if process.process.poll() is None:
            code = process.stop()
            assert code == 0, f"daemon exited {code}:\n{process.log()}"
        else:
            process.kill()


def alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def zombie_children(pid: int) -> list[int]:
    zombies = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except FileNotFoundError:
                continue
            if fields[0] == "Z" and int(fields[1]) == pid:
                zombies.append(int(entry))
    return zombies


# The machine's own values of the limits a test changed, kept on disk until put back: a run
# that is killed (SIGKILL, a lost CI machine) cannot run its finally, the next run can.
CHANGED_LIMITS = Path(os.environ.get("WATCHD_TEST_LIMITS", "/var/tmp/watchd-test-limits.json"))


@contextlib.contextmanager
def inotify_limit(name: str, value: int) -> Iterator[None]:
    """Lower (or raise) one of /proc/sys/fs/inotify's limits for the block; restored after,
    and at the next run's start if this one was killed before it could."""
    limit = Path(f"/proc/sys/fs/inotify/{name}")
    saved = limit.read_text()
    originals = _changed_limits()
    originals.setdefault(name, saved)
    CHANGED_LIMITS.write_text(json.dumps(originals))
    limit.write_text(f"{value}\n")
    try:
        yield
    finally:
        limit.write_text(saved)
        originals = _changed_limits()
        originals.pop(name, None)
        if originals:
            CHANGED_LIMITS.write_text(json.dumps(originals))
        else:
            CHANGED_LIMITS.unlink(missing_ok=True)


def _changed_limits() -> dict[str, str]:
    return json.loads(CHANGED_LIMITS.read_text()) if CHANGED_LIMITS.exists() else {}


def restore_limits() -> dict[str, str]:
    """Put back every limit an earlier run left changed; what was put back."""
    originals = _changed_limits()
    for name, value in originals.items():
        Path(f"/proc/sys/fs/inotify/{name}").write_text(value)
    CHANGED_LIMITS.unlink(missing_ok=True)
    return originals


def pytest_sessionstart(session: pytest.Session) -> None:
    if os.geteuid() == 0:
        restore_limits()


# The slow tier, which `make check` leaves to `make test`: fuzzing, the booted Debian, and the
# few tests marked `slow` where they are (each takes ten seconds or more, or waits for the
# ledger writer's next try, five seconds).
SLOW_FILES = ("test_fuzz.py", "system/")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the slow tier, and the tests that change a machine-wide kernel limit (nothing
    else may run beside them: `make check` runs tests in parallel, without them)."""
    for item in items:
        where = item.path.as_posix()
        if any(part in where for part in SLOW_FILES):
            item.add_marker(pytest.mark.slow)
        function = getattr(item, "function", None)
        if function is not None and "inotify_limit" in inspect.getsource(function):
            item.add_marker(pytest.mark.exclusive)


def kernel_watches(pid: int, only_fd: int | None = None) -> dict[int, int]:
    """The kernel's own view of a process's inotify watches: wd -> inode; the one on the test's
    state directory (where the daemon learns of ``watchd jobs retry``) left out."""
    state = os.environ.get("STATE_DIRECTORY")
    state_inode = os.stat(state).st_ino if state and os.path.isdir(state) else None
    watches = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        if only_fd is not None and int(fd) != only_fd:
            continue
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            with open(f"/proc/{pid}/fdinfo/{fd}") as info:
                lines = info.read().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith("inotify wd:"):
                fields = dict(item.split(":", 1) for item in line.split()[1:])
                if int(fields["ino"], 16) != state_inode:
                    watches[int(fields["wd"], 16)] = int(fields["ino"], 16)
    return watches


class NotifySocket:
    """Where the daemon's notifications land; each datagram parsed into its assignments."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.setblocking(False)
        self.received: list[dict[str, str]] = []

    def messages(self) -> list[dict[str, str]]:
        while True:
            try:
                datagram = self.sock.recv(4096).decode()
            except BlockingIOError:
                return self.received
            self.received.append(dict(line.split("=", 1) for line in datagram.splitlines()))

    def wait(self, key: str, count: int = 1, after: int = 0) -> list[dict[str, str]]:
        """Messages from index ``after`` on, once ``count`` of them carry ``key``."""
        wait_for(lambda: sum(key in m for m in self.messages()[after:]) >= count,
                 what=f"{count} x {key} on the notify socket")
        return self.messages()[after:]

    def env(self, **extra: str) -> dict[str, str]:
        return {"NOTIFY_SOCKET": self.path, **extra}


@pytest.fixture
def notify_socket(tmp_path):
    receiver = NotifySocket(tmp_path / "notify")
    yield receiver
    receiver.sock.close()


@pytest.fixture
def user():
    """A real user, made for the test and removed after it."""
    name = f"wdt{uuid.uuid4().hex[:8]}"
    subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
                   check=True)
    yield pwd.getpwnam(name)
    subprocess.run(["userdel", name], check=False)


@pytest.fixture
def shared_dir(tmp_path):
    """A directory that the test's user can reach (pytest's own are root's, mode 0700)."""
    base = Path(os.environ.get("TMPDIR", "/tmp")) / f"watchd-test-{uuid.uuid4().hex[:8]}"
    base.mkdir(mode=0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def as_user(user: pwd.struct_passwd, script: str) -> None:
    """Run a shell script as ``user``, with its groups: what a local user could do."""
    subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                    "--init-groups", "sh", "-euc", script], check=True)


class Receiver:
    """An HTTP server that records each request and answers from a script of statuses."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.requests: list[dict] = []
        self.script: dict[str, list[int]] = {}  # path -> statuses to answer, then 200
        self.extra_headers: dict[str, str] = {}
        self.hold = threading.Event()  # requests to /held wait for this
        self.hold.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # else each answer waits out the client's delayed ACK

            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                receiver.requests.append({
                    "path": self.path, "headers": dict(self.headers),
                    "body": self.rfile.read(length), "at": time.monotonic()})
                if self.path == "/silent":
                    time.sleep(5)  # longer than the client's timeout
                if self.path == "/held":
                    receiver.hold.wait(30)
                statuses = receiver.script.get(self.path, [])
                status = statuses.pop(0) if statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/moved-here")
                for name, value in receiver.extra_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        scheme = "https" if tls else "http"
        self.url = f"{scheme}://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def to(self, path: str) -> list[dict]:
        return [request for request in self.requests if request["path"] == path]

    def close(self) -> None:
        self.hold.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    server = Receiver()
    yield server
    server.close()
