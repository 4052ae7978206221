"""Documentation stays useful: every public name has a docstring; README and docs are linked; nothing
cites files outside the repository."""

from __future__ import annotations

import importlib
import inspect
import re
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


def test_relative_links_resolve():
    """Every relative link in README.md, docs/*.md and examples/README.md names a file that exists."""
    import re

    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "CHANGELOG.md"]
    pages += [*sorted((ROOT / "docs" / "api").glob("*.md")), ROOT / "examples" / "README.md"]
    link = re.compile(r"\]\(([^)\s]+)\)")
    for page in (p for p in pages if p.exists()):
        text = re.sub(r"```.*?```", "", page.read_text(encoding="utf-8"), flags=re.S)
        for target in link.findall(text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # external URL or an anchor in the same page
            path = (page.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)} links {target}, which does not exist"


def test_docs_site_builds_strict(tmp_path):
    """`make docs`: mkdocs + mkdocstrings build the pages and the API reference with no warning."""
    import importlib.util
    import subprocess
    import sys

    for mod in ("mkdocs", "mkdocstrings", "mkdocstrings_handlers.python"):
        try:
            found = importlib.util.find_spec(mod) is not None
        except ModuleNotFoundError:
            found = False
        if not found:
            pytest.skip(f"docs tooling absent ({mod}); pip install -e '.[docs]' (make test does)")
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0 and "WARNING" not in log, log[-4000:]
    models = (site / "api" / "models.html").read_text(encoding="utf-8")
    assert 'id="batchcraft.models.LaCTForCausalLM"' in models  # the reference has the docstrings
    assert "Prefill, then decode one token at a time" in models  # LaCTForCausalLM.generate's


# Citations of files that live outside the repository (the specs, the house rules, the seed) mean
# nothing to a reader of the repo or of the installed package.
OUTSIDE = re.compile(
    r"spec §|shared/specs|\.\./shared/seed|CONVENTIONS\.md|/work/"
    r"|\bspecs?\s+(?:section\s+\d|\d+\.\d|test\s+\d|table\b|target\b|``|\w+\.md)|\bspec's\b"
)


def _text_files() -> list[str]:
    files = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "BENCHMARKS.md"]
    for folder, pattern in (("src", "*.py"), ("src", "*.md"), ("docs", "*.md"), ("examples", "*")):
        files += sorted((ROOT / folder).rglob(pattern))
    return sorted(str(f.relative_to(ROOT)) for f in files if f.is_file() and f.suffix != ".pyc")


@pytest.mark.parametrize("rel", _text_files())
def test_no_reference_to_files_outside_the_repo(rel):
    text = (ROOT / rel).read_text(encoding="utf-8")
    hits = [
        f"{rel}:{n}: {line.strip()}"
        for n, line in enumerate(text.splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "cites files outside the repository:\n" + "\n".join(hits)


def test_outside_reference_pattern_catches_the_usual_forms():
    for bad in ("(spec §3)", "Spec: `shared/specs/x.md`", "spec section 2.2", "spec test 22",
                "(analytic, spec 2.3)", "spec layernorm.md §2", "the spec's order"):  # fmt: skip
        assert OUTSIDE.search(bad), bad
    for fine in ("importlib.util.find_spec(name)", "spec.loader", "--tokenizer SPEC",
                 "$BATCHCRAFT_DATA, else ../shared/data"):  # fmt: skip
        assert not OUTSIDE.search(fine), fine
