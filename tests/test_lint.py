"""watchd.lint: argv templates that put a file name into code, or hold shell operators."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import yaml

from watchd.core.placeholders import PLACEHOLDERS, parse_template, render
from watchd.schema.lint import argv_warnings

SH = "/bin/sh"


def indices(argv):
    return [index for index, _ in argv_warnings(argv)]


def only_message(argv):
    (warning,) = argv_warnings(argv)
    return warning[1]


def suggested(message):
    """The safe argv a message suggests, read back as YAML reads a rule."""
    return yaml.safe_load(message.split("instead: ", 1)[1])


# --- Names in an interpreter's code --------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "index", "interpreter"),
    [
        ([SH, "-c", "wc -l {path}"], 2, "sh -c"),
        (["/bin/bash", "-c", "cat {path}"], 2, "bash -c"),
        (["/usr/bin/dash", "-c", "cat {path}"], 2, "dash -c"),
        (["/usr/bin/zsh", "-c", "cat {path}"], 2, "zsh -c"),
        (["/usr/bin/ksh", "-c", "cat {path}"], 2, "ksh -c"),
        (["/usr/bin/mksh", "-c", "cat {path}"], 2, "mksh -c"),
        (["/bin/ash", "-c", "cat {path}"], 2, "ash -c"),
        (["/bin/busybox", "sh", "-c", "cat {path}"], 3, "busybox sh -c"),
        (["/usr/bin/python", "-c", "print('{path}')"], 2, "python -c"),
        (["/usr/bin/python3", "-c", "print('{path}')"], 2, "python3 -c"),
        (["/usr/bin/python3.11", "-c", "print('{path}')"], 2, "python3.11 -c"),
        (["/usr/bin/perl", "-e", "print '{path}'"], 2, "perl -e"),
        (["/usr/bin/perl", "-E", "say '{path}'"], 2, "perl -E"),
        (["/usr/bin/ruby", "-e", "puts '{path}'"], 2, "ruby -e"),
        (["/usr/bin/node", "-e", "console.log('{path}')"], 2, "node -e"),
        (["/usr/bin/node", "--eval", "console.log('{path}')"], 2, "node --eval"),
        (["/usr/bin/node", "-p", "'{path}'.length"], 2, "node -p"),
        (["/usr/bin/node", "--print", "'{path}'.length"], 2, "node --print"),
        (["/usr/bin/nodejs", "-e", "console.log('{path}')"], 2, "nodejs -e"),
        (["/usr/bin/php", "-r", "echo '{path}';"], 2, "php -r"),
        (["/usr/bin/lua", "-e", "print('{path}')"], 2, "lua -e"),
        (["/usr/bin/awk", '{{print}} END {{print "{path}"}}'], 1, "awk"),
        (["/usr/bin/gawk", "-F:", '{{print $1, "{path}"}}', "/etc/passwd"], 2, "gawk"),
        (["/usr/bin/mawk", "-v", "x=1", '{{print "{path}"}}'], 3, "mawk"),
    ],
)
def test_a_name_in_each_interpreters_code_warns_at_the_code(argv, index, interpreter):
    (warning,) = argv_warnings(argv)
    assert warning[0] == index
    assert f"{{path}} inside the script of '{interpreter}' is run as" in warning[1]


@pytest.mark.parametrize(
    ("argv", "index"),
    [
        ([SH, "-ec", "cat {path}"], 2),
        ([SH, "-xc", "cat {path}"], 2),
        ([SH, "-ce", "cat {path}"], 2),
        ([SH, "-e", "-c", "cat {path}"], 3),
        ([SH, "-c", "-e", "cat {path}"], 3),
        ([SH, "-c", "--", "cat {path}"], 3),
        (["/bin/bash", "-o", "pipefail", "-c", "cat {path} | wc"], 4),
        (["/bin/bash", "+o", "history", "--norc", "-c", "cat {path}"], 5),
        (["/bin/bash", "-lc", "cat {path}"], 2),
    ],
)
def test_a_shells_code_is_the_first_operand_after_an_option_cluster_with_c(argv, index):
    assert indices(argv) == [index]


def test_the_interpreter_is_named_as_written_with_its_option_cluster():
    assert "inside the script of 'sh -ec'" in only_message([SH, "-ec", "cat {path}"])


@pytest.mark.parametrize(
    ("argv", "index"),
    [
        (["/usr/bin/python3", "-I", "-c", "print('{path}')"], 3),
        (["/usr/bin/python3", "-Ic", "print('{path}')"], 2),
        (["/usr/bin/python3", "-cprint('{path}')"], 1),
        (["/usr/bin/python3", "-W", "ignore", "-c", "print('{path}')"], 4),
        (["/usr/bin/perl", "-lne", "print '{path}'"], 2),
        (["/usr/bin/perl", "-i.bak", "-pe", "s/x/{name}/"], 3),
        (["/usr/bin/perl", "-e", "print 1;", "-e", "print '{name}'"], 4),
        (["/usr/bin/ruby", "-rjson", "-e", "puts '{path}'"], 3),
        (["/usr/bin/lua", "-eprint('{path}')"], 1),
        (["/usr/bin/node", "--eval=console.log('{path}')"], 1),
        (["/usr/bin/gawk", "-e", 'BEGIN {{print "{path}"}}'], 2),
    ],
)
def test_code_given_as_an_options_value_is_found_in_each_way_of_writing_it(argv, index):
    assert indices(argv) == [index]


@pytest.mark.parametrize(
    ("argv", "index"),
    [
        (["/usr/bin/env", "bash", "-c", "cat {path}"], 3),
        (["/usr/bin/env", "-i", "bash", "-c", "cat {path}"], 4),
        (["/usr/bin/env", "-S", "bash", "-c", "cat {path}"], 4),
        (["/usr/bin/env", "-u", "HOME", "LANG=C", "python3", "-c", "print('{path}')"], 6),
        (["/usr/bin/env", "--", "perl", "-e", "print '{path}'"], 4),
        (["/usr/bin/env", "busybox", "sh", "-c", "cat {path}"], 4),
    ],
)
def test_env_is_looked_through(argv, index):
    assert indices(argv) == [index]


@pytest.mark.parametrize("placeholder", ["{path}", "{name}", "{dir}", "{src_path}"])
def test_each_name_a_local_user_chooses_warns(placeholder):
    message = only_message([SH, "-c", f"echo {placeholder}"])
    assert message.startswith(f"{placeholder} inside the script of 'sh -c' is run as shell code")


@pytest.mark.parametrize("placeholder", ["{root}", "{rule}", "{event}", "{{path}}", "{{name}}"])
def test_what_the_admin_or_watchd_chooses_and_literal_braces_do_not_warn(placeholder):
    assert argv_warnings([SH, "-c", f"echo {placeholder}"]) == []
    assert argv_warnings(["/usr/bin/python3", "-c", f"print('{placeholder}')"]) == []


def test_the_placeholders_found_are_named():
    message = only_message([SH, "-c", "cp {name} {dir}/done/"])
    assert message.startswith("{name} and {dir} inside the script of 'sh -c' are run as shell code")


@pytest.mark.parametrize(
    "argv",
    [
        [SH, "-c", 'wc -l -- "$1"', "sh", "{path}"],
        [SH, "-c", "echo {{path}} is not a placeholder"],
        [SH, "-c", "cd {root} && echo {event} for {rule} >> /var/log/watchd-rules"],
        ["/usr/bin/python3", "-c", "import sys; print(sys.argv[1])", "{path}"],
        ["/usr/bin/python3", "-m", "json.tool", "-c", "{path}"],
        ["/usr/bin/python3", "/usr/local/bin/ingest.py", "-c", "{path}"],
        ["/usr/bin/awk", "-f", "/etc/watchd/count.awk", "{path}"],
        ["/usr/bin/awk", "{{print}}", "{path}"],
        ["/usr/bin/awk", "-v", "name={name}", "{{print name}}", "{path}"],
        [SH, "/usr/local/bin/ingest.sh", "{path}"],
        ["/usr/bin/grep", "-e", "{name}", "/etc/watchd/names"],
        ["/usr/bin/sha256sum", "--", "{path}"],
        ["/usr/bin/env", "/usr/bin/sha256sum", "--", "{path}"],
        ["/usr/bin/env"],
        [],
    ],
)
def test_no_warning_where_no_name_is_in_code(argv):
    assert argv_warnings(argv) == []


# --- The safe form suggested ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "safe"),
    [
        ([SH, "-c", "wc -l {path}"], '[/bin/sh, -c, \'wc -l -- "$1"\', sh, "{path}"]'),
        ([SH, "-c", "wc -l '{path}'"], '[/bin/sh, -c, \'wc -l -- "$1"\', sh, "{path}"]'),
        ([SH, "-c", 'wc -l "{path}"'], '[/bin/sh, -c, \'wc -l -- "$1"\', sh, "{path}"]'),
        ([SH, "-c", "echo -n {path}"], '[/bin/sh, -c, \'echo -n "$1"\', sh, "{path}"]'),
        (
            ["/bin/bash", "-ec", 'echo "seen: {path}" >> /var/log/seen; mv {path} {dir}/done/'],
            '[/bin/bash, -ec, \'echo "seen: $1" >> /var/log/seen; mv "$1" "$2"/done/\', '
            'bash, "{path}", "{dir}"]',
        ),
        (
            [SH, "-c", "echo 'got {name} at last'"],
            '[/bin/sh, -c, "echo \'got \'\\"$1\\"\' at last\'", sh, "{name}"]',
        ),
        (
            ["/usr/bin/env", "bash", "-c", "cat {path}"],
            '[/usr/bin/env, bash, -c, \'cat "$1"\', bash, "{path}"]',
        ),
        (
            ["/bin/busybox", "sh", "-c", "rm {path}"],
            '[/bin/busybox, sh, -c, \'rm "$1"\', sh, "{path}"]',
        ),
        (
            ["/usr/bin/python3", "-I", "-c", "print(open('{path}').read())"],
            '[/usr/bin/python3, -I, -c, "import sys; print(open(sys.argv[1]).read())", "{path}"]',
        ),
        (
            ["/usr/bin/python3", "-c", "import sys; print('{name}', sys.argv)"],
            '[/usr/bin/python3, -c, "import sys; print(sys.argv[1], sys.argv)", "{name}"]',
        ),
        (
            ["/usr/bin/perl", "-e", 'print "{name}\\n"'],
            None,
        ),
        (
            ["/usr/bin/perl", "-e", 'print "{name}"'],
            '[/usr/bin/perl, -e, "print $ARGV[0]", --, "{name}"]',
        ),
        (
            ["/usr/bin/ruby", "-e", "puts '{path}'"],
            '[/usr/bin/ruby, -e, "puts ARGV[0]", --, "{path}"]',
        ),
        (
            ["/usr/bin/node", "-e", "console.log('{path}')"],
            '[/usr/bin/node, -e, "console.log(process.argv[1])", --, "{path}"]',
        ),
    ],
)
def test_the_message_gives_the_safe_argv_built_from_the_template(argv, safe):
    message = only_message(argv)
    if safe is None:
        assert message.endswith(
            "Pass the name as an argument after the script instead, and "
            "have the script read it there."
        )
    else:
        assert message.endswith(f" instead: {safe}")


@pytest.mark.parametrize(
    "argv",
    [
        # The code is not the last element: arguments after it are the admin's already.
        [SH, "-c", 'cp -- "$1" {dir}/', "sh", "/srv/spool/x"],
        # A name woven into a longer string literal: no rewrite keeps the code's meaning.
        ["/usr/bin/python3", "-c", "print(open('/srv/in/{name}').read())"],
        # Quotes nest inside command substitution, past what the rewrite follows.
        [SH, "-c", 'echo "$(basename "{path}")"'],
        # No rewrite is known for these.
        ["/usr/bin/php", "-r", "echo '{path}';"],
        ["/usr/bin/lua", "-e", "print('{path}')"],
        ["/usr/bin/awk", '{{print "{path}"}}'],
    ],
)
def test_where_no_simple_rewrite_exists_the_message_says_what_to_do(argv):
    assert only_message(argv).endswith(
        "Pass the name as an argument after the script instead, and have the script read it there."
    )


def test_the_example_message_in_full():
    assert argv_warnings([SH, "-c", "wc -l {path}"]) == [
        (
            2,
            "{path} inside the script of 'sh -c' is run as shell code: a file named "
            "'x$(id>>PWNED).txt' would run id. Pass the name as an argument instead: "
            '[/bin/sh, -c, \'wc -l -- "$1"\', sh, "{path}"]',
        )
    ]


@pytest.mark.parametrize(
    "argv",
    [
        [SH, "-c", "wc -l {path}"],
        [SH, "-c", "echo 'got {name} at last'"],
        ["/bin/bash", "-ec", 'echo "seen: {path}" >> /var/log/seen; mv {path} {dir}/done/'],
        ["/usr/bin/env", "-i", "bash", "-c", "cat {path}"],
        ["/usr/bin/python3", "-Ic", "print(open('{path}').read())"],
        ["/usr/bin/perl", "-e", 'print "{name}"'],
        ["/usr/bin/ruby", "-e", "puts '{path}'"],
        ["/usr/bin/node", "--eval=console.log('{path}')"],
    ],
)
def test_the_suggested_argv_is_a_valid_template_that_does_not_warn(argv):
    safe = suggested(only_message(argv))
    for element in safe:
        parse_template(element)
    assert argv_warnings(safe) == []


def test_each_piece_of_code_with_a_name_warns():
    argv = ["/usr/bin/perl", "-e", "print '{path}';", "-e", "print '{name}';"]
    assert indices(argv) == [2, 4]


def test_a_malformed_template_is_a_value_error_as_when_the_rules_load():
    with pytest.raises(ValueError, match="unknown placeholder"):
        argv_warnings(["/usr/bin/awk", "{print}"])


# --- The safe form, run --------------------------------------------------------------------


def run(argv, target, cwd):
    """``argv`` rendered for an event on ``target`` and run in ``cwd``."""
    values = dict.fromkeys(PLACEHOLDERS, b"") | {
        "path": os.fsencode(target),
        "name": os.fsencode(target.name),
        "dir": os.fsencode(target.parent),
    }
    rendered = [render(parse_template(arg), values) for arg in argv]
    return subprocess.run(rendered, cwd=cwd, capture_output=True, timeout=10, check=False)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        ("wc -c {path}", "5 {path}\n"),
        ("wc -c '{path}'", "5 {path}\n"),
        ('wc -c "{path}"', "5 {path}\n"),
        ("echo 'got {name} at last'", "got {name} at last\n"),
        ('echo "seen: {path}"', "seen: {path}\n"),
    ],
)
def test_the_name_in_the_message_runs_code_as_written_and_not_in_the_safe_form(
    tmp_path, script, expected
):
    argv = [SH, "-c", script]
    message = only_message(argv)
    example = yaml.safe_load(message.split("a file named ", 1)[1].split(" would run id")[0])
    target = tmp_path / example
    target.write_text("hello")
    pwned = tmp_path / "PWNED"

    run(argv, target, tmp_path)
    assert pwned.exists(), "the example name should run id through the template as written"
    pwned.unlink()

    result = run(suggested(message), target, tmp_path)
    assert not pwned.exists()
    assert result.stdout == expected.format(path=target, name=target.name).encode()


def test_the_suggested_python_form_keeps_a_hostile_name_out_of_the_code(tmp_path):
    argv = [sys.executable, "-I", "-c", "print(open('{path}').read(), end='')"]
    target = tmp_path / "'+open('PWNED','w').name+'"
    target.write_text("hello")
    pwned = tmp_path / "PWNED"

    run(argv, target, tmp_path)
    assert pwned.exists(), "the name should run code through the template as written"
    pwned.unlink()

    result = run(suggested(only_message(argv)), target, tmp_path)
    assert not pwned.exists()
    assert result.stdout == b"hello"


# --- Shell operators -----------------------------------------------------------------------


@pytest.mark.parametrize("operator", ["|", "||", "&&", ";", ">", ">>", "<", "2>", "2>&1", "&"])
def test_a_shell_operator_as_an_element_warns_at_its_index(operator):
    (warning,) = argv_warnings(["/usr/bin/sort", "--", "{path}", operator, "/tmp/out"])
    assert warning[0] == 3
    assert warning[1].startswith(
        f"{operator!r} is passed to /usr/bin/sort as an argument: commands run without a shell"
    )


def test_the_operator_message_gives_the_argv_as_a_shell_command_with_names_as_arguments():
    argv = ["/usr/bin/sort", "{path}", "|", "/usr/bin/head", "-n", "5", ">", "{dir}/top.txt"]
    warnings = argv_warnings(argv)
    assert [index for index, _ in warnings] == [2, 6]
    assert warnings[0][1] == (
        "'|' is passed to /usr/bin/sort as an argument: commands run without a shell, so it "
        "does not pipe. To use a shell, pass names as arguments: [/bin/sh, -c, "
        '\'/usr/bin/sort "$1" | /usr/bin/head -n 5 > "$2"/top.txt\', sh, "{path}", "{dir}"]'
    )
    assert argv_warnings(suggested(warnings[0][1].replace("arguments: ", "instead: "))) == []


def test_an_operator_with_no_names_about_gives_the_shell_command_alone():
    message = only_message(["/usr/bin/date", ">>", "/var/log/changes"])
    assert message.endswith('To use a shell: [/bin/sh, -c, "/usr/bin/date >> /var/log/changes"]')


@pytest.mark.parametrize(
    "argv",
    [
        # In code, an operator is the code's own business.
        [SH, "-c", 'sort -- "$1" | head > /tmp/top', "sh", "{path}"],
        ["/usr/bin/perl", "-e", ";"],
        # The value of an option: a delimiter, a pattern.
        ["/usr/bin/cut", "-d", "|", "-f", "2", "--", "{path}"],
        ["/usr/bin/awk", "-F", ";", "{{print $2}}", "{path}"],
        ["/usr/bin/grep", "--regexp", "&&", "--", "{path}"],
        # find's -exec ends at a ';' of its own.
        ["/usr/bin/find", "{dir}", "-name", "*.tmp", "-exec", "rm", "--", "{{}}", ";"],
    ],
)
def test_no_operator_warning_where_no_shell_would_have_read_it(argv):
    assert argv_warnings(argv) == []


def test_an_operator_after_finds_exec_has_ended_warns():
    argv = ["/usr/bin/find", "{dir}", "-exec", "rm", "--", "{{}}", ";", "|", "/usr/bin/wc"]
    (warning,) = argv_warnings(argv)
    assert warning[0] == 7
    # find's own ';' stays quoted in the shell form.
    assert "\"/usr/bin/find \\\"$1\\\" -exec rm -- '{{}}' ';' | /usr/bin/wc\"" in warning[1]
