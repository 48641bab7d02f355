"""The ledger: jobs outlive kill -9 and stops, failed ones are retried or kept as dead letters,
and a ledger that cannot be written (full, read-only, locked, corrupt) never stops the work."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from conftest import Daemon, counters, env_of, jobs_cli, listed, recorder, records, wait_for

from watchd.config.compile import compile_rules
from watchd.config.loader import load
from watchd.core.actions import MAX_BACKOFF, retry_delay
from watchd.core.events import FileEvent
from watchd.core.job import Job
from watchd.core.stats import Counters
from watchd.ledger import store
from watchd.ledger.batch import FEW_RECORDS
from watchd.ledger.rows import Failure, row_of
from watchd.ledger.writer import BATCH_LIMIT, Ledger
from watchd.outbox.spool import Delivery, Spool
from watchd.run.queue import JobQueue

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
LEDGER_FILES = {"ledger.db", "ledger.db-wal", "ledger.db-shm", "lock"}
DEGRADED = "DEGRADED: "
RECOVERED = "the ledger can be written again"
BURST = 20


# -- rules and commands ------------------------------------------------------------------------

def one_rule(write_rules: Callable[[str], Path], watched: Path, command: list[str],
             settings: dict | None = None, **action_keys: object) -> Path:
    """A rules file (JSON is YAML) with one rule, ``job``, running ``command`` for ``watched``."""
    rule = {"name": "job", "paths": [str(watched)],
            "actions": [{"command": command, **action_keys}]}
    return write_rules(json.dumps({"settings": settings or {}, "rules": [rule]}))


def state_dir(state: Path | None) -> dict[str, str]:
    """The settings for a ledger in ``state``; none for the test's own state directory."""
    return {"state_dir": str(state)} if state else {}


def gated(out: Path, gate: Path) -> list[str]:
    """A recorder whose run for the file named ``slow`` then holds until ``gate`` exists."""
    script = (f'"$0" "$@" || exit; [ "$WATCHD_NAME" != slow ] || '
              f'until [ -e "{gate}" ]; do sleep 0.05; done')
    return ["/bin/sh", "-c", script, *recorder(out)]


def failing_until(counter: Path, tries: int, out: Path) -> list[str]:
    """A command that fails its first ``tries - 1`` runs (counted in ``counter``), then records."""
    script = (f'n=$(cat "{counter}" 2>/dev/null || echo 0); n=$((n + 1)); echo $n > "{counter}"; '
              f'[ $n -ge {tries} ] || exit 1; exec "$0" "$@"')
    return ["/bin/sh", "-c", script, *recorder(out)]


def make_files(watched: Path, names: list[str]) -> None:
    for name in names:
        (watched / name).write_bytes(b"x")


def burst_names() -> list[str]:
    return [f"f{index:02}" for index in range(BURST)]


def runs_by_name(out: Path) -> dict[str, list[dict[str, bytes]]]:
    """Each file's runs, by its name: the environment of each."""
    runs: dict[str, list[dict[str, bytes]]] = {}
    for record in records(out):
        env = env_of(record)
        runs.setdefault(env["WATCHD_NAME"].decode(), []).append(env)
    return runs


# -- the ledger, the daemon, the command line --------------------------------------------------

def ledger_jobs(state: Path) -> list[dict]:
    """The ledger's jobs (queued, running, retrying, dead), read as another process would (WAL:
    never in the daemon's way)."""
    with contextlib.closing(sqlite3.connect(f"file:{state / 'ledger.db'}?mode=ro",
                                            uri=True, timeout=5)) as connection:
        return [row._asdict() for row in store.jobs(connection)]


def log_lines(process: Daemon, text: str) -> list[str]:
    return [line for line in process.log().splitlines() if text in line]


def assert_clean(process: Daemon, state: Path) -> None:
    """No traceback was logged, and nothing but the ledger's own files is left in ``state``."""
    assert "Traceback" not in process.log(), process.log()
    assert set(os.listdir(state)) <= LEDGER_FILES, sorted(os.listdir(state))


# -- a tmpfs for the state directory -----------------------------------------------------------

