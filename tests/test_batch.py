"""Batch rules: one run of the actions for all the paths of a window, each path once, split by
``max`` and by what one argv can carry; a batch is one job in the ledger."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import PYTHON, argv_of, counters_line, env_of, recorder, records, wait_for

from watchd.actions.command import _inherited
from watchd.config.compile import read_rules
from watchd.core.argmax import ARG_MAX, environment_size, room_beside
from watchd.core.events import IN_CLOSE_WRITE, FileEvent
from watchd.core.job import Job
from watchd.core.rules import BatchSpec, Rule
from watchd.run.batches import Batcher
from watchd.run.lstat_helper import lstat_names
from watchd.run.lstats import Lstats


def batch_rule(write_rules, watched: Path, command: list[str], batch: dict | None = None,
               **keys: object) -> Path:
    action = {"command": command, **keys.pop("action", {})}
    rule = {"name": "sync", "paths": [str(watched)], "recursive": True,
            "batch": batch or {}, "actions": [action], **keys}
    return write_rules(json.dumps({"rules": [rule]}))


def runs(out: Path) -> list[dict]:
    """Each run's record (the lines RECORD_END adds left out)."""
    return [record for record in records(out) if "argv" in record]


def paths_of(out: Path) -> list[bytes]:
    return [path for record in runs(out) for path in argv_of(record)]


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_tar_of_210_files_is_one_run_with_each_path_once(tmp_path, write_rules, daemon):
    source, watched, out = tmp_path / "src", tmp_path / "in", tmp_path / "out.jsonl"
    for directory in range(7):
        (source / f"d{directory}").mkdir(parents=True)
        for index in range(30):
            (source / f"d{directory}" / f"f{index:02}").write_bytes(b"data")
    archive = tmp_path / "tree.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(source, arcname=".")
    watched.mkdir()
    daemon(batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "3s"}))
    subprocess.run(["tar", "xf", str(archive), "-C", str(watched)], check=True)
    expected = {os.fsencode(path) for path in watched.rglob("f*")}
    assert len(expected) == 210
    wait_for(lambda: expected <= set(paths_of(out)), what="every extracted file in a run")
    paths = paths_of(out)
    assert len(paths) == len(set(paths)), "a path came in two runs"
    # The window is the time a tar of 210 files takes, many times over: one run, maybe two.
    assert len(runs(out)) <= 2, [len(argv_of(record)) for record in runs(out)]
    for record in runs(out):
        env = env_of(record)
        assert env["WATCHD_COUNT"] == str(len(argv_of(record))).encode()
        assert "WATCHD_PATH" not in env and env["WATCHD_RULE"] == b"sync"


def test_two_files_changed_together_are_one_reload(tmp_path, write_rules, daemon):
    """The reload of a service whose two config files change at once: one run, not two."""
    watched, out = tmp_path / "service", tmp_path / "out.jsonl"
    watched.mkdir()
    config = write_rules(json.dumps({"rules": [{
        "name": "reload", "paths": [str(watched)], "batch": {"window": "1s"},
        "actions": [{"command": recorder(out, "reload", "{count}")}]}]}))
    daemon(config)
    (watched / "a.conf").write_bytes(b"a")
    (watched / "b.conf").write_bytes(b"b")
    wait_for(lambda: runs(out))
    (run,) = runs(out)
    assert argv_of(run) == [b"reload", b"2"]


