"""Events that were wrong, found by another project's event tests and by an attack under load:
each reproduced with real inotify and the real daemon."""

from __future__ import annotations

import itertools
import os
import shutil
import signal
import subprocess
import sys
import threading

import pytest
from conftest import alive, env_of, recorder, records, wait_for
from test_events import fired, rule

from watchd.daemon import HANDLED_SIGNALS, Daemon

# -- 1. a directory's own delete_self / move_self say it is a directory ----------------------

@pytest.mark.parametrize("event", ["delete_self", "move_self"])
def test_a_directorys_self_events_say_it_is_a_directory(tmp_path, write_rules, daemon, event):
    watched, out = tmp_path / "t", tmp_path / "out.jsonl"
    (watched / "dir1" / "sub").mkdir(parents=True)
    daemon(write_rules("rules:\n" + rule("selves", [watched / "dir1"], out, [event],
                                         recursive="true", kind="any")))
    if event == "delete_self":
        shutil.rmtree(watched / "dir1")
    else:
        os.rename(watched / "dir1", tmp_path / "elsewhere")
    wait_for(lambda: records(out), what=f"the {event} action")
    assert {env_of(record)["WATCHD_IS_DIR"] for record in records(out)} == {b"1"}


# -- 2. the order of rules does not change what fires ---------------------------------------

def overlapping_rules(tree, out) -> dict[str, str]:
    return {
        "file": rule("file", [tree / "sub" / "f"], out),
        "dir": rule("dir", [tree / "sub"], out),
        "tree": rule("tree", [tree], out, recursive="true"),
    }


@pytest.mark.parametrize("order", [
    *itertools.permutations(["file", "tree"]),
    *itertools.permutations(["file", "dir", "tree"]),
], ids="-".join)
def test_the_order_of_overlapping_rules_does_not_change_what_fires(tmp_path, write_rules, daemon,
                                                                   order):
    tree, out = tmp_path / "tree", tmp_path / "out.jsonl"
    (tree / "sub").mkdir(parents=True)
    (tree / "sub" / "f").write_bytes(b"")
    texts = overlapping_rules(tree, out)
    daemon(write_rules("rules:\n" + "".join(texts[name] for name in order)))
    (tree / "sub" / "f").write_bytes(b"x")
    wait_for(lambda: {name for name, *_ in fired(out)} >= set(order),
             what=f"every rule of {order} firing")
    assert sorted(name for name, *_ in fired(out)) == sorted(order)


# -- 7. overflow rescans do not report the same new files again: tests/test_notifier.py -------


# -- 10. a second SIGTERM kills the running actions; run() gives its signals back ------------

@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_second_stop_signal_kills_the_running_actions_at_once(tmp_path, write_rules, daemon,
                                                               signum):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    process = daemon(write_rules(f"""\
        settings: {{stop_grace: 60s}}
        rules:
          - name: slow
            paths: [{watched}]
            actions: [{{command: {recorder(out)}, env: {{RECORD_SLEEP: "120"}}}}]
        """))
    (watched / "f").write_bytes(b"x")
    wait_for(lambda: records(out), what="the slow command running")
    pid = records(out)[0]["pid"]
    process.signal(signum)
    process.wait_log(f"stopping on {signal.Signals(signum).name}")
    process.signal(signum)
    assert process.process.wait(timeout=10) == 0  # far inside the 60 s grace
    name = signal.Signals(signum).name
    assert f"{name} again: killing the running actions now" in process.log()
    wait_for(lambda: not alive(pid), what="the command killed")


def test_run_gives_back_the_signal_handlers_and_wakeup_fd_it_took(tmp_path, write_rules):
    watched = tmp_path / "in"
    watched.mkdir()
    config = write_rules(f"rules:\n  - {{name: r, paths: [{watched}], actions: "
                         "[{command: [/bin/true]}]}\n")
    handlers = {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGTERM)).start()
    assert Daemon(config).run() == 0
    assert {signum: signal.getsignal(signum) for signum in HANDLED_SIGNALS} == handlers
    assert signal.set_wakeup_fd(wakeup) == wakeup


# -- 12. no traceback for a closed pipe --------------------------------------------------------

def test_a_closed_pipe_is_no_traceback(tmp_path, write_rules):
    config = write_rules("rules:\n" + "".join(
        f"  - {{name: r{i}, paths: [/tmp], actions: [{{command: [/bin/true]}}]}}\n"
        for i in range(2000)))
    piped = subprocess.run(f"{sys.executable} -m watchd check --config {config} | head -2",
                           shell=True, capture_output=True, text=True, check=True)
    assert len(piped.stdout.splitlines()) == 2
    assert piped.stderr == ""
