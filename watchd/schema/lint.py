"""Lint a command's argv template for places where a file name could become code.

watchd runs an action's argv directly, without a shell, so a placeholder is only ever data in
one argument. That holds until the argv itself hands the name to an interpreter as code
(``[/bin/sh, -c, "wc -l {path}"]``), or was written as if a shell would read it
(``[/usr/bin/sort, "{path}", "|", /usr/bin/head]``). Local users choose file names, so the
first is a way in for them and the second a command that does not do what it says. Each
warning names the element and, where the rewrite is simple, gives the safe argv to use.
"""

from __future__ import annotations

import json
import os
import re
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from watchd.core.placeholders import Template, parse_template

# Placeholders whose value is a name that some local user chose. {root}, {rule} and {event}
# come from the admin or from watchd.
_NAME_PLACEHOLDERS = frozenset({"path", "name", "dir", "src_path"})

# Shell operators as whole argv elements, and what a shell would have done with each.
_SHELL_OPERATORS: Mapping[str, str] = {
    "|": "pipe",
    "||": "chain commands",
    "&&": "chain commands",
    ";": "separate commands",
    "&": "run anything in the background",
    ">": "redirect",
    ">>": "redirect",
    "<": "redirect",
    "2>": "redirect",
    "2>&1": "redirect",
}

# find's -exec and its kin end at a ';' of their own, which is find's argument, not a shell's.
_FIND_EXEC = frozenset({"-exec", "-execdir", "-ok", "-okdir"})

# An option element alone: what follows may be its value, and '|' or ';' is a fine delimiter
# or pattern (cut -d '|', awk -F ';', grep -e '&&').
_OPTION = re.compile(r"-[A-Za-z]|--[A-Za-z][\w-]*")

# env's options that take the next argument: the program comes after it.
_ENV_VALUED = frozenset({"-u", "--unset", "-C", "--chdir"})

# Marks the single quotes that a rewrite closes and reopens around "$1", so that the empty ''
# this leaves at the edges of a quoted name can be dropped. NUL cannot be in an argv.
_MARK = "\0"


class _Arguments(NamedTuple):
    """How code reads the arguments that follow it on its interpreter's command line."""

    reference: str  # the expression for argument n, as a format: 'sys.argv[{n}]'
    first: int  # the n of the first argument after the code
    separator: tuple[str, ...] = ()  # what goes before the arguments, lest '-x' be an option
    prelude: str = ""  # what the code needs to use the reference: 'import sys; '


class _Grammar(NamedTuple):
    """Where an interpreter's command line holds code, and how that code reads arguments."""

    language: str  # for messages: 'is run as Python code'
    script: frozenset[str] = frozenset()  # options whose value is code: -c, -e
    valued: frozenset[str] = frozenset()  # options whose value, attached or next, is not code
    suffixed: frozenset[str] = frozenset()  # options whose value is only ever attached: -i.bak
    final: frozenset[str] = frozenset()  # options after which all is the code's arguments
    clusters: bool = True  # whether one-letter options combine: python3 -Ic, perl -lne
    signs: str = "-"  # what options start with; shells also take +e, +o name
    operand_after: str | None = None  # shells read the first operand as code after -c
    operand_unless: frozenset[str] | None = None  # awk reads it as its program unless -f or -e
    arguments: _Arguments | None = None  # None: no simple rewrite to suggest


