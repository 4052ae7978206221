"""Synthetic multi-source instruction mixture (CoLM's embedded default), char-level.

Eight skill families of very different sizes (default 20000 / 8000 / 3000 / 1000 / 400 / 150 /
80 / 40, i.e. 500:1), each example a short instruction and an answer; the loss is on the answer
only (``labels = -100`` on the prompt and padding). Per-source eval sets come from a disjoint
seed and exclude training prompts. A loader for user JSONL (``prompt``, ``answer``, ``source``
fields) gives the same :class:`Mixture`.

Example::

    mix = make_mixture(seed=0)
    pool = mix.sample_pool(64, generator=torch.Generator().manual_seed(0))
    # pool: input_ids [64, T], attention_mask [64, T], labels [64, T], source [64]
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "DEFAULT_SIZES",
    "SKILLS",
    "CharTokenizer",
    "Mixture",
    "collate",
    "load_jsonl_mixture",
    "make_mixture",
]

DEFAULT_SIZES = (20000, 8000, 3000, 1000, 400, 150, 80, 40)


def _add(r: random.Random) -> tuple[str, str]:
    a, b = r.randint(10, 49), r.randint(10, 49)
    return f"add {a} {b}=", str(a + b)


def _sub(r: random.Random) -> tuple[str, str]:
    a, b = r.randint(10, 99), r.randint(10, 99)
    a, b = max(a, b), min(a, b)
    return f"sub {a} {b}=", str(a - b)


def _mul(r: random.Random) -> tuple[str, str]:
    a, b = r.randint(2, 9), r.randint(10, 30)
    return f"mul {a} {b}=", str(a * b)


def _word(r: random.Random) -> tuple[str, str]:
    name = r.choice(["tom", "ann", "bob", "eve"])
    a, b = r.randint(1, 9), r.randint(1, 9)
    return f"{name} has {a} gets {b}:", str(a + b)


def _larger(r: random.Random) -> tuple[str, str]:
    a, b = r.sample(range(10, 100), 2)
    return f"max {a} {b}:", str(max(a, b))


def _mod(r: random.Random) -> tuple[str, str]:
    a, b = r.randint(10, 99), r.randint(2, 9)
    return f"mod {a} {b}=", str(a % b)


def _reverse(r: random.Random) -> tuple[str, str]:
    s = "".join(r.choice("abcdefgh") for _ in range(r.randint(3, 5)))
    return f"rev {s}:", s[::-1]


def _count(r: random.Random) -> tuple[str, str]:
    s = "".join(r.choice("abc") for _ in range(r.randint(4, 7)))
    return f"cnt a {s}:", str(s.count("a"))


SKILLS: list[tuple[str, Callable[[random.Random], tuple[str, str]]]] = [
    ("add", _add),
    ("sub", _sub),
    ("mul", _mul),
    ("word", _word),
    ("max", _larger),
    ("mod", _mod),
    ("rev", _reverse),
    ("cnt", _count),
]


class CharTokenizer:
    """Character tokenizer: ids 0 = pad, 1 = bos, 2 = eos, then the alphabet."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, alphabet: str = "0123456789abcdefghijklmnopqrstuvwxyz +-*%=:#.,?") -> None:
        self.alphabet = alphabet
        self._ids = {c: i + 3 for i, c in enumerate(alphabet)}

    @property
    def vocab_size(self) -> int:
        return len(self.alphabet) + 3

    def encode(self, text: str) -> list[int]:
        try:
            return [self._ids[c] for c in text]
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the tokenizer alphabet") from exc

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.alphabet[i - 3] for i in ids if i >= 3)


def collate(
    examples: Sequence[tuple[str, str, int]], tokenizer: CharTokenizer, max_len: int = 48
) -> dict[str, Tensor]:
    """Right-padded batch; labels on ``answer + eos`` only.

    Prompt and answer are tokenised separately (no boundary token ambiguity). Sequences longer
    than ``max_len`` are truncated from the right.

    Returns:
        ``input_ids, attention_mask, labels: [N, T]`` and ``source: [N]``.
    """
    rows, labs, src = [], [], []
    for prompt, answer, s in examples:
        p = [tokenizer.bos_id, *tokenizer.encode(prompt)]
        a = [*tokenizer.encode(answer), tokenizer.eos_id]
        ids = (p + a)[:max_len]
        lab = ([-100] * len(p) + a)[:max_len]
        rows.append(ids)
        labs.append(lab)
        src.append(s)
    t = max(len(r) for r in rows)
    ids_t = torch.full((len(rows), t), tokenizer.pad_id, dtype=torch.long)
    lab_t = torch.full((len(rows), t), -100, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.long)
    for i, (r, lab) in enumerate(zip(rows, labs, strict=True)):
        ids_t[i, : len(r)] = torch.tensor(r)
        lab_t[i, : len(lab)] = torch.tensor(lab)
        mask[i, : len(r)] = 1
    return {
        "input_ids": ids_t,
        "attention_mask": mask,
        "labels": lab_t,
        "source": torch.tensor(src, dtype=torch.long),
    }


