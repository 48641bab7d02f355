"""The package's layout: each layer imports only those below it, and the vocabulary at the
bottom loads no schema, YAML or HTTP library."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "watchd"
# Bottom to top, as the README's layout lists them: each may import those before it.
LAYERS = ["core", "security", "schema", "source", "match", "ledger", "run", "actions", "outbox",
          "config", "metrics", "control", "service"]
UPWARD_ALLOWED = 3


def _layer(module: str) -> int:
    """A module's layer; the package's own ``__init__`` (its version) is below them all."""
    parts = module.split(".")
    return LAYERS.index(parts[1]) if len(parts) > 1 and parts[1] in LAYERS else -1


def _imports() -> list[tuple[str, str, int, str]]:
    """Every import of a watchd module: (importer, imported, line, the line's comment)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        module = module.removesuffix(".__init__")
        lines = path.read_text().splitlines()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("watchd"):
                before = lines[node.lineno - 2] if node.lineno > 1 else ""
                found.append((module, node.module or "", node.lineno, before.strip()))
    return found


def test_every_module_is_in_a_layer():
    modules = {path.relative_to(PACKAGE).parts[0] for path in PACKAGE.rglob("*.py")}
    assert modules - {"__init__.py", "__main__.py"} <= set(LAYERS)


def test_at_most_three_imports_point_upward_each_saying_why():
    upward = [(importer, imported, line, comment) for importer, imported, line, comment
              in _imports() if _layer(imported) > _layer(importer) >= 0]
    assert len(upward) <= UPWARD_ALLOWED, upward
    for importer, imported, line, comment in upward:
        assert comment.startswith("#") and "upward" in comment, (
            f"{importer}:{line} imports {imported} from a higher layer without a comment "
            "(on the line before) saying why it points upward")


def _loaded_by(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    return set(out.split())


def test_the_vocabulary_loads_no_schema_yaml_or_http_library():
    loaded = _loaded_by("watchd.core.rules, watchd.core.job, watchd.core.stats, "
                        "watchd.core.actions, watchd.match.matcher")
    assert not {"pydantic", "yaml", "urllib3", "watchd.config"} & loaded


def test_an_action_kind_loads_neither_the_loader_nor_yaml_nor_another_kind():
    loaded = _loaded_by("watchd.actions.command")
    assert not {"yaml", "urllib3", "watchd.config.loader", "watchd.source.notifier"} & loaded
