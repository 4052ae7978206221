"""The shared console prints text as given: bracketed prefixes are not eaten as style tags."""

from __future__ import annotations

from batchcraft.experiments.base import ExperimentContext
from batchcraft.utils.log import console
from batchcraft.utils.progress import _Task


def test_experiment_log_lines_keep_their_bracketed_name(tmp_path, capsys):
    ExperimentContext(name="lact-lm", quick=True, out_dir=tmp_path, seeds=[0]).log("a [b] c")
    assert "[lact-lm] a [b] c" in capsys.readouterr().err


def test_plain_progress_lines_keep_their_bracketed_description(capsys):
    task = _Task(None, None, 2, "lact-lm: text")
    task.advance(2, loss=1.5)  # the last step always prints
    assert "[lact-lm: text] 2/2" in capsys.readouterr().err


def test_styled_lines_still_render_when_asked(capsys):
    console.print("[red]error:[/red] x", markup=True)
    assert "error: x" in capsys.readouterr().err
