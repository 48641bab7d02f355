"""The control socket, with the real daemon and the real CLI: ``watchd status``, ``trace`` and
``jobs``; clients that misbehave; users who may not ask."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import COMMAND_PYTHON, PYTHON, recorder, records, wait_for


def watchd(*args: str, user=None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    argv = [PYTHON, "-m", "watchd", *args]
    if user is not None:
        argv = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
                *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def status() -> dict:
    answered = watchd("status", "--json")
    assert answered.returncode == 0, answered.stderr
    return json.loads(answered.stdout)


def rule_of(document: dict, name: str) -> dict:
    return next(rule for rule in document["rules"] if rule["name"] == name)


def told_all(document: dict) -> bool:
    """The shared rules' files of the status test all acted on, settling or batching."""
    broken = rule_of(document, "broken")
    return (rule_of(document, "ingest")["actions_ok"] == 2 and bool(broken["last_failure"])
            and broken["dead_letters_kept"] == 1 and document["ledger"]["dead_letters"] == 1
            and document["jobs"]["settling"] == 1 and document["jobs"]["batching"] == 2)


FAILING = [COMMAND_PYTHON, "-c", "import sys; print('first line of the error', file=sys.stderr);"
           " print('second', file=sys.stderr); sys.exit(3)", "{path}"]


@pytest.fixture
def rules(tmp_path, write_rules):
    watched = tmp_path / "in"
    watched.mkdir()
    out = tmp_path / "out.jsonl"
    config = write_rules(f"""
        rules:
          - name: ingest
            paths: [{watched}]
            include: ["*.csv"]
            exclude: ["tmp-*"]
            actions:
              - command: {json.dumps(recorder(out))}
          - name: broken
            paths: [{watched}]
            include: ["*.bad"]
            actions:
              - command: {json.dumps(FAILING)}
          - name: slow-upload
            paths: [{watched}]
            include: ["*.iso"]
            settle: 60s
            actions:
              - command: ["/bin/true"]
          - name: sync
            paths: [{watched}]
            include: ["*.txt"]
            batch: {{window: 60s}}
            actions:
              - command: ["/bin/true", "{{paths}}"]
    """)
    return watched, out, config


def test_status_tells_each_rule_its_counts_states_and_last_failure(rules, daemon):
    watched, out, config = rules
    process = daemon(config)
    for name in ("a.csv", "b.csv", "tmp-c.csv", "x.bad", "disc.iso", "one.txt", "two.txt"):
        (watched / name).write_text("data")
    wait_for(lambda: len(records(out)) == 2, what="both csv files acted on")
    # A run's count comes after its command's exit, and a dead letter's after its failure.
    document = wait_for(lambda: d if told_all(d := status()) else None,
                        what="every rule's count and the dead letter told")

    assert document["pid"] == process.pid
    assert document["config"]["path"] == str(config)
    assert document["config"]["rules"] == 4 and document["config"]["last_reload"] is None
    assert document["watches"] == 1 and document["overflows"] == 0
    assert document["degraded"] == [] and document["unwatched"]["count"] == 0
    assert document["uptime_seconds"] >= 0
    ingest = rule_of(document, "ingest")
    assert (ingest["matched"], ingest["actions_ok"], ingest["actions_failed"]) == (2, 2, 0)
    broken = rule_of(document, "broken")
    assert (broken["matched"], broken["actions_failed"], broken["dead_letters_kept"]) == (1, 1, 1)
    failure = broken["last_failure"]
    assert failure["path"] == str(watched / "x.bad")
    assert failure["exit_status"] == 3 and failure["stderr"] == "first line of the error"
    assert time.time() - 60 < failure["time"] <= time.time()
    assert rule_of(document, "slow-upload")["settling"] == 1
    assert rule_of(document, "sync")["batching"] == 2
    assert document["ledger"]["dead_letters"] == 1
    assert document["jobs"]["settling"] == 1 and document["jobs"]["batching"] == 2

    human = watchd("status")
    assert human.returncode == 0, human.stderr
    lines = human.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), human.stdout
    assert lines[0].startswith("● watchd ") and f"(pid {process.pid})" in lines[0]
    assert any(line.split()[:4] == ["broken", "1", "0", "1"] for line in lines), human.stdout
    assert any("last failure" in line and "exited with status 3: first line of the error" in line
               for line in lines), human.stdout
    assert "1 dead letter(s)" in human.stdout and "3 held" in human.stdout


