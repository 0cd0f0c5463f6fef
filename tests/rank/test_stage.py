"""The train stage on real ml-100k: the ablation table, serving, SIGKILL resume, DDP on 2 processes."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rank_helpers import tiny_overrides

from qarm.config import load_config
from qarm.rank.predict import load_ranker
from qarm.rank.stage import fingerprint, run_train
from qarm.runner import RunDir, run_stages

CONFIG = Path(__file__).parents[1] / "configs" / "ml100k-fast.yaml"
VARIANTS = ["id", "frozen_mm", "ia_rep", "vq", "rq", "qarm", "qarm_dense"]


def test_train_stage_writes_the_variant_table_and_a_servable_ranker(ml_run, ml100k_path):
    run_dir = ml_run  # the shared session run: the end-to-end test then finds 'train' up to date
    run_stages(load_config(CONFIG, [f"data.path={ml100k_path}"]), run_dir, stages=["train"])
    rank = json.loads((run_dir / "metrics.json").read_text())["rank"]
    assert set(rank["variants"]) == set(VARIANTS)
    for v in VARIANTS:
        for task in ("click", "like"):
            m = rank["variants"][v][task]
            assert {"auc", "gauc", "logloss", "cold_auc"} <= set(m)
            assert all(set(m[k]) == {"mean", "std"} for k in ("auc", "gauc", "logloss", "cold_auc"))
            assert 0.0 < m["logloss"]["mean"] < 1.0 and not math.isnan(m["cold_auc"]["mean"])
            for pop in ("warm_users", "new_users"):
                assert set(m[pop]) == {"auc", "gauc"} and all(set(m[pop][k]) == {"mean", "std"} for k in m[pop])
                assert 0.5 < m[pop]["auc"]["mean"] < 1.0, (v, task, pop, m[pop])
        assert rank["variants"][v]["click"]["auc"]["mean"] > 0.62, (v, rank["variants"][v])
        assert {"0", "1-4", "100+"} <= set(rank["buckets"][v]["click"])
    assert rank["throughput"]["train_samples_per_s"] > 0 and rank["throughput"]["eval_samples_per_s"] > 0
    assert rank["n_empty_history"] > 0 and rank["n_cold_test"] > 0
    assert rank["n_test_warm_user_events"] + rank["n_test_new_user_events"] == rank["n_test"]
    assert rank["n_test_warm_user_events"] > 0 and rank["n_test_new_user_events"] > 0
    # the id variant cannot tell two held-out items apart (both are the OOV id); qarm can, by codes
    items = pd.read_parquet(run_dir / "items.parquet")
    held = items.loc[items["holdout"], "item_id"].to_numpy()[:20].tolist()
    id_scores = load_ranker(run_dir, "id").score([1, 50, 100], held, user_id=5)["click"]
    qarm_scores = load_ranker(run_dir, "qarm").score([1, 50, 100], held, user_id=5)["click"]
    assert np.ptp(id_scores) < 1e-6 < np.ptp(qarm_scores)

    ranker = load_ranker(run_dir, "qarm")
    history, candidates = [1, 50, 100, 181, 258], [1, 2, 3, 300, 1682]
    scores = ranker.score(history, candidates, user_id=1)
    assert set(scores) == {"click", "like"} and scores["click"].shape == (5,)
    assert ((scores["click"] > 0) & (scores["click"] < 1)).all()
    assert np.isfinite(ranker.score([], candidates)["like"]).all()  # empty history, unknown user
    assert not np.allclose(ranker.score(history[:1], candidates)["click"], scores["click"])
    assert load_ranker(run_dir).variant == rank["default_variant"]


def test_online_scores_reproduce_predictions_parquet(ml_run, ml100k_path):
    """Ranker.score, given an event's history as serving would pass it, returns the probability
    predict() wrote for that event; an item passed by content (extra_items) scores as its tables
    entry does."""
    from qarm.io import read_npy, read_parquet
    from qarm.rank.predict import ItemContent
    from qarm.rank.stage import load_inputs

    cfg = load_config(CONFIG, [f"data.path={ml100k_path}"])
    run_stages(cfg, ml_run, stages=["train"])
    inp = load_inputs(cfg.rank, RunDir(ml_run), cfg.quantize.rq_sizes[0], cfg.seed)
    ev = inp.events
    sel = np.flatnonzero(np.isin(ev.split, ["test", "cold_test"]))
    order = np.r_[sel[ev.split[sel] == "test"], sel[ev.split[sel] == "cold_test"]]  # predictions' row order
    codes = read_parquet(ml_run / "codes.parquet").set_index("item_id")
    dense = {n: read_npy(ml_run / n) for n in ("emb_raw.npy", "emb_aligned.npy")}
    picks = np.r_[np.random.default_rng(0).choice(len(order), 25, replace=False), len(order) - 1]
    for variant in ("id", "frozen_mm", "qarm", "qarm_dense"):
        pred = pd.read_parquet(ml_run / "rank" / variant / "seed0" / "predictions.parquet")
        ranker = load_ranker(ml_run, variant)
        assert ranker.needs_dense == ({"emb_raw.npy"} if variant == "frozen_mm" else
                                      {"emb_aligned.npy"} if variant == "qarm_dense" else set())
        for j in picks:
            e = order[j]
            hist = inp.item_ids[ev.hist.values[ev.hist.start[e]:ev.hist.end[e]] - 2]
            item = int(inp.item_ids[ev.target[e] - 2])
            assert pred["item_id"].iloc[j] == item and pred["user_id"].iloc[j] == ev.user_id[e]
            got = ranker.score(hist.tolist(), [item], user_id=int(ev.user_id[e]))
            for task in ("click", "like"):
                assert abs(float(got[task][0]) - float(pred[f"p_{task}"].iloc[j])) < 1e-6, (variant, j, task)
            row = int(ev.target[e]) - 2
            content = ItemContent(codes.loc[item, "vq"], codes.loc[item, "rq"], {n: d[row] for n, d in dense.items()})
            by_content = ranker.score(hist.tolist(), [item], user_id=int(ev.user_id[e]), extra_items={item: content})
            if ev.split[e] == "cold_test":  # held-out: its tables entry is already an OOV id plus content
                assert abs(float(by_content["click"][0]) - float(got["click"][0])) < 1e-6


def _cmd(out: Path, variant: str, epochs: int) -> list[str]:
    sets = [a for o in tiny_overrides(variant, epochs) for a in ("--set", o)]
    return [sys.executable, "-m", "qarm.rank", str(CONFIG), "--out", str(out), *sets]


def test_resume_after_sigkill_ends_with_identical_metrics(tiny_run, tmp_path):
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for f in tiny_run.iterdir():
        (ref_dir / f.name).write_bytes(f.read_bytes())
    cfg = load_config(CONFIG, tiny_overrides("rq", 2))
    reference = run_train(cfg, RunDir(ref_dir))

    ckpt = tiny_run / "rank" / "rq" / "seed0" / "ckpt.pt"
    proc = subprocess.Popen(_cmd(tiny_run, "rq", 2), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)  # after the first epoch's checkpoint, during the second
    proc.wait()
    assert ckpt.exists() and not (tiny_run / "rank" / "rq" / "seed0" / "result.json").exists()
    done = subprocess.run(_cmd(tiny_run, "rq", 2), check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((tiny_run / "rank" / "rq" / "seed0" / "result.json").read_text())
    assert result["resumed_from_epoch"] >= 1
    resumed = json.loads((tiny_run / "metrics.json").read_text())["rank"]
    def same(d):  # NaN-safe equality (metrics.json writes NaN as null)
        def clean(x):
            if isinstance(x, dict):
                return {k: clean(v) for k, v in x.items()}
            return None if isinstance(x, float) and math.isnan(x) else x
        return json.dumps(clean(d), sort_keys=True)

    assert same(resumed["variants"]) == same(reference["variants"])
    assert same(resumed["buckets"]) == same(reference["buckets"])


@pytest.mark.parametrize("sparse", [False, True])
def test_ddp_trains_with_two_cpu_processes(tiny_run, sparse):
    """Dense tables, and ``rank.sparse_ids`` (sparse gradients all-reduced over gloo)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *_cmd(tiny_run, "qarm", 1)[1:], "--set", f"rank.sparse_ids={str(sparse).lower()}"]
    done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    rank = json.loads((tiny_run / "metrics.json").read_text())["rank"]
    assert rank["world_size"] == 2
    assert np.isfinite(rank["variants"]["qarm"]["click"]["auc"]["mean"])
    assert (tiny_run / "rank" / "qarm" / "seed0" / "model.pt").exists()


