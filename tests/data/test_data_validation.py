"""Every bad-input case of the schema: an error naming file/row/column, or a counted skip."""

from __future__ import annotations

import wave

import numpy as np
import pandas as pd
import pytest

from qarm.cli import main as cli_main
from qarm.config import load_config
from qarm.data.schema import is_member
from qarm.data.stage import prepare
from qarm.errors import DataError


def prep(folder, tmp_path, fmt="csv", *overrides):
    cfg = load_config(None, ["data.source=files", f"data.path={folder}", f"data.items_file=items.{fmt}",
                             f"data.events_file=events.{fmt}", *overrides])
    return prepare(cfg, tmp_path / "run-data", show_progress=False)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_clean_files_load(schema_files, tmp_path, fmt):
    folder, items, events = schema_files(fmt=fmt)
    p = prep(folder, tmp_path, fmt)
    assert len(p.items) == 4 and len(p.events) == 10
    assert p.events["dwell"].tolist() == [3.5] * 10  # optional extra columns are kept
    assert p.events["click"].dtype == np.int8 and p.events["timestamp"].dtype == np.int64
    assert p.items.loc[0, "image"] == str((folder / "img" / "1.png").resolve())
    assert p.items.loc[0, "text"] == "red. Category: c1. a. Tags: x"
    assert p.skipped["missing_image"] == 1  # img/4.png does not exist; item 4 stays
    assert not p.items.loc[3, "has_image"] and len(p.items) == 4


def test_missing_required_columns(schema_files, tmp_path):
    folder, items, events = schema_files(items=pd.DataFrame({"id": [1], "title": ["x"]}))
    with pytest.raises(DataError) as err:
        prep(folder, tmp_path)
    assert err.value.column == "item_id" and err.value.file.endswith("items.csv")
    assert "found: id, title" in str(err.value)

    folder, _, events = schema_files()
    schema_files(events=events.drop(columns=["timestamp"]))
    with pytest.raises(DataError) as err:
        prep(folder, tmp_path)
    assert err.value.column == "timestamp" and err.value.file.endswith("events.csv")

    schema_files(events=events.drop(columns=["like"]))
    with pytest.raises(DataError, match="'like'"):
        prep(folder, tmp_path)


def test_unknown_items_are_skipped_and_counted_or_strict_error(schema_files, tmp_path):
    folder, _, events = schema_files()
    events.loc[[3, 7], "item_id"] = 99
    schema_files(events=events)
    p = prep(folder, tmp_path)
    assert p.skipped["unknown_item"] == 2 and len(p.events) == 8 and 99 not in set(p.events["item_id"])
    with pytest.raises(DataError) as err:
        prep(folder, tmp_path, "csv", "data.strict=true")
    assert (err.value.row, err.value.column) == (4, "item_id")
    assert "events.csv" in str(err.value) and "row 4" in str(err.value) and "2 such rows" in str(err.value)


def test_duplicate_item_ids_are_an_error(schema_files, tmp_path):
    folder, items, _ = schema_files()
    items.loc[2, "item_id"] = 1
    schema_files(items=items)
    with pytest.raises(DataError) as err:
        prep(folder, tmp_path)
    assert (err.value.row, err.value.column) == (3, "item_id") and "duplicate item_id 1 (first at row 1)" in str(err.value)


def test_non_integer_item_id_is_an_error(schema_files, tmp_path):
    folder, items, _ = schema_files()
    items["item_id"] = items["item_id"].astype(object)
    items.loc[1, "item_id"] = "two"
    schema_files(items=items)
    with pytest.raises(DataError) as err:
        prep(folder, tmp_path)
    assert (err.value.row, err.value.column) == (2, "item_id") and "'two'" in str(err.value)


def test_timestamps_iso_parsed_unparsable_skipped(schema_files, tmp_path):
    folder, _, events = schema_files()
    events["timestamp"] = events["timestamp"].astype(object)
    events.loc[0, "timestamp"] = "1997-12-01T10:00:00"
    events.loc[1, "timestamp"] = "1997-12-01 10:00:05+01:00"
    events.loc[5, "timestamp"] = "yesterday"
    events.loc[6, "timestamp"] = None
    schema_files(events=events)
    p = prep(folder, tmp_path)
    assert p.skipped["unparsable_timestamp"] == 2 and len(p.events) == 8
    ts = set(p.events["timestamp"])
    assert 880_970_400 in ts and 880_970_400 + 5 - 3600 in ts  # 1997-12-01T10:00Z; +01:00 is an hour earlier
    with pytest.raises(DataError) as err:
        prep(folder, tmp_path, "csv", "data.strict=true")
    assert (err.value.row, err.value.column) == (6, "timestamp")