def test_dead_letters_of_a_rule_a_reload_removed_are_named_in_the_status(tmp_path, write_rules,
                                                                        daemon):
    watched = tmp_path / "in"
    watched.mkdir()
    config = write_rules(f"""
        rules:
          - name: broken
            paths: [{watched}]
            actions: [{{command: {json.dumps(FAILING)}}}]
    """)
    process = daemon(config)
    (watched / "x.bad").write_text("data")
    wait_for(lambda: status()["ledger"]["dead_letters"] == 1, what="the dead letter kept")
    write_rules(f"""
        rules:
          - name: fixed
            paths: [{watched}]
            actions: [{{command: ["/bin/true"]}}]
    """)
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")

    document = status()
    assert document["ledger"]["dead_letters"] == 1
    assert document["ledger"]["dead_letters_of_rules_gone"] == {"broken": 1}
    assert rule_of(document, "fixed")["dead_letters_kept"] == 0
    human = watchd("status").stdout
    assert "Dead letters of rules no longer in force: broken 1" in human, human
    assert "drop: watchd jobs drop ID" in human, human


def test_status_says_so_when_no_daemon_answers(control_socket):
    answered = watchd("status")
    assert answered.returncode == 3
    assert f"no watchd answers on {control_socket}" in answered.stderr
    assert "Traceback" not in answered.stderr


def test_a_reload_and_its_failure_are_in_the_status(rules, daemon):
    _, _, config = rules
    process = daemon(config)
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    document = status()
    assert document["config"]["last_reload"]["ok"] is True
    text = config.read_text()
    config.write_text(text + "  - name: [broken\n")
    process.signal(signal.SIGHUP)
    process.wait_log("reload failed")
    reload = wait_for(lambda: (r := status()["config"]["last_reload"]) and not r["ok"] and r)
    assert reload["error"] and reload["ok"] is False
    assert "FAILED, previous rules in force" in watchd("status").stdout


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_clients_that_never_read_or_never_ask_cost_only_their_connection(rules, daemon):
    watched, out, config = rules
    process = daemon(config)
    silent = []
    for _ in range(5):  # connected, never asking
        connection = socket.socket(socket.AF_UNIX)
        connection.connect(os.environ["WATCHD_SOCKET"])
        silent.append(connection)
    deaf = []
    for _ in range(5):  # asking for a trace and never reading it
        connection = socket.socket(socket.AF_UNIX)
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        connection.connect(os.environ["WATCHD_SOCKET"])
        connection.sendall(b'{"version": 1, "command": "trace"}\n')
        deaf.append(connection)
    for index in range(300):  # enough trace lines to fill what the deaf ones do not read
        (watched / f"f{index}.csv").write_text("x")
    wait_for(lambda: len(records(out)) == 300, what="every file acted on")
    # A run's count comes after its command's exit, which is after its record.
    wait_for(lambda: rule_of(status(), "ingest")["actions_ok"] == 300, what="every run counted")
    started = time.monotonic()
    process.signal(signal.SIGUSR1)
    process.wait_log("counters")
    assert time.monotonic() - started < 5
    for connection in silent + deaf:
        connection.close()


def test_too_many_clients_are_told_so_and_the_rest_still_served(rules, daemon):
    _, _, config = rules
    daemon(config)
    held = []
    for _ in range(32):
        connection = socket.socket(socket.AF_UNIX)
        connection.connect(os.environ["WATCHD_SOCKET"])
        held.append(connection)
    wait_for(lambda: "too many clients" in watchd("status").stderr, what="a refusal")
    for connection in held:
        connection.close()
    wait_for(lambda: watchd("status").returncode == 0, what="status served again")