_SHELL = _Grammar(
    language="shell",
    valued=frozenset({"-o", "+o", "-O", "+O", "--rcfile", "--init-file"}),
    signs="-+",
    operand_after="-c",
)
_PYTHON = _Grammar(
    language="Python",
    script=frozenset({"-c"}),
    valued=frozenset({"-W", "-X", "-m", "--check-hash-based-pycs"}),
    final=frozenset({"-c", "-m"}),
    arguments=_Arguments("sys.argv[{n}]", first=1, prelude="import sys; "),
)
_PERL = _Grammar(
    language="Perl",
    script=frozenset({"-e", "-E"}),
    valued=frozenset({"-I"}),
    suffixed=frozenset({"-i", "-M", "-m", "-F", "-x", "-d", "-D", "-C"}),
    arguments=_Arguments("$ARGV[{n}]", first=0, separator=("--",)),
)
_RUBY = _Grammar(
    language="Ruby",
    script=frozenset({"-e"}),
    valued=frozenset({"-C", "-E", "-I", "-r"}),
    suffixed=frozenset({"-F", "-i", "-x"}),
    arguments=_Arguments("ARGV[{n}]", first=0, separator=("--",)),
)
_NODE = _Grammar(
    language="JavaScript",
    script=frozenset({"-e", "--eval", "-p", "--print", "-pe"}),
    valued=frozenset({"-r", "--require", "--import", "--loader", "-C", "--conditions"}),
    clusters=False,
    arguments=_Arguments("process.argv[{n}]", first=1, separator=("--",)),
)
_PHP = _Grammar(
    language="PHP",
    script=frozenset({"-r", "-B", "-R", "-E"}),
    valued=frozenset({"-c", "-d", "-f", "-z"}),
)
_LUA = _Grammar(language="Lua", script=frozenset({"-e"}), valued=frozenset({"-l"}))
_AWK = _Grammar(
    language="awk",
    script=frozenset({"-e", "--source"}),
    valued=frozenset({"-F", "-v", "-f", "-W", "--file"}),
    operand_unless=frozenset({"-e", "--source", "-f", "--file"}),
)

# By program name, less any version: python3.11 and lua5.4 are python and lua.
_GRAMMARS: Mapping[str, _Grammar] = {
    **dict.fromkeys(("sh", "bash", "dash", "zsh", "ksh", "mksh", "ash"), _SHELL),
    **dict.fromkeys(("awk", "gawk", "mawk"), _AWK),
    **dict.fromkeys(("node", "nodejs"), _NODE),
    "python": _PYTHON,
    "perl": _PERL,
    "ruby": _RUBY,
    "php": _PHP,
    "lua": _LUA,
}


@dataclass(frozen=True)
class _Script:
    """An element of argv that an interpreter reads as code."""

    index: int  # the element
    offset: int  # where the code starts in it: past '-c' in '-cprint(1)'
    interpreter: str  # as written, for messages: 'bash -c', 'busybox sh -ec', 'awk'
    program: str  # the interpreter's name: what a shell gets as $0
    grammar: _Grammar


class _Options(NamedTuple):
    """What an interpreter's options said."""

    scripts: list[tuple[int, int, str]]  # code given as an option's value: index, offset, option
    seen: dict[str, str]  # each option given, by name, to how it was written ('-c': '-ec')
    operand: int  # index of the first argument that is no option


def argv_warnings(argv: Sequence[str]) -> list[tuple[int, str]]:
    """(index into ``argv``, message) for each element of a command template, as written in
    the rules, that puts a file name into an interpreter's code, or that is a shell operator
    with no shell to read it. ValueError, as from parse_template, for a malformed element."""
    scripts = _scripts(argv)
    warnings = [
        (script.index, _script_warning(argv, script, names))
        for script in scripts
        if (names := _names_in(argv[script.index][script.offset :]))
    ]
    warnings += _operator_warnings(argv, {script.index for script in scripts})
    return sorted(warnings)


# --- Where the code is ---------------------------------------------------------------------


def _scripts(argv: Sequence[str]) -> list[_Script]:
    """Each element of ``argv`` that the program it runs reads as code."""
    found = _program(argv)
    if found is None:
        return []
    start, caller = found
    program = os.path.basename(argv[start])
    grammar = _GRAMMARS.get(re.sub(r"[0-9.]+$", "", program))
    if grammar is None:
        return []
    options = _read_options(argv, start, grammar)
    scripts = list(options.scripts)
    operand_option = _operand_option(grammar, options.seen)
    if operand_option is not None and options.operand < len(argv):
        scripts.append((options.operand, 0, operand_option))
    return [
        _Script(index, offset, f"{caller}{program} {option}".rstrip(), program, grammar)
        for index, offset, option in scripts
    ]


def _program(argv: Sequence[str]) -> tuple[int, str] | None:
    """Index of the program that ``argv`` runs, looking through env and busybox, and what
    goes before its name in messages ('busybox ' or ''); None if there is none."""
    index = _after_env(argv) if argv and os.path.basename(argv[0]) == "env" else 0
    caller = ""
    if index < len(argv) and os.path.basename(argv[index]) == "busybox":
        index, caller = index + 1, "busybox "
    return (index, caller) if index < len(argv) else None