@dataclass
class Mixture:
    """A tokenised multi-source dataset with per-source eval sets.

    Attributes:
        train: the tokenised training set (``input_ids, attention_mask, labels: [N, T]``,
            ``source: [N]``).
        eval: one tokenised eval batch per source id.
        names: source names.
        tokenizer: the tokenizer used.
    """

    train: dict[str, Tensor]
    eval: dict[int, dict[str, Tensor]]
    names: list[str]
    tokenizer: CharTokenizer

    @property
    def counts(self) -> Tensor:
        """``[Q]`` training examples per source."""
        return torch.bincount(self.train["source"], minlength=len(self.names))

    def sample_pool(self, size: int, *, generator: torch.Generator) -> dict[str, Tensor]:
        """A uniformly random pool of ``size`` training examples (without replacement)."""
        n = self.train["source"].numel()
        if not 1 <= size <= n:
            raise ValueError(f"size must be in [1, {n}], got {size}")
        idx = torch.randperm(n, generator=generator)[:size]
        return {k: v[idx] for k, v in self.train.items()}


def make_mixture(
    sizes: Sequence[int] = DEFAULT_SIZES,
    *,
    seed: int = 0,
    eval_size: int = 200,
    max_len: int = 48,
) -> Mixture:
    """Build the synthetic mixture (train seed ``seed``, eval seed derived and disjoint).

    Args:
        sizes: training examples per source (up to 8 sources, in the order of :data:`SKILLS`).
        seed: seed of the private ``random.Random`` used for generation.
        eval_size: eval examples per source, prompts disjoint from training.
        max_len: truncation length in tokens.
    """
    if not 1 <= len(sizes) <= len(SKILLS) or any(s < 1 for s in sizes):
        raise ValueError(f"sizes must hold 1..{len(SKILLS)} positive counts, got {list(sizes)}")
    tok = CharTokenizer()
    rng = random.Random(seed)
    ev_rng = random.Random(10_000_019 + seed)
    train: list[tuple[str, str, int]] = []
    evals: dict[int, dict[str, Tensor]] = {}
    for q, size in enumerate(sizes):
        fn = SKILLS[q][1]
        seen: set[str] = set()
        for _ in range(size):
            p, a = fn(rng)
            seen.add(p)
            train.append((p, a, q))
        ev: list[tuple[str, str, int]] = []
        tries = 0
        while len(ev) < eval_size and tries < 50 * eval_size:
            p, a = fn(ev_rng)
            tries += 1
            if p not in seen:
                ev.append((p, a, q))
        if not ev:  # tiny prompt space fully covered by training: reuse fresh draws
            ev = [(*fn(ev_rng), q) for _ in range(eval_size)]
        evals[q] = collate(ev, tok, max_len)
    return Mixture(collate(train, tok, max_len), evals, [n for n, _ in SKILLS[: len(sizes)]], tok)


def load_jsonl_mixture(
    path: str | Path, *, eval_fraction: float = 0.1, seed: int = 0, max_len: int = 256
) -> Mixture:
    """A :class:`Mixture` from JSONL lines ``{"prompt": ..., "answer": ..., "source": ...}``.

    Sources are named by their ``source`` value (any string) and numbered in sorted order; each
    source's eval split is a random ``eval_fraction`` of its lines (at least one).
    """
    if not 0.0 < eval_fraction < 1.0:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    rows = []
    with open(path, encoding="utf-8") as f:
        for ln, line in enumerate(f, 1):
            if not line.strip():
                continue
            rec = json.loads(line)
            missing = {"prompt", "answer", "source"} - set(rec)
            if missing:
                raise ValueError(f"{path}:{ln}: missing field(s) {sorted(missing)}")
            rows.append((str(rec["prompt"]), str(rec["answer"]), str(rec["source"])))
    names = sorted({r[2] for r in rows})
    if not names:
        raise ValueError(f"{path} holds no examples")
    tok = CharTokenizer("".join(sorted({c for p, a, _ in rows for c in p + a})))
    rng = random.Random(seed)
    train, evals = [], {}
    for q, name in enumerate(names):
        mine = [(p, a, q) for p, a, s in rows if s == name]
        rng.shuffle(mine)
        n_ev = max(1, int(len(mine) * eval_fraction))
        evals[q] = collate(mine[:n_ev], tok, max_len)
        train += mine[n_ev:] or mine[:1]
    return Mixture(collate(train, tok, max_len), evals, names, tok)