def test_max_splits_a_batch_and_a_rule_runs_one_batch_at_a_time(tmp_path, write_rules,
                                                                 daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = batch_rule(write_rules, watched, recorder(out, "{paths}"), {"max": 10},
                        action={"env": {"RECORD_SLEEP": "0.3", "RECORD_END": "1"}})
    daemon(config)
    names = [f"f{index:02}" for index in range(25)]
    for name in names:
        (watched / name).write_bytes(b"x")
    expected = {os.fsencode(watched / name) for name in names}
    wait_for(lambda: set(paths_of(out)) == expected and len(records(out)) == 6,
             what="25 paths in three runs, each ended")
    assert sorted(len(argv_of(record)) for record in runs(out)) == [5, 10, 10]
    ended = {record["pid"]: record["ended"] for record in records(out) if "ended" in record}
    spans = sorted((record["started"], ended[record["pid"]]) for record in runs(out))
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert start >= end, f"two batches of one rule ran at once: {spans}"


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_batch_past_the_argv_limit_is_split_and_every_path_runs(tmp_path, write_rules,
                                                                  daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    daemon(batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "2s"}))
    stem = "n" * 200
    names = [f"{stem}{index:05}" for index in range(ARG_MAX // 250)]
    for name in names:
        (watched / name).write_bytes(b"")
    expected = {os.fsencode(watched / name) for name in names}
    wait_for(lambda: set(paths_of(out)) == expected, timeout=60,
             what="every path run, in more than one argv")
    assert len(runs(out)) >= 2
    assert len(paths_of(out)) == len(expected)


def test_stdin_paths_and_json(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = write_rules(json.dumps({"rules": [
        {"name": "nul", "paths": [str(watched)], "batch": {"window": "500ms"},
         "actions": [{"command": recorder(out, "nul"), "stdin": "paths",
                      "env": {"RECORD_STDIN": "1"}}]},
        {"name": "json", "paths": [str(watched)],
         "actions": [{"command": recorder(out, "json"), "stdin": "json",
                      "env": {"RECORD_STDIN": "1"}}]}]}))
    daemon(config)
    names = [b"a", b"b\xff", b"c d"]
    for name in names:
        (watched / os.fsdecode(name)).write_bytes(b"x")
    wait_for(lambda: len(runs(out)) == 4)
    by_rule: dict[bytes, list[bytes]] = {}
    for record in runs(out):
        by_rule.setdefault(argv_of(record)[0], []).append(bytes.fromhex(record["stdin"]))
    (nul,) = by_rule[b"nul"]
    assert sorted(nul.split(b"\0")[:-1]) == [os.fsencode(watched) + b"/" + n for n in names]
    assert nul.endswith(b"\0")
    documents = [json.loads(line) for data in by_rule[b"json"] for line in data.splitlines()]
    assert len(documents) == 3 and all(doc["event"] == "close_write" for doc in documents)
    weird = next(doc for doc in documents if "path_b64" in doc)
    assert weird["name"] == "b\\xff"


def test_a_webhook_gets_one_post_with_the_batch(tmp_path, write_rules, daemon, receiver):
    watched = tmp_path / "in"
    watched.mkdir()
    config = write_rules(json.dumps({"rules": [{
        "name": "hook", "paths": [str(watched)], "batch": {"window": "1s"},
        "actions": [{"webhook": {"url": f"{receiver.url}/batch"}}]}]}))
    daemon(config)
    for name in ("x", "y", "z"):
        (watched / name).write_bytes(b"1")
    wait_for(lambda: receiver.to("/batch"))
    (request,) = receiver.to("/batch")
    document = json.loads(request["body"])
    assert document["rule"] == "hook" and document["count"] == 3
    assert sorted(event["name"] for event in document["batch"]) == ["x", "y", "z"]
    assert document["root"] == str(watched) and "path" not in document


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_with_debounce_a_path_joins_the_batch_once_quiet(tmp_path, write_rules, daemon):
    """debounce holds each path until it has been quiet; the batch collects the quiet paths:
    a file written again and again is in the batch once, with its last event."""
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    daemon(batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "2s"},
                      debounce="300ms"))
    for index in range(5):
        (watched / "busy").write_bytes(str(index).encode())
    (watched / "once").write_bytes(b"1")
    wait_for(lambda: len(set(paths_of(out))) == 2)
    (run,) = runs(out)
    assert sorted(argv_of(run)) == [os.fsencode(watched / "busy"), os.fsencode(watched / "once")]


def test_a_batch_held_at_a_stop_runs_whole_at_the_next_start(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "1h"})
    process = daemon(config)
    for name in ("a", "b", "c"):
        (watched / name).write_bytes(b"x")
    wait_for(lambda: "batching=3" in counters_line(process), what="three paths in the batch")
    assert process.stop() == 0
    assert "1 job(s) wait in the ledger" in process.log()
    assert not runs(out)
    daemon(config)
    wait_for(lambda: runs(out))
    (run,) = runs(out)
    assert sorted(argv_of(run)) == [os.fsencode(watched / name) for name in ("a", "b", "c")]


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_batch_whose_rule_no_longer_batches_is_a_dead_letter_that_says_why(
        tmp_path, write_rules, daemon):
    # It ran under the rule's new {path} action: "action failed: internal error" (KeyError:
    # 'path'), a traceback in the log, and a dead letter that said only that.
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    batched = batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "1h"})
    process = daemon(batched)
    for name in ("a", "b"):
        (watched / name).write_bytes(b"x")
    wait_for(lambda: "batching=2" in counters_line(process), what="two paths in the batch")
    assert process.stop() == 0
    single = write_rules(json.dumps({"rules": [{
        "name": "sync", "paths": [str(watched)], "recursive": True,
        "actions": [{"command": recorder(out, "{path}")}]}]}))
    again = daemon(single)
    again.wait_log("job not run: rule 'sync' no longer batches")
    assert "internal error" not in again.log() and "Traceback" not in again.log()
    assert again.stop() == 0
    assert not runs(out)
    # Its batch given back (the same rules file, written again): it runs whole when retried.
    batched = batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "1h"})
    daemon(batched)
    retried = subprocess.run([*WATCHD, "jobs", "retry", "--all", "--config", str(batched)],
                             capture_output=True, text=True)
    assert retried.returncode == 0, retried.stdout + retried.stderr
    wait_for(lambda: runs(out), what="the batch's run")
    (run,) = runs(out)
    assert sorted(argv_of(run)) == [os.fsencode(watched / name) for name in ("a", "b")]


