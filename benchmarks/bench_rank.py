"""Ranker throughput and AUC against deepctr-torch's DIN, configured alike, both trained to early stopping.

Data (identical for both): real MovieLens 100K through qarm's own ``prepare`` with a plain
80/10/10 temporal split (no item hold-out); features from ``qarm.rank.stage.load_inputs``: user
id, target item id, the last N click positives (item ids) before each event; label click
(rating >= 4). Both models are a plain DIN on exactly these inputs: [user emb, target emb, DIN
attention pooling of the history] -> MLP -> logit.

Matched: embedding dim, id embedding init N(0, 0.01), no L2 (qarm weight_decay 0 = deepctr
l2_reg_embedding 0), attention activation unit sizes and activation (ReLU; deepctr's default
would be Dice), no attention softmax, DNN sizes and ReLU, no dropout or BN, PyTorch's default
Linear init for every dense layer (deepctr's own N(0, 1e-4) init is reset), Adam with the same
lr, batch size, thread count, and early stopping on the valid AUC with the same patience, the
best epoch's weights restored. Not matched (and cannot be without rewriting one of them): the
init of the attention unit's first layer (qarm factors W[q; k; q-k; q*k] as A q + k (diag(q) C + B),
the same function with the q-k block folded into A and B: 1,024 fewer weights at dim 16, each block
with its own init), deepctr's summed (not averaged) batch loss (Adam is nearly invariant to that
scale), shuffling RNGs, and deepctr's input path (all features concatenated into one float
tensor, cast back to long per batch; its DataLoader), which is part of what its throughput is.

Prints the machine load first (figures are only comparable on a quiet machine), then per model
training and evaluation samples/s, epochs to early stopping, test AUC, and qarm / deepctr ratios.

    python benchmarks/bench_rank.py                          # full ml-100k (a few minutes on 2 cores)
    python benchmarks/bench_rank.py --max-epochs 2 --max-train 20000 --threads 1   # quick check
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
FEATURES = ("user_id", "item_id", "history")  # the plain DIN inputs both models get


def load_line() -> str:
    one, five, fifteen = os.getloadavg()
    cores = os.cpu_count() or 1
    quiet = "quiet" if one < 0.5 * cores else "BUSY: figures are pessimistic and the ratio noisy"
    return f"machine load {one:.2f} / {five:.2f} / {fifteen:.2f} (1/5/15 min) on {cores} cores: {quiet}"


def prepare(data: Path, out: Path, history: int):
    """qarm's prepare stage and ranker inputs (id features only)."""
    from qarm.config import load_config
    from qarm.rank.stage import load_inputs
    from qarm.runner import RunDir, run_stages

    cfg = load_config("movielens-100k", [f"data.path={data}", "split.holdout_item_frac=0.0",
                                         "split.train_frac=0.8", "split.valid_frac=0.1",
                                         "rank.variants=[id]", "rank.tasks=[click]", f"rank.history={history}"])
    run_stages(cfg, out, stages=["prepare"], log=lambda m: None)
    return cfg, load_inputs(cfg.rank, RunDir(out))


def qarm_specs(inp, rc):
    from qarm.rank.features import variant_specs

    specs = variant_specs("id", inp.tables, len(inp.user_vocab) + 2, rc.history, rc.sim_history,
                          rc.dim, rc.code_dim, rc.count_dim)
    return [s for s in specs if s.name in FEATURES]


def split_data(inp, specs, max_train: int):
    from qarm.rank.train import TensorData

    ev = inp.events
    train_rows = np.flatnonzero(ev.split == "train")[: max_train or None]
    return {"train": TensorData(ev.subset(train_rows), specs),
            "valid": TensorData(ev.subset(ev.split == "valid"), specs),
            "test": TensorData(ev.subset(ev.split == "test"), specs)}