@pytest.fixture
def code_reachable_by_others():
    """The checkout and its venv reachable by another user, for the command line run as one:
    a clone in a directory only root may enter (``mktemp -d`` makes them 0700) gets search
    permission on each such directory above it, taken back after the test."""
    changed = []
    for directory in Path(PYTHON).absolute().parents:  # the venv, not where it links to
        mode = stat.S_IMODE(directory.stat().st_mode)
        if not mode & stat.S_IXOTH:
            os.chmod(directory, mode | stat.S_IXOTH)
            changed.append((directory, mode))
    yield
    for directory, mode in changed:
        os.chmod(directory, mode)


def test_a_user_other_than_root_is_refused(rules, daemon, user, control_socket,
                                           code_reachable_by_others):
    _, _, config = rules
    daemon(config)
    assert stat.S_IMODE(control_socket.stat().st_mode) == 0o600
    os.chmod(control_socket.parent, 0o755)
    answered = watchd("status", user=user)
    assert answered.returncode == 3 and "root or the daemon's user only" in answered.stderr
    # Past the file's mode (made looser by an admin, say), SO_PEERCRED still refuses.
    os.chmod(control_socket, 0o666)
    answered = watchd("status", user=user)
    assert answered.returncode == 1, answered.stdout
    assert f"refused: user {user.pw_uid} may not ask" in answered.stderr
    assert watchd("status").returncode == 0


def test_jobs_are_read_through_the_running_daemon(rules, daemon, tmp_path):
    watched, _, config = rules
    daemon(config)
    (watched / "y.bad").write_text("x")
    wait_for(lambda: status()["ledger"]["dead_letters"] == 1)
    # A rules file the command cannot read: what it shows comes from the daemon.
    answered = watchd("jobs", "list", "--dead", "--json", "--config", str(tmp_path / "none"))
    assert answered.returncode == 0, answered.stderr
    (job,) = json.loads(answered.stdout)["jobs"]
    assert job["rule"] == "broken" and job["state"] == "dead" and job["status"] == 3
    assert "1 dead" in watchd("jobs", "--config", str(tmp_path / "none")).stdout


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_dead_letters_are_retried_and_dropped_through_the_running_daemon(
        rules, daemon, tmp_path, control_socket):
    # retry and drop took no --socket (SPEC: jobs takes it), and changed only the ledger of
    # the rules file named: the daemon's, found through its socket, is changed now.
    watched, _, config = rules
    daemon(config)
    (watched / "y.bad").write_text("x")
    wait_for(lambda: status()["ledger"]["dead_letters"] == 1)
    (job,) = json.loads(watchd("jobs", "list", "--dead", "--json").stdout)["jobs"]
    elsewhere = ("--config", str(tmp_path / "none"), "--socket", str(control_socket))
    retried = watchd("jobs", "retry", str(job["id"]), *elsewhere)
    assert (retried.returncode, retried.stdout) == (0, f"{job['id']}: queued again\n")
    # It runs again at once (the command fails again: a dead letter again, tried anew).
    wait_for(lambda: rule_of(status(), "broken")["actions_failed"] == 2,
             what="the dead letter run again")
    wait_for(lambda: status()["ledger"]["dead_letters"] == 1)
    unknown = watchd("jobs", "drop", str(job["id"]), "999999", *elsewhere)
    assert (unknown.returncode, unknown.stdout, unknown.stderr) == (
        1, f"{job['id']}: dropped\n", "999999: no such dead letter\n")
    assert status()["ledger"]["dead_letters"] == 0


def test_jobs_with_a_daemon_older_than_the_command_lists_and_changes_the_ledger_itself(
        tmp_path, write_rules, control_socket):
    # A daemon of before retry and drop went through it answers every jobs request with a
    # listing and no "stderr": the command ended in a KeyError traceback, and did nothing.
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(control_socket))
    server.listen()

    def answer_as_before() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return
            with connection:
                connection.recv(65536)
                connection.sendall(b'{"version": 1, "ok": true, "result": '
                                   b'{"lines": ["jobs: none"]}}\n')

    threading.Thread(target=answer_as_before, daemon=True).start()
    config = write_rules(f"settings: {{state_dir: {tmp_path / 'state'}}}\nrules: []\n")
    try:
        listed = watchd("jobs", "list")
        assert (listed.returncode, listed.stdout, listed.stderr) == (0, "jobs: none\n", "")
        retried = watchd("jobs", "retry", "5", "--config", str(config))
        assert (retried.returncode, retried.stderr) == (1, "5: no such dead letter\n")
    finally:
        server.close()


