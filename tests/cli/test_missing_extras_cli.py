"""A missing optional package is one error line naming the extra to install (exit 2), found
before any work; never a traceback, and brackets in the message survive the console markup."""

from __future__ import annotations

import sys

import pytest
from typer.testing import CliRunner

from batchcraft._capabilities import MissingExtraError, has_module, require
from batchcraft.cli.main import _attach_subcommands, app

runner = CliRunner()
_attach_subcommands()


@pytest.fixture
def without(monkeypatch):
    """``without("sklearn")`` makes a module look uninstalled for this test."""

    def hide(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)  # import and find_spec see "absent"
        has_module.cache_clear()

    yield hide
    has_module.cache_clear()


def test_require_raises_an_import_error_naming_the_extra(without):
    without("sklearn")
    with pytest.raises(MissingExtraError, match=r'pip install "batchcraft\[sklearn\]"'):
        require("sklearn", "the digits dataset")
    assert issubclass(MissingExtraError, ImportError)


@pytest.mark.parametrize(
    ("missing", "args", "extra"),
    [
        ("sklearn", ["selection", "hard-batches", "--dataset", "digits"], "batchcraft[sklearn]"),
        ("matplotlib", ["reproduce", "adan"], "batchcraft[plot]"),
    ],
    ids=["hard-batches digits", "reproduce"],
)
def test_missing_extra_is_one_line(without, tmp_path, monkeypatch, missing, args, extra):
    monkeypatch.chdir(tmp_path)
    without(missing)
    res = runner.invoke(app, args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    assert extra in lines[0], res.output  # the [extra] is printed, not eaten as markup
    assert not (tmp_path / "reports").exists()  # failed before any work
