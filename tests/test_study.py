"""Pipeline-seed studies (qarm.study): aggregation over seeds, shared tower features, resume, CLI."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from qarm.cli import main
from qarm.config import load_config
from qarm.errors import ConfigError, QarmError
from qarm.io import path_sha256, read_json, write_json, write_parquet
from qarm.report.results import render_all
from qarm.runner import run_stages
from qarm.study import (aggregate, export_results, grid_points, load_results, parse_grid, parse_seeds, point_name,
                        run_grid, run_study, shared_stages, summarize_study)


def _leaf(mean, std=0.01):
    return {"mean": mean, "std": std}


def _fake_run(shift: float, with_like: bool = True) -> dict:
    tasks = {"click": {"auc": _leaf(0.70 + shift), "gauc": _leaf(0.69 + shift, 0.02),
                       "warm_users": {"auc": _leaf(0.75 + shift), "gauc": _leaf(0.74 + shift)}}}
    if with_like:
        tasks["like"] = {"auc": _leaf(0.65 + shift)}
    return {"rank": {"variants": {"id": tasks, "qarm": {"click": {"auc": _leaf(0.72 + shift),
                                                               "cold_auc": _leaf(float("nan"), float("nan"))}}},
                     "buckets": {"id": {"click": {"0": 0.6 + shift, "1-4": None}}},
                     "n_test": 100, "default_variant": "qarm"},
            "pairs": {"n_u2i": 10 + int(shift * 100), "u2i_recall@10": 0.3 + shift, "content_space": "tf-idf"},
            "quantize": {"rq.perplexity": [30.0 + shift, 29.0], "rq.sizes": [32, 32]},
            "align": {"loss_history": [1.0, 0.5], "aligned.recall@10": 0.09}}


def test_parse_seeds():
    assert parse_seeds("0,1, 2") == [0, 1, 2]
    assert parse_seeds("7") == [7]
    for bad in ("", "a,1", "1,1", "-1"):
        with pytest.raises(ConfigError):
            parse_seeds(bad)


def test_summarize_study_spread_over_pipeline_seeds():
    runs = {0: _fake_run(0.0), 1: _fake_run(0.02), 2: _fake_run(0.04, with_like=False)}
    s = summarize_study(runs)
    auc = s["variants"]["id"]["click"]["auc"]
    assert auc["values"] == pytest.approx([0.70, 0.72, 0.74])
    assert auc["mean"] == pytest.approx(0.72)
    assert auc["std"] == pytest.approx(np.std([0.70, 0.72, 0.74], ddof=1))
    assert auc["ranker_std"] == [0.01, 0.01, 0.01]
    assert s["variants"]["id"]["click"]["warm_users"]["gauc"]["values"] == pytest.approx([0.74, 0.76, 0.78])
    # a seed without the figure is a null value, left out of mean and std
    like = s["variants"]["id"]["like"]["auc"]
    assert like["values"][2] is None and like["mean"] == pytest.approx(0.66)
    # undefined everywhere: null mean, kept visible
    assert s["variants"]["qarm"]["click"]["cold_auc"] == {"mean": None, "std": None, "values": [None, None, None],
                                                           "ranker_std": [None, None, None]}
    assert s["buckets"]["id"]["click"]["0"]["values"] == pytest.approx([0.6, 0.62, 0.64])
    assert s["buckets"]["id"]["click"]["1-4"] == {"mean": None, "std": None, "values": [None, None, None]}
    assert s["rank"]["n_test"] == {"mean": 100.0, "std": 0.0, "values": [100.0, 100.0, 100.0]}
    assert s["rank"]["default_variant"] == "qarm"
    assert s["pairs"]["n_u2i"]["values"] == [10.0, 12.0, 14.0]
    assert s["pairs"]["content_space"] == "tf-idf"
    assert s["quantize"]["rq.perplexity"]["mean"] == pytest.approx([30.02, 29.0])
    assert s["quantize"]["rq.perplexity"]["values"][1] == pytest.approx([30.02, 29.0])
    assert "loss_history" not in s["align"]
    # one seed: std 0, not NaN
    one = summarize_study({5: _fake_run(0.0)})
    assert one["variants"]["id"]["click"]["auc"] == {"mean": 0.70, "std": 0.0, "values": [0.70], "ranker_std": [0.01]}
    # disagreeing strings are not a figure
    assert aggregate(["a", "b"]) is None and aggregate(["a", "a"]) == "a"


def test_load_and_export_results(tmp_path):
    run = tmp_path / "run"
    write_json(run / "metrics.json", _fake_run(0.0))
    write_json(run / "config.json", {"name": "fake", "rank": {"seeds": [0, 1], "tasks": ["click", "like"]}})
    data = load_results(run)
    assert data["config"]["name"] == "fake" and "rank" in data
    out = export_results(run, tmp_path / "docs" / "fake.json")
    saved = read_json(tmp_path / "docs" / "fake.json")
    assert saved == json.loads(json.dumps(out, allow_nan=True).replace("NaN", "null"))
    assert saved["kind"] == "run" and saved["config"]["name"] == "fake" and "exported_git_commit" in saved
    assert render_all(load_results(tmp_path / "docs" / "fake.json")) == render_all(data)
    with pytest.raises(QarmError, match="none of grid.json"):
        load_results(tmp_path)


@pytest.fixture(scope="module")
def world_files(tmp_path_factory):
    """A small synthetic world as plain files (data.source=files): the same content for every
    pipeline seed, so the frozen tower features are shareable, as on MovieLens."""
    root = tmp_path_factory.mktemp("world")
    cfg = load_config(None, ["data.synthetic.n_users=150", "data.synthetic.n_items=120",
                             "data.synthetic.n_events=3000", "data.synthetic.with_audio=false"])
    run_stages(cfg, root / "gen", stages=["prepare"], log=lambda m: None)
    items = pd.read_parquet(root / "gen" / "items.parquet")
    events = pd.read_parquet(root / "gen" / "events.parquet")
    write_parquet(root / "items.parquet", items[["item_id", "title", "description", "tags", "category"]])
    write_parquet(root / "events.parquet", events[["user_id", "item_id", "timestamp", "click", "like"]])
    return root


def _overrides(world) -> list[str]:
    return [f"data.path={world}", "data.source=files", "data.items_file=items.parquet",
            "data.events_file=events.parquet", "pairs.u2i_epochs=1", "align.image_model=", "align.use_audio=false",
            "align.epochs=2", "quantize.rq_sizes=[8,8]", "quantize.vq_k=5", "rank.variants=[id,vq]",
            "rank.seeds=[0,1]", "rank.epochs=1", "rank.batch_size=256", "rank.history=10", "rank.sim_history=5",
            "rank.threads=1"]


def test_study_two_pipeline_seeds_share_features_and_resume(world_files, tmp_path, capsys):
    cfg = load_config(None, _overrides(world_files))
    out = tmp_path / "study"
    logs: list[str] = []
    study = run_study(cfg, out, [0, 1], command="qarm study test", log=logs.append)

    # every seed directory is an ordinary run with its own seed
    for s in (0, 1):
        assert read_json(out / f"seed{s}" / "config.json")["seed"] == s
    # the pipeline seed changes what the seed-dependent stages compute...
    assert path_sha256(out / "seed0" / "emb_aligned.npy") != path_sha256(out / "seed1" / "emb_aligned.npy")
    # ...but the frozen tower features are computed once and shared (hard links or copies)
    shared = sorted((out / "shared" / "align-cache").glob("*.npz"))
    assert shared, "the first seed publishes its tower features"
    for f in shared:
        twin = out / "seed1" / "align" / "cache" / f.name
        assert twin.is_file() and path_sha256(twin) == path_sha256(f)
        if hasattr(os, "link"):
            assert os.stat(twin).st_ino == os.stat(f).st_ino
    assert any("shared tower-feature files linked" in m and "seed 1" in m for m in logs)

    data = read_json(out / "study.json")
    assert data == json.loads(json.dumps(study))
    assert data["seeds"] == [0, 1] and data["config_name"] == cfg.name and data["command"] == "qarm study test"
    assert data["config"]["rank"]["variants"] == ["id", "vq"] and "git_commit" in data and data["qarm_version"]
    per_seed = [read_json(out / f"seed{s}" / "metrics.json") for s in (0, 1)]
    for v in ("id", "vq"):
        for task in ("click", "like"):
            leaf = data["variants"][v][task]["auc"]
            expect = [m["rank"]["variants"][v][task]["auc"]["mean"] for m in per_seed]
            assert leaf["values"] == pytest.approx(expect)
            assert leaf["mean"] == pytest.approx(np.mean(expect))
            assert leaf["std"] == pytest.approx(np.std(expect, ddof=1))
            assert leaf["ranker_std"] == pytest.approx([m["rank"]["variants"][v][task]["auc"]["std"] for m in per_seed])
    assert data["pairs"]["u2i_recall@10"]["values"] == pytest.approx([m["pairs"]["u2i_recall@10"] for m in per_seed])
    assert len(data["quantize"]["rq.perplexity"]["mean"]) == 2
    md = (out / "study.md").read_text()
    assert md == render_all(data) and "| `vq` |" in md and "pipeline seeds 0, 1" in md

    # resume: nothing reruns, the study file is the same bytes
    before = (out / "study.json").read_bytes()
    logs.clear()
    run_study(cfg, out, [0, 1], command="qarm study test", log=logs.append)
    assert (out / "study.json").read_bytes() == before
    assert not [m for m in logs if "] done in" in m], "a finished study reruns no stage"

    # the CLI renders the same tables
    capsys.readouterr()
    assert main(["results", str(out)]) == 0
    assert capsys.readouterr().out == md
    assert main(["results", str(out / "seed0"), "--table", "rank"]) == 0
    assert capsys.readouterr().out.startswith("| variant | click AUC |")


def test_study_cli_rejects_bad_seeds_before_running(tmp_path, capsys):
    assert main(["study", "demo", "--out", str(tmp_path / "s"), "--seeds", "0,0"]) == 2
    assert "seed 0 is given twice" in capsys.readouterr().err
    assert not (tmp_path / "s").exists(), "nothing runs on a bad seed list"
    assert main(["results", str(tmp_path)]) == 2
    assert "none of grid.json" in capsys.readouterr().err


def test_parse_grid_and_points():
    grid = parse_grid(["align.content_weight=0,0.3", "rank.variants=[qarm,id],[qarm]"])
    assert grid == [("align.content_weight", ["0", "0.3"]), ("rank.variants", ["[qarm,id]", "[qarm]"])]
    points = grid_points(grid)
    assert points[0] == ["align.content_weight=0", "rank.variants=[qarm,id]"] and len(points) == 4
    assert point_name(points[0]) == "align.content_weight=0+rank.variants=_qarm,id_"
    assert shared_stages(grid, ["prepare", "pairs", "align", "quantize", "train"]) == ["prepare", "pairs"]
    assert shared_stages(parse_grid(["rank.epochs=1,2"]), ["prepare", "pairs", "align", "quantize", "train"]) == \
        ["prepare", "pairs", "align", "quantize"]
    for bad, why in ((["content_weight=0,1"], "SECTION.KEY"), (["align.epochs=1,1"], "distinct"),
                     (["align.epochs=1", "align.epochs=2"], "given twice"), (["align.epochs=1,"], "non-empty")):
        with pytest.raises(ConfigError, match=why):
            parse_grid(bad)


def test_grid_runs_one_study_per_point_sharing_the_untouched_stages(world_files, tmp_path, capsys):
    base = _overrides(world_files) + ["rank.seeds=[0]"]
    out = tmp_path / "grid"
    logs: list[str] = []
    grid = parse_grid(["align.content_weight=0,0.5"])
    data = run_grid(lambda sets: load_config(None, base + sets), out, [0], grid, command="qarm study grid-test",
                    log=logs.append)
    assert data["kind"] == "grid" and data["shared_stages"] == ["prepare", "pairs"] and data["seeds"] == [0]
    a, b = (out / point_name(p) / "seed0" for p in grid_points(grid))
    assert [p["overrides"] for p in data["points"]] == [{"align.content_weight": "0"}, {"align.content_weight": "0.5"}]
    # the second point reuses the first point's prepare and pairs outputs (same files), reruns the rest
    for name in ("events.parquet", "pairs.parquet"):
        assert os.path.samefile(a / name, b / name)
    second = logs[[i for i, m in enumerate(logs) if "point 2/2" in m][0]:]
    assert not [m for m in second if "[prepare] done" in m or "[pairs] done" in m]
    assert [m for m in second if "[align] done" in m] and [m for m in second if "[train] done" in m]
    assert path_sha256(a / "emb_aligned.npy") != path_sha256(b / "emb_aligned.npy"), "the grid value takes effect"
    cached = sorted((a / "align" / "cache").glob("*.npz"))
    assert cached and all(os.path.samefile(f, b / "align" / "cache" / f.name) for f in cached)
    assert read_json(b / "config.json")["align"]["content_weight"] == 0.5
    first, other = (p["study"] for p in data["points"])
    assert first["pairs"] == other["pairs"] and first["align"]["content_weight"]["mean"] == 0.0
    assert other["align"]["content_weight"]["mean"] == 0.5

    md = (out / "grid.md").read_text()
    assert md == render_all(read_json(out / "grid.json"))
    assert "| `align.content_weight` | pair R@10 |" in md and "`vq` cold AUC" in md and "| 0.5 |" in md
    capsys.readouterr()
    assert main(["results", str(out), "--table", "grid", "--task", "click"]) == 0
    table = capsys.readouterr().out
    assert table.splitlines()[0].startswith("| `align.content_weight` |") and len(table.splitlines()) == 4
    assert main(["results", str(out), "--table", "grid", "--stage", "quantize", "--variants", "vq"]) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "RQ collision rate" in header and "pair R@10" not in header and header.endswith("`vq` cold AUC |")
    assert main(["results", str(out), "--table", "grid", "--stage", "rank"]) == 2
    assert "stage='rank'" in capsys.readouterr().err

    # resume: nothing reruns
    logs.clear()
    run_grid(lambda sets: load_config(None, base + sets), out, [0], grid, command="qarm study grid-test",
             log=logs.append)
    assert not [m for m in logs if "] done in" in m], "a finished grid reruns no stage"


def test_grid_over_a_code_knob_reuses_the_runs_of_variants_without_codes(world_files, tmp_path):
    base = _overrides(world_files) + ["rank.seeds=[0]", "retrieve.enabled=false"]
    out = tmp_path / "grid"
    grid = parse_grid(["rank.code_dropout=0,0.5"])
    run_grid(lambda sets: load_config(None, base + sets), out, [0], grid, log=lambda m: None)
    a, b = (out / point_name(p) / "seed0" / "rank" for p in grid_points(grid))
    # `id` reads no code: the second point links the first point's run and reuses it untouched
    for name in ("result.json", "model.pt", "predictions.parquet"):
        assert os.path.samefile(a / "id" / "seed0" / name, b / "id" / "seed0" / name)
    # `vq` does: retrained at the second point into new files; the first point's run is intact
    va, vb = read_json(a / "vq" / "seed0" / "result.json"), read_json(b / "vq" / "seed0" / "result.json")
    assert not os.path.samefile(a / "vq" / "seed0" / "result.json", b / "vq" / "seed0" / "result.json")
    assert va["fingerprint"] != vb["fingerprint"]
    assert va["tasks"]["click"]["auc"] != vb["tasks"]["click"]["auc"], "the grid value takes effect"
    assert read_json(out / point_name(grid_points(grid)[0]) / "seed0" / "config.json")["rank"]["code_dropout"] == 0


def test_study_cli_rejects_a_bad_grid_value_before_running(tmp_path, capsys):
    assert main(["study", "demo", "--out", str(tmp_path / "g"), "--seeds", "0",
                 "--grid", "align.epochs=1,many"]) == 2
    assert "align.epochs" in capsys.readouterr().err
    assert not (tmp_path / "g").exists(), "nothing runs on a bad grid value"


def test_diff_table_pairs_variants_by_pipeline_seed(capsys):
    """The committed ml-100k study, differences against ia_rep recomputed by hand from its values."""
    from qarm.report.results import diff_table, render_table

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "results", "ml100k-qarm-raw.json")
    data = load_results(path)
    text = diff_table(data)
    assert text.splitlines()[0] == ("| variant | click AUC − `ia_rep` | click GAUC − `ia_rep` | "
                                    "click cold AUC − `ia_rep` |")
    v = data["variants"]
    d = np.subtract(v["qarm"]["click"]["cold_auc"]["values"], v["ia_rep"]["click"]["cold_auc"]["values"])
    row = next(r for r in text.splitlines() if r.startswith("| `qarm` |"))
    want = f"{d.mean():+.4f} ± {d.std(ddof=1):.4f} ({int((d > 0).sum())}/3)"
    assert row.split(" | ")[3].rstrip(" |") == want
    assert "`ia_rep` |" not in text.split("\n", 2)[2]  # the reference has no row of its own
    assert "`id`" in render_table(data | {"variants": {**v, "id": v["frozen_mm"]}}, "diff", against="frozen_mm")
    with pytest.raises(QarmError, match="reference variant 'sasrec'"):
        render_table(data, "diff", against="sasrec")
    with pytest.raises(QarmError, match="needs a study or a grid"):
        diff_table({"kind": "run", "rank": {"variants": v}})
    assert main(["results", path, "--table", "diff", "--against", "frozen_mm"]) == 0
    assert "click cold AUC − `frozen_mm`" in capsys.readouterr().out


def test_buckets_table_against_a_variant_pairs_each_bucket_by_seed(capsys):
    """The committed movielens-1m-subset study: per-bucket differences against ia_rep, by hand."""
    from qarm.report.results import render_table

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "results", "ml1m-subset-study.json")
    data = load_results(path)
    text = render_table(data, "buckets", against="ia_rep")
    header = text.splitlines()[0]
    assert header.startswith("| variant | click AUC 0 − `ia_rep` | click AUC 1-4 − `ia_rep` |")
    b = data["buckets"]
    d = np.subtract(b["qarm"]["click"]["1-4"]["values"], b["ia_rep"]["click"]["1-4"]["values"])
    row = next(r for r in text.splitlines() if r.startswith("| `qarm` |"))
    assert row.split(" | ")[2] == f"{d.mean():+.4f} ± {d.std(ddof=1):.4f} ({int((d > 0).sum())}/3)"
    assert "| `ia_rep` |" not in text
    with pytest.raises(QarmError, match="reference variant 'sasrec'"):
        render_table(data, "buckets", against="sasrec")
    with pytest.raises(QarmError, match="needs a study"):
        render_table({"kind": "run", "rank": {"buckets": b}}, "buckets", against="ia_rep")
    assert main(["results", path, "--table", "buckets", "--against", "ia_rep"]) == 0
    assert "click AUC 100+ − `ia_rep`" in capsys.readouterr().out


def test_diff_table_of_a_grid_has_a_row_per_point_and_variant():
    from qarm.report.results import diff_table

    path = os.path.join(os.path.dirname(__file__), "..", "docs", "results", "ml100k-grid-code-dropout.json")
    data = load_results(path)
    lines = diff_table(data).splitlines()
    assert lines[0].startswith("| `rank.code_dropout` | variant | click AUC − `qarm` |")
    assert [ln.split(" | ")[:2] for ln in lines[2:]] == [["| 0", "`qarm_raw`"], ["| 0.3", "`qarm_raw`"]]
    st = data["points"][1]["study"]["variants"]
    d = np.subtract(st["qarm_raw"]["click"]["gauc"]["values"], st["qarm"]["click"]["gauc"]["values"])
    assert lines[3].split(" | ")[3] == f"{d.mean():+.4f} ± {d.std(ddof=1):.4f} ({int((d > 0).sum())}/3)"