def _after_env(argv: Sequence[str]) -> int:
    """Index of the program that env runs: past env's options and VAR=value assignments."""
    index = 1
    while index < len(argv) and (argv[index].startswith("-") or "=" in argv[index]):
        if argv[index] == "--":
            return index + 1
        index += 2 if argv[index] in _ENV_VALUED else 1
    return index


def _read_options(argv: Sequence[str], start: int, grammar: _Grammar) -> _Options:
    """The options after the interpreter's name at ``argv[start]``, up to the first operand."""
    options = _Options([], {}, len(argv))
    index = start + 1
    while index < len(argv):
        element = argv[index]
        if element == "--":
            return options._replace(operand=index + 1)
        if element[:1] not in grammar.signs or len(element) < 2:
            return options._replace(operand=index)
        taken, final = _read_option(argv, index, grammar, options)
        if final:
            return options
        index += 1 + taken
    return options


def _read_option(
    argv: Sequence[str], index: int, grammar: _Grammar, options: _Options
) -> tuple[int, bool]:
    """Record the options in ``argv[index]`` into ``options``; how many arguments after it
    they take (0 or 1), and whether all after them is the code's arguments."""
    element = argv[index]
    taken, final = 0, False
    for name, attached in _split_option(element, grammar):
        written = element if attached is None else element[:attached].removesuffix("=")
        options.seen[name] = written
        if name in grammar.script:
            code = (index, attached) if attached is not None else (index + 1, 0)
            if code[0] < len(argv):
                options.scripts.append((*code, written))
        if attached is None and (name in grammar.script or name in grammar.valued):
            taken = 1
        final = final or name in grammar.final
    return taken, final


def _split_option(element: str, grammar: _Grammar) -> list[tuple[str, int | None]]:
    """The options in one element, each as its name and where its attached value starts:
    '-Icprint(1)' is ('-I', None), ('-c', 3); '--eval=x' is ('--eval', 7)."""
    if element.startswith("--"):
        name, equals, _ = element.partition("=")
        return [(name, len(name) + 1 if equals else None)]
    if not grammar.clusters:
        return [(element, None)]
    with_values = grammar.script | grammar.valued | grammar.suffixed
    options: list[tuple[str, int | None]] = []
    for position in range(1, len(element)):
        name = element[0] + element[position]
        if name in with_values:
            # The rest of the cluster is the option's value, if there is any rest.
            return [*options, (name, position + 1 if position + 1 < len(element) else None)]
        options.append((name, None))
    return options


def _operand_option(grammar: _Grammar, seen: Mapping[str, str]) -> str | None:
    """The option, as written, that makes the first operand code ('' for awk's program);
    None when the first operand is not code."""
    if grammar.operand_after is not None:
        return seen.get(grammar.operand_after)
    if grammar.operand_unless is not None and not grammar.operand_unless & seen.keys():
        return ""
    return None


# --- Names in code -------------------------------------------------------------------------


def _script_warning(argv: Sequence[str], script: _Script, names: list[str]) -> str:
    """What ``names`` in the code at ``script`` let a file name do, and the safe form."""
    one = len(names) == 1
    listed = _listing(["{" + name + "}" for name in names])
    head = (
        f"{listed} inside the script of '{script.interpreter}' {'is' if one else 'are'} run as "
        f"{script.grammar.language} code: "
        f"{_danger(argv[script.index][script.offset :], script.grammar)}."
    )
    passing = "the name as an argument" if one else "the names as arguments"
    safe = _safe_argv(argv, script, names)
    if safe is None:
        return (
            f"{head} Pass {passing} after the script instead, and have the script read "
            f"{'it' if one else 'them'} there."
        )
    return f"{head} Pass {passing} instead: {_flow(safe)}"


def _danger(code: str, grammar: _Grammar) -> str:
    """What a hostile file name would do to ``code``, said with an example for a shell."""
    if grammar is not _SHELL:
        return "a file name can end the string it is written into and run code of its own"
    parts = parse_template(code)
    quotes = [
        quote
        for part, quote in zip(parts, _open_quotes(parts), strict=True)
        if isinstance(part, str) and part in _NAME_PLACEHOLDERS
    ]
    # Inside single quotes a name needs a quote of its own to get out; elsewhere it does not.
    example = "\"x'$(id>>PWNED)'.txt\"" if set(quotes) == {"'"} else "'x$(id>>PWNED).txt'"
    return f"a file named {example} would run id"


