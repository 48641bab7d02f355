"""The key reference in README.md and watchd.rules(5) is the schema's, and the schema says
what every key means."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from watchd.actions.registry import KINDS
from watchd.config.reference import (
    REGENERATE,
    TARGETS,
    Target,
    markdown,
    models,
    sections,
)


@pytest.mark.parametrize("target", TARGETS, ids=lambda target: target.path.name)
def test_the_reference_is_what_the_schema_makes(target):
    text = target.path.read_text()
    assert target.spliced(text) == text, (
        f"{target.path.name}'s key reference is stale: run .venv/bin/{REGENERATE}")


def test_every_field_has_a_description():
    missing = [f"{model.__module__}.{model.__name__}.{name}"
               for model in models() for name, field in model.model_fields.items()
               if not (field.description or "").strip()]
    assert not missing, "fields without a description: " + ", ".join(missing)


def test_every_key_of_every_model_is_in_the_reference():
    documented = {key.name for section in sections() for key in section.keys}
    for model in models():
        for name in model.model_fields:
            assert name in documented or any(name == kind.key for kind in KINDS), name


def test_every_action_kind_has_its_section():
    titles = [section.title for section in sections()]
    for kind in KINDS:
        assert f"{kind.key.upper()} ACTIONS" in titles


def test_the_reference_names_each_default_and_the_required_keys():
    text = markdown()
    assert "| `stop_grace` | duration | `10s` |" in text
    assert "| `kind` | `file`, `dir`, `symlink`, `special` or `any`, or a list of them | " \
        "`[file, dir]` |" in text
    assert "| `name` | string, matching `^[A-Za-z0-9_.-]+$`, at most 128 characters | " \
        "required |" in text


def test_only_the_text_between_the_markers_is_rewritten(tmp_path: Path):
    path = tmp_path / "doc.md"
    target = Target(path, "<!-- keys:begin -->", "<!-- keys:end -->", lambda: "new\n")
    text = "# head\n<!-- keys:begin -->\nold\nlines\n<!-- keys:end -->\ntail\n"
    assert target.spliced(text) == "# head\n<!-- keys:begin -->\nnew\n<!-- keys:end -->\ntail\n"
    with pytest.raises(ValueError, match="markers"):
        target.spliced("# no markers\n")


@pytest.mark.skipif(shutil.which("groff") is None, reason="groff is not installed")
def test_the_man_page_renders_without_warnings():
    man_page = next(target.path for target in TARGETS if target.path.suffix == ".5")
    result = subprocess.run(["groff", "-man", "-ww", "-z", str(man_page)],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0
    assert result.stderr == ""
