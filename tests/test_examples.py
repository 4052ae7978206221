"""Every script in examples/ runs with --tiny and does what it says (a loss falls, an accuracy
beats chance). The scripts run in-process (their ``main(argv)`` returns the figures they print),
in an empty folder, with real data hidden unless a test asks for it."""

from __future__ import annotations

import math
import runpy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
OPTIONAL = {"transformers", "peft", "sklearn", "torch_geometric", "matplotlib"}


def _lact_lm(r: dict[str, Any]) -> None:
    assert r["last_loss"] < r["first_loss"] - 0.5, r  # 20 steps take bytes well below 5.5 nats
    assert math.isfinite(r["val_loss"]) and r["val_loss"] < r["first_loss"], r


def _adan(r: dict[str, Any]) -> None:
    assert r["adan"] > 2 / r["classes"], r  # chance is 1 / classes
    assert 0 <= r["adamw"] <= 1, r


def _ln_lstm(r: dict[str, Any]) -> None:
    first, last = r["LayerNormLSTM"]
    assert last < first and last < math.log(2), r  # below chance (ln 2) after the tiny run


def _hard(r: dict[str, Any]) -> None:
    assert all(acc > 2 / r["classes"] for acc in r["accuracy"].values()), r


def _colm(r: dict[str, Any]) -> None:
    assert r["selections"] == 6, r  # one coreset per Trainer step
    assert r["after"] < r["before"], r


def _graph(r: dict[str, Any]) -> None:
    assert r["test"] > 2 / r["classes"], r


def _rphgnn(r: dict[str, Any]) -> None:
    assert r["micro"] > 0.5 and r["macro"] > 0.4, r  # 4 balanced classes: chance 0.25


CASES: dict[str, Callable[[dict[str, Any]], None]] = {
    "lact_lm": _lact_lm,
    "adan_vision": _adan,
    "ln_lstm": _ln_lstm,
    "hard_batches": _hard,
    "colm_hf": _colm,
    "graphsage_cora": _graph,
    "rphgnn_acm": _rphgnn,
}


def _run(name: str, argv: list[str]) -> dict[str, Any]:
    main = runpy.run_path(str(EXAMPLES / f"{name}.py"), run_name=f"example_{name}")["main"]
    try:
        return main(argv)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in OPTIONAL:
            pytest.skip(f"examples/{name}.py needs the optional package {exc.name}")
        raise


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BATCHCRAFT_DATA", raising=False)
    return tmp_path


def test_every_example_is_tested() -> None:
    scripts = {p.stem for p in EXAMPLES.glob("*.py")}
    assert scripts == set(CASES), (
        f"untested: {scripts - set(CASES)}, missing: {set(CASES) - scripts}"
    )
    for name in scripts:
        text = (EXAMPLES / f"{name}.py").read_text(encoding="utf-8")
        assert 'if __name__ == "__main__":\n    main()' in text, f"{name}.py is not runnable"
        assert "--tiny" in text, f"{name}.py has no --tiny switch"
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert all(f"({n}.py)" in readme for n in scripts), "examples/README.md must list every script"


@pytest.mark.parametrize("name", sorted(CASES))
def test_example_runs_tiny(name: str, in_tmp: Path) -> None:
    argv = ["--tiny"]
    if name in ("graphsage_cora", "rphgnn_acm", "adan_vision", "hard_batches"):
        empty = in_tmp / "no-data"
        empty.mkdir()
        argv += ["--data-dir", str(empty)]  # the synthetic / bundled fallback, on any machine
    CASES[name](_run(name, argv))


def test_graphsage_on_real_cora(data_dir: Path, in_tmp: Path) -> None:
    if not (data_dir / "cora.zip").is_file():
        pytest.skip(f"{data_dir / 'cora.zip'} not found")
    r = _run("graphsage_cora", ["--tiny", "--data-dir", str(data_dir)])
    assert r["dataset"] == "cora" and r["test"] > 0.6, r  # ~0.78 after 3 epochs


@pytest.mark.slow
def test_rphgnn_on_real_acm(data_dir: Path, in_tmp: Path) -> None:
    if not (data_dir / "ACM.zip").is_file():
        pytest.skip(f"{data_dir / 'ACM.zip'} not found")
    r = _run("rphgnn_acm", ["--tiny", "--data-dir", str(data_dir)])
    assert r["dataset"] == "ACM" and r["micro"] > 0.8, r
