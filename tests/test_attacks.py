"""A local user who can write a watched directory attacks the root daemon, for real.

Each test makes a real user (``useradd``) and does as that user what an attacker would:
symlinks and FIFOs moved into a drop box, a watched root swapped for a symlink, a program
handed over after the rules loaded. The daemon is the real one, run as root.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import alive, as_user, counters_line, env_of, recorder, records, wait_for

from watchd.service.cli import main

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="attacks need root and real users")
pytestmark = ROOT_ONLY


def drop_box(shared_dir: Path, user) -> tuple[Path, Path]:
    """A drop box the user owns, and a staging directory of theirs outside it."""
    drop, staging = shared_dir / "drop", shared_dir / "staging"
    for directory in (drop, staging):
        directory.mkdir()
        os.chown(directory, user.pw_uid, user.pw_gid)
    return drop, staging


def paths_acted_on(out: Path) -> list[bytes]:
    return [env_of(record)["WATCHD_PATH"] for record in records(out)]


# -- 1. symlinks moved into a drop box ------------------------------------------------------

@pytest.mark.parametrize("kind", [None, "file", "[file, dir]"])
def test_a_symlink_moved_into_a_drop_box_never_reaches_a_root_action(
        shared_dir, write_rules, daemon, user, kind):
    drop, staging = drop_box(shared_dir, user)
    out = shared_dir / "out.jsonl"
    process = daemon(write_rules(f"""\
        settings: {{workers: 1}}
        rules:
          - name: hash
            paths: [{drop}]
            {f"kind: {kind}" if kind else ""}
            actions: [{{command: {recorder(out)}}}]
        """))
    as_user(user, "; ".join(f"ln -s /etc/shadow {staging}/x{i}; mv {staging}/x{i} "
                            f"{drop}/report{i}.txt" for i in range(20)))
    # The same name once more: refused again, but said once per path.
    as_user(user, f"ln -s /etc/shadow {staging}/again; mv -f {staging}/again {drop}/report0.txt; "
                  f"echo real > {drop}/real.txt")
    wait_for(lambda: records(out), what="the regular file's action")
    assert paths_acted_on(out) == [os.fsencode(drop / "real.txt")]
    # Each refusal is counted, then said: the lines are written by the time a later one is.
    wait_for(lambda: "refused_by_kind=21" in counters_line(process), what="every refusal")
    refusals = [line for line in process.log().splitlines() if "not acted on:" in line]
    assert len(refusals) == 20
    assert all("the path is a symlink and the rule takes only kind: file" in line
               and "rule=hash" in line for line in refusals)


def test_a_symlink_reaches_an_action_when_the_rule_names_it(shared_dir, write_rules, daemon,
                                                            user):
    drop, staging = drop_box(shared_dir, user)
    out = shared_dir / "out.jsonl"
    daemon(write_rules(f"""\
        rules:
          - name: links
            paths: [{drop}]
            kind: [symlink]
            actions: [{{command: {recorder(out)}}}]
        """))
    as_user(user, f"ln -s /etc/hostname {staging}/x; mv {staging}/x {drop}/link")
    wait_for(lambda: records(out))
    assert paths_acted_on(out) == [os.fsencode(drop / "link")]


def test_kind_any_takes_every_kind(tmp_path, write_rules, capsys):
    config = write_rules(f"""\
        rules:
          - {{name: r, paths: [{tmp_path}], kind: any, actions: [{{command: [/bin/true]}}]}}
        """)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["explain", str(fifo), "--config", str(config)]) == 0
    assert f"{fifo} (a FIFO)" in capsys.readouterr().out


def test_explain_says_what_the_path_is_and_which_kind_refuses_it(tmp_path, write_rules, capsys):
    config = write_rules(f"""\
        rules:
          - {{name: r, paths: [{tmp_path}], actions: [{{command: [/bin/true]}}]}}
        """)
    (tmp_path / "link").symlink_to("/etc/shadow")
    assert main(["explain", str(tmp_path / "link"), "--config", str(config)]) == 0
    shown = capsys.readouterr().out
    assert f"{tmp_path}/link (a symlink)" in shown
    assert "does not fire: it takes only kind: file, dir" in shown
    assert main(["explain", str(tmp_path / "missing"), "--config", str(config)]) == 0
    assert "(does not exist; taken as a file)" in capsys.readouterr().out


# -- 2. FIFOs, sockets and devices cannot hold the workers ----------------------------------

def test_fifos_sockets_and_devices_moved_in_hold_no_worker(shared_dir, write_rules, daemon,
                                                           user):
    drop, staging = drop_box(shared_dir, user)
    other, out = shared_dir / "other", shared_dir / "out.jsonl"
    other.mkdir()
    process = daemon(write_rules(f"""\
        settings: {{workers: 4}}
        rules:
          - name: ingest
            paths: [{drop}]
            actions:
              - command: [/bin/sh, -c, 'cat -- "$1" > /dev/null', sh, "{{path}}"]
                timeout: 60s
          - name: other
            paths: [{other}]
            actions: [{{command: {recorder(out)}}}]
        """))
    as_user(user, "; ".join(f"mkfifo {staging}/f{i}; mv {staging}/f{i} {drop}/f{i}"
                            for i in range(4)))
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(str(staging / "sock"))
        os.rename(staging / "sock", drop / "sock")
    os.mknod(staging / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.rename(staging / "null", drop / "null")
    (other / "f").write_bytes(b"x")
    # Far inside the FIFO command's 60 s: no worker is stuck on a FIFO.
    wait_for(lambda: records(out), timeout=10, what="the other rule's action")
    process.wait_log("not acted on:", 6)
    log = process.log()
    assert log.count("the path is a FIFO and the rule takes only kind: file, dir") == 4
    assert "the path is a socket and" in log and "the path is a character device and" in log
    assert "action ok rule=ingest" not in log


# -- 3. a watched root swapped for a symlink ------------------------------------------------

def test_check_refuses_a_watched_path_through_a_symlink_a_user_owns(shared_dir, tmp_path,
                                                                    write_rules, user, capsys):
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    base = shared_dir / "base"
    base.mkdir()
    os.chown(base, user.pw_uid, user.pw_gid)
    as_user(user, f"ln -s {private} {base}/drop")
    config = write_rules(f"""\
        rules:
          - name: r
            paths: [/tmp, {base}/drop/sub]
            actions: [{{command: [/bin/true]}}]
        """)
    assert main(["check", "--config", str(config)]) == 1
    errors = capsys.readouterr().err
    assert (f"{config}:3:19: rules[0].paths[1]: symlink {base}/drop is owned by uid "
            f"{user.pw_uid}, not by root; watchd will not follow it") in errors


def test_a_root_swapped_for_a_users_symlink_is_never_followed(
        shared_dir, tmp_path, write_rules, daemon, user, notify_socket):
    private, base = tmp_path / "private", shared_dir / "base"
    private.mkdir(mode=0o700)
    base.mkdir()
    os.chown(base, user.pw_uid, user.pw_gid)
    drop, out = base / "drop", shared_dir / "out.jsonl"
    as_user(user, f"mkdir {drop}")
    config = write_rules(f"""\
        settings: {{workers: 1}}
        rules:
          - name: hash
            paths: [{drop}]
            actions: [{{command: {recorder(out)}}}]
        """)
    process = daemon(config, env=notify_socket.env())
    as_user(user, f"echo a > {drop}/a")
    wait_for(lambda: records(out))
    as_user(user, f"mv {drop} {base}/drop.old; ln -s {private} {drop}")
    process.wait_log("a watched path now leads through an untrusted symlink: not followed")
    wait_for(lambda: any("DEGRADED: not following" in m.get("STATUS", "")
                         for m in notify_socket.messages()), what="DEGRADED in STATUS=")
    (private / "secret1").write_bytes(b"x")
    process.signal(signal.SIGHUP)
    process.wait_log("INFO reloaded")
    assert f"not watched: {config}:4:13: rules[0].paths[0]: symlink {drop}" in process.log()
    (private / "secret2").write_bytes(b"x")
    # A real directory again, without a reload: watched again.
    as_user(user, f"rm {drop}; mkdir {drop}")
    process.wait_log("a watched path no longer leads through an untrusted symlink")
    as_user(user, f"echo b > {drop}/b")
    wait_for(lambda: len(records(out)) >= 2, what="the action for the new real directory")
    assert paths_acted_on(out) == [os.fsencode(drop / "a"), os.fsencode(drop / "b")]


def test_a_symlink_made_where_a_watched_path_was_missing_is_not_followed(
        shared_dir, tmp_path, write_rules, daemon, user):
    private, base = tmp_path / "private", shared_dir / "base"
    (private / "in").mkdir(parents=True, mode=0o700)
    (private / "in" / "old").write_bytes(b"secret")
    base.mkdir()
    os.chown(base, user.pw_uid, user.pw_gid)
    out = shared_dir / "out.jsonl"
    process = daemon(write_rules(f"""\
        rules:
          - name: hash
            paths: [{base}/q/in]
            events: [create, close_write]
            actions: [{{command: {recorder(out)}}}]
        """))
    as_user(user, f"ln -s {private} {base}/q")
    process.wait_log("a watched path now leads through an untrusted symlink: not followed")
    (private / "in" / "new").write_bytes(b"x")
    as_user(user, f"rm {base}/q; mkdir -p {base}/q/in; echo x > {base}/q/in/mine")
    wait_for(lambda: os.fsencode(base / "q" / "in" / "mine") in paths_acted_on(out),
             what="the action for the real directory")
    assert all(b"private" not in path and not path.endswith((b"/old", b"/new"))
               for path in paths_acted_on(out))


def test_a_directory_on_a_watched_path_swapped_for_a_symlink_is_not_followed(
        shared_dir, tmp_path, write_rules, daemon, user):
    private, base = tmp_path / "private", shared_dir / "base"
    (private / "in").mkdir(parents=True, mode=0o700)
    base.mkdir()
    os.chown(base, user.pw_uid, user.pw_gid)
    as_user(user, f"mkdir -p {base}/a/in")
    out = shared_dir / "out.jsonl"
    process = daemon(write_rules(f"""\
        rules:
          - {{name: hash, paths: [{base}/a/in], actions: [{{command: {recorder(out)}}}]}}
        """))
    as_user(user, f"mv {base}/a {base}/a.old; ln -s {private} {base}/a")
    process.wait_log("a watched path now leads through an untrusted symlink: not followed")
    (private / "in" / "secret").write_bytes(b"x")
    as_user(user, f"echo x > {base}/a.old/in/moved")  # no longer at the watched path
    as_user(user, f"rm {base}/a; mkdir -p {base}/a/in; echo x > {base}/a/in/mine")
    wait_for(lambda: os.fsencode(base / "a" / "in" / "mine") in paths_acted_on(out),
             what="the action for the real directory")
    assert paths_acted_on(out) == [os.fsencode(base / "a" / "in" / "mine")]


def test_a_trusted_symlink_root_is_followed_again_when_swapped(shared_dir, write_rules, daemon):
    app, out = shared_dir / "app", shared_dir / "out.jsonl"
    for release in ("1", "2"):
        (app / "releases" / release).mkdir(parents=True)
    (app / "current").symlink_to("releases/1")
    daemon(write_rules(f"""\
        settings: {{workers: 1}}
        rules:
          - name: deploy
            paths: [{app}/current]
            actions: [{{command: {recorder(out)}}}]
        """))
    (app / "releases" / "1" / "a").write_bytes(b"x")
    wait_for(lambda: records(out))
    (app / "current.new").symlink_to("releases/2")
    subprocess.run(["mv", "-T", app / "current.new", app / "current"], check=True)
    released = app / "releases" / "2" / "b"
    wait_for(lambda: released.write_bytes(b"x") and os.fsencode(released) in paths_acted_on(out),
             what="an action in the new release")
    (app / "releases" / "1" / "c").write_bytes(b"x")  # the old release is no longer watched
    (app / "releases" / "2" / "d").write_bytes(b"x")
    wait_for(lambda: os.fsencode(app / "releases" / "2" / "d") in paths_acted_on(out))
    assert os.fsencode(app / "releases" / "1" / "c") not in paths_acted_on(out)


# -- 4. a program handed to a user after the rules loaded ------------------------------------

def test_a_program_handed_to_a_user_after_the_load_is_not_run(shared_dir, write_rules, daemon,
                                                              user, notify_socket):
    watched, program = shared_dir / "in", shared_dir / "bin" / "hook"
    ran, pwned = shared_dir / "ran", shared_dir / "PWNED"
    watched.mkdir()
    program.parent.mkdir()
    program.write_text(f"#!/bin/sh\necho ran >> {ran}\n")
    program.chmod(0o755)
    process = daemon(write_rules(f"""\
        settings: {{workers: 1}}
        rules:
          - {{name: hook, paths: [{watched}], actions: [{{command: [{program}]}}]}}
        """), env=notify_socket.env())
    (watched / "1").write_bytes(b"x")
    wait_for(ran.exists)
    os.chown(program, user.pw_uid, user.pw_gid)
    as_user(user, f"printf '#!/bin/sh\\ntouch {pwned}\\n' > {program}")
    (watched / "2").write_bytes(b"x")
    process.wait_log(f"action failed: not run: program {program} is owned by uid {user.pw_uid}")
    assert not pwned.exists()
    wait_for(lambda: any("DEGRADED: programs refused at their last run" in m.get("STATUS", "")
                         for m in notify_socket.messages()), what="the program in STATUS=")
    assert "programs_untrusted=1" in counters_line(process)
    # Back in root's hands: run again at the next event, no reload needed.
    os.chown(program, 0, 0)
    program.write_text(f"#!/bin/sh\necho again >> {ran}\n")
    (watched / "3").write_bytes(b"x")
    wait_for(lambda: "again" in ran.read_text())
    assert not pwned.exists()


# -- 5. rules files and secrets that are hard links ------------------------------------------

@pytest.mark.parametrize("which", ["main", "drop-in", "secret"])
def test_a_hard_linked_rules_file_or_secret_is_refused_unread(tmp_path, capsys, which):
    etc = tmp_path / "etc"
    (etc / "rules.d").mkdir(parents=True)
    foreign = tmp_path / "foreign"
    foreign.write_text("whsec_" + "A" * 44 + "\nshadow-like: line of another file\n")
    foreign.chmod(0o600)
    config, secret = etc / "rules.yaml", etc / "hook.secret"
    rules = ("rules:\n  - name: r\n    paths: [/tmp]\n    actions:\n      - webhook: "
             f"{{url: 'http://127.0.0.1:9/', secret_file: {secret}}}\n")
    linked = {"main": config, "drop-in": etc / "rules.d" / "10-x.yaml", "secret": secret}[which]
    os.link(foreign, linked)
    if which != "main":
        config.write_text(rules)
    if which != "secret":
        secret.write_text("whsec_" + "B" * 44 + "\n")
        secret.chmod(0o600)
    assert main(["check", "--config", str(config)]) == 1
    errors = capsys.readouterr().err
    assert f"{linked} has 2 hard links" in errors
    assert "line of another file" not in errors


# -- 6. rules open to injection ------------------------------------------------------------

INJECTABLE = """\
    rules:
      - name: count
        paths: [{watched}]
        actions:
          - command: [/bin/sh, -c, "wc -l {{path}}"]
          - command: [/usr/bin/sort, "{{path}}", "|", /usr/bin/head]
    """


def test_check_warns_about_commands_open_to_injection(tmp_path, write_rules, daemon, capsys):
    watched = tmp_path / "in"
    watched.mkdir()
    config = write_rules(INJECTABLE.format(watched=watched))
    assert main(["check", "--config", str(config)]) == 0
    warned = capsys.readouterr().err
    assert (f"{config}:5:32: warning: rules[0].actions[0].command[2]: {{path}} inside the "
            "script of 'sh -c' is run as shell code") in warned
    assert """[/bin/sh, -c, 'wc -l -- "$1"', sh, "{path}"]""" in warned
    assert f"{config}:6:44: warning: rules[0].actions[1].command[2]: '|' is passed" in warned
    assert main(["check", "--strict", "--config", str(config)]) == 1
    assert "2 warning(s), errors with --strict" in capsys.readouterr().err
    process = daemon(config)
    assert process.log().count("WARNING rules: ") == 2
    process.signal(signal.SIGHUP)
    process.wait_log("INFO reloaded")
    assert process.log().count("WARNING rules: ") == 4


# -- 7. a program the rule's user cannot execute ----------------------------------------------

def test_check_refuses_a_program_the_rules_user_cannot_execute(tmp_path, write_rules, user,
                                                               capsys):
    hidden = tmp_path / "hidden"  # pytest's own directories are root's, mode 0700
    hidden.mkdir(mode=0o700)
    program = hidden / "prog"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    config = write_rules(f"""\
        rules:
          - name: r
            paths: [/tmp]
            actions:
              - command: [{program}]
                user: {user.pw_name}
        """)
    assert main(["check", "--config", str(config)]) == 1
    errors = capsys.readouterr().err
    assert (f"{config}:5:9: rules[0].actions[0]: user {user.pw_name} cannot search "
            "directory") in errors
    assert f"user {user.pw_name!r} cannot run {program}" in errors


def test_a_command_that_cannot_start_says_why_in_words(shared_dir, write_rules, daemon, user):
    watched, tools = shared_dir / "in", shared_dir / "tools"
    watched.mkdir()
    tools.mkdir()
    program = tools / "prog"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    process = daemon(write_rules(f"""\
        rules:
          - name: r
            paths: [{watched}]
            actions: [{{command: [{program}], user: {user.pw_name}}}]
        """))
    tools.chmod(0o700)  # still root's, still trusted; the user can no longer reach it
    (watched / "f").write_bytes(b"x")
    process.wait_log(f"action failed: cannot start {program}: Permission denied")
    assert "b'" not in process.log()


# -- 8. what a command may leave running -----------------------------------------------------

# The detached job closes the pipe the command substitution reads only after setsid(): once
# the substitution returns, the job is out of the group that is killed when the command ends.
DETACH = (": \"$(setsid sh -c 'echo $$ >> {pids}; exec sleep 1000 </dev/null >/dev/null 2>&1'"
          " &)\"")


def test_the_documented_way_to_leave_something_running_always_works(tmp_path, write_rules,
                                                                      daemon):
    watched, pids = tmp_path / "in", tmp_path / "pids"
    watched.mkdir()
    process = daemon(write_rules(f"""\
        settings: {{workers: 4}}
        rules:
          - name: spawn
            paths: [{watched}]
            actions: [{{command: [/bin/sh, -c, {json.dumps(DETACH.format(pids=pids))}]}}]
        """))
    try:
        for i in range(20):
            (watched / str(i)).write_bytes(b"x")
        process.wait_log("action ok", 20)
        survivors = [int(pid) for pid in pids.read_text().split()]
        # The group was killed when each action ended, before its "action ok" line.
        assert len(survivors) == 20
        assert all(alive(pid) for pid in survivors)
    finally:
        for pid in pids.read_text().split() if pids.exists() else ():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)


def test_a_background_child_in_the_group_ends_with_its_action(tmp_path, write_rules, daemon):
    watched, pids = tmp_path / "in", tmp_path / "pids"
    watched.mkdir()
    script = f"sleep 1000 & echo $! > {pids}"
    process = daemon(write_rules(f"""\
        rules:
          - {{name: bg, paths: [{watched}], actions: [{{command: [/bin/sh, -c, "{script}"]}}]}}
        """))
    (watched / "f").write_bytes(b"x")
    process.wait_log("action ok")
    pid = int(pids.read_text())
    wait_for(lambda: not alive(pid), what="the background child killed with its group")


# -- 9. a symlink planted in a state directory another user can write -----------------------

@pytest.mark.parametrize("name", ["ledger.db", "ledger.db-wal"])
def test_a_symlink_planted_as_the_ledger_is_kept_aside_never_followed(
        shared_dir, write_rules, daemon, user, name):
    # SQLite followed it, and the ledger's chmod 0600 (or its WAL) changed what it led to.
    state, watched, out = shared_dir / "state", shared_dir / "in", shared_dir / "out.jsonl"
    watched.mkdir()
    config = write_rules(json.dumps({"settings": {"state_dir": str(state)}, "rules": [
        {"name": "job", "paths": [str(watched)], "actions": [{"command": recorder(out)}]}]}))
    assert daemon(config).stop() == 0
    os.chown(state, user.pw_uid, user.pw_gid)
    victim = shared_dir / "victim.db"  # root's database, which any user may read
    with contextlib.closing(sqlite3.connect(victim)) as database:
        database.execute("CREATE TABLE kept(x)")
    victim.chmod(0o644)
    victim_bytes = victim.read_bytes()
    as_user(user, f"ln -sf {victim} {state}/{name}")
    process = daemon(config)
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644
    assert victim.read_bytes() == victim_bytes
    (line,) = [line for line in process.log().splitlines() if "the ledger is corrupt" in line]
    assert (f" CRITICAL the ledger is corrupt ({state}/{name} is a symbolic link, not a "
            "ledger: it is not followed): kept aside as ") in line
    (aside,) = state.glob(f"ledger.db.corrupt-*{name.removeprefix('ledger.db')}")
    assert aside.is_symlink() and not (state / name).is_symlink()
    (watched / "after").write_bytes(b"x")
    wait_for(lambda: records(out), what="a file acted on, on the new ledger")
    assert "Traceback" not in process.log()
