"""What this machine can do, resolved lazily and in one place.

Nothing here imports an optional package at module import time: each flag is a function that
looks the package up (``importlib.util.find_spec``) the first time it is asked and caches the
answer. Code that needs an optional package calls :func:`require` to get a clear error.

Example::

    from batchcraft import _capabilities as caps
    if caps.has_triton() and x.is_cuda:
        ...
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

import torch

# pip extra that provides each optional module, used in error messages.
_EXTRA = {
    "triton": "triton",
    "transformers": "hf",
    "peft": "hf",
    "torch_geometric": "pyg",
    "matplotlib": "plot",
    "sklearn": "sklearn",
    "scipy": "sklearn",
}


@functools.cache
def has_module(name: str) -> bool:
    """Whether ``name`` can be imported, without importing it."""
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def has_cuda() -> bool:
    """Whether a CUDA device is usable."""
    return torch.cuda.is_available()


def has_triton() -> bool:
    """Whether Triton is installed (kernels run on CUDA, or on CPU with ``TRITON_INTERPRET=1``)."""
    return has_module("triton")


def triton_interpret() -> bool:
    """Whether Triton kernels would run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def has_transformers() -> bool:
    return has_module("transformers")


def has_peft() -> bool:
    return has_module("peft")


def has_pyg() -> bool:
    return has_module("torch_geometric")


def has_matplotlib() -> bool:
    return has_module("matplotlib")


def has_sklearn() -> bool:
    return has_module("sklearn")


def has_flex_attention() -> bool:
    """Whether ``torch.nn.attention.flex_attention`` exists in this torch."""
    return has_module("torch.nn.attention.flex_attention")


class MissingExtraError(ImportError):
    """An optional package is not installed; the message names the pip extra that provides it."""


def require(name: str, purpose: str = "") -> ModuleType:
    """Import an optional module or raise a :class:`MissingExtraError` saying how to install it.

    Args:
        name: module name, e.g. ``"triton"``.
        purpose: what the caller wanted it for, shown in the error.

    Raises:
        MissingExtraError: (an ``ImportError``) the module is not installed.
    """
    if not has_module(name):
        extra = _EXTRA.get(name)
        hint = f'pip install "batchcraft[{extra}]"' if extra else f"pip install {name}"
        why = f" for {purpose}" if purpose else ""
        raise MissingExtraError(
            f"{name} is required{why} but is not installed; install it with: {hint}"
        )
    return importlib.import_module(name)


def summary() -> dict[str, object]:
    """A dictionary of versions and flags, used by ``batchcraft info``."""
    import platform

    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if has_cuda() else None,
        "cuda_device": torch.cuda.get_device_name(0) if has_cuda() else None,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "processor": platform.processor() or platform.machine(),
        "triton_interpret": triton_interpret(),
        "flex_attention": has_flex_attention(),
    }
    for mod in (
        "numpy",
        "triton",
        "transformers",
        "peft",
        "torch_geometric",
        "matplotlib",
        "sklearn",
    ):
        if has_module(mod):
            from importlib.metadata import PackageNotFoundError, version

            dist = {"sklearn": "scikit-learn", "torch_geometric": "torch_geometric"}.get(mod, mod)
            try:
                info[mod] = version(dist)
            except PackageNotFoundError:
                info[mod] = "installed"
        else:
            info[mod] = None
    return info