def test_jobs_with_a_socket_no_daemon_answers_on_says_so_and_reads_the_ledger(
        tmp_path, write_rules):
    # It read the ledger of --config with no word: an admin with a wrong socket saw the
    # ledger of another instance, or a stale one, not knowing it.
    config = write_rules(f"settings: {{state_dir: {tmp_path / 'state'}}}\nrules: []\n")
    nowhere = tmp_path / "no-socket"
    listed = watchd("jobs", "list", "--socket", str(nowhere), "--config", str(config))
    assert (listed.returncode, listed.stdout) == (0, "jobs: none\n")
    assert listed.stderr == (f"watchd: no watchd answers on {nowhere}: No such file or "
                             f"directory; the ledger of {config} is read directly\n")


def test_a_job_whose_command_runs_is_listed_running(tmp_path, write_rules, daemon):
    # The ledger writes a first action's run only if it fails: the job was listed queued.
    watched, started = tmp_path / "in", tmp_path / "started"
    watched.mkdir()
    config = write_rules(f"""
        settings: {{stop_grace: 1s}}
        rules:
          - name: slow
            paths: [{watched}]
            actions:
              - command: [/bin/sh, -c, 'touch {started}; exec sleep 60']
        """)
    daemon(config)
    (watched / "f").write_text("x")
    wait_for(started.exists, what="the command started")
    answered = watchd("jobs", "list", "--json", "--config", str(config))
    assert answered.returncode == 0, answered.stderr
    (job,) = json.loads(answered.stdout)["jobs"]
    assert job["rule"] == "slow" and job["state"] == "running"
    assert "1 running" in watchd("jobs", "--config", str(config)).stdout


def trace_lines(process: subprocess.Popen[str], until, timeout: float = 15) -> list[dict]:
    """Trace records as they come, until ``until(records)`` holds."""
    found: list[dict] = []
    deadline = time.monotonic() + timeout
    while not until(found):
        try:
            line = process.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"no more trace lines in {timeout}s; so far: {found}")
        assert line, f"the trace ended: {found}"
        found.append(json.loads(line)["trace"])
    return found


