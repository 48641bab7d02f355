"""Fuzzing the rules loader and ``watchd explain`` with hypothesis: 100,000 inputs in all.

Whatever the input, the loader returns a whole, valid configuration or raises watchd's own
ConfigError, located; it never crashes and never hands back part of a file. ``explain``
answers for any path bytes and any event name. The runs are derandomized: the same inputs
every time, so the suite is stable; each strategy's examples are counted.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from watchd.config.compile import compile_rules
from watchd.config.loader import Config, load
from watchd.core.events import EVENT_NAMES
from watchd.core.problems import ConfigError
from watchd.service.explain import explain


def fuzz(examples: int) -> settings:
    return settings(max_examples=examples, derandomize=True, deadline=None, database=None,
                    print_blob=True, suppress_health_check=list(HealthCheck))


KEYS = ["name", "paths", "events", "recursive", "include", "exclude", "kind", "debounce",
        "max_parallel", "on_busy", "ignore_own_writes", "enabled", "actions", "command",
        "timeout", "user", "cwd", "env", "webhook", "url", "secret_file", "retries", "headers",
        "settings", "workers", "queue_size", "log_level", "rules", "version", "allow_root_owner"]
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats()
           | st.sampled_from(["/tmp", "/bin/true", "{path}", "{nope}", "1s", "-5", "@owner",
                              "nobody", "close_write", "IN_CREATE", "*.csv", "!x", "queue",
                              "http://127.0.0.1:9/", "whsec_AAAA", "\x00", "\udcff", "{{"])
           | st.text(max_size=20))
documents = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)


def dump(document: object) -> str:
    return yaml.dump(document, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper),
                     allow_unicode=True)


def load_document(path: Path, document: object) -> None:
    try:
        text = dump(document)
    except (yaml.YAMLError, UnicodeEncodeError):
        return  # not a document YAML can write: nothing to load
    load_text(path, text.encode("utf-8", "surrogatepass"))


def load_text(path: Path, text: bytes) -> Config | None:
    path.write_bytes(text)
    try:
        config = load(path)
    except ConfigError as error:
        assert error.problems  # never an empty refusal
        for problem in error.problems:
            assert problem.line >= 1 and problem.column >= 1 and problem.message
        return None
    compile_rules(config)  # what loads also compiles: no half-valid config
    return config


def test_structured_documents(tmp_path):
    config = tmp_path / "rules.yaml"

    @fuzz(45_000)
    @given(documents)
    def check(document: object) -> None:
        load_document(config, document)

    check()


def test_almost_valid_rules(tmp_path):
    """Valid rules with one value replaced: the deepest paths through validation."""
    config = tmp_path / "rules.yaml"
    base = {"settings": {"workers": 2}, "rules": [{
        "name": "r", "paths": ["/tmp"], "events": ["close_write"], "recursive": True,
        "include": ["*.csv"], "debounce": "1s", "on_busy": "queue",
        "actions": [{"command": ["/bin/true", "{path}"], "timeout": "5s", "env": {"A": "b"}},
                    {"webhook": {"url": "http://127.0.0.1:9/", "retries": 2}}]}]}
    places = [("settings", "workers"), ("rules", 0, "name"), ("rules", 0, "paths"),
              ("rules", 0, "events"), ("rules", 0, "include"), ("rules", 0, "debounce"),
              ("rules", 0, "on_busy"), ("rules", 0, "actions", 0, "command"),
              ("rules", 0, "actions", 0, "timeout"), ("rules", 0, "actions", 0, "env"),
              ("rules", 0, "actions", 1, "webhook", "url"),
              ("rules", 0, "actions", 1, "webhook", "retries"), ("rules", 0, "actions", 1)]

    @fuzz(25_000)
    @given(st.sampled_from(places), documents)
    def check(place: tuple, value: object) -> None:
        document = copy.deepcopy(base)
        target = document
        for step in place[:-1]:
            target = target[step]
        target[place[-1]] = value
        load_document(config, document)

    check()


def test_raw_bytes(tmp_path):
    config = tmp_path / "rules.yaml"
    pieces = st.sampled_from([b"rules:", b"\n  - ", b"name: x", b"&a ", b"*a", b"[", b"]",
                              b"{", b"}", b": ", b"!!python/object:os.system", b"\xff",
                              b"\t", b"---", b"...", b"%YAML 1.1", b"? ", b"'", b'"', b"#"])

    @fuzz(20_000)
    @given(st.lists(pieces | st.binary(max_size=8), max_size=24).map(b"".join))
    def check(text: bytes) -> None:
        load_text(config, text)

    check()


def test_explain_answers_for_any_path_and_event(tmp_path):
    config = tmp_path / "rules.yaml"
    config.write_text(f"""\
rules:
  - name: tree
    paths: [{tmp_path}]
    recursive: true
    include: ["*.csv", "/top/**"]
    exclude: ["*.tmp"]
    actions: [{{command: [/bin/echo, "{{path}}", "{{name}}", "{{src_path}}"]}}]
  - name: dirs
    paths: [{tmp_path}/d]
    kind: dir
    events: [create]
    actions: [{{command: [/bin/true]}}]
""")
    ruleset = compile_rules(load(config))
    root = os.fsencode(tmp_path)

    @fuzz(10_000)
    @given(st.binary(max_size=40).filter(lambda b: b"\0" not in b), st.booleans(),
           st.sampled_from([None, *EVENT_NAMES]))
    def check(name: bytes, is_dir: bool, event: str | None) -> None:
        lines = list(explain(ruleset, os.path.normpath(root + b"/" + name), is_dir, event))
        assert lines and all("\n" not in line for line in lines)

    check()