@pytest.fixture
def tmpfs_state(tmp_path: Path) -> Iterator[Path]:
    """A tiny tmpfs as the state directory. Request it before ``daemon``: the daemons (which
    hold the ledger open) are stopped first, then it is unmounted."""
    mount_point = tmp_path / "tmpfs-state"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k,mode=0700", "watchd-test",
                    mount_point], check=True)
    try:
        yield mount_point
    finally:
        if subprocess.run(["umount", mount_point], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", mount_point], check=True)


def fill(directory: Path) -> Path:
    """A file that takes every block left in ``directory``'s filesystem."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as file:
        while True:
            try:
                file.write(chunk)
            except OSError as error:
                assert error.errno == errno.ENOSPC
                if len(chunk) == 1:
                    return filler
                chunk = chunk[: len(chunk) // 2]


def start_on(write_rules, daemon, tmp_path: Path, state: Path) -> tuple[Daemon, Path, Path]:
    """A daemon recording every file of ``tmp_path/in``, with its ledger in ``state``."""
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = one_rule(write_rules, watched, recorder(out), settings={"state_dir": str(state)})
    return daemon(config), watched, out


def assert_degraded_yet_acting(process: Daemon, watched: Path, out: Path, problem: str) -> None:
    """Files written while the ledger cannot be written are all acted on, from memory."""
    make_files(watched, burst_names())
    wait_for(lambda: set(runs_by_name(out)) >= set(burst_names()), what="every file acted on")
    process.wait_log(DEGRADED)
    degraded = log_lines(process, DEGRADED)
    assert len(degraded) == 1, degraded
    assert f" ERROR DEGRADED: {problem}" in degraded[0], degraded[0]
    assert "jobs are kept in memory" in degraded[0]
    assert counters(process)["ledger_failures"] > 0


def assert_recovers(process: Daemon, watched: Path, out: Path, state: Path,
                    kept: list[dict] | None = None) -> None:
    """The ledger written again (within two retries), what was held is written: no job is left
    in it but those ``kept`` (as they were), and a new file is acted on as before."""
    process.wait_log(RECOVERED, timeout=15)
    wait_for(lambda: ledger_jobs(state) == (kept or []), what="the held jobs written, and ended")
    make_files(watched, ["after"])
    wait_for(lambda: "after" in runs_by_name(out))
    assert all(len(runs) == 1 for runs in runs_by_name(out).values())
    assert_clean(process, state)


# -- kill -9 and stops -------------------------------------------------------------------------

def slow_then_burst(write_rules, daemon, tmp_path: Path, **settings: object):
    """One worker held on ``slow``, and ``BURST`` files queued behind it, all in the ledger."""
    watched, out, gate = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "gate"
    watched.mkdir()
    config = one_rule(write_rules, watched, gated(out, gate), settings={"workers": 1, **settings})
    process = daemon(config)
    make_files(watched, ["slow"])
    wait_for(lambda: "slow" in runs_by_name(out))
    make_files(watched, burst_names())
    state = Path(str(settings.get("state_dir", tmp_path / "state")))
    wait_for(lambda: len(ledger_jobs(state)) == BURST + 1, what="every job in the ledger")
    assert not set(runs_by_name(out)) & set(burst_names())
    return process, config, out, gate


def unfinished(state: Path) -> list[dict]:
    return [job for job in ledger_jobs(state) if job["state"] != "dead"]


def assert_all_run_once(out: Path, state: Path) -> dict[str, list[dict[str, bytes]]]:
    """Once the ledger holds no unfinished job: every file of the burst was run exactly once."""
    wait_for(lambda: not unfinished(state), what="every job ended")
    runs = runs_by_name(out)
    assert set(runs) == {"slow", *burst_names()}
    for name in burst_names():
        assert len(runs[name]) == 1, (name, runs[name])
    return runs


def test_kill_9_loses_no_queued_job(tmp_path, write_rules, daemon):
    first, config, out, gate = slow_then_burst(write_rules, daemon, tmp_path)
    first.kill()
    gate.touch()  # the slow run the daemon left behind ends; its next run does not wait
    second = daemon(config)
    second.wait_log(f"{BURST + 1} job(s) from the ledger queued")
    runs = assert_all_run_once(out, tmp_path / "state")
    assert not ledger_jobs(tmp_path / "state")
    # The slow job, running at the kill, ran again (at least once): as the same job.
    assert len(runs["slow"]) >= 2
    for name, envs in runs.items():
        assert len({env["WATCHD_JOB"] for env in envs}) == 1, (name, envs)
    assert {runs[name][0]["WATCHD_TRY"] for name in burst_names()} == {b"1"}
    assert "Traceback" not in second.log()


def test_a_stop_leaves_the_queued_jobs_in_the_ledger_for_the_next_start(
        tmp_path, write_rules, daemon):
    first, config, out, gate = slow_then_burst(write_rules, daemon, tmp_path, stop_grace="0.2s")
    assert first.stop() == 0
    # The queued ones, and the one the stop cut short.
    stopped = log_lines(first, " stopped")
    assert f"stopped; {BURST + 1} job(s) wait in the ledger for the next start" in stopped[-1]
    assert f"waiting={BURST + 1}" in stopped[-1]
    gate.touch()
    second = daemon(config)
    second.wait_log(f"{BURST + 1} job(s) from the ledger queued")
    assert_all_run_once(out, tmp_path / "state")


def test_the_run_a_stop_killed_runs_again_at_the_next_start(tmp_path, write_rules, daemon):
    first, config, out, gate = slow_then_burst(write_rules, daemon, tmp_path, stop_grace="0.2s")
    first.stop()
    # Said as what it is, not as a failed action (which an alert on failures would count).
    (line,) = log_lines(first, "action cut short by the stop")
    assert " WARNING action cut short by the stop; it runs again at the next start" in line
    assert "action failed" not in first.log() and " actions_failed=0" in first.log()
    gate.touch()
    daemon(config)
    runs = assert_all_run_once(out, tmp_path / "state")
    assert len(runs["slow"]) >= 2
    assert not ledger_jobs(tmp_path / "state")


# -- retries and dead letters ------------------------------------------------------------------

def test_a_failed_command_is_retried_with_backoff_until_it_succeeds(
        tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    command = failing_until(tmp_path / "counter", 3, out)
    process = daemon(one_rule(write_rules, watched, command, retries=3, backoff="50ms"))
    make_files(watched, ["f"])
    wait_for(lambda: records(out))
    wait_for(lambda: not ledger_jobs(tmp_path / "state"), what="the job ended")
    (run,) = runs_by_name(out)["f"]
    assert run["WATCHD_TRY"] == b"3"
    retried = log_lines(process, "job retried")
    assert len(retried) == 2, retried
    assert "job retried: try 2 of 4 in 0." in retried[0]
    assert "job retried: try 3 of 4 in 0." in retried[1]
    assert "dead letter" not in process.log()
    seen = counters(process)
    assert seen["retried"] == 2 and seen["dead_letters"] == 0
    assert seen["queued"] == seen["retrying"] == 0


def two_actions(write_rules, watched: Path, first: dict, second: dict) -> Path:
    rule = {"name": "job", "paths": [str(watched)], "actions": [first, second]}
    return write_rules(json.dumps({"rules": [rule]}))


def test_a_second_action_that_fails_is_retried_alone_with_its_own_retries(
        tmp_path, write_rules, daemon):
    # The retry ran from the first action, with the first action's retries: what had
    # succeeded ran again, and the action that failed was tried as often as the first allows.
    watched, first, second = tmp_path / "in", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    watched.mkdir()
    daemon(two_actions(write_rules, watched, {"command": recorder(first)},
                       {"command": failing_until(tmp_path / "counter", 3, second),
                        "retries": 2, "backoff": "50ms"}))
    make_files(watched, ["f"])
    wait_for(lambda: records(second), what="the second action's third try")
    wait_for(lambda: not ledger_jobs(tmp_path / "state"), what="the job ended")
    assert len(records(first)) == 1
    assert [env_of(record)["WATCHD_TRY"] for record in records(second)] == [b"3"]


def test_a_dead_letter_of_a_second_action_keeps_its_step_and_retries_it_alone(
        tmp_path, write_rules, daemon):
    watched, first, second = tmp_path / "in", tmp_path / "first.jsonl", tmp_path / "second.jsonl"
    watched.mkdir()
    config = two_actions(write_rules, watched, {"command": recorder(first), "retries": 2,
                                                "backoff": "50ms"},
                         {"command": failing_until(tmp_path / "counter", 2, second)})
    process = daemon(config)
    make_files(watched, ["f"])
    process.wait_log("job kept as a dead letter after 1 tries")
    (dead,) = listed(config, "--dead")
    assert (dead["step"], dead["tries"]) == (2, 1)
    assert jobs_cli(config, "retry", str(dead["id"])).returncode == 0
    wait_for(lambda: records(second), what="the second action run again")
    wait_for(lambda: not ledger_jobs(tmp_path / "state"), what="the job ended")
    assert len(records(first)) == 1


@pytest.mark.slow  # several polls or retries: make test runs it, make check does not
def test_a_retry_after_a_reload_runs_under_the_rules_fixed_by_it(tmp_path, write_rules, daemon):
    # The retry kept the rule it was matched under: the failing command ran again, and a
    # rule the reload had removed ran all the same.
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    process = daemon(one_rule(write_rules, watched, ["/bin/false"], retries=2, backoff="2s"))
    make_files(watched, ["fixed"])
    process.wait_log("job retried: try 2 of 3")
    fix_the_rule(write_rules, watched, out)
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    wait_for(lambda: records(out), what="the retry, under the fixed rule")
    (run,) = runs_by_name(out)["fixed"]
    assert run["WATCHD_TRY"] == b"2"
    # A rule the reload removes: its retry is not run, and is kept as a dead letter, saying why.
    one_rule(write_rules, watched, ["/bin/false"], retries=2, backoff="2s")
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded", count=2)
    make_files(watched, ["gone"])
    process.wait_log("job retried: try 2 of 3", count=2)
    write_rules(json.dumps({"rules": []}))
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded", count=3)
    process.wait_log("job not run: its rule 'job' is gone or disabled; kept as a dead letter")
    (dead,) = listed(process.config, "--dead")
    assert dead["path"].endswith("/gone") and "gone or disabled" in dead["error"]


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_retry_of_a_rule_whose_actions_a_reload_removed_is_a_dead_letter(
        tmp_path, write_rules, daemon):
    # Retried by its place, the first action's removal made it run what had been the third.
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    ok, failing = {"command": ["/bin/true"]}, {"command": ["/bin/false"], "retries": 2,
                                              "backoff": "2s"}
    third = {"command": recorder(out)}
    config = write_rules(json.dumps({"rules": [{"name": "job", "paths": [str(watched)],
                                                "actions": [ok, failing, third]}]}))
    process = daemon(config)
    make_files(watched, ["f"])
    process.wait_log("job retried: try 2 of 3")
    config.write_text(json.dumps({"rules": [{"name": "job", "paths": [str(watched)],
                                             "actions": [failing, third]}]}))
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    process.wait_log("job not run: rule 'job' has 2 action(s) now, not 3: action 2 may be "
                     "another one; kept as a dead letter")
    assert not records(out)


def test_a_retry_waits_at_least_its_backoff_doubled_and_at_most_ten_minutes():
    # The jitter went downward: a first retry could come after half of the backoff asked for.
    random.seed(17)
    for retry, least in ((1, 10.0), (2, 20.0), (3, 40.0)):
        delays = [retry_delay(10.0, retry) for _ in range(1000)]
        assert least <= min(delays) and max(delays) <= least * 1.25
        assert len(set(delays)) > 900  # spread, not one moment for all
    capped = [retry_delay(10.0, 20) for _ in range(1000)]
    assert min(capped) >= 0.8 * MAX_BACKOFF and max(capped) <= MAX_BACKOFF
    assert len(set(capped)) > 900  # still spread at the cap


def dead_letters_of(write_rules, daemon, tmp_path: Path, names: list[str],
                    state: Path | None = None):
    """A daemon whose rule runs /bin/false: each file written becomes a dead letter."""
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = one_rule(write_rules, watched, ["/bin/false"], settings=state_dir(state))
    process = daemon(config)
    make_files(watched, names)
    process.wait_log("job kept as a dead letter", count=len(names))
    wait_for(lambda: len(listed(config, "--dead")) == len(names), what="the dead letters")
    return process, config, watched, out


def fix_the_rule(write_rules, watched: Path, out: Path, state: Path | None = None) -> Path:
    return one_rule(write_rules, watched, recorder(out), settings=state_dir(state))


@pytest.mark.slow  # seconds: make test runs it, make check does not
@pytest.mark.parametrize("daemon_runs", [True, False], ids=["through the daemon", "directly"])
def test_a_dead_letter_whose_rule_is_gone_is_not_queued_again(tmp_path, write_rules, daemon,
                                                              daemon_runs):
    # It said "queued again" (exit 0); the daemon then refused it and kept it as a dead
    # letter again, with its tries set to 0.
    process, config, watched, out = dead_letters_of(write_rules, daemon, tmp_path, ["f"])
    (job,) = listed(config, "--dead")
    write_rules(json.dumps({"rules": [{"name": "renamed", "paths": [str(watched)],
                                       "actions": [{"command": recorder(out)}]}]}))
    if daemon_runs:
        process.signal(signal.SIGHUP)
        process.wait_log("reloaded")
    else:
        assert process.stop() == 0
    retried = jobs_cli(config, "retry", "--all")
    assert (retried.returncode, retried.stdout) == (1, "")
    assert retried.stderr == (f"{job['id']}: not queued: its rule 'job' is gone or disabled "
                              "(fix the rules, reload, retry)\n")
    assert listed(config, "--dead") == [job]  # as it was


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_dead_letters_are_listed_and_dropped_while_the_rules_have_an_error(
        tmp_path, write_rules, daemon):
    """The rules broken (by the very program that failed going away): the ledger their
    settings name is still read; only a retry, which needs the rules, refuses. Each command
    refused with the rules' errors (exit 1) before."""
    process, config, watched, _ = dead_letters_of(write_rules, daemon, tmp_path, ["f"])
    assert process.stop() == 0
    (job,) = listed(config, "--dead")
    write_rules(json.dumps({"settings": {"workers": 0},  # a setting in error too
                            "rules": [{"name": "job", "paths": [str(watched)],
                                       "actions": [{"command": ["/nonexistent/program"]}]}]}))
    said = f"watchd: {config} has 2 error(s) (watchd check --config {config} shows them)"
    answered = jobs_cli(config, "list", "--dead", "--json")
    assert answered.returncode == 0 and answered.stderr.startswith(said), answered.stderr
    assert json.loads(answered.stdout)["jobs"] == [job]
    hooks = subprocess.run([sys.executable, "-m", "watchd", "webhooks", "list", "--config",
                            str(config)], capture_output=True, text=True, timeout=30)
    assert hooks.returncode == 0 and hooks.stderr.startswith(said), hooks.stderr
    retried = jobs_cli(config, "retry", str(job["id"]))
    assert retried.returncode == 1 and "/nonexistent/program" in retried.stderr
    dropped = jobs_cli(config, "drop", str(job["id"]))
    assert (dropped.returncode, dropped.stdout) == (0, f"{job['id']}: dropped\n")
    assert json.loads(jobs_cli(config, "list", "--dead", "--json").stdout) == {"jobs": []}


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_dead_letter_is_listed_and_runs_again_when_retried_while_the_daemon_runs(
        tmp_path, write_rules, daemon):
    process, config, watched, out = dead_letters_of(write_rules, daemon, tmp_path, ["f"])
    (line,) = log_lines(process, "job kept as a dead letter")
    (job,) = listed(config)
    assert (f"job kept as a dead letter after 1 tries: exited with status 1; run it again "
            f"with: watchd jobs retry {job['id']}") in line
    assert " ERROR job kept as a dead letter" in line
    assert {key: job[key] for key in ("state", "rule", "path", "action", "error", "status",
                                      "tries")} == {
        "state": "dead", "rule": "job", "path": str(watched / "f"), "action": "command: /bin/false",
        "error": "exited with status 1", "status": 1, "tries": 1}
    text = jobs_cli(config)
    assert text.returncode == 0 and text.stdout.startswith("jobs: 1 dead\n"), text.stdout
    assert str(watched / "f") in text.stdout and "exited with status 1" in text.stdout
    # Fixed, reloaded, asked for again: it runs from the action that failed, as the same job.
    fix_the_rule(write_rules, watched, out)
    process.signal(signal.SIGHUP)
    process.wait_log("reloaded")
    retried = jobs_cli(config, "retry", str(job["id"]))
    assert (retried.returncode, retried.stdout) == (0, f"{job['id']}: queued again\n")
    wait_for(lambda: records(out), timeout=10, what="the retried job run")
    (run,) = runs_by_name(out)["f"]
    assert run["WATCHD_JOB"] == str(job["id"]).encode() and run["WATCHD_TRY"] == b"1"
    wait_for(lambda: not listed(config), what="the ledger empty")
    unknown = jobs_cli(config, "retry", "999")
    assert unknown.returncode == 1 and "999: no such dead letter" in unknown.stderr
    assert counters(process)["dead_letters"] == 1


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_dead_letter_retried_while_the_daemon_is_stopped_runs_at_the_next_start(
        tmp_path, write_rules, daemon):
    process, config, watched, out = dead_letters_of(write_rules, daemon, tmp_path, ["a", "b"])
    assert process.stop() == 0
    first, second = (job["id"] for job in listed(config))
    assert jobs_cli(config, "retry", str(first)).stdout == f"{first}: queued again\n"
    # --all drops every dead letter, not the one asked for again.
    dropped = jobs_cli(config, "drop", "--all")
    assert (dropped.returncode, dropped.stdout) == (0, f"{second}: dropped\n")
    assert [(job["id"], job["state"]) for job in listed(config)] == [(first, "requested")]
    assert jobs_cli(config, "drop", str(second)).returncode == 1
    none_left = jobs_cli(config, "drop", "--all")  # it printed nothing
    assert (none_left.returncode, none_left.stdout) == (0, "no dead letters\n")
    restarted = daemon(fix_the_rule(write_rules, watched, out))
    restarted.wait_log("1 job(s) from the ledger queued")
    wait_for(lambda: not listed(config), what="the retried job ended")
    assert list(runs_by_name(out)) == ["a"]
    assert runs_by_name(out)["a"][0]["WATCHD_JOB"] == str(first).encode()


# -- a ledger that cannot be written -----------------------------------------------------------

@pytest.mark.slow  # waits for the writer's next try: make test runs it, make check does not
@ROOT_ONLY
def test_a_full_disk_degrades_the_ledger_and_every_file_is_still_acted_on(
        tmpfs_state, tmp_path, write_rules, daemon):
    process, watched, out = start_on(write_rules, daemon, tmp_path, tmpfs_state)
    filler = fill(tmpfs_state)
    try:
        assert_degraded_yet_acting(process, watched, out,
                                   f"cannot write {tmpfs_state / 'ledger.db'}: "
                                   "database or disk is full")
    finally:
        filler.unlink()
    assert_recovers(process, watched, out, tmpfs_state)


@contextlib.contextmanager
def read_only(mount_point: Path) -> Iterator[None]:
    subprocess.run(["mount", "-o", "remount,ro", mount_point], check=True)
    try:
        yield
    finally:
        subprocess.run(["mount", "-o", "remount,rw", mount_point], check=True)


def start_read_only(write_rules, daemon, tmp_path: Path, state: Path,
                    dead: list[str]) -> tuple[Daemon, Path, Path, list[dict]]:
    """A daemon started on a ledger in ``state`` that is read-only (a mount cannot be made
    read-only while a daemon holds the ledger open for writing: EBUSY), with the dead letters
    of ``dead`` kept from an earlier run. It acts on a burst from memory, degraded; then the
    mount is writable again. Returns the daemon, its paths, and the dead letters as they were."""
    process, _, watched, out = dead_letters_of(write_rules, daemon, tmp_path, dead, state=state)
    assert process.stop() == 0
    kept = ledger_jobs(state)
    with read_only(state):
        process = daemon(fix_the_rule(write_rules, watched, out, state=state))
        assert_degraded_yet_acting(process, watched, out, f"cannot open {state / 'ledger.db'}: "
                                   "attempt to write a readonly database")
    return process, watched, out, kept


@pytest.mark.slow  # waits for the writer's next try: make test runs it, make check does not
@ROOT_ONLY
def test_a_read_only_ledger_degrades_and_recovers_when_writable_again(
        tmpfs_state, tmp_path, write_rules, daemon):
    process, watched, out, _ = start_read_only(write_rules, daemon, tmp_path, tmpfs_state, [])
    assert_recovers(process, watched, out, tmpfs_state)


@pytest.mark.slow  # waits for the writer's next try: make test runs it, make check does not
@ROOT_ONLY
def test_a_dead_letter_outlives_a_start_on_a_read_only_ledger(
        tmpfs_state, tmp_path, write_rules, daemon):
    process, watched, out, kept = start_read_only(write_rules, daemon, tmp_path, tmpfs_state,
                                                  ["old"])
    ran = {env["WATCHD_JOB"] for runs in runs_by_name(out).values() for env in runs}
    assert str(kept[0]["id"]).encode() not in ran  # ids are never given twice
    assert_recovers(process, watched, out, tmpfs_state, kept=kept)


@pytest.mark.slow  # waits for the writer's next try: make test runs it, make check does not
@ROOT_ONLY
@pytest.mark.parametrize("end", ["stop", "kill"])  # kill -9 leaves the WAL to read as well
def test_jobs_a_stop_left_run_from_a_read_only_ledger_and_only_once(
        tmpfs_state, tmp_path, write_rules, daemon, end):
    # They waited until the ledger could be written again: the writer read them only over a
    # connection it could write with, which a read-only mount refuses.
    first, config, out, gate = slow_then_burst(write_rules, daemon, tmp_path, stop_grace="0.2s",
                                               state_dir=str(tmpfs_state))
    if end == "stop":
        assert first.stop() == 0
    else:
        first.kill()
    gate.touch()
    with read_only(tmpfs_state):
        # Read directly with no daemon running (it said the ledger cannot be read, exit 1).
        assert {job["state"] for job in listed(config)} <= {"queued", "running"}
        assert len(listed(config)) == BURST + 1
        second = daemon(config)
        second.wait_log(f"{BURST + 1} job(s) from the ledger queued")
        wait_for(lambda: set(runs_by_name(out)) == {"slow", *burst_names()},
                 what="every job the stop left run, from memory")
        assert log_lines(second, DEGRADED)
        # Through the daemon, as it will write them: ended (they were listed queued).
        wait_for(lambda: not listed(config), what="the jobs run from memory listed as ended")
    # Once it can be opened, they are not found unfinished and run again.
    second.wait_log(RECOVERED, timeout=15)
    wait_for(lambda: not ledger_jobs(tmpfs_state), what="their ends written")
    make_files(tmp_path / "in", ["after"])
    wait_for(lambda: "after" in runs_by_name(out))
    runs = runs_by_name(out)
    assert len(runs.pop("slow")) == 2  # cut short by the stop or kill, then run at the start
    assert all(len(envs) == 1 for envs in runs.values()), runs
    assert_clean(second, tmpfs_state)


def webhook_rule(write_rules, tmp_path: Path, receiver, state: Path) -> tuple[Path, Path]:
    """A rule posting each file of ``tmp_path/in`` to the receiver's ``/hook``, retried for
    an hour, with its ledger in ``state``: the directory, and the rules."""
    watched = tmp_path / "in"
    watched.mkdir()
    webhook = {"url": f"{receiver.url}/hook", "retries": 100, "backoff": "1h"}
    return watched, write_rules(json.dumps({"settings": {"state_dir": str(state)}, "rules": [
        {"name": "hook", "paths": [str(watched)], "actions": [{"webhook": webhook}]}]}))


@pytest.mark.slow  # waits for the writer's next try: make test runs it, make check does not
@ROOT_ONLY
def test_a_dead_delivery_asked_for_again_is_sent_once_after_a_start_on_a_read_only_ledger(
        tmpfs_state, tmp_path, write_rules, daemon, receiver):
    # The start read it as waiting from the read-only ledger and sent it; the ledger, once
    # writable, took it as asked for and sent it again.
    receiver.script["/hook"] = [404]
    watched, config = webhook_rule(write_rules, tmp_path, receiver, tmpfs_state)
    first = daemon(config)
    make_files(watched, ["f"])
    first.wait_log("dead letter")
    assert first.stop() == 0
    retried = jobs_cli(config, "retry", "--all")
    assert retried.returncode == 0 and "queued again" in retried.stdout, retried
    with read_only(tmpfs_state):
        webhooks = subprocess.run([sys.executable, "-m", "watchd", "webhooks", "list",
                                   "--config", str(config)], capture_output=True, text=True)
        # Read on the read-only mount (it said the ledger cannot be read, exit 1).
        assert webhooks.returncode == 0 and "waiting: 1" in webhooks.stdout, webhooks
        second = daemon(config)
        second.wait_log(DEGRADED)
    second.wait_log(RECOVERED, timeout=15)
    second.wait_log("webhook delivered")
    wait_for(lambda: not on_disk(tmpfs_state, "SELECT id FROM deliveries"),
             what="its end written")
    assert second.stop() == 0
    assert len(receiver.to("/hook")) == 2, receiver.to("/hook")
    assert second.log().count("webhook delivered") == 1


@pytest.mark.slow  # waits for the writer's next try: make test runs it, make check does not
@ROOT_ONLY
def test_a_delivery_waiting_in_a_read_only_ledger_is_sent_from_the_start(
        tmpfs_state, tmp_path, write_rules, daemon, receiver):
    # It waited for a start with the ledger writable: the spool read it only over a
    # connection it could write with.
    receiver.script["/hook"] = [503] * 100
    watched, config = webhook_rule(write_rules, tmp_path, receiver, tmpfs_state)
    first = daemon(config)
    make_files(watched, ["f"])
    first.wait_log("webhook attempt failed")
    assert first.stop() == 0
    receiver.script["/hook"] = []
    with read_only(tmpfs_state):
        second = daemon(config)
        second.wait_log("webhook delivered")
        assert log_lines(second, DEGRADED)
    second.wait_log(RECOVERED, timeout=15)
    wait_for(lambda: not on_disk(tmpfs_state, "SELECT id FROM deliveries"),
             what="its end written")
    assert len(receiver.to("/hook")) == 2
    assert_clean(second, tmpfs_state)


def test_a_second_daemon_on_the_same_state_directory_is_refused(tmp_path, write_rules, daemon):
    # Both ran: every event was acted on twice, and each start ran again every job the
    # ledger held unfinished.
    state = tmp_path / "state"
    first, watched, out = start_on(write_rules, daemon, tmp_path, state)
    second = daemon(first.config, wait=False)
    assert second.process.wait(15) == 3
    assert (f"cannot start: another watchd (pid {first.process.pid}) uses the state directory "
            f"{state}: give each instance a settings.state_dir of its own") in second.log()
    (watched / "one").write_bytes(b"x")
    wait_for(lambda: records(out))
    wait_for(lambda: not ledger_jobs(state), what="its job ended in the ledger")
    first.process.kill()  # the lock goes with the process, however it ends
    first.process.wait()
    third = daemon(first.config)
    (watched / "two").write_bytes(b"x")
    wait_for(lambda: "two" in runs_by_name(out))
    assert {name: len(runs) for name, runs in runs_by_name(out).items()} == {"one": 1, "two": 1}
    assert third.stop() == 0


@pytest.mark.slow  # seconds: make test runs it, make check does not
@ROOT_ONLY
def test_a_second_daemon_on_a_read_only_state_directory_is_refused(
        tmpfs_state, tmp_path, write_rules, daemon):
    # The lock file could not be opened for writing (EROFS): no lock was held, and both
    # daemons ran every job the stop left.
    first, config, out, gate = slow_then_burst(write_rules, daemon, tmp_path, stop_grace="0.2s",
                                               state_dir=str(tmpfs_state))
    assert first.stop() == 0
    gate.touch()
    with read_only(tmpfs_state):
        alone = daemon(config)
        wait_for(lambda: set(runs_by_name(out)) == {"slow", *burst_names()},
                 what="every job the stop left run, from memory")
        second = daemon(config, wait=False)
        assert second.process.wait(15) == 3, second.log()
        assert ("cannot start: another watchd (pid unknown) uses the state directory "
                f"{tmpfs_state}: give each instance a settings.state_dir of its own"
                ) in second.log()
        make_files(tmp_path / "in", ["after"])
        wait_for(lambda: "after" in runs_by_name(out))
        assert alone.stop() == 0
    runs = runs_by_name(out)
    assert len(runs.pop("slow")) == 2  # cut short by the stop, then run at the start
    assert all(len(envs) == 1 for envs in runs.values()), runs


@pytest.mark.slow  # waits for the writer's next try: make test runs it, make check does not
def test_a_locked_ledger_degrades_and_recovers_when_released(tmp_path, write_rules, daemon):
    state = tmp_path / "state"
    process, watched, out = start_on(write_rules, daemon, tmp_path, state)
    with contextlib.closing(sqlite3.connect(state / "ledger.db", isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            assert_degraded_yet_acting(process, watched, out,
                                       f"cannot write {state / 'ledger.db'}: database is locked")
        finally:
            other.execute("ROLLBACK")
    assert_recovers(process, watched, out, state)


@pytest.mark.slow  # the stop tries to write for LEDGER_STOP_WAIT: make test runs it
@pytest.mark.parametrize("catch_up", [False, True], ids=["catch_up_off", "catch_up"])
def test_a_stop_while_the_ledger_is_locked_says_which_jobs_are_lost(tmp_path, write_rules,
                                                                    daemon, catch_up):
    # The stop line said at INFO that the burst waited in the ledger for the next start, which
    # found none of it: it was never written.
    watched, out, gate = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "gate"
    watched.mkdir()
    rule = {"name": "job", "paths": [str(watched)], "catch_up": catch_up,
            "actions": [{"command": gated(out, gate)}]}
    config = write_rules(json.dumps({"settings": {"workers": 1, "stop_grace": "100ms"},
                                     "rules": [rule]}))
    process = daemon(config)
    make_files(watched, ["slow"])
    wait_for(lambda: "slow" in runs_by_name(out))  # on disk: a worker took it
    with contextlib.closing(sqlite3.connect(tmp_path / "state" / "ledger.db",
                                            isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            make_files(watched, burst_names())
            process.wait_log(DEGRADED)
            assert process.stop() == 0
        finally:
            other.execute("ROLLBACK")
    (lost,) = log_lines(process, "lost at the stop")
    assert f" ERROR {BURST} job(s) lost at the stop, not kept: the ledger could not be written " \
           "(cannot write" in lost, lost
    told = "its catch-up acts on what they changed at the next start" if catch_up else "not run"
    assert f"{BURST} of rule 'job' ({told})" in lost, lost
    (stopped,) = log_lines(process, " stopped")
    assert f"; 1 job(s) wait in the ledger for the next start; {BURST} job(s) lost" in stopped
    gate.touch()
    daemon(config)
    wait_for(lambda: not listed(config), what="the job the stop cut short run again")
    runs = runs_by_name(out)
    if catch_up:
        wait_for(lambda: set(runs_by_name(out)) >= set(burst_names()), what="the burst caught up")
        runs = runs_by_name(out)
        assert all(runs[name][-1]["WATCHD_CAUGHT_UP"] == b"1" for name in burst_names())
    assert set(runs) == {"slow", *(burst_names() if catch_up else [])}


@pytest.mark.slow  # waits for the writer's next try: make test runs it, make check does not
def test_jobs_held_while_the_ledger_cannot_be_written_are_listed_through_the_daemon(
        tmp_path, write_rules, daemon):
    # The listing read the ledger only: jobs queued since it could not be written were missing.
    watched, out, gate = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "gate"
    watched.mkdir()
    config = one_rule(write_rules, watched, gated(out, gate), settings={"workers": 1})
    process = daemon(config)
    make_files(watched, ["slow"])
    wait_for(lambda: "slow" in runs_by_name(out))
    state = tmp_path / "state"
    with contextlib.closing(sqlite3.connect(state / "ledger.db", isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            make_files(watched, burst_names())
            process.wait_log(DEGRADED)
            answered = jobs_cli(config, "list", "--json")
            assert answered.returncode == 0, answered.stderr
            assert "the ledger cannot be written (" in answered.stderr
            states = [(job["path"].rsplit("/", 1)[1], job["state"])
                      for job in json.loads(answered.stdout)["jobs"]]
            assert states == [("slow", "running")] + [(name, "queued") for name in burst_names()]
        finally:
            other.execute("ROLLBACK")
    gate.touch()
    assert_recovers(process, watched, out, state)


@pytest.mark.slow  # waits for the writer's next try: make test runs it, make check does not
def test_dead_letters_kept_while_the_ledger_cannot_be_written_are_retried_and_dropped(
        tmp_path, write_rules, daemon):
    # They were listed through the daemon, but retry and drop said "no such dead letter"
    # (they were on no disk yet), and status counted none of them.
    watched, out, state = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "state"
    watched.mkdir()
    config = one_rule(write_rules, watched, ["/bin/false"])
    process = daemon(config)
    with contextlib.closing(sqlite3.connect(state / "ledger.db", isolation_level=None)) as other:
        other.execute("BEGIN EXCLUSIVE")
        try:
            make_files(watched, ["retried", "dropped"])
            process.wait_log("job kept as a dead letter", count=2)
            ids = {Path(job["path"]).name: job["id"] for job in listed(config, "--dead")}
            assert set(ids) == {"retried", "dropped"}
            status = json.loads(subprocess.run(
                [sys.executable, "-m", "watchd", "status", "--json"], capture_output=True,
                text=True, check=True, timeout=30).stdout)
            assert status["ledger"]["dead_letters"] == 2
            fix_the_rule(write_rules, watched, out)
            process.signal(signal.SIGHUP)
            process.wait_log("reloaded")
            retried = jobs_cli(config, "retry", str(ids["retried"]))
            assert (retried.returncode, retried.stdout, retried.stderr) == (
                0, f"{ids['retried']}: queued again\n", "")
            dropped = jobs_cli(config, "drop", str(ids["dropped"]))
            assert (dropped.returncode, dropped.stdout, dropped.stderr) == (
                0, f"{ids['dropped']}: dropped\n", "")
            wait_for(lambda: "retried" in runs_by_name(out), what="the retried job's run")
            assert not listed(config, "--dead")
        finally:
            other.execute("ROLLBACK")
    process.wait_log(RECOVERED, timeout=15)
    wait_for(lambda: ledger_jobs(state) == [], what="the retry and the drop written")
    assert set(runs_by_name(out)) == {"retried"}


def test_jobs_are_listed_through_the_daemon_while_the_ledger_cannot_be_read(
        tmp_path, write_rules, daemon):
    # The listing failed: "the daemon refused: cannot read the ledger".
    _, config, out, gate = slow_then_burst(write_rules, daemon, tmp_path)
    ledger = tmp_path / "state" / "ledger.db"
    files = [ledger.with_name(ledger.name + suffix) for suffix in ("", "-wal", "-shm")]
    for file in files:  # the daemon writes on in them, renamed
        file.rename(file.with_name("kept" + file.name))
    try:
        garbage(ledger)
        answered = jobs_cli(config, "list", "--json")
        assert answered.returncode == 0, answered.stderr
        assert f"the ledger {ledger} cannot be read: the jobs the daemon holds" in answered.stderr
        states = [job["state"] for job in json.loads(answered.stdout)["jobs"]]
        assert states == ["running"] + ["queued"] * BURST
    finally:
        for file in files:
            file.with_name("kept" + file.name).replace(file)
    gate.touch()
    assert_all_run_once(out, tmp_path / "state")


# -- a corrupt ledger --------------------------------------------------------------------------

def garbage(ledger: Path) -> None:
    ledger.write_bytes(b"this is not an SQLite database\n" * 1000)


def truncated(ledger: Path) -> None:
    with open(ledger, "r+b") as file:
        file.truncate(os.path.getsize(ledger) // 2)


def foreign(ledger: Path) -> None:
    """Another program's database in its place (its own ``jobs``): it got watchd's tables
    added, and the daemon stayed degraded ("no such column: state"), never putting it aside."""
    ledger.unlink()
    with contextlib.closing(sqlite3.connect(ledger)) as other:
        other.executescript("CREATE TABLE jobs(id INTEGER PRIMARY KEY, name TEXT); "
                            "INSERT INTO jobs VALUES(1, 'precious');")


@pytest.mark.parametrize("spoil", [garbage, truncated, foreign],
                         ids=["garbage", "truncated", "foreign"])
def test_a_corrupt_ledger_is_kept_aside_and_a_new_one_begun(tmp_path, write_rules, daemon,
                                                            spoil):
    state = tmp_path / "state"
    first, watched, out = start_on(write_rules, daemon, tmp_path, state)
    make_files(watched, burst_names())  # a ledger of a few pages, what the rule saw
    wait_for(lambda: len(records(out)) == BURST)
    wait_for(lambda: not ledger_jobs(state))
    assert first.stop() == 0
    assert set(os.listdir(state)) == {"ledger.db", "lock"}, os.listdir(state)
    spoil(state / "ledger.db")
    spoiled = (state / "ledger.db").read_bytes()
    second = daemon(first.config)
    (line,) = log_lines(second, "the ledger is corrupt")
    assert " CRITICAL " in line and "a new ledger is begun" in line
    (aside,) = state.glob("ledger.db.corrupt-*")
    assert f"kept aside as {aside}" in line
    assert aside.read_bytes() == spoiled  # kept as it was
    make_files(watched, ["after"])
    wait_for(lambda: "after" in runs_by_name(out))
    wait_for(lambda: not ledger_jobs(state))
    assert "Traceback" not in second.log()


def test_watchd_jobs_on_a_corrupt_ledger_says_so_without_a_traceback(tmp_path, write_rules):
    config = one_rule(write_rules, tmp_path / "in", ["/bin/true"])
    (tmp_path / "state").mkdir()
    garbage(tmp_path / "state" / "ledger.db")
    for args in (("list",), ("retry", "--all"), ("drop", "1")):
        result = jobs_cli(config, *args)
        assert result.returncode == 1, result
        assert "cannot read the ledger" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_damaged_row_of_queued_jobs_is_said_and_skipped_and_the_rest_run(
        tmp_path, write_rules, daemon):
    # The start died on "ValueError: bad marshal data", and watchd jobs list with a traceback.
    first, config, out, gate = slow_then_burst(write_rules, daemon, tmp_path, stop_grace="0.2s")
    assert first.stop() == 0
    gate.touch()
    state = tmp_path / "state"
    with contextlib.closing(sqlite3.connect(state / "ledger.db")) as ledger, ledger:
        ledger.execute("INSERT INTO queued VALUES(1000, 1002, x'00ff00ff')")
    second = daemon(config)
    (line,) = log_lines(second, "the ledger is damaged")
    assert (" CRITICAL the ledger is damaged: the row of queued jobs 1000-1002 (3 not ended) "
            "cannot be read: bad marshal data (unknown type code). Those jobs are not run") in line
    wait_for(lambda: set(runs_by_name(out)) == {"slow", *burst_names()},
             what="every job the stop left run")
    assert second.stop() == 0
    assert all(len(runs_by_name(out)[name]) == 1 for name in burst_names())
    assert not list(state.glob("ledger.db.corrupt-*"))  # the rest of the ledger is kept
    listing = jobs_cli(config, "list")
    assert listing.returncode == 1 and listing.stdout.startswith("jobs: "), listing
    assert (f"watchd: the ledger {state / 'ledger.db'} is damaged: the row of queued jobs "
            "1000-1002 (3 not ended) cannot be read: bad marshal data (unknown type code); "
            "those jobs are not listed\n") == listing.stderr


def test_a_ledger_of_a_newer_watchd_refuses_the_start_and_is_left_as_it_is(
        tmp_path, write_rules, daemon):
    # A downgraded watchd wrote it as its own (its schema number lowered to none: "WHERE
    # value<?" only), beside columns and tables it does not know.
    state = tmp_path / "state"
    first, _, _ = start_on(write_rules, daemon, tmp_path, state)
    assert first.stop() == 0
    ledger = state / "ledger.db"
    with contextlib.closing(sqlite3.connect(ledger)) as newer, newer:
        newer.execute("UPDATE meta SET value=? WHERE key='schema'", (store.SCHEMA_VERSION + 1,))
        newer.execute("CREATE TABLE future(x)")
        kept = list(newer.iterdump())
    second = daemon(first.config, wait=False)
    assert second.process.wait(15) == 3
    assert (f" CRITICAL cannot start: the ledger {ledger} was made by a newer watchd (its "
            f"schema is {store.SCHEMA_VERSION + 1}, this version's {store.SCHEMA_VERSION}): it "
            "is left as it is. Install that version again, or move the file away to begin a "
            "new ledger (the jobs in it are then not run)\n") in second.log()
    assert "Traceback" not in second.log()
    with contextlib.closing(sqlite3.connect(ledger)) as newer:
        assert list(newer.iterdump()) == kept
    listing = jobs_cli(first.config, "list")
    assert listing.returncode == 1 and "was made by a newer watchd" in listing.stderr, listing


def test_dead_letters_past_the_bound_drop_the_oldest_and_say_so(tmp_path, write_rules, daemon):
    watched = tmp_path / "in"
    watched.mkdir()
    config = one_rule(write_rules, watched, ["/bin/false"], {"workers": 1, "dead_letters": 3})
    process = daemon(config)
    names = [f"f{index}" for index in range(5)]
    for name in names:
        make_files(watched, [name])
        process.wait_log(f"/in/{name} ")
    wait_for(lambda: process.log().count("job kept as a dead letter") == 5)
    state = tmp_path / "state"
    wait_for(lambda: [os.path.basename(job["path"]).decode() for job in ledger_jobs(state)]
             == names[2:], what="the three newest dead letters, alone")
    assert "oldest dead letter(s) dropped: settings.dead_letters keeps 3" in process.log()
    assert counters(process)["dead_letters_dropped"] == 2


def test_a_ledger_of_schema_1_is_upgraded_and_its_jobs_kept(tmp_path):
    """0.2's first ledgers had no batch column, nor a delivery's url, nor the roots each rule
    walked: opened, they get them, and their rows read."""
    file = tmp_path / "ledger.db"
    old = sqlite3.connect(file)
    roots = "CREATE TABLE IF NOT EXISTS roots(rule TEXT NOT NULL, path BLOB NOT NULL,\n    " \
        "PRIMARY KEY(rule, path)) WITHOUT ROWID;"
    assert roots in store._SCHEMA
    old.executescript(store._SCHEMA.replace(", stderr BLOB, batch BLOB)", ", stderr BLOB)")
                      .replace("dead INTEGER NOT NULL, url TEXT)", "dead INTEGER NOT NULL)")
                      .replace(roots, ""))
    old.execute("INSERT INTO deliveries(id, rule, action, event, path, body, created, attempts, "
                "dead) VALUES('msg_1', 'r', 1, 'close_write', x'2f61', x'7b7d', 0, 0, 0)")
    old.execute("INSERT INTO meta VALUES('schema', 1)")
    old.execute("INSERT INTO jobs(id, state, rule, root, path, event, is_dir, src_path, "
                "caught_up, step, tries, created, updated) VALUES(7, 'dead', 'r', x'2f', "
                "x'2f61', 'close_write', 0, x'', 0, 1, 1, 0, 0)")
    old.execute("INSERT INTO queued VALUES(8, 8, ?)", (store.pack([store.JobRow(
        8, "queued", "r", b"/", b"/b", "close_write", False, b"", False, 1, 0, 0.0, 0.0)]),))
    old.commit()
    old.close()
    connection = store.connect(file, create=True)
    rows = store.jobs(connection)
    assert [(row.id, row.path, row.batch) for row in rows] == [(7, b"/a", None), (8, b"/b", None)]
    assert connection.execute("SELECT value FROM meta WHERE key='schema'").fetchone()[0] == 4
    assert connection.execute("SELECT count(*) FROM roots").fetchone() == (0,)
    assert [delivery.url for delivery in Spool(tmp_path).load("r", 1)] == [None]


@contextlib.contextmanager
def running_ledger(state: Path) -> Iterator[Ledger]:
    """The daemon's ledger, its writer thread running, in this process."""
    ledger = Ledger(state, Counters())
    ledger.open()
    try:
        yield ledger
    finally:
        ledger.close(5)


def on_disk(state: Path, query: str) -> list[tuple]:
    """What another reader of the ledger finds (the writer's commits only)."""
    reader = store.connect(store.path_in(state), create=False)
    try:
        return reader.execute(query).fetchall()
    finally:
        reader.close()


def job_maker(tmp_path: Path, write_rules: Callable[[str], Path]) -> Callable[[str], Job]:
    """A job of a rule watching ``tmp_path``, for a file closed there, by its name."""
    config = write_rules(f"""\
        rules:
          - name: lone
            paths: [{tmp_path}]
            actions: [{{command: [/bin/true]}}]
        """)
    ruleset = compile_rules(load(config))

    def job(name: str) -> Job:
        event = FileEvent(os.fsencode(tmp_path / name), "close_write", 8, False, state=(1, 0, 0))
        return Job(ruleset.rules[0], ruleset.roots[0], event)

    return job


def test_a_job_the_queue_takes_is_written_with_nothing_else_asked(tmp_path, write_rules):
    """The ledger writes what is added only once woken for it, and the queue wakes it after
    the worker it woke (so that the worker has its turn first): a job queued alone is on disk
    without any other operation, flush or close to carry it."""
    job = job_maker(tmp_path, write_rules)
    with running_ledger(tmp_path / "state") as ledger:
        assert JobQueue(10, ledger=ledger).put(job("f"))
        wait_for(lambda: on_disk(tmp_path / "state", "SELECT first FROM queued"),
                 what="the job on disk")


@contextlib.contextmanager
def held_by_another(state: Path) -> Iterator[sqlite3.Connection]:
    """Another process's connection to the ledger, in a write transaction: the writer's next
    commit waits until this one commits (so that the writer is busy meanwhile)."""
    other = store.connect(store.path_in(state), create=False)
    try:
        other.execute("BEGIN IMMEDIATE")
        yield other
    finally:
        other.close()


def first_taken_alone(ledger: Ledger) -> None:
    """One operation, which the writer takes alone (its commit then waits for the other)."""
    ledger.caught_up("first", b"/")
    wait_for(lambda: ledger.stats()["ledger_pending"] == 0, what="the first taken")


def flushed_once_released(ledger: Ledger, other: sqlite3.Connection) -> None:
    """A flush asked while the writer is busy, then the database let go: once it returns."""
    flushing = threading.Thread(target=ledger.flush)
    flushing.start()
    other.execute("COMMIT")
    flushing.join()


def assert_the_next_job_is_written(ledger: Ledger, job: Callable[[str], Job],
                                   other: sqlite3.Connection) -> None:
    next_id = ledger.add(job("next"))
    ledger.write_added()
    ledger.wait_durable(next_id)
    assert other.execute("SELECT 1 FROM queued WHERE ? BETWEEN first AND last",
                         (next_id,)).fetchone(), "the next job is not on disk"


def test_a_wake_for_jobs_the_writer_already_took_leaves_the_next_job_written(
        tmp_path, write_rules):
    """The writer may take a job before the queue wakes it for that job (here: a flush takes
    it, while another process holds the database, so the writer is busy when the wake
    comes). That wake found nothing left to write, and it once left the writer marked as
    woken while it slept: the next job was not written, and its worker waited the longest
    and ran it from memory."""
    job, state = job_maker(tmp_path, write_rules), tmp_path / "state"
    with running_ledger(state) as ledger, held_by_another(state) as other:
        ledger.add(job("taken early"))
        flushing = threading.Thread(target=ledger.flush)
        flushing.start()
        wait_for(lambda: ledger.stats()["ledger_pending"] == 0, what="the job taken")
        ledger.write_added()  # the queue's wake, late: the writer is busy
        other.execute("COMMIT")
        flushing.join()
        assert_the_next_job_is_written(ledger, job, other)


def bury_a_job(ledger: Ledger, job: Job) -> None:
    job = dataclasses.replace(job, id=ledger.add(job))
    ledger.keep_dead(row_of(job, store.DEAD, Failure("/bin/false", "exit status 1", 1)))


def bury_a_delivery(ledger: Ledger, job: Job) -> None:
    Spool(ledger.file.parent, ledger).bury(
        Delivery("d1", "lone", 1, "close_write", job.event.path, b"{}", 0.0, attempts=3))


@pytest.mark.parametrize(("bury", "dead_letters"), [
    (bury_a_job, "SELECT count(*) FROM jobs WHERE state='dead'"),
    (bury_a_delivery, "SELECT count(*) FROM deliveries WHERE dead=1")], ids=["job", "delivery"])
def test_a_dead_letter_is_on_disk_before_its_log_line(tmp_path, write_rules, bury, dead_letters):
    """The log line of a dead letter tells an admin to look for it (``watchd jobs list``,
    ``watchd webhooks list``), and those read only what is on disk: keeping one returns once
    it is there. It once returned at once, and a list run on the log line could find none
    (another process holds the database here, so that the commit waits)."""
    job, state = job_maker(tmp_path, write_rules), tmp_path / "state"
    with running_ledger(state) as ledger, held_by_another(state) as other:
        burying = threading.Thread(target=bury, args=(ledger, job("dead.csv")))
        burying.start()
        wait_for(lambda: ledger.stats()["ledger_pending"] == 0, what="the dead letter taken")
        assert burying.is_alive(), "kept before it was on disk"
        other.execute("COMMIT")
        burying.join()
        assert other.execute(dead_letters).fetchone() == (1,)


def test_a_flush_waits_for_all_that_was_handed_before_it_in_more_than_one_batch(tmp_path):
    """A flush once waited only for the writer's next batch: with more pending than a batch
    takes (another process holds the database here, so that they pile up), it returned
    before the rest was on disk, and the next batch waited as lazily as any."""
    with running_ledger(tmp_path) as ledger, held_by_another(tmp_path) as other:
        first_taken_alone(ledger)
        for _ in range(BATCH_LIMIT):
            ledger.caught_up("filler", b"/")
        ledger.record_dir("r", b"/last", [(b"f", (1, 2, 3))], [])
        flushed_once_released(ledger, other)
        assert other.execute("SELECT path FROM dirs").fetchall() == [(b"/last",)]


def test_a_flush_while_the_writer_is_busy_with_the_last_batch_leaves_the_next_job_written(
        tmp_path, write_rules):
    """A flush asked while the writer committed the last of what was pending found nothing
    to wait for but the next batch, and its wake went unheard: the writer slept with the
    flush unanswered (it waited the longest) and marked as woken, so the next job's wake was
    skipped and the job was not written (another process holds the database here, so that
    the writer is busy when the flush comes)."""
    job, state = job_maker(tmp_path, write_rules), tmp_path / "state"
    with running_ledger(state) as ledger, held_by_another(state) as other:
        first_taken_alone(ledger)
        flushed_once_released(ledger, other)
        assert_the_next_job_is_written(ledger, job, other)


def test_a_directorys_records_version_changes_only_after_a_commit_that_changes_them(tmp_path):
    """What a poll trusts to skip reading a directory's records found unchanged before."""
    with running_ledger(tmp_path) as ledger:
        state = (1, 2, 3)
        ledger.record_dir("r", b"/a", [(b"f", state)], [])
        ledger.record_dir("r", b"/b", [(b"f", state)], [])
        ledger.flush()
        ids = dict(on_disk(tmp_path, "SELECT path, id FROM dirs"))
        a, b = ids[b"/a"], ids[b"/b"]
        first_a, first_b = ledger.records_version(a), ledger.records_version(b)
        for change in (lambda: ledger.record_dir("r", b"/a", [(b"g", state)], []),
                       lambda: ledger.record_dir("r", b"/a", [], [b"g"]),
                       lambda: ledger.forget_dir("r", b"/a")):
            before = ledger.records_version(a)
            change()
            ledger.flush()
            assert ledger.records_version(a) != before
        assert ledger.records_version(a) != first_a
        assert ledger.records_version(b) == first_b


# Past the records a commit upserts a row a step: the rest go in one statement, as JSON.
MORE_THAN_A_FEW = [b"more %d" % index for index in range(FEW_RECORDS)]


@pytest.mark.parametrize("names", [
    [b"plain", "ñ é \u2028 \U0001f600".encode(), b"new\nline", b"tab\t\"quote\" 'single' \\back",
     b"\x01\x1f\x7f", *MORE_THAN_A_FEW],
    [b"plain", "ñ \U0001f600".encode(), b"new\nline"],  # a few: row by row
    [b"plain", b"not utf-8 \xff\xfe", b"\xc3", *MORE_THAN_A_FEW],  # one not UTF-8: row by row
], ids=["utf-8 names", "a few names", "a name not utf-8"])
def test_records_keep_each_name_and_inode_exactly(tmp_path, names):
    """What a catch-up compares the tree with: the names' bytes, and inode numbers past 2**63
    (NFS file ids use all 64 bits), as written."""
    with running_ledger(tmp_path) as ledger:
        states = [((1 << 64) - 1 - index, index, -index) for index in range(len(names))]
        ledger.record_dir("r", b"/a", list(zip(names, states, strict=True)), [])
        ledger.flush()
        assert ledger.problem == ""
    found = store.records(on_disk(tmp_path, "SELECT name, ino, size, mtime FROM seen"))
    assert found == dict(zip(names, states, strict=True))
