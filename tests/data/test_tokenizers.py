"""Tokenizers: bytes parity with ByteTokenizer, BPE training, save/load, HF folder, GGUF file."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from batchcraft.data.text import ByteTokenizer
from batchcraft.data.tokenizers import (
    EOS_TOKEN,
    BytesTokenizer,
    HFTokenizer,
    Tokenizer,
    load_tokenizer,
    parse_tokenizer_spec,
    train_bpe,
)

pytest.importorskip("tokenizers")

SAMPLE = "def f(x):\n    return x + 1  # naïve café 日本語\n\n\nclass A:  pass\n"


@pytest.fixture(scope="module")
def texts(text_of) -> list[str]:
    return [text_of(i) for i in range(8)]


@pytest.fixture(scope="module")
def bpe(texts) -> HFTokenizer:
    return train_bpe(texts, 400)


def test_bytes_ids_equal_byte_tokenizer_and_round_trip(tmp_path):
    tok = BytesTokenizer()
    assert isinstance(tok, Tokenizer)
    assert tok.encode(SAMPLE) == ByteTokenizer().encode(SAMPLE).tolist()
    assert tok.decode(tok.encode(SAMPLE)) == SAMPLE
    loaded = load_tokenizer(tok.save(tmp_path / "t"))
    assert isinstance(loaded, BytesTokenizer) and loaded.eos_id == 0 and loaded.vocab_size == 256


def test_bpe_trains_a_round_tripping_deterministic_vocabulary(bpe, texts):
    assert isinstance(bpe, Tokenizer)
    assert 257 <= bpe.vocab_size <= 400 and bpe.name == "bpe:400"
    assert bpe.eos_id == 0 and bpe.tok.id_to_token(0) == EOS_TOKEN
    for text in [SAMPLE, *texts[:3], "", "\x00\x01 ÿ 🙂"]:
        assert bpe.decode(bpe.encode(text)) == text
    ids = bpe.encode(texts[0])
    assert len(ids) < len(texts[0].encode()) / 1.5  # merges learned: fewer tokens than bytes
    assert train_bpe(texts, 400).tok.to_str() == bpe.tok.to_str()  # same texts, same merges


def test_bpe_stops_short_on_a_tiny_corpus():
    tok = train_bpe(["ab ab ab"], 5000)
    assert 257 <= tok.vocab_size < 300


@pytest.mark.parametrize("vocab", [0, 256, -5, 3.5, "300"])
def test_bpe_vocab_must_be_an_integer_of_at_least_257(vocab, texts):
    with pytest.raises(ValueError, match=">= 257"):
        train_bpe(texts, vocab)


def test_bpe_save_load_round_trip(bpe, tmp_path):
    folder = bpe.save(tmp_path / "tok")
    assert {p.name for p in folder.iterdir()} == {
        "batchcraft_tokenizer.json",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    loaded = load_tokenizer(folder)
    assert isinstance(loaded, HFTokenizer)
    assert (loaded.name, loaded.vocab_size, loaded.eos_id) == (bpe.name, bpe.vocab_size, 0)
    assert loaded.encode(SAMPLE) == bpe.encode(SAMPLE)


def test_saved_bpe_folder_works_with_transformers_auto_tokenizer(bpe, tmp_path):
    transformers = pytest.importorskip("transformers")
    folder = bpe.save(tmp_path / "tok")
    hf = transformers.AutoTokenizer.from_pretrained(str(folder))
    assert hf.encode(SAMPLE, add_special_tokens=False) == bpe.encode(SAMPLE)
    assert hf.eos_token == EOS_TOKEN and hf.eos_token_id == 0


def test_plain_hf_folder_reads_eos_from_tokenizer_config(bpe, tmp_path):
    folder = tmp_path / "hf"
    folder.mkdir()
    (folder / "tokenizer.json").write_text(bpe.tok.to_str(), encoding="utf-8")
    tok = load_tokenizer(folder)  # no config: the usual EOS names are tried
    assert tok.eos_id == 0 and tok.name == "hf:hf"
    eos_name = bpe.tok.id_to_token(300)
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": eos_name}}))
    assert load_tokenizer(folder).eos_id == 300
    assert load_tokenizer(folder).encode(SAMPLE) == bpe.encode(SAMPLE)


def test_corrupt_tokenizer_files_give_one_line_errors(tmp_path, bpe):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "tokenizer.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer file"):
        load_tokenizer(folder)
    saved = bpe.save(tmp_path / "tok")
    (saved / "batchcraft_tokenizer.json").write_text('{"format": "batchcraft-tokenizer"}')
    with pytest.raises(ValueError, match="corrupt"):
        load_tokenizer(saved)
    with pytest.raises(ValueError, match="no tokenizer"):
        load_tokenizer(tmp_path / "missing")


# ---------------------------------------------------------------- GGUF


def _gguf_string(s: str) -> bytes:
    b = s.encode("utf-8")
    return struct.pack("<Q", len(b)) + b


def _gguf_kv_str(key: str, value: str) -> bytes:
    return _gguf_string(key) + struct.pack("<I", 8) + _gguf_string(value)


def _gguf_kv_strings(key: str, values: list[str]) -> bytes:
    head = _gguf_string(key) + struct.pack("<IIQ", 9, 8, len(values))
    return head + b"".join(_gguf_string(v) for v in values)


def write_gguf(path: Path, tok: HFTokenizer) -> Path:
    """A metadata-only GGUF v3 file holding ``tok``'s byte-level BPE as llama.cpp stores it."""
    model = json.loads(tok.tok.to_str())["model"]
    tokens = [""] * len(model["vocab"])
    for t, i in model["vocab"].items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    types = [3 if t == EOS_TOKEN else 1 for t in tokens]  # 3: control, 1: normal
    kv = [
        _gguf_kv_str("general.architecture", "llama"),
        _gguf_kv_str("tokenizer.ggml.model", "gpt2"),
        _gguf_kv_strings("tokenizer.ggml.tokens", tokens),
        _gguf_kv_strings("tokenizer.ggml.merges", merges),
        _gguf_string("tokenizer.ggml.token_type")
        + struct.pack("<IIQ", 9, 5, len(types))
        + struct.pack(f"<{len(types)}i", *types),
        _gguf_string("tokenizer.ggml.eos_token_id") + struct.pack("<II", 4, 0),
    ]
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + b"".join(kv))
    return path


