"""Documentation stays useful: every public name has a docstring; README and docs are linked."""

from __future__ import annotations

import importlib
import inspect
from pathlib import Path

import pytest

PUBLIC = [
    "batchcraft.ops.lact",
    "batchcraft.ops.norm",
    "batchcraft.nn",
    "batchcraft.models",
    "batchcraft.optim",
    "batchcraft.selection",
    "batchcraft.selection.colm",
    "batchcraft.graph",
    "batchcraft.data",
]
ROOT = Path(__file__).resolve().parents[1]


def _public_names():
    for modname in PUBLIC:
        mod = importlib.import_module(modname)
        for name in getattr(mod, "__all__", []):
            yield modname, name, getattr(mod, name)


@pytest.mark.parametrize(
    "modname,name,obj", list(_public_names()), ids=lambda x: x if isinstance(x, str) else ""
)
def test_public_name_has_docstring(modname, name, obj):
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.ismodule(obj)):
        return  # constants and type aliases carry no docstring of their own
    doc = inspect.getdoc(obj) or ""
    assert len(doc.strip()) >= 10, (
        f"{modname}.{name} needs a docstring (help() shows nothing useful)"
    )


def test_readme_shows_both_commands_and_links_every_doc_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "make run" in readme and "make test" in readme
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in readme, f"README does not link docs/{page.name}"
