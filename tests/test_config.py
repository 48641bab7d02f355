"""The rules loader: every bad input is refused whole, with file:line:column and a clear message."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from watchd.config.loader import drop_in_files, load
from watchd.core.events import IN_CLOSE_WRITE, IN_CREATE, IN_MOVED_FROM, IN_MOVED_TO, event_mask
from watchd.core.placeholders import parse_template, render
from watchd.core.problems import ConfigError
from watchd.schema.fields import parse_duration
from watchd.service.cli import main

REPO = Path(__file__).resolve().parent.parent

GOOD_RULE = """\
rules:
  - name: good
    paths: [/tmp]
    actions:
      - command: [/bin/true]
"""

# (YAML, line, column, a fragment of the message)
BAD_FILES = [
    pytest.param("rules: [\n", 2, 1, "YAML:", id="yaml-syntax"),
    pytest.param("- a\n- b\n", 1, 1, "must be a mapping", id="not-a-mapping"),
    pytest.param("bogus: 1\n" + GOOD_RULE, 1, 1, "unknown key 'bogus'", id="unknown-top-key"),
    pytest.param("version: 2\n" + GOOD_RULE, 1, 10, "version", id="unknown-version"),
    pytest.param("settings:\n  workerz: 4\n" + GOOD_RULE, 2, 3, "unknown key 'workerz'",
                 id="unknown-settings-key"),
    pytest.param("settings:\n  workers: four\n" + GOOD_RULE, 2, 12, "settings.workers",
                 id="wrong-type"),
    pytest.param("settings:\n  workers: 0\n" + GOOD_RULE, 2, 12, "greater than or equal to 1",
                 id="out-of-range"),
    pytest.param("settings:\n  log_level: loud\n" + GOOD_RULE, 2, 14, "log_level",
                 id="bad-log-level"),
    pytest.param("settings:\n  metrics:\n    listen: ':9478'\n" + GOOD_RULE, 3, 13,
                 "is not host:port (for example 127.0.0.1:9478)", id="metrics-listen-no-host"),
    pytest.param("settings:\n  metrics:\n    listen: localhost:99999\n" + GOOD_RULE, 3, 13,
                 "is not host:port", id="metrics-listen-bad-port"),
    pytest.param("settings:\n  metrics:\n    textfile: /var/lib/x/watchd.txt\n" + GOOD_RULE, 3,
                 15, "only files whose names end in .prom", id="metrics-textfile-not-prom"),
    pytest.param("settings:\n  metrics:\n    listen: 127.0.0.1:9478\n    bogus: 1\n"
                 + GOOD_RULE, 4, 5, "unknown key 'bogus'", id="metrics-unknown-key"),
    pytest.param(GOOD_RULE + "    colour: red\n", 6, 5, "unknown key 'colour'",
                 id="unknown-rule-key"),
    pytest.param(GOOD_RULE + "        shell: true\n", 6, 9, "unknown key 'shell'",
                 id="unknown-action-key"),
    pytest.param("rules:\n  - name: x\n    actions: [{command: [/bin/true]}]\n", 2, 5,
                 "missing required key 'paths'", id="missing-paths"),
    pytest.param("rules:\n  - paths: [/tmp]\n    actions: [{command: [/bin/true]}]\n", 2, 5,
                 "missing required key 'name'", id="missing-name"),
    pytest.param("rules:\n  - name: x\n    paths: [/tmp]\n", 2, 5,
                 "missing required key 'actions'", id="missing-actions"),
    pytest.param("rules:\n  - name: x\n    paths: [/tmp]\n    actions: []\n", 4, 14,
                 "at least 1 item", id="no-actions"),
    pytest.param(GOOD_RULE.replace("name: good", "name: 'a b'"), 2, 11, "should match pattern",
                 id="bad-name"),
    pytest.param(GOOD_RULE.replace("[/tmp]", "[tmp/in]"), 3, 13, "path must be absolute",
                 id="relative-path"),
    pytest.param(GOOD_RULE.replace("[/tmp]", "[/tmp]\n    events: [close_write, changed]"), 4, 27,
                 "unknown event 'changed'", id="unknown-event"),
    pytest.param(GOOD_RULE.replace("[/bin/true]", "[/bin/echo, '{file}']"), 5, 30,
                 "unknown placeholder '{file}'", id="unknown-placeholder"),
    pytest.param(GOOD_RULE.replace("[/bin/true]", "[/bin/echo, 'a}b']"), 5, 30,
                 "unmatched '}'", id="unmatched-brace"),
    pytest.param(GOOD_RULE.replace("[/bin/true]", "[echo]"), 5, 18,
                 "command[0] must be an absolute path", id="relative-program"),
    pytest.param(GOOD_RULE + "        timeout: soon\n", 6, 18, "invalid duration 'soon'",
                 id="bad-duration"),
    pytest.param(GOOD_RULE + "        timeout: -5\n", 6, 18, "cannot be negative",
                 id="negative-duration"),
    pytest.param(GOOD_RULE + "        user: no-such-user-here\n", 6, 15, "no such user",
                 id="unknown-user"),
    pytest.param(GOOD_RULE + "        env: {WATCHD_PATH: x}\n", 6, 15, "set by watchd itself",
                 id="reserved-env"),
    pytest.param(GOOD_RULE + "        cwd: relative\n", 6, 14, "path must be absolute",
                 id="relative-cwd"),
    pytest.param(GOOD_RULE + "    recursive: 'yes'\n", 6, 16, "valid boolean",
                 id="string-for-bool"),
    pytest.param(GOOD_RULE + "    include: []\n", 6, 14, "at least 1 item", id="empty-include"),
    pytest.param(GOOD_RULE + "    kind: socket\n", 6, 11, "kind", id="bad-kind"),
    pytest.param(GOOD_RULE + "    debounce: later\n", 6, 15, "invalid duration 'later'",
                 id="bad-debounce"),
    pytest.param(GOOD_RULE + "    max_parallel: 0\n", 6, 19, "greater than or equal to 1",
                 id="zero-max-parallel"),
    pytest.param(GOOD_RULE + "    on_busy: wait\n", 6, 14, "'queue', 'skip' or 'restart'",
                 id="bad-on-busy"),
    pytest.param(GOOD_RULE + "    ignore_own_writes: 1\n", 6, 24, "valid boolean",
                 id="non-bool-ignore-own-writes"),
    pytest.param(GOOD_RULE + "      - webhook: {url: 'ftp://x/'}\n", 6, 24,
                 "must be http:// or https://", id="webhook-scheme"),
    pytest.param(GOOD_RULE + "      - webhook: {url: 'https://u:pw@h/'}\n", 6, 24,
                 "must not hold credentials", id="webhook-credentials"),
    pytest.param(GOOD_RULE + "      - webhook: {url: 'http://h/', retry: 3}\n", 6, 37,
                 "unknown key 'retry'", id="webhook-unknown-key"),
    pytest.param(GOOD_RULE + "      - webhook: {url: 'http://h/', headers: {webhook-id: x}}\n",
                 6, 47, "is set by watchd itself", id="webhook-own-header"),
    pytest.param(GOOD_RULE + "      - webhook: {url: 'http://h/', headers: {X-A: \"a\\nb\"}}\n",
                 6, 52, "cannot hold CR, LF or NUL", id="webhook-header-newline"),
    pytest.param(GOOD_RULE + "      - webhook: {url: 'http://h/', retries: -1}\n", 6, 46,
                 "greater than or equal to 0", id="webhook-negative-retries"),
    pytest.param(GOOD_RULE + "      - webhook: {url: 'http://h/', secret_file: key}\n", 6, 50,
                 "path must be absolute", id="webhook-relative-secret"),
    pytest.param(GOOD_RULE + "      - mail: {to: root}\n", 6, 9,
                 "an action needs a 'command' (an argv list) or a 'webhook'", id="unknown-action"),
    pytest.param(GOOD_RULE + GOOD_RULE.removeprefix("rules:\n"), 6, 5,
                 "duplicate rule name 'good' (first at", id="duplicate-name"),
    pytest.param(GOOD_RULE + "    paths: [/var]\n", 6, 5, "duplicate key 'paths'",
                 id="duplicate-key"),
    pytest.param(GOOD_RULE.replace("[/bin/true]", "[/bin/echo, '{path}']") + "    batch: {}\n",
                 5, 30, "{path} names one event's path, and a batch rule runs once for many: "
                 "use {paths}", id="batch-one-path-placeholder"),
    pytest.param(GOOD_RULE.replace("[/bin/true]", "[/bin/echo, '--in={dir}']")
                 + "    batch: {window: 2s}\n", 5, 30, "{dir} names one event's path",
                 id="batch-dir-placeholder"),
    pytest.param(GOOD_RULE.replace("[/bin/true]", "[/bin/sh, -c, 'cp \"$@\"', sh, '{paths}', "
                                   "'{paths}']") + "    batch: {}\n", 5, 58,
                 "{paths} may be in a command once", id="batch-paths-twice"),
    pytest.param(GOOD_RULE.replace("[/bin/true]", "[/bin/echo, '--files={paths}']"), 5, 30,
                 "{paths} must be an argument of its own", id="paths-inside-an-argument"),
    pytest.param(GOOD_RULE + "        user: '@owner'\n    batch: {}\n", 6, 15,
                 "a batch has many: name a user", id="batch-as-owner"),
    pytest.param(GOOD_RULE + "    batch: {max: 0}\n", 6, 18, "greater than or equal to 1",
                 id="batch-zero-max"),
    pytest.param(GOOD_RULE + "    batch: {window: soon}\n", 6, 21, "invalid duration 'soon'",
                 id="batch-bad-window"),
    pytest.param(GOOD_RULE + "    batch: {size: 3}\n", 6, 13, "unknown key 'size'",
                 id="batch-unknown-key"),
    pytest.param(GOOD_RULE + "    catch_up: false\n    existing: process\n", 2, 5,
                 "existing: process needs catch_up: true", id="existing-without-catch-up"),
    pytest.param(GOOD_RULE + "    batch: {}\n    on_busy: skip\n", 2, 5,
                 "does not apply to a batch rule", id="batch-on-busy"),
    pytest.param(GOOD_RULE + "    batch: {window: 3000000h}\n", 6, 21,
                 "rules[0].batch.window: a duration is at most 7 days (168h), not '3000000h'",
                 id="huge-window"),
    pytest.param(GOOD_RULE + "    poll: .nan\n", 6, 11,
                 "rules[0].poll: a duration must be a finite number of seconds, not nan",
                 id="nan-poll"),
    pytest.param(GOOD_RULE + "        timeout: .inf\n", 6, 18,
                 "rules[0].actions[0].timeout: a duration must be a finite number of seconds, "
                 "not inf", id="infinite-timeout"),
    pytest.param("settings:\n  stop_grace: 604801\n" + GOOD_RULE, 2, 15,
                 "settings.stop_grace: a duration is at most 7 days", id="stop-grace-past-a-week"),
    pytest.param("settings:\n  degraded_poll: 0\n" + GOOD_RULE, 2, 18,
                 "settings.degraded_poll: 0s is too often: at least 1s",
                 id="degraded-poll-zero"),
    pytest.param(GOOD_RULE + "    settle: a while\n", 6, 13, "invalid duration 'a while'",
                 id="bad-settle"),
    pytest.param(GOOD_RULE + "        stdin: names\n", 6, 16, "'none', 'paths' or 'json'",
                 id="bad-stdin"),
    pytest.param(GOOD_RULE + "        timeout: 0\n", 6, 18, "a timeout of 0 would end every run",
                 id="zero-timeout"),
    pytest.param(GOOD_RULE + "      - webhook: {url: 'http://127.0.0.1/', timeout: 0ms}\n", 6, 54,
                 "a timeout of 0 would end every", id="zero-webhook-timeout"),
    pytest.param("rules:\n  - name: x\n    paths: [\"/tmp/\\0\"]\n    actions: [{command: "
                 "[/bin/true]}]\n", 3, 13, "NUL", id="nul-in-path"),
]


@pytest.mark.parametrize(("text", "line", "column", "fragment"), BAD_FILES)
def test_bad_input_is_refused_with_its_location(tmp_path, capsys, text, line, column, fragment):
    config = tmp_path / "rules.yaml"
    config.write_text(text)
    assert main(["check", "--config", str(config)]) == 1
    errors = capsys.readouterr().err.splitlines()
    located = [e for e in errors if e.startswith(f"{config}:{line}:{column}: ")]
    assert any(fragment in error for error in located), errors
    assert errors[-1].endswith("nothing applied")


def test_every_error_of_every_file_is_reported(tmp_path, capsys):
    config = tmp_path / "rules.yaml"
    config.write_text(GOOD_RULE + "    colour: red\n    kind: socket\n")
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "10-more.yaml").write_text("rules:\n  - name: y\n")
    assert main(["check", "--config", str(config)]) == 1
    errors = capsys.readouterr().err
    assert f"{config}:6:5: rules[0]: unknown key 'colour'" in errors
    assert f"{config}:7:11: rules[0].kind" in errors
    assert f"{tmp_path}/rules.d/10-more.yaml:2:5: rules[0]: missing required key 'paths'" in errors


def test_an_action_s_errors_are_reported_beside_another_rule_s(tmp_path, capsys):
    """A rule valid on its own is checked for what its actions hold even when another rule of
    the file is invalid: fixing one error must not reveal the next."""
    config = tmp_path / "rules.yaml"
    config.write_text(
        "rules:\n"
        "  - name: a\n    paths: [/tmp]\n"
        "    actions: [{command: [/usr/local/bin/nothere-watchd-test]}]\n"
        "  - name: b\n    paths: [/tmp]\n    poll: 0s\n    actions: [{command: [/bin/true]}]\n"
        "  - name: c\n    paths: [/tmp]\n    batch: {window: 1s}\n"
        "    actions: [{command: [/bin/echo, \"{path}\", \"{paths}\", \"{paths}\"]}]\n")
    assert main(["check", "--config", str(config)]) == 1
    errors = capsys.readouterr().err
    assert "/usr/local/bin/nothere-watchd-test: No such file" in errors
    assert f"{config}:5:5: rules[1]: poll: 0s is too often" in errors
    assert f"{config}:12:37: rules[2].actions[0].command[1]: {{path}} names one event" in errors
    assert "{paths} may be in a command once" in errors
    assert errors.splitlines()[-1] == "4 error(s): nothing applied"


def test_check_exits_1_as_a_command(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text("rules: {}\n")
    result = subprocess.run([sys.executable, "-m", "watchd", "check", "--config", str(config)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 1
    assert f"{config}:1:8: rules: Input should be a valid list" in result.stderr


def test_missing_file_is_a_located_error(tmp_path, capsys):
    assert main(["check", "--config", str(tmp_path / "nope.yaml")]) == 1
    expected = f"{tmp_path}/nope.yaml:1:1: cannot read rules file {tmp_path}/nope.yaml: No such"
    assert expected in capsys.readouterr().err


def test_oversized_and_non_utf8_files_are_refused(tmp_path):
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(ConfigError, match="larger than"):
        load(big)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"rules: []\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin.yaml:2:1: not valid UTF-8"):
        load(latin)


def test_the_shipped_example_is_valid(capsys):
    assert main(["check", "--config", str(REPO / "config" / "rules.yaml")]) == 0
    assert "OK: 3 rule(s), 2 enabled" in capsys.readouterr().out


def test_the_packaged_rules_file_is_valid_and_runs_nothing(capsys):
    assert main(["check", "--config", str(REPO / "packaging" / "etc" / "rules.yaml")]) == 0
    assert "OK: 0 rule(s)" in capsys.readouterr().out


def test_drop_ins_are_read_in_name_order_and_leftovers_skipped(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(GOOD_RULE)
    drop_ins = tmp_path / "rules.d"
    drop_ins.mkdir()
    for name in ["20-b.yaml", "10-a.yaml", "30-c.yaml.dpkg-old", "40-d.yaml~", "50-e.yaml.swp",
                 "60-f.yaml.dpkg-dist", "70-g.yaml.dpkg-new", "README"]:
        rule_name = name.split(".")[0]
        (drop_ins / name).write_text(GOOD_RULE.replace("good", rule_name))
    assert [p.name for p in drop_in_files(config)] == ["10-a.yaml", "20-b.yaml"]
    assert [r.model.name for r in load(config).rules] == ["good", "10-a", "20-b"]


def test_a_drop_in_may_not_hold_settings(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(GOOD_RULE)
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "a.yaml").write_text("settings: {workers: 2}\n")
    with pytest.raises(ConfigError, match="settings belong in the main file"):
        load(config)


def test_duplicate_names_across_files(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(GOOD_RULE)
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "a.yaml").write_text(GOOD_RULE)
    with pytest.raises(ConfigError) as error:
        load(config)
    assert str(error.value) == (
        f"{tmp_path}/rules.d/a.yaml:2:5: duplicate rule name 'good' (first at {config}:2:5)"
    )


def test_an_empty_file_has_no_rules(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text("# nothing yet\n")
    assert load(config).rules == ()


@pytest.mark.parametrize(("spelling", "mask"), [
    ("close_write", IN_CLOSE_WRITE), ("IN_CLOSE_WRITE", IN_CLOSE_WRITE),
    ("In_Create", IN_CREATE), ("move", IN_MOVED_FROM | IN_MOVED_TO), ("CREATE", IN_CREATE),
])
def test_event_spellings(spelling, mask):
    assert event_mask(spelling) == mask


@pytest.mark.parametrize(("text", "seconds"), [
    (5, 5.0), (0.25, 0.25), ("250ms", 0.25), ("10s", 10.0), ("5m", 300.0), ("1h", 3600.0),
    ("1.5s", 1.5), ("30", 30.0),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["5 parsecs", "", "s", True, None, "-1s", [1]])
def test_bad_durations(text):
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_placeholders_render_bytes_per_element():
    template = parse_template("{{literal}} {name} in {dir}{{")
    values = {"name": b"\xff\n;$(x)", "dir": b"/d"}
    assert render(template, values) == b"{literal} \xff\n;$(x) in /d{"


def test_schema_is_json_schema_of_the_whole_file(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert set(schema["properties"]) == {"version", "settings", "rules"}
    assert schema["additionalProperties"] is False


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.startswith("watchd 0.")


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["check", "--nope"], ["explain"],
                                  ["explain", "/x", "--event", "changed"]])
def test_usage_errors_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2


def test_run_exits_78_on_invalid_config(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text("rules: [{name: x}]\n")
    result = subprocess.run(
        [sys.executable, "-m", "watchd", "run", "--config", str(config)],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 78
    assert f"invalid configuration; not starting: {config}:1:9:" in result.stderr


def test_explain_says_which_rules_fire_and_why_not(tmp_path, capsys):
    config = tmp_path / "rules.yaml"
    watched = tmp_path / "in"
    config.write_text(textwrap.dedent(f"""\
        rules:
          - name: csv
            paths: [{watched}]
            include: ["*.csv"]
            actions: [{{command: [/bin/echo, "{{path}}", "{{event}}"]}}]
          - name: nested
            paths: [{watched}]
            events: [create]
            actions: [{{command: [/bin/true]}}]
          - name: elsewhere
            paths: [/srv/other]
            actions: [{{command: [/bin/true]}}]
          - name: idle
            paths: [{watched}]
            enabled: false
            actions: [{{command: [/bin/true]}}]
    """))
    assert main(["explain", str(watched / "a.csv"), "--config", str(config)]) == 0
    out = capsys.readouterr().out
    assert "rule csv (" in out and "fires on close_write, moved_to" in out
    assert f"1. command: /bin/echo {watched}/a.csv close_write" in out
    assert "rule elsewhere" in out and "not under its paths (/srv/other)" in out
    assert "rule idle" in out and "disabled" in out
    assert main(["explain", str(watched / "a.txt"), "--event", "IN_CLOSE_WRITE", "--config",
                 str(config)]) == 0
    out = capsys.readouterr().out
    assert "no include pattern matches 'a.txt'" in out
    assert "event close_write is not among its events (create)" in out
    assert main(["explain", str(watched / "a.txt"), "--event", "create", "--config",
                 str(config)]) == 0
    assert "rule nested" in capsys.readouterr().out.split("fires on create")[0]
    assert main(["explain", str(watched / "sub" / "a.csv"), "--config", str(config)]) == 0
    assert "is in a subdirectory and the rule is not recursive" in capsys.readouterr().out


def test_an_unreadable_drop_in_directory_is_a_located_error(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(GOOD_RULE)
    (tmp_path / "rules.d").write_text("not a directory, but in the way")
    assert [r.model.name for r in load(config).rules] == ["good"]
    (tmp_path / "rules.d").unlink()
    (tmp_path / "rules.d").mkdir()
    (tmp_path / "rules.d" / "dir.yaml").mkdir()
    with pytest.raises(ConfigError, match=r"dir.yaml:1:1: rules file .*dir.yaml is not a regular"):
        load(config)
