"""Safe, atomic files: a file is either the old version or the complete new one, never half
written, and nothing a user hands in is ever unpickled.

* :func:`atomic_write`, :func:`write_text`, :func:`write_json`: write to a temporary sibling, then
  rename into place.
* :func:`save_checkpoint` / :func:`load_checkpoint`: any nested structure of dicts, lists, tuples,
  tensors and plain scalars (model and optimizer ``state_dict()``, generator states, histories) in
  ONE safetensors file: tensors as safetensors entries, the structure as JSON in the file's
  metadata. Loading parses JSON and raw tensor bytes only, so a crafted file cannot run code.
* :func:`write_dir_atomic` / :func:`resolve_dir`: a checkpoint *folder* swapped into place with a
  fallback to the previous copy when a run is killed between the two renames.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

import torch

__all__ = [
    "CheckpointError",
    "atomic_write",
    "cache_dir",
    "check_writable_dir",
    "commit_dir",
    "decode_tree",
    "encode_tree",
    "load_checkpoint",
    "load_json",
    "load_module_state",
    "prepare_dir",
    "resolve_dir",
    "save_checkpoint",
    "write_dir_atomic",
    "write_json",
    "write_text",
]

FORMAT = "batchcraft-tree-v1"  # metadata key holding the JSON structure


class CheckpointError(ValueError):
    """A checkpoint file or folder is missing, truncated, corrupt or does not fit the model."""


def atomic_write(path: str | os.PathLike[str], writer: Callable[[BinaryIO], object]) -> Path:
    """Write ``path`` through ``writer(file)`` into a temporary sibling, then rename it into place.

    Args:
        path: destination file; parent folders are created.
        writer: called with a binary file object opened for writing.

    Returns:
        The destination path.
    """
    dest = Path(path)
    if dest.is_dir():
        raise IsADirectoryError(f"{dest} is a folder; give a file path")
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual file mode
        with os.fdopen(fd, "wb") as f:
            writer(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def cache_dir() -> Path:
    """batchcraft's per-user cache folder (not created here).

    ``$BATCHCRAFT_CACHE_DIR``, else ``$XDG_CACHE_HOME/batchcraft``, else ``~/.cache/batchcraft``.
    """
    root = os.environ.get("BATCHCRAFT_CACHE_DIR")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "batchcraft"


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Atomically write a UTF-8 text file."""
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def write_json(path: str | os.PathLike[str], data: Any) -> Path:
    """Atomically write ``data`` as indented JSON (tensors and numpy values become lists/numbers)."""
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def load_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a missing or malformed file raises :class:`CheckpointError` naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON (truncated or corrupt?): {exc}") from None


