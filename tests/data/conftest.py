"""Small text corpora written into tmp_path for the tokenizer / prepare / shard tests."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = " ".join(
    [
        "the of and to in is it that for on with as was at by an be this from or which one had",
        "not but what all were when we there can def return class self import if else yield",
        "naïve café über 日本語 façade 123 4567 89 (x) [y] {z} = += -> :: ; , . ! ?",
    ]
).split(" ")


def make_text(seed: int, n_lines: int = 60) -> str:
    """Deterministic code-and-prose-like text: indentation, blank lines, unicode, digits."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n_lines):
        indent = " " * rng.choice([0, 0, 4, 8])
        words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(0, 12)))
        lines.append(indent + words)
    return "\n".join(lines) + ("\n" if seed % 2 else "")


def write_corpus(root: Path, n_files: int = 12, n_lines: int = 60) -> Path:
    """``root/doc00.txt ...`` plus two files in ``root/sub/``; returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        (root / f"doc{i:02d}.txt").write_text(make_text(i, n_lines), encoding="utf-8")
    (root / "sub").mkdir(exist_ok=True)
    for i in range(2):
        (root / "sub" / f"part{i}.txt").write_text(make_text(100 + i, n_lines), encoding="utf-8")
    return root


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    """A folder of 14 small text files (~30 KB in all); both splits non-empty at val 0.25."""
    return write_corpus(tmp_path / "corpus")


@pytest.fixture(scope="session")
def text_of():
    """:func:`make_text` as a fixture (test modules do not import conftest)."""
    return make_text


@pytest.fixture(scope="session")
def corpus_writer():
    """:func:`write_corpus` as a fixture."""
    return write_corpus