def test_sparse_id_tables_train_to_a_comparable_model_and_serve(tiny_run):
    """``rank.sparse_ids``: row-wise Adam on the embedding tables. The model it saves is an
    ordinary one (dense weights) that the service loads; its quality is close to dense Adam's."""
    aucs = {}
    for sparse in (False, True):
        cfg = load_config(CONFIG, tiny_overrides("qarm", 2) + [f"rank.sparse_ids={str(sparse).lower()}"])
        res = run_train(cfg, RunDir(tiny_run))
        aucs[sparse] = res["variants"]["qarm"]["click"]["auc"]["mean"]
    assert abs(aucs[True] - aucs[False]) < 0.03, aucs
    ranker = load_ranker(tiny_run, "qarm", 0)   # the sparse run's model, as the service loads it
    assert not ranker.model_.user.sparse
    events = pd.read_parquet(tiny_run / "events.parquet")
    items = [int(i) for i in events["item_id"].iloc[:6]]
    scores = ranker.score(items[:3], items[3:], user_id=int(events["user_id"].iloc[0]))
    assert scores["click"].shape == (3,) and np.isfinite(scores["click"]).all()


def test_fingerprint_leaves_out_the_fields_a_variant_does_not_read():
    base = load_config(CONFIG, [])
    def fp(variant: str, *sets: str) -> str:
        return fingerprint(load_config(CONFIG, list(sets)), variant, 0, "inputs")

    for field, value in (("code_dropout", "0.6"), ("drop_private_codes", "true"), ("sim_depth", "2")):
        assert fp("ia_rep", f"rank.{field}={value}") == fp("ia_rep") == fp("ia_rep", "rank.seeds=[5]")
        assert fp("id", f"rank.{field}={value}") == fp("id")
        assert fp("qarm", f"rank.{field}={value}") != fp("qarm") and fp("rq", f"rank.{field}={value}") != fp("rq")
    assert fp("rq", "rank.vq_table=item_id") == fp("rq") and fp("vq", "rank.vq_table=item_id") != fp("vq")
    assert fp("qarm", "rank.sim_clusters=7") == fp("qarm") and fp("qarm_dense", "rank.sim_clusters=7") != fp("qarm_dense")
    # a field added later, at its "off" value, leaves the fingerprints of earlier runs as they were
    assert fp("qarm", "rank.embedding_l2=0") == fp("qarm") != fp("qarm", "rank.embedding_l2=1e-5")
    assert fp("ia_rep", "rank.simulated_cold=0") == fp("ia_rep") != fp("ia_rep", "rank.simulated_cold=0.1")
    # what every variant reads still counts, and so do the seeds and the inputs
    assert fp("ia_rep", "rank.item_id_dropout=0.1") != fp("ia_rep")
    assert fingerprint(base, "ia_rep", 1, "inputs") != fp("ia_rep")
    assert fingerprint(base, "ia_rep", 0, "other") != fp("ia_rep")