def start_trace(*args: str) -> subprocess.Popen[str]:
    process = subprocess.Popen([PYTHON, "-m", "watchd", "trace", "--json", *args],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    assert process.stderr.readline().startswith("tracing ")  # attached: lines follow
    process.lines = queue.Queue()
    threading.Thread(target=_read_lines, args=(process,), daemon=True).start()
    return process


def _read_lines(process) -> None:
    """Each line of the trace into its queue, then "" at its end."""
    for line in iter(process.stdout.readline, ""):
        process.lines.put(line)
    process.lines.put("")


def end_trace(process: subprocess.Popen[str]) -> int:
    """Ctrl-C, as at a terminal: the trace ends, with 0."""
    process.send_signal(signal.SIGINT)
    process.communicate(timeout=10)
    return process.returncode


def decisions(found: list[dict], path) -> list[tuple]:
    return [(line["rule"], line["decision"]) for line in found if line["path"] == str(path)]


def test_a_trace_tells_every_decision_for_a_scripted_sequence(rules, daemon):
    watched, _out, config = rules
    daemon(config)
    tracer = start_trace()
    try:
        (watched / "a.csv").write_text("x")
        (watched / "tmp-b.csv").write_text("x")
        (watched / "c.bad").write_text("x")
        (watched / "d.iso").write_text("x")
        found = trace_lines(tracer, lambda lines: any(
            line["decision"] == "dead letter" for line in lines)
            and any(line["decision"] == "ran" and line["rule"] == "ingest" for line in lines))
    finally:
        assert end_trace(tracer) == 0
    everyone_not = [("broken", "not matched"), ("slow-upload", "not matched"),
                    ("sync", "not matched")]
    assert decisions(found, watched / "a.csv") == [
        (None, "event"), ("ingest", "matched"), *everyone_not, ("ingest", "queued"),
        ("ingest", "ran")]
    excluded = [line for line in found if line["path"] == str(watched / "tmp-b.csv")
                and line["rule"] == "ingest"]
    assert excluded[0]["decision"] == "not matched"
    assert excluded[0]["detail"] == "exclude pattern 'tmp-*' matches 'tmp-b.csv'"
    broken = decisions(found, watched / "c.bad")
    assert broken[-2:] == [("broken", "ran"), ("broken", "dead letter")]
    assert ("slow-upload", "settling") in decisions(found, watched / "d.iso")
    ran = next(line for line in found if line["decision"] == "ran" and line["rule"] == "broken")
    assert ran["exit_status"] == 3 and ran["duration_ms"] >= 0 and ran["try"] == 1


def test_a_trace_of_one_rule_and_one_path_shows_only_those(rules, daemon):
    watched, _, config = rules
    daemon(config)
    mine = watched / "mine.csv"
    tracer = start_trace("--rule", "ingest", str(mine))
    try:
        (watched / "other.csv").write_text("x")
        (watched / "n.bad").write_text("x")
        mine.write_text("x")
        found = trace_lines(tracer, lambda lines: any(line["decision"] == "ran"
                                                      for line in lines))
    finally:
        end_trace(tracer)
    assert {line["path"] for line in found} == {str(mine)}
    assert [(line["rule"], line["decision"]) for line in found] == [
        (None, "event"), ("ingest", "matched"), ("ingest", "queued"), ("ingest", "ran")]


def test_a_trace_of_an_unknown_rule_is_refused_in_words(rules, daemon):
    daemon(rules[2])
    answered = watchd("trace", "--rule", "nope")
    assert answered.returncode == 1
    assert "no rule named 'nope'; the rules are: broken, ingest, slow-upload, sync" in (
        answered.stderr)


def test_the_socket_goes_with_the_daemon_and_a_stale_one_is_replaced(rules, daemon,
                                                                     control_socket):
    _, _, config = rules
    first = daemon(config)
    assert control_socket.is_socket()
    first.process.kill()
    first.process.wait()
    assert control_socket.is_socket()  # left by a kill -9
    daemon(config)
    assert status()["pid"] != first.pid


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_an_idle_daemon_wakes_no_thread(tmp_path, write_rules, daemon):
    """Idle, a daemon sleeps: its control socket's thread looked at its clients' deadlines once
    a second, with no client to look at (and no watchdog here: the ping's wake-ups are
    systemd's to ask for)."""
    watched = tmp_path / "in"
    watched.mkdir()
    process = daemon(write_rules(f"""
        rules:
          - {{name: idle, paths: [{watched}], actions: [{{command: ["/bin/true"]}}]}}
    """))
    process.wait_log("first start: what is there is recorded")
    status()  # one client, served and gone
    pid = process.process.pid
    wait_for(lambda: _quiet_for(pid, 1.5), what="1.5 s in which no thread of the daemon woke")


def _quiet_for(pid: int, seconds: float) -> bool:
    """Whether no thread of ``pid`` woke (nor began or ended) in the next ``seconds``."""
    before = _context_switches(pid)
    time.sleep(seconds)  # the window watched: what is asked is that nothing happens in it
    return _context_switches(pid) == before


def _context_switches(pid: int) -> dict[str, int]:
    """Each thread's context switches so far, by thread id."""
    counts = {}
    for thread in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{thread}/status") as status_file:
            fields = dict(line.split(":", 1) for line in status_file if ":" in line)
        counts[thread] = (int(fields["voluntary_ctxt_switches"])
                          + int(fields["nonvoluntary_ctxt_switches"]))
    return counts
