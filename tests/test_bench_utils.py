"""Shared benchmark helpers: the cross-benchmark summary keeps ratios and fractions only."""

from __future__ import annotations

from batchcraft.utils.bench import format_table, summary_rows


def test_summary_rows_keeps_ratios_and_fractions_not_rates():
    rows = [
        {
            "set": "flat",
            "params (M)": 33.6,
            "ms/step": 35.8,
            "GB/s": 41.3,
            "% copy bw": 98.0,
            "x AdamW fused": 1.5,
        },
        {
            "model": "lact",
            "context": 1024,
            "tokens/s": 10.0,
            "time_ratio_max/min_ctx": 0.97,
            "ours/torch fwd": 1.1,
        },
    ]
    out = summary_rows("demo", rows)
    quantities = [r["quantity"] for r in out]
    assert quantities == ["% copy bw", "x AdamW fused", "time_ratio_max/min_ctx", "ours/torch fwd"]
    assert out[0]["case"] == "flat" and out[2]["case"] == "lact, context=1024"
    assert all(r["benchmark"] == "demo" and isinstance(r["value"], float) for r in out)


def test_format_table_has_header_and_one_line_per_row():
    text = format_table([{"a": 1, "b": 0.5}, {"a": 2}])
    lines = text.strip().splitlines()
    assert lines[0] == "| a | b |" and len(lines) == 4