def test_a_reload_that_takes_batch_from_a_rule_runs_each_held_path_under_it(
        tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    process = daemon(batch_rule(write_rules, watched, recorder(out, "{paths}"),
                                {"window": "1h"}))
    for name in ("a", "b"):
        (watched / name).write_bytes(b"x")
    wait_for(lambda: "batching=2" in counters_line(process), what="two paths in the batch")
    write_rules(json.dumps({"rules": [{
        "name": "sync", "paths": [str(watched)], "recursive": True,
        "actions": [{"command": recorder(out, "{path}")}]}]}))
    process.signal(signal.SIGHUP)
    wait_for(lambda: len(runs(out)) == 2, what="a run for each path")
    assert sorted(argv_of(run) for run in runs(out)) == [
        [os.fsencode(watched / name)] for name in ("a", "b")]
    assert "internal error" not in process.log()


def test_a_batch_cut_short_by_kill_9_runs_again_whole_as_the_same_job(tmp_path, write_rules,
                                                                      daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "200ms"},
                        action={"env": {"RECORD_SLEEP": "30"}})
    process = daemon(config)
    for name in ("a", "b"):
        (watched / name).write_bytes(b"x")
    wait_for(lambda: runs(out))
    process.kill()
    config = batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "200ms"})
    daemon(config)
    wait_for(lambda: len(runs(out)) == 2)
    first, again = runs(out)
    assert sorted(argv_of(first)) == sorted(argv_of(again)) == [
        os.fsencode(watched / "a"), os.fsencode(watched / "b")]
    assert env_of(first)["WATCHD_JOB"] == env_of(again)["WATCHD_JOB"]


def test_a_failed_batch_is_retried_whole_then_kept_as_one_dead_letter(tmp_path, write_rules,
                                                                      daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "300ms"},
                        action={"retries": 1, "backoff": "50ms", "env": {"RECORD_EXIT": "3"}})
    process = daemon(config)
    for name in ("a", "b", "c"):
        (watched / name).write_bytes(b"x")
    process.wait_log("job kept as a dead letter")
    assert [len(argv_of(run)) for run in runs(out)] == [3, 3]
    listed = subprocess.run([*WATCHD, "jobs", "list", "--dead", "--json", "--config",
                             str(config)], capture_output=True, text=True, check=True)
    (dead,) = json.loads(listed.stdout)["jobs"]
    assert sorted(dead["batch"]) == [str(watched / name) for name in ("a", "b", "c")]
    assert dead["status"] == 3


WATCHD = [PYTHON, "-m", "watchd"]


