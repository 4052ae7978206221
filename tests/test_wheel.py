"""The built wheel works on its own: installed into a fresh virtual environment and run from an
unrelated folder, `batchcraft` finds its commands, benchmarks and experiments inside the package
(not in the current folder), trains, and writes nothing into the folder it was started from
unless asked to.

The wheel is built offline from a copy of the sources (``python -m build --no-isolation``, or
``pip wheel`` without the ``build`` package). The new environment has no pip of its own and sees
the test interpreter's installed packages (torch, ...) through a ``.pth`` line placed after its
own site-packages, so nothing is downloaded and the wheel's copy of batchcraft is the one imported.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: int = 300) -> str:
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} -> {proc.returncode}\n{out[-3000:]}"
    return out


def _build_wheel(tmp: Path) -> Path:
    """Build from a clean copy of the sources, so the checkout gets no build/ or egg-info."""
    if importlib.util.find_spec("setuptools") is None:
        pytest.skip("setuptools is not installed (pip install -e '.[dev]' brings it)")
    src = tmp / "src-copy"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.pyc")
    shutil.copytree(ROOT / "src", src / "src", ignore=ignore)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, src / name)
    dist = tmp / "dist"
    env = {**os.environ, "PIP_NO_INPUT": "1"}
    if importlib.util.find_spec("build") is not None:
        cmd = [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(dist)]
    else:
        cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
               "--no-index", "-w", str(dist), "."]  # fmt: skip
    _run(cmd, src, env)
    wheels = list(dist.glob("batchcraft-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


def _venv_with_wheel(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    purelib = subprocess.run(
        [str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True, text=True, check=True,
    ).stdout.strip()  # fmt: skip
    # the test interpreter's packages, after the venv's own (a path line: no .pth files there run,
    # so an editable install of the checkout is not picked up)
    ours = [
        p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()
    ]
    Path(purelib, "zz_parent_site.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index",
          "--disable-pip-version-check", "-q", str(wheel)], tmp, dict(os.environ))  # fmt: skip
    return py


# ---------------------------------------------------------------- fast checks (every `make test`)
def test_benchmarks_are_a_package_that_setuptools_ships():
    """The benchmarks are modules of ``batchcraft.benchmarks``, found by the wheel's package scan."""
    import setuptools

    found = setuptools.find_packages(str(ROOT / "src"))
    assert "batchcraft.benchmarks" in found, found
    spec = importlib.util.find_spec("batchcraft.benchmarks.bench_adan")
    assert spec is not None and spec.origin is not None
    assert Path(spec.origin).parent == ROOT / "src" / "batchcraft" / "benchmarks"
    assert not list((ROOT / "benchmarks").glob("*.py")), "benchmark scripts outside the package"