def _safe_argv(argv: Sequence[str], script: _Script, names: list[str]) -> list[str] | None:
    """``argv`` with the names passed as arguments after the code, which reads them there;
    None unless that is a simple rewrite: the code is the last element and the names stand
    where a reference to an argument can take their place."""
    if script.index != len(argv) - 1:
        return None
    element = argv[script.index]
    rewritten = _passing_names(element[script.offset :], script, names)
    if rewritten is None:
        return None
    code, arguments = rewritten
    return [*argv[: script.index], element[: script.offset] + code, *arguments]


def _passing_names(code: str, script: _Script, names: list[str]) -> tuple[str, list[str]] | None:
    """``code`` reading the names from its arguments, and those arguments; None if no simple
    rewrite does."""
    placeholders = ["{" + name + "}" for name in names]
    if script.grammar is _SHELL:
        shell_code = _shell_code(code, {name: n for n, name in enumerate(names, 1)})
        return None if shell_code is None else (shell_code, [script.program, *placeholders])
    arguments = script.grammar.arguments
    if arguments is None:
        return None
    numbered = enumerate(names, arguments.first)
    new_code = _code_with(code, {name: arguments.reference.format(n=n) for n, name in numbered})
    if new_code is None:
        return None
    if arguments.prelude.rstrip("; ") not in new_code:
        new_code = arguments.prelude + new_code
    return new_code, [*arguments.separator, *placeholders]


def _shell_code(code: str, numbers: Mapping[str, int]) -> str | None:
    """``code`` reading each name from its positional parameter ("$1") instead of holding it;
    None when it has command substitution, where quotes nest past what is followed here."""
    if "$(" in code or "`" in code:
        return None
    parts = parse_template(code)
    pieces = [
        _positional(numbers[part], quote)
        if isinstance(part, str) and part in numbers
        else _piece(part)
        for part, quote in zip(parts, _open_quotes(parts), strict=True)
    ]
    script = re.sub(f"'{_MARK}+'", "", "".join(pieces)).replace(_MARK, "")
    return _end_options(script)


def _open_quotes(parts: Template) -> list[str]:
    """The shell quote open where each part of a script starts: '', "'" or '"'."""
    quotes: list[str] = []
    quote = ""
    for part in parts:
        quotes.append(quote)
        if isinstance(part, bytes):
            quote = _quote_after(_piece(part), quote)
    return quotes


def _quote_after(text: str, quote: str) -> str:
    """The shell quote open after ``text``, given the one open before it."""
    escaped = False
    for char in text:
        if escaped:
            escaped = False
        elif char == "\\" and quote != "'":
            escaped = True
        elif char == quote:
            quote = ""
        elif not quote and char in "'\"":
            quote = char
    return quote


def _positional(number: int, quote: str) -> str:
    """The script's reference to parameter ``number`` where a name was, in the quote open
    there: a quoted "$1" outside quotes, $1 within double quotes, and within single quotes
    "$1" between the quotes closed and reopened."""
    if quote == '"':
        return f"${number}"
    if quote == "'":
        return f"{_MARK}'\"${number}\"'{_MARK}"
    return f'"${number}"'


def _end_options(script: str) -> str:
    """``script`` with '--' before the first parameter that directly follows an option
    ('wc -l "$1"' becomes 'wc -l -- "$1"'), so that a name like '-rf' stays a name. Not after
    echo, which would print the '--'; not when the script has a '--' already."""
    if re.search(r"(^|\s)--(\s|$)", script):
        return script
    return re.sub(r'((?<!echo)\s-[^\s-]\S*\s+)("\$\d)', r"\1-- \2", script, count=1)


def _code_with(code: str, references: Mapping[str, str]) -> str | None:
    """``code`` with each name that is a whole string literal ('{path}' or "{path}") replaced
    by its reference; None if a name stands anywhere else, where a reference would need
    string operations this does not guess at."""
    parts = parse_template(code)
    pieces = [_piece(part) for part in parts]
    for index, part in enumerate(parts):
        if isinstance(part, str) and part in references:
            quote = pieces[index - 1][-1:] if index else ""
            after = pieces[index + 1][:1] if index + 1 < len(pieces) else ""
            if quote not in ("'", '"') or after != quote:
                return None
            pieces[index - 1] = pieces[index - 1][:-1]
            pieces[index + 1] = pieces[index + 1][1:]
            pieces[index] = references[part]
    return "".join(pieces)


