"""Every command that reads real data takes --data-dir; a folder that does not exist is one error
line naming it (exit 2), never a silent fall-back to another folder or to synthetic data."""

from __future__ import annotations

import pytest
import typer.main
from typer.testing import CliRunner

from batchcraft.cli.main import _attach_subcommands, app

runner = CliRunner()
_attach_subcommands()


COMMANDS = [
    ["reproduce", "adan"],
    ["selection", "hard-batches"],
    ["graph", "train", "--dataset", "cora"],
    ["graph", "rphgnn", "--dataset", "ACM"],
]


def _options(path: list[str]) -> set[str]:
    cmd = typer.main.get_command(app)
    for name in (w for w in path if not w.startswith("-")):
        cmd = getattr(cmd, "commands", {}).get(name, cmd)
    return {o for p in cmd.params for o in getattr(p, "opts", [])}


@pytest.mark.parametrize("args", COMMANDS, ids=lambda a: " ".join(a[:2]))
def test_missing_data_dir_is_one_line_naming_it(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no-such-folder"
    res = runner.invoke(app, [*args, "--data-dir", str(missing)])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "error:" in lines[0] and "no-such-folder" in lines[0], res.output
    assert not (tmp_path / "reports").exists()  # checked before any work


def test_every_data_command_has_data_dir():
    """The commands that read real data all offer --data-dir."""
    missing = [" ".join(a[:2]) for a in COMMANDS if "--data-dir" not in _options(a[:2])]
    assert not missing, f"no --data-dir on: {missing}"
