"""``log_output``: a command's stdout and stderr in the log, line by line, bounded, escaped,
and never holding the command."""

from __future__ import annotations

import json

from conftest import COMMAND_PYTHON, wait_for


def ran(write_rules, tmp_path, daemon, script: str, log_output: bool = True, until="action ok"):
    """The daemon's log once a run of ``script`` on one new file has said ``until``."""
    watched, config = output_rule(write_rules, tmp_path, script, log_output)
    process = daemon(config)
    (watched / "a").write_text("x")
    process.wait_log(until)
    return process


def output_rule(write_rules, tmp_path, script: str, log_output: bool = True):
    """The daemon, running one rule whose command is ``script``; the rule's path."""
    watched = tmp_path / "in"
    watched.mkdir(exist_ok=True)
    command = [COMMAND_PYTHON, "-c", script]
    return watched, write_rules(f"""
        rules:
          - name: chatty
            paths: [{watched}]
            actions:
              - command: {json.dumps(command)}
                log_output: {json.dumps(log_output)}
                timeout: 20s
    """)


def test_each_line_of_both_streams_is_logged_with_its_rule_job_and_stream(
        write_rules, tmp_path, daemon):
    script = ("import sys; print('to stdout'); print('to stderr', file=sys.stderr); "
              "sys.stdout.buffer.write(b'bytes \\xff\\x1b[31m\\nno newline at the end')")
    process = ran(write_rules, tmp_path, daemon, script)
    wait_for(lambda: "no newline at the end" in process.log())
    log = process.log()
    assert "to stdout rule=chatty job=1 stream=stdout" in log
    assert "to stderr rule=chatty job=1 stream=stderr" in log
    assert "bytes \\xff\\x1b[31m rule=chatty job=1 stream=stdout" in log  # escaped, one line
    assert "\x1b" not in log


def test_a_run_logs_at_most_its_bound_and_says_how_many_more(write_rules, tmp_path, daemon):
    script = "for n in range(1500): print('line', n)"
    log = ran(write_rules, tmp_path, daemon, script, until="500 more output line(s) not "
              "logged: log_output keeps 1000 per run").log()
    assert "line 999 rule=chatty" in log and "line 1000 rule=chatty" not in log


def test_a_command_writing_a_lot_is_never_held_by_its_output(write_rules, tmp_path, daemon):
    script = "import sys; sys.stdout.write('x' * 8_000_000); sys.stderr.write('y' * 8_000_000)"
    assert "timed out" not in ran(write_rules, tmp_path, daemon, script).log()


def test_without_log_output_stdout_is_not_logged(write_rules, tmp_path, daemon):
    log = ran(write_rules, tmp_path, daemon, "print('quiet please')", log_output=False).log()
    assert "quiet please" not in log
