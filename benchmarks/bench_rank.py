"""Ranker throughput and AUC against deepctr-torch's DIN on identical data and dimensions.

Both models get the same integer features of real MovieLens 100K with a plain 80/10/10 temporal
split (no item hold-out): user id, target item id, the last N positives (item ids) before each
event; click label (rating >= 4). Same embedding size, DIN attention sizes and DNN sizes, Adam,
batch 1024, same number of epochs; both on CPU with the same thread count, in the same run.
Prints training / evaluation samples per second, test AUC, and qarm / deepctr ratios.

    python benchmarks/bench_rank.py                       # full ml-100k, 1 epoch (about 1-3 min)
    python benchmarks/bench_rank.py --epochs 2 --threads 2 --max-train 20000
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def prepare(data: Path, out: Path):
    from qarm.config import load_config
    from qarm.runner import RunDir, run_stages

    cfg = load_config("movielens-100k", [f"data.path={data}", "split.holdout_item_frac=0.0",
                                         "split.train_frac=0.8", "split.valid_frac=0.1"])
    run_stages(cfg, out, stages=["prepare"], log=lambda m: None)
    return RunDir(out)


def features(run, history: int):
    from qarm.rank.features import build_events, build_item_tables

    tables = build_item_tables(run.items(), None, {})
    ev, info = build_events(tables, run.events(), ["click"], "click", history, 0)
    return tables, ev, info


def left_aligned(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Our histories are right-aligned (padding first); deepctr masks by length (padding last)."""
    n = hist.shape[1]
    length = (hist > 0).sum(1)
    idx = (np.arange(n)[None, :] + (n - length)[:, None]) % n
    out = np.take_along_axis(hist, idx, axis=1)
    out[np.arange(n)[None, :] >= length[:, None]] = 0
    return out, length


def run_qarm(tables, ev, args) -> dict:
    from qarm.rank.config import RankConfig
    from qarm.rank.features import variant_specs
    from qarm.rank.metrics import auc
    from qarm.rank.model import RankModel
    from qarm.rank.train import TensorData, fit, predict

    rc = RankConfig(tasks=["click"], history=args.history, dim=args.dim, epochs=args.epochs, patience=0,
                    batch_size=args.batch, lr=args.lr, att_hidden=[64, 16], dnn_hidden=[256, 128])
    specs = variant_specs("id", tables, int(ev.user.max()) + 1, rc.history, 0, rc.dim, rc.code_dim, rc.count_dim)
    torch.manual_seed(0)
    model = RankModel(specs, tables, 1, rc.att_hidden, rc.dnn_hidden, att_dim=rc.dim)
    data = {s: TensorData(ev.subset(ev.split == s), specs) for s in ("train", "valid", "test")}
    if args.max_train:
        data["train"] = TensorData(ev.subset(np.flatnonzero(ev.split == "train")[: args.max_train]), specs)
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(model, data["train"], data["valid"], rc, 0, Path(tmp) / "ckpt.pt", "bench", desc="qarm DIN")
    # the model holds the last epoch's weights, as the peer does (no best-epoch pick)
    t0 = time.perf_counter()
    p = predict(model, data["test"], args.eval_batch)[:, 0]
    eval_s = time.perf_counter() - t0
    y = data["test"].tensors["labels"].numpy()[:, 0]
    return {"train_sps": res.train_samples / res.train_seconds, "eval_sps": len(y) / eval_s, "auc": auc(y, p)}


def run_deepctr(tables, ev, args) -> dict:
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DIN

    from qarm.rank.metrics import auc

    n_items, n_users = tables.vocab["item_id"], int(ev.user.max()) + 1
    item_idx = tables.index["item_id"][:, 0]  # item row -> id vocabulary index (same ids as ours)
    cols = [SparseFeat("user_id", n_users, embedding_dim=args.dim),
            SparseFeat("item_id", n_items, embedding_dim=args.dim),
            VarLenSparseFeat(SparseFeat("hist_item_id", n_items, embedding_dim=args.dim, embedding_name="item_id"),
                             maxlen=args.history, length_name="seq_length")]

    def inputs(mask):
        hist, length = left_aligned(item_idx[ev.history[mask]])
        return {"user_id": ev.user[mask], "item_id": item_idx[ev.target[mask]], "hist_item_id": hist,
                "seq_length": length}, ev.labels[mask, 0]

    train_mask = np.flatnonzero(ev.split == "train")[: args.max_train or None]
    x_train, y_train = inputs(train_mask)
    x_test, y_test = inputs(ev.split == "test")
    torch.manual_seed(0)
    model = DIN(cols, ["item_id"], dnn_hidden_units=(256, 128), att_hidden_size=(64, 16),
                att_activation=args.peer_att_activation, device="cpu", seed=0)
    model.compile(torch.optim.Adam(model.parameters(), lr=args.lr), "binary_crossentropy")
    t0 = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch, epochs=args.epochs, verbose=0, shuffle=True)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    p = model.predict(x_test, batch_size=args.eval_batch)[:, 0]
    eval_s = time.perf_counter() - t0
    return {"train_sps": len(y_train) * args.epochs / train_s, "eval_sps": len(y_test) / eval_s, "auc": auc(y_test, p)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "movielens-100k")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--eval-batch", type=int, default=8192)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-train", type=int, default=0, help="use only the first N train events (0 = all)")
    ap.add_argument("--peer-att-activation", default="Dice", help="deepctr DIN attention activation (its default: Dice)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        tables, ev, info = features(prepare(args.data, Path(tmp)), args.history)
        feat_s = time.perf_counter() - t0
    print(f"ml-100k 80/10/10 temporal split: {info['n_train']} train / {info['n_valid']} valid / {info['n_test']} test "
          f"events; features (prepare + histories) in {feat_s:.1f}s; batch {args.batch}, history {args.history}, "
          f"dim {args.dim}, DIN att (64, 16), DNN (256, 128), {args.epochs} epoch(s), {args.threads} thread(s)")
    ours = run_qarm(tables, ev, args)
    peer = run_deepctr(tables, ev, args)
    for name, r in (("qarm DIN (id features)", ours), (f"deepctr-torch DIN ({args.peer_att_activation})", peer)):
        print(f"{name:34s} train {r['train_sps']:9.0f} samples/s   eval {r['eval_sps']:9.0f} samples/s   "
              f"test AUC {r['auc']:.4f}")
    print(f"ratio qarm / deepctr: train {ours['train_sps'] / peer['train_sps']:.2f}x, "
          f"eval {ours['eval_sps'] / peer['eval_sps']:.2f}x, AUC {ours['auc'] - peer['auc']:+.4f}")


if __name__ == "__main__":
    main()