def run_qarm(inp, data, specs, args) -> dict:
    from qarm.rank.config import RankConfig
    from qarm.rank.metrics import auc
    from qarm.rank.model import RankModel
    from qarm.rank.train import fit, predict

    rc = RankConfig(variants=["id"], seeds=[0], tasks=["click"], history=args.history, dim=args.dim,
                    epochs=args.max_epochs, patience=args.patience, batch_size=args.batch, lr=args.lr,
                    eval_batch_size=args.eval_batch, att_hidden=[64, 16], dnn_hidden=[256, 128],
                    threads=args.threads)
    torch.manual_seed(0)
    model = RankModel(specs, inp.tables, 1, rc.att_hidden, rc.dnn_hidden, att_dim=rc.dim)
    with tempfile.TemporaryDirectory() as tmp:
        res = fit(model, data["train"], data["valid"], rc, 0, Path(tmp) / "ckpt.pt", "bench", desc="qarm DIN")
    model.load_state_dict(res.best_state)
    t0 = time.perf_counter()
    p = predict(model, data["test"], args.eval_batch)[:, 0]
    eval_s = time.perf_counter() - t0
    y = data["test"].tensors["labels"].cpu().numpy()[:, 0]
    return {"train_sps": res.train_samples / res.train_seconds, "eval_sps": len(y) / eval_s, "auc": auc(y, p),
            "epochs": len(res.log), "best_epoch": res.best_epoch, "valid_auc": res.best_valid_auc,
            "params": sum(t.numel() for t in model.parameters())}


