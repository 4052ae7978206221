"""Every code block in README.md and docs/*.md works as written.

* A ``python`` block is a complete program: it runs as-is in a fresh namespace, in an empty
  temporary folder, and must finish without error in seconds on a CPU.
* A block preceded by ``<!-- fragment -->`` (optionally ``<!-- fragment: why -->``) is an excerpt
  that cannot run alone (it needs a GPU, a large model, or the reader's own objects); it is not
  run, but Python fragments must still compile.
* Shell blocks (``bash``, ``sh``, ``console`` or no language): every ``batchcraft ...`` command
  must name an existing command and only options that command has; ``python X.py``, ``make X``
  and ``pytest PATH`` must name files and targets that exist. A shell block preceded by
  ``<!-- run -->`` is also executed command by command in an empty temporary folder.

docs/CONTRIBUTING.md describes the markers for writers.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"", "bash", "sh", "shell", "console", "text"}
# packages a block may need that the core install lacks: a block that needs a missing one skips
OPTIONAL = {"transformers", "peft", "torch_geometric", "matplotlib", "sklearn", "triton"}
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`]*)$")
_MARKER = re.compile(r"^<!--\s*(?P<kind>fragment|run)\b[^>]*-->\s*$")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str  # "", "fragment" or "run"

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def extract_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of a Markdown file, with the marker on the line before each."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m["fence"], (m["info"].split() or [""])[0].lower()
        j = i + 1
        while j < len(lines) and not lines[j].strip().startswith(fence):
            j += 1
        prev = next((lines[k] for k in range(i - 1, -1, -1) if lines[k].strip()), "")
        mm = _MARKER.match(prev.strip())
        code = "\n".join(ln[len(m["indent"]) :] for ln in lines[i + 1 : j]) + "\n"
        blocks.append(Block(path, i + 1, lang, code, mm["kind"] if mm else ""))
        i = j + 1
    return blocks


ALL = [b for p in PAGES for b in extract_blocks(p)]
PYTHON = [b for b in ALL if b.lang in ("python", "py")]
SHELL_BLOCKS = [b for b in ALL if b.lang in SHELL]


def _ids(blocks: list[Block]) -> list[str]:
    return [b.id for b in blocks]


def _id(block: Block) -> str:
    return block.id


@pytest.mark.parametrize("block", [b for b in PYTHON if b.marker != "fragment"], ids=_id)
def test_python_block_runs(block: Block, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    code = compile(block.code, block.id, "exec")
    namespace = {"__name__": "__main__", "__file__": str(tmp_path / "snippet.py")}
    try:
        exec(code, namespace)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] in OPTIONAL:
            pytest.skip(f"{block.id} needs the optional package {exc.name}")
        raise


@pytest.mark.parametrize("block", [b for b in PYTHON if b.marker == "fragment"], ids=_id)
def test_python_fragment_compiles(block: Block) -> None:
    compile(block.code, block.id, "exec")


def test_markers_sit_on_code_blocks() -> None:
    """A marker line must be followed by a fence (a stray marker marks nothing)."""
    for page in PAGES:
        lines = page.read_text(encoding="utf-8").splitlines()
        for i, ln in enumerate(lines):
            if _MARKER.match(ln.strip()):
                nxt = next((x for x in lines[i + 1 :] if x.strip()), "")
                assert _FENCE.match(nxt), (
                    f"{page.name}:{i + 1}: marker not followed by a code block"
                )
    runs = [b for b in ALL if b.marker == "run" and b.lang not in SHELL]
    assert not runs, f"<!-- run --> is for shell blocks: {_ids(runs)}"


# ---------------------------------------------------------------- shell blocks


def _commands(code: str) -> list[list[str]]:
    """Simple commands of a shell block: continuations joined, comments dropped, split at
    ``&&``, ``||``, ``;`` and ``|``."""
    text = re.sub(r"\\\n", " ", code)
    out: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            continue  # not shell (a formula or a listing)
        cmd: list[str] = []
        for w in words:
            if w in ("&&", "||", ";", "|"):
                out.append(cmd)
                cmd = []
            else:
                cmd.append(w)
        out.append(cmd)
    return [c for c in out if c]


def _batchcraft_argv(words: list[str]) -> list[str] | None:
    """The arguments after ``batchcraft`` (also behind ``torchrun ... --no-python``), or None."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]  # environment assignments
    if not words:
        return None
    if Path(words[0]).name == "batchcraft":
        return words[1:]
    if words[0] == "torchrun" and "batchcraft" in words:
        return words[words.index("batchcraft") + 1 :]
    return None


def _cli():
    import typer

    from batchcraft.cli.main import app

    return typer.main.get_command(app)


