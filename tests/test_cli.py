"""Smoke tests of the command line: exit codes and outputs."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from batchcraft.cli.main import _attach_subcommands, app

runner = CliRunner()
_attach_subcommands()


def _command_paths():
    import typer.main

    group = typer.main.get_command(app)
    paths = [[]]
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        paths.append([name])
        for sub in getattr(cmd, "commands", {}):
            paths.append([name, sub])
    return paths


@pytest.mark.parametrize("path", _command_paths(), ids=lambda p: " ".join(p) or "root")
def test_every_command_has_help(path):
    res = runner.invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Usage" in res.output


def test_info_without_peak():
    res = runner.invoke(app, ["info", "--no-peak"])
    assert res.exit_code == 0, res.output


def test_reproduce_list_names_experiments():
    res = runner.invoke(app, ["reproduce", "--list"])
    assert res.exit_code == 0


def test_reproduce_unknown_name_fails_clearly(tmp_path):
    res = runner.invoke(app, ["reproduce", "no-such-exp", "--out", str(tmp_path)])
    assert res.exit_code == 2


def test_bench_unknown_name_fails_clearly():
    res = runner.invoke(app, ["bench", "no-such-bench"])
    assert res.exit_code in (1, 2)


def _all_params():
    import typer.main

    group = typer.main.get_command(app)
    out = []

    def walk(cmd, path):
        for p in getattr(cmd, "params", []):
            if p.param_type_name == "option" and p.name not in ("help",):
                out.append((" ".join(path), p))
        for name, sub in getattr(cmd, "commands", {}).items():
            walk(sub, [*path, name])

    walk(group, [])
    return out


@pytest.mark.parametrize("where,param", _all_params(), ids=lambda x: getattr(x, "name", x))
def test_every_option_has_plain_help(where, param):
    text = getattr(param, "help", None) or ""
    assert text.strip(), f"{where} --{param.name} has no help text"
    assert "``" not in text and ":func:" not in text, f"{where} --{param.name}: rst markup"


def test_version_and_global_flags():
    from batchcraft import __version__

    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0 and __version__ in res.output
    res = runner.invoke(app, ["-q", "reproduce", "--list"])
    assert res.exit_code == 0