def test_a_failed_batch_read_from_stdin_is_a_dead_letter_that_says_what_ran(
        tmp_path, write_rules, daemon):
    """The argv a dead letter shows abbreviates a batch's paths only where {paths} stands."""
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = batch_rule(write_rules, watched, recorder(out, "--from-stdin"), {"window": "300ms"},
                        action={"stdin": "paths", "env": {"RECORD_EXIT": "3"}})
    process = daemon(config)
    for name in ("a", "b", "c", "d", "e"):
        (watched / name).write_bytes(b"x")
    process.wait_log("job kept as a dead letter")
    assert "internal error" not in process.log()
    listed = subprocess.run([*WATCHD, "jobs", "list", "--dead", "--config", str(config)],
                            capture_output=True, text=True, check=True)
    assert "--from-stdin" in listed.stdout and "exited with status 3" in listed.stdout


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_the_recheck_takes_out_of_a_batch_the_paths_it_refuses(tmp_path, write_rules, daemon):
    """Each path of a batch is looked at before the run, in whichever directory it is: one
    swapped for a symlink and one gone leave the batch, with their reasons; the rest run."""
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    (watched / "sub").mkdir(parents=True)
    process = daemon(batch_rule(write_rules, watched, recorder(out, "{paths}"),
                                {"window": "2s"}))
    kept = [watched / "a", watched / "sub" / "c", watched / "z"]
    for path in (watched / "a", watched / "swapped", watched / "sub" / "c",
                 watched / "vanished", watched / "z"):
        path.write_bytes(b"x")
    (watched / "swapped").unlink()
    (watched / "swapped").symlink_to("/etc/shadow")
    (watched / "vanished").unlink()
    wait_for(lambda: runs(out))
    assert sorted(paths_of(out)) == sorted(os.fsencode(path) for path in kept)
    process.wait_log("action skipped: the path turned into a symlink before its action ran")
    process.wait_log("action skipped: the path vanished before its action ran")


def test_the_recheck_helper_answers_as_the_daemon_itself_would(tmp_path):
    """The helper process that looks at a batch's paths gives, for every kind of name, the
    answer the daemon's own ``lstat`` gives; so does a directory it cannot open."""
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "link").symlink_to("/etc/shadow")
    os.mkfifo(tmp_path / "fifo")
    names = [b"file", b"dir", b"link", b"fifo", b"missing", b"file"]
    lstats = Lstats()
    try:
        for directory in (tmp_path, tmp_path / "missing", tmp_path / "file"):
            here = os.fsencode(directory)
            assert lstats.lstat_names(here, names) == lstat_names(here, names)
        assert lstats.lstat_names(os.fsencode(tmp_path), [b"link"]) == [
            (0, os.lstat(tmp_path / "link").st_mode)]
    finally:
        lstats.close()


def test_a_recheck_helper_killed_costs_no_batch(tmp_path, write_rules, daemon):
    """kill -9 of the helper between two batches: the second still runs, each of its paths
    re-checked (by the daemon itself, which says so), and a symlink swapped in is refused."""
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    process = daemon(batch_rule(write_rules, watched, recorder(out, "{paths}"),
                                {"window": "300ms"}))
    (watched / "first").write_bytes(b"x")
    wait_for(lambda: runs(out), what="the first batch")
    helpers = [pid for pid in children(process.pid) if b"lstat_helper" in cmdline(pid)]
    assert len(helpers) == 1
    os.kill(helpers[0], signal.SIGKILL)
    for name in ("a", "b", "swapped"):
        (watched / name).write_bytes(b"x")
    (watched / "swapped").unlink()
    (watched / "swapped").symlink_to("/etc/shadow")
    wait_for(lambda: len(runs(out)) == 2, what="the second batch")
    assert sorted(argv_of(runs(out)[1])) == [os.fsencode(watched / name) for name in "ab"]
    process.wait_log("the batch re-check's helper process failed: it stopped answering")
    process.wait_log("action skipped: the path turned into a symlink before its action ran")


def children(pid: int) -> list[int]:
    return [int(child) for task in Path(f"/proc/{pid}/task").iterdir()
            for child in (task / "children").read_text().split()]


def cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def deep_directory(under: Path, length: int) -> Path:
    """A directory below ``under`` whose path is about ``length`` bytes long (a name is at
    most 255)."""
    directory = under
    while len(os.fsencode(directory)) < length:
        directory = directory / ("d" * 250)
    directory.mkdir(parents=True)
    return directory


