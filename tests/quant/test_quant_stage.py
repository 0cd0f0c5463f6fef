"""The quantize stage and `qarm assign` on real MovieLens 100K (aligned embeddings from the align stage)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from qarm.cli import main as cli_main
from qarm.io import read_json, read_npy, read_parquet
from qarm.quant.assign import CodeAssigner
from qarm.quant.checks import EmbeddingError
from qarm.quant.metrics import collision_stats
from qarm.quant.rq import RQKMeans

STAGES = ["prepare", "pairs", "align", "quantize"]


@pytest.fixture(scope="module")
def run_dir(ml100k_path, pipeline_run):
    return pipeline_run("ml100k-fast", STAGES)


def _stack(col) -> np.ndarray:
    return np.stack(col.to_numpy()).astype(np.int32)


def test_codes_parquet_schema_and_metrics(run_dir):
    items = read_parquet(run_dir / "items.parquet")
    table = pq.read_table(run_dir / "codes.parquet")
    for col in ("vq", "rq"):
        assert pa.types.is_list(table.schema.field(col).type) and table.schema.field(col).type.value_type == pa.int32()
    codes = table.to_pandas()
    np.testing.assert_array_equal(codes["item_id"].to_numpy(), items["item_id"].to_numpy())
    vq, rq = _stack(codes["vq"]), _stack(codes["rq"])
    assert vq.shape == (len(items), 25) and rq.shape == (len(items), 3)
    assert rq.min() >= 0 and rq.max() < 32
    m = read_json(run_dir / "metrics.json")["quantize"]
    for key in ("rq.levels", "rq.sizes", "rq.collision_rate", "rq.unique_sid_ratio", "rq.max_items_per_code",
                "rq.mean_items_per_code", "rq.utilization", "rq.perplexity", "rq.rel_recon_error", "vq.k",
                "vq.pool_size", "vq.distinct_codes_used", "vq.neighbor_overlap"):
        assert key in m, key
    assert m["rq.sizes"] == [32, 32, 32] and len(m["rq.perplexity"]) == 3
    assert m["rq.collision_rate"] == pytest.approx(collision_stats(rq)["collision_rate"])
    assert m["rq.rel_recon_error"][0] > m["rq.rel_recon_error"][-1] > 0
    assert m["vq.distinct_codes_used"] <= m["vq.pool_size"]


def test_holdout_items_never_fit_but_coded(run_dir):
    items = read_parquet(run_dir / "items.parquet")
    holdout = items["holdout"].to_numpy()
    assert holdout.any()
    meta = read_json(run_dir / "quant" / "quantize.json")
    assert meta["n_fit_items"] == int((~holdout).sum())
    pool_ids = read_npy(run_dir / "quant" / "vq_pool_ids.npy")
    assert not np.isin(pool_ids, items["item_id"][holdout]).any()  # held-out items never enter the pool
    # their codes are the frozen models' transform of their content embedding
    emb = read_npy(run_dir / "emb_aligned.npy")
    codes = read_parquet(run_dir / "codes.parquet")
    vq, rq = CodeAssigner.load(run_dir).assign(emb[holdout], item_ids=items["item_id"].to_numpy()[holdout])
    np.testing.assert_array_equal(rq, _stack(codes["rq"])[holdout])
    np.testing.assert_array_equal(vq, _stack(codes["vq"])[holdout])


def test_balanced_codes_collide_less_than_plain_on_real_embeddings(run_dir):
    items = read_parquet(run_dir / "items.parquet")
    emb = read_npy(run_dir / "emb_aligned.npy")
    fit = ~items["holdout"].to_numpy()
    codes = _stack(read_parquet(run_dir / "codes.parquet")["rq"])
    plain = RQKMeans([32, 32, 32], n_iter=25, balanced=False, seed=0).fit(emb[fit])
    plain_codes = plain.transform(emb)
    assert collision_stats(codes)["collision_rate"] <= collision_stats(plain_codes)["collision_rate"]
    m = read_json(run_dir / "metrics.json")["quantize"]
    plain_mse = float(np.mean(np.sum((emb - plain.inverse_transform(plain_codes)) ** 2, axis=1)))
    assert m["rq.mse"] <= 1.05 * plain_mse


@pytest.mark.parametrize("size", [0, 1, 7, 200])  # 0: the whole catalogue
def test_assign_cli_reproduces_catalogue_codes_exactly(run_dir, tmp_path, size):
    """`qarm assign` re-encodes the items from their content with the run's encoder (no cached
    embedding) and codes them: the whole catalogue, or a random subset as one request, gets exactly
    codes.parquet's codes (the encoder and the RQ transform are batch-invariant)."""
    items = read_parquet(run_dir / "items.parquet")
    rows = np.arange(len(items)) if size == 0 else np.sort(np.random.default_rng(size).choice(len(items), size,
                                                                                                 replace=False))
    new = items.iloc[rows].copy()
    src = tmp_path / "items.parquet"
    new.to_parquet(src)
    out = tmp_path / "codes.parquet"
    assert cli_main(["assign", "--run", str(run_dir), "--items", str(src), "--out", str(out)]) == 0
    got = read_parquet(out)
    ref = read_parquet(run_dir / "codes.parquet").set_index("item_id").loc[new["item_id"]]
    np.testing.assert_array_equal(got["item_id"].to_numpy(), new["item_id"].to_numpy())
    np.testing.assert_array_equal(_stack(got["rq"]), _stack(ref["rq"]))
    np.testing.assert_array_equal(_stack(got["vq"]), _stack(ref["vq"]))


def test_assign_errors(run_dir, tmp_path):
    assigner = CodeAssigner.load(run_dir)
    with pytest.raises(EmbeddingError, match="dimension mismatch"):
        assigner.assign(np.ones((2, assigner.dim + 1), np.float32))
    bad = np.ones((3, assigner.dim), np.float32)
    bad[1, 0] = np.nan
    with pytest.raises(EmbeddingError, match="NaN or inf: rows 1"):
        assigner.assign(bad)
    csv = tmp_path / "broken.csv"
    csv.write_text("title\nA film\n")
    assert cli_main(["assign", "--run", str(run_dir), "--items", str(csv), "--out", str(tmp_path / "x.parquet")]) == 2