def test_gguf_tokenizer_gives_the_same_ids_as_its_source(bpe, texts, tmp_path):
    pytest.importorskip("transformers")
    path = write_gguf(tmp_path / "m.gguf", bpe)
    try:
        tok = load_tokenizer(path)
    except ImportError as exc:  # older transformers read GGUF through the optional `gguf`
        assert "pip install gguf" in str(exc)
        pytest.skip("this transformers needs the gguf package")
    assert tok.name == "gguf:m.gguf" and tok.eos_id == 0
    assert tok.vocab_size == bpe.vocab_size
    for text in [SAMPLE, texts[1]]:
        assert tok.encode(text) == bpe.encode(text)
    assert parse_tokenizer_spec(str(path)).kind == "gguf"


def test_gguf_garbage_is_a_one_line_error(tmp_path):
    pytest.importorskip("transformers")
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"NOPE" + bytes(40))
    with pytest.raises((ValueError, ImportError), match=r"bad\.gguf"):
        load_tokenizer(bad)


# ---------------------------------------------------------------- specs


def test_spec_parsing(bpe, tmp_path):
    assert parse_tokenizer_spec("bytes").kind == "bytes"
    s = parse_tokenizer_spec("bpe:4096")
    assert (s.kind, s.vocab_size, str(s)) == ("bpe", 4096, "bpe:4096")
    folder = bpe.save(tmp_path / "t")
    assert parse_tokenizer_spec(str(folder)).path == folder


@pytest.mark.parametrize(
    "spec", ["bpe:", "bpe:256", "bpe:abc", "bpe:-300", "byte", "", "no/such/folder", "x.gguf"]
)
def test_bad_specs_say_what_is_accepted(spec):
    with pytest.raises(ValueError, match="tokenizer") as info:
        parse_tokenizer_spec(spec)
    assert "\n" not in str(info.value)
