import pytest

from batchcraft import _capabilities as caps


def test_has_module_for_present_and_missing():
    assert caps.has_module("torch") is True
    assert caps.has_module("definitely_not_a_module_xyz") is False


def test_require_missing_module_says_how_to_install():
    with pytest.raises(ImportError, match="pip install"):
        caps.require("definitely_not_a_module_xyz", "a test")


def test_summary_lists_versions():
    s = caps.summary()
    assert s["torch"] and s["python"] and isinstance(s["threads"], int)