def test_config_errors_are_clear(tmp_path):
    from qarm.errors import ConfigError

    cfg = load_config(CONFIG, ["rank.variants=[id, bogus]"])
    with pytest.raises(ConfigError, match="bogus"):
        run_train(cfg, RunDir(tmp_path))
    for bad, match in (("rank.device=gpu", "rank.device.*'gpu'"), ("rank.item_id_dropout=1.5", "rank.item_id_dropout"),
                       ("rank.code_dropout=-0.1", "rank.code_dropout"),
                       ("rank.drop_private_codes=0.5", "rank.drop_private_codes: expected true or false"),
                       ("rank.code_content=2", "rank.code_content: expected true or false"),
                       ("rank.code_rows=false", "rank.code_rows: false .* needs rank.code_content: true"),
                       ("rank.code_content_source=pca", "rank.code_content_source: expected quantized, raw, aligned"),
                       ("rank.embedding_l2=-1e-5", "rank.embedding_l2: expected a finite number >= 0"),
                       ("rank.simulated_cold=1", "rank.simulated_cold: expected a rate in \\[0, 1\\)")):
        with pytest.raises(ConfigError, match=match):
            run_train(load_config(CONFIG, [bad]), RunDir(tmp_path))


def test_device_selection_for_the_ranker():
    import torch

    from qarm.distributed import backend_for, resolve_device

    assert resolve_device("cpu", "rank.device") == torch.device("cpu")
    auto = resolve_device("auto", "rank.device")
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert backend_for(auto) == ("nccl" if auto.type == "cuda" else "gloo")
    if not torch.cuda.is_available():
        from qarm.errors import ConfigError

        with pytest.raises(ConfigError, match="rank.device.*no CUDA"):
            resolve_device("cuda", "rank.device")


