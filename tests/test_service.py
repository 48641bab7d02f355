"""sd_notify without systemd: a real AF_UNIX datagram socket bound by the test, as systemd would."""

from __future__ import annotations

import ctypes
import signal
import textwrap
import threading
import time

import pytest
from conftest import kernel_watches, recorder, records, wait_for

from watchd.core import logs
from watchd.service.daemon import EX_FATAL, Daemon

WATCHDOG_USEC = 200_000


def tree_rules(watched, out) -> str:
    return f"""\
        rules:
          - name: tree
            paths: [{watched}]
            recursive: true
            events: [create]
            actions: [{{command: {recorder(out)}}}]
        """


def test_ready_only_once_every_watch_is_in_place(tmp_path, write_rules, daemon, notify_socket):
    watched = tmp_path / "in"
    for index in range(200):
        (watched / f"d{index}" / "sub").mkdir(parents=True)
    config = write_rules(tree_rules(watched, tmp_path / "out.jsonl"))
    process = daemon(config, wait=False, env=notify_socket.env())
    ready = notify_socket.wait("READY")[0]
    assert ready["READY"] == "1"
    # The kernel's own count, read the moment READY arrived: the root and 400 directories.
    assert len(kernel_watches(process.pid)) == 401
    assert ready["STATUS"].startswith("1 rules, 401 watches, ")


def test_watchdog_pings_at_half_the_interval(tmp_path, write_rules, daemon, notify_socket):
    watched = tmp_path / "in"
    watched.mkdir()
    config = write_rules(tree_rules(watched, tmp_path / "out.jsonl"))
    process = daemon(config, env=notify_socket.env(WATCHDOG_USEC=str(WATCHDOG_USEC)))
    notify_socket.wait("READY")
    started = time.monotonic()
    notify_socket.wait("WATCHDOG", count=5)
    # Five pings at 0.1 s take at least 0.4 s; a loop that pings on every turn would be faster.
    assert time.monotonic() - started >= 0.35
    assert all(m["WATCHDOG"] == "1" for m in notify_socket.messages() if "WATCHDOG" in m)

    # Stopped, the daemon cannot ping: the silence systemd acts on.
    process.signal(signal.SIGSTOP)
    time.sleep(0.05)  # let a datagram already in flight arrive
    pings = len(notify_socket.messages())
    time.sleep(3 * WATCHDOG_USEC / 1e6)  # the silence itself is what is measured
    assert len(notify_socket.messages()) == pings
    process.signal(signal.SIGCONT)
    notify_socket.wait("WATCHDOG", after=pings)


def test_watchdog_for_another_process_is_ignored(tmp_path, write_rules, daemon, notify_socket):
    watched = tmp_path / "in"
    watched.mkdir()
    config = write_rules(tree_rules(watched, tmp_path / "out.jsonl"))
    env = notify_socket.env(WATCHDOG_USEC=str(WATCHDOG_USEC), WATCHDOG_PID="1")
    process = daemon(config, env=env)
    notify_socket.wait("READY")
    process.signal(signal.SIGUSR1)  # a turn of the main loop, where a ping would go
    process.wait_log("counters")
    assert not any("WATCHDOG" in m for m in notify_socket.messages())


def test_reload_is_bracketed_by_reloading_and_ready(tmp_path, write_rules, daemon, notify_socket):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = write_rules(tree_rules(watched, out))
    process = daemon(config, env=notify_socket.env())
    notify_socket.wait("READY")
    seen = len(notify_socket.messages())

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    process.signal(signal.SIGHUP)
    reload = notify_socket.wait("READY", after=seen)
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    reloading = next(m for m in reload if "RELOADING" in m)
    assert reload.index(reloading) < next(i for i, m in enumerate(reload) if "READY" in m)
    assert before <= int(reloading["MONOTONIC_USEC"]) <= after

    seen = len(notify_socket.messages())
    config.write_text("rules:\n  - name: broken\n    paths: relative\n")
    process.signal(signal.SIGHUP)
    failed = notify_socket.wait("READY", after=seen)
    assert any("RELOADING" in m for m in failed)
    status = next(m for m in failed if "READY" in m)["STATUS"]
    assert "last reload FAILED, previous rules in force: " in status
    # The first error by line (the file's errors are sorted), and how many more.
    assert f"{config}:2:5: rules[0]: missing required key 'actions' (and 1 more)" in status
    (watched / "still").touch()  # the old rules still fire
    wait_for(lambda: records(out))


def test_stopping_extends_the_stop_timeout_by_the_grace(tmp_path, write_rules, daemon,
                                                        notify_socket):
    watched = tmp_path / "in"
    watched.mkdir()
    config = write_rules("settings: {stop_grace: 7s}\n"
                         + textwrap.dedent(tree_rules(watched, tmp_path / "o")))
    process = daemon(config, env=notify_socket.env())
    notify_socket.wait("READY")
    assert process.stop() == 0
    stopping = next(m for m in notify_socket.messages() if "STOPPING" in m)
    assert stopping["STOPPING"] == "1"
    assert int(stopping["EXTEND_TIMEOUT_USEC"]) >= 7_000_000


def test_a_notify_socket_that_is_gone_costs_one_warning(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = write_rules(tree_rules(watched, out))
    process = daemon(config, env={"NOTIFY_SOCKET": str(tmp_path / "gone")})
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    (watched / "f").touch()
    wait_for(lambda: records(out))
    assert process.log().count("cannot notify the service manager") == 1


@pytest.fixture
def restore_signals():
    saved = {signum: signal.getsignal(signum) for signum in
             (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)}
    yield
    signal.set_wakeup_fd(-1)
    for signum, handler in saved.items():
        signal.signal(signum, handler)
    logs.shutdown()


# The thread's death is the point of the test; pytest reports any thread's death as a warning.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_event_reader_stops_the_watchdog_and_the_daemon(
        tmp_path, write_rules, notify_socket, monkeypatch, restore_signals):
    watched = tmp_path / "in"
    watched.mkdir()
    config = write_rules(tree_rules(watched, tmp_path / "out.jsonl"))
    monkeypatch.setenv("NOTIFY_SOCKET", notify_socket.path)
    monkeypatch.setenv("WATCHDOG_USEC", str(WATCHDOG_USEC))
    logs.setup(target="stderr")
    daemon = Daemon(config)
    died_at: list[int] = []

    def kill_the_reader() -> None:
        notify_socket.wait("WATCHDOG", count=2)
        reader = daemon.notifier
        # A real death of the thread, as an uncaught BaseException would cause.
        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(reader.ident),
                                                   ctypes.py_object(SystemExit))
        (watched / "wake").touch()  # it is raised when the thread next runs Python code
        reader.join(5)
        died_at.append(len(notify_socket.messages()))

    killer = threading.Thread(target=kill_the_reader)
    killer.start()
    assert daemon.run() == EX_FATAL
    killer.join()
    assert not daemon.notifier.is_alive()
    # At most the ping of a turn already past its liveness check when the thread died.
    after_death = notify_socket.messages()[died_at[0]:]
    assert sum("WATCHDOG" in m for m in after_death) <= 1
    assert any("STOPPING" in m for m in after_death)
