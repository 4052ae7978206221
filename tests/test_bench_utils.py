"""Shared benchmark helpers: the cross-benchmark summary keeps ratios and fractions only."""

from __future__ import annotations

import torch

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


def test_results_dir_follows_env_then_checkout_then_user_cache(tmp_path, monkeypatch):
    from batchcraft.utils.bench import RESULTS_ENV, results_dir

    monkeypatch.delenv(RESULTS_ENV, raising=False)
    monkeypatch.setenv("BATCHCRAFT_CACHE_DIR", str(tmp_path / "cache"))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # not a checkout: the user cache, never ./benchmarks
    assert results_dir() == tmp_path / "cache" / "bench-results"
    checkout = tmp_path / "checkout"
    (checkout / "src" / "batchcraft").mkdir(parents=True)
    (checkout / "pyproject.toml").write_text("[project]\nname = 'batchcraft'\n")
    monkeypatch.chdir(checkout)
    assert results_dir().resolve() == checkout / "benchmarks" / "results"
    monkeypatch.setenv(RESULTS_ENV, str(tmp_path / "mine"))  # bench --out sets it
    assert results_dir() == tmp_path / "mine"


def test_process_memory_readers_see_an_allocation():
    import sys

    import pytest

    from batchcraft.utils.bench import PeakRSS, proc_status_bytes, rss_bytes

    if not sys.platform.startswith("linux"):
        pytest.skip("reads /proc/self (Linux)")
    assert rss_bytes() > 0 and proc_status_bytes("VmRSS") > 0
    assert proc_status_bytes("NoSuchField") is None
    with PeakRSS() as rss:
        x = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del x
    assert rss.peak > 32 * 2**20
