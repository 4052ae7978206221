"""``batchcraft data prepare``: tokenize text once into memory-mapped shards for LM training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

__all__ = ["register"]


def prepare(
    text: Annotated[
        list[Path],
        typer.Option(help="Text file or folder (repeat for several); each file is a document."),
    ],
    out: Annotated[Path, typer.Option(help="Output folder: shards, manifest.json, tokenizer/.")],
    tokenizer: Annotated[
        str,
        typer.Option(
            help="bytes (256 ids), bpe:VOCAB (trained here, VOCAB >= 257), a folder with "
            "tokenizer.json, or a .gguf file."
        ),
    ] = "bytes",
    val_fraction: Annotated[
        float, typer.Option(help="Share of files held out for validation, in (0, 1).")
    ] = 0.05,
    workers: Annotated[int, typer.Option(help="Tokenizer processes (output is the same).")] = 1,
    suffix: Annotated[
        list[str] | None,
        typer.Option(help="Only files with this suffix from folders, e.g. .py (repeatable)."),
    ] = None,
    shard_tokens: Annotated[int, typer.Option(help="Tokens per shard file.")] = 1 << 26,
) -> None:
    """Tokenize text into uint16/uint32 shards + manifest; a re-run on the same inputs is a no-op."""
    from batchcraft.cli.errors import fail
    from batchcraft.data.prepare import check_prepare_args, prepare_corpus
    from batchcraft.utils.progress import console

    # bad values raise ValueError: the CLI error layer prints one line and exits 2
    check_prepare_args(
        text, tokenizer, out, val_fraction=val_fraction, workers=workers, shard_tokens=shard_tokens
    )
    try:
        res = prepare_corpus(
            text, out, tokenizer=tokenizer, val_fraction=val_fraction, workers=workers,
            suffixes=tuple(suffix or ()), shard_tokens=shard_tokens,
        )  # fmt: skip
    except ImportError as exc:  # an optional package (tokenizers, transformers) is missing
        fail(str(exc))
        raise  # not reached: fail() exits
    m = res.manifest
    if res.status == "up-to-date":
        console.print(
            f"{out}: up to date (same inputs and settings, hash {m['inputs_hash'][:12]}); "
            "nothing to do",
            highlight=False,
        )
        return
    tok = m["tokenizer"]
    mb = sum(s["bytes"] for s in m["splits"].values()) / 1e6
    console.print(
        f"{res.status} {out} in {res.seconds:.1f}s ({mb / max(res.seconds, 1e-9):.2f} MB/s): "
        f"{m['files']} files ({m['skipped_files']} skipped), tokenizer {tok['name']} "
        f"(vocab {tok['vocab_size']}, {m['dtype']}), split {m['split_rule']}",
        highlight=False,
    )
    for name, s in m["splits"].items():
        console.print(
            f"  {name}: {s['tokens']:,} tokens, {s['documents']:,} documents, "
            f"{s['bytes_per_token']:.3f} bytes/token, {len(s['shards'])} shard(s)",
            highlight=False,
        )


def register(app: typer.Typer) -> None:
    """Add ``prepare`` to the ``data`` group."""
    app.command("prepare")(prepare)