def _check_batchcraft(argv: list[str], where: str) -> None:
    """The command path exists, every option is one of that command's, and the names given to
    ``bench`` and ``reproduce`` are registered."""
    cmd = _cli()
    names = ["batchcraft"]
    rest = list(argv)
    while hasattr(cmd, "commands") and rest and not rest[0].startswith("-"):
        assert rest[0] in cmd.commands, f"{where}: no command {' '.join([*names, rest[0]])!r}"
        names.append(rest.pop(0))
        cmd = cmd.commands[names[-1]]
    takes_value: dict[str, bool] = {"--help": False}
    for p in cmd.params:
        for opt in getattr(p, "opts", []) + getattr(p, "secondary_opts", []):
            takes_value[opt] = not (getattr(p, "is_flag", False) or getattr(p, "count", False))
    positional: list[str] = []
    i = 0
    while i < len(rest):
        w = rest[i]
        if w.startswith("-") and w not in ("-", "--") and not re.fullmatch(r"-\d.*", w):
            opt = w.split("=", 1)[0]
            assert opt in takes_value, (
                f"{where}: {' '.join(names)} has no option {opt} (has {sorted(takes_value)})"
            )
            i += 2 if takes_value[opt] and "=" not in w else 1
        else:
            positional.append(w)
            i += 1
    if names[1:] in (["bench"], ["reproduce"]):
        from batchcraft.registry import benchmarks, experiments

        known = set(benchmarks() if names[1] == "bench" else experiments()) | {"all"}
        unknown = [n for n in positional if n not in known]
        assert not unknown, f"{where}: {' '.join(names)} knows no {unknown} (has {sorted(known)})"


def _check_other(words: list[str], where: str) -> None:
    """``python FILE``, ``python -m MODULE``, ``make TARGET``, ``pytest PATH`` and ``bash FILE``
    point at things that exist."""
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
        words = words[1:]
    if not words:
        return
    prog = Path(words[0]).name
    args = [w for w in words[1:] if not w.startswith("-")]
    if prog in ("python", "python3") and words[1:2] == ["-m"] and words[2:3] != ["pytest"]:
        import importlib.util  # python -m MODULE: the module exists

        assert len(words) > 2 and importlib.util.find_spec(words[2]), f"{where}: bad {words}"
    if prog in ("python", "python3", "bash") and args and args[0].endswith((".py", ".sh")):
        assert (ROOT / args[0]).is_file(), f"{where}: {args[0]} does not exist"
    if prog == "make":
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
        for target in (a for a in args if "=" not in a):
            assert re.search(rf"^{re.escape(target)}\s*:", makefile, re.M), (
                f"{where}: the Makefile has no target {target!r}"
            )
    if prog == "pytest" or words[1:3] == ["-m", "pytest"]:
        for a in args:
            if a.startswith("tests"):
                assert (ROOT / a.split("::")[0]).exists(), f"{where}: {a} does not exist"


@pytest.mark.parametrize("block", SHELL_BLOCKS, ids=_id)
def test_shell_block_names_real_commands(block: Block) -> None:
    for words in _commands(block.code):
        argv = _batchcraft_argv(words)
        if argv is not None:
            _check_batchcraft(argv, block.id)
        else:
            _check_other(words, block.id)


@pytest.mark.parametrize("block", [b for b in SHELL_BLOCKS if b.marker == "run"], ids=_id)
def test_shell_block_runs(block: Block, tmp_path: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH")]))
    for words in _commands(block.code):
        argv = _batchcraft_argv(words)
        assert argv is not None, f"{block.id}: a <!-- run --> block holds batchcraft commands only"
        proc = subprocess.run(
            [sys.executable, "-m", "batchcraft.cli.main", *argv],
            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert proc.returncode == 0, (
            f"{block.id}: batchcraft {shlex.join(argv)}\n{proc.stdout}\n{proc.stderr}"
        )


def test_extractor_finds_blocks_and_markers(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text(
        "text\n\n```python\nx = 1\n```\n\n<!-- fragment: needs a GPU -->\n"
        "```python\nmodel.cuda()\n```\n\n<!-- run -->\n```bash\nbatchcraft --help\n```\n",
        encoding="utf-8",
    )
    blocks = extract_blocks(page)
    assert [(b.line, b.lang, b.marker) for b in blocks] == [
        (3, "python", ""),
        (8, "python", "fragment"),
        (13, "bash", "run"),
    ]
    assert blocks[0].code == "x = 1\n"
    assert _commands("A=1 batchcraft lm train \\\n  --steps 3 && make test # x\n") == [
        ["A=1", "batchcraft", "lm", "train", "--steps", "3"],
        ["make", "test"],
    ]
    with pytest.raises(AssertionError, match="no option --nope"):
        _check_batchcraft(["lm", "train", "--nope", "1"], "p.md:1")
    with pytest.raises(AssertionError, match="no command"):
        _check_batchcraft(["lm", "trian"], "p.md:1")
    with pytest.raises(AssertionError, match="knows no"):
        _check_batchcraft(["reproduce", "no-such-experiment", "--seeds", "3"], "p.md:1")
    _check_batchcraft(["reproduce", "adan", "--seeds", "3", "--quick"], "p.md:1")