# --- Shell operators -----------------------------------------------------------------------


def _operator_warnings(argv: Sequence[str], scripts: set[int]) -> list[tuple[int, str]]:
    """A warning for each shell operator that is an element of its own, outside any code."""
    exempt = scripts | _find_terminators(argv) | _option_values(argv)
    operators = [i for i, arg in enumerate(argv) if arg in _SHELL_OPERATORS and i not in exempt]
    if not operators:
        return []
    found = _program(argv)
    program = argv[found[0] if found else 0]
    shell_form = _shell_form(argv, set(operators))
    # Past the script, a shell form has arguments only when there are names to pass.
    passing = ", pass names as arguments" if len(shell_form) > 3 else ""
    return [
        (
            index,
            f"{argv[index]!r} is passed to {program} as an argument: commands run without a "
            f"shell, so it does not {_SHELL_OPERATORS[argv[index]]}. To use a shell{passing}: "
            f"{_flow(shell_form)}",
        )
        for index in operators
    ]


def _find_terminators(argv: Sequence[str]) -> set[int]:
    """Indices of the ';' elements that end a find -exec."""
    terminators: set[int] = set()
    in_exec = False
    for index, arg in enumerate(argv):
        if arg in _FIND_EXEC:
            in_exec = True
        elif in_exec and arg == ";":
            terminators.add(index)
            in_exec = False
    return terminators


def _option_values(argv: Sequence[str]) -> set[int]:
    """Indices of the elements that directly follow an option element alone."""
    return {index for index in range(1, len(argv)) if _OPTION.fullmatch(argv[index - 1])}


def _shell_form(argv: Sequence[str], operators: set[int]) -> list[str]:
    """``argv`` as the shell command it looks like, with the names passed as arguments:
    [/bin/sh, -c, '/usr/bin/sort "$1" | /usr/bin/head', sh, "{path}"]."""
    names = list(dict.fromkeys(name for arg in argv for name in _names_in(arg)))
    numbers = {name: n for n, name in enumerate(names, 1)}
    words = [arg if i in operators else _shell_word(arg, numbers) for i, arg in enumerate(argv)]
    arguments = ["sh", *("{" + name + "}" for name in names)] if names else []
    return ["/bin/sh", "-c", " ".join(words), *arguments]


def _shell_word(template: str, numbers: Mapping[str, int]) -> str:
    """One argv element as a shell word, each name read from its positional parameter."""
    word = "".join(
        f'"${numbers[part]}"'
        if isinstance(part, str) and part in numbers
        else shlex.quote(_piece(part))
        for part in parse_template(template)
    )
    return word or "''"


# --- Text ----------------------------------------------------------------------------------

# A YAML scalar that needs no quotes: what YAML reads back as this same string.
_YAML_PLAIN = re.compile(r"(--?)?[A-Za-z/_][\w./=+@%-]*|--")
_YAML_WORDS = frozenset({"y", "n", "yes", "no", "on", "off", "true", "false", "null"})


def _piece(part: bytes | str) -> str:
    """A part of a parsed template as template text again: braces doubled, a placeholder in
    braces."""
    if isinstance(part, str):
        return "{" + part + "}"
    return os.fsdecode(part).replace("{", "{{").replace("}", "}}")


def _names_in(template: str) -> list[str]:
    """The name placeholders in ``template``, each once, in order."""
    parts = parse_template(template)
    names = (part for part in parts if isinstance(part, str) and part in _NAME_PLACEHOLDERS)
    return list(dict.fromkeys(names))


def _listing(items: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _flow(argv: Sequence[str]) -> str:
    """``argv`` as a YAML flow sequence, the way a rule would write it."""
    return "[" + ", ".join(_scalar(arg) for arg in argv) + "]"


def _scalar(text: str) -> str:
    """``text`` as a YAML scalar: plain where it can be, else single-quoted where that needs
    no escapes, else double-quoted with escapes (which JSON's are)."""
    if _YAML_PLAIN.fullmatch(text) and text.lower() not in _YAML_WORDS:
        return text
    if text.isprintable() and "'" not in text and ('"' in text or "\\" in text):
        return f"'{text}'"
    return json.dumps(text, ensure_ascii=False)
