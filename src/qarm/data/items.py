"""Items table assembly: text fields, the composed ``text``, media paths and modality flags."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from qarm.data.media import check_media, resolve_paths
from qarm.data.schema import ITEM_TEXT_COLUMNS, clean_text, validate_item_ids


def compose_text(fields: Sequence[tuple[str, pd.Series]]) -> pd.Series:
    """Join text fields into one string per item, e.g. ``"Heat (1995). Genres: Action. Plot: ..."``.

    ``fields``: (label, cleaned string Series) pairs; an empty label adds no prefix, an empty
    value adds nothing.
    """
    out: pd.Series | None = None
    for label, s in fields:
        s = s.astype(str)
        part = s if not label else (label + ": " + s).where(s != "", "")
        if out is None:
            out = part
            continue
        ends = out.str.contains(r"[.!?]$", regex=True)
        sep = pd.Series(np.where((out != "") & (part != ""), np.where(ends, " ", ". "), ""), index=out.index)
        out = out + sep + part
    assert out is not None, "compose_text needs at least one field"
    return out.astype(object)


def default_text(df: pd.DataFrame) -> pd.Series:
    """Text the text tower reads, from the schema's text fields."""
    return compose_text([("", df["title"]), ("Category", df["category"]), ("", df["description"]),
                         ("Tags", df["tags"])])


def build_items(raw: pd.DataFrame, *, file: str, media_base: Path, skipped: Counter,
                show_progress: bool = True) -> pd.DataFrame:
    """Validate and type a raw items table, sorted by item_id.

    ``raw`` needs ``item_id``; ``title``/``description``/``tags``/``category``/``text``/``image``/
    ``audio`` are optional (``text`` defaults to the composed text fields). Relative media paths are
    resolved against ``media_base``. Missing/undecodable media and empty text are counted in
    ``skipped``; the item always stays.
    """
    ids = validate_item_ids(raw, file=file)
    n = len(raw)
    out = pd.DataFrame({"item_id": ids}, index=raw.index)
    for col in ITEM_TEXT_COLUMNS:
        out[col] = clean_text(raw[col] if col in raw.columns else None, n).to_numpy()
    text = clean_text(raw["text"], n) if "text" in raw.columns else pd.Series([""] * n, index=raw.index)
    composed = default_text(out)
    out["text"] = text.where(text != "", composed).to_numpy()
    for kind in ("image", "audio"):
        if kind in raw.columns:
            out[kind] = check_media(resolve_paths(raw[kind], media_base), kind, skipped,
                                    show_progress=show_progress).to_numpy()
        else:
            out[kind] = None
    out["has_text"] = (out["text"].astype(str).str.strip() != "").to_numpy()
    out["has_image"] = out["image"].notna().to_numpy()
    out["has_audio"] = out["audio"].notna().to_numpy()
    skipped["empty_text"] += int((~out["has_text"]).sum())
    return out.sort_values("item_id", kind="stable").reset_index(drop=True)
