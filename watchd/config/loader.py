"""Read the rules file and its drop-ins: YAML (safe), validated, every error with file:line:column.

Nothing here is partial: ``load`` returns a complete, validated ``Config`` or
raises ``ConfigError`` listing every problem found in every file.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pydantic
import yaml

from watchd.actions.kind import Severity
from watchd.actions.registry import KINDS, kind_of
from watchd.config.schema import DropIn, RulesFile, Settings, state_dir_of
from watchd.config.schema import Rule as RuleModel
from watchd.core.problems import ConfigError, Problem
from watchd.schema.fields import TRUSTED_PROGRAMS
from watchd.security.trust import Untrusted, read_trusted

DEFAULT_CONFIG = Path("/etc/watchd/rules.yaml")
MAX_FILE_BYTES = 1024 * 1024
MAX_DEPTH = 32  # the rules format needs 6 levels
# libyaml's parser when PyYAML was built with it: a 1 MiB file parses in a tenth of the time.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
SKIPPED_SUFFIXES = (".dpkg-old", ".dpkg-new", ".dpkg-dist", "~", ".swp")


@dataclass(frozen=True)
class SourcedRule:
    """A validated rule and where it was written."""

    model: RuleModel
    file: str
    line: int
    column: int
    index: int = 0  # its place in its file's ``rules``
    path_places: tuple[tuple[int, int], ...] = ()  # line and column of each of its paths


@dataclass(frozen=True)
class Config:
    """A fully validated set of rules: the main file's settings and every file's rules."""

    path: str
    settings: Settings
    rules: tuple[SourcedRule, ...]
    files: tuple[str, ...] = field(default=())
    warnings: tuple[Problem, ...] = field(default=())


def drop_in_files(main: Path) -> list[Path]:
    """``rules.d/*.yaml`` beside the main file, in name order, package-manager leftovers skipped."""
    directory = main.parent / "rules.d"
    if not directory.is_dir():
        return []
    return sorted(
        entry
        for entry in directory.iterdir()
        if entry.name.endswith(".yaml") and not entry.name.endswith(SKIPPED_SUFFIXES)
    )


def load(path: Path | str = DEFAULT_CONFIG) -> Config:
    """Load and validate the main rules file and its drop-ins, all or nothing."""
    main = Path(path)
    problems: list[Problem] = []
    try:
        drop_ins = drop_in_files(main)
    except OSError as error:
        drop_ins = []
        problems.append(Problem(str(main.parent / "rules.d"), 1, 1,
                                f"cannot list: {error.strerror}"))
    # One look per program for the whole load, however many actions name it.
    context: dict[str, set[str]] = {TRUSTED_PROGRAMS: set()}
    names: list[_RuleName] = []
    main_file = _validated(main, RulesFile, problems, context, names)
    rules = list(main_file.rules) if main_file else []
    warnings = list(main_file.warnings) if main_file else []
    for drop_in in drop_ins:
        validated = _validated(drop_in, DropIn, problems, context, names)
        rules.extend(validated.rules if validated else ())
        warnings.extend(validated.warnings if validated else ())
    problems.extend(_duplicate_names(names))
    if problems or main_file is None:
        order = {str(file): index for index, file in enumerate([main, *drop_ins])}
        problems.sort(key=lambda problem: (order.get(problem.file, -1), problem.line,
                                           problem.column))
        raise ConfigError(problems)
    assert isinstance(main_file.model, RulesFile)
    settings = main_file.model.settings
    return Config(str(main), settings, tuple(rules), tuple(str(p) for p in [main, *drop_ins]),
                  tuple(warnings))


def state_dir_in(path: Path | str = DEFAULT_CONFIG) -> str:
    """The state directory the main file's settings name (``state_dir_of``), that setting
    alone validated, whatever the rest holds: where the ledger is, for reading it when a rule
    or a setting has errors (the dead letters a broken rule made must still be seen).
    ConfigError if the file or that setting cannot be read."""
    document = _read_document(Path(path))
    data = document.data.get("settings", {}) if isinstance(document.data, dict) else {}
    given = {"state_dir": data["state_dir"]} if isinstance(data, dict) and "state_dir" in data \
        else {}
    try:
        return state_dir_of(Settings.model_validate(given))
    except pydantic.ValidationError as error:
        raise ConfigError([Problem(document.file, 1, 1, f"settings: {error}")]) from None


@dataclass(frozen=True)
class _ValidatedFile:
    model: RulesFile | DropIn
    rules: tuple[SourcedRule, ...]
    warnings: tuple[Problem, ...]


@dataclass(frozen=True)
class _RuleName:
    """A rule's name as written, valid file or not: duplicates are told whatever else is wrong."""

    name: str
    file: str
    line: int
    column: int


class _Document:
    """A YAML document's data together with its node tree, for locating errors."""

    def __init__(self, file: str, node: yaml.Node | None, data: Any,
                 duplicates: list[Problem]) -> None:
        self.file = file
        self.node = node
        self.data = data
        self.duplicates = duplicates  # keys given twice: told, and the last one taken

    def scalar(self, loc: tuple[int | str, ...]) -> str | None:
        """The text of the scalar that ``loc`` names, as written; None if there is none."""
        node = self.node
        for step in loc:
            child = _child(node, step) if node is not None else None
            if child is None:
                return None
            node = child[1]
        return node.value if isinstance(node, yaml.ScalarNode) else None

    def locate(self, loc: tuple[int | str, ...], at_key: bool = False) -> tuple[int, int]:
        """Line and column (1-based) of the node that ``loc`` names, or of its nearest parent."""
        node = self.node
        if node is None:
            return 1, 1
        mark = node.start_mark
        for depth, step in enumerate(loc, 1):
            child = _child(node, step)
            if child is None:
                break
            key_node, node = child
            mark = key_node.start_mark if (at_key and depth == len(loc)) else node.start_mark
        return mark.line + 1, mark.column + 1


def _child(node: yaml.Node, step: int | str) -> tuple[yaml.Node, yaml.Node] | None:
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == str(step):
                return key_node, value_node
    elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
        return node.value[step], node.value[step]
    return None


def _read_document(path: Path) -> _Document:
    """Parse one file safely; a ConfigError for anything unreadable or not YAML."""
    file = str(path)
    try:
        raw = read_trusted(file, MAX_FILE_BYTES, "rules file")
    except (Untrusted, OSError) as error:
        raise ConfigError([Problem(file, 1, 1, str(error))]) from None
    if len(raw) > MAX_FILE_BYTES:
        raise ConfigError([Problem(file, 1, 1, f"larger than {MAX_FILE_BYTES} bytes")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise ConfigError([Problem(file, line, 1, "not valid UTF-8")]) from None
    loader = None
    try:
        _check_structure(file, text)
        loader = _LOADER(text)
        node = loader.get_single_node()
        duplicates = _duplicate_keys(file, node) if node is not None else []
        data = loader.construct_document(node) if node is not None else None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(filter(None, [error.context, error.problem]))
        if mark is not None and text[mark.index : mark.index + 1] == "\t":
            message = "a tab: indent with spaces (YAML does not allow tabs there)"
        elif "alias" in (error.context or ""):
            message += f"; {_QUOTE_STAR}"
        raise ConfigError([Problem(file, line, column, f"YAML: {message}")]) from None
    except yaml.YAMLError as error:
        raise ConfigError([Problem(file, 1, 1, f"YAML: {error}")]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return _Document(file, node, data, duplicates)


def _check_structure(file: str, text: str) -> None:
    """Refuse what could make composing the document costly, before composing it.

    Aliases could expand into a billion nodes from a few bytes, and deep nesting could
    exhaust the stack; a rules file needs neither. The event stream is read flat.
    """
    depth = 0
    for event in yaml.parse(text, Loader=_LOADER):
        problem = None
        if isinstance(event, yaml.AliasEvent):
            problem = f"YAML aliases (*name) are not allowed in a rules file; {_QUOTE_STAR}"
        elif getattr(event, "anchor", None) is not None:
            problem = "YAML anchors (&name) are not allowed in a rules file"
        elif isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                problem = f"nested deeper than {MAX_DEPTH} levels"
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1
        if problem:
            line, column = (event.start_mark.line, event.start_mark.column) if event.start_mark \
                else (0, 0)
            raise ConfigError([Problem(file, line + 1, column + 1, problem)])


def _duplicate_keys(file: str, node: yaml.Node) -> list[Problem]:
    found = []
    pending = [node]
    while pending:
        current = pending.pop()
        if isinstance(current, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in current.value:
                key = str(key_node.value)
                if key in seen:
                    mark = key_node.start_mark
                    found.append(Problem(file, mark.line + 1, mark.column + 1,
                                         f"duplicate key {key!r}"))
                seen.add(key)
                pending.append(value_node)
        elif isinstance(current, yaml.SequenceNode):
            pending.extend(current.value)
    return found


def _validated(
    path: Path, model: type[RulesFile] | type[DropIn], problems: list[Problem],
    context: dict[str, Any], names: list[_RuleName],
) -> _ValidatedFile | None:
    """The file, validated, its rules located; None (``problems`` extended) if it is invalid.
    ``names`` gets its rules' names in any case."""
    try:
        document = _read_document(path)
    except ConfigError as error:
        problems.extend(error.problems)
        return None
    problems.extend(document.duplicates)
    data = {} if document.data is None else document.data
    if not isinstance(data, dict):
        problems.append(Problem(document.file, *document.locate(()), "the file must be a mapping"))
        return None
    names.extend(_rule_names(document, data.get("rules")))
    # A file with a duplicate key is validated all the same, for its other errors.
    validated = _validate(document, model, data, problems, context)
    if validated is None or document.duplicates:
        return None
    located = _located(document, validated)
    errors = [problem for problem in located.warnings if not problem.warning]
    problems.extend(errors)
    return None if errors else located


def _validate(document: _Document, model: type[RulesFile] | type[DropIn], data: dict[str, Any],
              problems: list[Problem], context: dict[str, Any]) -> RulesFile | DropIn | None:
    try:
        validated = model.model_validate(data, context=context)
    except pydantic.ValidationError as error:
        problems.extend(_problem(document, detail, model) for detail in error.errors())
        problems.extend(problem for problem in _findings_of_valid_rules(document, data, context)
                        if not problem.warning)
        return None
    return validated


def _findings_of_valid_rules(document: _Document, data: dict[str, Any],
                             context: dict[str, Any]) -> Iterator[Problem]:
    """The findings of each rule valid on its own, in a file that is not: every error is told
    at once, not an action's only once the other rules are fixed."""
    rules = data.get("rules")
    for index, rule in enumerate(rules if isinstance(rules, list) else ()):
        try:
            valid = RuleModel.model_validate(rule, context=context)
        except pydantic.ValidationError:
            continue  # its own errors are told already
        yield from _findings(document, [(index, valid)])


def _located(document: _Document, validated: RulesFile | DropIn) -> _ValidatedFile:
    rules = tuple(
        SourcedRule(rule, document.file, *document.locate(("rules", index)), index,
                    tuple(document.locate(("rules", index, "paths", j))
                          for j in range(len(rule.paths))))
        for index, rule in enumerate(validated.rules)
    )
    return _ValidatedFile(validated, rules,
                          tuple(_findings(document, enumerate(validated.rules))))


_QUOTE_STAR = 'a value that starts with * (a pattern like *.csv) must be quoted: "*.csv"'


def _findings(document: _Document, rules: Iterable[tuple[int, RuleModel]]) -> Iterator[Problem]:
    """What each action's kind finds in valid rules (each with its place in the file),
    located: errors its schema cannot tell, what is risky (commands open to injection), what
    this machine cannot run."""
    for index, rule in rules:
        for step, action in enumerate(rule.actions):
            for finding in kind_of(action).checks(action, rule.batch is not None):
                loc = ("rules", index, "actions", step, *finding.where)
                yield Problem(document.file, *document.locate(loc), f"{_dotted(loc)}: "
                              f"{finding.message}", warning=finding.severity != Severity.ERROR,
                              refused_by_daemon=finding.severity == Severity.REFUSED_HERE)


def _action_keys() -> set[str]:
    """Every key an action of any kind may hold, its own kind's key among them."""
    keys = set()
    for kind in KINDS:
        for name, info in kind.model.model_fields.items():
            keys.add(name)
            inner = info.annotation
            if isinstance(inner, type) and issubclass(inner, pydantic.BaseModel):
                keys.update(inner.model_fields)
    return keys


_KEYS = sorted({name for model in (RulesFile, DropIn, Settings, RuleModel)
                for name in model.model_fields} | _action_keys())


def _did_you_mean(key: object) -> str:
    close = difflib.get_close_matches(str(key), _KEYS, n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _problem(document: _Document, detail: Any, model: type[pydantic.BaseModel]) -> Problem:
    loc = tuple(step for step in detail["loc"] if isinstance(step, int) or not _is_tag(step))
    kind = detail["type"]
    at_key = kind == "extra_forbidden" or detail["loc"][-1:] == ("[key]",)
    where = _dotted(loc)
    if kind == "extra_forbidden":
        key = loc[-1] if loc else "?"
        hint = ""
        if model is DropIn and key == "settings":
            hint = " (drop-ins hold only 'rules'; settings belong in the main file)"
        message = f"unknown key {key!r}{hint or _did_you_mean(key)}"
        where = _dotted(loc[:-1])
    elif kind == "missing":
        message = f"missing required key {loc[-1]!r}"
        where = _dotted(loc[:-1])
    else:
        message = str(detail["msg"]).removeprefix("Value error, ") + _hint(document, detail, loc)
    line, column = document.locate(loc, at_key)
    return Problem(document.file, line, column, f"{where}: {message}" if where else message)


def _hint(document: _Document, detail: Any, loc: tuple[int | str, ...]) -> str:
    """What the admin most likely meant, for errors whose cause is not in pydantic's words."""
    value = detail.get("input")
    if detail["type"] == "string_type" and isinstance(value, bool | int | float):
        written = document.scalar(loc)
        return (f": YAML read {written} as {value!r}; quote it (\"{written}\") to mean the "
                "text" if written else "")
    if detail["type"] == "action_kind" and isinstance(value, dict):
        return next((_did_you_mean(key) for key in value if _did_you_mean(key)), "")
    return ""


_TYPE_TAGS = frozenset({"bool", "float", "int", "none", "str", "dict", "list"})


def _is_tag(step: str) -> bool:
    # pydantic puts validator and union-member names into error locations; they are not YAML keys.
    return "[" in step or step.startswith("function-") or step in _TYPE_TAGS


def _dotted(loc: tuple[int | str, ...]) -> str:
    text = ""
    for step in loc:
        text += f"[{step}]" if isinstance(step, int) else (f".{step}" if text else step)
    return text


def _rule_names(document: _Document, rules: Any) -> Iterator[_RuleName]:
    for index, rule in enumerate(rules if isinstance(rules, list) else ()):
        if isinstance(rule, dict) and isinstance(rule.get("name"), str):
            yield _RuleName(rule["name"], document.file, *document.locate(("rules", index)))


def _duplicate_names(names: list[_RuleName]) -> list[Problem]:
    first: dict[str, _RuleName] = {}
    problems = []
    for rule in names:
        earlier = first.setdefault(rule.name, rule)
        if earlier is not rule:
            problems.append(Problem(rule.file, rule.line, rule.column,
                                    f"duplicate rule name {rule.name!r} "
                                    f"(first at {earlier.file}:{earlier.line}:{earlier.column})"))
    return problems
