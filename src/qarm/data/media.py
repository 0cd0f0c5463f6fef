"""Media checks: an item's image/audio is kept only when the file exists and decodes.

A missing or undecodable file never drops the item: its path becomes null, ``has_image`` /
``has_audio`` False, and the case is counted (``missing_image``, ``undecodable_image``, ...).
Decoding is per file (I/O bound), so it runs in a small thread pool with a progress bar.
"""

from __future__ import annotations

import os
import wave
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def image_decodes(path: str) -> bool:
    """True when PIL can fully decode ``path`` (JPEGs are decoded at 1/8 scale: same check, faster)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.draft("RGB", (max(1, im.width // 8), max(1, im.height // 8)))
            im.load()
            return im.width > 0 and im.height > 0
    except Exception:  # any decoder failure means "undecodable", whatever PIL raised
        return False


def audio_decodes(path: str) -> bool:
    """True when ``path`` is a readable, non-empty PCM WAV (other formats: exists and non-empty)."""
    if not path.lower().endswith(".wav"):
        return os.path.getsize(path) > 0
    try:
        with wave.open(path, "rb") as w:
            n = w.getnframes()
            return n > 0 and len(w.readframes(min(n, 1024))) > 0
    except Exception:  # wave.Error, EOFError, struct errors: all mean undecodable
        return False


def resolve_paths(paths: pd.Series, base: Path) -> pd.Series:
    """Absolute path strings (relative ones resolved against ``base``); None where empty/missing."""
    s = paths.astype("string").str.strip()
    s = s.mask(s == "")
    rel = s.notna() & ~s.str.startswith("/").fillna(False)
    s = s.mask(rel, str(base.resolve()) + "/" + s)
    return s.astype(object).where(s.notna(), None)


def check_media(paths: pd.Series, kind: str, skipped: Counter, workers: int = 4,
                show_progress: bool = True) -> pd.Series:
    """Keep paths whose file exists and decodes; others become None and are counted in ``skipped``.

    ``paths``: absolute path strings or None. ``kind``: ``image`` or ``audio``.
    """
    decodes = image_decodes if kind == "image" else audio_decodes
    given = paths.notna().to_numpy()
    todo = paths[given].astype(str).to_numpy()
    exists = np.fromiter((os.path.isfile(p) for p in todo), dtype=bool, count=len(todo))
    ok = np.zeros(len(todo), dtype=bool)
    check = todo[exists]
    if len(check):
        with ThreadPoolExecutor(max_workers=workers) as pool:
            results = list(tqdm(pool.map(decodes, check, chunksize=32), total=len(check),
                                desc=f"checking {kind}s", disable=not show_progress, leave=False))
        ok[np.flatnonzero(exists)] = results
    skipped[f"missing_{kind}"] += int((~exists).sum())
    skipped[f"undecodable_{kind}"] += int((exists & ~ok).sum())
    keep = np.zeros(len(paths), dtype=bool)
    keep[np.flatnonzero(given)] = ok
    return paths.where(keep, None).astype(object)
