"""Download a MovieLens archive from GroupLens, verify its checksum, unpack it atomically.

``download_movielens("ml-1m", "data/")`` fetches ``<base_url>/ml-1m.zip`` with a progress bar,
checks it against ``checksum`` (``"sha256:<hex>"`` or ``"md5:<hex>"``) or, when none is given,
against the ``.md5`` file GroupLens publishes beside every archive, and unpacks it to
``dest/ml-1m/``. The archive is downloaded to a temp file and unpacked into a hidden temp folder
that is renamed into place, so an interrupted download never leaves a folder that looks complete.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm.auto import tqdm

from qarm.errors import DataError
from qarm.io import atomic_path

GROUPLENS_URL = "https://files.grouplens.org/datasets/movielens"
MOVIELENS_ARCHIVES = ("ml-100k", "ml-1m", "ml-latest-small", "ml-latest", "ml-20m", "ml-25m", "ml-32m")
CHUNK = 1 << 20


def _open(url: str, timeout: float):
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers={"User-Agent": "qarm"}), timeout=timeout)
    except urllib.error.HTTPError as exc:
        raise DataError(f"download failed: HTTP {exc.code} {exc.reason}", file=url) from None
    except (urllib.error.URLError, OSError) as exc:
        raise DataError(f"download failed: {getattr(exc, 'reason', exc)}", file=url) from None


def _published_md5(url: str, timeout: float) -> str:
    """The hex digest in GroupLens's ``<archive>.md5`` file (format: ``MD5 (x.zip) = <hex>`` or ``<hex>  x.zip``)."""
    with _open(url + ".md5", timeout) as resp:
        text = resp.read(4096).decode("ascii", "replace")
    match = re.search(r"\b([0-9a-fA-F]{32})\b", text)
    if not match:
        raise DataError("no MD5 digest in the published checksum file; pass checksum='sha256:...'",
                        file=url + ".md5")
    return match.group(1).lower()


def _parse_checksum(checksum: str) -> tuple[str, str]:
    algo, sep, digest = checksum.partition(":")
    if not sep or algo.lower() not in ("sha256", "md5") or not re.fullmatch(r"[0-9a-fA-F]+", digest):
        raise DataError(f"checksum {checksum!r}: expected 'sha256:<hex>' or 'md5:<hex>'")
    return algo.lower(), digest.lower()


def _safe_extract(archive: Path, into: Path) -> None:
    """Unpack ``archive`` into ``into``, refusing members that would land outside it."""
    root = into.resolve()
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                target = (root / member).resolve()
                if target != root and root not in target.parents:
                    raise DataError(f"archive member {member!r} would be written outside the target folder",
                                    file=str(archive))
            zf.extractall(root)
    except zipfile.BadZipFile as exc:
        raise DataError(f"not a valid zip archive: {exc}", file=str(archive)) from None


def download_movielens(name: str, dest: str | Path, base_url: str | None = None, *,
                       checksum: str | None = None, timeout: float = 60.0, force: bool = False) -> Path:
    """Download MovieLens archive ``name`` into ``dest/name`` and return that folder.

    ``name``: one of ml-100k, ml-1m, ml-latest-small, ml-latest, ml-20m, ml-25m, ml-32m.
    ``base_url``: a mirror holding ``<name>.zip`` (and ``<name>.zip.md5``); default GroupLens.
    ``checksum``: ``"sha256:<hex>"`` / ``"md5:<hex>"``; default: the published ``.md5``.
    An existing ``dest/name`` is returned as is unless ``force``.
    """
    if name not in MOVIELENS_ARCHIVES:
        raise DataError(f"unknown MovieLens archive {name!r}; choose one of {', '.join(MOVIELENS_ARCHIVES)}")
    dest = Path(dest)
    target = dest / name
    if target.is_dir() and any(target.iterdir()) and not force:
        return target
    dest.mkdir(parents=True, exist_ok=True)
    url = f"{(base_url or GROUPLENS_URL).rstrip('/')}/{name}.zip"
    algo, expected = _parse_checksum(checksum) if checksum else ("md5", _published_md5(url, timeout))

    archive = dest / f"{name}.zip"
    digest = hashlib.new(algo)
    with atomic_path(archive) as tmp_zip:
        with _open(url, timeout) as resp, open(tmp_zip, "wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}", leave=False) as bar:
                while block := resp.read(CHUNK):
                    out.write(block)
                    digest.update(block)
                    bar.update(len(block))
        if digest.hexdigest() != expected:
            # Leaving the with-block by an exception removes the temp file: nothing corrupt stays.
            raise DataError(f"{algo} checksum mismatch: expected {expected}, got {digest.hexdigest()}", file=url)

    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".partial", dir=dest))
    try:
        _safe_extract(archive, tmp_dir)
        entries = [p for p in tmp_dir.iterdir() if not p.name.startswith("__MACOSX")]
        # GroupLens archives hold one top folder (ml-100k/, ml-10M100K/...); unwrap it.
        content = entries[0] if len(entries) == 1 and entries[0].is_dir() else tmp_dir
        old = dest / f".{name}.old"
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(content, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        archive.unlink(missing_ok=True)
    return target