def test_id_dropout_trains_the_oov_rows(tiny_run):
    """With item / user id dropout the OOV rows (which no train event names) leave their init."""
    import torch

    from qarm.rank.features import variant_specs
    from qarm.rank.model import RankModel
    from qarm.rank.stage import _seed_all, load_inputs

    moved = {}
    for rate in (0.0, 0.3):
        sets = tiny_overrides("id", 1) + [f"rank.item_id_dropout={rate}", f"rank.user_id_dropout={rate}"]
        cfg = load_config(CONFIG, sets)
        run_train(cfg, RunDir(tiny_run))
        saved = torch.load(tiny_run / "rank" / "id" / "seed0" / "model.pt", weights_only=True)["state_dict"]
        inp = load_inputs(cfg.rank, RunDir(tiny_run), 32, cfg.seed)
        rc = cfg.rank
        specs = variant_specs("id", inp.tables, len(inp.user_vocab) + 2, rc.history, rc.sim_history,
                              rc.dim, rc.code_dim, rc.count_dim)
        _seed_all(cfg, 0)  # the stage's init, reproduced
        init = RankModel(specs, inp.tables, len(rc.tasks), list(rc.att_hidden), list(rc.dnn_hidden),
                         att_dim=rc.dim).state_dict()
        moved[rate] = {k: float((saved[k][1] - init[k][1]).norm()) for k in ("item.item_id.weight", "user.weight")}
    for k in moved[0.0]:
        assert moved[0.0][k] < 1e-6 < moved[0.3][k], moved  # untouched without dropout, trained with it


def test_simulated_cold_items_read_the_oov_id_everywhere_and_stay_fixed(tiny_run):
    import torch

    from qarm.rank.stage import load_inputs, simulate_cold

    cfg = load_config(CONFIG, tiny_overrides("qarm", 1) + ["rank.simulated_cold=0.2"])
    inp = load_inputs(cfg.rank, RunDir(tiny_run), 32, cfg.seed)
    before = inp.tables.index["item_id"].copy()
    cold = simulate_cold(inp.tables, 0.2, cfg.seed, 0)
    assert np.array_equal(inp.tables.index["item_id"], before), "the shared tables are not edited"
    trained = before[:, 0] > 1
    made = trained & (cold.index["item_id"][:, 0] == 1)
    assert 0.15 < made.sum() / trained.sum() < 0.25
    assert np.array_equal(cold.index["item_id"][~made], before[~made])
    again = simulate_cold(inp.tables, 0.2, cfg.seed, 0).index["item_id"]
    assert np.array_equal(again, cold.index["item_id"])                       # a fixed draw
    assert not np.array_equal(simulate_cold(inp.tables, 0.2, cfg.seed, 1).index["item_id"], again)
    assert simulate_cold(inp.tables, 0.0, cfg.seed, 0) is inp.tables
    # trained with it, the saved model (what serving and `qarm ablate` read) carries the same ids
    run_train(cfg, RunDir(tiny_run))
    saved = torch.load(tiny_run / "rank" / "qarm" / "seed0" / "model.pt", weights_only=True)
    assert np.array_equal(saved["tables"]["index"]["item_id"].numpy(), cold.index["item_id"])
    from qarm.rank.ablate import feature_ablation

    rows = feature_ablation(cfg, tiny_run, "qarm")
    result = json.loads((tiny_run / "rank" / "qarm" / "seed0" / "result.json").read_text())
    assert rows[0]["test_auc"] == pytest.approx(result["tasks"]["click"]["auc"], abs=1e-9)
    from qarm.errors import ConfigError

    with pytest.raises(ConfigError, match="rank.simulated_cold works with rank.vq_table: own only"):
        run_train(load_config(CONFIG, tiny_overrides("qarm", 1) + ["rank.simulated_cold=0.2",
                                                                   "rank.vq_table=item_id"]), RunDir(tiny_run))