def test_non_binary_labels(schema_files, tmp_path):
    folder, _, events = schema_files()
    events["click"] = events["click"].astype(object)
    events.loc[2, "click"] = 2
    events.loc[4, "click"] = "yes"
    events.loc[5, "click"] = "true"   # accepted spelling of 1
    events.loc[8, "like"] = -1
    schema_files(events=events)
    p = prep(folder, tmp_path)
    assert p.skipped["bad_label"] == 3 and len(p.events) == 7
    assert set(p.events["click"]) <= {0, 1}
    with pytest.raises(DataError) as err:
        prep(folder, tmp_path, "csv", "data.strict=true")
    assert (err.value.row, err.value.column) == (3, "click") and "must be 0 or 1" in str(err.value)


def test_bad_ids_and_ratings_in_events_are_counted(schema_files, tmp_path):
    folder, _, events = schema_files()
    events["user_id"] = events["user_id"].astype(object)
    events.loc[0, "user_id"] = "u1"
    events.loc[1, "user_id"] = 1.5
    events["rating"] = ["4"] * 9 + ["five"]
    schema_files(events=events)
    p = prep(folder, tmp_path)
    assert p.skipped["bad_user_id"] == 2 and p.skipped["bad_rating"] == 1 and len(p.events) == 7
    assert p.events["rating"].dtype == np.float32


def test_missing_and_undecodable_media_keep_the_item(schema_files, tmp_path):
    folder, items, _ = schema_files()
    items["image"] = ["img/1.png", "img/broken.png", "", "img/nope.png"]
    with wave.open(str(folder / "ok.wav"), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000), w.writeframes(b"\x00\x01" * 100)
    (folder / "bad.wav").write_bytes(b"RIFF0000WAVEjunk")
    items["audio"] = ["ok.wav", "bad.wav", "missing.wav", None]
    schema_files(items=items, fmt="parquet")
    p = prep(folder, tmp_path, "parquet")
    it = p.items.set_index("item_id")
    assert len(it) == 4
    assert it["has_image"].tolist() == [True, False, False, False]
    assert it["has_audio"].tolist() == [True, False, False, False]
    assert pd.isna(it.loc[2, "image"]) and pd.isna(it.loc[2, "audio"])
    assert (p.skipped["missing_image"], p.skipped["undecodable_image"]) == (1, 1)
    assert (p.skipped["missing_audio"], p.skipped["undecodable_audio"]) == (1, 1)


def test_empty_text_is_counted_and_flagged(schema_files, tmp_path):
    folder, items, _ = schema_files()
    for col in ("title", "description", "tags", "category"):
        items.loc[1, col] = None if col == "title" else "  "
    schema_files(items=items)
    p = prep(folder, tmp_path)
    assert p.skipped["empty_text"] == 1 and p.items["has_text"].tolist() == [True, False, True, True]
    assert p.items.loc[1, "text"] == "" and p.items.loc[1, "title"] == ""


def test_no_valid_events_is_an_error(schema_files, tmp_path):
    folder, _, events = schema_files()
    events["item_id"] = 99
    schema_files(events=events)
    with pytest.raises(DataError, match="no valid events.*unknown_item=10"):
        prep(folder, tmp_path)


def test_cli_prints_one_line_error_without_traceback(schema_files, tmp_path, capsys):
    folder, items, _ = schema_files()
    items.loc[2, "item_id"] = 1
    schema_files(items=items)
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(f"data:\n  source: files\n  path: {folder}\n  items_file: items.csv\n  events_file: events.csv\n")
    rc = cli_main(["run", str(cfg), "--out", str(tmp_path / "run"), "--stages", "prepare"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "items.csv" in err and "row 3" in err and "'item_id'" in err and "duplicate item_id" in err


def test_is_member_matches_numpy_isin():
    rng = np.random.default_rng(0)
    values = rng.integers(-50, 3000, size=5000)
    for catalog in (np.arange(1, 2001), rng.choice(10**12, size=300, replace=False), np.array([7])):
        catalog = np.concatenate([catalog, values[:50]]) if len(catalog) > 1 else catalog
        assert (is_member(values.copy(), catalog) == np.isin(values, catalog)).all()
    assert is_member(values, np.array([], dtype=np.int64)).sum() == 0


def test_parquet_datetime_and_bool_columns(schema_files, tmp_path):
    folder, _, events = schema_files()
    events["timestamp"] = pd.to_datetime(events["timestamp"], unit="s")
    events["click"] = events["click"].astype(bool)
    events["user_id"] = events["user_id"].astype(str)  # string ids that are whole numbers are fine
    schema_files(events=events, fmt="parquet")
    p = prep(folder, tmp_path, "parquet")
    assert p.events["timestamp"].min() == 880_000_000 and p.events["click"].dtype == np.int8
    assert p.events["user_id"].dtype == np.int64 and not p.skipped.get("unparsable_timestamp")
