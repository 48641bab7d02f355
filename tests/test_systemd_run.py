"""The systemd_run action kind, as far as a machine without a booted systemd can show it: its
schema, its errors, what explain says, and the daemon's refusal. The runs themselves are tested
on a booted Debian 13 (tests/system)."""

from __future__ import annotations

import os
import shutil

import pytest

from watchd.config.loader import load
from watchd.service.cli import main

BOOTED_WITH_SYSTEMD = os.path.isdir("/run/systemd/system")
not_booted = pytest.mark.skipif(BOOTED_WITH_SYSTEMD, reason="this machine runs systemd")


def rule(properties: str = "MemoryMax: 64M", extra: str = "") -> str:
    return f"""\
        rules:
          - name: thumbs
            paths: [/srv/in]
            actions:
              - systemd_run:
                  command: [/bin/echo, "{{path}}"]
                  timeout: 5s
                  properties:
                    {properties}
        {extra}"""


@not_booted
def test_a_daemon_not_under_systemd_refuses_the_kind_at_load(write_rules, daemon):
    process = daemon(write_rules(rule()), wait=False)
    assert process.process.wait(30) == 78
    log = process.log()
    assert "invalid configuration; not starting" in log
    assert "rules.yaml:6:" in log and "rules[0].actions[0].systemd_run:" in log
    assert "systemd_run needs watchd to run under systemd" in log


@not_booted
def test_check_says_the_daemon_would_refuse_it_here(write_rules, capsys):
    assert main(["check", "--config", str(write_rules(rule()))]) == 1
    assert "systemd_run needs watchd to run under systemd" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
@pytest.mark.parametrize(("properties", "said"), [
    ("MemoryMaxx: 64M", "properties.MemoryMaxx: Unknown key 'MemoryMaxx' in section [Service]"),
    ("CPUQuota: lots", "properties.CPUQuota: Invalid CPU quota 'lots'"),
])
def test_properties_systemd_does_not_take_are_located_errors(write_rules, capsys, properties,
                                                             said):
    assert main(["check", "--config", str(write_rules(rule(properties)))]) == 1
    err = capsys.readouterr().err
    assert "rules.yaml:9:" in err and said in err


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_a_property_of_the_units_own_section_is_taken(write_rules, capsys):
    config = write_rules(rule("Description: thumbnails\n                    "
                              "MemoryMax: 64M"))
    main(["check", "--config", str(config)])
    assert "Unknown key" not in capsys.readouterr().err


def test_a_command_open_to_injection_is_warned_about_here_too(write_rules):
    config = write_rules(rule().replace('[/bin/echo, "{path}"]', '[/bin/sh, -c, "cat {path}"]'))
    warned = [str(problem) for problem in load(config).warnings if not problem.refused_by_daemon]
    assert len(warned) == 1 and "rules[0].actions[0].systemd_run.command[2]: " in warned[0]


@pytest.mark.parametrize(("properties", "said"), [
    ("User: nobody", "property 'User' is set by watchd itself: use the action's 'user'"),
    ("ExecStart: /bin/false", "use the action's 'command'"),
    ("memory-max: 1G", "invalid unit property name 'memory-max'"),
    ("Description: \"a\\nb\"", "cannot hold CR, LF or NUL"),
    ("ExecStartPre: /bin/true", "would run or read what watchd's trust check never sees"),
    ("EnvironmentFile: /etc/default/x", "would run or read what watchd's trust check"),
    ("Restart: always", "property 'Restart' is set by watchd itself"),
    ("ReadWritePaths: '/srv/out\\'", "cannot end with a backslash"),
    ("StandardOutput: journal\n                  log_output: true",
     "property 'StandardOutput' is set by watchd itself with log_output: true"),
])
def test_properties_watchd_sets_or_cannot_pass_are_errors(write_rules, capsys, properties, said):
    assert main(["check", "--config", str(write_rules(rule(properties)))]) == 1
    assert said in capsys.readouterr().err


def test_explain_shows_the_systemd_run_invocation(write_rules, capsys):
    config = write_rules(rule("MemoryMax: 64M\n                    ProtectSystem: strict\n"
                              "                    NoNewPrivileges: true"))
    assert main(["explain", "--config", str(config), "/srv/in/a b.jpg"]) == 0
    out = capsys.readouterr().out
    assert "systemd_run: " in out
    assert ("--wait --collect --service-type=exec --expand-environment=no "
            "--unit=watchd-thumbs-ID.service --property=TimeoutStopSec=2s "
            "--property=RuntimeMaxSec=19s") in out
    # Named only: the values come from the client's environment, never its command line.
    assert "--setenv=WATCHD_PATH --setenv=WATCHD_NAME" in out and "--setenv=WATCHD_PATH=" not in out
    assert "--property=MemoryMax=64M --property=ProtectSystem=strict" in out
    # YAML's boolean reaches systemd as systemd writes it.
    assert "--property=NoNewPrivileges=yes -- /bin/echo '/srv/in/a b.jpg'" in out


def test_the_schema_offers_the_kind(capsys):
    assert main(["schema"]) == 0
    assert "SystemdRunSettings" in capsys.readouterr().out


def test_an_action_of_no_kind_names_all_three(write_rules, capsys):
    config = write_rules("""\
        rules:
          - name: x
            paths: [/srv/in]
            actions:
              - systemd_runn: {command: [/bin/true]}
        """)
    assert main(["check", "--config", str(config)]) == 1
    err = capsys.readouterr().err
    assert "'command' (an argv list) or a 'webhook'" in err and "or a 'systemd_run'" in err
    assert "did you mean 'systemd_run'?" in err