def test_qarm_raw_adds_the_codes_to_the_raw_vector_and_serves_new_items_by_content(tiny_run):
    """``qarm_raw`` (the paper's production ranker: the cached raw vector it had, plus the codes)
    reads the raw embedding and the codes; an item sent by content scores as its offline row."""
    cfg = load_config(CONFIG, tiny_overrides("qarm_raw", 1))
    res = run_train(cfg, RunDir(tiny_run))
    # one epoch on a twentieth of the users: a figure, not a quality check (the studies measure that)
    assert 0.0 < res["variants"]["qarm_raw"]["click"]["auc"]["mean"] < 1.0
    ranker = load_ranker(tiny_run, "qarm_raw", 0)
    assert ranker.needs_dense == {"emb_raw.npy"} and ranker.needs_codes
    _assert_served_as_offline(cfg, tiny_run, "qarm_raw", ["emb_raw.npy"])


@pytest.mark.parametrize("rows", [True, False])
def test_code_content_backs_each_code_with_its_items_mean_and_serves_as_offline(tiny_run, rows):
    """``rank.code_content``: each code's content vector is the mean aligned embedding of the
    trained items that carry it; its projection trains; online scores (cold items sent by their
    codes) equal the offline predictions. ``rank.code_rows: false``: the codes have no rows."""
    import torch

    from qarm.errors import StageInputError
    from qarm.io import read_npy
    from qarm.rank.stage import load_inputs

    cfg = load_config(CONFIG, tiny_overrides("qarm", 1) + ["rank.code_content=true", f"rank.code_rows={str(rows).lower()}"])
    with pytest.raises(StageInputError, match="quant/quantize.json is missing"):
        load_inputs(cfg.rank, RunDir(tiny_run), 32, cfg.seed)   # which embedding the codes came from
    (tiny_run / "quant").mkdir()
    (tiny_run / "quant" / "quantize.json").write_text(json.dumps({"embedding": "emb_aligned.npy"}))
    inp = load_inputs(cfg.rank, RunDir(tiny_run), cfg.quantize.rq_sizes[0], cfg.seed)
    t, emb = inp.tables, read_npy(tiny_run / "emb_aligned.npy")
    plain = load_inputs(load_config(CONFIG, tiny_overrides("qarm", 1)).rank, RunDir(tiny_run), 32, cfg.seed)
    # the content files enter the code variants' input hash only: ia_rep & co. keep their runs
    assert inp.input_hash == plain.input_hash == plain.code_input_hash != inp.code_input_hash
    trained = t.index["item_id"][2:, 0] > 1
    for name in ("vq", "rq_l1", "rq_l2", "rq_p3"):
        content, idx = t.content[name], t.index[name][2:]
        assert content.shape == (t.vocab[name], emb.shape[1]) and not content[:2].any()   # PAD, OOV: 0
        for code in np.random.default_rng(0).choice(np.arange(2, t.vocab[name]), 5, replace=False):
            members = trained & (idx == code).any(1)
            assert members.any()   # every vocabulary code has a trained item: the compaction's rule
            assert np.allclose(content[code], emb[members].astype(np.float64).mean(0), atol=1e-6)
    if rows:   # the content vectors can average another embedding than the codes': here the raw one
        raw_cfg = load_config(CONFIG, tiny_overrides("qarm", 1) + ["rank.code_content=true",
                                                                   "rank.code_content_source=raw"])
        raw = load_inputs(raw_cfg.rank, RunDir(tiny_run), 32, cfg.seed)
        x = read_npy(tiny_run / "emb_raw.npy").astype(np.float64)
        code = int(t.index["rq_l1"][2:][trained][0, 0])
        members = trained & (t.index["rq_l1"][2:, 0] == code)
        assert np.allclose(raw.tables.content["rq_l1"][code], x[members].mean(0), atol=1e-5)
        assert raw.code_input_hash not in (inp.code_input_hash, inp.input_hash)
    res = run_train(cfg, RunDir(tiny_run))
    assert 0.0 < res["variants"]["qarm"]["click"]["auc"]["mean"] < 1.0
    saved = torch.load(tiny_run / "rank" / "qarm" / "seed0" / "model.pt", weights_only=True)
    assert {s["name"]: s["content"] for s in saved["specs"] if s["content"]} == {
        n: emb.shape[1] for n in ("vq", "rq_l1", "rq_l2", "rq_l3", "rq_p2", "rq_p3")}
    assert saved["state_dict"]["content_proj.vq.weight"].abs().sum() > 0
    assert {s["rows"] for s in saved["specs"] if s["content"]} == {rows}
    assert ("item.vq.weight" in saved["state_dict"]) == rows and "item.item_id.weight" in saved["state_dict"]
    assert not any(k.startswith("content_") and not k.startswith("content_proj") for k in saved["state_dict"])
    _assert_served_as_offline(cfg, tiny_run, "qarm", [])
    from qarm.rank.ablate import feature_ablation   # `qarm ablate` rebuilds the same model

    result = json.loads((tiny_run / "rank" / "qarm" / "seed0" / "result.json").read_text())
    assert feature_ablation(cfg, tiny_run, "qarm")[0]["test_auc"] == pytest.approx(result["tasks"]["click"]["auc"], abs=1e-9)
    # a fingerprint of its own: runs without it are not reused for it, and it is not a dense field
    assert fingerprint(cfg, "qarm", 0, "h") != fingerprint(load_config(CONFIG, tiny_overrides("qarm", 1)), "qarm", 0, "h")
    assert fingerprint(cfg, "ia_rep", 0, "h") == fingerprint(load_config(CONFIG, tiny_overrides("qarm", 1)), "ia_rep", 0, "h")