def large_environment(size: int) -> dict[str, str]:
    """Variables of ``size`` bytes in all, none as long as one exec string may be."""
    chunk = 100_000
    return {f"BIG{index}": "x" * min(chunk, size - index * chunk)
            for index in range(-(-size // chunk))}


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_a_batch_with_a_large_environment_is_split_to_fit(tmp_path, write_rules, daemon):
    """1.08 MB of variables (the rule's and the daemon's), more than half of ARG_MAX, and a
    batch of more paths than the other half holds, one of them 3,000 bytes long: every path
    runs, in argvs that fit."""
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    deep = deep_directory(watched, 3000)
    config = batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "3s"},
                        action={"env": large_environment(600_000)})
    process = daemon(config, env={f"DAEMON{index}": "y" * 120_000 for index in range(4)})
    names = [f"{'n' * 200}{index:05}" for index in range(ARG_MAX // 2 // 250 + 200)]
    for name in names:
        (watched / name).write_bytes(b"")
    (deep / "long").write_bytes(b"")
    expected = {os.fsencode(watched / name) for name in names} | {os.fsencode(deep / "long")}
    wait_for(lambda: set(paths_of(out)) == expected or "Argument list too long" in process.log(),
             timeout=30, what="every path run")
    assert "Argument list too long" not in process.log()
    assert set(paths_of(out)) == expected and len(paths_of(out)) == len(expected)


def test_a_path_that_fits_in_no_argv_fails_alone(tmp_path, write_rules, daemon):
    """Variables that leave an argv room for about 1,500 bytes of paths: the short paths
    run, the 3,000-byte one is a failure of its own, once."""
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    deep = deep_directory(watched, 3000)
    # The daemon passes on this environment and its own variables; beside them and the
    # rule's (a rules file is at most 1 MiB), the recorder's argv and the WATCHD_* variables
    # take a few hundred bytes.
    daemon_environment = {f"DAEMON{index}": "y" * 120_000 for index in range(10)}
    inherited = environment_size(_inherited()) + environment_size(
        {os.fsencode(name): os.fsencode(value) for name, value in daemon_environment.items()})
    config = batch_rule(write_rules, watched, recorder(out, "{paths}"), {"window": "1s"},
                        action={"env": large_environment(room_beside(inherited) - 2000)})
    process = daemon(config, env=daemon_environment)
    short = [watched / f"f{index:02}" for index in range(20)]
    for path in short:
        path.write_bytes(b"")
    (deep / "long").write_bytes(b"")
    process.wait_log("job kept as a dead letter")
    assert sorted(paths_of(out)) == sorted(os.fsencode(path) for path in short)
    assert len(runs(out)) > 1  # 20 paths of 100 bytes do not fit in 1,500
    assert process.log().count("the path is too long for one exec") == 1
    assert "Argument list too long" not in process.log()


def test_a_window_past_what_a_wait_can_take_does_not_stop_other_batches(tmp_path,
                                                                        write_rules):
    """A window the rules refuse (3000000h), given to the batcher as if a rule had it: its
    thread, which releases every rule's batches, must not die of waiting that long."""
    watched = tmp_path / "in"
    watched.mkdir()
    rules = read_rules(batch_rule(write_rules, watched, ["/bin/true", "{paths}"],
                                  {"window": "100ms"}))
    (root,) = rules.roots
    (quick,) = root.rules
    endless = replace(quick, name="endless", batch=BatchSpec(window=3_000_000 * 3600.0, max=10))
    released: list[Job] = []
    batcher = Batcher(released.append, limit=100)

    def offer(rule: Rule, name: bytes) -> None:
        event = FileEvent(os.fsencode(watched) + name, "close_write", IN_CLOSE_WRITE, False)
        assert batcher.offer(Job(rule, root, event))

    offer(endless, b"/a")
    offer(quick, b"/b")
    wait_for(lambda: released, timeout=5, what="the 100ms window's first batch")
    # Released, the thread waits again: now for the endless window, the one deadline left.
    offer(quick, b"/c")
    wait_for(lambda: len(released) == 2, timeout=5, what="the 100ms window's second batch")
    assert [job.rule.name for job in released] == ["sync", "sync"]
    batcher.stop()