def left_aligned(hist: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """qarm's histories are right-aligned (padding first); deepctr masks by length (padding last)."""
    n = hist.shape[1]
    length = (hist > 0).sum(1)
    idx = (np.arange(n)[None, :] + (n - length)[:, None]) % n
    out = np.take_along_axis(hist, idx, axis=1)
    out[np.arange(n)[None, :] >= length[:, None]] = 0
    return out, length


def deepctr_inputs(td, item_index: np.ndarray) -> tuple[dict, np.ndarray]:
    """The same events as qarm's TensorData, in deepctr's input dict (id vocabulary indices)."""
    b = {k: v.cpu().numpy() for k, v in td.batch(slice(0, len(td))).items()}
    hist, length = left_aligned(item_index[b["history"]])
    return ({"user_id": b["user"], "item_id": item_index[b["target"]], "hist_item_id": hist, "seq_length": length},
            b["labels"][:, 0].astype(np.float32))


def run_deepctr(inp, data, specs, args) -> dict:
    from deepctr_torch.callbacks import Callback, EarlyStopping
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DIN

    from qarm.rank.metrics import auc

    vocab = {s.name: s.vocab for s in specs}
    # item row -> item-id vocabulary index, exactly what qarm's id embedding reads
    item_index = np.asarray(inp.tables.index["item_id"]).reshape(inp.tables.n_rows, -1)[:, 0].astype(np.int64)
    cols = [SparseFeat("user_id", vocab["user_id"], embedding_dim=args.dim),
            SparseFeat("item_id", vocab["item_id"], embedding_dim=args.dim),
            VarLenSparseFeat(SparseFeat("hist_item_id", vocab["item_id"], embedding_dim=args.dim,
                                        embedding_name="item_id"), maxlen=args.history, length_name="seq_length")]
    x_train, y_train = deepctr_inputs(data["train"], item_index)
    x_valid, y_valid = deepctr_inputs(data["valid"], item_index)
    x_test, y_test = deepctr_inputs(data["test"], item_index)
    torch.manual_seed(0)
    model = DIN(cols, ["item_id"], dnn_hidden_units=(256, 128), att_hidden_size=(64, 16),
                att_activation=args.peer_att_activation, att_weight_normalization=False, dnn_activation="relu",
                l2_reg_embedding=0.0, l2_reg_dnn=0.0, dnn_dropout=0.0, dnn_use_bn=False, init_std=0.01,
                device="cpu", seed=0)
    for m in model.modules():  # deepctr draws dense layers from N(0, 1e-4); qarm keeps PyTorch's default
        if isinstance(m, torch.nn.Linear):
            m.reset_parameters()
    model.compile(torch.optim.Adam(model.parameters(), lr=args.lr), "binary_crossentropy", metrics=["auc"])

    eval_clock = [0.0]
    evaluate = model.evaluate

    def timed_evaluate(*a, **k):  # validation inside fit is not training time (as for qarm)
        t = time.perf_counter()
        try:
            return evaluate(*a, **k)
        finally:
            eval_clock[0] += time.perf_counter() - t

    model.evaluate = timed_evaluate

    class Best(Callback):
        """Keep the best valid-AUC epoch's weights (qarm's fit always returns them)."""

        def on_train_begin(self, logs=None):
            self.best, self.epoch, self.state, self.epochs = -np.inf, 0, None, 0

        def on_epoch_end(self, epoch, logs=None):
            self.epochs = epoch + 1
            if logs["val_auc"] > self.best:
                self.best, self.epoch, self.state = logs["val_auc"], epoch + 1, copy.deepcopy(model.state_dict())

    best = Best()
    stop = EarlyStopping(monitor="val_auc", patience=args.patience, mode="max")
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # deepctr prints its device and sizes even at verbose=0
        model.fit(x_train, y_train, batch_size=args.batch, epochs=args.max_epochs, verbose=0, shuffle=True,
                  validation_data=(x_valid, y_valid), callbacks=[best, stop] if args.patience else [best])
    train_s = time.perf_counter() - t0 - eval_clock[0]
    model.load_state_dict(best.state)
    t0 = time.perf_counter()
    p = model.predict(x_test, batch_size=args.eval_batch)[:, 0]
    eval_s = time.perf_counter() - t0
    return {"train_sps": len(y_train) * best.epochs / train_s, "eval_sps": len(y_test) / eval_s,
            "auc": auc(y_test, p), "epochs": best.epochs, "best_epoch": best.epoch, "valid_auc": best.best,
            "params": sum(t.numel() for t in model.parameters())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "movielens-100k")
    ap.add_argument("--max-epochs", type=int, default=20, help="cap; both stop earlier on the valid AUC")
    ap.add_argument("--patience", type=int, default=1, help="epochs without a better valid AUC (0: run all)")
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--eval-batch", type=int, default=8192)
    ap.add_argument("--history", type=int, default=50)
    ap.add_argument("--dim", type=int, default=16)
    ap.add_argument("--lr", type=float, default=0.002)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-train", type=int, default=0, help="use only the first N train events (0 = all)")
    ap.add_argument("--peer-att-activation", default="relu",
                    help="deepctr DIN attention activation: relu as qarm (deepctr's own default: Dice)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(load_line())
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        cfg, inp = prepare(args.data, Path(tmp), args.history)
        specs = qarm_specs(inp, cfg.rank)
        data = split_data(inp, specs, args.max_train)
        feat_s = time.perf_counter() - t0
    print(f"ml-100k 80/10/10 temporal split: {len(data['train'])} train / {len(data['valid'])} valid / "
          f"{len(data['test'])} test events; features (prepare + histories) in {feat_s:.1f}s; batch {args.batch}, "
          f"history {args.history}, dim {args.dim}, DIN att (64, 16), DNN (256, 128), Adam lr {args.lr}, "
          f"early stopping on valid AUC (patience {args.patience}, at most {args.max_epochs} epochs), "
          f"{args.threads} thread(s)")
    ours = run_qarm(inp, data, specs, args)
    peer = run_deepctr(inp, data, specs, args)
    for name, r in (("qarm DIN (id features)", ours), (f"deepctr-torch DIN ({args.peer_att_activation})", peer)):
        print(f"{name:32s} train {r['train_sps']:9.0f} samples/s   eval {r['eval_sps']:9.0f} samples/s   "
              f"best epoch {r['best_epoch']}/{r['epochs']}   valid AUC {r['valid_auc']:.4f}   "
              f"test AUC {r['auc']:.4f}   {r['params']:,} parameters")
    print(f"ratio qarm / deepctr: train {ours['train_sps'] / peer['train_sps']:.2f}x, "
          f"eval {ours['eval_sps'] / peer['eval_sps']:.2f}x, test AUC {ours['auc'] - peer['auc']:+.4f}")
    print(load_line().replace("machine load", "machine load after"))


if __name__ == "__main__":
    main()