def test_bench_list_works_from_any_folder(tmp_path, monkeypatch):
    """No benchmarks folder in sight: the registry still finds every benchmark in the package."""
    from typer.testing import CliRunner

    from batchcraft import registry
    from batchcraft.cli.main import app

    monkeypatch.delenv(registry.BENCHMARKS_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    specs = registry.benchmarks()
    assert {"adan", "lact-op", "gather", "hard-batches", "lact-gpu"} <= set(specs)
    for spec in specs.values():
        assert spec.fn.__module__.startswith("batchcraft.benchmarks."), spec
    res = CliRunner().invoke(app, ["bench", "--list"])
    assert res.exit_code == 0, res.output
    listed = {line.split()[0] for line in res.output.splitlines() if line.strip()}
    assert set(specs) <= listed, res.output
    assert not list(tmp_path.iterdir()), "listing wrote into the current folder"


def test_extra_benchmark_folder_from_the_environment(tmp_path, monkeypatch):
    """``$BATCHCRAFT_BENCHMARKS`` adds a folder of one's own ``bench_*.py`` scripts."""
    from batchcraft import registry

    monkeypatch.setattr(registry, "_BENCHMARKS", dict(registry._BENCHMARKS))
    monkeypatch.delitem(sys.modules, "_batchcraft_bench_bench_wheeltest_extra", raising=False)
    (tmp_path / "bench_wheeltest_extra.py").write_text(
        "from batchcraft.registry import register_benchmark\n"
        "@register_benchmark('wheeltest-extra', description='demo')\n"
        "def run(quick=False):\n    return {'rows': []}\n"
    )
    monkeypatch.setenv(registry.BENCHMARKS_ENV, str(tmp_path))
    try:
        specs = registry.benchmarks()
    finally:
        sys.modules.pop("_batchcraft_bench_bench_wheeltest_extra", None)
    assert "wheeltest-extra" in specs and "adan" in specs
    monkeypatch.setenv(registry.BENCHMARKS_ENV, str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="missing"):
        registry.benchmarks()


# ------------------------------------------------------------ the built wheel in a fresh venv
# Build + install is ~10 s; each command run from it ~4 s (torch import). What the issue asks of
# the wheel (help, bench --list, one tiny training run) stays in the default run, as the only test
# of the packaging itself; the rest is marked slow.
@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    tmp = tmp_path_factory.mktemp("wheel")
    py = _venv_with_wheel(tmp, _build_wheel(tmp))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "BATCHCRAFT_"))}
    env.update(OMP_NUM_THREADS="1", BATCHCRAFT_CACHE_DIR=str(tmp / "cache"), PIP_NO_INPUT="1")
    elsewhere = tmp / "elsewhere"  # an unrelated working folder
    elsewhere.mkdir()
    return py, elsewhere, env


def test_wheel_imports_its_own_copy(installed):
    py, cwd, env = installed
    code = "import batchcraft.benchmarks as b; print(b.__file__)"
    out = _run([str(py), "-c", code], cwd, env)
    assert str(py.parents[1]) in out and str(ROOT / "src") not in out, out


def test_cli_help_and_bench_list_from_any_folder(installed):
    py, cwd, env = installed
    exe = str(py.with_name("batchcraft"))
    assert "Usage" in _run([exe, "--help"], cwd, env)
    listing = _run([exe, "bench", "--list"], cwd, env)  # benchmarks ship inside the package
    for name in ("adan", "lact-op", "hard-batches", "gather", "lact-gpu", "norm"):
        assert f"{name} " in listing, listing
    assert not list(cwd.iterdir()), "the CLI wrote into the current folder"


def test_tiny_training_run_from_the_wheel(installed):
    py, cwd, env = installed
    exe = str(py.with_name("batchcraft"))
    args = ["lm", "train", "--steps", "2", "--context", "16", "--batch", "2",
            "--max-bytes", "20000", "--out", "run"]  # fmt: skip
    out = _run([exe, *args], cwd, env)
    assert (cwd / "run" / "checkpoint" / "config.json").is_file(), out


@pytest.mark.slow
def test_version_experiments_and_generation_from_the_wheel(installed):
    py, cwd, env = installed
    exe = str(py.with_name("batchcraft"))
    assert "batchcraft 0.1.0" in _run([exe, "--version"], cwd, env)
    experiments = _run([exe, "reproduce", "--list"], cwd, env)
    for name in ("adan", "lact-lm", "rphgnn", "zero-copy"):
        assert f"{name} " in experiments, experiments
    if not (cwd / "run" / "checkpoint").is_dir():
        test_tiny_training_run_from_the_wheel(installed)
    gen = _run([exe, "lm", "generate", "--checkpoint", "run/checkpoint", "--prompt", "def ",
                "--max-new-tokens", "5"], cwd, env)  # fmt: skip
    assert gen.strip(), gen


@pytest.mark.slow
def test_a_benchmark_runs_from_the_wheel_and_writes_to_the_cache(installed):
    py, cwd, env = installed
    out = _run([str(py.with_name("batchcraft")), "bench", "norm", "--quick"], cwd, env)
    result = Path(env["BATCHCRAFT_CACHE_DIR"]) / "bench-results" / "norm.json"
    assert result.is_file(), out  # not ./benchmarks/results: cwd is no checkout
    assert json.loads(result.read_text())["rows"], out
    assert not (cwd / "benchmarks").exists(), "bench wrote into the current folder"
