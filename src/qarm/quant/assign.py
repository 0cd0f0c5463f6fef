"""Codes for new items against a run's frozen codebooks and pool (``qarm assign``), no refitting.

The same embedding always gets the same codes: RQ is a fixed function of the vector (codebooks + frozen
prices), VQ searches the frozen pool index; an item that is itself in the pool skips itself, exactly as
in the quantize stage, so re-assigning a catalogue item reproduces its row of codes.parquet.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from qarm.errors import DataError, StageInputError
from qarm.io import read_json, read_parquet, write_parquet
from qarm.quant.checks import check_embeddings
from qarm.quant.rq import RQKMeans
from qarm.quant.vq import VQCoder


class CodeAssigner:
    """Frozen VQ coder + RQ-Kmeans of one run directory."""

    def __init__(self, vq: VQCoder, rq: RQKMeans, embedding: str = "emb_aligned.npy") -> None:
        self.vq, self.rq, self.embedding = vq, rq, embedding
        self.dim = rq.dim_

    @classmethod
    def load(cls, run_dir: str | Path) -> CodeAssigner:
        quant = Path(run_dir) / "quant"
        meta = read_json(quant / "quantize.json")
        if meta is None:
            raise StageInputError(f"{quant / 'quantize.json'} is missing: run the 'quantize' stage first "
                                  f"(qarm quantize CONFIG --out {run_dir})")
        from qarm.quant.fsq import load_quantizer  # RQ-Kmeans or Res-Kmeans-FSQ, as the run fitted it

        return cls(VQCoder.load(quant), load_quantizer(quant), meta.get("embedding", "emb_aligned.npy"))

    def assign(self, emb: np.ndarray, item_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """emb float32 [n, dim] -> (vq int32 [n, K], rq int32 [n, L]).

        ``item_ids`` (optional, [n]) lets a pool item skip itself in its VQ code, as at quantize time.
        """
        emb = check_embeddings(emb, "CodeAssigner.assign(emb)", dim=self.dim, ids=item_ids)
        return self.vq.transform(emb, item_ids=item_ids), self.rq.transform(emb)


def read_items_file(path: str | Path) -> pd.DataFrame:
    """New items, Parquet or CSV in the items schema (item_id plus whatever content columns exist)."""
    path = Path(path)
    if not path.exists():
        raise DataError("file not found", file=str(path))
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        df = read_parquet(path)
    elif suffix in (".csv", ".tsv"):
        df = pd.read_csv(path, sep="\t" if suffix == ".tsv" else ",", keep_default_na=False, na_values=[""])
    else:
        raise DataError(f"unsupported items file type {suffix!r}: expected .parquet or .csv", file=str(path))
    if "item_id" not in df.columns:
        raise DataError(f"missing column; columns present: {', '.join(map(str, df.columns))}", file=str(path),
                        column="item_id")
    ids = pd.to_numeric(df["item_id"], errors="coerce")
    bad = np.flatnonzero(ids.isna().to_numpy() | (ids.to_numpy() != np.round(ids.to_numpy())))
    if bad.size:
        raise DataError(f"expected integer item ids, got {df['item_id'].iloc[bad[0]]!r}", file=str(path),
                        row=int(bad[0]), column="item_id")
    dup = np.flatnonzero(ids.duplicated().to_numpy())
    if dup.size:
        raise DataError(f"duplicate item_id {int(ids.iloc[dup[0]])}", file=str(path), row=int(dup[0]), column="item_id")
    df = df.copy()
    df["item_id"] = ids.astype(np.int64)
    return df


def assign_items(run_dir: str | Path, items_path: str | Path, out_path: str | Path) -> dict:
    """Encode the items of ``items_path`` with the run's aligned encoder, code them, write ``out_path``.

    Returns {"n_items", "n_in_pool", "dim"}; the Parquet has item_id, vq list<int32>, rq list<int32>.
    """
    from qarm.align.encoder import load_item_encoder
    from qarm.quant.stage import codes_table

    assigner = CodeAssigner.load(run_dir)
    items = read_items_file(items_path)
    encoder = load_item_encoder(run_dir)
    emb = encoder.encode_raw(items) if assigner.embedding == "emb_raw.npy" else encoder.encode(items)
    ids = items["item_id"].to_numpy(np.int64)
    emb = check_embeddings(emb, f"{items_path} (encoded)", dim=assigner.dim, ids=ids)
    vq, rq = assigner.assign(emb, item_ids=ids)
    write_parquet(out_path, codes_table(ids, vq, rq))
    return {"n_items": len(ids), "n_in_pool": int(np.isin(ids, assigner.vq.pool_ids_).sum()),
            "dim": int(emb.shape[1])}