def check_writable_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` (a folder) if needed and prove it is writable, before any long work.

    Raises:
        NotADirectoryError: ``path`` (or a parent) is a file.
        PermissionError: the folder cannot be written.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(f"{p} is a file; give a folder for the output")
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=p)
        os.close(fd)
        os.unlink(probe)
    except FileExistsError:
        raise NotADirectoryError(
            f"a parent of {p} is a file; give a folder for the output"
        ) from None
    except OSError as exc:
        raise PermissionError(f"cannot write to {p}: {exc.strerror or exc}") from None
    return p


# ----------------------------------------------------------------------------- tree codec
def encode_tree(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-able skeleton of ``obj``; its tensors are moved into ``tensors`` (``{"__t": key}``).

    Dicts with string keys stay JSON objects; other dicts become ``{"__dict": [[k, v], ...]}``,
    tuples ``{"__tuple": [...]}``. Leaves: tensors, ``None``, bool, int, float (NaN/inf kept), str.
    """
    if isinstance(obj, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = obj.detach().to("cpu").contiguous()
        return {"__t": key}
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if hasattr(obj, "item") and getattr(obj, "shape", None) == ():  # numpy scalar
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple": [encode_tree(x, tensors) for x in obj]}
    if isinstance(obj, list):
        return [encode_tree(x, tensors) for x in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: encode_tree(v, tensors) for k, v in obj.items()}
        return {
            "__dict": [[encode_tree(k, tensors), encode_tree(v, tensors)] for k, v in obj.items()]
        }
    raise TypeError(
        f"cannot store a {type(obj).__name__} in a checkpoint: use tensors, numbers, strings, "
        "None, and lists/tuples/dicts of them"
    )


def decode_tree(node: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`encode_tree`."""
    if isinstance(node, list):
        return [decode_tree(x, tensors) for x in node]
    if isinstance(node, dict):
        if "__t" in node:
            key = node["__t"]
            if key not in tensors:
                raise CheckpointError(f"checkpoint structure names a missing tensor {key!r}")
            return tensors[key]
        if "__tuple" in node:
            return tuple(decode_tree(x, tensors) for x in node["__tuple"])
        if "__dict" in node:
            return {decode_tree(k, tensors): decode_tree(v, tensors) for k, v in node["__dict"]}
        return {k: decode_tree(v, tensors) for k, v in node.items()}
    return node


def _dedupe(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory: clone all but the first of each storage."""
    seen: set[tuple[int, int]] = set()
    out = {}
    for k, t in tensors.items():
        key = (t.untyped_storage().data_ptr(), t.device.index or 0) if t.numel() else (0, -1)
        if t.numel() and key in seen:
            t = t.clone()
        elif t.numel():
            seen.add(key)
        out[k] = t
    return out


def save_checkpoint(path: str | os.PathLike[str], obj: Any) -> Path:
    """Atomically write a nested structure (state dicts, generator states, histories) as one
    safetensors file; see :func:`encode_tree` for what it may hold."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    skeleton = encode_tree(obj, tensors)
    blob = save(_dedupe(tensors), metadata={FORMAT: json.dumps(skeleton)})
    return atomic_write(path, lambda f: f.write(blob))


def load_checkpoint(path: str | os.PathLike[str], map_location: str | torch.device = "cpu") -> Any:
    """Read a file written by :func:`save_checkpoint` (no pickle: a crafted file cannot run code).

    Raises:
        CheckpointError: the file is missing, truncated, corrupt or not such a checkpoint.
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(
            f"checkpoint {p} does not exist" + (" (it is a folder)" if p.is_dir() else "")
        )
    try:
        with safe_open(str(p), framework="pt", device=str(map_location)) as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own error types for bad headers/sizes
        raise CheckpointError(
            f"{p} is not a readable batchcraft checkpoint (truncated, corrupt, or another format "
            f"such as a pickle, which is never loaded): {exc}"
        ) from None
    if FORMAT not in meta:
        raise CheckpointError(f"{p} is a safetensors file but not a batchcraft checkpoint")
    try:
        skeleton = json.loads(meta[FORMAT])
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{p}: corrupt checkpoint structure: {exc}") from None
    return decode_tree(skeleton, tensors)


# ------------------------------------------------------------------ atomic checkpoint folders
MANIFEST = "manifest.json"


def _old(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.old")


def prepare_dir(dest: str | os.PathLike[str]) -> Path:
    """An empty temporary sibling ``.<name>.tmp`` of ``dest`` to build a folder in."""
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp


def commit_dir(
    dest: str | os.PathLike[str], tmp: Path, *, meta: dict[str, Any] | None = None
) -> Path:
    """Seal ``tmp`` with a manifest and swap it into ``dest`` (see :func:`write_dir_atomic`)."""
    dest = Path(dest)
    files = {
        str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()
    }
    write_json(tmp / MANIFEST, {"files": files, **(meta or {})})
    old = _old(dest)
    if dest.exists():
        if old.exists():  # dest is complete, so an older fallback is no longer needed
            shutil.rmtree(old)
        os.replace(dest, old)
    os.replace(tmp, dest)
    if old.exists():
        shutil.rmtree(old)
    return dest


def write_dir_atomic(
    dest: str | os.PathLike[str],
    fill: Callable[[Path], object],
    *,
    meta: dict[str, Any] | None = None,
) -> Path:
    """Build a folder with ``fill(tmp_folder)``, then swap it into ``dest`` atomically.

    A ``manifest.json`` (file names and sizes, plus ``meta``) is written last, so a folder
    without one is incomplete. The previous copy is renamed to ``.<name>.old`` before the new
    one takes its place and is deleted only afterwards: a run killed between the two renames
    leaves ``.old`` intact, and :func:`resolve_dir` returns it.
    """
    tmp = prepare_dir(dest)
    fill(tmp)
    return commit_dir(dest, tmp, meta=meta)


def _complete(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return all(
        (folder / n).is_file() and (folder / n).stat().st_size == s for n, s in files.items()
    )


def resolve_dir(dest: str | os.PathLike[str]) -> Path | None:
    """The complete checkpoint folder for ``dest``: ``dest`` itself, else its ``.old`` fallback
    (a run killed mid-swap), else ``None`` when there is none.

    Raises:
        CheckpointError: ``dest`` exists but is incomplete or damaged and no fallback exists.
    """
    dest = Path(dest)
    if dest.is_dir() and _complete(dest):
        return dest
    old = _old(dest)
    if old.is_dir() and _complete(old):
        return old
    if dest.exists():
        raise CheckpointError(
            f"checkpoint folder {dest} is incomplete or damaged (files missing or truncated); "
            "delete it to start over"
        )
    return None


def load_module_state(
    module: torch.nn.Module, state: dict[str, torch.Tensor], source: object
) -> None:
    """``module.load_state_dict(state)`` with one clear :class:`CheckpointError` on a mismatch
    (missing or unexpected names, wrong shapes) naming ``source``."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        for k in own
        if k in state and tuple(state[k].shape) != tuple(own[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {missing[:4]}{' ...' if len(missing) > 4 else ''}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:4]}{' ...' if len(unexpected) > 4 else ''}")
        if shapes:
            parts.append("shape mismatch " + "; ".join(shapes[:3]))
        raise CheckpointError(
            f"{source} does not fit this model ({', '.join(parts)}): was it written for another "
            "model configuration?"
        )
    module.load_state_dict(state)
