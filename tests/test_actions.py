"""Command actions: environment, failure reporting, timeouts that kill the whole group, users."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from conftest import RECORDER, alive, env_of, recorder, records, wait_for, zombie_children

SYSTEM_PYTHON = "/usr/bin/python3"


def one_rule(watched, command, **action_keys) -> str:
    extra = "".join(f", {key}: {value}" for key, value in action_keys.items())
    return f"""\
        rules:
          - name: act
            paths: [{watched}]
            actions: [{{command: {command}{extra}}}]
        """


def test_environment_of_a_command(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = write_rules(one_rule(watched, recorder(out), env="{MODE: prod}", cwd=tmp_path))
    daemon(config, env={"NOTIFY_SOCKET": "/run/nowhere", "WATCHDOG_USEC": "1000000"})
    (watched / "f").write_bytes(b"x")
    wait_for(lambda: records(out))
    record = records(out)[0]
    assert env_of(record) == {
        "WATCHD_PATH": os.fsencode(watched / "f"),
        "WATCHD_NAME": b"f",
        "WATCHD_DIR": os.fsencode(watched),
        "WATCHD_ROOT": os.fsencode(watched),
        "WATCHD_EVENT": b"close_write",
        "WATCHD_RULE": b"act",
        "WATCHD_SRC_PATH": b"",
        "WATCHD_IS_DIR": b"0",
        "WATCHD_JOB": b"1",
        "WATCHD_TRY": b"1",
        "WATCHD_CAUGHT_UP": b"0",
        "MODE": b"prod",
        **{key: value for key, value in env_of(record).items() if key in ("HOME", "USER")},
    }
    assert record["cwd"] == str(tmp_path)


def test_a_failure_is_logged_with_status_and_stderr_and_stops_the_chain(
    tmp_path, write_rules, daemon
):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    config = write_rules(f"""\
        rules:
          - name: chain
            paths: [{watched}]
            actions:
              - command: {recorder(out, "first")}
                env: {{RECORD_EXIT: "3", RECORD_STDERR: "disk on fire"}}
              - command: {recorder(out, "second")}
        """)
    process = daemon(config)
    (watched / "f").write_bytes(b"x")
    process.wait_log("action failed")
    line = next(ln for ln in process.log().splitlines() if "action failed" in ln)
    assert "ERROR action failed: exited with status 3; 1 later action(s) skipped" in line
    assert "rule=chain" in line and "exit_status=3" in line and 'stderr="disk on fire"' in line
    assert len(records(out)) == 1


def test_a_command_writing_megabytes_is_not_held_up_and_its_stderr_tail_is_kept(
        tmp_path, write_rules, daemon):
    # stdout goes to /dev/null and stderr is drained as it comes: a chatty command never
    # blocks on a full pipe (that would look like a hang, then a timeout).
    watched = tmp_path / "in"
    watched.mkdir()
    script = ("head -c 4000000 /dev/zero; head -c 4000000 /dev/zero | tr -c x x >&2; "
              "echo last-words >&2; exit 4")
    process = daemon(write_rules(one_rule(watched, ["/bin/sh", "-c", script], timeout="60s")))
    (watched / "f").write_bytes(b"x")
    process.wait_log("action failed")
    line = next(ln for ln in process.log().splitlines() if "action failed" in ln)
    assert "exited with status" in line and "exit_status=4" in line
    assert " stderr=xxxx" in line and line.endswith("x" * 400 + "last-words")


# The shell's descriptors, then its signal mask and ignored signals, read with builtins only:
# a child reading them could catch the shell with every signal blocked around its own fork.
SHOW_FDS_AND_SIGNALS = ('exec > "$1.part"; ls /proc/$$/fd; while read -r key value; do '
                        'case $key in SigBlk:|SigIgn:) echo "$key $value";; esac; '
                        'done < /proc/$$/status; mv "$1.part" "$1"')


def test_a_command_inherits_no_descriptor_and_starts_with_default_signals(
        tmp_path, write_rules, daemon):
    # The daemon starts holding fd 9 open, and Python ignores SIGPIPE and SIGXFSZ in it.
    watched, shown = tmp_path / "in", tmp_path / "shown.txt"
    watched.mkdir()
    config = write_rules(one_rule(watched, ["/bin/sh", "-c", SHOW_FDS_AND_SIGNALS, "sh",
                                            str(shown)]))
    process = daemon(config, launcher=("/bin/sh", "-c", 'exec 9</dev/null; exec "$@"', "sh"))
    (watched / "f").write_bytes(b"x")
    wait_for(shown.exists)
    words = shown.read_text().split()
    assert words[:3] == ["0", "1", "2"]
    signals = dict(zip(words[3::2], words[4::2], strict=True))
    assert int(signals["SigBlk:"], 16) == 0
    # What the daemon was itself started with ignored stays so (systemd starts it with nothing
    # ignored; a CI runner may not); what Python ignores in it is back at the default.
    python_ignores = 1 << (signal.SIGPIPE - 1) | 1 << (signal.SIGXFSZ - 1)
    daemon_ignored = int(status_of(process.pid)["SigIgn"], 16)
    assert daemon_ignored & python_ignores == python_ignores
    assert int(signals["SigIgn:"], 16) == daemon_ignored & ~python_ignores


def status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def test_a_program_gone_since_the_rules_loaded_is_a_failure(tmp_path, write_rules, daemon):
    watched, program = tmp_path / "in", tmp_path / "program"
    watched.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    process = daemon(write_rules(one_rule(watched, [str(program)])))
    program.unlink()  # checked and accepted at load; gone when the event comes
    (watched / "f").write_bytes(b"x")
    # Its trust is checked before every run, and a program that is not there cannot be.
    process.wait_log(f"action failed: not run: program {program}: No such file or directory")


@pytest.mark.slow  # seconds: make test runs it, make check does not
def test_timeout_kills_the_whole_group_even_when_it_ignores_sigterm(tmp_path, write_rules, daemon):
    watched, pids = tmp_path / "in", tmp_path / "pids"
    watched.mkdir()
    script = f"trap '' TERM; (trap '' TERM; exec sleep 300) & echo $$ $! > {pids}; wait"
    process = daemon(write_rules(one_rule(watched, ["/bin/sh", "-c", script], timeout="500ms")))
    (watched / "f").write_bytes(b"x")
    wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    shell, child = (int(pid) for pid in pids.read_text().split())
    assert alive(shell) and alive(child)
    process.wait_log("timed out after 0.5s; process group killed")
    assert not alive(shell) and not alive(child)
    assert zombie_children(process.pid) == []


def test_what_a_command_leaves_running_is_killed_when_it_exits(tmp_path, write_rules, daemon):
    watched, pids = tmp_path / "in", tmp_path / "pids"
    watched.mkdir()
    script = f"sleep 300 </dev/null >/dev/null 2>&1 & echo $! > {pids}"
    process = daemon(write_rules(one_rule(watched, ["/bin/sh", "-c", script])))
    (watched / "f").write_bytes(b"x")
    process.wait_log("action ok")
    orphan = int(pids.read_text())
    wait_for(lambda: not alive(orphan), what="the left-behind sleep to be killed")


def test_many_short_commands_leave_no_zombies(tmp_path, write_rules, daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    process = daemon(write_rules(one_rule(watched, recorder(out))))
    for index in range(30):
        (watched / str(index)).write_bytes(b"x")
    wait_for(lambda: len(records(out)) == 30)
    process.wait_log("action ok", count=30)
    assert zombie_children(process.pid) == []


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
@pytest.mark.skipif(not os.access(SYSTEM_PYTHON, os.X_OK), reason=f"no {SYSTEM_PYTHON}")
def test_user_runs_as_that_user_with_its_groups(tmp_path, write_rules, daemon):
    watched = tmp_path / "in"
    watched.mkdir()
    # pytest's temporary directories (and maybe this checkout) are private to root: nobody
    # runs the system's python on a copy of the recorder, and records, in a directory of its own.
    shared = Path(tempfile.mkdtemp(prefix="watchd-test-"))
    shared.chmod(0o777)
    out = shared / "out.jsonl"
    shutil.copy(RECORDER, shared / "recorder.py")
    (shared / "recorder.py").chmod(0o644)
    command = [SYSTEM_PYTHON, "-I", "-S", str(shared / "recorder.py"), str(out)]
    nobody = pwd.getpwnam("nobody")
    daemon(write_rules(one_rule(watched, command, user="nobody")))
    (watched / "f").write_bytes(b"x")
    wait_for(lambda: records(out))
    record = records(out)[0]
    assert (record["uid"], record["gid"]) == (nobody.pw_uid, nobody.pw_gid)
    assert sorted(record["groups"]) == sorted(os.getgrouplist("nobody", nobody.pw_gid))
    env = env_of(record)
    assert env["USER"] == b"nobody" and env["HOME"] == os.fsencode(nobody.pw_dir)
    shutil.rmtree(shared)


def test_stop_lets_a_running_action_finish(tmp_path, write_rules, daemon):
    watched, done = tmp_path / "in", tmp_path / "done"
    watched.mkdir()
    script = f"sleep 1; echo finished > {done}"
    process = daemon(write_rules(one_rule(watched, ["/bin/sh", "-c", script])))
    (watched / "f").write_bytes(b"x")
    # The script itself, with this test's own path: a stray "sleep 1…" elsewhere is not it.
    wait_for(lambda: script in " ".join(_children_cmdlines(process.pid)))
    assert process.stop() == 0
    assert done.read_text() == "finished\n"


def test_stop_kills_an_action_past_the_grace_period(tmp_path, write_rules, daemon):
    watched, pids = tmp_path / "in", tmp_path / "pids"
    watched.mkdir()
    script = f"trap '' TERM; echo $$ > {pids}; sleep 300"
    config = write_rules(one_rule(watched, ["/bin/sh", "-c", script]))
    config.write_text("settings: {stop_grace: 1s}\n" + config.read_text())
    process = daemon(config)
    (watched / "f").write_bytes(b"x")
    wait_for(lambda: pids.exists() and pids.read_text().strip())
    shell = int(pids.read_text())
    started = time.monotonic()
    assert process.stop() == 0
    assert time.monotonic() - started < 8
    assert not alive(shell)


def _children_cmdlines(pid: int) -> list[str]:
    lines = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                lines.append(cmdline.read().replace(b"\0", b" ").decode(errors="replace"))
        except OSError:
            continue
    return lines
