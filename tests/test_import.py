"""`import batchcraft` stays light: no optional heavy package is imported with it."""

import subprocess
import sys

HEAVY = [
    "triton",
    "transformers",
    "peft",
    "torch_geometric",
    "matplotlib",
    "sklearn",
    "scipy",
    "timm",
]


def test_import_does_not_pull_optional_packages():
    code = (
        "import sys, batchcraft, batchcraft.ops, batchcraft.nn, batchcraft.models, batchcraft.optim, "
        "batchcraft.selection, batchcraft.graph, batchcraft.data; "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"import batchcraft imported: {out.stdout.strip()}"


def test_version_is_exposed():
    import batchcraft

    assert isinstance(batchcraft.__version__, str) and batchcraft.__version__.count(".") == 2