def _assert_served_as_offline(cfg, run_dir: Path, variant: str, dense_files: list[str]) -> None:
    """Scores of ``load_ranker`` for 5 warm test and 5 held-out cold events (sent by content: codes
    and ``dense_files``) equal the variant's predictions.parquet to 1e-6."""
    from qarm.io import read_npy, read_parquet
    from qarm.rank.predict import ItemContent
    from qarm.rank.stage import load_inputs

    ranker = load_ranker(run_dir, variant, 0)
    inp = load_inputs(cfg.rank, RunDir(run_dir), cfg.quantize.rq_sizes[0], cfg.seed)
    ev = inp.events
    pred = pd.read_parquet(run_dir / "rank" / variant / "seed0" / "predictions.parquet")
    sel = np.flatnonzero(np.isin(ev.split, ["test", "cold_test"]))
    order = np.r_[sel[ev.split[sel] == "test"], sel[ev.split[sel] == "cold_test"]]
    codes = read_parquet(run_dir / "codes.parquet").set_index("item_id")
    dense = {name: read_npy(run_dir / name) for name in dense_files}
    n_test = int((ev.split[sel] == "test").sum())
    assert 0 < n_test < len(order)  # both warm test and held-out cold_test events
    rng = np.random.default_rng(0)
    for j in np.r_[rng.choice(n_test, 5, replace=False), n_test + rng.choice(len(order) - n_test, 5, replace=False)]:
        e = order[j]
        hist = inp.item_ids[ev.hist.values[ev.hist.start[e]:ev.hist.end[e]] - 2].tolist()
        item, user = int(inp.item_ids[ev.target[e] - 2]), int(ev.user_id[e])
        content = ItemContent(codes.loc[item, "vq"], codes.loc[item, "rq"],
                              {name: x[ev.target[e] - 2] for name, x in dense.items()})
        got = ranker.score(hist, [item], user_id=user, extra_items=None if ev.split[e] == "test" else {item: content})
        assert abs(float(got["click"][0]) - float(pred["p_click"].iloc[j])) < 1e-6, (j, ev.split[e])
