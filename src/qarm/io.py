"""Atomic artifact I/O: every write goes to a temp file in the same folder, then ``os.replace``.

A run killed at any moment therefore leaves either the old artifact or the new one, never a
half-written file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp path beside ``path``; on clean exit, fsync and rename it onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp creates 0600; artifacts get the usual permissions
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        if path.is_dir():  # a Parquet dataset folder from engine=spark, now replaced by one file
            shutil.rmtree(path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Strict JSON: NaN and infinity (e.g. an AUC undefined on one class) are written as null."""
    text = json.dumps(_finite(obj), indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    write_bytes(path, (text + "\n").encode())


def _finite(obj: Any) -> Any:
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _finite(obj.tolist())
    return obj


def read_json(path: str | os.PathLike, default: Any = None) -> Any:
    path = Path(path)
    if not path.exists():
        return default
    return json.loads(path.read_text())


def write_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, np.ascontiguousarray(array), allow_pickle=False)


def read_npy(path: str | os.PathLike, mmap: bool = False) -> np.ndarray:
    return np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)


def write_parquet(path: str | os.PathLike, table: Any) -> None:
    """Write a pandas DataFrame or pyarrow Table atomically as Parquet (zstd)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not isinstance(table, pa.Table):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: str | os.PathLike, columns: list[str] | None = None):
    """Read a Parquet artifact as a pandas DataFrame."""
    import pyarrow.parquet as pq

    return pq.read_table(path, columns=columns).to_pandas()


def save_torch(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save`` atomically (checkpoints: a kill mid-save keeps the previous checkpoint)."""
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path: str | os.PathLike | None, fingerprint: Any) -> dict | None:
    """The checkpoint dict ``save_torch`` wrote at ``path`` if it exists and was made under the same
    ``fingerprint`` (config and inputs), else None: a checkpoint of other work is never resumed."""
    if path is None or not Path(path).exists():
        return None
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)  # our own checkpoint
    return ckpt if ckpt.get("fingerprint") == fingerprint else None


def resume_training(path: str | os.PathLike | None, fingerprint: Any, model: Any, optimizer: Any,
                    state: dict) -> tuple[dict, int]:
    """Resume an epoch loop: when ``load_checkpoint(path, fingerprint)`` finds a checkpoint
    (keys ``model``, ``optimizer``, ``state``), load its weights into ``model`` and ``optimizer``
    and return (its loop state, the epoch it resumes from); otherwise (``state``, 0) unchanged."""
    ckpt = load_checkpoint(path, fingerprint)
    if ckpt is None:
        return state, 0
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt["state"], int(ckpt["state"]["epoch"])


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def path_sha256(path: str | os.PathLike) -> str:
    """Hash of a file, or of a folder's files (names and contents, sorted)."""
    path = Path(path)
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")):
        h.update(str(f.relative_to(path)).encode())
        h.update(file_sha256(f).encode())
    return h.hexdigest()


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
