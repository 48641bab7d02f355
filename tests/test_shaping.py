"""Event shaping, per rule, on a real daemon: debounce, max_parallel, on_busy, ignore_own_writes.

The commands record themselves (tests/recorder.py): when each started and, with RECORD_END,
when it ended, on CLOCK_MONOTONIC. "No further run" is shown without sleeping: with one
worker, jobs start in the order they were queued, so once a later file's action has run,
any run still due for an earlier path would have run before it.
"""

from __future__ import annotations

import os
import signal

import pytest
from conftest import env_of, recorder, records, wait_for


def rule(watched, out, *, settings: str = "", env: str = "", **keys: str) -> str:
    extra = "".join(f"\n    {key}: {value}" for key, value in keys.items())
    environment = f", env: {{{env}}}" if env else ""
    return f"""\
settings: {{stop_grace: 0s{settings}}}
rules:
  - name: shaped
    paths: [{watched}]
    events: [close_write]{extra}
    actions: [{{command: {recorder(out)}{environment}}}]
"""


def starts(out, name: str) -> list[dict]:
    return [r for r in records(out) if "env" in r and env_of(r)["WATCHD_NAME"] == name.encode()]


def test_debounce_fires_once_for_a_storm_of_writes(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    daemon(write_rules(rule(watched, out, settings=", workers: 1", debounce="300ms")))
    with open(watched / "saved", "wb") as file:
        for _ in range(1000):  # 1,000 writes, each closed: 1,000 close_write events
            file.write(b"x")
            file.flush()
            os.close(os.open(watched / "saved", os.O_WRONLY))
    (watched / "later").write_bytes(b"x")
    wait_for(lambda: starts(out, "later"))
    assert len(starts(out, "saved")) == 1


def test_max_parallel_bounds_a_rules_running_actions(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    daemon(write_rules(rule(watched, out, settings=", workers: 6", max_parallel="2",
                            env='RECORD_SLEEP: "0.3", RECORD_END: "1"')))
    for index in range(8):
        (watched / f"f{index}").write_bytes(b"x")
    wait_for(lambda: len([r for r in records(out) if "ended" in r]) == 8)
    spans = {r["pid"]: [r["started"], None] for r in records(out) if "started" in r}
    for r in records(out):
        if "ended" in r:
            spans[r["pid"]][1] = r["ended"]
    edges = sorted([(start, 1) for start, _ in spans.values()]
                   + [(end, -1) for _, end in spans.values()])
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    assert most == 2  # never more than two at once, and the limit was reached


@pytest.mark.parametrize(("on_busy", "runs", "skipped"), [("queue", 2, 0), ("skip", 1, 5)])
def test_on_busy_queue_runs_once_more_and_skip_drops(tmp_path, write_rules, daemon, on_busy,
                                                     runs, skipped):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    process = daemon(write_rules(rule(watched, out, settings=", workers: 1", on_busy=on_busy,
                                      env='RECORD_SLEEP: "0.5"')))
    (watched / "busy").write_bytes(b"1")
    wait_for(lambda: starts(out, "busy"))
    for index in range(5):  # all while the first run sleeps
        # Made anew each time: the kernel merges a close_write into the same one queued just
        # before it, and a reader slowed by a loaded machine then counted 4 skipped, not 5.
        (watched / "busy").unlink()
        (watched / "busy").write_bytes(str(index).encode())
    (watched / "later").write_bytes(b"x")
    wait_for(lambda: starts(out, "later"))
    assert len(starts(out, "busy")) == runs  # queue: exactly one more, however many came
    process.signal(signal.SIGUSR1)
    process.wait_log(f"skipped={skipped}")


def test_on_busy_restart_stops_the_run_and_starts_again(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    process = daemon(write_rules(rule(watched, out, settings=", workers: 2", on_busy="restart",
                                      env='RECORD_SLEEP: "1", RECORD_END: "1"')))
    (watched / "busy").write_bytes(b"1")
    wait_for(lambda: starts(out, "busy"))
    (watched / "busy").write_bytes(b"2")
    wait_for(lambda: len([r for r in records(out) if "ended" in r]) == 1, timeout=10)
    _, second = starts(out, "busy")
    ended = [r["pid"] for r in records(out) if "ended" in r]
    assert ended == [second["pid"]]  # the first never finished its sleep: it was stopped
    process.wait_log("action restarted: a newer event came for its path")
    assert "action failed" not in process.log()


def test_ignore_own_writes_stops_an_action_from_triggering_itself(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = write_rules(f"""\
settings: {{workers: 1}}
rules:
  - name: stamp
    paths: [{watched}]
    ignore_own_writes: true
    actions:
      - command: {recorder(out)}
      - command: [/bin/sh, -c, 'echo stamped >> "$1"', sh, "{{path}}"]
""")
    daemon(config)
    (watched / "doc").write_bytes(b"text\n")
    wait_for(lambda: (watched / "doc").read_bytes().endswith(b"stamped\n"))
    (watched / "later").write_bytes(b"x")
    wait_for(lambda: starts(out, "later"))
    assert len(starts(out, "doc")) == 1
