"""A root command runner users can trust: what it runs, as whom, on which file, from which YAML."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from conftest import COMMAND_PYTHON, RECORDER, argv_of, env_of, recorder, records, wait_for

from watchd.config.loader import load
from watchd.core.problems import ConfigError
from watchd.service.cli import main

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="ownership and users need root")


def good_rules(program: str = "/bin/true") -> str:
    return f"rules:\n  - name: r\n    paths: [/tmp]\n    actions:\n      - command: [{program}]\n"


def check(config: Path, capsys) -> str:
    assert main(["check", "--config", str(config)]) == 1
    return capsys.readouterr().err


# -- config trust --------------------------------------------------------------------------

@ROOT_ONLY
@pytest.mark.parametrize(("spoil", "fragment"), [
    (lambda config: config.chmod(0o666), "rules file {config} is writable by group or others "
                                         "(mode 0666): chmod go-w"),
    (lambda config: config.chmod(0o620), "writable by group or others (mode 0620)"),
    (lambda config: os.chown(config, 65534, -1), "rules file {config} is owned by uid 65534"),
    (lambda config: config.parent.chmod(0o777), "directory {config.parent} is writable by group "
                                                "or others (mode 0777)"),
    (lambda config: os.chown(config.parent, 65534, -1), "directory {config.parent} is owned by "
                                                        "uid 65534"),
], ids=["world-writable", "group-writable", "not-root-owned", "open-directory",
        "directory-not-root-owned"])
def test_a_rules_file_others_could_write_is_refused(tmp_path, capsys, spoil, fragment):
    config = tmp_path / "etc" / "rules.yaml"
    config.parent.mkdir()
    config.write_text(good_rules())
    spoil(config)
    assert fragment.format(config=config) in check(config, capsys)


@ROOT_ONLY
def test_a_sticky_directory_like_tmp_is_accepted(tmp_path):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    (shared / "rules.yaml").write_text(good_rules())
    assert [rule.model.name for rule in load(shared / "rules.yaml").rules] == ["r"]


@ROOT_ONLY
def test_a_rules_file_through_a_symlink_is_refused(tmp_path, capsys):
    real = tmp_path / "real.yaml"
    real.write_text(good_rules())
    (tmp_path / "rules.yaml").symlink_to(real)
    assert "is a symlink; name the file itself" in check(tmp_path / "rules.yaml", capsys)


@ROOT_ONLY
def test_a_drop_in_others_could_write_is_refused_with_its_path(tmp_path, capsys):
    config = tmp_path / "rules.yaml"
    config.write_text(good_rules())
    (tmp_path / "rules.d").mkdir()
    drop_in = tmp_path / "rules.d" / "10-x.yaml"
    drop_in.write_text("rules: []\n")
    drop_in.chmod(0o646)
    assert f"{drop_in}:1:1: rules file {drop_in} is writable by group or others" in check(
        config, capsys)


@ROOT_ONLY
@pytest.mark.parametrize(("make", "fragment"), [
    (lambda p: (p.write_text("#!/bin/sh\n"), p.chmod(0o775)), "program {p} is writable by group"),
    (lambda p: (p.write_text("#!/bin/sh\n"), p.chmod(0o755), os.chown(p, 65534, -1)),
     "program {p} is owned by uid 65534"),
    (lambda p: (p.write_text("#!/bin/sh\n"), p.chmod(0o644)), "program {p} is not executable"),
    (lambda p: p.mkdir(), "program {p} is not a regular file"),
    (lambda p: None, "program {p}: No such file or directory"),
    (lambda p: (p.symlink_to("/bin/true"), os.lchown(p, 65534, -1)),
     "symlink {p} is owned by uid 65534"),
    (lambda p: (p.parent.chmod(0o757), p.write_text("#!/bin/sh\n"), p.chmod(0o755)),
     "directory {p.parent} is writable by group or others"),
], ids=["group-writable", "not-root-owned", "not-executable", "directory", "missing",
        "symlink-not-root-owned", "open-directory"])
def test_a_program_others_could_replace_is_refused(tmp_path, capsys, make, fragment):
    program = tmp_path / "bin" / "program"
    program.parent.mkdir()
    make(program)
    config = tmp_path / "rules.yaml"
    config.write_text(good_rules(str(program)))
    errors = check(config, capsys)
    assert f"{config}:5:18: rules[0].actions[0].command: " in errors
    assert fragment.format(p=program) in errors


@ROOT_ONLY
def test_a_program_reached_through_trusted_symlinks_is_accepted(tmp_path):
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "true").symlink_to("/bin/true")  # and /bin -> usr/bin on merged /usr
    config = tmp_path / "rules.yaml"
    config.write_text(good_rules(str(tmp_path / "bin" / "true")))
    assert load(config).rules


@ROOT_ONLY
def test_each_action_naming_an_untrusted_program_gets_its_error_in_the_rules_and_drop_ins(
        tmp_path, capsys):
    # Programs are checked once per load; one found untrusted is not taken as checked.
    program = tmp_path / "bin" / "program"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o775)
    config = tmp_path / "rules.yaml"
    config.write_text("rules:\n  - name: r\n    paths: [/tmp]\n    actions:\n"
                      f"      - command: [/bin/true]\n      - command: [{program}]\n"
                      f"      - command: [{program}, again]\n")
    (tmp_path / "rules.d").mkdir()
    drop_in = tmp_path / "rules.d" / "10-x.yaml"
    drop_in.write_text(f"rules:\n  - name: d\n    paths: [/tmp]\n    actions:\n"
                       f"      - command: [/bin/true]\n      - command: [{program}]\n")
    errors = check(config, capsys)
    assert f"{config}:6:18: rules[0].actions[1].command: " in errors
    assert f"{config}:7:18: rules[0].actions[2].command: " in errors
    assert f"{drop_in}:6:18: rules[0].actions[1].command: " in errors
    assert errors.count(f"program {program} is writable by group") == 3


@ROOT_ONLY
def test_a_secret_file_not_owned_by_root_is_refused(tmp_path, capsys):
    secret = tmp_path / "hook.secret"
    secret.write_text("whsec_" + "A" * 44 + "\n")
    secret.chmod(0o600)
    os.chown(secret, 65534, -1)
    config = tmp_path / "rules.yaml"
    config.write_text("rules:\n  - name: r\n    paths: [/tmp]\n    actions:\n      - webhook: "
                      f"{{url: 'http://127.0.0.1:9/', secret_file: {secret}}}\n")
    assert f"secret file {secret} is owned by uid 65534" in check(config, capsys)


def test_every_violation_is_reported_at_once(tmp_path, capsys):
    config = tmp_path / "rules.yaml"
    config.write_text("rules:\n" + "".join(
        f"  - name: r{i}\n    paths: [/tmp]\n    actions: [{{command: [/no/such/{i}]}}]\n"
        for i in range(3)))
    errors = check(config, capsys)
    assert all(f"program /no/such/{i}: No such file or directory" in errors for i in range(3))
    assert "3 error(s): nothing applied" in errors


# -- hostile YAML --------------------------------------------------------------------------

def refused_quickly(tmp_path: Path, text: str | bytes) -> str:
    config = tmp_path / "rules.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(ConfigError) as refused:
        load(config)
    # A safety bound, not a benchmark: refusing must not take a parse of the whole bomb.
    assert time.monotonic() - started < 2.0
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB
    return str(refused.value)


def test_a_billion_laughs_is_refused_at_its_first_anchor(tmp_path):
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    lines += [f"{chr(98 + i)}: &{chr(98 + i)} [" + ",".join([f"*{chr(97 + i)}"] * 9) + "]"
              for i in range(8)]
    message = refused_quickly(tmp_path, "\n".join(lines) + "\nrules: []\n")
    assert "rules.yaml:1:4: YAML anchors (&name) are not allowed" in message


def test_an_alias_is_refused(tmp_path):
    assert "YAML aliases (*name) are not allowed" in refused_quickly(
        tmp_path, "rules:\n  - *x\n")


def test_deep_nesting_is_refused(tmp_path):
    message = refused_quickly(tmp_path, "rules: " + "[" * 200_000)
    # watchd's own limit, or libyaml's where its scanner, reading ahead, meets its own first.
    assert "nested deeper than 32 levels" in message or "maximum nesting depth" in message
    assert "rules.yaml:1:" in message


def test_a_file_over_one_mebibyte_is_refused_unread(tmp_path):
    message = refused_quickly(tmp_path, "# " + "x" * (1024 * 1024) + "\n")
    assert "larger than 1048576 bytes" in message


def test_python_tags_are_refused(tmp_path):
    message = refused_quickly(tmp_path, "rules: !!python/object/apply:os.system [id]\n")
    assert "rules.yaml:1:8: YAML: could not determine a constructor" in message


# -- privileges and the file the event is about ---------------------------------------------

def owner_rules(watched: Path, out: Path, extra: str = "") -> str:
    # The command runs as another user: a copy of the recorder, beside ``out``, that they can read.
    copy = out.with_name("recorder.py")
    shutil.copy(RECORDER, copy)
    copy.chmod(0o644)
    command = [COMMAND_PYTHON, "-I", "-S", str(copy), str(out)]
    return f"""\
        settings: {{workers: 1}}
        rules:
          - name: owned
            paths: [{watched}]
            events: [create, close_write]  # a hard link made in place is only a create
            actions:
              - command: {command}
                user: "@owner"{extra}
        """


@ROOT_ONLY
def test_owner_runs_as_the_files_owner(shared_dir, write_rules, daemon, user):
    watched, out = shared_dir / "in", shared_dir / "out.jsonl"
    watched.mkdir()
    os.chown(watched, user.pw_uid, user.pw_gid)
    out.touch(mode=0o666)
    out.chmod(0o666)
    daemon(write_rules(owner_rules(watched, out)))
    subprocess.run(["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}",
                    "--init-groups", "sh", "-c", f"echo x > {watched}/mine"], check=True)
    wait_for(lambda: records(out))
    record = records(out)[0]
    assert record["uid"] == user.pw_uid and record["gid"] == user.pw_gid
    env = env_of(record)
    assert env["USER"] == user.pw_name.encode() and env["HOME"] == user.pw_dir.encode()


@ROOT_ONLY
def test_owner_refuses_root_owned_files_unless_allowed(shared_dir, write_rules, daemon):
    watched, out = shared_dir / "in", shared_dir / "out.jsonl"
    watched.mkdir()
    process = daemon(write_rules(owner_rules(watched, out)))
    (watched / "roots").write_bytes(b"x")
    process.wait_log("action skipped: the file is owned by root")
    assert not records(out)
    process.stop()
    allowed = daemon(write_rules(owner_rules(watched, out, "\n                allow_root_owner: "
                                                           "true")))
    (watched / "roots").write_bytes(b"y")
    wait_for(lambda: records(out))
    assert records(out)[0]["uid"] == 0
    allowed.stop()


@ROOT_ONLY
def test_owner_refuses_a_hard_link_to_someone_elses_file(shared_dir, write_rules, daemon, user):
    watched, out, theirs = shared_dir / "in", shared_dir / "out.jsonl", shared_dir / "theirs"
    watched.mkdir()
    theirs.write_bytes(b"secret of the user")
    os.chown(theirs, user.pw_uid, user.pw_gid)
    process = daemon(write_rules(owner_rules(watched, out)))
    os.link(theirs, watched / "link")  # the directory is root's; the file is the user's
    process.wait_log("action skipped: the file has 2 hard links and its owner")
    assert not records(out)


@ROOT_ONLY
def test_a_file_swapped_for_a_symlink_before_its_action_is_skipped(tmp_path, write_rules,
                                                                   daemon):
    watched, out = tmp_path / "in", tmp_path / "out.jsonl"
    watched.mkdir()
    process = daemon(write_rules(f"""\
        settings: {{workers: 1}}
        rules:
          - name: slow
            paths: [{watched}]
            include: [first]
            actions: [{{command: {recorder(out)}, env: {{RECORD_SLEEP: "1"}}}}]
          - name: target
            paths: [{watched}]
            exclude: [first]
            actions: [{{command: {recorder(out)}}}]
        """))
    (watched / "first").write_bytes(b"x")  # keeps the one worker busy for a second
    wait_for(lambda: records(out))
    (watched / "swapped").write_bytes(b"x")
    (watched / "vanished").write_bytes(b"x")
    (watched / "swapped").unlink()
    (watched / "swapped").symlink_to("/etc/shadow")
    (watched / "vanished").unlink()
    process.wait_log("action skipped: the path turned into a symlink before its action ran")
    process.wait_log("action skipped: the path vanished before its action ran")
    assert len(records(out)) == 1  # only "first" ran


@pytest.mark.slow  # seconds: make test runs it, make check does not
@ROOT_ONLY
@pytest.mark.parametrize("shape", ["one path", "a batch"])
def test_a_directory_swapped_for_a_symlink_before_the_action_is_refused(
        tmp_path, write_rules, daemon, shape):
    """in/sub/shadow written, then sub swapped for a symlink to a directory that holds a
    shadow of its own: the re-check's lstat of in/sub/shadow followed sub, found a regular
    file there, and the root command was handed the other directory's file."""
    watched, out, elsewhere = tmp_path / "in", tmp_path / "out.jsonl", tmp_path / "elsewhere"
    (watched / "sub").mkdir(parents=True)
    elsewhere.mkdir()
    (elsewhere / "shadow").write_bytes(b"not the user's")
    held = ("debounce: 1s" if shape == "one path" else "batch: {window: 1s}")
    process = daemon(write_rules(f"""\
        rules:
          - name: drop
            paths: [{watched}]
            recursive: true
            {held}
            actions: [{{command: {recorder(out, "{paths}")}}}]
        """))
    (watched / "sub" / "shadow").write_bytes(b"mine")
    (watched / "sub").rename(watched / "sub.old")
    (watched / "sub").symlink_to(elsewhere)
    process.wait_log("action skipped: a directory on the path turned into a symlink before its "
                     "action ran")
    (watched / "after").write_bytes(b"a run after it")

    def handed() -> list[bytes]:
        return [b"\0".join(argv_of(record)) for record in records(out)]

    wait_for(lambda: any(b"after" in values for values in handed()),
             what="the run for the file written after")
    assert not any(b"shadow" in values for values in handed()), handed()
